"""Every message of the protocol reaches a handler of ServiceCore, or an explicit
"not supported" reply; nothing is dropped without a word.

The walk reads the oneof fields of ProducerToService and ConsumerToService from
the generated descriptors, so a message added to the .proto without a handler
fails here."""

from __future__ import annotations

import pytest

from actors.core.service_core import NOT_SUPPORTED, Clocks, Peer, ServiceCore, ToConsumer
from protos import tracebus_ipc_pb2 as ipc
from shm.region import InProcessRegion

PRODUCER = Peer(b"producer", 4242, 1000)
CONSUMER = Peer(b"consumer", 4343, 1000)
NOW = 1_000_000_000


class FakeSmb:
    def __init__(self, geometry, pid, uid):
        self.region = InProcessRegion(geometry.size)
        self.buf = self.region.buf
        self.token = b"t" * 16
        self.socket = "/fake"

    def close(self):
        pass


def _core() -> ServiceCore:
    return ServiceCore(FakeSmb, Clocks(lambda: [], lambda: NOW), 0, 100)


def _oneof_fields(message_type) -> list[str]:
    return [f.name for f in message_type.DESCRIPTOR.oneofs_by_name["msg"].fields]


def _connected_core() -> ServiceCore:
    core = _core()
    init = ipc.InitializeConnectionRequest(hello=ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION))
    (reply,) = core.handle_producer(
        PRODUCER, ipc.ProducerToService(request_id=1, initialize_connection=init), NOW
    )
    assert reply.msg.initialize_connection.hello.error == ""
    return core


def _envelope(message_type, kind: str, request_id: int = 7):
    msg = message_type(request_id=request_id)
    getattr(msg, kind).SetInParent()  # the kind's message, empty
    return msg


@pytest.mark.parametrize("kind", _oneof_fields(ipc.ProducerToService))
def test_every_producer_message_has_a_handler_or_is_declined(kind):
    core = _core()
    handled = kind == "initialize_connection" or kind in core.producer_handlers
    assert handled != (kind in NOT_SUPPORTED), f"{kind}: a handler, or not supported, not both"


@pytest.mark.parametrize("kind", _oneof_fields(ipc.ConsumerToService))
def test_every_consumer_message_has_a_handler_or_is_declined(kind):
    core = _core()
    assert (kind in core.consumer_handlers) != (kind in NOT_SUPPORTED), kind


def test_a_declined_producer_message_gets_an_error_reply_and_is_counted(monkeypatch):
    # Every kind is handled today; a kind the service declines (a table entry)
    # must still be answered and counted, never dropped.
    core = _connected_core()
    monkeypatch.delitem(core.producer_handlers, "heartbeat")
    monkeypatch.setitem(NOT_SUPPORTED, "heartbeat", "heartbeats are not supported here")
    (reply,) = core.handle_producer(PRODUCER, _envelope(ipc.ProducerToService, "heartbeat"), NOW)
    assert reply.identity == PRODUCER.identity and reply.msg.request_id == 7
    assert reply.msg.WhichOneof("msg") == "error"
    assert "not supported" in reply.msg.error.message
    assert core.counters.messages_not_handled == 1


def test_activate_triggers_is_handled_for_producers_and_consumers():
    assert "activate_triggers" not in NOT_SUPPORTED
    core = _connected_core()
    req = ipc.ActivateTriggersRequest(trigger_names=["t"])
    replies = core.handle_producer(
        PRODUCER, ipc.ProducerToService(request_id=9, activate_triggers=req), NOW
    )
    assert replies == []  # a producer's triggers get no reply (nothing to wait for)
    (reply,) = core.handle_consumer(
        CONSUMER, ipc.ConsumerToService(request_id=4, activate_triggers=req), NOW
    )
    assert reply.msg.request_id == 4 and reply.msg.ack.error == ""
    assert core.counters.messages_not_handled == 0


def test_a_producer_envelope_without_a_message_gets_an_error_and_is_counted():
    core = _connected_core()
    (reply,) = core.handle_producer(PRODUCER, ipc.ProducerToService(request_id=3), NOW)
    assert reply.msg.request_id == 3 and reply.msg.WhichOneof("msg") == "error"
    assert core.counters.messages_not_handled == 1


def test_a_consumer_envelope_without_a_message_gets_an_error_and_is_counted():
    core = _core()
    (reply,) = core.handle_consumer(CONSUMER, ipc.ConsumerToService(request_id=5), NOW)
    assert isinstance(reply, ToConsumer) and reply.identity == CONSUMER.identity
    assert reply.msg.request_id == 5 and reply.msg.WhichOneof("msg") == "error"
    assert core.counters.messages_not_handled == 1


def test_a_producer_must_initialize_before_anything_else():
    core = _core()
    (reply,) = core.handle_producer(PRODUCER, _envelope(ipc.ProducerToService, "heartbeat"), NOW)
    assert reply.msg.error.message == "initialize the connection first"
    assert core.counters.messages_not_handled == 0  # answered, not an unknown kind
