"""TraceStats as traced fills it (issue 12, item 6): writer_stats (each writer
sequence's histogram of chunk payload sizes, with Perfetto's bucket bounds in
chunk_payload_histogram_def; none when builtin_data_sources
disable_chunk_usage_histograms) and final_flush_outcome (how the flush that
ended the session went: SUCCEEDED, FAILED, or UNSPECIFIED when no such flush
ran). One process, fake clock."""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import reports
from protos import tracebus_ipc_pb2 as ipc
from shm.trace_buffer import FillPolicy, TraceBuffer
from shm.writer_stats import (
    CHUNK_PAYLOAD_THRESHOLDS,
    MAX_WRITERS_PER_BUFFER,
    NUM_BUCKETS,
    WriterStats,
)
from tests.test_service_core import FakeConsumer, FakeProducer, Rig, config
from tests.test_service_reports import _totals

PERFETTO_BOUNDS = [8, 32, 128, 512, 1024, 2048, 4096, 8192, 12288, 16384]  # trace_buffer.h
SUCCEEDED = pb.TraceStats.FINAL_FLUSH_SUCCEEDED
FAILED = pb.TraceStats.FINAL_FLUSH_FAILED
UNSPECIFIED = pb.TraceStats.FINAL_FLUSH_UNSPECIFIED


def test_buckets_hold_payloads_up_to_their_bound_as_perfettos_histogram():
    assert list(CHUNK_PAYLOAD_THRESHOLDS) == PERFETTO_BOUNDS
    stats = WriterStats()
    for payload in (0, 8, 9, 32, 4096, 4097, 16384, 16385, 70000):
        stats.add(1 << 16 | 5, payload)
    (writer,) = stats
    assert (writer.producer_id, writer.writer_id) == (1, 5)
    assert len(writer.counts) == len(writer.sums) == NUM_BUCKETS == len(PERFETTO_BOUNDS) + 1
    assert writer.counts == [2, 2, 0, 0, 0, 0, 1, 1, 0, 1, 2]
    assert writer.sums == [8, 9 + 32, 0, 0, 0, 0, 4096, 4097, 0, 16384, 16385 + 70000]


def test_writers_beyond_the_bound_are_counted_apart():
    stats = WriterStats()
    for writer_id in range(1, MAX_WRITERS_PER_BUFFER + 3):
        stats.add(writer_id, 100)
    assert len(stats) == MAX_WRITERS_PER_BUFFER and stats.untracked_chunks == 2
    stats.add(1, 100)  # a writer already tracked goes on being counted
    assert next(iter(stats)).counts[2] == 2


def _fragment(n: int) -> bytes:
    assert n < 0x80
    return bytes([n]) + bytes(n)


def _copy(tb: TraceBuffer, producer: int, writer: int, chunk_id: int, *frags: bytes) -> None:
    payload = b"".join(frags) + bytes(64)  # unused room after the fragments
    tb.copy_chunk_untrusted(producer, 1000, 42, writer, chunk_id, len(frags), 0, True, payload)


def test_a_buffer_counts_the_fragment_bytes_of_each_chunk_per_writer():
    tb = TraceBuffer(64 << 10)
    _copy(tb, 1, 1, 0, _fragment(5))  # 6 bytes: bucket <= 8
    _copy(tb, 1, 1, 1, _fragment(20), _fragment(20))  # 42: bucket <= 128
    _copy(tb, 1, 1, 1, _fragment(20), _fragment(20))  # a recommit counts again (as V2)
    _copy(tb, 2, 1, 0, _fragment(100))  # another producer, same writer id: its own
    by_writer = {(w.producer_id, w.writer_id): w for w in tb.writer_stats}
    assert by_writer[(1, 1)].counts[:3] == [1, 0, 2]
    assert by_writer[(1, 1)].sums[:3] == [6, 0, 84]
    assert by_writer[(2, 1)].counts[2] == 1 and by_writer[(2, 1)].sums[2] == 101


def test_chunks_the_buffer_refuses_are_not_counted():
    tb = TraceBuffer(4096, FillPolicy.DISCARD)
    big = bytes([0x7F]) + bytes(0x7F)
    tb.copy_chunk_untrusted(1, 1000, 42, 0, 0, 1, 0, True, big)  # writer id 0: invalid
    tb.copy_chunk_untrusted(1, 1000, 42, 1, 0, 40, 0, True, big * 40)  # larger than the ring
    assert len(tb.writer_stats) == 0
    for chunk_id in range(40):  # fills the ring; DISCARD then drops the rest unseen
        _copy(tb, 1, 1, chunk_id, _fragment(100))
    (writer,) = tb.writer_stats
    discarded = tb.stats.chunks_discarded
    assert discarded > 1
    # As V2: the chunk that finds the ring full is counted (before room is made for
    # it), and latches DISCARD; the ones after it are not.
    assert sum(writer.counts) == 40 - discarded + 1


def _session_stats(rig: Rig, consumer: FakeConsumer) -> pb.TraceStats:
    packets = consumer.read()
    assert packets[-1].HasField("trace_stats")
    return packets[-1].trace_stats


def _record(rig: Rig, producers: list[FakeProducer], consumer: FakeConsumer, cfg: bytes):
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=cfg))
    assert not consumer.replies()[0].enable_tracing.error
    for p in producers:
        p.process()
    for n, p in enumerate(producers):
        (writer,) = p.writers.values()
        for i in range(50 * (n + 1)):
            packet = pb.TracePacket(timestamp=i + 1)
            packet.for_testing.payload.str.append("x" * 300)
            writer.write_packet(packet.SerializeToString())
        writer.flush()


def test_writer_stats_name_each_sequence_of_the_trace_and_its_buffer():
    rig = Rig()
    producers = [FakeProducer(rig, "a", pid=1), FakeProducer(rig, "b", pid=2)]
    consumer = FakeConsumer(rig, "c")
    cfg = pb.TraceConfig.FromString(config(size_kb=256))
    cfg.buffers.add(size_kb=64)  # buffer 1, unused: no writer stats
    _record(rig, producers, consumer, cfg.SerializeToString())
    packets = consumer.read()
    stats = packets[-1].trace_stats
    assert list(stats.chunk_payload_histogram_def) == PERFETTO_BOUNDS
    sequences = {p.trusted_packet_sequence_id for p in packets if p.HasField("for_testing")}
    assert {w.sequence_id for w in stats.writer_stats} == sequences and len(sequences) == 2
    chunks_read = stats.buffer_stats[0].chunks_read
    assert sum(sum(w.chunk_payload_histogram_counts) for w in stats.writer_stats) == chunks_read
    for w in stats.writer_stats:
        assert w.buffer == 0
        assert len(w.chunk_payload_histogram_counts) == len(PERFETTO_BOUNDS) + 1
        assert len(w.chunk_payload_histogram_sum) == len(PERFETTO_BOUNDS) + 1
        # the producer's 4 KiB chunks: full ones in the 4096 bucket (6), a last one below
        assert w.chunk_payload_histogram_counts[6] >= 1


def test_disable_chunk_usage_histograms_leaves_them_out():
    rig = Rig()
    producer = FakeProducer(rig, "a", pid=1)
    consumer = FakeConsumer(rig, "c")
    cfg = pb.TraceConfig.FromString(config(size_kb=256))
    cfg.builtin_data_sources.disable_chunk_usage_histograms = True
    _record(rig, [producer], consumer, cfg.SerializeToString())
    stats = _session_stats(rig, consumer)
    assert stats.buffer_stats[0].chunks_read > 0
    assert not stats.writer_stats and not stats.chunk_payload_histogram_def


def test_no_histogram_def_without_a_writer():
    session_less = reports.trace_stats(_totals(), [], None)
    assert not session_less.chunk_payload_histogram_def
    assert not session_less.HasField("final_flush_outcome")  # no session: no outcome


def test_a_duration_ms_session_whose_stop_flush_is_acked_succeeded():
    rig = Rig()
    producer = FakeProducer(rig, "a", pid=1)
    consumer = FakeConsumer(rig, "c")
    _record(rig, [producer], consumer, config(duration_ms=100))
    rig.advance(100)  # duration over: the stop flush goes out
    producer.process()  # and is acked
    assert consumer.replies()[0].enable_tracing.disabled
    stats = _session_stats(rig, consumer)
    assert stats.HasField("final_flush_outcome") and stats.final_flush_outcome == SUCCEEDED


def test_a_stop_flush_that_times_out_failed():
    rig = Rig()
    producer = FakeProducer(rig, "a", pid=1)
    consumer = FakeConsumer(rig, "c")
    _record(rig, [producer], consumer, config(duration_ms=100, flush_timeout_ms=500))
    rig.advance(100)
    rig.take(producer.peer)  # the flush request, never answered
    assert _session_stats(rig, consumer).final_flush_outcome == UNSPECIFIED  # still pending
    rig.advance(500)
    assert consumer.replies()[0].enable_tracing.disabled
    stats = _session_stats(rig, consumer)
    assert stats.final_flush_outcome == FAILED and stats.flushes_failed == 1


def test_a_session_the_consumer_stops_has_no_final_flush_outcome():
    """As traced: only the service's own stop (duration_ms, a trigger) runs a final
    flush; a consumer that flushes then disables runs an ordinary flush."""
    rig = Rig()
    producer = FakeProducer(rig, "a", pid=1)
    consumer = FakeConsumer(rig, "c")
    _record(rig, [producer], consumer, config())
    consumer.send(flush=ipc.FlushConsumerRequest(timeout_ms=1000))
    producer.process()
    consumer.send(disable_tracing=ipc.DisableTracingRequest())
    consumer.replies()
    stats = _session_stats(rig, consumer)
    assert stats.flushes_succeeded == 1
    assert stats.HasField("final_flush_outcome") and stats.final_flush_outcome == UNSPECIFIED
