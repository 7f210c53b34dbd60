"""Putting every machine of a trace on the service's timeline, as Perfetto's
trace processor does (ProtoTraceReader::CalculateClockOffsets).

A trace recorded through relays (actors/relay.py) keeps each machine's raw
timestamps; packets of a remote machine carry its machine_id, and the service
writes, per machine, `remote_clock_sync` packets: a list of SyncedClocks
entries, each a snapshot of the relay's clocks (client) and of the service's
(host) taken when a clock sync message arrived. Two adjacent entries less than
30 s apart (client BOOTTIME) are one round: PING (t1c, then t1h on arrival),
UPDATE (t2c on the answer, then t2h on arrival). Per clock, a round gives two
estimates of client minus host,

    (t1c + t2c) / 2 - t1h        and        t2c - (t1h + t2h) / 2

and the offset is the integer average of all of them (C++ integer division,
toward zero). A remote timestamp t on clock c is then `t - offset[c]` on the
service's clock c.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

BOOTTIME = 6  # perfetto.protos.BuiltinClock.BUILTIN_CLOCK_BOOTTIME
ROUND_WINDOW_NS = 30 * 1_000_000_000  # TP: entries this far apart are different rounds


def _cdiv(a: int, b: int) -> int:
    """C++'s integer division: toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def round_offsets(synced_clocks: Iterable[Any]) -> dict[int, int]:
    """Clock id -> client minus host (ns) of one RemoteClockSync's entries."""
    entries = []
    for sc in synced_clocks:
        host = {c.clock_id: c.timestamp for c in sc.host_clocks.clocks}
        client = {c.clock_id: c.timestamp for c in sc.client_clocks.clocks}
        entries.append((client, host))
    estimates: dict[int, list[int]] = {}
    for (c1, h1), (c2, h2) in zip(entries, entries[1:], strict=False):
        if c2.get(BOOTTIME, 0) - c1.get(BOOTTIME, 0) >= ROUND_WINDOW_NS:
            continue
        for clock in c1:
            t1c, t1h, t2c, t2h = c1[clock], h1.get(clock, 0), c2.get(clock, 0), h2.get(clock, 0)
            if not (t1c and t1h and t2c and t2h):
                continue
            estimates.setdefault(clock, []).append(_cdiv(t1c + t2c, 2) - t1h)
            estimates.setdefault(clock, []).append(t2c - _cdiv(t1h + t2h, 2))
    return {clock: _cdiv(sum(v), len(v)) for clock, v in estimates.items()}


def machine_offsets(packets: Iterable[Any]) -> dict[int, dict[int, int]]:
    """machine_id -> (clock id -> client minus host, ns), from the trace's
    remote_clock_sync packets. A machine's later packet replaces what an earlier
    one said (the trace processor keeps each and uses the nearest in time: the
    same figure while the machines' clocks do not drift apart)."""
    offsets: dict[int, dict[int, int]] = {}
    for packet in packets:
        if packet.HasField("remote_clock_sync") and packet.machine_id:
            found = round_offsets(packet.remote_clock_sync.synced_clocks)
            offsets.setdefault(packet.machine_id, {}).update(found)
    return offsets


def host_time(packet: Any, offsets: dict[int, dict[int, int]], clock: int = BOOTTIME) -> int:
    """The packet's timestamp on the service's clock (a packet of the service's
    machine, or of a machine with no sync, keeps its own)."""
    return int(packet.timestamp) - offsets.get(packet.machine_id, {}).get(clock, 0)
