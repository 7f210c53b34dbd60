"""What the two Perfetto translators answer when the service refuses, and the
rules they share (actors/core/perfetto_consumer.py, perfetto_producer.py,
perfetto_wire.py), in one process against a real ServiceCore.

The consumer tests drive tests/perfetto_client.py's PerfettoConsumer (the
SDK's calls, its rules for replies) over a Loopback: its frames go through
the translator and the core at once, and a reply that never comes fails the
call at once instead of after a timeout."""

from __future__ import annotations

from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.perfetto_consumer import PerfettoConsumerConn
from actors.core.perfetto_producer import PerfettoProducerConn
from actors.core.perfetto_wire import (
    CONSUMER_METHODS,
    CONSUMER_SERVICE_ID,
    DESCRIPTOR_FLAGS,
    PERFETTO_PREFIX,
    PRODUCER_METHODS,
    PRODUCER_SERVICE_ID,
    FrameDecoder,
    perfetto_descriptor,
    tracebus_descriptor,
)
from protos import perfetto_ipc_pb2 as pf
from protos import tracebus_ipc_pb2 as ipc
from tests.perfetto_client import Channel, PerfettoConsumer
from tests.test_perfetto_consumer import (
    Client,
    FileRig,
    enable_args,
    method_reply,
    probe_config,
    write_packets,
)
from tests.test_service_core import FakeProducer, Rig


class Loopback(Channel):
    """The client double's channel wired to a translator and a core in this
    process (test_perfetto_consumer.Client, the shell's part): a frame sent is
    handled at once; receive() gives what came back, None (a timeout to the
    double) when nothing more will."""

    def __init__(self, host: Client) -> None:
        super().__init__(None)  # type: ignore[arg-type]  # no socket
        self.host = host
        self._sent = FrameDecoder()

    def send(self, data: bytes, fd: int | None = None) -> None:
        for frame in self._sent.feed(data):
            self.host.frame(frame, fd)
            fd = None

    def receive(self, deadline: float) -> pf.IPCFrame | None:
        self.host.pump()
        return self.host.frames.pop(0) if self.host.frames else None

    def close(self) -> None:
        pass


def sdk_consumer(rig: Rig) -> tuple[PerfettoConsumer, PerfettoConsumerConn]:
    host = Client(rig)
    return PerfettoConsumer(Loopback(host), timeout=1.0).connect(), host.conn


# -- ReadBuffers: a refusal ends the read ------------------------------------------------


def test_reading_a_session_that_writes_into_a_file_ends_the_sdk_read(tmp_path: Path):
    rig = FileRig()
    producer = FakeProducer(rig, "p", pid=555, ds="track_event")
    consumer, conn = sdk_consumer(rig)
    config = pb.TraceConfig.FromString(probe_config())
    config.write_into_file, config.output_path = True, str(tmp_path / "trace")
    consumer.enable_tracing(config)
    producer.process()
    read = consumer.read_buffers()  # the core refuses it: the read still ends
    assert read.packets == [] and read.replies == 1
    assert conn.refused["ReadBuffers refused by the service"] == 1
    assert "write_into_file" in conn.last_refusal


def test_a_second_read_under_way_ends_at_once_and_the_first_goes_on():
    rig = Rig()
    producer = FakeProducer(rig, "p", pid=555, ds="track_event")
    client = Client(rig)
    client.bind()
    client.call("EnableTracing", enable_args(probe_config()))
    producer.process()
    sent = write_packets(producer, 500, 400)
    reads = []
    for rid in (20, 21):  # both taken before the core continues the first
        invoke = pf.IPCFrame.InvokeMethod(
            service_id=CONSUMER_SERVICE_ID, method_id=CONSUMER_METHODS["ReadBuffers"]
        )
        reads.append(
            client.conn.on_frame(pf.IPCFrame(request_id=rid, msg_invoke_method=invoke), None)
        )
    for msg in [m for step in reads for m in step.to_core]:
        client.rig.route(rig.core.handle_consumer(client.peer, msg, rig.now))
    client.pump()
    (second,) = client.replies(21)
    assert method_reply(second).success and not method_reply(second).has_more
    assert pf.ReadBuffersResponse.FromString(method_reply(second).reply_proto).slices == []
    first = [method_reply(f) for f in client.replies(20)]
    assert [r.has_more for r in first][-1] is False and all(r.success for r in first)
    data = b"".join(
        s.data for r in first for s in pf.ReadBuffersResponse.FromString(r.reply_proto).slices
    )
    assert all(p.SerializeToString() in data for p in sent[:3] + sent[-3:])
    assert "still being answered" in client.conn.last_refusal


def read_conn() -> tuple[PerfettoConsumerConn, int]:
    """A bound translator with a ReadBuffers (client id 9) sent to the core; our id."""
    conn = PerfettoConsumerConn(PERFETTO_PREFIX + b"\0\0\0\1", lambda fd: "")
    conn.on_frame(
        pf.IPCFrame(request_id=1, msg_bind_service={"service_name": "ConsumerPort"}), None
    )
    invoke = pf.IPCFrame.InvokeMethod(
        service_id=CONSUMER_SERVICE_ID, method_id=CONSUMER_METHODS["ReadBuffers"]
    )
    (read,) = conn.on_frame(pf.IPCFrame(request_id=9, msg_invoke_method=invoke), None).to_core
    return conn, read.request_id


@pytest.mark.parametrize(
    "ending",
    [
        ipc.ServiceToConsumer(error=ipc.Error(message="the session was detached mid-read")),
        ipc.ServiceToConsumer(ack=ipc.Ack()),  # not what a read waits for
    ],
)
def test_a_read_cut_short_by_the_service_ends_with_an_empty_last_reply(ending):
    conn, our_id = read_conn()
    part = ipc.ReadBuffersResponse(has_more=True)
    part.slices.add(data=b"packet", last_slice_for_packet=True)
    out = conn.on_core(ipc.ServiceToConsumer(request_id=our_id, read_buffers=part))
    ending.request_id = our_id
    out += conn.on_core(ending)
    replies = [
        f.msg_invoke_method_reply for f in FrameDecoder().feed(b"".join(f.data for f in out))
    ]
    assert [(r.success, r.has_more) for r in replies] == [(True, True), (True, False)]
    assert pf.ReadBuffersResponse.FromString(replies[-1].reply_proto).slices == []
    assert conn._waiting == {} and sum(conn.refused.values()) == 1


# -- every method the core answers, refused --------------------------------------------------

ARGS = {
    "EnableTracing": enable_args(probe_config()),
    "Flush": pf.FlushRequest(timeout_ms=10).SerializeToString(),
    "Detach": pf.DetachRequest(key="k").SerializeToString(),
    "Attach": pf.AttachRequest(key="k").SerializeToString(),
}
# What traced answers when its service fails the call: None, a rejection.
TRACED_ANSWERS = {
    "EnableTracing": pf.EnableTracingResponse(disabled=True, error="why").SerializeToString(),
    "StartTracing": b"",
    "DisableTracing": b"",
    "FreeBuffers": b"",
    "ReadBuffers": b"",
    "Flush": None,
    "Detach": None,
    "Attach": None,
    "GetTraceStats": None,
    "QueryServiceState": None,
}


@pytest.mark.parametrize("method", sorted(TRACED_ANSWERS))
def test_a_core_error_is_answered_as_traced_answers_a_failure(method):
    conn = PerfettoConsumerConn(PERFETTO_PREFIX + b"\0\0\0\1", lambda fd: "")
    conn.on_frame(
        pf.IPCFrame(request_id=1, msg_bind_service={"service_name": "ConsumerPort"}), None
    )
    invoke = pf.IPCFrame.InvokeMethod(
        service_id=CONSUMER_SERVICE_ID,
        method_id=CONSUMER_METHODS[method],
        args_proto=ARGS.get(method, b""),
    )
    step = conn.on_frame(pf.IPCFrame(request_id=5, msg_invoke_method=invoke), None)
    our_id = step.to_core[0].request_id
    out = conn.on_core(ipc.ServiceToConsumer(request_id=our_id, error=ipc.Error(message="why")))
    (frame,) = FrameDecoder().feed(b"".join(f.data for f in out))
    reply = frame.msg_invoke_method_reply
    assert frame.request_id == 5 and not reply.has_more
    expected = TRACED_ANSWERS[method]
    assert reply.success == (expected is not None)
    if expected is not None:
        assert reply.reply_proto == expected
    assert conn._waiting == {}
    assert conn.refused == {f"{method} refused by the service": 1}
    assert conn.last_refusal == f"{method}: why"


def test_calls_without_a_session_answer_the_sdk_as_traced_does():
    rig = Rig()
    consumer, conn = sdk_consumer(rig)
    consumer.start_tracing()  # the core refuses: traced's {} (a rejection is only logged)
    consumer.disable_tracing()
    consumer.free_buffers()
    assert consumer.flush() is False  # a failed flush: callback(false)
    assert consumer.read_buffers().packets == []
    assert consumer.get_trace_stats() is not None
    assert conn.refused == {
        "StartTracing refused by the service": 1,
        "DisableTracing refused by the service": 1,
        "Flush refused by the service": 1,
    }


def test_a_key_that_is_not_utf8_is_served_with_replacement_characters():
    rig = Rig()
    FakeProducer(rig, "p", pid=555, ds="track_event")
    first, second = Client(rig, "a"), Client(rig, "b")
    first.bind()
    second.bind()
    first.call("EnableTracing", enable_args(probe_config()))
    raw_key = b"\x0a\x02k\xff"  # DetachRequest / AttachRequest {key: "k\xff"}
    rid, step = first.call("Detach", raw_key)
    assert step.to_core[0].detach.key == "k\ufffd"
    assert method_reply(first.replies(rid)[0]).success
    rid, _ = second.call("Attach", raw_key)
    attached = pf.AttachResponse.FromString(method_reply(second.replies(rid)[0]).reply_proto)
    assert pb.TraceConfig.FromString(attached.trace_config).data_sources[0].config.name
    assert first.conn.refused == second.conn.refused == {}


# -- the producer: a close decided on a frame ------------------------------------------------


def test_a_queued_command_too_big_for_a_frame_closes_on_get_async_command():
    conn = PerfettoProducerConn(PERFETTO_PREFIX + b"\0\0\0\1")
    conn.on_frame(
        pf.IPCFrame(request_id=1, msg_bind_service={"service_name": "ProducerPort"}), None
    )
    huge = pb.DataSourceConfig(name="ds", legacy_config="x" * 140_000).SerializeToString()
    start = ipc.StartDataSource(instance_id=1, data_source_config=huge)
    assert conn.on_core(ipc.ServiceToProducer(start_data_source=start)) == []
    assert conn.closing == ""  # queued: the stream is not bound yet
    invoke = pf.IPCFrame.InvokeMethod(
        service_id=PRODUCER_SERVICE_ID, method_id=PRODUCER_METHODS["GetAsyncCommand"]
    )
    step = conn.on_frame(pf.IPCFrame(request_id=2, msg_invoke_method=invoke), None)
    assert step.frames == [] and "does not fit" in step.close
    assert step.close == conn.closing  # the shell ends it on either path


# -- the shared rules -----------------------------------------------------------------------


@pytest.mark.parametrize("flag", DESCRIPTOR_FLAGS)
def test_a_descriptor_flag_keeps_its_meaning_in_both_numberings(flag):
    perfetto = pb.DataSourceDescriptor(name="ds", **{flag: True})
    tracebus = tracebus_descriptor(perfetto)
    assert tracebus == ipc.DataSourceDescriptor(name="ds", **{flag: True})
    assert perfetto_descriptor(tracebus) == perfetto
    # the numbers do differ for the notify flags and no_flush
    same_number = flag == "handles_incremental_state_clear"
    assert (tracebus.SerializeToString() == perfetto.SerializeToString()) == same_number
