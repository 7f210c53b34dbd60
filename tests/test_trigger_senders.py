"""Triggers leave a producer (ProducerCore, the SDK's tracebus.trigger) without
ever blocking: at once when connected, else kept for the connection within a
ttl, bounded, and what is dropped is counted."""

from __future__ import annotations

import pytest

import tracebus
from actors.core import producer_core as core
from protos import tracebus_ipc_pb2 as ipc
from tests.test_sdk_api import Rig, wait_for_condition
from tracebus import _runtime

SEC = 1_000_000_000


def _sent_triggers(outputs) -> list[list[str]]:
    return [
        list(o.message.activate_triggers.trigger_names)
        for o in outputs
        if isinstance(o, core.Send) and o.message.WhichOneof("msg") == "activate_triggers"
    ]


def _connect(c: core.ProducerCore, now: int) -> list[core.Output]:
    (init,) = c.connect(now)
    reply = ipc.ServiceToProducer(request_id=init.message.request_id, initialize_connection={})
    return c.handle(reply, now)


def test_a_connected_producer_sends_triggers_at_once():
    c = core.ProducerCore("p")
    _connect(c, 0)
    assert _sent_triggers(c.activate_triggers(["a", "b"], 0, SEC)) == [["a", "b"]]


def test_triggers_before_the_connection_go_with_the_handshake_unless_expired():
    c = core.ProducerCore("p")
    assert c.activate_triggers(["old"], 0, SEC) == []
    assert c.activate_triggers(["new"], 5 * SEC, SEC) == []
    assert _sent_triggers(_connect(c, 5 * SEC)) == [["new"]]
    assert c.triggers_dropped == 1
    assert _sent_triggers(c.activate_triggers(["x"], 6 * SEC, SEC)) == [["x"]]


def test_triggers_waiting_for_a_connection_are_bounded_and_counted():
    c = core.ProducerCore("p")
    c.activate_triggers([f"t{i}" for i in range(core.MAX_PENDING_TRIGGERS + 5)], 0, SEC)
    assert c.triggers_dropped == 5
    (sent,) = _sent_triggers(_connect(c, 0))
    assert len(sent) == core.MAX_PENDING_TRIGGERS and sent[0] == "t0"


# -- tracebus.trigger ---------------------------------------------------------------------------


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch):
    _runtime.WANTED.clear()
    monkeypatch.setattr(_runtime, "SERVICE_POLL_S", 0.01)
    r = Rig(monkeypatch, {})
    yield r
    r.runtime.shutdown(timeout=1)
    _runtime.WANTED.clear()


def test_trigger_goes_through_the_running_producer(rig):
    rig.started()
    tracebus.trigger("crash", "oom", ttl_s=5)
    (producer,) = rig.producers
    assert producer.triggers == [(("crash", "oom"), 5.0)]


def test_trigger_before_the_service_is_there_waits_for_the_producer(rig):
    rig.service_there.clear()
    tracebus.trigger("early")  # starts the producer, never waits for it
    assert rig.producers == [] and rig.runtime.pending_triggers
    rig.service_there.set()
    wait_for_condition(lambda: rig.producers and rig.producers[0].triggers, "the hand-over")
    ((names, ttl_s),) = rig.producers[0].triggers
    assert names == ("early",) and 0 < ttl_s <= 60


def test_trigger_after_shutdown_is_dropped_and_counted(rig):
    rig.started()
    tracebus.shutdown()
    tracebus.trigger("late")
    assert tracebus.stats()["triggers_dropped"] == 1
    assert rig.producers[0].triggers == []


def test_trigger_never_raises(rig, monkeypatch):
    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(rig.runtime, "trigger", broken)
    tracebus.trigger("x")
    assert tracebus.stats()["errors_by_kind"] == {"trigger": 1}


def test_many_names_leave_in_requests_the_service_takes():
    c = core.ProducerCore("p")
    _connect(c, 0)
    sent = _sent_triggers(c.activate_triggers([f"t{i}" for i in range(600)], 0, SEC))
    assert [len(names) for names in sent] == [256, 256, 88]
