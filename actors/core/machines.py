"""The machines behind the service's relays: ids, link liveness, clock rounds.

Pure bookkeeping for the relay link (protos/tracebus_ipc.proto, "Relay link");
the shell reads the clocks and the time and passes them in.

    relay (routing id) --InitRelay--> Machine(id = machine_id_of(hint), name, key)
        every message from it:   seen(now)     silent for the timeout: expired()
        SyncClock PING  (C1) ->  host H1 read on receipt, kept per round
        SyncClock UPDATE(C2) ->  host H2; quality = client round trip + H2 - H1
        per burst the round of lowest quality is kept (the last MAX_BURSTS bursts),
        numbered in the order it became final (serial), for sessions to emit once

A machine id is the low 32 bits of FNV-1a 64 of InitRelay.machine_id_hint
(0 made 1: 0 is the service's own machine), so a relay that reconnects, or
restarts on the same boot, keeps its id. A relay that sends InitRelay again
starts a new incarnation: its producers are ended by the caller, and
sessions emit its system_info again.

Which rounds a remote_clock_sync packet lists (`rounds_to_emit`): the final
rounds after what the session emitted, newest kept first, then an older one
only if its end (client C2's BOOTTIME) is at least PAIRING_WINDOW_NS before the
start (C1) of the last kept; oldest first. trace_processor takes every two
adjacent entries less than PAIRING_WINDOW_NS apart as one round (and averages
the offsets of all such pairs in the packet): one round's end and the next
round's start closer than that would be taken for a round 30 s long.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from actors.core.relay_upstream import ROUNDS_PER_BURST
from actors.core.service_packets import BOOTTIME, ClockReading
from protos import tracebus_ipc_pb2 as ipc

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MAX_BURSTS = 8  # best rounds kept per machine
MAX_MACHINES = 1024  # listed; the oldest not connected is forgotten past it
BURST_QUIET_NS = 1_000_000_000  # a burst without a new round this long is over
MAX_OPEN_ROUNDS = 64  # PINGs waiting for their UPDATE, per machine (a relay may lie)
MAX_CLOCKS = 16  # clocks kept from one SyncClock
PAIRING_WINDOW_NS = 30_000_000_000
UNKNOWN_RELAY_ERROR_NS = 1_000_000_000  # "unknown relay" answered at most this often
U64 = (1 << 64) - 1


def machine_id_of(hint: str) -> int:
    """FNV-1a 64 of the hint's UTF-8 bytes, low 32 bits; never 0."""
    h = FNV_OFFSET
    for byte in hint.encode():
        h = ((h ^ byte) * FNV_PRIME) & U64
    return (h & 0xFFFFFFFF) or 1


def clocks_of(values_untrusted: list[ipc.ClockValue]) -> ClockReading:
    """A relay's clock readings, bounded, as (clock id, ns)."""
    return [(v.clock_id, v.timestamp) for v in values_untrusted[:MAX_CLOCKS]]


def boottime_of(reading: ClockReading) -> int:
    return next((ts for clock, ts in reading if clock == BOOTTIME), 0)


@dataclass(frozen=True)
class SyncRound:
    """One completed clock round: the relay's (client) and the service's (host)
    clocks at the PING and at the UPDATE."""

    burst: int
    client1: ClockReading
    host1: ClockReading
    client2: ClockReading
    host2: ClockReading
    quality: int  # both round trips, ns: lower is better
    serial: int = 0  # order in which the round became its burst's final best


@dataclass
class Machine:
    id: int
    name: str
    relay: bytes  # the routing id of its relay's connection now
    key: str  # the relay's CURVE public key (Z85); "" on a trusted network
    system_info: bytes  # perfetto.protos.SystemInfo, as the relay sent it
    incarnation: int = 0  # InitRelays seen: sessions emit system_info once per one
    connected: bool = True
    last_seen: int = 0
    open_rounds: dict[int, tuple[int, ClockReading, ClockReading]] = field(default_factory=dict)
    burst: int = -1  # the burst whose best round is `candidate`
    candidate: SyncRound | None = None
    last_round: int = 0  # the service's BOOTTIME when its last round completed
    burst_rounds: int = 0  # rounds of the running burst completed
    best: deque[SyncRound] = field(default_factory=lambda: deque(maxlen=MAX_BURSTS))
    last_error: int | None = None  # when "unknown relay" was last answered


class MachineTable:
    def __init__(self) -> None:
        self._by_id: dict[int, Machine] = {}
        self._by_relay: dict[bytes, Machine] = {}
        self._serial = 0
        self._unknown_errors: dict[bytes, int] = {}  # relay -> when answered

    def __iter__(self) -> Iterator[Machine]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def of_relay(self, relay: bytes) -> Machine | None:
        return self._by_relay.get(relay)

    def by_id(self, machine_id: int) -> Machine | None:
        return self._by_id.get(machine_id)

    def init_relay(self, relay: bytes, init: ipc.InitRelay, key: str, now: int) -> Machine:
        """A relay's InitRelay: its machine, made or taken over (a new incarnation).
        The caller ends the producers of the relay's previous incarnation first."""
        machine_id = machine_id_of(init.machine_id_hint or init.machine_name)
        machine = self._by_id.get(machine_id)
        if machine is None:
            self._make_room()
            machine = Machine(machine_id, "", relay, key, b"")
            self._by_id[machine_id] = machine
        if self._by_relay.get(machine.relay) is machine:
            del self._by_relay[machine.relay]
        machine.name = init.machine_name[:256]
        machine.relay, machine.key = relay, key
        machine.system_info = init.system_info[:65536]
        machine.incarnation += 1
        machine.connected, machine.last_seen = True, now
        machine.open_rounds.clear()
        self._by_relay[relay] = machine
        self._unknown_errors.pop(relay, None)
        return machine

    def _make_room(self) -> None:
        """At most MAX_MACHINES listed: past it the machine not connected for the
        longest is forgotten (a robot rebooting every day is a new machine each boot)."""
        gone = [m for m in self._by_id.values() if not m.connected]
        if len(self._by_id) >= MAX_MACHINES and gone:
            del self._by_id[min(gone, key=lambda m: m.last_seen).id]

    def lost(self, relay: bytes) -> Machine | None:
        """The relay's link is gone: its machine stays listed, not connected."""
        machine = self._by_relay.pop(relay, None)
        if machine is not None:
            machine.connected = False
            machine.open_rounds.clear()
        return machine

    def may_answer_unknown(self, relay: bytes, now: int) -> bool:
        """Whether to answer an unknown relay's message now (once a second)."""
        last = self._unknown_errors.get(relay)
        if last is not None and now - last < UNKNOWN_RELAY_ERROR_NS:
            return False
        if len(self._unknown_errors) >= 4096:  # bounded: garbage from many ids
            self._unknown_errors.clear()
        self._unknown_errors[relay] = now
        return True

    # -- liveness -------------------------------------------------------------------------

    def expired(self, now: int, timeout_ns: int) -> list[bytes]:
        """Relays silent for `timeout_ns` or more."""
        return [r for r, m in self._by_relay.items() if now - m.last_seen >= timeout_ns]

    def next_expiry(self, timeout_ns: int) -> int | None:
        seen = [m.last_seen for m in self._by_relay.values()]
        return min(seen) + timeout_ns if seen else None

    # -- clock rounds ---------------------------------------------------------------------

    def ping(self, machine: Machine, sync: ipc.SyncClock, host: ClockReading) -> None:
        if len(machine.open_rounds) >= MAX_OPEN_ROUNDS:
            machine.open_rounds.pop(next(iter(machine.open_rounds)))
        machine.open_rounds[sync.round] = (sync.burst, clocks_of(list(sync.clocks)), host)

    def update(self, machine: Machine, sync: ipc.SyncClock, host: ClockReading) -> None:
        """Complete a round; the best round of a burst is final once the next burst starts."""
        opened = machine.open_rounds.pop(sync.round, None)
        if opened is None:
            return
        burst, client1, host1 = opened
        host_trip = boottime_of(host) - boottime_of(host1)
        quality = min(sync.client_round_trip_ns, U64) + max(0, host_trip)
        done = SyncRound(burst, client1, host1, clocks_of(list(sync.clocks)), host, quality)
        if not boottime_of(client1) or not boottime_of(done.client2):
            return  # a round without BOOTTIME cannot be placed
        if burst != machine.burst:
            self._finish_burst(machine)
            machine.burst, machine.burst_rounds = burst, 0
        machine.last_round = boottime_of(host)
        machine.burst_rounds += 1
        if machine.candidate is None or quality < machine.candidate.quality:
            machine.candidate = done

    def _finish_burst(self, machine: Machine) -> None:
        if machine.candidate is not None:
            self._serial += 1
            final = machine.candidate
            machine.best.append(SyncRound(**{**final.__dict__, "serial": self._serial}))
            machine.candidate = None

    def best_rounds(self, machine: Machine) -> list[SyncRound]:
        """The best round of each finished burst kept, and of the burst going on
        (its best so far, serial 0 until it is final)."""
        rounds = list(machine.best)
        return rounds + ([machine.candidate] if machine.candidate is not None else [])

    def settle(self, machine: Machine, host_boottime: int) -> None:
        """Make the running burst's best round final once the burst is over: its
        ROUNDS_PER_BURST rounds came (the relay's), or none for BURST_QUIET_NS (its
        rounds follow each other at once; a relay may give one up).
        A read in the middle of a burst leaves it running: its best is not known yet."""
        quiet = host_boottime - machine.last_round >= BURST_QUIET_NS
        if quiet or machine.burst_rounds >= ROUNDS_PER_BURST:
            self._finish_burst(machine)


def rounds_to_emit(rounds: list[SyncRound], after_serial: int) -> list[SyncRound]:
    """Final rounds newer than `after_serial`, spaced for trace_processor's pairing
    (see the module docstring), oldest first."""
    new = [r for r in rounds if r.serial > after_serial]
    kept: list[SyncRound] = []
    for r in reversed(new):
        # Adjacent entries are this round's end (C2) and the next kept round's start.
        if not kept or boottime_of(kept[-1].client1) - boottime_of(r.client2) >= PAIRING_WINDOW_NS:
            kept.append(r)
    return kept[::-1]
