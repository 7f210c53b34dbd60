"""Service packets and reports built from values: readback's packet builders
return bytes that parse as the TracePacket they describe, stamped as the
service's own; reports.trace_stats reports exactly the values it is given."""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import readback, reports
from shm.trace_buffer import BufferStats

UID, SERVICE_PID, BOOT = 1000, 77, 123_456_789


def _parse(data: bytes) -> pb.TracePacket:
    packet = pb.TracePacket.FromString(data)
    assert packet.trusted_uid == UID
    assert packet.trusted_packet_sequence_id == readback.SERVICE_SEQUENCE_ID
    assert packet.trusted_pid == SERVICE_PID
    return packet


def test_clock_snapshot_packet():
    packet = _parse(readback.clock_snapshot_packet([(6, 10), (1, 20)], BOOT, UID, SERVICE_PID))
    assert packet.timestamp == BOOT and packet.timestamp_clock_id == readback.BOOTTIME
    assert [(c.clock_id, c.timestamp) for c in packet.clock_snapshot.clocks] == [(6, 10), (1, 20)]
    assert packet.clock_snapshot.primary_trace_clock == readback.BOOTTIME


def test_service_event_packet():
    packet = _parse(readback.service_event_packet("tracing_started", BOOT, UID, SERVICE_PID))
    assert packet.timestamp == BOOT and packet.service_event.tracing_started


def test_trace_config_packet():
    config = pb.TraceConfig(duration_ms=5)
    packet = _parse(readback.trace_config_packet(config.SerializeToString(), UID, SERVICE_PID))
    assert packet.trace_config == config


def test_trace_stats_packet():
    stats = pb.TraceStats(producers_connected=3)
    packet = _parse(readback.trace_stats_packet(stats, BOOT, UID, SERVICE_PID))
    assert packet.timestamp == BOOT and packet.trace_stats == stats


def _totals(**kw) -> reports.ServiceTotals:
    values = dict.fromkeys(
        (
            "producers_connected producers_seen data_sources_registered data_sources_seen "
            "tracing_sessions total_buffers chunks_discarded patches_discarded"
        ).split(),
        0,
    )
    values.update(kw)
    return reports.ServiceTotals(**values)


def test_trace_stats_reports_the_totals_and_buffers_it_is_given():
    totals = _totals(producers_connected=2, producers_seen=5, chunks_discarded=7)
    quiet = reports.BufferReport(BufferStats(trace_writer_packet_loss=4), 1)
    lossy = reports.BufferReport(BufferStats(trace_writer_packet_loss=1), 9)
    stats = reports.trace_stats(totals, [quiet, lossy], None)
    assert (stats.producers_connected, stats.producers_seen) == (2, 5)
    assert stats.chunks_discarded == 7
    # The larger of the buffer's count and the writers' own.
    assert [b.trace_writer_packet_loss for b in stats.buffer_stats] == [4, 9]
    assert not stats.HasField("flushes_requested")
