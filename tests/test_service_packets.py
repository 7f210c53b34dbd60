"""The service's own packets in one process, with a fake clock: the order traced
writes them in (issue 12, item 6), what each holds, builtin_data_sources'
knobs, and the bounds on what a session queues between reads."""

from __future__ import annotations

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors import host_info
from actors.core import service_packets as sp
from actors.core.service_core import Clocks, ServiceCore
from actors.core.sessions import Session
from protos import tracebus_ipc_pb2 as ipc
from tests import packet_kinds
from tests.test_service_core import (
    MS,
    SERVICE_PID,
    SERVICE_UID,
    FakeConsumer,
    FakeProducer,
    Rig,
)

BOOT, RT_COARSE, MONO_COARSE, RT, MONO, RAW = 6, 2, 4, 1, 3, 5
SYSTEM_INFO = pb.SystemInfo(
    tracing_service_version="tracebus 9.9", page_size=4096, num_cpus=3, timezone_off_mins=-300
)
SYSTEM_INFO.utsname.sysname = "Linux"
SYSTEM_INFO.utsname.release = "6.1.0"


class ClockRig(Rig):
    """Rig whose six clocks move with `now`; `realtime_step` moves REALTIME alone
    (an NTP step), and a SystemInfo for the core."""

    def __init__(self, system_info: pb.SystemInfo | None = SYSTEM_INFO) -> None:
        super().__init__()
        self.realtime_step = 0
        clocks = Clocks(self.snapshot, lambda: self.now)
        self.core = ServiceCore(
            self._factory, clocks, SERVICE_UID, SERVICE_PID, system_info=system_info
        )

    def snapshot(self) -> list[tuple[int, int]]:
        now, wall = self.now, self.now + 10**18 + self.realtime_step
        return [(BOOT, now), (RT_COARSE, wall), (MONO_COARSE, now - 5), (RT, wall),
                (MONO, now - 5), (RAW, now - 7)]  # fmt: skip


def session_config(**builtins) -> pb.TraceConfig:
    config = pb.TraceConfig()
    config.buffers.add(size_kb=64)
    config.data_sources.add().config.name = "tracebus.synthetic"
    for name, value in builtins.items():
        setattr(config.builtin_data_sources, name, value)
    return config


def record(rig: ClockRig, config: pb.TraceConfig, packets: int = 20) -> tuple:
    """Enable, write `packets` packets, flush, disable: (producer, consumer)."""
    producer = FakeProducer(rig, "prod", pid=555)
    consumer = FakeConsumer(rig, "c")
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config.SerializeToString()))
    rig.advance(1)
    producer.process()
    (writer,) = producer.writers.values()
    for i in range(packets):
        packet = pb.TracePacket(timestamp=rig.now + i)
        packet.for_testing.counter = i
        writer.write_packet(packet.SerializeToString())
    rig.advance(1)
    consumer.send(flush=ipc.FlushConsumerRequest(timeout_ms=1000))
    producer.process()
    rig.advance(1)
    consumer.send(disable_tracing=ipc.DisableTracingRequest())
    consumer.replies()
    return producer, consumer


def service(packets: list[pb.TracePacket]) -> list[pb.TracePacket]:
    return [p for p in packets if not p.HasField("for_testing")]


def test_a_first_read_has_traceds_packets_in_traceds_order():
    rig = ClockRig()
    record(rig, session_config())
    packets = FakeConsumer(rig, "c").read()
    kinds = packet_kinds.kinds(packets)
    data_at = kinds.index("for_testing")
    assert kinds[:data_at] == [
        "clock_snapshot",  # at the start
        "clock_snapshot",  # all data sources started
        "clock_snapshot",  # at the stop (none after the flush: no clock drifted)
        "trace_config",
        "trace_uuid",
        "trace_provenance",
        "system_info",
        "tracing_started",
        "all_data_sources_started",
        "flush_started",
        "all_data_sources_flushed",
        "tracing_disabled",
    ]
    assert set(kinds[data_at:-2]) == {"for_testing"} and len(kinds[data_at:-2]) == 20
    assert kinds[-2:] == ["read_tracing_buffers_completed", "trace_stats"]
    for p in service(packets):
        assert p.trusted_packet_sequence_id == sp.SERVICE_SEQUENCE_ID
        assert (p.trusted_uid, p.trusted_pid) == (SERVICE_UID, SERVICE_PID)
        assert p.timestamp_clock_id == sp.BOOTTIME
    events = [p.timestamp for p in packets if p.HasField("service_event")]
    assert events == sorted(events) and events[-1] == rig.now


def test_what_the_first_read_packets_hold():
    rig = ClockRig()
    config = session_config()
    record(rig, config)
    (session,) = rig.core.sessions.values()
    packets = FakeConsumer(rig, "c").read()
    by_kind = {packet_kinds.kind(p): p for p in reversed(packets)}  # the first of each
    snapshot = by_kind["clock_snapshot"].clock_snapshot
    assert [c.clock_id for c in snapshot.clocks] == [BOOT, RT_COARSE, MONO_COARSE, RT, MONO, RAW]
    assert snapshot.primary_trace_clock == sp.BOOTTIME
    assert by_kind["trace_config"].trace_config == config
    uuid = by_kind["trace_uuid"].trace_uuid
    assert (uuid.msb, uuid.lsb) == (session.uuid_msb, session.uuid_lsb) != (0, 0)
    assert by_kind["system_info"].system_info == SYSTEM_INFO
    (buffer,) = by_kind["trace_provenance"].trace_provenance.buffers
    (sequence,) = buffer.sequences
    data = [p for p in packets if p.HasField("for_testing")]
    assert {p.trusted_packet_sequence_id for p in data} == {sequence.id}
    (producer,) = rig.core.producers.values()
    assert sequence.producer_id == producer.id


def test_the_configs_trace_uuid_is_the_traces():
    rig = ClockRig()
    config = session_config()
    config.trace_uuid_msb, config.trace_uuid_lsb = -5, 77
    record(rig, config)
    (uuid,) = [p.trace_uuid for p in FakeConsumer(rig, "c").read() if p.HasField("trace_uuid")]
    assert (uuid.msb, uuid.lsb) == (-5, 77)


def test_provenance_lists_every_buffer_of_the_session_in_order():
    rig = ClockRig()
    config = session_config()
    config.buffers.add(size_kb=32)  # nobody writes there
    record(rig, config)
    packets = FakeConsumer(rig, "c").read()
    (provenance,) = [p.trace_provenance for p in packets if p.HasField("trace_provenance")]
    assert [len(b.sequences) for b in provenance.buffers] == [1, 0]


def test_a_later_read_has_only_what_happened_since():
    rig = ClockRig()
    record(rig, session_config())
    consumer = FakeConsumer(rig, "c")
    consumer.read()
    assert packet_kinds.kinds(consumer.read()) == ["read_tracing_buffers_completed", "trace_stats"]


def test_trigger_packets_follow_the_trace_config_and_each_comes_once():
    rig = ClockRig()
    record(rig, session_config())
    (session,) = rig.core.sessions.values()
    first = pb.TracePacket(timestamp=rig.now)
    first.trigger.trigger_name = "first"
    session.trigger_packets.append(first.SerializeToString())
    consumer = FakeConsumer(rig, "c")
    kinds = packet_kinds.kinds(consumer.read())
    assert kinds[kinds.index("trace_config") + 1] == "trigger"
    assert kinds.count("trigger") == 1
    second = pb.TracePacket(timestamp=rig.now)
    second.trigger.trigger_name = "second"
    session.trigger_packets.append(second.SerializeToString())
    packets = consumer.read()
    assert [p.trigger.trigger_name for p in packets if p.HasField("trigger")] == ["second"]
    assert packet_kinds.kinds(consumer.read()).count("trigger") == 0


@pytest.mark.parametrize(
    "knob, gone",
    [
        ("disable_clock_snapshotting", {"clock_snapshot"}),
        ("disable_trace_config", {"trace_config", "trigger"}),
        ("disable_system_info", {"system_info"}),
        (
            "disable_service_events",
            {
                "tracing_started",
                "all_data_sources_started",
                "flush_started",
                "all_data_sources_flushed",
                "tracing_disabled",
                "read_tracing_buffers_completed",
            },
        ),  # fmt: skip
    ],
)
def test_each_builtin_data_sources_knob_removes_its_packets_and_only_those(knob, gone):
    def kinds_of(config: pb.TraceConfig) -> set[str]:
        rig = ClockRig()
        record(rig, config)
        (session,) = rig.core.sessions.values()
        trigger = pb.TracePacket(timestamp=rig.now)
        trigger.trigger.trigger_name = "t"
        session.trigger_packets.append(trigger.SerializeToString())
        return set(packet_kinds.kinds(FakeConsumer(rig, "c").read()))

    everything = kinds_of(session_config())
    assert gone <= everything
    assert kinds_of(session_config(**{knob: True})) == everything - gone


def test_no_periodic_snapshot_timer_without_clock_snapshots():
    rig = ClockRig()
    record(rig, session_config(disable_clock_snapshotting=True), packets=0)
    (session,) = rig.core.sessions.values()
    assert session.next_clock_snapshot is None and session.initial_clock_snapshot == []


def test_the_primary_trace_clock_is_the_configs():
    rig = ClockRig()
    monotonic = pb.BuiltinClock.BUILTIN_CLOCK_MONOTONIC
    record(rig, session_config(primary_trace_clock=monotonic))
    snapshots = [p.clock_snapshot for p in FakeConsumer(rig, "c").read() if p.clock_snapshot.clocks]
    assert snapshots and {s.primary_trace_clock for s in snapshots} == {monotonic}


def enable_started(rig: ClockRig, config: pb.TraceConfig) -> FakeConsumer:
    consumer = FakeConsumer(rig, "c")
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config.SerializeToString()))
    return consumer


def snapshots_read(consumer: FakeConsumer) -> int:
    return packet_kinds.kinds(consumer.read()).count("clock_snapshot")


def test_periodic_snapshots_are_taken_only_when_a_clock_drifted():
    rig = ClockRig()
    consumer = enable_started(rig, session_config(snapshot_interval_ms=1000))
    (session,) = rig.core.sessions.values()
    assert rig.core.next_deadline() == rig.now + 1000 * MS
    assert snapshots_read(consumer) == 2  # start, and all (no) data sources started
    rig.advance(1000)  # the ring is empty after a read: this one is taken
    rig.advance(1000)  # no drift since: not taken
    assert len(session.clock_snapshots) == 1
    rig.realtime_step = sp.SIGNIFICANT_DRIFT_NS - 1
    rig.advance(1000)
    assert len(session.clock_snapshots) == 1
    rig.realtime_step = sp.SIGNIFICANT_DRIFT_NS  # REALTIME stepped 10 ms against BOOTTIME
    rig.advance(1000)
    assert len(session.clock_snapshots) == 2
    assert session.clock_snapshots[-1][3] == (RT, rig.now + 10**18 + sp.SIGNIFICANT_DRIFT_NS)
    assert snapshots_read(consumer) == 2


def test_a_flush_takes_a_snapshot_when_none_is_queued_or_a_clock_drifted():
    rig = ClockRig()
    consumer = enable_started(rig, session_config())
    (session,) = rig.core.sessions.values()
    consumer.send(flush=ipc.FlushConsumerRequest(timeout_ms=100))  # no producer: done at once
    assert len(session.clock_snapshots) == 1  # all started's; no drift since: none more
    consumer.read()
    consumer.send(flush=ipc.FlushConsumerRequest(timeout_ms=100))
    assert len(session.clock_snapshots) == 1  # the ring was empty: taken
    rig.realtime_step = -sp.SIGNIFICANT_DRIFT_NS
    consumer.send(flush=ipc.FlushConsumerRequest(timeout_ms=100))
    assert len(session.clock_snapshots) == 2


def test_the_snapshot_interval_defaults_to_10_s_and_is_at_least_100_ms():
    rig = ClockRig()
    enable_started(rig, session_config())
    assert rig.core.next_deadline() == rig.now + 10_000 * MS
    rig = ClockRig()
    enable_started(rig, session_config(snapshot_interval_ms=1))
    assert rig.core.next_deadline() == rig.now + 100 * MS


def test_the_snapshot_ring_keeps_the_start_and_the_16_newest():
    rig = ClockRig()
    consumer = enable_started(rig, session_config(snapshot_interval_ms=100))
    (session,) = rig.core.sessions.values()
    start = session.initial_clock_snapshot
    for step in range(1, 40):
        rig.realtime_step = step * sp.SIGNIFICANT_DRIFT_NS
        rig.advance(100)
    assert len(session.clock_snapshots) == sp.CLOCK_RING_SIZE
    packets = [p for p in consumer.read() if p.HasField("clock_snapshot")]
    assert len(packets) == 1 + sp.CLOCK_RING_SIZE
    assert [(c.clock_id, c.timestamp) for c in packets[0].clock_snapshot.clocks] == start
    newest = packets[-1].clock_snapshot.clocks
    assert (newest[3].clock_id, newest[3].timestamp) == (RT, rig.now + 10**18 + rig.realtime_step)


def test_flush_events_keep_their_64_newest_and_the_others_their_latest():
    rig = ClockRig()
    config = session_config()
    config.flush_period_ms = 100
    consumer = enable_started(rig, config)
    for _ in range(100):
        rig.advance(100)  # a periodic flush each time; no producer: done at once
    packets = consumer.read()
    kinds = packet_kinds.kinds(packets)
    assert kinds.count("flush_started") == kinds.count("all_data_sources_flushed") == 64
    assert kinds.count("tracing_started") == 1
    flushed = [p.timestamp for p in packets if p.service_event.all_data_sources_flushed]
    assert flushed[-1] == rig.now and flushed == sorted(flushed)


def test_a_failed_flush_is_still_followed_by_all_data_sources_flushed():
    """As traced: the event marks the end of the flush (SMBs scraped), acked or not."""
    rig = ClockRig()
    producer = FakeProducer(rig, "prod", pid=555)
    consumer = enable_started(rig, session_config())
    producer.process()
    consumer.send(flush=ipc.FlushConsumerRequest(timeout_ms=100))
    rig.take(producer.peer)  # the producer never acks
    rig.advance(200)
    (reply,) = [r for r in consumer.replies() if r.HasField("flush")]
    assert not reply.flush.success
    kinds = packet_kinds.kinds(consumer.read())
    assert "flush_started" in kinds and "all_data_sources_flushed" in kinds


def test_a_core_without_system_info_writes_none():
    rig = ClockRig(system_info=None)
    record(rig, session_config())
    assert "system_info" not in packet_kinds.kinds(FakeConsumer(rig, "c").read())


def test_a_clone_gets_what_its_source_queued_and_the_source_keeps_it():
    rig = ClockRig()
    record(rig, session_config())
    (source,) = rig.core.sessions.values()
    clone = Session(99, b"other", 1000, session_config(), 1)
    sp.copy_queued(source, clone)
    source_kinds = packet_kinds.kinds(FakeConsumer(rig, "c").read())
    assert clone.initial_clock_snapshot and len(clone.clock_snapshots) == 2
    assert [name for _, name in clone.service_events][0] == "tracing_started"
    clone_kinds = {n for _, n in clone.service_events}
    assert clone_kinds <= set(source_kinds) and "tracing_disabled" in clone_kinds


# -- pure helpers, and the host ---------------------------------------------------------


def test_drift_is_measured_against_boottime():
    old = [(BOOT, 1000), (RT, 5000), (MONO, 900)]
    assert not sp.drifted(old, [(BOOT, 2000), (RT, 6000), (MONO, 1900)])
    assert sp.drifted(old, [(BOOT, 2000), (RT, 6000 + sp.SIGNIFICANT_DRIFT_NS), (MONO, 1900)])
    assert sp.drifted(old, [(BOOT, 2000 + sp.SIGNIFICANT_DRIFT_NS), (RT, 6000), (MONO, 1900)])
    assert sp.drifted([(RT, 1)], [(RT, 1)])  # no BOOTTIME to compare with: taken


def test_add_event_bounds_each_kind():
    events: list[tuple[int, str]] = []
    for t in range(3):
        sp.add_event(events, "tracing_started", t)
        sp.add_event(events, "flush_started", t)
    assert events == [(0, "flush_started"), (1, "flush_started"), (2, "tracing_started"),
                      (2, "flush_started")]  # fmt: skip


def test_the_host_snapshot_has_traceds_six_clocks_boottime_first():
    clocks = host_info.snapshot_clocks()
    assert [c for c, _ in clocks] == [BOOT, RT_COARSE, MONO_COARSE, RT, MONO, RAW]
    assert all(ns > 0 for _, ns in clocks)


def test_the_host_system_info():
    import os

    info = host_info.system_info()
    assert info.utsname.sysname == os.uname().sysname
    assert info.utsname.release == os.uname().release
    assert info.page_size == os.sysconf("SC_PAGESIZE")
    assert info.num_cpus == os.sysconf("SC_NPROCESSORS_CONF")
    assert info.tracing_service_version.startswith("tracebus ")
    assert info.HasField("timezone_off_mins") and info.system_ram_bytes > 0
