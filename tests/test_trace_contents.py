"""What a real trace holds (issue 12, item 6 and 5b), recorded with real
processes (a service, a producer, the record CLI) and read with the official
schema: the service's packets in traced's order, what each holds, each
builtin_data_sources knob, and the same for a write_into_file trace.

    clock_snapshot (start, all data sources started, stop; six clocks each)
    trace_config, trace_uuid, trace_provenance, system_info
    service events in time order: tracing_started, all_data_sources_started,
        flush_started, all_data_sources_flushed, tracing_disabled
    ... the producer's packets ...
    read_tracing_buffers_completed, trace_stats (final_flush_outcome, writer_stats)
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.consumer import Consumer
from tests.packet_kinds import kind, kinds
from tests.processes import Runtime

SIX_CLOCKS = [6, 2, 4, 1, 3, 5]  # BOOTTIME, REALTIME_COARSE, MONOTONIC_COARSE, REALTIME, ...
HEAD = ["trace_config", "trace_uuid", "trace_provenance", "system_info"]
EVENTS = [
    "tracing_started",
    "all_data_sources_started",
    "flush_started",
    "all_data_sources_flushed",
    "tracing_disabled",
]
KNOB_PACKETS = {
    "disable_clock_snapshotting": {"clock_snapshot"},
    "disable_trace_config": {"trace_config"},
    "disable_system_info": {"system_info"},
    "disable_service_events": {*EVENTS, "read_tracing_buffers_completed"},
}


def config_text(extra: str = "", duration_ms: int = 1500) -> str:
    """200 packets, written within the first 200 ms of a session of duration_ms."""
    return f"""
buffers {{ size_kb: 1024 fill_policy: RING_BUFFER }}
data_sources {{
  config {{
    name: "tracebus.synthetic"
    for_testing {{ message_count: 200 max_messages_per_second: 1000 message_size: 64 seed: 3 }}
  }}
}}
duration_ms: {duration_ms}
{extra}
"""


def load(path: Path) -> pb.Trace:
    return pb.Trace.FromString(path.read_bytes())  # the official schema


def record(rt: Runtime, name: str, extra: str = "", duration_ms: int = 1500) -> pb.Trace:
    result, out = rt.record(config_text(extra, duration_ms), name)
    assert result.returncode == 0, result.stderr
    return load(out)


def service_head(trace: pb.Trace) -> list[str]:
    """The kinds of the service's packets before the first producer packet."""
    first = next(i for i, p in enumerate(trace.packet) if p.HasField("for_testing"))
    return kinds(trace.packet[:first])


def assert_traceds_order(trace: pb.Trace, service_pid: int) -> None:
    names = kinds(trace.packet)
    head = service_head(trace)
    snapshots = head.count("clock_snapshot")
    assert snapshots >= 3  # the start, all data sources started, the stop
    assert head[:snapshots] == ["clock_snapshot"] * snapshots
    assert head[snapshots : snapshots + 4] == HEAD
    assert head[snapshots + 4 :] == EVENTS
    assert names[len(head) :].count("for_testing") == 200
    assert set(names[len(head) : -2]) == {"for_testing"}
    assert names[-2:] == ["read_tracing_buffers_completed", "trace_stats"]
    ours = [p for p in trace.packet if not p.HasField("for_testing")]
    assert {(p.trusted_packet_sequence_id, p.trusted_pid) for p in ours} == {(1, service_pid)}
    timed = [p for p in ours if p.HasField("service_event")]
    assert [p.timestamp for p in timed] == sorted(p.timestamp for p in timed)


def test_a_recorded_trace_has_traceds_service_packets_in_traceds_order(rt: Runtime):
    service = rt.start_service()
    producer = rt.start_producer("writer")
    text = config_text()
    trace = record(rt, "contents")
    assert_traceds_order(trace, service.pid)
    by_kind: dict[str, list[pb.TracePacket]] = {}
    for p in trace.packet:
        by_kind.setdefault(kind(p), []).append(p)

    expected = text_format.Parse(text, pb.TraceConfig())
    (config,) = by_kind["trace_config"]
    assert config.trace_config == expected
    (uuid,) = by_kind["trace_uuid"]
    assert (uuid.trace_uuid.msb, uuid.trace_uuid.lsb) != (0, 0)

    (info,) = by_kind["system_info"]
    uname = os.uname()
    utsname = info.system_info.utsname
    assert (utsname.sysname, utsname.release, utsname.version, utsname.machine) == (
        uname.sysname, uname.release, uname.version, uname.machine,
    )  # fmt: skip
    assert info.system_info.page_size == os.sysconf("SC_PAGESIZE")
    assert info.system_info.num_cpus == os.sysconf("SC_NPROCESSORS_CONF")
    assert info.system_info.HasField("timezone_off_mins")
    assert info.system_info.tracing_service_version.startswith("tracebus ")

    (provenance,) = by_kind["trace_provenance"]
    (buffer,) = provenance.trace_provenance.buffers
    data = [p for p in trace.packet if p.HasField("for_testing")]
    assert {s.id for s in buffer.sequences} == {p.trusted_packet_sequence_id for p in data}
    state = rt.control.query_state(timeout=5)
    (ours,) = [p for p in state.producers if p.pid == producer.pid]
    assert {s.producer_id for s in buffer.sequences} == {ours.id}

    snapshots = by_kind["clock_snapshot"]
    for s in snapshots:
        assert [c.clock_id for c in s.clock_snapshot.clocks] == SIX_CLOCKS
        assert s.clock_snapshot.primary_trace_clock == pb.BuiltinClock.BUILTIN_CLOCK_BOOTTIME
    boottimes = [s.clock_snapshot.clocks[0].timestamp for s in snapshots]
    assert boottimes == sorted(boottimes)
    (started,) = by_kind["tracing_started"]
    (all_started,) = by_kind["all_data_sources_started"]
    (disabled,) = by_kind["tracing_disabled"]
    assert boottimes[0] <= started.timestamp  # the start
    assert any(started.timestamp <= b <= all_started.timestamp for b in boottimes)
    assert any(all_started.timestamp < b <= disabled.timestamp for b in boottimes)  # the stop
    assert all(p.timestamp_clock_id == 6 for p in trace.packet if p.trusted_pid == service.pid)

    # TraceStats: the flush that ended duration_ms succeeded, and each writer's
    # sequence has its chunk payload histogram in traced's buckets.
    (stats,) = by_kind["trace_stats"]
    assert stats.trace_stats.final_flush_outcome == pb.TraceStats.FINAL_FLUSH_SUCCEEDED
    assert list(stats.trace_stats.chunk_payload_histogram_def)
    writers = stats.trace_stats.writer_stats
    assert {w.sequence_id for w in writers} == {p.trusted_packet_sequence_id for p in data}
    for w in writers:
        assert w.buffer == 0 and sum(w.chunk_payload_histogram_counts) > 0
        assert sum(w.chunk_payload_histogram_sum) > 0


def read_session(rt: Runtime, extra: str) -> list[pb.TracePacket]:
    """A session of 500 ms read back by a consumer in this process (the service
    and the producer are real processes): quicker than the CLI, the same packets."""
    consumer = Consumer.connect(rt.consumer_endpoint, name="knobs")
    try:
        consumer.enable(config_text(extra, duration_ms=500))
        consumer.wait_disabled(timeout=20.0)
        packets = list(consumer.read_packets())
        consumer.free()
        return packets
    finally:
        consumer.close()


def test_each_builtin_data_sources_knob_in_a_real_trace(rt: Runtime):
    rt.start_service()
    rt.start_producer("writer")
    everything = set(kinds(read_session(rt, "")))
    assert set().union(*KNOB_PACKETS.values()) <= everything
    for knob, gone in KNOB_PACKETS.items():
        packets = read_session(rt, f"builtin_data_sources {{ {knob}: true }}")
        assert set(kinds(packets)) == everything - gone, knob
        assert kinds(packets).count("for_testing") == 200, knob
    monotonic = pb.BuiltinClock.BUILTIN_CLOCK_MONOTONIC
    primary = "builtin_data_sources { primary_trace_clock: BUILTIN_CLOCK_MONOTONIC }"
    snapshots = [
        p.clock_snapshot for p in read_session(rt, primary) if p.HasField("clock_snapshot")
    ]
    assert snapshots and {s.primary_trace_clock for s in snapshots} == {monotonic}


def test_a_write_into_file_trace_has_the_same_packets(rt: Runtime):
    service = rt.start_service()
    rt.start_producer("writer")
    trace = record(rt, "file", "write_into_file: true\nfile_write_period_ms: 500")
    names = kinds(trace.packet)
    for once in HEAD:
        assert names.count(once) == 1, once
    first_data = names.index("for_testing")
    head = names[:first_data]
    snapshots = head.count("clock_snapshot")
    assert snapshots >= 2 and head[:snapshots] == ["clock_snapshot"] * snapshots
    assert head[snapshots : snapshots + 4] == HEAD
    assert head[snapshots + 4 : snapshots + 6] == ["tracing_started", "all_data_sources_started"]
    for event in EVENTS:
        assert event in names, event
    # each drain ends with read_tracing_buffers_completed; the last one, trace_stats after it
    assert names.count("read_tracing_buffers_completed") >= 2
    assert names[-2:] == ["read_tracing_buffers_completed", "trace_stats"]
    assert names.count("for_testing") == 200
    assert "clock_snapshot" in names[first_data:]  # the stop's, at the head of a drain
    ours = [p for p in trace.packet if not p.HasField("for_testing")]
    assert {(p.trusted_packet_sequence_id, p.trusted_pid) for p in ours} == {(1, service.pid)}
