"""What the service tells consumers about itself: TraceStats and the service
state (read-back replies are readback.py's).

Each report takes the values it reports (counts, buffer statistics, the
producer and session records) and returns the message; nothing here reaches
into the service.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.producers import U64_MAX
from protos import tracebus_ipc_pb2 as ipc
from protos.framing import MAX_FRAME_BYTES
from shm.writer_stats import CHUNK_PAYLOAD_THRESHOLDS

I64_MAX = (1 << 63) - 1

if TYPE_CHECKING:
    from actors.core.producer_table import DepartedProducer
    from actors.core.producers import ProducerEntry
    from actors.core.sessions import Session
    from shm.trace_buffer import BufferStats
    from shm.writer_stats import WriterHistogram


@dataclass(frozen=True)
class ServiceTotals:
    """Service-wide TraceStats fields."""

    producers_connected: int
    producers_seen: int
    data_sources_registered: int
    data_sources_seen: int
    tracing_sessions: int
    total_buffers: int
    chunks_discarded: int
    patches_discarded: int


@dataclass(frozen=True)
class BufferReport:
    """One buffer's statistics, and the packets its producers' writers say they
    dropped before they reached a chunk (SMB full)."""

    stats: BufferStats
    writer_packets_dropped: int
    # Each writer's chunk payload histogram (shm/writer_stats.py).
    writers: Iterable[WriterHistogram] = ()


def trace_stats(
    totals: ServiceTotals, buffers: Iterable[BufferReport], session: Session | None
) -> pb.TraceStats:
    """TraceStats for one session's consumer (`session` None: service fields only)."""
    stats = pb.TraceStats()
    buffers = list(buffers)
    for buffer in buffers:
        _buffer_stats(stats.buffer_stats.add(), buffer)
    for f in fields(totals):
        setattr(stats, f.name, _u64(getattr(totals, f.name)))
    if session is not None:
        stats.invalid_packets = session.invalid_packets
        stats.flushes_requested = session.flushes_requested
        stats.flushes_succeeded = session.flushes_succeeded
        stats.flushes_failed = session.flushes_failed
        # Set even while UNSPECIFIED (no stop flush yet), as traced does.
        stats.final_flush_outcome = session.final_flush_outcome
        if not session.config.builtin_data_sources.disable_chunk_usage_histograms:
            _writer_stats(stats, buffers, session)
    return stats


def _writer_stats(stats: pb.TraceStats, buffers: list[BufferReport], session: Session) -> None:
    """One WriterStats per writer sequence of each buffer (index in the config), and
    the buckets' bounds once, if any writer committed (traced's layout)."""
    for index, buffer in enumerate(buffers):
        for writer in buffer.writers:
            if not stats.chunk_payload_histogram_def:
                stats.chunk_payload_histogram_def.extend(CHUNK_PAYLOAD_THRESHOLDS)
            entry = stats.writer_stats.add(
                sequence_id=session.sequence_id(writer.producer_id, writer.writer_id),
                buffer=index,
            )
            entry.chunk_payload_histogram_counts.extend(map(_u64, writer.counts))
            entry.chunk_payload_histogram_sum.extend(map(_i64, writer.sums))


def _buffer_stats(msg: pb.TraceStats.BufferStats, buffer: BufferReport) -> None:
    for f in fields(buffer.stats):
        setattr(msg, f.name, _u64(getattr(buffer.stats, f.name)))
    # The buffer only sees the packets voided inside a chunk; the writers count
    # the ones that never reached one. Report whichever is larger, so the
    # producer's count shows.
    writers = _u64(buffer.writer_packets_dropped)
    msg.trace_writer_packet_loss = max(msg.trace_writer_packet_loss, writers)


def _u64(value: int) -> int:
    """A count as a uint64 field holds it: producers feed some of these counts,
    and a value out of range would make the report raise instead of saturate."""
    return min(max(value, 0), U64_MAX)


def _i64(value: int) -> int:
    """A sum as an int64 field holds it (saturated, never raising)."""
    return min(max(value, 0), I64_MAX)


@dataclass(frozen=True)
class PeersGivenUp:
    """Peers the service stopped waiting for, and what went with them."""

    producers: int = 0
    consumers: int = 0
    messages_dropped: int = 0
    messages_refused: int = 0


# An entry's cost beyond its own size: its tag (1 byte) and length (a varint).
ENTRY_OVERHEAD = 6
# What one list of names in a reply may take (EnableTracingResponse has three).
NAME_LIST_BUDGET = MAX_FRAME_BYTES // 8


def bounded_names(names: Iterable[str], budget: int = NAME_LIST_BUDGET) -> list[str]:
    """`names` as a reply lists them: those that fit in `budget` bytes (UTF-8, with
    their tag and length), then one "... and N more" entry if some did not. The
    names come from configs and producers, and a reply must stay within a frame."""
    kept: list[str] = []
    left = budget
    names = list(names)
    for name in names:
        left -= len(name.encode()) + ENTRY_OVERHEAD
        if left < 0:
            return [*kept, f"... and {len(names) - len(kept)} more"]
        kept.append(name)
    return kept


def bound_name_lists(reply: ipc.EnableTracingResponse) -> ipc.EnableTracingResponse:
    """The reply with each of its lists of names cut by bounded_names."""
    for names in (reply.unsupported_fields, reply.stop_timed_out, reply.unmatched_data_sources):
        kept = bounded_names(names)
        if kept != list(names):
            del names[:]
            names.extend(kept)
    return reply


# What a service state reply may take: the frame cap, less room for the envelope.
STATE_REPLY_BUDGET = MAX_FRAME_BYTES - (64 << 10)


@dataclass(frozen=True)
class MachineReport:
    """A relayed machine as the service state lists it."""

    id: int
    name: str
    connected: bool
    producers: int  # connected through its relay now
    relay_key: str


def service_state(
    producers: Iterable[ProducerEntry],
    sessions: Iterable[Session],
    uid: int,
    given_up: PeersGivenUp = PeersGivenUp(),
    departed: Iterable[DepartedProducer] = (),
    refusals: Mapping[str, int] | None = None,
    budget: int = STATE_REPLY_BUDGET,
    machines: Iterable[MachineReport] = (),
) -> ipc.QueryServiceStateResponse:
    """Producers and data sources, the sessions `uid` may see (root sees all), the
    peers given up on, the producers that left (oldest first), and the machines
    behind relays (a producer's machine_id names one; 0 is this machine).

    The reply stays within `budget` bytes, whatever peers registered: sessions
    first, then producers, their data sources, the departed producers, each list
    cut at its first entry that does not fit in what is left (the next lists may
    still fit), and `truncated` set if anything was left out."""
    reply = ipc.QueryServiceStateResponse()
    for f in fields(given_up):
        setattr(reply.peers_given_up, f.name, _u64(getattr(given_up, f.name)))
    for name, count in (refusals or {}).items():
        reply.refusals[name] = _u64(count)
    room = _Room(budget - reply.ByteSize())
    producers = list(producers)
    visible = (s for s in sessions if s.uid == uid or uid == 0)
    entries = (
        (reply.sessions, (_session_entry(s) for s in visible)),
        (
            reply.producers,
            (
                {"id": p.id, "name": p.name, "uid": p.uid, "pid": p.pid, "machine_id": p.machine_id}
                for p in producers
            ),
        ),
        (reply.data_sources, _data_source_entries(producers)),
        (
            reply.departed_producers,
            (
                {"id": d.id, "name": d.name, "uid": d.uid, "pid": d.pid, "machine_id": d.machine_id}
                for d in departed
            ),
        ),
        (reply.machines, (m.__dict__ for m in machines)),
    )
    for repeated, values in entries:
        if not room.fill(repeated, values):
            reply.truncated = True  # and the next lists still get what fits
    return reply


class _Room:
    """The bytes left in a reply, spent entry by entry."""

    def __init__(self, left: int) -> None:
        self.left = left

    def fill(self, repeated: Any, values: Iterable[dict[str, Any]]) -> bool:
        """Add each of `values` to `repeated` while it fits; False at the first that does not."""
        for value in values:
            entry = repeated.add(**value)
            cost = entry.ByteSize() + ENTRY_OVERHEAD
            if cost > self.left:
                del repeated[-1]
                return False
            self.left -= cost
        return True


def _session_entry(s: Session) -> dict[str, Any]:
    return {
        "id": s.id,
        "consumer_uid": s.uid,
        "state": s.state.value,
        "buffer_size_kb": [b.size_kb for b in s.config.buffers],
        "unique_session_name": s.config.unique_session_name,
        "consumer_pid": s.consumer_pid,
    }


def _data_source_entries(producers: Iterable[ProducerEntry]) -> Iterator[dict[str, Any]]:
    """Every producer's first data source, then every producer's second...: a
    reply cut short lists some of each producer's, so a producer that registered
    thousands cannot hide the others'."""
    per_producer = [[(p.id, d) for d in p.data_sources.values()] for p in producers]
    for row in zip_longest(*per_producer):
        for entry in row:
            if entry is not None:
                yield {"producer_id": entry[0], "descriptor": entry[1]}
