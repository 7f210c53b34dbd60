"""The service's own packets, on sequence 1, and what a session queues for them.

Builders take values and return a TracePacket's bytes stamped as the service's
(trusted_uid, trusted_packet_sequence_id 1, trusted_pid, and BOOTTIME as the
clock of their timestamps). readback._service_packets puts them in traced's
order at the head of each read::

    clock snapshots      queued since the last read: the one taken at start, then
                         the ring (see below)
    trace_config         first read only  ┐ none with
    trigger packets      queued, each once ┘ builtin_data_sources.disable_trace_config
    trace_uuid           first read only
    trace_provenance     first read only: per buffer, the sequences that wrote to it
    system_info          first read only (the shell's, collected once at its start)
                         none with disable_system_info; then each relayed machine's,
                         with its machine_id, on the first read after its InitRelay
    service events       queued since the last read, in time order
    remote_clock_sync    per relayed machine, its clock rounds not yet emitted
    ... the buffers' packets ...
    read_tracing_buffers_completed   at the end of a read that emptied the buffers
    trace_stats                      (the reader adds it: reports.py)

What a session queues between reads (values, not packets; built at the read):

  - service events: (boottime ns, TracingServiceEvent field name). As traced,
    each kind keeps only its latest occurrence, but flush_started and
    all_data_sources_flushed keep their last 64 (a periodic flush must not grow
    a session that nobody reads). None with disable_service_events.
  - clock snapshots, each a list of (BuiltinClock id, ns): the one taken at
    start is kept apart (nothing may push it out); the others go into a ring of
    16. A snapshot is taken when all data sources have started and when tracing
    is disabled (always: the trace then has a snapshot near both ends), and
    every snapshot_interval_ms (default 10 s) and after each flush only when a
    clock drifted by 10 ms or more against BOOTTIME since the newest one queued
    (traced's rule: an older snapshot covers more of the data; after a read the
    ring is empty and the next snapshot is taken). None with
    disable_clock_snapshotting. primary_trace_clock (default BOOTTIME) is
    written into each ClockSnapshot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from shm.protozero import varint

if TYPE_CHECKING:
    from actors.core.sessions import Session

SERVICE_SEQUENCE_ID = 1
BOOTTIME = pb.BuiltinClock.BUILTIN_CLOCK_BOOTTIME

ClockReading = list[tuple[int, int]]  # (BuiltinClock id, ns), one per clock
ServiceEvent = tuple[int, str]  # (boottime ns, TracingServiceEvent field name)

CLOCK_RING_SIZE = 16  # traced's kClockSnapshotRingBufferSize
SIGNIFICANT_DRIFT_NS = 10_000_000  # traced's kSignificantDriftNs
DEFAULT_SNAPSHOT_INTERVAL_MS = 10_000  # traced's kDefaultSnapshotsIntervalMs
MIN_SNAPSHOT_INTERVAL_MS = 100  # ours: a shorter period would only load the loop
# How many of each service event a session keeps until its next read (traced's).
EVENTS_KEPT = {"flush_started": 64, "all_data_sources_flushed": 64}
READ_COMPLETED = "read_tracing_buffers_completed"

_UID = b"\x18"  # trusted_uid (3), varint
_SEQ = b"\x50"  # trusted_packet_sequence_id (10), varint
_PID = b"\xf8\x04"  # trusted_pid (79), varint


def trusted_trailer(uid: int, sequence_id: int, pid: int) -> bytes:
    return _UID + varint(uid) + _SEQ + varint(sequence_id) + _PID + varint(pid)


def _service_packet(packet: pb.TracePacket, uid: int, service_pid: int) -> bytes:
    # Every timestamp on the service's packets is BOOTTIME: say so, as traced does
    # (else a trace processor reads them in the trace's primary clock).
    packet.timestamp_clock_id = BOOTTIME
    return packet.SerializeToString() + trusted_trailer(uid, SERVICE_SEQUENCE_ID, service_pid)


def _stamped(boottime_ns: int) -> pb.TracePacket:
    return pb.TracePacket(timestamp=boottime_ns)


# -- builders ----------------------------------------------------------------------------


def clock_snapshot_packet(
    clocks: ClockReading,
    boottime_ns: int,
    uid: int,
    service_pid: int,
    primary_trace_clock: int = BOOTTIME,
) -> bytes:
    """A ClockSnapshot of (clock id, timestamp) pairs, stamped at boottime_ns
    (unstamped if 0: a reading without BOOTTIME)."""
    packet = _stamped(boottime_ns) if boottime_ns else pb.TracePacket()
    for clock_id, ts in clocks:
        packet.clock_snapshot.clocks.add(clock_id=clock_id, timestamp=ts)
    packet.clock_snapshot.primary_trace_clock = primary_trace_clock
    return _service_packet(packet, uid, service_pid)


def service_event_packet(event: str, boottime_ns: int, uid: int, service_pid: int) -> bytes:
    """A TracingServiceEvent with the flag `event` (a field name) set."""
    packet = _stamped(boottime_ns)
    setattr(packet.service_event, event, True)
    return _service_packet(packet, uid, service_pid)


def trace_config_packet(config_bytes: bytes, uid: int, service_pid: int) -> bytes:
    packet = pb.TracePacket()
    packet.trace_config.ParseFromString(config_bytes)
    return _service_packet(packet, uid, service_pid)


def trace_uuid_packet(msb: int, lsb: int, uid: int, service_pid: int) -> bytes:
    packet = pb.TracePacket()
    packet.trace_uuid.msb = msb
    packet.trace_uuid.lsb = lsb
    return _service_packet(packet, uid, service_pid)


def trace_provenance_packet(
    buffers: list[list[tuple[int, int]]], boottime_ns: int, uid: int, service_pid: int
) -> bytes:
    """TraceProvenance: for each buffer of the session, in order, its sequences
    as (trusted_packet_sequence_id, producer id)."""
    packet = _stamped(boottime_ns)
    provenance = packet.trace_provenance
    provenance.SetInParent()  # present even with no buffer
    for sequences in buffers:
        buffer = provenance.buffers.add()
        for sequence_id, producer_id in sequences:
            buffer.sequences.add(id=sequence_id, producer_id=producer_id)
    return _service_packet(packet, uid, service_pid)


def system_info_packet(info: pb.SystemInfo, uid: int, service_pid: int) -> bytes:
    packet = pb.TracePacket()
    packet.system_info.CopyFrom(info)
    return _service_packet(packet, uid, service_pid)


def remote_system_info_packet(
    info_untrusted: bytes, machine_id: int, uid: int, service_pid: int
) -> bytes | None:
    """A relayed machine's SystemInfo (as its relay sent it), with its machine_id;
    None if the bytes are not a SystemInfo."""
    packet = pb.TracePacket(machine_id=machine_id)
    try:
        packet.system_info.ParseFromString(info_untrusted)
    except DecodeError:
        return None
    packet.system_info.DiscardUnknownFields()
    return _service_packet(packet, uid, service_pid)


def remote_clock_sync_packet(
    rounds: list[tuple[ClockReading, ClockReading, ClockReading, ClockReading]],
    machine_id: int,
    boottime_ns: int,
    uid: int,
    service_pid: int,
) -> bytes:
    """RemoteClockSync for one machine: each round (client C1, host H1, client C2,
    host H2) as two SyncedClocks entries, oldest first (trace_processor pairs
    adjacent entries into one round trip)."""
    packet = _stamped(boottime_ns)
    packet.machine_id = machine_id
    for client1, host1, client2, host2 in rounds:
        for client, host in ((client1, host1), (client2, host2)):
            synced = packet.remote_clock_sync.synced_clocks.add()
            for clock_id, ts in client:
                synced.client_clocks.clocks.add(clock_id=clock_id, timestamp=ts)
            for clock_id, ts in host:
                synced.host_clocks.clocks.add(clock_id=clock_id, timestamp=ts)
    return _service_packet(packet, uid, service_pid)


def trace_stats_packet(stats: pb.TraceStats, boottime_ns: int, uid: int, service_pid: int) -> bytes:
    packet = _stamped(boottime_ns)
    packet.trace_stats.CopyFrom(stats)
    return _service_packet(packet, uid, service_pid)


# -- what a session queues -------------------------------------------------------------


def add_event(events: list[ServiceEvent], event: str, boottime_ns: int) -> None:
    """Queue `event`, dropping the oldest of its kind past EVENTS_KEPT (default 1)."""
    kept = EVENTS_KEPT.get(event, 1)
    same = [i for i, (_, name) in enumerate(events) if name == event]
    for i in reversed(same[: max(0, len(same) - kept + 1)]):
        del events[i]
    events.append((boottime_ns, event))


def event_packets(events: list[ServiceEvent], uid: int, service_pid: int) -> list[bytes]:
    """The queued events as packets, in time order (then queue order)."""
    ordered = sorted(events, key=lambda e: e[0])  # stable: ties keep their order
    return [service_event_packet(name, ts, uid, service_pid) for ts, name in ordered]


def drifted(old: ClockReading, new: ClockReading) -> bool:
    """Whether some clock moved 10 ms or more apart from BOOTTIME between two
    snapshots (traced's test for a snapshot worth queueing beside the last)."""
    old_by_id, new_by_id = dict(old), dict(new)
    if BOOTTIME not in old_by_id or BOOTTIME not in new_by_id:
        return True
    boot = new_by_id[BOOTTIME] - old_by_id[BOOTTIME]
    for clock_id, ts in new_by_id.items():
        if clock_id in old_by_id and abs(boot - (ts - old_by_id[clock_id])) >= SIGNIFICANT_DRIFT_NS:
            return True
    return False


def add_snapshot(ring: list[ClockReading], reading: ClockReading) -> None:
    """Queue a snapshot into a session's ring, the oldest out past CLOCK_RING_SIZE."""
    if not reading:
        return
    ring.append(reading)
    del ring[: max(0, len(ring) - CLOCK_RING_SIZE)]


def add_snapshot_if_drifted(ring: list[ClockReading], reading: ClockReading) -> None:
    if not ring or drifted(ring[-1], reading):
        add_snapshot(ring, reading)


def snapshot_interval_ns(config: pb.TraceConfig) -> int:
    ms = config.builtin_data_sources.snapshot_interval_ms or DEFAULT_SNAPSHOT_INTERVAL_MS
    return max(ms, MIN_SNAPSHOT_INTERVAL_MS) * 1_000_000


def snapshot_boottime(reading: ClockReading) -> int:
    return dict(reading).get(BOOTTIME, 0)


def copy_queued(source: Session, clone: Session) -> None:
    """Give a clone what its source has queued for its next read (the clock
    snapshots and service events; traced's CloneSession copies them), the
    source keeping its own. The clone's first read then has its own config,
    uuid, provenance and system info."""
    clone.initial_clock_snapshot = list(source.initial_clock_snapshot)
    clone.clock_snapshots = [list(reading) for reading in source.clock_snapshots]
    clone.service_events = list(source.service_events)
