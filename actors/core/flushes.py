"""Flush: ask a session's producers to commit what their writers hold, wait
for their acks (or the timeout), then scrape their SMBs.

A pending flush is data (sessions.PendingFlush): the producer ids whose ack is
awaited, a deadline, and what to do when it completes (`after`: answer a
consumer, stop the session at the end of duration_ms, copy the session for a
clone (clones.py), or nothing for a periodic flush; the stop flush's outcome is
the session's TraceStats.final_flush_outcome). A producer acks by sending a
CommitData with
flush_request_id; an ack names the newest flush it covers, so it completes
every older one too.
"""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.clones import Clones
from actors.core.service_context import ServiceContext
from actors.core.session_control import SessionControl
from actors.core.sessions import (
    AfterFlush,
    CloneAfterFlush,
    PendingFlush,
    ReplyToConsumer,
    Session,
    StopSession,
)
from protos import tracebus_ipc_pb2 as ipc

_SUCCEEDED = pb.TraceStats.FINAL_FLUSH_SUCCEEDED
_FAILED = pb.TraceStats.FINAL_FLUSH_FAILED


class Flushes:
    def __init__(self, ctx: ServiceContext, control: SessionControl, clones: Clones) -> None:
        self._ctx = ctx
        self._control = control
        self._clones = clones

    def request(
        self, session: Session, now: int, timeout_ns: int, flags: int, after: AfterFlush
    ) -> None:
        flush = PendingFlush(self._ctx.flush_ids.next(), set(), now + timeout_ns, after)
        session.flushes_requested += 1
        self._ctx.service_event(session, "flush_started")
        by_producer: dict[int, list[int]] = {}
        for instance in session.instances.values():
            if not instance.no_flush:
                by_producer.setdefault(instance.producer_id, []).append(instance.id)
        for producer_id, instance_ids in by_producer.items():
            producer = self._ctx.producers.by_id(producer_id)
            if producer is None:
                continue
            flush.producers.add(producer_id)
            req = ipc.FlushRequest(
                flush_request_id=flush.id,
                instance_ids=instance_ids,
                flags=flags,
                timeout_ms=timeout_ns // 1_000_000,
            )
            self._ctx.out.to_producer(producer.peer, flush=req)
        session.flushes[flush.id] = flush
        if not flush.producers:
            self._complete(session, flush, True, now)

    def acked(self, producer_id: int, flush_id_untrusted: int, now: int) -> None:
        """A producer's ack of every flush up to `flush_id_untrusted`."""
        for session in list(self._ctx.sessions.values()):
            for flush in list(session.flushes.values()):
                if flush.id <= flush_id_untrusted:
                    self._acked_in(session, flush, producer_id, now)

    def producer_gone(self, session: Session, producer_id: int, now: int) -> None:
        """No ack will come from a producer that is gone."""
        for flush in list(session.flushes.values()):
            self._acked_in(session, flush, producer_id, now)

    def fail_all(self, session: Session, now: int) -> None:
        for flush in list(session.flushes.values()):
            self._complete(session, flush, False, now)

    def expire(self, session: Session, now: int) -> None:
        """Complete, as failed, the flushes whose deadline has passed."""
        for flush in list(session.flushes.values()):
            if flush.deadline <= now:
                self._complete(session, flush, False, now)

    def _acked_in(self, session: Session, flush: PendingFlush, producer_id: int, now: int) -> None:
        flush.producers.discard(producer_id)
        if not flush.producers and flush.id in session.flushes:
            self._complete(session, flush, True, now)

    def _complete(self, session: Session, flush: PendingFlush, success: bool, now: int) -> None:
        session.flushes.pop(flush.id, None)
        self._ctx.scrape_session(session, _not_scraped_for(session, flush.after))
        # As traced: the flush is over (its acks in or its time up) and the SMBs
        # scraped, whether or not every producer acked.
        self._ctx.clock_snapshot_if_drifted(session)
        self._ctx.service_event(session, "all_data_sources_flushed")
        if success:
            session.flushes_succeeded += 1
        else:
            session.flushes_failed += 1
        after = flush.after
        if isinstance(after, ReplyToConsumer):
            reply = ipc.FlushConsumerResponse(success=success)
            self._ctx.out.to_consumer(after.consumer, after.request_id, flush=reply)
        elif isinstance(after, StopSession):
            session.stopped_on_its_own = True  # detached, it is then freed (detach.py)
            session.final_flush_outcome = _SUCCEEDED if success else _FAILED
            self._control.disable(session, now)
        elif isinstance(after, CloneAfterFlush):
            self._clones.finish(session, after, success, now)


def _not_scraped_for(session: Session, after: AfterFlush) -> frozenset[int]:
    """The buffers a flush leaves unscraped: before a clone, those that move to it
    (transfer_on_clone). What the flush asked for is committed by the acks; a
    chunk scraped now would reach the source's fresh buffer again when its writer
    commits it, and the packets read in the clone would be read twice."""
    if not isinstance(after, CloneAfterFlush):
        return frozenset()
    buffers = zip(session.config.buffers, session.buffer_ids, strict=True)
    return frozenset(buffer_id for config, buffer_id in buffers if config.transfer_on_clone)
