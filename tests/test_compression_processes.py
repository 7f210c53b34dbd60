"""Compression and TraceStats with real processes (issue 12, items 6 and 7): the
record CLI records a session the service ends at duration_ms, once plain and
once with Perfetto's own `compression { deflate {} }` (its docs' config text);
the compressed file is smaller, every packet in it is a compressed_packets
that decompresses into a Trace the official schema parses, holding the same
packets as the plain recording. A write_into_file session with the legacy
`compression_type: COMPRESSION_TYPE_DEFLATE` is written compressed by the
service the same way. trace_stats ends each trace with final_flush_outcome
SUCCEEDED (the service's stop flush was acked) and the producer's writer_stats."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.data_sources import seq_values, synthetic_str
from tests.processes import REPO, Runtime

COUNT, SIZE, SEED, RATE = 1500, 200, 7, 2000
DOCS_DEFLATE = REPO / "tests" / "perfetto_configs" / "docs_config_compression_deflate.pbtxt"
PERFETTO_BOUNDS = [8, 32, 128, 512, 1024, 2048, 4096, 8192, 12288, 16384]


def synthetic_config(extra: str) -> str:
    return f"""
buffers {{ size_kb: 4096 fill_policy: RING_BUFFER }}
data_sources {{
  config {{
    name: "tracebus.synthetic"
    for_testing {{
      message_count: {COUNT} max_messages_per_second: {RATE} message_size: {SIZE} seed: {SEED}
    }}
  }}
}}
duration_ms: 3000
{extra}
"""


def expand(trace: pb.Trace) -> list[pb.TracePacket]:
    """What a reader sees: each compressed packet replaced by the Trace it holds."""
    out: list[pb.TracePacket] = []
    for p in trace.packet:
        assert p.HasField("compressed_packets"), "every packet of a compressed trace is"
        out += pb.Trace.FromString(zlib.decompress(p.compressed_packets)).packet
    return out


def load(path: Path) -> pb.Trace:
    return pb.Trace.FromString(path.read_bytes())  # the official schema


def check_synthetic(packets: list[pb.TracePacket]) -> None:
    """Every packet the synthetic source wrote, in order, with its content."""
    written = [p.for_testing for p in packets if p.HasField("for_testing")]
    assert [t.counter for t in written] == list(range(1, COUNT + 1))
    assert [t.seq_value for t in written] == seq_values(SEED, COUNT)
    assert written[-1].str.encode() == synthetic_str(SEED, COUNT, SIZE)


def check_stats(packets: list[pb.TracePacket]) -> None:
    assert packets[-1].HasField("trace_stats")
    stats = packets[-1].trace_stats
    assert stats.final_flush_outcome == pb.TraceStats.FINAL_FLUSH_SUCCEEDED
    assert list(stats.chunk_payload_histogram_def) == PERFETTO_BOUNDS
    producer_seqs = {p.trusted_packet_sequence_id for p in packets if p.HasField("for_testing")}
    assert {w.sequence_id for w in stats.writer_stats} == producer_seqs
    chunks = sum(sum(w.chunk_payload_histogram_counts) for w in stats.writer_stats)
    assert chunks >= stats.buffer_stats[0].chunks_read > 0


def summary_count(stderr: str) -> int:
    match = re.search(r"tracebus: wrote (\d+) packets", stderr)
    assert match, stderr
    return int(match.group(1))


def test_perfettos_deflate_config_writes_the_same_packets_smaller(rt: Runtime):
    rt.start_service()
    rt.start_producer("writer")
    plain_result, plain_out = rt.record(synthetic_config(""), "plain")
    assert plain_result.returncode == 0, plain_result.stderr
    result, out = rt.record(synthetic_config(DOCS_DEFLATE.read_text()), "deflate")
    assert result.returncode == 0, result.stderr

    plain = list(load(plain_out).packet)
    trace = load(out)
    packets = expand(trace)
    check_synthetic(plain)
    check_synthetic(packets)
    assert [p.WhichOneof("data") for p in packets] == [p.WhichOneof("data") for p in plain]
    (config_packet,) = [p for p in packets if p.HasField("trace_config")]
    assert config_packet.trace_config.compression.HasField("deflate")
    check_stats(plain)
    check_stats(packets)
    assert out.stat().st_size < plain_out.stat().st_size / 2

    assert summary_count(result.stderr) == len(packets)  # the packets inside, not the wrappers
    assert f"compressed (deflate) into {len(trace.packet)} packets" in result.stderr
    assert summary_count(plain_result.stderr) == len(plain)


def test_the_service_writes_a_write_into_file_trace_compressed(rt: Runtime):
    rt.start_service()
    rt.start_producer("writer")
    extra = """
write_into_file: true
file_write_period_ms: 200
compression_type: COMPRESSION_TYPE_DEFLATE
"""
    result, out = rt.record(synthetic_config(extra), "file")
    assert result.returncode == 0, result.stderr
    trace = load(out)
    packets = expand(trace)
    check_synthetic(packets)
    kinds = [p.WhichOneof("data") for p in packets]
    head = kinds[: kinds.index("trace_config")]
    assert head and set(head) == {"clock_snapshot"} and kinds.count("trace_stats") == 1
    check_stats(packets)
    assert summary_count(result.stderr) == len(packets)
