"""The consumer port: what the service does with each message a consumer sends,
and when a consumer goes away (its session is freed).

A consumer is trusted (owner-only socket) but may still send nonsense: a config
that does not parse, a request for a session it does not have. Each gets a
reply saying so. ReadBuffers is answered in slices: the request is kept as a
PendingRead (readback.py), and continue_reads sends the next slice of each
pending read in turn, one call per loop turn of the shell, between the messages
it receives. The dispatch
table that routes each ConsumerToService kind to a method here is in
service_core.py.
"""

from __future__ import annotations

from collections.abc import Callable

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import compression, readback, reports, trigger_modes
from actors.core.buffer_budget import allocate_buffers, budget_refusal
from actors.core.clones import CLONE_FLUSH_FLAGS, Clones
from actors.core.configs import first_non_text_string
from actors.core.detach import Detaches
from actors.core.file_writes import FileWrites
from actors.core.flushes import Flushes
from actors.core.lifecycle import ENDED_SESSION, RECORDING_SESSION, SessionEvent, can_apply
from actors.core.outbox import Peer, version_error
from actors.core.producer_port import producer_name
from actors.core.service_context import ServiceContext
from actors.core.session_control import NS_PER_MS, SessionControl
from actors.core.sessions import (
    ReplyToConsumer,
    Session,
    check_config,
    ignored_fields,
)
from protos import tracebus_ipc_pb2 as ipc
from shm.trace_buffer import TraceBuffer


class ConsumerPort:
    def __init__(
        self,
        ctx: ServiceContext,
        control: SessionControl,
        flushes: Flushes,
        files: FileWrites,
        clones: Clones,
    ) -> None:
        self._ctx = ctx
        self._control = control
        self._flushes = flushes
        self._files = files
        self._clones = clones
        # Reads answered in slices, by consumer; the next slice goes to the first.
        self._reads: dict[bytes, readback.PendingRead] = {}
        self._detaches = Detaches(ctx, control)

    def hello(self, peer: Peer, request_id: int, req: ipc.Hello, now: int) -> None:
        reply = ipc.HelloReply(protocol_version=ipc.PROTOCOL_VERSION)
        if req.client_name:  # the name this connection's triggers are recorded under
            self._ctx.consumer_names[peer.identity] = producer_name(req.client_name)
        if req.protocol_version != ipc.PROTOCOL_VERSION:
            reply.error = version_error(req.protocol_version)
        self._ctx.out.to_consumer(peer.identity, request_id, hello=reply)

    def enable_tracing(
        self, peer: Peer, request_id: int, req: ipc.EnableTracingRequest, now: int
    ) -> None:
        if req.attach_notification_only:  # after an attach: no new session (detach.py)
            self._detaches.await_end(peer, request_id)
            return
        config = pb.TraceConfig()
        error = self._refusal(peer, req, config)
        buffers: list[TraceBuffer] = []
        if not error:  # only once the budget allows them
            buffers, error = allocate_buffers(config.buffers)
        file_id = None
        if not error and config.write_into_file:  # opened last: a refusal leaves no file
            file_id, error = self._files.open(req.output_path, config)
        if error:
            reply = ipc.EnableTracingResponse(disabled=True, error=error)
            self._ctx.out.to_consumer(peer.identity, request_id, enable_tracing=reply)
            return
        session = self._control.create(peer, request_id, config, buffers)
        if file_id is not None:
            self._files.attach(session, file_id, now)
        reply = ipc.EnableTracingResponse(session_id=session.id)
        reply.unsupported_fields.extend([*ignored_fields(config), *session.smb_notes])
        reply.unmatched_data_sources.extend(self._control.unmatched_data_sources(config))
        trigger_modes.enabled(session, now)
        if not config.deferred_start and not trigger_modes.waits_to_start(config):
            self._control.start(session, now)
        reply.started = session.state in RECORDING_SESSION
        reports.bound_name_lists(reply)  # names from the config and producers
        self._ctx.out.to_consumer(peer.identity, request_id, enable_tracing=reply)

    def _refusal(self, peer: Peer, req: ipc.EnableTracingRequest, config: pb.TraceConfig) -> str:
        """Why a session cannot be enabled ("" if it can); parses `config` in place.
        A refusal because of a limit is counted under the limit's name."""
        try:
            config.ParseFromString(req.trace_config)
        except Exception as e:  # noqa: BLE001 - a consumer's bad bytes must not end the service
            return f"the TraceConfig does not parse: {e}"
        field = first_non_text_string(config)
        if field is not None:
            return f"the TraceConfig's {field} is not valid UTF-8"
        if self._ctx.session_of(peer.identity) is not None:
            return "this consumer already has a tracing session"
        sessions = list(self._ctx.sessions.values())
        limits = self._ctx.limits
        refusal = check_config(config, sessions, peer.uid, limits)
        refusal = refusal or budget_refusal(config, sessions, peer.uid, limits)
        if refusal is None and len(config.buffers) > self._ctx.free_buffer_ids():
            return "the service has no free buffer id left for this session's buffers"
        if refusal is not None and refusal.limit:
            self._ctx.refuse(refusal.limit)
        return refusal.message if refusal is not None else ""

    def start_tracing(
        self, peer: Peer, request_id: int, req: ipc.StartTracingRequest, now: int
    ) -> None:
        session = self._ctx.session_of(peer.identity)
        if session is None or not can_apply(session, SessionEvent.START):
            self._ctx.out.ack(peer.identity, request_id, "no deferred session to start")
            return
        self._control.start(session, now)
        self._ctx.out.ack(peer.identity, request_id)

    def disable_tracing(
        self, peer: Peer, request_id: int, req: ipc.DisableTracingRequest, now: int
    ) -> None:
        """Answered once the session is DISABLED (at once if it already is)."""
        session = self._ctx.session_of(peer.identity)
        if session is None:
            self._ctx.out.ack(peer.identity, request_id, "no tracing session")
            return
        if session.state in ENDED_SESSION:
            self._ctx.out.ack(peer.identity, request_id)
            return
        session.disable_waiters.append(request_id)
        self._control.disable(session, now)

    def flush(self, peer: Peer, request_id: int, req: ipc.FlushConsumerRequest, now: int) -> None:
        session = self._ctx.session_of(peer.identity)
        if session is None or session.state not in RECORDING_SESSION:
            reply = ipc.FlushConsumerResponse()  # success false: nothing to flush
            self._ctx.out.to_consumer(peer.identity, request_id, flush=reply)
            return
        timeout = req.timeout_ms * NS_PER_MS if req.timeout_ms else session.flush_timeout_ns
        after = ReplyToConsumer(peer.identity, request_id)
        self._flushes.request(session, now, timeout, req.flags, after)

    def read_buffers(
        self, peer: Peer, request_id: int, req: ipc.ReadBuffersRequest, now: int
    ) -> None:
        """Answered in slices by continue_reads. A second request while a read is
        pending is refused: the consumer ignores slices sent under the first id, so
        moving the read to the new one would leave an unmarked hole in its trace."""
        if peer.identity in self._reads:
            error = "a read_buffers of this consumer is still being answered"
            self._ctx.out.consumer_error(peer.identity, request_id, error)
            return
        session = self._ctx.session_of(peer.identity)
        if session is None:  # nothing to read: one last, empty reply
            reply = ipc.ReadBuffersResponse(has_more=False)
            self._ctx.out.to_consumer(peer.identity, request_id, read_buffers=reply)
            return
        if session.id in self._ctx.files:  # a read would steal packets from the file
            error = "this session writes into a file (write_into_file): it cannot be read back"
            self._ctx.out.consumer_error(peer.identity, request_id, error)
            return
        if trigger_modes.withholds_data(session):  # no trigger yet, or CLONE_SNAPSHOT: nothing
            reply = ipc.ReadBuffersResponse(has_more=False)
            self._ctx.out.to_consumer(peer.identity, request_id, read_buffers=reply)
            return
        self._reads[peer.identity] = readback.PendingRead(peer.identity, request_id, session.id)

    def reads_pending(self, may_send: Callable[[bytes], bool]) -> bool:
        return any(may_send(consumer) for consumer in self._reads)

    def continue_reads(self, budget: readback.SliceBudget) -> None:
        """The next slice of each pending read whose consumer may take one, in
        turn, until time_up(); a read not finished goes to the back of the line."""
        for read in list(self._reads.values()):
            if not budget.may_send(read.consumer):
                continue
            done = self._next_slice(read, budget)
            del self._reads[read.consumer]
            if not done:
                self._reads[read.consumer] = read
            if budget.time_up():
                return

    def _next_slice(self, read: readback.PendingRead, budget: readback.SliceBudget) -> bool:
        """Send the next slice of `read`; True when it was the last."""
        ctx = self._ctx
        session = ctx.sessions.get(read.session_id)
        if session is None:  # freed meanwhile: end the read
            packets: list[bytes] = []
            done = True
        else:
            framing = compression.read_framing(session.config, readback.SLICES)
            packets, done = readback.read_slice(
                read, session, ctx.buffers, ctx.uid, ctx.service_pid, budget, framing,
                system_info=ctx.system_info, boottime_ns=ctx.clocks.boottime(),
                machines=ctx.machine_packets, machine_of=ctx.machine_of,
            )  # fmt: skip
            if done:  # after the buffers, so that it counts what the read found
                packets += framing.frame(ctx.trace_stats_packet(session))
            packets = compression.compress(session.config, packets, readback.SLICES)
        for reply in readback.read_replies(packets, has_more=not done):
            ctx.out.to_consumer(read.consumer, read.request_id, read_buffers=reply)
        return done

    def free_buffers(
        self, peer: Peer, request_id: int, req: ipc.FreeBuffersRequest, now: int
    ) -> None:
        session = self._ctx.session_of(peer.identity)
        if session is not None:
            self.free(session, now)
        self._ctx.out.ack(peer.identity, request_id)

    def get_trace_stats(
        self, peer: Peer, request_id: int, req: ipc.GetTraceStatsRequest, now: int
    ) -> None:
        stats = self._ctx.trace_stats(self._ctx.session_of(peer.identity))
        reply = ipc.GetTraceStatsResponse(trace_stats=stats.SerializeToString())
        self._ctx.out.to_consumer(peer.identity, request_id, trace_stats=reply)

    def query_service_state(
        self, peer: Peer, request_id: int, req: ipc.QueryServiceStateRequest, now: int
    ) -> None:
        ctx = self._ctx
        reply = reports.service_state(
            ctx.producers.values(),
            ctx.sessions.values(),
            peer.uid,
            ctx.peers_given_up(),
            ctx.producers.departed(),
            ctx.counters.refusals,
            machines=ctx.machine_reports(),
        )
        ctx.out.to_consumer(peer.identity, request_id, service_state=reply)

    def observe_events(
        self, peer: Peer, request_id: int, req: ipc.ObserveEventsRequest, now: int
    ) -> None:
        session = self._ctx.session_of(peer.identity)
        if session is None:
            self._ctx.out.ack(peer.identity, request_id, "no tracing session")
            return
        self._control.observe(session, request_id, set(req.types))

    def detach(self, peer: Peer, request_id: int, req: ipc.DetachRequest, now: int) -> None:
        self._detaches.detach(peer, request_id, req, self._reads)

    def attach(self, peer: Peer, request_id: int, req: ipc.AttachRequest, now: int) -> None:
        self._detaches.attach(peer, request_id, req)

    def clone_session(
        self, peer: Peer, request_id: int, req: ipc.CloneSessionRequest, now: int
    ) -> None:
        """Answered with CloneSessionResponse once the source is flushed and copied
        (clones.py); the clone is then this consumer's session."""
        begun = self._clones.begin(peer, request_id, req, now)
        if begun is None:
            return  # refused, answered
        source, after = begun
        if self._clones.needs_flush(source):
            self._flushes.request(source, now, source.flush_timeout_ns, CLONE_FLUSH_FLAGS, after)
        else:
            self._clones.finish(source, after, True, now)

    def heartbeat(self, peer: Peer, request_id: int, req: ipc.Heartbeat, now: int) -> None:
        pass  # the consumer is alive; nothing to answer

    def gone(self, identity: bytes, now: int) -> None:
        """A consumer that disconnects without detaching frees its session (a detached
        one is no consumer's: detach.DETACHED)."""
        self._reads.pop(identity, None)
        self._ctx.consumer_names.pop(identity, None)
        self._clones.consumer_gone(identity)
        for session in [s for s in self._ctx.sessions.values() if s.consumer == identity]:
            self.free(session, now)

    def free(self, session: Session, now: int) -> None:
        """Fail the session's pending flushes, stop it at once, write the rest of a
        write_into_file session into its file, drop its buffers."""
        self._flushes.fail_all(session, now)
        self._control.stop_now(session, now)
        self._files.finish_now(session, now)  # while the buffers are there to drain
        self._control.free(session, now)
        self._files.forget(session)
