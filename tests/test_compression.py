"""compression_type: COMPRESSION_TYPE_DEFLATE (issue 12, item 7) on ServiceCore
with a fake clock: each slice of a read (a consumer's ReadBuffers, a
write_into_file drain) becomes one packet whose compressed_packets is a zlib
stream of a Trace, as traced writes it; decompressed, the trace holds exactly
the packets the same session gives uncompressed. The record CLI's summary
counts the packets inside."""

from __future__ import annotations

import zlib

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import compression, readback
from actors.core.consumer_summary import TraceSummary
from protos import tracebus_ipc_pb2 as ipc
from tests import test_write_into_file as wif
from tests.test_service_core import FakeConsumer, FakeProducer, Rig, config

DEFLATE = pb.TraceConfig.COMPRESSION_TYPE_DEFLATE


def expand(packets: list[pb.TracePacket]) -> list[pb.TracePacket]:
    """The trace as a reader sees it: each compressed packet replaced by what it holds
    (parsed with the official schema)."""
    out: list[pb.TracePacket] = []
    for p in packets:
        if p.HasField("compressed_packets"):
            out += pb.Trace.FromString(zlib.decompress(p.compressed_packets)).packet
        else:
            out.append(p)
    return out


def uncompressed_config(packets: list[pb.TracePacket]) -> list[pb.TracePacket]:
    """The packets with the trace_config's compression fields cleared (the only
    difference a compressed trace may have, once expanded)."""
    out = []
    for p in packets:
        p = pb.TracePacket.FromString(p.SerializeToString())
        if p.HasField("trace_config"):
            assert p.trace_config.compression_type or p.trace_config.HasField("compression")
            p.trace_config.ClearField("compression_type")
            p.trace_config.ClearField("compression")
        out.append(p)
    return out


def _read(cfg: pb.TraceConfig, count: int, size: int) -> list[pb.TracePacket]:
    """Record `count` packets of `size` payload bytes with `cfg`, read them all back."""
    rig = Rig()
    producer = FakeProducer(rig, "a", pid=1)
    consumer = FakeConsumer(rig, "c")
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=cfg.SerializeToString()))
    assert not consumer.replies()[0].enable_tracing.error
    producer.process()
    (writer,) = producer.writers.values()
    for i in range(count):
        packet = pb.TracePacket(timestamp=i + 1)
        packet.for_testing.counter = i
        packet.for_testing.payload.str.append(str(i % 10) * size)
        writer.write_packet(packet.SerializeToString())
    writer.flush()
    return consumer.read()


def _config(size_kb: int = 1024, **fields) -> pb.TraceConfig:
    cfg = pb.TraceConfig.FromString(config(size_kb=size_kb))
    for name, value in fields.items():
        setattr(cfg, name, value)
    return cfg


def test_a_read_is_one_compressed_packet_holding_what_an_uncompressed_read_holds():
    plain = _read(_config(), 300, 100)
    packets = _read(_config(compression_type=DEFLATE), 300, 100)
    assert len(packets) == 1 and packets[0].ListFields()[0][0].name == "compressed_packets"
    assert len(packets[0].ListFields()) == 1  # no trusted fields on it (traced adds none)
    assert uncompressed_config(expand(packets)) == plain
    kinds = [p.WhichOneof("data") for p in plain]
    first_config = kinds.index("trace_config")
    assert set(kinds[:first_config]) == {"clock_snapshot"} and kinds[-1] == "trace_stats"
    assert [p.for_testing.counter for p in plain if p.HasField("for_testing")] == list(range(300))
    assert packets[0].ByteSize() < sum(p.ByteSize() for p in plain) / 4  # it compresses


def test_a_read_of_several_slices_gives_a_compressed_packet_per_slice():
    size = 3 * readback.READ_SLICE_BYTES // 1000
    plain = _read(_config(size_kb=8192), 1000, size)
    packets = _read(_config(size_kb=8192, compression_type=DEFLATE), 1000, size)
    assert len(packets) >= 3
    assert all(p.HasField("compressed_packets") for p in packets)
    assert uncompressed_config(expand(packets)) == plain
    stats_in = [any(q.HasField("trace_stats") for q in expand([p])) for p in packets]
    assert stats_in == [False] * (len(packets) - 1) + [True]  # in the last slice only


def test_the_newer_compression_message_selects_deflate_and_zstd_is_not_available():
    deflate = _config()
    deflate.compression.deflate.SetInParent()
    assert compression.compresses(deflate)
    packets = _read(deflate, 10, 10)
    assert len(packets) == 1 and packets[0].HasField("compressed_packets")
    zstd = _config()
    zstd.compression.zstd.level = 3
    assert not compression.compresses(zstd)  # as a traced built without zstd: uncompressed
    assert not any(p.HasField("zstd_compressed_packets") for p in _read(zstd, 10, 10))
    zstd.compression.deflate.SetInParent()  # a config for old and new services alike
    assert compression.compresses(zstd)


def test_nothing_changes_without_compression():
    records = [b"\x0a\x01x"]
    assert compression.compress(_config(), records, readback.SLICES) is records
    assert compression.read_framing(_config(), readback.SLICES) is readback.SLICES
    cfg = _config(compression_type=DEFLATE)
    assert compression.compress(cfg, [], readback.SLICES) == []  # no packet for no packets


def _file_trace(cfg: pb.TraceConfig, chunks) -> pb.Trace:
    files = wif.FakeFiles()
    core, reply = wif.enable(cfg, files)
    assert not reply.error
    now = wif.NOW
    for start in range(0, len(chunks), 12):
        wif.commit(core, chunks[start : start + 12])
        now += 500 * wif.MS
        files.take(core.on_timer(now))
        wif.run_drains(core, files, now)
    wif.send(core, files, 2, now, disable_tracing=ipc.DisableTracingRequest())
    wif.run_drains(core, files, now)
    assert files.closed
    return files.trace()


@pytest.fixture(scope="module")
def chunks_256kib():
    return wif.chunks_of(256 << 10, writers=2)


def test_a_write_into_file_trace_is_compressed_drain_by_drain(chunks_256kib):
    plain = _file_trace(wif.config(file_write_period_ms=500), chunks_256kib)
    cfg = wif.config(file_write_period_ms=500, compression_type=DEFLATE)
    trace = _file_trace(cfg, chunks_256kib)
    assert len(trace.packet) > 2  # a compressed packet per drain (and the last one)
    assert all(p.HasField("compressed_packets") for p in trace.packet)
    assert uncompressed_config(expand(list(trace.packet))) == list(plain.packet)
    assert trace.ByteSize() < plain.ByteSize()


def test_the_summary_counts_the_packets_a_compressed_packet_holds():
    stamped = [
        b"\x08\x01" + readback.trusted_trailer(1000, 2, 42),
        b"\x08\x02" + readback.trusted_trailer(1000, 2, 42),
        b"\x08\x03" + readback.trusted_trailer(0, 1, 7),
    ]
    trace = b"".join(readback.trace_file_records(p)[0] for p in stamped)
    packet = compression.compressed_packet(trace)
    assert compression.inner_packets(packet) == stamped
    summary = TraceSummary()
    summary.add_all([packet, stamped[0]])
    assert (summary.packets, summary.compressed, summary.malformed) == (4, 1, 0)
    assert summary.bytes == sum(map(len, stamped)) + len(stamped[0])
    groups = {(g.pid, g.service): g.packets for g in summary.groups.values()}
    assert groups == {(42, False): 3, (7, True): 1}


def test_a_packet_that_only_looks_compressed_is_counted_as_it_is():
    fake = b"\x92\x03\x02ab"  # compressed_packets, but not a zlib stream
    assert compression.inner_packets(fake) is None
    summary = TraceSummary()
    summary.add_all([fake])
    assert (summary.packets, summary.compressed) == (1, 0)
