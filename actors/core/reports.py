"""What the service tells consumers about itself: TraceStats and the service
state (read-back replies are readback.py's).

Each report takes the values it reports (counts, buffer statistics, the
producer and session records) and returns the message; nothing here reaches
into the service.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from protos import tracebus_ipc_pb2 as ipc

if TYPE_CHECKING:
    from actors.core.producer_table import DepartedProducer
    from actors.core.producers import ProducerEntry
    from actors.core.sessions import Session
    from shm.trace_buffer import BufferStats


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


def trace_stats(
    totals: ServiceTotals, buffers: Iterable[BufferReport], session: Session | None
) -> pb.TraceStats:
    """TraceStats for one session's consumer (`session` None: service fields only)."""
    stats = pb.TraceStats()
    for buffer in buffers:
        _buffer_stats(stats.buffer_stats.add(), buffer)
    for f in fields(totals):
        setattr(stats, f.name, getattr(totals, f.name))
    if session is not None:
        stats.invalid_packets = session.invalid_packets
        stats.flushes_requested = session.flushes_requested
        stats.flushes_succeeded = session.flushes_succeeded
        stats.flushes_failed = session.flushes_failed
    return stats


def _buffer_stats(msg: pb.TraceStats.BufferStats, buffer: BufferReport) -> None:
    for f in fields(buffer.stats):
        setattr(msg, f.name, getattr(buffer.stats, f.name))
    # The buffer only sees the packets voided inside a chunk; the writers count
    # the ones that never reached one. Report whichever is larger, so the
    # producer's count shows.
    msg.trace_writer_packet_loss = max(msg.trace_writer_packet_loss, buffer.writer_packets_dropped)


@dataclass(frozen=True)
class PeersGivenUp:
    """Peers the service stopped waiting for, and what went with them."""

    producers: int = 0
    consumers: int = 0
    messages_dropped: int = 0
    messages_refused: int = 0


def service_state(
    producers: Iterable[ProducerEntry],
    sessions: Iterable[Session],
    uid: int,
    given_up: PeersGivenUp = PeersGivenUp(),
    departed: Iterable[DepartedProducer] = (),
    refusals: Mapping[str, int] | None = None,
) -> ipc.QueryServiceStateResponse:
    """Producers and data sources, the sessions `uid` may see (root sees all), the
    peers given up on, and the producers that left (oldest first)."""
    reply = ipc.QueryServiceStateResponse()
    for f in fields(given_up):
        setattr(reply.peers_given_up, f.name, getattr(given_up, f.name))
    for name, count in (refusals or {}).items():
        reply.refusals[name] = count
    for p in producers:
        reply.producers.add(id=p.id, name=p.name, uid=p.uid, pid=p.pid)
        for desc in p.data_sources.values():
            reply.data_sources.add(producer_id=p.id, descriptor=desc)
    for d in departed:
        reply.departed_producers.add(id=d.id, name=d.name, uid=d.uid, pid=d.pid)
    for s in sessions:
        if s.uid == uid or uid == 0:
            reply.sessions.add(
                id=s.id,
                consumer_uid=s.uid,
                state=s.state.value,
                buffer_size_kb=[b.size_kb for b in s.config.buffers],
                unique_session_name=s.config.unique_session_name,
                consumer_pid=s.consumer_pid,
            )
    return reply
