"""write_into_file on ServiceCore with a fake clock and a fake file opener
(issue 8, item 5, core side): the service drains the session's buffers into
the file every file_write_period_ms (at least 100 ms), so the file holds more
than the buffers ever did; the file is a Perfetto trace in the order of a
consumer's read, ending with trace_stats; the consumer hears the session ended
only after the file is closed; max_file_size_bytes ends the session with whole
packets only."""

from __future__ import annotations

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import readback
from actors.core.outbox import AppendToFile, CloseFile, ToConsumer
from actors.core.service_core import Clocks, Peer, ServiceCore, SliceBudget
from actors.data_sources import synthetic_packet
from benchmarks.readback_core import chunks_of
from protos import tracebus_ipc_pb2 as ipc
from shm.protozero import varint
from tests import packet_kinds
from tests.test_service_core import FakeConsumer, FakeProducer, Rig

CONSUMER = Peer(b"consumer", 77, 1000)
PRODUCER_ID, UID, PID = 3, 1000, 4242
NOW = 10**12
MS = 1_000_000
FILE_ID = 7
PATH = "/tmp/trace-of-the-test.pftrace"
RING_BUFFER = pb.TraceConfig.BufferConfig.RING_BUFFER


class FakeFiles:
    """The shell's side: what the core asked to append to and close, and the outputs
    in order."""

    def __init__(self, error: OSError | None = None) -> None:
        self.error = error
        self.opened: list[str] = []
        self.data = bytearray()
        self.closed = False
        self.outputs: list = []

    def open(self, path: str) -> int:
        if self.error is not None:
            raise self.error
        self.opened.append(path)
        return FILE_ID

    def take(self, outputs: list) -> list[ipc.ServiceToConsumer]:
        """Apply the file outputs; return the messages to the consumer."""
        self.outputs += outputs
        replies = []
        for out in outputs:
            if isinstance(out, AppendToFile):
                assert out.file_id == FILE_ID and not self.closed
                self.data += out.data
            elif isinstance(out, CloseFile):
                assert out.file_id == FILE_ID and not self.closed
                self.closed = True
            else:
                assert isinstance(out, ToConsumer) and out.identity == CONSUMER.identity
                replies.append(out.msg)
        return replies

    def trace(self) -> pb.Trace:
        return pb.Trace.FromString(bytes(self.data))


def config(buffer_kib: int = 64, **fields) -> pb.TraceConfig:
    cfg = pb.TraceConfig(write_into_file=True, **fields)
    cfg.buffers.add(size_kb=buffer_kib, fill_policy=RING_BUFFER)
    return cfg


def enable(
    cfg: pb.TraceConfig, files: FakeFiles, path: str = PATH
) -> tuple[ServiceCore, ipc.EnableTracingResponse]:
    clocks = Clocks(lambda: [(6, NOW), (3, NOW)], lambda: NOW)
    core = ServiceCore(
        lambda geometry: None,  # type: ignore[arg-type,return-value]
        clocks,
        0,
        100,
        open_file=files.open,
    )
    req = ipc.EnableTracingRequest(trace_config=cfg.SerializeToString(), output_path=path)
    (reply,) = send(core, files, 1, NOW, enable_tracing=req)
    return core, reply.enable_tracing


def send(core: ServiceCore, files: FakeFiles, request_id: int, now: int, **kw):
    msg = ipc.ConsumerToService(request_id=request_id, **kw)
    return files.take(core.handle_consumer(CONSUMER, msg, now))


def commit(core: ServiceCore, chunks) -> None:
    (buffer,) = core.buffers.values()
    for writer_id, chunk_id, count, flags, payload in chunks:
        buffer.copy_chunk_untrusted(
            PRODUCER_ID, UID, PID, writer_id, chunk_id, count, flags, True, payload
        )


def run_drains(core: ServiceCore, files: FakeFiles, now: int) -> list[ipc.ServiceToConsumer]:
    replies = []
    while core.pending_work():
        replies += files.take(core.continue_reads(now))
    return replies


def producer_timestamps(trace: pb.Trace) -> list[int]:
    return [p.timestamp for p in trace.packet if p.HasField("track_event")]


@pytest.fixture(scope="module")
def chunks_256kib():
    return chunks_of(256 << 10, writers=2)


def test_periodic_drains_write_more_than_the_buffer_holds_in_read_order(chunks_256kib):
    files = FakeFiles()
    core, reply = enable(config(buffer_kib=64, file_write_period_ms=500), files)
    assert reply.started and not reply.error and "write_into_file" not in reply.unsupported_fields
    assert reply.unsupported_fields == [] and files.opened == [PATH]
    batches = [chunks_256kib[i : i + 12] for i in range(0, len(chunks_256kib), 12)]
    now = NOW
    for batch in batches:  # each about 48 KiB: the 64 KiB buffer never holds two
        commit(core, batch)
        assert core.next_deadline() == now + 500 * MS
        files.take(core.on_timer(now + 500 * MS - 1))
        assert not core.pending_work()  # not due yet
        now += 500 * MS
        files.take(core.on_timer(now))
        assert run_drains(core, files, now) == []
    (buffer,) = core.buffers.values()
    assert buffer.stats.chunks_overwritten == 0  # drained before the ring wrapped over data

    ended = send(core, files, 2, now, disable_tracing=ipc.DisableTracingRequest())
    assert ended == [] and not files.closed  # the last drain first
    ended = run_drains(core, files, now)
    assert files.closed
    assert [m.WhichOneof("msg") for m in ended] == ["enable_tracing", "ack"]
    assert ended[0].enable_tracing.disabled and not ended[0].enable_tracing.error
    close_at = next(i for i, o in enumerate(files.outputs) if isinstance(o, CloseFile))
    assert all(not isinstance(o, AppendToFile) for o in files.outputs[close_at:])

    trace = files.trace()
    assert len(files.data) > 3 * 64 * 1024
    kinds = packet_kinds.kinds(trace.packet)
    # the service's packets first (as a consumer's read has them), then the buffer's
    head = len(packet_kinds.FIRST_READ)
    assert kinds[:head] == packet_kinds.FIRST_READ
    assert kinds[-1] == "trace_stats" and kinds.count("trace_stats") == 1
    assert kinds.count("trace_config") == 1
    disabled_at = kinds.index("tracing_disabled")
    # each drain ends with read_tracing_buffers_completed
    assert set(kinds[head : disabled_at - 1]) == {"track_event", "read_tracing_buffers_completed"}
    assert kinds[disabled_at - 1] == "clock_snapshot"  # taken at the stop
    # the last drain found nothing new
    assert kinds[disabled_at + 1 :] == ["read_tracing_buffers_completed", "trace_stats"]
    timestamps = producer_timestamps(trace)
    assert sorted(timestamps) == sorted(set(timestamps)) and len(timestamps) > 2000
    for seq in {p.trusted_packet_sequence_id for p in trace.packet if p.HasField("track_event")}:
        of_seq = [p.timestamp for p in trace.packet if p.trusted_packet_sequence_id == seq]
        assert of_seq == sorted(of_seq)  # in order within each sequence
    stats = trace.packet[-1].trace_stats.buffer_stats[0]
    assert stats.chunks_written == stats.chunks_read == len(chunks_256kib)
    assert stats.chunks_discarded == 0 and stats.chunks_overwritten == 0


def test_the_write_period_defaults_to_5_s_and_is_at_least_100_ms():
    core, _ = enable(config(), FakeFiles())
    assert core.next_deadline() == NOW + 5000 * MS
    core, _ = enable(config(file_write_period_ms=10), FakeFiles())
    assert core.next_deadline() == NOW + 100 * MS
    core, _ = enable(config(file_write_period_ms=250), FakeFiles())
    assert core.next_deadline() == NOW + 250 * MS


def test_a_drain_waits_for_the_start_of_a_deferred_session(chunks_256kib):
    files = FakeFiles()
    core, reply = enable(config(file_write_period_ms=100, deferred_start=True), files)
    assert not reply.started
    files.take(core.on_timer(NOW + 100 * MS))
    assert not core.pending_work() and not files.data  # nothing drained before the start
    send(core, files, 2, NOW + 150 * MS, start_tracing=ipc.StartTracingRequest())
    commit(core, chunks_256kib[:4])
    files.take(core.on_timer(NOW + 200 * MS))
    run_drains(core, files, NOW + 200 * MS)
    kinds = packet_kinds.kinds(files.trace().packet)
    head = len(packet_kinds.FIRST_READ)
    assert kinds[:head] == packet_kinds.FIRST_READ
    assert kinds[head:-1] and set(kinds[head:-1]) == {"track_event"}
    assert kinds[-1] == "read_tracing_buffers_completed"


def test_max_file_size_bytes_stops_the_session_with_whole_packets(chunks_256kib):
    limit = 100_000
    files = FakeFiles()
    core, _ = enable(config(buffer_kib=512, max_file_size_bytes=limit), files)
    commit(core, chunks_256kib)
    files.take(core.on_timer(NOW + 5000 * MS))
    ended = run_drains(core, files, NOW + 5000 * MS)
    assert files.closed
    assert limit - 200 < len(files.data) <= limit  # what fits (packets of ~120 bytes)
    trace = files.trace()  # parses: nothing half-written
    assert trace.packet[0].HasField("clock_snapshot")
    timestamps = producer_timestamps(trace)
    head = len(packet_kinds.FIRST_READ)
    assert timestamps and all(p.HasField("track_event") for p in trace.packet[head:])
    (session,) = core.sessions.values()
    assert session.state.value == "DISABLED"  # no data source to wait for here
    assert [m.enable_tracing.disabled for m in ended] == [True]
    files.take(core.on_timer(NOW + 20_000 * MS))
    assert core.next_deadline() is None and not core.pending_work()


def assert_complete_with_stats(trace: pb.Trace, chunks: int) -> None:
    """Every committed chunk was read into the file, which ends with trace_stats."""
    kinds = packet_kinds.kinds(trace.packet)
    assert kinds[-1] == "trace_stats" and kinds.count("trace_stats") == 1
    assert kinds[-2] == "read_tracing_buffers_completed"
    # (a last drain after one that was under way at the stop: its clock snapshot)
    assert kinds[-3] in ("tracing_disabled", "track_event", "clock_snapshot")
    stats = trace.packet[-1].trace_stats.buffer_stats[0]
    assert stats.chunks_written == stats.chunks_read == chunks
    timestamps = producer_timestamps(trace)
    assert len(timestamps) == len(set(timestamps))


@pytest.mark.parametrize("how", ["consumer_gone", "shutdown"])
def test_a_freed_session_writes_its_last_period_and_trace_stats(chunks_256kib, how):
    """Freed (the consumer gone or given up on, SIGTERM of the service) during a
    drain and with data committed after it: nothing committed is lost."""
    files = FakeFiles()
    core, _ = enable(config(buffer_kib=512, file_write_period_ms=100), files)
    commit(core, chunks_256kib[:40])
    files.take(core.on_timer(NOW + 100 * MS))
    files.take(core.continue_reads(NOW + 100 * MS, SliceBudget(max_bytes=32 << 10)))
    assert core.pending_work()  # a periodic drain is under way
    commit(core, chunks_256kib[40:])  # the last period: after the drain began
    later = NOW + 150 * MS  # before the next period: only the freeing writes it
    if how == "consumer_gone":
        replies = files.take(core.consumer_gone(CONSUMER.identity, later))
    else:
        replies = files.take(core.shutdown(later))
    assert files.closed and not core.sessions and not core.buffers and not core.pending_work()
    assert [m.enable_tracing.disabled for m in replies] == [True]  # (dropped if it is gone)
    close_at = next(i for i, o in enumerate(files.outputs) if isinstance(o, CloseFile))
    assert close_at == len(files.outputs) - 2  # then only the end reply
    trace = files.trace()
    assert_complete_with_stats(trace, len(chunks_256kib))
    assert any(p.service_event.tracing_disabled for p in trace.packet)


def test_a_session_freed_before_any_drain_writes_everything(chunks_256kib):
    files = FakeFiles()
    core, _ = enable(config(buffer_kib=512, file_write_period_ms=100), files)
    commit(core, chunks_256kib)
    files.take(core.consumer_gone(CONSUMER.identity, NOW + 1 * MS))
    assert files.closed and not core.sessions and not core.pending_work()
    trace = files.trace()
    assert trace.packet[0].HasField("clock_snapshot")
    assert_complete_with_stats(trace, len(chunks_256kib))


def test_a_failed_write_ends_the_session_with_the_error(chunks_256kib):
    """ENOSPC mid-session: no more drains into nothing; the consumer's end reply
    says why (so the CLI fails), and the session is stopped."""
    files = FakeFiles()
    core, _ = enable(config(buffer_kib=512, file_write_period_ms=100), files)
    commit(core, chunks_256kib[:20])
    files.take(core.on_timer(NOW + 100 * MS))
    run_drains(core, files, NOW + 100 * MS)
    written = len(files.data)
    replies = files.take(core.file_failed(FILE_ID, "No space left on device", NOW + 150 * MS))
    replies += run_drains(core, files, NOW + 150 * MS)
    (reply,) = [m.enable_tracing for m in replies]
    assert reply.disabled and "No space left on device" in reply.error
    (session,) = core.sessions.values()
    assert session.state.value == "DISABLED"
    commit(core, chunks_256kib[20:])
    files.take(core.on_timer(NOW + 1000 * MS))
    assert not core.pending_work() and core.next_deadline() is None
    assert len(files.data) == written and not files.closed  # the shell closed it itself
    assert files.take(core.file_failed(FILE_ID, "again", NOW + 2000 * MS)) == []


def test_a_failure_of_the_last_writes_reaches_the_end_reply(chunks_256kib):
    """The end reply comes on the turn after the close: a write or close that
    fails in the shell before it is reported in it."""
    files = FakeFiles()
    core, _ = enable(config(buffer_kib=512, file_write_period_ms=100), files)
    commit(core, chunks_256kib[:20])
    send(core, files, 2, NOW + 10 * MS, disable_tracing=ipc.DisableTracingRequest())
    while not files.closed:
        assert files.take(core.continue_reads(NOW + 10 * MS)) == []  # no reply before
    replies = files.take(core.file_failed(FILE_ID, "Input/output error", NOW + 10 * MS))
    replies += run_drains(core, files, NOW + 10 * MS)
    assert [m.WhichOneof("msg") for m in replies] == ["enable_tracing", "ack"]
    assert "Input/output error" in replies[0].enable_tracing.error


def test_a_failure_after_the_end_was_told_changes_nothing(chunks_256kib):
    files = FakeFiles()
    core, _ = enable(config(file_write_period_ms=100), files)
    send(core, files, 2, NOW, disable_tracing=ipc.DisableTracingRequest())
    assert [m.WhichOneof("msg") for m in run_drains(core, files, NOW)] == ["enable_tracing", "ack"]
    assert files.take(core.file_failed(FILE_ID, "Input/output error", NOW)) == []
    assert files.take(core.file_failed(FILE_ID + 1, "not ours", NOW)) == []


@pytest.mark.parametrize(
    ("cfg_path", "path", "error", "expected"),
    [
        ("", "", None, "needs an output path"),
        ("", "trace.pftrace", None, "must be absolute"),
        ("", PATH, PermissionError(13, "Permission denied"), "cannot open the output file"),
    ],
)
def test_an_output_that_cannot_be_written_refuses_the_enable(cfg_path, path, error, expected):
    files = FakeFiles(error)
    core, reply = enable(config(output_path=cfg_path), files, path=path)
    assert reply.disabled and expected in reply.error
    assert not core.sessions and not core.buffers and not files.outputs[1:]


def test_the_configs_output_path_is_used_when_the_consumer_gives_none():
    files = FakeFiles()
    enable(config(output_path="/tmp/from-the-config.pftrace"), files, path="")
    assert files.opened == ["/tmp/from-the-config.pftrace"]


def test_a_session_writing_into_a_file_cannot_be_read_back():
    files = FakeFiles()
    core, _ = enable(config(), files)
    (reply,) = send(core, files, 2, NOW, read_buffers=ipc.ReadBuffersRequest())
    assert "write_into_file" in reply.error.message
    assert not core.pending_work()


def test_a_stop_during_a_drain_is_followed_by_one_more_drain(chunks_256kib):
    files = FakeFiles()
    core, _ = enable(config(buffer_kib=512, file_write_period_ms=100), files)
    commit(core, chunks_256kib[:40])
    files.take(core.on_timer(NOW + 100 * MS))
    files.take(core.continue_reads(NOW + 100 * MS, SliceBudget(max_bytes=32 << 10)))
    assert core.pending_work()  # the periodic drain is under way
    commit(core, chunks_256kib[40:])  # what the stop's scrape would bring
    assert send(core, files, 2, NOW + 101 * MS, disable_tracing=ipc.DisableTracingRequest()) == []
    ended = run_drains(core, files, NOW + 101 * MS)
    assert [m.WhichOneof("msg") for m in ended] == ["enable_tracing", "ack"] and files.closed
    trace = files.trace()
    assert trace.packet[-1].HasField("trace_stats")
    stats = trace.packet[-1].trace_stats.buffer_stats[0]
    assert stats.chunks_read == stats.chunks_written == len(chunks_256kib)
    assert len(producer_timestamps(trace)) == len(set(producer_timestamps(trace))) > 3000


def test_drains_and_a_consumers_read_take_turns_when_time_runs_out(chunks_256kib):
    """A read that fills every turn does not starve a file's drain, nor the reverse."""
    files = FakeFiles()
    core, _ = enable(config(buffer_kib=512, file_write_period_ms=100), files)
    commit(core, chunks_256kib)
    reader = Peer(b"reader", 78, 1000)
    cfg = pb.TraceConfig()
    cfg.buffers.add(size_kb=512)
    enable_reader = ipc.EnableTracingRequest(trace_config=cfg.SerializeToString())
    core.handle_consumer(
        reader, ipc.ConsumerToService(request_id=1, enable_tracing=enable_reader), NOW
    )
    reader_buffer = core.buffers[core.sessions[2].buffer_ids[0]]
    for writer_id, chunk_id, count, flags, payload in chunks_256kib:
        reader_buffer.copy_chunk_untrusted(
            PRODUCER_ID, UID, PID, writer_id, chunk_id, count, flags, True, payload
        )
    read = ipc.ConsumerToService(request_id=2, read_buffers=ipc.ReadBuffersRequest())
    core.handle_consumer(reader, read, NOW)
    files.take(core.on_timer(NOW + 100 * MS))
    always_up = SliceBudget(time_up=lambda: True)
    turns = []
    for _ in range(4):
        outputs = core.continue_reads(NOW + 100 * MS, always_up)
        turns.append({type(o).__name__ for o in outputs})
    assert {"AppendToFile"} in turns and {"ToConsumer"} in turns


def test_the_packets_of_a_trace_file_are_read_back_in_batches_without_a_torn_end(tmp_path):
    from actors.consumer import split_trace, trace_file_batches

    packets = [bytes([i % 251]) * (i * 37 % 3000) for i in range(400)]
    data = b"".join(b"\x0a" + varint(len(p)) + p for p in packets)
    assert split_trace(data) == (packets, len(data))
    assert split_trace(data[:-1]) == (
        packets[:-1],
        len(data) - len(b"\x0a" + varint(len(packets[-1])) + packets[-1]),
    )
    path = tmp_path / "t.pftrace"
    path.write_bytes(data + b"\x0a\x85")  # a torn last packet: left out
    batches = list(trace_file_batches(path, read_bytes=1000))
    assert len(batches) > 100 and [p for b in batches for p in b] == packets


class FileRig(Rig):
    """test_service_core's Rig (real TraceWriters through FakeProducer) with a file."""

    def __init__(self) -> None:
        super().__init__()
        self.files = FakeFiles()
        clocks = Clocks(lambda: [(6, self.now), (3, self.now)], lambda: self.now)
        self.core = ServiceCore(self._factory, clocks, 0, 100, open_file=self.files.open)

    def route(self, outputs):
        for out in outputs:
            if isinstance(out, AppendToFile | CloseFile):
                self.files.take([out])
            else:
                super().route([out])


def test_drains_go_on_while_the_stop_acks_are_awaited_and_the_end_waits_for_both():
    rig = FileRig()
    producer = FakeProducer(rig, "p", pid=555)  # and a data source that acks its stop:
    desc = ipc.DataSourceDescriptor(name="slow_stop", will_notify_on_stop=True)
    rig.producer(
        producer.peer, 3, register_data_source=ipc.RegisterDataSourceRequest(descriptor=desc)
    )
    rig.take(producer.peer)
    cfg = config(buffer_kib=256, file_write_period_ms=100)
    cfg.data_sources.add().config.name = "slow_stop"
    consumer = FakeConsumer(rig, "c")
    consumer.send(
        enable_tracing=ipc.EnableTracingRequest(
            trace_config=cfg.SerializeToString(), output_path=PATH
        )
    )
    producer.process()
    (writer,) = producer.writers.values()
    for i in range(200):
        writer.write_packet(synthetic_packet(1, i + 1, i, 100, False))
    writer.flush()
    rig.advance(100)
    rig.idle()
    assert len(counters(rig.files.trace())) == 200

    consumer.send(disable_tracing=ipc.DisableTracingRequest())
    (instance_id,) = producer.writers
    for i in range(200, 300):  # written while the service waits for the stop ack
        writer.write_packet(synthetic_packet(1, i + 1, i, 100, False))
    writer.flush()
    rig.advance(100)
    rig.idle()
    assert len(counters(rig.files.trace())) == 300 and not rig.files.closed
    assert not [m for m in consumer.replies() if m.enable_tracing.disabled]

    stopped = ipc.NotifyDataSourceStopped(instance_id=instance_id)
    rig.producer(producer.peer, data_source_stopped=stopped)
    rig.idle()
    assert rig.files.closed
    assert [
        m.enable_tracing.disabled for m in consumer.replies() if m.HasField("enable_tracing")
    ] == [True]
    trace = rig.files.trace()
    assert counters(trace) == list(range(1, 301)) and trace.packet[-1].HasField("trace_stats")


def counters(trace: pb.Trace) -> list[int]:
    return [p.for_testing.counter for p in trace.packet if p.HasField("for_testing")]


@pytest.mark.parametrize("size", [0, 1, 127, 128, (1 << 14) - 1, 1 << 14, (1 << 20) + 5])
def test_a_drain_frames_packets_as_a_consumers_read_carries_them(size):
    """The file's framing (readback.TRACE_FILE) holds the same packet bytes as the
    consumer's (SLICES), on the hot path (heads/tail) and the general one."""
    data = bytes(i % 251 for i in range(size))
    expected = b"\x0a" + varint(size) + data  # Trace.packet (1), length-delimited
    assert b"".join(readback.TRACE_FILE.frame(data)) == expected
    if size < len(readback.TRACE_FILE.heads):
        assert readback.TRACE_FILE.heads[size] + data + readback.TRACE_FILE.tail == expected
        slices_hot = readback.SLICES.heads[size] + data + readback.SLICES.tail
        assert readback.SLICES.frame(data) == [slices_hot]
    (reply,) = readback.read_replies(readback.SLICES.frame(data), False)
    assert b"".join(s.data for s in reply.slices) == data


def test_a_framed_packet_parses_as_a_trace():
    packet = pb.TracePacket(timestamp=5, trusted_uid=3)
    data = packet.SerializeToString()
    framed = readback.TRACE_FILE.heads[len(data)] + data + readback.TRACE_FILE.tail
    assert list(pb.Trace.FromString(framed).packet) == [packet]
