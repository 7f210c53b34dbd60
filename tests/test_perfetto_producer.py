"""The Perfetto producer translator (actors/core/perfetto_producer.py) wired to a
real ServiceCore, in one process: a stand-in for an app built with the Perfetto
SDK sends ProducerPort frames as the v14 SDK did in the frame log
(shared/reference/perfetto-ipc-transcripts/probe-trace.jsonl), writes its
packets with tracebus's own SMB writer into the SMB the core made (what the
shell passes by SCM_RIGHTS is here the fake SMB's bytes), and a tracebus
consumer reads them back. No sockets, no sleeps; the fuzz runs frames and raw
bytes from a hostile client through translator and core together."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.perfetto_producer import MAX_QUEUED_COMMANDS, PerfettoProducerConn
from actors.core.perfetto_wire import (
    FRAME_HEADER,
    MAX_FRAME_BYTES,
    PERFETTO_PREFIX,
    PRODUCER_METHODS,
    PRODUCER_SERVICE_ID,
    FrameDecoder,
    FrameError,
    OutFrame,
)
from actors.core.service_core import Clocks, Peer, ServiceCore, ToConsumer, ToProducer
from actors.core.sessions import Limits
from protos import perfetto_ipc_pb2 as pf
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import SharedMemoryABI, resolve_geometry
from shm.arbiter import SharedMemoryArbiter
from shm.commits import CommitBatch
from shm.protozero import LEN, tag, varint
from shm.writer import BufferExhaustedPolicy, TraceWriter
from tests.perfetto_client import commit_data_args
from tests.test_service_core import MS, SERVICE_PID, SERVICE_UID, FakeSmb


class Received:
    """One frame the client got, decoded as the client decodes it."""

    def __init__(self, out: OutFrame) -> None:
        assert len(out.data) <= MAX_FRAME_BYTES
        (self.frame,) = FrameDecoder().feed(out.data)
        self.smb_fd = out.smb_fd


class Rig:
    """ServiceCore and the connections' translators, routed as the shell routes them."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.now = 1000 * MS
        self.smbs: list[FakeSmb] = []
        clocks = Clocks(lambda: [(6, self.now), (3, self.now)], lambda: self.now)
        self.core = ServiceCore(self._factory, clocks, SERVICE_UID, SERVICE_PID)
        if limits is not None:
            self.core.limits = limits
        self.clients: dict[bytes, SdkClient] = {}
        self.to_consumers: dict[bytes, list[ipc.ServiceToConsumer]] = {}

    def _factory(self, geometry, pid, uid):
        smb = FakeSmb(geometry, pid, uid)
        self.smbs.append(smb)
        return smb

    def route(self, outputs) -> None:
        for out in outputs:
            if isinstance(out, ToProducer):
                client = self.clients[out.identity]
                client.receive(client.conn.on_core(out.msg))
            else:
                assert isinstance(out, ToConsumer)
                self.to_consumers.setdefault(out.identity, []).append(out.msg)

    def idle(self) -> None:
        while self.core.pending_work():
            self.route(self.core.continue_reads(self.now))


class SdkClient:
    """Speaks ProducerPort as the Perfetto SDK does, through the translator."""

    def __init__(self, rig: Rig, pid: int, uid: int = 1000, number: int = 1) -> None:
        self.rig = rig
        self.peer = Peer(PERFETTO_PREFIX + number.to_bytes(4, "big"), pid, uid)
        self.conn = PerfettoProducerConn(self.peer.identity)
        rig.clients[self.peer.identity] = self
        self.inbox: list[Received] = []
        self.last_request_id = 0
        self.stream = 0  # GetAsyncCommand's request id
        self.arbiter: SharedMemoryArbiter | None = None
        self.writers: dict[int, TraceWriter] = {}  # instance id -> writer
        self.patch_entries = 0  # chunks_to_patch entries sent
        self.setups_with_fd = 0

    # -- the wire --------------------------------------------------------------------

    def receive(self, frames: list[OutFrame]) -> None:
        self.inbox += [Received(f) for f in frames]

    def send(self, frame: pf.IPCFrame, fd: int | None = None):
        step = self.conn.on_frame(frame, fd)
        assert not step.fd_taken, "no fd is ever adopted: the shell closes it"
        self.receive(step.frames)
        for envelope in step.to_core:
            self.rig.route(self.rig.core.handle_producer(self.peer, envelope, self.rig.now))
        return step

    def next_frame(self) -> pf.IPCFrame:
        self.last_request_id += 1
        return pf.IPCFrame(request_id=self.last_request_id)

    def bind(self, name: str = "ProducerPort") -> pf.IPCFrame.BindServiceReply:
        frame = self.next_frame()
        frame.msg_bind_service.service_name = name
        self.send(frame)
        (got,) = self.take(frame.request_id)
        return got.frame.msg_bind_service_reply

    def invoke(
        self,
        method: str | int,
        args: Message | bytes = b"",
        drop_reply: bool = False,
        fd: int | None = None,
        service_id: int = PRODUCER_SERVICE_ID,
    ) -> int:
        frame = self.next_frame()
        call = frame.msg_invoke_method
        call.service_id = service_id
        call.method_id = PRODUCER_METHODS[method] if isinstance(method, str) else method
        call.args_proto = args if isinstance(args, bytes) else args.SerializeToString()
        call.drop_reply = drop_reply
        self.step = self.send(frame, fd)
        return frame.request_id

    def take(self, request_id: int) -> list[Received]:
        got = [r for r in self.inbox if r.frame.request_id == request_id]
        self.inbox = [r for r in self.inbox if r.frame.request_id != request_id]
        return got

    def reply(self, request_id: int, cls: type[Message] | None = None):
        """The single reply to `request_id`: its message, or None if it was rejected."""
        (got,) = self.take(request_id)
        reply = got.frame.msg_invoke_method_reply
        assert not reply.has_more
        if not reply.success:
            return None
        return cls.FromString(reply.reply_proto) if cls else reply.reply_proto

    # -- the SDK's producer ----------------------------------------------------------

    def connect(
        self, name: str = "./producer_app", **hints: int
    ) -> pf.InitializeConnectionResponse:
        """bind, InitializeConnection, GetAsyncCommand (the probe's #1..#3)."""
        reply = self.bind()
        assert reply.success
        init = pf.InitializeConnectionRequest(producer_name=name, smb_scraping_mode=1, **hints)
        init.build_flags = 1
        rid = self.invoke("InitializeConnection", init)
        self.stream = self.invoke("GetAsyncCommand")
        return self.reply(rid, pf.InitializeConnectionResponse)

    def register_track_event(self) -> pf.RegisterDataSourceResponse:
        desc = pb.DataSourceDescriptor(
            name="track_event",
            will_notify_on_stop=True,
            will_notify_on_start=True,
            handles_incremental_state_clear=True,
        )
        desc.track_event_descriptor.available_categories.add(name="app")
        req = pf.RegisterDataSourceRequest(data_source_descriptor=desc.SerializeToString())
        return self.reply(self.invoke("RegisterDataSource", req), pf.RegisterDataSourceResponse)

    def commands(self) -> list[tuple[pf.GetAsyncCommandResponse, bool]]:
        """The commands that came on the stream (with whether an fd came along)."""
        out = []
        for got in self.take(self.stream):
            reply = got.frame.msg_invoke_method_reply
            assert reply.success and reply.has_more
            out.append((pf.GetAsyncCommandResponse.FromString(reply.reply_proto), got.smb_fd))
        return out

    def process(self) -> list[str]:
        """Act on the commands as the SDK does; returns their kinds."""
        kinds = []
        for cmd, fd in self.commands():
            kind = cmd.WhichOneof("cmd")
            kinds.append(kind)
            assert fd == (kind == "setup_tracing"), "the memfd comes with setup_tracing only"
            ACTIONS.get(kind, lambda c, m: None)(self, getattr(cmd, kind))
        return kinds

    def setup_tracing(self, cmd: pf.GetAsyncCommandResponse.SetupTracing) -> None:
        smb = self.rig.smbs[-1]  # what TakeReceivedFD() gives: the SMB the core made
        assert smb.owner == (self.peer.pid, self.peer.uid)
        assert self.arbiter is None, "the SDK aborts on a second setup_tracing"
        self.setups_with_fd += 1
        geometry = resolve_geometry(len(smb.buf), cmd.shared_buffer_page_size_kb * 1024)
        abi = SharedMemoryABI(smb.buf, geometry)
        self.arbiter = SharedMemoryArbiter(abi, self.commit, sleep=lambda s: None)

    def start_data_source(self, cmd: pf.GetAsyncCommandResponse.StartDataSource) -> None:
        config = pb.DataSourceConfig.FromString(cmd.config)
        assert config.target_buffer > 0, "the SDK's PERFETTO_CHECK"
        assert self.arbiter is not None
        writer = self.arbiter.create_trace_writer(config.target_buffer, BufferExhaustedPolicy.DROP)
        self.writers[cmd.new_instance_id] = writer
        started = pf.NotifyDataSourceStartedRequest(data_source_id=cmd.new_instance_id)
        self.invoke("NotifyDataSourceStarted", started, drop_reply=True)
        register = pf.RegisterTraceWriterRequest(
            trace_writer_id=writer.writer_id, target_buffer=config.target_buffer
        )
        self.invoke("RegisterTraceWriter", register, drop_reply=True)

    def flush(self, cmd: pf.GetAsyncCommandResponse.Flush) -> None:
        for instance_id in cmd.data_source_ids:
            self.writers[instance_id].flush()
        ack = pf.CommitDataRequest(flush_request_id=cmd.request_id)
        self.invoke("CommitData", ack, drop_reply=True)

    def stop_data_source(self, cmd: pf.GetAsyncCommandResponse.StopDataSource) -> None:
        self.writers.pop(cmd.instance_id).flush()
        stopped = pf.NotifyDataSourceStoppedRequest(data_source_id=cmd.instance_id)
        self.invoke("NotifyDataSourceStopped", stopped, drop_reply=True)

    def commit(self, batch: CommitBatch) -> None:
        """The arbiter's batch as the SDK's CommitData (the client double's encoding,
        in Perfetto's numbering)."""
        req = pf.CommitDataRequest.FromString(commit_data_args(batch))
        self.patch_entries += len(req.chunks_to_patch)
        self.invoke("CommitData", req, drop_reply=True)


ACTIONS: dict[str, Callable] = {
    "setup_tracing": SdkClient.setup_tracing,
    "start_data_source": SdkClient.start_data_source,
    "flush": SdkClient.flush,
    "stop_data_source": SdkClient.stop_data_source,
}


class Consumer:
    """A tracebus consumer on the same core (the ZeroMQ front end's messages)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.peer = Peer(b"c-1", 77, 1000)
        self.next_id = 1

    def send(self, **kw) -> None:
        msg = ipc.ConsumerToService(request_id=self.next_id, **kw)
        self.next_id += 1
        self.rig.route(self.rig.core.handle_consumer(self.peer, msg, self.rig.now))

    def replies(self) -> list[ipc.ServiceToConsumer]:
        return self.rig.to_consumers.pop(self.peer.identity, [])

    def enable(self, name: str = "track_event", size_kb: int = 1024) -> None:
        cfg = pb.TraceConfig()
        cfg.buffers.add(size_kb=size_kb)
        cfg.data_sources.add().config.name = name
        self.send(enable_tracing=ipc.EnableTracingRequest(trace_config=cfg.SerializeToString()))
        (enabled,) = self.replies()
        assert enabled.enable_tracing.started and not enabled.enable_tracing.error

    def read(self) -> list[pb.TracePacket]:
        self.send(read_buffers=ipc.ReadBuffersRequest())
        self.rig.idle()
        packets, data = [], b""
        for r in self.replies():
            for s in r.read_buffers.slices:
                data += s.data
                if s.last_slice_for_packet:
                    packets.append(pb.TracePacket.FromString(data))
                    data = b""
        return packets


def test_replays_the_sdk_producer_session_and_the_packets_read_back():
    """probe-trace.jsonl's sequence: the SDK's frames in, its packets out of the core."""
    rig = Rig()
    app = SdkClient(rig, pid=6048)
    bound = app.bind()
    assert bound.success and bound.service_id == PRODUCER_SERVICE_ID
    assert {(m.name, m.id) for m in bound.methods} == set(PRODUCER_METHODS.items())
    init = pf.InitializeConnectionRequest(producer_name="./producer_app", smb_scraping_mode=1)
    init.shared_memory_size_hint_bytes = init.shared_memory_page_size_hint_bytes = 0
    init_id = app.invoke("InitializeConnection", init)
    answer = app.reply(init_id, pf.InitializeConnectionResponse)
    assert answer.HasField("using_shmem_provided_by_producer")
    assert not answer.using_shmem_provided_by_producer
    assert not answer.direct_smb_patching_supported  # patches come in CommitData
    app.stream = app.invoke("GetAsyncCommand")
    assert app.register_track_event().error == ""
    (producer,) = rig.core.producers.values()
    assert (producer.name, producer.pid, producer.uid) == ("./producer_app", 6048, 1000)
    desc = producer.data_sources["track_event"]
    assert desc.will_notify_on_start and desc.will_notify_on_stop
    assert desc.handles_incremental_state_clear and not desc.no_flush

    consumer = Consumer(rig)
    consumer.enable()
    commands = app.commands()
    kinds = [cmd.WhichOneof("cmd") for cmd, _ in commands]
    assert kinds == ["setup_tracing", "setup_data_source", "start_data_source"]
    assert [fd for _, fd in commands] == [True, False, False]
    setup, _ = commands[0]
    assert setup.setup_tracing.shared_buffer_page_size_kb == 4  # 256 KiB, 4 KiB pages
    assert len(rig.smbs[-1].buf) == 256 * 1024
    start = commands[2][0].start_data_source
    assert start.config == commands[1][0].setup_data_source.config
    config = pb.DataSourceConfig.FromString(start.config)
    assert config.name == "track_event" and config.target_buffer >= 1
    for cmd, _ in commands:  # act on them as the SDK does
        kind = cmd.WhichOneof("cmd")
        ACTIONS.get(kind, lambda c, m: None)(app, getattr(cmd, kind))
    assert app.step.to_core[0].register_trace_writer.target_buffer == config.target_buffer

    (writer,) = app.writers.values()
    for i in range(200):
        packet = pb.TracePacket(timestamp=i + 1)
        packet.for_testing.counter = i
        writer.write_packet(packet.SerializeToString())
    big = "x" * 10_000  # a nested message over two chunks: its size is patched
    with writer.new_packet() as packet:
        with packet.begin_nested(900) as event:  # TracePacket.for_testing
            event.bytes_field(1, big.encode())  # TestEvent.str
    consumer.send(flush=ipc.FlushConsumerRequest(timeout_ms=1000))
    assert app.process() == ["flush"]
    (flushed,) = consumer.replies()
    assert flushed.flush.success, "acked by CommitData.flush_request_id"
    assert app.patch_entries > 0

    consumer.send(disable_tracing=ipc.DisableTracingRequest())
    assert app.process() == ["stop_data_source"]
    replies = consumer.replies()
    assert replies[0].enable_tracing.disabled and not replies[0].enable_tracing.error
    assert not app.inbox, "every drop_reply call went unanswered"

    packets = [p for p in consumer.read() if p.HasField("for_testing")]
    assert [p.for_testing.counter for p in packets[:-1]] == list(range(200))
    assert packets[-1].for_testing.str == big
    assert {(p.trusted_pid, p.trusted_uid) for p in packets} == {(6048, 1000)}
    assert rig.core.counters.chunks_discarded == rig.core.counters.patches_discarded == 0
    assert app.setups_with_fd == 1
    assert app.conn.counters.rejected == {} and not app.conn.closing


def test_commands_before_get_async_command_wait_for_it_in_order():
    rig = Rig()
    app = SdkClient(rig, pid=10)
    app.bind()
    app.reply(app.invoke("InitializeConnection", pf.InitializeConnectionRequest(producer_name="p")))
    app.register_track_event()
    Consumer(rig).enable()
    assert not app.inbox  # no stream yet: nothing to send on
    app.stream = app.invoke("GetAsyncCommand")
    commands = app.commands()
    kinds = [cmd.WhichOneof("cmd") for cmd, _ in commands]
    assert kinds == ["setup_tracing", "setup_data_source", "start_data_source"]
    assert [fd for _, fd in commands] == [True, False, False]


def test_the_smb_follows_the_producers_hints():
    rig = Rig()
    app = SdkClient(rig, pid=10)
    app.connect(shared_memory_size_hint_bytes=1 << 20, shared_memory_page_size_hint_bytes=16 * 1024)
    app.register_track_event()
    Consumer(rig).enable()
    setup, fd = app.commands()[0]
    assert fd and setup.setup_tracing.shared_buffer_page_size_kb == 16
    assert len(rig.smbs[-1].buf) == 1 << 20


def test_a_client_that_never_binds_the_stream_is_cut_off_past_the_queue_bound():
    conn = PerfettoProducerConn(PERFETTO_PREFIX + b"\0\0\0\1")
    stop = ipc.ServiceToProducer(stop_data_source=ipc.StopDataSource(instance_id=1))
    for _ in range(MAX_QUEUED_COMMANDS):
        assert conn.on_core(stop) == [] and not conn.closing
    assert conn.on_core(stop) == []
    assert "GetAsyncCommand" in conn.closing


def test_a_second_get_async_command_ends_the_first_stream():
    rig = Rig()
    app = SdkClient(rig, pid=10)
    app.connect()
    first = app.stream
    second = app.invoke("GetAsyncCommand")
    (ended,) = app.take(first)
    assert not ended.frame.msg_invoke_method_reply.success
    app.stream = second
    app.register_track_event()
    Consumer(rig).enable()
    assert len(app.commands()) == 3


@pytest.mark.parametrize(
    "kind, command, expected",
    [
        (
            "flush",
            ipc.FlushRequest(flush_request_id=7, instance_ids=[3, 4], flags=2, timeout_ms=5),
            "flush { data_source_ids: 3 data_source_ids: 4 request_id: 7 flags: 2 }",
        ),
        (
            "clear_incremental_state",
            ipc.ClearIncrementalState(instance_ids=[5]),
            "clear_incremental_state { data_source_ids: 5 }",
        ),
        (
            "stop_data_source",
            ipc.StopDataSource(instance_id=9),
            "stop_data_source { instance_id: 9 }",
        ),
        (
            "setup_tracing",
            ipc.SetupTracing(shm_size_bytes=1 << 20, shm_page_size_bytes=16384),
            "setup_tracing { shared_buffer_page_size_kb: 16 }",
        ),
    ],
)
def test_core_commands_become_perfetto_commands(kind, command, expected):
    conn = PerfettoProducerConn(PERFETTO_PREFIX + b"\0\0\0\1")
    bind = pf.IPCFrame(request_id=1)
    bind.msg_bind_service.service_name = "ProducerPort"
    conn.on_frame(bind, None)
    stream = pf.IPCFrame(request_id=2)
    stream.msg_invoke_method.service_id, stream.msg_invoke_method.method_id = 1, 5
    conn.on_frame(stream, None)
    msg = ipc.ServiceToProducer()
    getattr(msg, kind).CopyFrom(command)
    (out,) = conn.on_core(msg)
    got = Received(out)
    assert got.smb_fd == (kind == "setup_tracing")
    assert got.frame.request_id == 2 and got.frame.msg_invoke_method_reply.has_more
    cmd = pf.GetAsyncCommandResponse.FromString(got.frame.msg_invoke_method_reply.reply_proto)
    assert " ".join(str(cmd).split()) == expected


def test_notices_and_heartbeats_from_the_core_send_nothing():
    conn = PerfettoProducerConn(PERFETTO_PREFIX + b"\0\0\0\1")
    notice = ipc.ServiceToProducer()
    notice.error.message = "no SMB of 1 bytes"
    assert conn.on_core(notice) == []
    assert conn.on_core(ipc.ServiceToProducer(heartbeat=ipc.Heartbeat())) == []
    assert conn.counters.core_notices == 1 and conn.last_refusal == "no SMB of 1 bytes"


def test_a_command_too_big_for_a_frame_ends_the_connection_instead_of_raising():
    rig = Rig()
    app = SdkClient(rig, pid=10)
    app.connect()
    start = ipc.StartDataSource(instance_id=1, data_source_config=b"\x0a" * MAX_FRAME_BYTES)
    assert app.conn.on_core(ipc.ServiceToProducer(start_data_source=start)) == []
    assert "does not fit" in app.conn.closing


def test_other_services_are_refused_and_calls_before_the_bind_rejected():
    rig = Rig()
    app = SdkClient(rig, pid=10)
    rid = app.invoke("InitializeConnection", pf.InitializeConnectionRequest(producer_name="p"))
    assert app.reply(rid) is None
    assert app.invoke("Sync", drop_reply=True) and not app.inbox
    for name in ("ConsumerPort", "", "producerport"):
        assert not app.bind(name).success
    assert rig.core.producers.count_of_uid(1000, 0) == 0
    assert app.conn.counters.binds_refused == 3
    assert app.conn.counters.rejected == {"before BindService": 2}


def test_unknown_ids_and_args_that_do_not_parse_are_rejected_one_by_one():
    rig = Rig()
    app = SdkClient(rig, pid=10)
    app.connect()
    assert app.reply(app.invoke("Sync", service_id=2)) is None
    assert app.reply(app.invoke(0)) is None
    assert app.reply(app.invoke(12)) is None  # v53's UpdateDataSource: not listed
    assert app.reply(app.invoke("CommitData", b"\x0a\xff")) is None  # truncated
    bad_desc = pf.RegisterDataSourceRequest(data_source_descriptor=b"\x0a\x05ab")
    assert app.reply(app.invoke("RegisterDataSource", bad_desc)) is None
    assert app.invoke(99, drop_reply=True) and not app.inbox
    assert app.reply(app.invoke("Sync")) == b""  # the connection goes on
    assert app.conn.counters.rejected == {
        "unknown service id": 1,
        "unknown method id": 3,
        "args do not parse": 2,
    }
    frame = app.next_frame()
    frame.msg_invoke_method_reply.success = True  # a reply sent to the service
    app.send(frame)
    (got,) = app.take(frame.request_id)
    assert got.frame.msg_request_error.error


def test_calls_the_core_does_not_answer_are_answered_at_once_if_asked():
    rig = Rig()
    app = SdkClient(rig, pid=10)
    app.connect()
    calls = {
        "UnregisterDataSource": pf.UnregisterDataSourceRequest(data_source_name="x"),
        "CommitData": pf.CommitDataRequest(),
        "RegisterTraceWriter": pf.RegisterTraceWriterRequest(trace_writer_id=1, target_buffer=1),
        "UnregisterTraceWriter": pf.UnregisterTraceWriterRequest(trace_writer_id=1),
        "NotifyDataSourceStarted": pf.NotifyDataSourceStartedRequest(data_source_id=1),
        "NotifyDataSourceStopped": pf.NotifyDataSourceStoppedRequest(data_source_id=1),
        "ActivateTriggers": pf.ActivateTriggersRequest(trigger_names=["t"]),
    }
    for method, args in calls.items():
        assert app.reply(app.invoke(method, args)) == b"", method
        (envelope,) = app.step.to_core
        assert envelope.WhichOneof("msg") is not None
    assert app.reply(app.invoke("Sync")) == b"" and app.step.to_core == []


def test_the_core_refusing_the_first_initialize_connection_ends_the_connection():
    rig = Rig(Limits(max_producers_per_uid=1))
    first = SdkClient(rig, pid=10, number=1)
    first.connect()
    second = SdkClient(rig, pid=11, number=2)
    second.bind()
    rid = second.invoke("InitializeConnection", pf.InitializeConnectionRequest(producer_name="b"))
    assert second.reply(rid) is None
    assert second.conn.closing
    # a second InitializeConnection on a working connection is refused, not fatal
    rid = first.invoke("InitializeConnection", pf.InitializeConnectionRequest(producer_name="a"))
    assert first.reply(rid) is None and not first.conn.closing


def test_a_producer_provided_smb_is_declined_and_its_fd_left_to_the_shell():
    rig = Rig()
    app = SdkClient(rig, pid=10)
    app.bind()
    init = pf.InitializeConnectionRequest(producer_name="p", producer_provided_shmem=True)
    rid = app.invoke("InitializeConnection", init, fd=42)
    assert not app.step.fd_taken
    answer = app.reply(rid, pf.InitializeConnectionResponse)
    assert not answer.using_shmem_provided_by_producer
    assert app.conn.counters.provided_smbs_declined == 1


def test_a_move_with_inline_data_is_discarded():
    rig = Rig()
    app = SdkClient(rig, pid=10)
    app.connect()
    req = pf.CommitDataRequest(flush_request_id=3)
    req.chunks_to_move.add(page=0, chunk=0, target_buffer=1, data=b"\0" * 16)
    req.chunks_to_move.add(page=1, chunk=0, target_buffer=1)
    app.invoke("CommitData", req, drop_reply=True)
    (envelope,) = app.step.to_core
    moves = envelope.commit_data.chunks_to_move
    assert [(m.page, m.data) for m in moves] == [(1, b"")]
    assert envelope.commit_data.flush_request_id == 3
    assert app.conn.counters.moves_with_data == 1


def test_a_register_refused_by_the_core_carries_its_error():
    rig = Rig()
    app = SdkClient(rig, pid=10)
    app.connect()
    assert app.register_track_event().error == ""
    assert "already registered" in app.register_track_event().error


def raw_string(field: int, data: bytes) -> bytes:
    return tag(field, LEN) + varint(len(data)) + data


def test_names_that_are_not_utf8_do_not_raise():
    rig = Rig()
    app = SdkClient(rig, pid=10)
    app.bind()
    rid = app.invoke("InitializeConnection", raw_string(3, b"\xff\xfeapp\n"))
    assert app.reply(rid, pf.InitializeConnectionResponse) is not None
    (producer,) = rig.core.producers.values()
    assert producer.name == "\ufffd\ufffdapp?"
    app.stream = app.invoke("GetAsyncCommand")
    desc = raw_string(1, b"ds\xc3")
    rid = app.invoke("RegisterDataSource", raw_string(1, desc))
    assert app.reply(rid, pf.RegisterDataSourceResponse).error == ""
    assert list(producer.data_sources) == ["ds\ufffd"]
    rid = app.invoke("UnregisterDataSource", raw_string(1, b"\x80"))
    rid = app.invoke("ActivateTriggers", raw_string(1, b"\xff") + raw_string(1, b"ok"))
    assert app.reply(rid) == b""
    assert app.step.to_core[0].activate_triggers.trigger_names == ["\ufffd", "ok"]


# -- fuzz ------------------------------------------------------------------------------


def args_strategy() -> st.SearchStrategy[bytes]:
    """Args bytes: random, or well-formed for some method with hostile values."""
    u32 = st.integers(0, (1 << 32) - 1)
    u64 = st.integers(0, (1 << 64) - 1)
    names = st.binary(max_size=12)
    init = st.builds(
        lambda n, s, p, prov: (
            raw_string(3, n)
            + pf.InitializeConnectionRequest(
                shared_memory_size_hint_bytes=s,
                shared_memory_page_size_hint_bytes=p,
                producer_provided_shmem=prov,
            ).SerializeToString()
        ),
        names,
        u32,
        u32,
        st.booleans(),
    )
    desc = st.builds(
        lambda n, a, b: raw_string(
            1,
            raw_string(1, n)
            + pb.DataSourceDescriptor(will_notify_on_start=a, no_flush=b).SerializeToString(),
        ),
        names,
        st.booleans(),
        st.booleans(),
    )
    move = st.builds(
        lambda page, chunk, buf, data: pf.CommitDataRequest.ChunksToMove(
            page=page, chunk=chunk, target_buffer=buf, data=data
        ),
        st.integers(0, 80) | u32,
        st.integers(0, 20) | u32,
        st.integers(0, 4) | u32,
        st.binary(max_size=4),
    )
    patch = st.builds(
        lambda buf, w, c, off, data, more: pf.CommitDataRequest.ChunkToPatch(
            target_buffer=buf,
            writer_id=w,
            chunk_id=c,
            patches=[pf.CommitDataRequest.ChunkToPatch.Patch(offset=off, data=data)],
            has_more_patches=more,
        ),
        st.integers(0, 4),
        st.integers(0, 1100),
        st.integers(0, 5) | u32,
        st.integers(0, 5000) | u32,
        st.binary(max_size=6),
        st.booleans(),
    )
    commit = st.builds(
        lambda moves, patches, flush: pf.CommitDataRequest(
            chunks_to_move=moves, chunks_to_patch=patches, flush_request_id=flush
        ).SerializeToString(),
        st.lists(move, max_size=4),
        st.lists(patch, max_size=3),
        st.integers(0, 5) | u64,
    )
    ids = st.builds(
        lambda a, b: pf.RegisterTraceWriterRequest(
            trace_writer_id=a, target_buffer=b
        ).SerializeToString(),
        st.integers(0, 1100) | u32,
        st.integers(0, 4) | u32,
    )
    instance = st.builds(
        lambda i: pf.NotifyDataSourceStartedRequest(data_source_id=i).SerializeToString(),
        st.integers(0, 4) | u64,
    )
    triggers = st.lists(names, max_size=3).map(lambda ns: b"".join(raw_string(1, n) for n in ns))
    return st.one_of(st.binary(max_size=64), init, desc, commit, ids, instance, triggers)


def frame_strategy() -> st.SearchStrategy[pf.IPCFrame]:
    def invoke(rid, service, method, args, drop):
        frame = pf.IPCFrame(request_id=rid)
        call = frame.msg_invoke_method
        call.service_id, call.method_id, call.args_proto, call.drop_reply = (
            service,
            method,
            args,
            drop,
        )
        return frame

    def bind(rid, name):
        frame = pf.IPCFrame(request_id=rid)
        frame.msg_bind_service.service_name = name
        return frame

    def other(rid, which):
        frame = pf.IPCFrame(request_id=rid)
        getattr(frame, which).SetInParent()
        return frame

    rid = st.integers(0, 50) | st.integers(0, (1 << 64) - 1)
    return st.one_of(
        st.builds(
            invoke,
            rid,
            st.sampled_from([1, 1, 1, 2, 0]) | st.integers(0, (1 << 32) - 1),
            st.integers(0, 13),
            args_strategy(),
            st.booleans(),
        ),
        st.builds(bind, rid, st.sampled_from(["ProducerPort", "ConsumerPort", ""])),
        st.builds(
            other,
            rid,
            st.sampled_from(
                [
                    "msg_bind_service_reply",
                    "msg_invoke_method_reply",
                    "msg_request_error",
                    "set_peer_identity",
                ]  # fmt: skip
            ),
        ),
    )


def fuzz_rig() -> tuple[Rig, SdkClient, Consumer]:
    """A connected SDK producer in a running session, before the hostile frames."""
    rig = Rig()
    app = SdkClient(rig, pid=10)
    app.connect()
    app.register_track_event()
    consumer = Consumer(rig)
    consumer.enable()
    app.process()
    return rig, app, consumer


def check_replies(app: SdkClient, sent: set[int]) -> None:
    """Every frame the client got answers a request it made (decoded, under the cap)."""
    for got in app.inbox:
        assert got.frame.request_id in sent
    app.inbox.clear()


@settings(max_examples=150, deadline=None)
@given(st.lists(frame_strategy(), max_size=25))
def test_fuzz_hostile_frames_never_raise(frames):
    rig, app, consumer = fuzz_rig()
    sent = {app.stream}
    for frame in frames:
        sent.add(frame.request_id)
        app.send(frame, fd=7)
        check_replies(app, sent)
        rig.now += MS
        rig.route(rig.core.on_timer(rig.now))
        check_replies(app, sent)
    consumer.send(flush=ipc.FlushConsumerRequest(timeout_ms=100))
    consumer.send(disable_tracing=ipc.DisableTracingRequest())
    rig.now += 10_000 * MS
    rig.route(rig.core.on_timer(rig.now))
    consumer.read()
    check_replies(app, sent | {app.stream} | set(range(app.last_request_id + 1)))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20), st.binary(max_size=64))
def test_fuzz_raw_bytes_never_raise(payloads, tail):
    """Frames of random bytes (most do not parse, some are random IPCFrames)."""
    rig, app, _ = fuzz_rig()
    data = b"".join(FRAME_HEADER.pack(len(p)) + p for p in payloads) + tail
    try:
        frames = FrameDecoder().feed(data)
    except FrameError:  # the tail announced a frame over the cap: the shell disconnects
        frames = FrameDecoder().feed(data[: len(data) - len(tail)])
    for frame in frames:
        app.send(frame)
    app.inbox.clear()
