"""CloneSession: a read-only copy of another session's buffers, taken while the
source goes on recording (Perfetto's FlushAndCloneSession / FinishCloneSession).

    consumer C ── clone_session(session_id | unique_session_name, trigger?) ──►
      refused at once (CloneSessionResponse.error) when C already holds a
      session or a pending clone, the source is missing, is itself a clone,
      belongs to another uid (root may clone any), writes into a file, or one
      more session with the source's buffers would break a limit
      (sessions, buffers, buffer memory: a clone counts like any session)
      clear_before_clone buffers that hold data are replaced by empty ones
      the source is flushed (FlushRequest.flags: initiator traced, reason clone)
    flush complete (acked or timed out; Flushes calls `finish`) ──►
      each buffer copied (TraceBuffer.clone_read_only), or moved to the clone
      when transfer_on_clone (the source gets an empty one of the same size)
      a CLONED_READ_ONLY session held by C: the source's config, a new trace
      UUID msb with the source's lsb, the source's pending clock snapshots,
      service events, trigger packets (moved out of a CLONE_SNAPSHOT source,
      which is read only through its clones) and counters, then the events
      clone_started and tracing_disabled and a clock snapshot; the trigger
      that asked for the snapshot as a clone_snapshot_trigger packet
    ◄── CloneSessionResponse(success, session_id, uuid)

C then reads the clone with ReadBuffers and frees it with FreeBuffers, like any
session. A source that is not recording (deferred, stopping, stopped) is not
flushed: its buffers are copied at once. A source freed while the flush is
pending is still copied (its buffers are there until the free completes). A
consumer that leaves while its clone is pending gets nothing made for it.

write_into_file sources are refused: their trace is in their file, of which
the buffers hold only what the next drain would write, so a copy of the
buffers is not the trace (Perfetto copies the file into a descriptor the
client passes; this protocol passes none).
"""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import readback, service_packets, trigger_modes
from actors.core.buffer_budget import budget_refusal
from actors.core.lifecycle import CLONE_SESSION, RECORDING_SESSION, SessionEvent, apply
from actors.core.outbox import Peer
from actors.core.service_context import ServiceContext
from actors.core.session_control import trace_uuid
from actors.core.sessions import CloneAfterFlush, Session, limit_refusal, named
from protos import tracebus_ipc_pb2 as ipc
from shm.trace_buffer import TraceBuffer

CLONE_SNAPSHOT = pb.TraceConfig.TriggerConfig.CLONE_SNAPSHOT
_SUCCEEDED = pb.TraceStats.FINAL_FLUSH_SUCCEEDED
_FAILED = pb.TraceStats.FINAL_FLUSH_FAILED

# FlushRequest.flags of the flush before a clone: Perfetto's FlushFlags, reason
# kTraceClone (3) in bits 0-3, initiator kTraced (1) in bits 4-7.
CLONE_FLUSH_FLAGS = 1 << 4 | 3
ROOT_UID = 0


class Clones:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        # Consumers whose clone waits for its flush; one leaving drops out.
        self._waiting: set[bytes] = set()

    def begin(
        self, peer: Peer, request_id: int, req: ipc.CloneSessionRequest, now: int
    ) -> tuple[Session, CloneAfterFlush] | None:
        """The source to flush and what to do after, or None when the request was
        refused (answered here)."""
        source, error = self._source(peer, req)
        if source is None:
            self._reply(peer.identity, request_id, ipc.CloneSessionResponse(error=error))
            return None
        self._clear_before_clone(source)
        self._waiting.add(peer.identity)
        trigger = _trigger_packet(req, self._ctx.uid, self._ctx.service_pid)
        after = CloneAfterFlush(peer.identity, peer.uid, peer.pid, request_id, trigger)
        return source, after

    @staticmethod
    def needs_flush(source: Session) -> bool:
        return source.state in RECORDING_SESSION

    def consumer_gone(self, consumer: bytes) -> None:
        self._waiting.discard(consumer)

    def _source(self, peer: Peer, req: ipc.CloneSessionRequest) -> tuple[Session | None, str]:
        """(the session to clone, "") or (None, why not)."""
        ctx = self._ctx
        if ctx.session_of(peer.identity) is not None:
            return None, "this consumer already has a tracing session (free it first)"
        if peer.identity in self._waiting:
            return None, "a clone asked for by this consumer is still pending"
        source, error = self._find(req)
        if source is None:
            return None, error
        if source.state in CLONE_SESSION:
            return None, f"session {source.id} is a read-only clone: clone its source instead"
        if peer.uid not in (source.uid, ROOT_UID):
            return None, f"session {source.id} belongs to another uid: cloning it is not allowed"
        if source.id in ctx.files:
            return None, (
                f"session {source.id} writes into a file (write_into_file): its trace is in "
                "that file, so cloning its buffers is not supported"
            )
        error = self._limit_error(source, peer.uid)
        return (None, error) if error else (source, "")

    def _find(self, req: ipc.CloneSessionRequest) -> tuple[Session | None, str]:
        sessions = self._ctx.sessions
        if req.session_id:
            found = sessions.get(req.session_id)
            return found, "" if found else f"no tracing session {req.session_id}"
        if req.unique_session_name:
            found = named(req.unique_session_name, sessions.values())
            error = f"no tracing session named {req.unique_session_name!r}"
            return found, "" if found else error
        return None, "name the session to clone (session_id or unique_session_name)"

    def _limit_error(self, source: Session, uid: int) -> str:
        """Why one more session with the source's buffers does not fit ("" if it
        does); a refusal because of a limit is counted under its name."""
        ctx = self._ctx
        sessions = list(ctx.sessions.values())
        config = source.config
        refusal = limit_refusal(config, sessions, uid, ctx.limits)
        refusal = refusal or budget_refusal(config, sessions, uid, ctx.limits)
        if refusal is None:
            if len(source.buffer_ids) > ctx.free_buffer_ids():
                return "the service has no free buffer id left for the clone's buffers"
            return ""
        if refusal.limit:
            ctx.refuse(refusal.limit)
        return f"cannot clone session {source.id}: {refusal.message}"

    def _clear_before_clone(self, source: Session) -> None:
        """Empty the buffers marked clear_before_clone before the flush, so that the
        clone holds only what the flush brings (a host refusing the memory leaves
        the buffer as it is)."""
        buffers = self._ctx.buffers
        for buffer_id, config in zip(source.buffer_ids, source.config.buffers, strict=True):
            buffer = buffers[buffer_id]
            if config.clear_before_clone and buffer.has_data:
                try:
                    buffers[buffer_id] = buffer.empty_like()
                except (MemoryError, OSError):
                    pass

    # -- after the flush ---------------------------------------------------------------------

    def finish(self, source: Session, after: CloneAfterFlush, flushed: bool, now: int) -> None:
        """The source's flush completed (or failed: the copy is made all the same)."""
        if after.consumer not in self._waiting:
            return  # the consumer left: nobody to hold the clone
        self._waiting.discard(after.consumer)
        ctx = self._ctx
        error = ""
        if ctx.session_of(after.consumer) is not None:
            error = "this consumer enabled a session meanwhile: the clone was dropped"
        error = error or self._limit_error(source, after.uid)
        copies: list[TraceBuffer] = []
        if not error:
            copies, error = self._copy_buffers(source)
        if error:
            reply = ipc.CloneSessionResponse(error=error)
            self._reply(after.consumer, after.request_id, reply)
            return
        clone = self._create(source, after, copies)
        # As traced: a clone's final flush is the flush made for it.
        clone.final_flush_outcome = _SUCCEEDED if flushed else _FAILED
        reply = ipc.CloneSessionResponse(
            success=True,
            session_id=clone.id,
            uuid_msb=clone.uuid_msb,
            uuid_lsb=clone.uuid_lsb,
        )
        self._reply(after.consumer, after.request_id, reply)

    def _copy_buffers(self, source: Session) -> tuple[list[TraceBuffer], str]:
        """The clone's buffers, in the source's order: copies, or for
        transfer_on_clone the source's own (replaced by empty ones). All or none:
        nothing of the source changes unless every allocation succeeded."""
        buffers = self._ctx.buffers
        copies: list[TraceBuffer] = []
        replacements: dict[int, TraceBuffer] = {}
        configs = source.config.buffers
        try:
            for buffer_id, config in zip(source.buffer_ids, configs, strict=True):
                buffer = buffers[buffer_id]
                if config.transfer_on_clone:
                    replacements[buffer_id] = buffer.empty_like()
                    copies.append(buffer)
                else:
                    copies.append(buffer.clone_read_only())
        except (MemoryError, OSError) as e:
            return [], f"the service could not allocate the clone's buffers: {e}"
        for buffer_id, empty in replacements.items():
            buffers[buffer_id].make_read_only()
            buffers[buffer_id] = empty
        return copies, ""

    def _create(
        self, source: Session, after: CloneAfterFlush, copies: list[TraceBuffer]
    ) -> Session:
        ctx = self._ctx
        config = pb.TraceConfig()
        config.CopyFrom(source.config)
        clone = Session(ctx.session_ids.next(), after.consumer, after.uid, config, 0, after.pid)
        for buffer in copies:
            buffer_id = ctx.buffer_ids.allocate()
            assert buffer_id is not None, "free buffer ids were checked just before"
            ctx.buffers[buffer_id] = buffer
            clone.buffer_ids.append(buffer_id)
        # A new trace, the same lsb: Perfetto ties a snapshot to its source by it.
        clone.uuid_msb, clone.uuid_lsb = trace_uuid(pb.TraceConfig(), ctx.rng)[0], source.uuid_lsb
        self._copy_state(source, clone, after)
        apply(clone, SessionEvent.CLONE)
        ctx.sessions[clone.id] = clone
        return clone

    def _copy_state(self, source: Session, clone: Session, after: CloneAfterFlush) -> None:
        """What the clone's trace reports of its source: its pending service packets,
        its counters, and the clone's own events."""
        ctx = self._ctx
        service_packets.copy_queued(source, clone)
        clone.trigger_packets = [after.trigger_packet] if after.trigger_packet else []
        clone.trigger_packets += source.trigger_packets
        if trigger_modes.mode(source.config) == CLONE_SNAPSHOT:
            # Read only through its clones: each reports the triggers since the last.
            source.trigger_packets = []
        clone.seq_ids = dict(source.seq_ids)
        # Its buffers hold the source's relayed machines' data: a trace of its own,
        # it carries their system_info and every clock round kept, from the start.
        clone.machines = set(source.machines)
        clone.invalid_packets = source.invalid_packets
        clone.flushes_requested = source.flushes_requested
        clone.flushes_succeeded = source.flushes_succeeded
        clone.flushes_failed = source.flushes_failed
        ctx.service_event(clone, "clone_started")
        ctx.service_event(clone, "tracing_disabled")
        ctx.clock_snapshot(clone)

    def _reply(self, consumer: bytes, request_id: int, reply: ipc.CloneSessionResponse) -> None:
        self._ctx.out.to_consumer(consumer, request_id, clone_session=reply)


def _trigger_packet(req: ipc.CloneSessionRequest, uid: int, service_pid: int) -> bytes:
    """The clone_snapshot_trigger packet for the trigger that asked for this
    snapshot (the CLI passes the CloneTriggerHit it observed), or b""."""
    if not req.clone_trigger_name:
        return b""
    packet = pb.TracePacket(timestamp=req.clone_trigger_boot_time_ns)
    trigger = packet.clone_snapshot_trigger
    trigger.trigger_name = req.clone_trigger_name
    trigger.producer_name = req.clone_trigger_producer_name
    trigger.trusted_producer_uid = req.clone_trigger_trusted_producer_uid
    trigger.stop_delay_ms = req.clone_trigger_delay_ms
    trailer = readback.trusted_trailer(uid, readback.SERVICE_SEQUENCE_ID, service_pid)
    return packet.SerializeToString() + trailer
