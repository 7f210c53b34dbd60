"""tracebus.remote_clocks: the trace processor's offsets from remote_clock_sync."""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracebus.remote_clocks import BOOTTIME, host_time, machine_offsets, round_offsets

REALTIME = 1
S = 1_000_000_000


def entry(client: dict[int, int], host: dict[int, int]) -> pb.RemoteClockSync.SyncedClocks:
    sc = pb.RemoteClockSync.SyncedClocks()
    for clock, ts in client.items():
        sc.client_clocks.clocks.add(clock_id=clock, timestamp=ts)
    for clock, ts in host.items():
        sc.host_clocks.clocks.add(clock_id=clock, timestamp=ts)
    return sc


def one_round(t1h: int, offset: int, trip: int) -> list[pb.RemoteClockSync.SyncedClocks]:
    """A round with symmetric one-way delays `trip`: client reads, host reads on
    arrival, client reads on the answer, host reads on arrival."""
    t1c = t1h - trip + offset
    t2c = t1h + trip + offset
    t2h = t1h + 2 * trip
    return [
        entry({BOOTTIME: t1c, REALTIME: t1c - offset + 7}, {BOOTTIME: t1h, REALTIME: t1h + 7}),
        entry({BOOTTIME: t2c, REALTIME: t2c - offset + 7}, {BOOTTIME: t2h, REALTIME: t2h + 7}),
    ]


def test_a_round_with_symmetric_delays_gives_the_exact_offset_per_clock() -> None:
    offsets = round_offsets(one_round(50 * S, 1000 * S, 300_000))
    assert offsets == {BOOTTIME: 1000 * S, REALTIME: 0}


def test_entries_30_s_apart_are_not_paired() -> None:
    """Two rounds 40 s apart: the UPDATE of the first and the PING of the second
    would give an estimate 20 s off if they were paired."""
    rounds = one_round(50 * S, 5 * S, 1000) + one_round(90 * S, 5 * S, 1000)
    assert round_offsets(rounds) == {BOOTTIME: 5 * S, REALTIME: 0}


def test_a_packet_of_a_remote_machine_is_moved_onto_the_host_clock() -> None:
    sync = pb.TracePacket(machine_id=7)
    sync.remote_clock_sync.synced_clocks.extend(one_round(50 * S, -3 * S, 2000))
    remote = pb.TracePacket(machine_id=7, timestamp=60 * S)
    local = pb.TracePacket(timestamp=60 * S)
    offsets = machine_offsets([sync, remote, local])
    assert host_time(remote, offsets) == 63 * S
    assert host_time(local, offsets) == 60 * S
