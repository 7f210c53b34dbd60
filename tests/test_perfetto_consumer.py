"""The Perfetto consumer translator (actors/core/perfetto_consumer.py) against a
real ServiceCore in one process: a producer driven through the tracebus
protocol (test_service_core's FakeProducer), a Perfetto client's frames in,
the frames it would read out (decoded with perfetto_wire's FrameDecoder, as
a client would cut its stream)."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.outbox import AppendToFile, CloseFile, Peer
from actors.core.perfetto_consumer import MAX_WAITING, NOT_HERE, SERVED, PerfettoConsumerConn
from actors.core.perfetto_wire import (
    CONSUMER_METHODS,
    CONSUMER_SERVICE_ID,
    MAX_FRAME_BYTES,
    PERFETTO_PREFIX,
    FrameDecoder,
    FrameError,
    OutFrame,
    Step,
)
from actors.core.service_core import Clocks, ServiceCore
from actors.trace_files import TraceFiles
from protos import perfetto_ipc_pb2 as pf
from protos import tracebus_ipc_pb2 as ipc
from tests.test_service_core import FakeProducer, Rig

RING_BUFFER = pb.TraceConfig.BufferConfig.FillPolicy.RING_BUFFER
STARTED = pf.ObservableEvents.DATA_SOURCE_INSTANCE_STATE_STARTED


class FileRig(Rig):
    """test_service_core's Rig whose core opens trace files through a real TraceFiles."""

    def __init__(self) -> None:
        super().__init__()
        self.files = TraceFiles()
        clocks = Clocks(lambda: [(6, self.now), (3, self.now)], lambda: self.now)
        self.core = ServiceCore(self._factory, clocks, 0, 100, open_file=self.files.open)

    def route(self, outputs):
        for out in outputs:
            if isinstance(out, AppendToFile):
                assert self.files.append(out.file_id, out.data) == ""
            elif isinstance(out, CloseFile):
                assert self.files.close(out.file_id) == ""
            else:
                super().route([out])


class Client:
    """A Perfetto consumer's connection: frames through the translator to the core
    and back, as the shell (actors/perfetto_port.py) passes them."""

    def __init__(self, rig: Rig, name: str = "pc", uid: int = 1000) -> None:
        self.rig = rig
        self.peer = Peer(PERFETTO_PREFIX + name.encode(), 4242, uid)
        files = getattr(rig, "files", None)
        self.conn = PerfettoConsumerConn(self.peer.identity, files.adopt if files else _no_adopt)
        self.decoder = FrameDecoder()
        self.frames: list[pf.IPCFrame] = []
        self.sizes: list[int] = []
        self.next_id = 1

    def frame(self, frame: pf.IPCFrame, fd: int | None = None) -> Step:
        step = self.conn.on_frame(frame, fd)
        self._take(step.frames)
        for msg in step.to_core:
            self.rig.route(self.rig.core.handle_consumer(self.peer, msg, self.rig.now))
        files = getattr(self.rig, "files", None)
        if files is not None:
            files.discard_adopted()  # the shell's, after the core calls of a step
        self.pump()
        return step

    def bind(self) -> pf.IPCFrame.BindServiceReply:
        rid = self._rid()
        self.frame(pf.IPCFrame(request_id=rid, msg_bind_service={"service_name": "ConsumerPort"}))
        (reply,) = self.replies(rid)
        return reply.msg_bind_service_reply

    def call(
        self, method: str, args: bytes = b"", fd: int | None = None, drop: bool = False
    ) -> tuple[int, Step]:
        rid = self._rid()
        invoke = pf.IPCFrame.InvokeMethod(
            service_id=CONSUMER_SERVICE_ID,
            method_id=CONSUMER_METHODS[method],
            args_proto=args,
            drop_reply=drop,
        )
        return rid, self.frame(pf.IPCFrame(request_id=rid, msg_invoke_method=invoke), fd)

    def pump(self) -> None:
        """Core outputs addressed to this client go through the translator; pending
        reads are continued, as the shell does between messages."""
        while True:
            self.rig.idle()
            msgs = self.rig.take(self.peer, consumer=True)
            if not msgs:
                return
            for msg in msgs:
                self._take(self.conn.on_core(msg))

    def _take(self, out: list[OutFrame]) -> None:
        for f in out:
            assert len(f.data) <= MAX_FRAME_BYTES and not f.smb_fd
            self.sizes.append(len(f.data))
            self.frames += self.decoder.feed(f.data)

    def replies(self, rid: int) -> list[pf.IPCFrame]:
        mine = [f for f in self.frames if f.request_id == rid]
        self.frames = [f for f in self.frames if f.request_id != rid]
        return mine

    def _rid(self) -> int:
        rid = self.next_id
        self.next_id += 1
        return rid


def _no_adopt(fd: int) -> str:
    raise AssertionError("no fd is adopted here")


def probe_config(**kw) -> bytes:
    """The consumer probe's config (perfetto-ipc-transcripts/consumer-probe.jsonl)."""
    cfg = pb.TraceConfig(flush_period_ms=1000, **kw)
    cfg.buffers.add(size_kb=8192, fill_policy=RING_BUFFER)
    ds = cfg.data_sources.add().config
    ds.name = "track_event"
    ds.track_event_config.enabled_categories.append("*")
    return cfg.SerializeToString()


def enable_args(config: bytes, **kw) -> bytes:
    return pf.EnableTracingRequest(trace_config=config, **kw).SerializeToString()


def observe_args(*types: int) -> bytes:
    return pf.ObserveEventsRequest(events_to_observe=list(types)).SerializeToString()


def method_reply(frame: pf.IPCFrame) -> pf.IPCFrame.InvokeMethodReply:
    assert frame.WhichOneof("msg") == "msg_invoke_method_reply"
    return frame.msg_invoke_method_reply


def write_packets(producer: FakeProducer, count: int, size: int) -> list[pb.TracePacket]:
    (writer,) = producer.writers.values()
    sent = []
    for i in range(count):
        packet = pb.TracePacket(timestamp=i + 1)
        packet.for_testing.counter = i
        packet.for_testing.str = "x" * size
        sent.append(packet)
        writer.write_packet(packet.SerializeToString())
    writer.flush()
    return sent


def read_back(client: Client) -> tuple[list[pb.TracePacket], list[pf.IPCFrame]]:
    """ReadBuffers, the slices glued into packets as Perfetto's client does."""
    rid, _ = client.call("ReadBuffers")
    frames = client.replies(rid)
    packets, partial = [], b""
    for f in frames:
        reply = method_reply(f)
        assert reply.success
        for s in pf.ReadBuffersResponse.FromString(reply.reply_proto).slices:
            partial += s.data
            if s.last_slice_for_packet:
                packets.append(pb.TracePacket.FromString(partial))
                partial = b""
    assert partial == b""
    return packets, frames


# -- the probe's session ----------------------------------------------------------------------


def test_the_consumer_probe_sequence_records_and_reads_back_a_session():
    rig = Rig()
    producer = FakeProducer(rig, "producer_app", pid=555, ds="track_event")
    client = Client(rig)
    bound = client.bind()
    assert bound.success and {m.name: m.id for m in bound.methods} == SERVED
    observe, _ = client.call("ObserveEvents", observe_args(1, 2))
    enable, step = client.call("EnableTracing", enable_args(probe_config()))
    assert not step.fd_taken
    assert client.replies(enable) == []  # started: the client hears only the end
    producer.process()  # setup, start: the instance runs
    client.pump()
    events = [method_reply(f) for f in client.replies(observe)]
    assert events and all(r.success and r.has_more for r in events)
    told = [pf.ObserveEventsResponse.FromString(r.reply_proto).events for r in events]
    assert any(e.all_data_sources_started for e in told)
    changes = [c for e in told for c in e.instance_state_changes]
    assert (changes[-1].producer_name, changes[-1].data_source_name) == (
        "producer_app",
        "track_event",
    )
    assert changes[-1].state == STARTED

    sent = write_packets(producer, 3000, 200)  # about 700 KB: several frames
    disable, _ = client.call("DisableTracing")
    producer.process()
    client.pump()
    (ended,) = client.replies(enable)  # one reply, the final one
    end = method_reply(ended)
    assert end.success and not end.has_more
    assert pf.EnableTracingResponse.FromString(end.reply_proto) == pf.EnableTracingResponse(
        disabled=True
    )
    (disabled,) = client.replies(disable)
    assert method_reply(disabled).success

    packets, frames = read_back(client)
    assert len(frames) > 5 and max(client.sizes) <= MAX_FRAME_BYTES
    assert [method_reply(f).has_more for f in frames] == [True] * (len(frames) - 1) + [False]
    produced = [p for p in packets if p.HasField("for_testing")]
    assert [p.for_testing.counter for p in produced] == [p.for_testing.counter for p in sent]
    assert {(p.trusted_pid, p.trusted_uid) for p in produced} == {(555, 1000)}
    assert packets[-1].HasField("trace_stats")

    stats_rid, _ = client.call("GetTraceStats")
    (stats,) = client.replies(stats_rid)
    reply = pf.GetTraceStatsResponse.FromString(method_reply(stats).reply_proto)
    assert pb.TraceStats.FromString(reply.trace_stats).buffer_stats[0].chunks_written > 0


def test_a_refused_enable_is_answered_once_at_once():
    rig = Rig()
    client = Client(rig)
    client.bind()
    rid, _ = client.call("EnableTracing", enable_args(b"\xff\xff not a config"))
    (reply,) = client.replies(rid)
    answer = method_reply(reply)
    assert answer.success and not answer.has_more
    end = pf.EnableTracingResponse.FromString(answer.reply_proto)
    assert end.disabled and "does not parse" in end.error


def test_a_packet_larger_than_a_frame_travels_in_pieces_glued_by_the_last_flag():
    conn = PerfettoConsumerConn(b"c", _no_adopt)
    bind = pf.IPCFrame(request_id=1, msg_bind_service={"service_name": "ConsumerPort"})
    conn.on_frame(bind, None)
    invoke = pf.IPCFrame.InvokeMethod(service_id=CONSUMER_SERVICE_ID, method_id=3)
    step = conn.on_frame(pf.IPCFrame(request_id=9, msg_invoke_method=invoke), None)
    (read,) = step.to_core
    assert read.WhichOneof("msg") == "read_buffers"
    big = bytes(range(256)) * 1200  # 300 KiB
    first = ipc.ReadBuffersResponse(has_more=True)
    first.slices.add(data=b"a" * 100, last_slice_for_packet=True)
    first.slices.add(data=big[:1000], last_slice_for_packet=False)  # a packet over two replies
    second = ipc.ReadBuffersResponse(has_more=False)
    second.slices.add(data=big[1000:], last_slice_for_packet=True)
    second.slices.add(data=b"z", last_slice_for_packet=True)
    out = []
    for reply in (first, second):
        out += conn.on_core(ipc.ServiceToConsumer(request_id=read.request_id, read_buffers=reply))
    assert conn._waiting == {}  # the read ended with the reply without has_more
    frames = FrameDecoder().feed(b"".join(f.data for f in out))
    assert all(len(f.data) <= MAX_FRAME_BYTES for f in out) and len(frames) >= 4
    assert {f.request_id for f in frames} == {9}
    assert [f.msg_invoke_method_reply.has_more for f in frames][-1] is False
    assert all(f.msg_invoke_method_reply.has_more for f in frames[:-1])
    slices = [
        s
        for f in frames
        for s in pf.ReadBuffersResponse.FromString(f.msg_invoke_method_reply.reply_proto).slices
    ]
    packets, partial = [], b""
    for s in slices:
        partial += s.data
        if s.last_slice_for_packet:
            packets.append(partial)
            partial = b""
    assert packets == [b"a" * 100, big, b"z"]


# -- write_into_file with the consumer's fd ---------------------------------------------------


def test_write_into_file_takes_the_fd_that_came_with_enable_tracing(tmp_path: Path):
    rig = FileRig()
    producer = FakeProducer(rig, "producer_app", pid=555, ds="track_event")
    client = Client(rig)
    client.bind()
    out = tmp_path / "trace.pftrace"
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # the perfetto CLI's way
    config = probe_config(write_into_file=True, file_write_period_ms=100)
    enable, step = client.call("EnableTracing", enable_args(config), fd=fd)
    assert step.fd_taken and rig.files.fds  # opened by the core's session
    (output_path,) = [m.enable_tracing.output_path for m in step.to_core]
    assert output_path.startswith("/") and output_path.endswith("\0")
    producer.process()
    sent = write_packets(producer, 50, 10)
    client.call("DisableTracing")
    producer.process()
    client.pump()
    (ended,) = client.replies(enable)
    end = pf.EnableTracingResponse.FromString(method_reply(ended).reply_proto)
    assert end.disabled and not end.error
    assert not rig.files.fds  # closed: the fd is the service's no more
    trace = pb.Trace.FromString(out.read_bytes())
    counters = [p.for_testing.counter for p in trace.packet if p.HasField("for_testing")]
    assert counters == [p.for_testing.counter for p in sent]
    assert trace.packet[-1].HasField("trace_stats")


def test_an_fd_the_session_does_not_open_is_closed_and_one_without_write_into_file_left(
    tmp_path: Path,
):
    rig = FileRig()
    client = Client(rig)
    client.bind()
    fd = os.open(tmp_path / "t", os.O_RDWR | os.O_CREAT, 0o600)
    huge = pb.TraceConfig(write_into_file=True)
    huge.buffers.add(size_kb=1 << 30)  # refused: over the budget
    _, step = client.call("EnableTracing", enable_args(huge.SerializeToString()), fd=fd)
    assert step.fd_taken
    assert not fd_is_open(fd)  # discard_adopted closed it
    plain = os.open(tmp_path / "u", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _, step = client.call("EnableTracing", enable_args(probe_config()), fd=plain)
        assert not step.fd_taken  # the shell closes it
        assert fd_is_open(plain)
        with_path = pb.TraceConfig.FromString(probe_config())
        with_path.write_into_file = True
        with_path.output_path = str(tmp_path / "named")
        _, step = client.call("EnableTracing", enable_args(with_path.SerializeToString()), fd=plain)
        assert not step.fd_taken  # traced's rule: an output_path, no fd
    finally:
        os.close(plain)


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


# -- other methods ----------------------------------------------------------------------------


def test_flush_is_an_empty_reply_or_a_rejection():
    rig = Rig()
    producer = FakeProducer(rig, "p", pid=555, ds="track_event")
    client = Client(rig)
    client.bind()
    rid, _ = client.call("Flush", pf.FlushRequest(timeout_ms=100).SerializeToString())
    (refused,) = client.replies(rid)
    assert not method_reply(refused).success  # no session: a failed flush
    client.call("EnableTracing", enable_args(probe_config()))
    producer.process()
    flags = (1 << 40) | 3  # v53's uint64 flags: tracebus keeps the low 32 bits
    rid, step = client.call(
        "Flush", pf.FlushRequest(timeout_ms=100, flags=flags).SerializeToString()
    )
    assert step.to_core[0].flush.flags == 3
    producer.process()
    client.pump()
    (flushed,) = client.replies(rid)
    assert method_reply(flushed).success and method_reply(flushed).reply_proto == b""


def test_query_service_state_lists_producers_and_their_data_sources():
    rig = Rig()
    FakeProducer(rig, "producer_app", pid=555, ds="track_event")
    desc = ipc.DataSourceDescriptor(name="slow", will_notify_on_stop=True, no_flush=True)
    rig.producer(
        Peer(b"p-producer_app", 555, 1000),
        3,
        register_data_source=ipc.RegisterDataSourceRequest(descriptor=desc),
    )
    client = Client(rig)
    client.bind()
    client.call("EnableTracing", enable_args(probe_config()))
    rid, _ = client.call("QueryServiceState")
    (reply,) = client.replies(rid)
    assert not method_reply(reply).has_more
    state = pb.TracingServiceState.FromString(
        pf.QueryServiceStateResponse.FromString(method_reply(reply).reply_proto).service_state
    )
    (producer,) = state.producers
    assert (producer.name, producer.uid, producer.pid) == ("producer_app", 1000, 555)
    by_name = {d.ds_descriptor.name: d for d in state.data_sources}
    assert set(by_name) == {"track_event", "slow"}
    slow = by_name["slow"].ds_descriptor
    assert slow.will_notify_on_stop and not slow.will_notify_on_start and slow.no_flush
    assert by_name["slow"].producer_id == producer.id
    assert (state.num_sessions, state.num_sessions_started) == (1, 1)


def test_a_service_state_larger_than_a_frame_is_cut_into_parts_that_merge():
    conn = PerfettoConsumerConn(b"c", _no_adopt)
    conn.on_frame(
        pf.IPCFrame(request_id=1, msg_bind_service={"service_name": "ConsumerPort"}), None
    )
    invoke = pf.IPCFrame.InvokeMethod(service_id=CONSUMER_SERVICE_ID, method_id=12)
    (query,) = conn.on_frame(pf.IPCFrame(request_id=5, msg_invoke_method=invoke), None).to_core
    state = ipc.QueryServiceStateResponse()
    state.producers.add(id=1, name="p", uid=4294967294, pid=7)  # a uid past int32
    for i in range(2000):
        state.data_sources.add(producer_id=1, descriptor={"name": f"ds-{i:04d}-" + "n" * 200})
    out = conn.on_core(ipc.ServiceToConsumer(request_id=query.request_id, service_state=state))
    assert len(out) > 2 and all(len(f.data) <= MAX_FRAME_BYTES for f in out)
    frames = FrameDecoder().feed(b"".join(f.data for f in out))
    assert [f.msg_invoke_method_reply.has_more for f in frames] == [True] * (len(out) - 1) + [False]
    merged = b"".join(
        pf.QueryServiceStateResponse.FromString(f.msg_invoke_method_reply.reply_proto).service_state
        for f in frames
    )
    whole = pb.TracingServiceState.FromString(merged)
    assert [d.ds_descriptor.name[:7] for d in whole.data_sources] == [
        f"ds-{i:04d}" for i in range(2000)
    ]
    assert whole.producers[0].uid == -2  # as C++ reads the uint32 -2


def test_observe_events_without_types_ends_at_once_and_a_new_one_ends_the_old():
    rig = Rig()
    client = Client(rig)
    client.bind()
    first, _ = client.call("ObserveEvents", observe_args(1))
    assert client.replies(first) == []  # held open
    second, _ = client.call("ObserveEvents", observe_args())
    (ended,) = client.replies(first)
    (closed,) = client.replies(second)
    for frame in (ended, closed):
        assert method_reply(frame).success and not method_reply(frame).has_more


def test_capabilities_and_bugreport_are_answered_at_once():
    rig = Rig()
    client = Client(rig)
    client.bind()
    rid, step = client.call("QueryCapabilities")
    assert step.to_core == []
    (reply,) = client.replies(rid)
    caps = pf.QueryCapabilitiesResponse.FromString(method_reply(reply).reply_proto).capabilities
    assert caps.has_query_capabilities and list(caps.observable_events) == [1, 2]
    rid, _ = client.call("SaveTraceForBugreport")
    (reply,) = client.replies(rid)
    bugreport = pf.SaveTraceForBugreportResponse.FromString(method_reply(reply).reply_proto)
    assert not bugreport.success and bugreport.msg == NOT_HERE


def test_detach_then_attach_from_another_connection_gets_the_config():
    rig = Rig()
    FakeProducer(rig, "p", pid=555, ds="track_event")
    first = Client(rig, "a")
    first.bind()
    enable, _ = first.call("EnableTracing", enable_args(probe_config()))
    rid, _ = first.call("Detach", pf.DetachRequest(key="k").SerializeToString())
    (detached,) = first.replies(rid)
    assert method_reply(detached).success
    assert first.conn._waiting == {}  # the enable's end is nobody's now
    second = Client(rig, "b")
    second.bind()
    rid, _ = second.call("Attach", pf.AttachRequest(key="nope").SerializeToString())
    (refused,) = second.replies(rid)
    assert not method_reply(refused).success
    rid, _ = second.call("Attach", pf.AttachRequest(key="k").SerializeToString())
    (attached,) = second.replies(rid)
    got = pf.AttachResponse.FromString(method_reply(attached).reply_proto)
    assert pb.TraceConfig.FromString(got.trace_config) == pb.TraceConfig.FromString(probe_config())
    end, _ = second.call("EnableTracing", enable_args(b"", attach_notification_only=True))
    second.call("DisableTracing")
    second.pump()
    (ended,) = second.replies(end)
    assert pf.EnableTracingResponse.FromString(method_reply(ended).reply_proto).disabled


def test_protocol_breaches_are_rejected_and_counted():
    rig = Rig()
    client = Client(rig)
    rid, step = client.call("GetTraceStats")  # before BindService
    assert step.to_core == [] and not method_reply(client.replies(rid)[0]).success
    rid = 100
    client.frame(pf.IPCFrame(request_id=rid, msg_bind_service={"service_name": "ProducerPort"}))
    assert not client.replies(rid)[0].msg_bind_service_reply.success
    client.bind()
    for service_id, method_id, args in [
        (1, 10, b""),  # the producer port's id
        (CONSUMER_SERVICE_ID, CONSUMER_METHODS["ChangeTraceConfig"], b""),  # not served
        (CONSUMER_SERVICE_ID, 99, b""),
        (CONSUMER_SERVICE_ID, CONSUMER_METHODS["Flush"], b"\xff"),  # args do not parse
    ]:
        invoke = pf.IPCFrame.InvokeMethod(
            service_id=service_id, method_id=method_id, args_proto=args
        )
        step = client.frame(pf.IPCFrame(request_id=7, msg_invoke_method=invoke))
        assert step.to_core == []
        (reply,) = client.replies(7)
        assert not method_reply(reply).success
    step = client.frame(pf.IPCFrame(request_id=8, msg_invoke_method_reply={"success": True}))
    (error,) = client.replies(8)
    assert error.WhichOneof("msg") == "msg_request_error"
    assert sum(client.conn.refused.values()) == 6
    rid, _ = client.call("GetTraceStats", drop=True)  # drop_reply: never answered
    assert client.replies(rid) == []


def test_a_client_with_too_many_requests_waiting_is_cut_off():
    conn = PerfettoConsumerConn(b"c", _no_adopt)
    conn.on_frame(
        pf.IPCFrame(request_id=1, msg_bind_service={"service_name": "ConsumerPort"}), None
    )
    invoke = pf.IPCFrame.InvokeMethod(service_id=CONSUMER_SERVICE_ID, method_id=2)
    steps = [
        conn.on_frame(pf.IPCFrame(request_id=i, msg_invoke_method=invoke), None)
        for i in range(MAX_WAITING + 1)
    ]
    assert all(not s.close for s in steps[:-1]) and steps[-1].close


# -- hostile bytes ------------------------------------------------------------------------------

_FRAMES = st.builds(
    lambda rid, kind, service, method, args, drop, name: pf.IPCFrame(
        request_id=rid,
        **(
            {"msg_bind_service": {"service_name": name}}
            if kind == 0
            else {
                "msg_invoke_method": {
                    "service_id": service,
                    "method_id": method,
                    "args_proto": args,
                    "drop_reply": drop,
                }
            }
            if kind == 1
            else {"msg_request_error": {"error": name}}
        ),
    ),
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, 1, 1, 1, 2]),
    st.sampled_from([0, 1, CONSUMER_SERVICE_ID, 2**32 - 1]),
    st.integers(0, 20),
    st.binary(max_size=64),
    st.booleans(),
    st.sampled_from(["ConsumerPort", "ProducerPort", ""]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_FRAMES, st.booleans()), max_size=20))
def test_fuzzed_frames_never_raise_and_every_reply_fits(frames):
    rig = Rig()
    FakeProducer(rig, "p", pid=555, ds="track_event")
    client = Client(rig)
    client.conn._adopt = lambda fd: "/<adopted>\0"  # nothing to open: the core refuses
    client.bind()
    for frame, with_fd in frames:
        client.frame(frame, 3 if with_fd else None)
    assert max(client.sizes) <= MAX_FRAME_BYTES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzzed_stream_bytes_never_raise(data):
    rig = Rig()
    client = Client(rig)
    client.bind()
    try:
        frames = FrameDecoder().feed(data)
    except FrameError:  # the shell disconnects: nothing reaches the translator
        return
    for frame in frames:
        client.frame(frame)
    assert max(client.sizes) <= MAX_FRAME_BYTES
