"""What the service tells consumers about itself: TraceStats, the service
state, and read-back packets cut into ReadBuffers replies."""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from protos import tracebus_ipc_pb2 as ipc

if TYPE_CHECKING:
    from actors.core.service_core import ServiceCore
    from actors.core.sessions import Session

READ_SLICE_BUDGET = 1 << 20  # bytes of packets per ReadBuffers reply, and per slice


def read_replies(packets: list[bytes]) -> list[ipc.ReadBuffersResponse]:
    """Packets in replies of about READ_SLICE_BUDGET bytes; a packet larger than
    that is cut into slices (a frame must stay small); the last reply has
    has_more = false."""
    replies = []
    reply = ipc.ReadBuffersResponse(has_more=True)
    size = 0
    for packet in packets:
        for start in range(0, len(packet), READ_SLICE_BUDGET) or (0,):
            piece = packet[start : start + READ_SLICE_BUDGET]
            last = start + READ_SLICE_BUDGET >= len(packet)
            reply.slices.add(data=piece, last_slice_for_packet=last)
            size += len(piece)
            if size >= READ_SLICE_BUDGET:
                replies.append(reply)
                reply, size = ipc.ReadBuffersResponse(has_more=True), 0
    reply.has_more = False
    replies.append(reply)
    return replies


def trace_stats(core: ServiceCore, session: Session | None) -> pb.TraceStats:
    stats = pb.TraceStats()
    for buffer_id in session.buffer_ids if session else []:
        _buffer_stats(core, stats.buffer_stats.add(), buffer_id)
    stats.producers_connected = len(core.producers)
    stats.producers_seen = core.producers_seen
    stats.data_sources_registered = sum(len(p.data_sources) for p in core.producers.values())
    stats.data_sources_seen = core.data_sources_seen
    stats.tracing_sessions = len(core.sessions)
    stats.total_buffers = len(core.buffers)
    stats.chunks_discarded = core.counters.chunks_discarded
    stats.patches_discarded = core.counters.patches_discarded
    if session is not None:
        stats.invalid_packets = session.invalid_packets
        stats.flushes_requested = session.flushes_requested
        stats.flushes_succeeded = session.flushes_succeeded
        stats.flushes_failed = session.flushes_failed
    return stats


def _buffer_stats(core: ServiceCore, msg: pb.TraceStats.BufferStats, buffer_id: int) -> None:
    stats = core.buffers[buffer_id].stats
    for f in fields(stats):
        setattr(msg, f.name, getattr(stats, f.name))
    # Packets producers dropped before they reached a chunk (SMB full) are
    # reported with their commits; the buffer only sees the ones voided in a
    # chunk. Report whichever is larger, so the producer's count shows.
    reported = sum(
        d.packets
        for p in core.producers.values()
        for d in p.drops.values()
        if d.target_buffer == buffer_id
    )
    msg.trace_writer_packet_loss = max(msg.trace_writer_packet_loss, reported)


def service_state(core: ServiceCore, uid: int) -> ipc.QueryServiceStateResponse:
    """Producers and data sources, and the sessions `uid` may see (root sees all)."""
    reply = ipc.QueryServiceStateResponse()
    for p in core.producers.values():
        reply.producers.add(id=p.id, name=p.name, uid=p.uid, pid=p.pid)
        for desc in p.data_sources.values():
            reply.data_sources.add(producer_id=p.id, descriptor=desc)
    for s in core.sessions.values():
        if s.uid == uid or uid == 0:
            reply.sessions.add(
                id=s.id,
                consumer_uid=s.uid,
                state=s.state.value,
                buffer_size_kb=[b.size_kb for b in s.config.buffers],
                unique_session_name=s.config.unique_session_name,
            )
    return reply
