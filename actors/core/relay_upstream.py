"""What the relay sends toward the central service, as data: the bounded send
queue, the losses it counts, and the clock-sync round driver (pure: no sockets,
no clocks of its own; time and clock readings are passed in).

Send queue. Every message for the service is serialized into the queue as its two
relay-link frames ([channel u32 BE][envelope], protos/framing.py); the shell sends
from its head with NOBLOCK and pops what ZeroMQ took. Control messages always
enter. Chunks enter only while the queue holds less than its bound (the core asks
`over_bound()` before it takes chunks out of an SMB), so the queue holds at most
the bound plus one producer commit (at most that producer's SMB). Heartbeats and
clock-sync rounds take a lane ahead of the rest. Each
queued commit remembers how many chunks and bytes it carries per target buffer:
when the link goes down the queue is dropped and those become a loss.

Loss. Chunks the relay freed unsent (no link, or a queue dropped), by the target
buffer their commit named; sent in the RelayLoss that follows each InitRelay
answer, with every chunk ZeroMQ took so far (`sent`): the service tells from it
what a connection that broke lost in flight.

Clock sync (the relay's half of Perfetto's RelayPort SyncClock): a burst of
ROUNDS_PER_BURST rounds, each PING (clocks C1) -> SyncClockResponse -> UPDATE
(clocks C2, client_round_trip_ns = C2.boottime - C1.boottime); the next round
starts when one completes, the next burst an interval after the last. A round
unanswered for ROUND_TIMEOUT_NS abandons its burst, retried after that timeout.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from protos import framing
from protos import tracebus_ipc_pb2 as ipc

ROUNDS_PER_BURST = 5
ROUND_TIMEOUT_NS = 2_000_000_000
SPACING_MARGIN_NS = 100_000_000
BOOTTIME = 6  # perfetto.protos.BuiltinClock
# The clocks a round carries (BuiltinClock ids): BOOTTIME, MONOTONIC, MONOTONIC_RAW, REALTIME.
SYNCED_CLOCKS = (6, 3, 5, 1)

URGENT = frozenset({"heartbeat", "sync_clock"})  # control kinds sent ahead of the rest
ReadClocks = Callable[[], list[tuple[int, int]]]  # [(BuiltinClock id, ns)], BOOTTIME included


@dataclass
class Loss:
    """Chunks and bytes per target buffer."""

    buffers: dict[int, list[int]] = field(default_factory=dict)  # buffer -> [chunks, bytes]

    def add(self, target_buffer: int, chunks: int, nbytes: int) -> None:
        entry = self.buffers.setdefault(target_buffer, [0, 0])
        entry[0] += chunks
        entry[1] += nbytes

    def merge(self, other: Loss) -> None:
        for buffer, (chunks, nbytes) in other.buffers.items():
            self.add(buffer, chunks, nbytes)

    def totals(self) -> tuple[int, int]:
        return (
            sum(c for c, _ in self.buffers.values()),
            sum(b for _, b in self.buffers.values()),
        )

    def message(self, sent: Loss) -> ipc.RelayToService:
        """RelayLoss: these as the chunks freed unsent, `sent` as those handed over."""
        msg = ipc.RelayToService()
        msg.loss.SetInParent()
        for buffer, (chunks, nbytes) in sorted(self.buffers.items()):
            msg.loss.buffers.add(target_buffer=buffer, chunks=chunks, bytes=nbytes)
        for buffer, (chunks, nbytes) in sorted(sent.buffers.items()):
            msg.loss.sent.add(target_buffer=buffer, chunks=chunks, bytes=nbytes)
        return msg

    def __bool__(self) -> bool:
        return bool(self.buffers)


@dataclass(slots=True)
class Queued:
    frames: list[bytes]
    size: int
    chunks: Loss | None  # what a commit carries, lost if the queue is dropped
    kind: str  # the envelope's message kind


class SendQueue:
    """Frames for the service, oldest first, with their byte count. Heartbeats and
    clock-sync rounds go ahead of the rest (URGENT): a round that waited behind
    megabytes of chunks would measure the queue, not the link."""

    def __init__(self, bound_bytes: int) -> None:
        self.bound_bytes = bound_bytes
        self._items: deque[Queued] = deque()
        self._urgent: deque[Queued] = deque()
        self.bytes = 0
        self.sent = Loss()  # chunks ZeroMQ took, since the relay started

    def push(self, channel: int, msg: object, chunks: Loss | None = None) -> None:
        frames = framing.encode_channel(channel, msg)  # type: ignore[arg-type]
        size = len(frames[1]) + len(frames[0])
        kind = msg.WhichOneof("msg")  # type: ignore[attr-defined]
        lane = self._urgent if channel == 0 and kind in URGENT else self._items
        lane.append(Queued(frames, size, chunks, kind))
        self.bytes += size

    def holds(self, kind: str) -> bool:
        """Whether a message of this kind waits unsent."""
        return any(item.kind == kind for item in self._items)

    def over_bound(self) -> bool:
        return self.bytes >= self.bound_bytes

    def head(self) -> list[bytes] | None:
        """The next frames to send; pop() them once ZeroMQ took them."""
        lane = self._urgent or self._items
        return lane[0].frames if lane else None

    def pop(self) -> None:
        item = (self._urgent or self._items).popleft()
        self.bytes -= item.size
        if item.chunks is not None:
            self.sent.merge(item.chunks)

    def sent_through_tail(self) -> Loss:
        """The chunks ZeroMQ will have taken once what is queued now went (a message
        pushed now follows them on the link): what a RelayLoss pushed now says."""
        total = Loss()
        total.merge(self.sent)
        for item in self._items:
            if item.chunks is not None:
                total.merge(item.chunks)
        return total

    def drop_all(self) -> Loss:
        """Empty the queue; the chunks its commits carried, as a loss."""
        lost = Loss()
        for item in self._items:
            if item.chunks is not None:
                lost.merge(item.chunks)
        self._items.clear()
        self._urgent.clear()
        self.bytes = 0
        return lost

    def __len__(self) -> int:
        return len(self._items) + len(self._urgent)


def clock_values(readings: list[tuple[int, int]]) -> list[ipc.ClockValue]:
    return [ipc.ClockValue(clock_id=c, timestamp=ns) for c, ns in readings if c in SYNCED_CLOCKS]


def boottime_of(readings: list[tuple[int, int]]) -> int:
    return next(ns for c, ns in readings if c == BOOTTIME)


@dataclass(slots=True)
class Round:
    number: int
    c1_boottime: int
    sent_at: int  # monotonic ns


class ClockSync:
    """The relay's clock-sync rounds: `start`, `answered`, `tick` return the
    RelayToService messages to send (SyncClock PING or UPDATE)."""

    def __init__(self, read_clocks: ReadClocks, interval_ns: int) -> None:
        self.read_clocks = read_clocks
        self.interval_ns = interval_ns
        self.burst = 0
        self.round = 0
        self.rounds_left = 0
        self.outstanding: Round | None = None
        self.next_burst: int | None = None  # None: not running (no link)

    def start(self, now: int) -> list[ipc.RelayToService]:
        """A burst now (the link just came up)."""
        self.burst += 1
        self.rounds_left = ROUNDS_PER_BURST
        self.next_burst = None
        return [self._ping(now)]

    def stop(self) -> None:
        self.outstanding = None
        self.next_burst = None
        self.rounds_left = 0

    def _ping(self, now: int) -> ipc.RelayToService:
        self.round += 1
        readings = self.read_clocks()
        self.outstanding = Round(self.round, boottime_of(readings), now)
        msg = ipc.RelayToService()
        sync = msg.sync_clock
        sync.phase, sync.round, sync.burst = ipc.SyncClock.PING, self.round, self.burst
        sync.clocks.extend(clock_values(readings))
        return msg

    def answered(self, round_untrusted: int, now: int) -> list[ipc.RelayToService]:
        """The service's SyncClockResponse: UPDATE, then the next round or none."""
        pending = self.outstanding
        if pending is None or round_untrusted != pending.number:
            return []  # a late answer to an abandoned round
        readings = self.read_clocks()
        msg = ipc.RelayToService()
        sync = msg.sync_clock
        sync.phase, sync.round, sync.burst = ipc.SyncClock.UPDATE, pending.number, self.burst
        sync.clocks.extend(clock_values(readings))
        sync.client_round_trip_ns = max(0, boottime_of(readings) - pending.c1_boottime)
        self.outstanding = None
        self.rounds_left -= 1
        if self.rounds_left > 0:
            return [msg, self._ping(now)]
        # The service keeps two rounds in one remote_clock_sync only if the later
        # starts PAIRING_WINDOW after the earlier ended (the clocks were read just
        # after `now`): a margin, so that a 30 s interval keeps every burst.
        self.next_burst = now + self.interval_ns + SPACING_MARGIN_NS
        return [msg]

    def tick(self, now: int) -> list[ipc.RelayToService]:
        if self.outstanding is not None and now - self.outstanding.sent_at >= ROUND_TIMEOUT_NS:
            self.outstanding = None  # the answer was lost: try a whole burst again later
            self.rounds_left = 0
            self.next_burst = now + min(self.interval_ns, ROUND_TIMEOUT_NS)
        if self.next_burst is not None and now >= self.next_burst:
            return self.start(now)
        return []

    def deadline(self) -> int | None:
        if self.outstanding is not None:
            return self.outstanding.sent_at + ROUND_TIMEOUT_NS
        return self.next_burst
