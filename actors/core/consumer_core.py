"""ConsumerCore: the consumer side of the consumer port (protos/__init__.py), without I/O.

The shell asks for a request (hello, enable_tracing, flush, read_buffers, ...)
and gets the ConsumerToService envelope to send, its request_id numbered here.
It feeds every decoded ServiceToConsumer to handle(), calls expire() at
next_deadline(), and acts on the events that come out: Completed or Failed for
a request, PacketsRead while a read streams, SessionEnded when the service sends
the second EnableTracing reply, EventsObserved, Notice. Deadlines live here, so
a request that gets no reply fails (a flush completes False) without the shell
keeping its own timers.

Dispatch: one table maps each ServiceToConsumer kind to its handler; a reply is
then handled by the kind of request it answers. A kind with no handler (a newer
service's) fails the request it answers, or becomes a Notice, and is counted in
`unhandled_messages`.

Below the protocol: Perfetto's trace file framing, which the record CLI needs
and is pure too. The summary printed at the end of a recording (and the scan of
the trusted fields of a read packet it groups by) is in
actors/core/consumer_summary.py.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from protos import tracebus_ipc_pb2 as ipc
from shm.protozero import varint

# -- errors --------------------------------------------------------------------------------------


class ConsumerError(Exception):
    """Anything that stops a consumer request from doing what was asked."""


class ConfigError(ConsumerError):
    """A TraceConfig that does not parse (CLI exit code 2)."""


class UsageError(ConsumerError):
    """A request this connection cannot make now (say hello first, one session, ...)."""


class ProtocolMismatch(ConsumerError):
    """The service speaks another protocol version, or refused the handshake."""


class ServiceError(ConsumerError):
    """The service answered with an error, broke the protocol, or went away."""


class ServiceUnreachable(ServiceError, TimeoutError):
    """No answer to the handshake within the connect timeout."""


class SessionError(ConsumerError):
    """The service refused the session, or ended it with an error."""


class RequestTimeout(ConsumerError, TimeoutError):
    """No reply within the request's timeout."""


class Interrupted(ConsumerError):
    """A wait ended because the shell was asked to stop (SIGINT in the CLI)."""


# -- requests and events -------------------------------------------------------------------------


class Kind(enum.Enum):
    """A request; its value is the field of ConsumerToService's oneof that carries it."""

    HELLO = "hello"
    ENABLE = "enable_tracing"
    START = "start_tracing"
    FLUSH = "flush"
    DISABLE = "disable_tracing"
    READ = "read_buffers"
    FREE = "free_buffers"
    STATS = "get_trace_stats"
    QUERY = "query_service_state"
    OBSERVE = "observe_events"
    TRIGGER = "activate_triggers"
    DETACH = "detach"
    ATTACH = "attach"
    CLONE = "clone_session"


# The ServiceToConsumer field that answers each request (protos/__init__.py).
REPLY_FIELD = {
    Kind.HELLO: "hello",
    Kind.ENABLE: "enable_tracing",
    Kind.START: "ack",
    Kind.FLUSH: "flush",
    Kind.DISABLE: "ack",
    Kind.READ: "read_buffers",
    Kind.FREE: "ack",
    Kind.STATS: "trace_stats",
    Kind.QUERY: "service_state",
    Kind.OBSERVE: "ack",
    Kind.TRIGGER: "ack",
    Kind.DETACH: "ack",
    Kind.ATTACH: "attach",
    Kind.CLONE: "clone_session",
}

# ServiceToConsumer kinds this consumer deliberately has no handler for (they reach
# _unhandled: counted, and the request they answer fails). Today: none.
NOT_SUPPORTED: frozenset[str] = frozenset()

FLUSH_REPLY_GRACE_NS = 1_000_000_000  # the service answers at its timeout; allow for the trip


@dataclass(frozen=True)
class EnableResult:
    session_id: int
    started: bool  # false for a deferred_start session: start_tracing starts it
    unsupported_fields: tuple[str, ...]
    # The config's data sources no connected producer offered when it was enabled.
    unmatched_data_sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttachResult:
    """A detached session this connection now holds (attach)."""

    session_id: int
    config: pb.TraceConfig
    state: str  # the service's session state (lifecycle.py): STARTED, DISABLED, ...

    @property
    def ended(self) -> bool:
        return self.state == "DISABLED"


@dataclass(frozen=True)
class CloneResult:
    """The read-only copy of a session this connection now holds (clone_session):
    read it back, then free it."""

    session_id: int
    uuid_msb: int
    uuid_lsb: int
    was_write_into_file: bool


@dataclass(frozen=True)
class ReadResult:
    packets: int
    bytes: int
    replies: int
    incomplete_bytes: int  # slices of a packet whose last slice never came


@dataclass(frozen=True)
class Completed:
    """A request succeeded. value: HELLO features (int), ENABLE EnableResult, FLUSH bool,
    READ ReadResult, STATS pb.TraceStats, QUERY ipc.QueryServiceStateResponse, ATTACH
    AttachResult, CLONE CloneResult, else None."""

    request_id: int
    kind: Kind
    value: Any = None


@dataclass(frozen=True)
class Failed:
    request_id: int
    kind: Kind
    error: ConsumerError


@dataclass(frozen=True)
class PacketsRead:
    """Whole packets reassembled from one ReadBuffers reply."""

    request_id: int
    packets: tuple[bytes, ...]


@dataclass(frozen=True)
class SessionEnded:
    """The session is over (second EnableTracing reply, or a refused/lost one)."""

    request_id: int
    error: str
    # Data sources ("producer/data source") whose stop ack did not come in time:
    # the session was read without them, what they commit later is not in it.
    stop_timed_out: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventsObserved:
    request_id: int
    events: ipc.ObservableEvents


@dataclass(frozen=True)
class Notice:
    """Something worth logging that answers no request (a stray or late reply)."""

    message: str


Event = Completed | Failed | PacketsRead | SessionEnded | EventsObserved | Notice


class SessionView(enum.Enum):
    """What this consumer knows of its session; the service's own session states
    are actors/core/lifecycle.py's SessionState."""

    NONE = "none"  # no session on this connection
    ENABLING = "enabling"  # enable_tracing sent, no reply yet
    ACTIVE = "active"  # set up (started, or waiting for start_tracing)
    ENDED = "ended"  # disabled; readable until free_buffers


@dataclass
class _Pending:
    kind: Kind
    timeout_ns: int | None
    deadline: int | None
    answered: bool = False  # ENABLE: first reply seen; OBSERVE: acked
    partial: bytearray = field(default_factory=bytearray)  # READ: the packet being joined
    packets: int = 0
    bytes: int = 0
    replies: int = 0


MessageHandler = Callable[[str, ipc.ServiceToConsumer, int], list[Event]]
ReplyHandler = Callable[[int, _Pending, Any, int], list[Event]]  # reply: the request's REPLY_FIELD


def _deadline(now: int, timeout_ns: int | None) -> int | None:
    return None if timeout_ns is None else now + timeout_ns


class ConsumerCore:
    """One consumer connection: request ids, handshake, one session, streamed reads."""

    def __init__(self, client_name: str = "tracebus-consumer") -> None:
        self.protocol_version = ipc.PROTOCOL_VERSION
        self.client_name = client_name
        self.connected = False
        self.lost: str | None = None
        self.session = SessionView.NONE
        self.session_id = 0
        self.session_error = ""
        self.late_replies = 0  # replies to requests that had timed out
        self.stray_replies = 0  # replies to no request of ours
        self._next_id = 1
        self.unhandled_messages = 0  # of a kind this consumer has no handler for
        self._pending: dict[int, _Pending] = {}
        self._expired: set[int] = set()
        self._handlers: dict[str, MessageHandler] = {
            "hello": self._on_reply,
            "enable_tracing": self._on_reply,
            "flush": self._on_reply,
            "read_buffers": self._on_reply,
            "trace_stats": self._on_reply,
            "service_state": self._on_reply,
            "ack": self._on_reply,
            "attach": self._on_reply,
            "clone_session": self._on_reply,
            "events": self._on_events,
            "error": self._on_error,
            "heartbeat": self._on_heartbeat,
        }
        # A reply (one of REPLY_FIELD's) is handled by the kind of request it answers.
        self._reply_handlers: dict[Kind, ReplyHandler] = {
            Kind.HELLO: self._on_hello,
            Kind.ENABLE: self._on_enable,
            Kind.START: self._on_ack,
            Kind.FLUSH: self._on_flush,
            Kind.DISABLE: self._on_ack,
            Kind.READ: self._on_read,
            Kind.FREE: self._on_ack,
            Kind.STATS: self._on_stats,
            Kind.QUERY: self._on_query,
            Kind.OBSERVE: self._on_ack,
            Kind.TRIGGER: self._on_ack,
            Kind.DETACH: self._on_ack,
            Kind.ATTACH: self._on_attach,
            Kind.CLONE: self._on_clone,
        }

    # -- requests ------------------------------------------------------------------------------

    def hello(self, *, now: int, timeout_ns: int | None) -> ipc.ConsumerToService:
        fields = {"protocol_version": self.protocol_version, "client_name": self.client_name}
        return self._new(Kind.HELLO, fields, now, timeout_ns, handshake=True)

    def enable_tracing(
        self, trace_config: bytes, *, now: int, timeout_ns: int | None
    ) -> ipc.ConsumerToService:
        """timeout_ns bounds the first reply only; the second comes when the session ends."""
        if self.session is not SessionView.NONE:
            raise UsageError(
                f"this connection already has a session ({self.session.value}); one session "
                "per consumer connection: free_buffers first"
            )
        request = self._new(Kind.ENABLE, {"trace_config": trace_config}, now, timeout_ns)
        self.session, self.session_id, self.session_error = SessionView.ENABLING, 0, ""
        return request

    def start_tracing(self, *, now: int, timeout_ns: int | None) -> ipc.ConsumerToService:
        return self._new(Kind.START, {}, now, timeout_ns, needs_session=True)

    def flush(self, timeout_ms: int, *, now: int, flags: int = 0) -> ipc.ConsumerToService:
        """Completes with False if the service says so, or says nothing in time.
        timeout_ms 0 means the session's flush_timeout_ms, which only the service
        knows: then the service's answer is awaited for as long as it takes."""
        timeout_ns = timeout_ms * 1_000_000 + FLUSH_REPLY_GRACE_NS if timeout_ms else None
        fields = {"timeout_ms": timeout_ms, "flags": flags}
        return self._new(Kind.FLUSH, fields, now, timeout_ns, needs_session=True)

    def disable_tracing(self, *, now: int, timeout_ns: int | None) -> ipc.ConsumerToService:
        return self._new(Kind.DISABLE, {}, now, timeout_ns, needs_session=True)

    def read_buffers(self, *, now: int, idle_timeout_ns: int | None) -> ipc.ConsumerToService:
        """idle_timeout_ns bounds the wait for each reply, not the whole read."""
        return self._new(Kind.READ, {}, now, idle_timeout_ns, needs_session=True)

    def free_buffers(self, *, now: int, timeout_ns: int | None) -> ipc.ConsumerToService:
        return self._new(Kind.FREE, {}, now, timeout_ns, needs_session=True)

    def get_trace_stats(self, *, now: int, timeout_ns: int | None) -> ipc.ConsumerToService:
        return self._new(Kind.STATS, {}, now, timeout_ns)

    def query_service_state(self, *, now: int, timeout_ns: int | None) -> ipc.ConsumerToService:
        return self._new(Kind.QUERY, {}, now, timeout_ns)

    def observe_events(
        self, types: Sequence[int], *, now: int, timeout_ns: int | None
    ) -> ipc.ConsumerToService:
        """timeout_ns bounds the ack; events keep coming with this request id afterwards."""
        return self._new(Kind.OBSERVE, {"types": list(types)}, now, timeout_ns)

    def activate_triggers(
        self, names: Sequence[str], *, now: int, timeout_ns: int | None
    ) -> ipc.ConsumerToService:
        """Fire named triggers (the service acks; sessions whose trigger_config
        names one act on it)."""
        return self._new(Kind.TRIGGER, {"trigger_names": list(names)}, now, timeout_ns)

    def detach(self, key: str, *, now: int, timeout_ns: int | None) -> ipc.ConsumerToService:
        """Leave the session running without this connection, kept under `key`; once
        acked the connection holds no session (its end reply will not come here)."""
        return self._new(Kind.DETACH, {"key": key}, now, timeout_ns, needs_session=True)

    def attach(self, key: str, *, now: int, timeout_ns: int | None) -> ipc.ConsumerToService:
        """Take back the session detached under `key` (same uid only)."""
        self._no_session("attach")
        return self._new(Kind.ATTACH, {"key": key}, now, timeout_ns)

    def await_end(self, *, now: int) -> ipc.ConsumerToService:
        """After attach: ask for the attached session's end reply (SessionEnded);
        the service answers at once if it has ended already."""
        fields = {"attach_notification_only": True}
        request = self._new(Kind.ENABLE, fields, now, None, needs_session=True)
        self._pending[request.request_id].answered = True  # only the end reply comes
        return request

    def clone_session(
        self,
        *,
        session_id: int = 0,
        unique_session_name: str = "",
        trigger: ipc.ObservableEvents.CloneTriggerHit | None = None,
        now: int,
        timeout_ns: int | None,
    ) -> ipc.ConsumerToService:
        """Copy a running session (by id, or by its unique_session_name) into a
        read-only session this connection then holds; `trigger` is the
        CLONE_SNAPSHOT trigger that caused it, recorded in the copy."""
        self._no_session("clone_session")
        fields: dict[str, Any] = {
            "session_id": session_id,
            "unique_session_name": unique_session_name,
        }
        if trigger is not None:
            fields.update(
                clone_trigger_name=trigger.trigger_name,
                clone_trigger_producer_name=trigger.producer_name,
                clone_trigger_trusted_producer_uid=trigger.producer_uid,
                clone_trigger_boot_time_ns=trigger.boot_time_ns,
                clone_trigger_delay_ms=trigger.trigger_delay_ms,
            )
        return self._new(Kind.CLONE, fields, now, timeout_ns)

    def _no_session(self, what: str) -> None:
        if self.session is not SessionView.NONE:
            raise UsageError(
                f"{what}: this connection already has a session ({self.session.value}); "
                "free_buffers first"
            )

    def _new(
        self,
        kind: Kind,
        fields: dict[str, Any],
        now: int,
        timeout_ns: int | None,
        *,
        handshake: bool = False,
        needs_session: bool = False,
    ) -> ipc.ConsumerToService:
        if self.lost is not None:
            raise ServiceError(self.lost)
        if handshake == self.connected:
            raise UsageError("already connected" if handshake else "send hello first")
        if needs_session and self.session is SessionView.NONE:
            raise UsageError(f"{kind.value}: no session on this connection, enable one first")
        request_id, self._next_id = self._next_id, self._next_id + 1
        self._pending[request_id] = _Pending(kind, timeout_ns, _deadline(now, timeout_ns))
        return ipc.ConsumerToService(request_id=request_id, **{kind.value: fields})

    # -- inputs ----------------------------------------------------------------------------------

    def handle(self, peer: str, message: ipc.ServiceToConsumer, now: int) -> list[Event]:
        """One decoded ServiceToConsumer from `peer` (the service's endpoint)."""
        which = message.WhichOneof("msg")
        handler = self._handlers.get(which) if which is not None else None
        if handler is None:
            return self._unhandled(peer, message.request_id, which)
        return handler(peer, message, now)

    @property
    def handled_kinds(self) -> frozenset[str]:
        """The ServiceToConsumer kinds that have a handler."""
        return frozenset(self._handlers)

    def expire(self, now: int) -> list[Event]:
        """Requests whose deadline passed: a flush completes False, others fail."""
        events: list[Event] = []
        for request_id, pending in list(self._pending.items()):
            if pending.deadline is None or pending.deadline > now:
                continue
            self._expired.add(request_id)
            if pending.kind is Kind.FLUSH:
                del self._pending[request_id]
                events.append(Completed(request_id, Kind.FLUSH, False))
                continue
            seconds = (pending.timeout_ns or 0) / 1e9
            error = RequestTimeout(f"no reply to {pending.kind.value} within {seconds:g} s")
            events += self._fail(request_id, error)
        return events

    def next_deadline(self) -> int | None:
        deadlines = [p.deadline for p in self._pending.values() if p.deadline is not None]
        return min(deadlines, default=None)

    def connection_lost(self, reason: str) -> list[Event]:
        """The service went away: every request fails, the session is over."""
        self.lost = reason
        events: list[Event] = []
        for request_id in list(self._pending):
            events += self._fail(request_id, ServiceError(reason))
        if self.session in (SessionView.ENABLING, SessionView.ACTIVE):
            self.session, self.session_error = SessionView.ENDED, reason
            events.append(SessionEnded(0, reason))
        return events

    # -- messages --------------------------------------------------------------------------------

    def _on_heartbeat(self, peer: str, message: ipc.ServiceToConsumer, now: int) -> list[Event]:
        return []  # the service's liveness probe: the socket delivering it is the answer

    def _on_error(self, peer: str, message: ipc.ServiceToConsumer, now: int) -> list[Event]:
        request_id = message.request_id
        pending = self._pending.get(request_id)
        if pending is None:
            return self._unmatched(peer, request_id, "error", message)
        error = ServiceError(f"{pending.kind.value} failed: {message.error.message}")
        return self._fail(request_id, error)

    def _on_events(self, peer: str, message: ipc.ServiceToConsumer, now: int) -> list[Event]:
        request_id = message.request_id
        pending = self._pending.get(request_id)
        if pending is None:
            return self._unmatched(peer, request_id, "events", message)
        if pending.kind is not Kind.OBSERVE:
            return self._mismatch(peer, request_id, pending, "events")
        return [EventsObserved(request_id, message.events)]

    def _on_reply(self, peer: str, message: ipc.ServiceToConsumer, now: int) -> list[Event]:
        request_id, which = message.request_id, message.WhichOneof("msg")
        assert which is not None  # handle() dispatched on it
        pending = self._pending.get(request_id)
        if pending is None:
            return self._unmatched(peer, request_id, which, message)
        if which != REPLY_FIELD[pending.kind]:
            return self._mismatch(peer, request_id, pending, which)
        handler = self._reply_handlers[pending.kind]
        return handler(request_id, pending, getattr(message, which), now)

    def _unhandled(self, peer: str, request_id: int, which: str | None) -> list[Event]:
        """A kind this consumer has no handler for (None: a field newer than its
        protocol): counted; the request it answers fails, else a Notice says so."""
        self.unhandled_messages += 1
        what = which or "a message of unknown kind"
        pending = self._pending.get(request_id)
        if pending is not None:
            return self._mismatch(peer, request_id, pending, what)
        return [Notice(f"ignored {what} from {peer} (request {request_id}): not understood")]

    def _mismatch(self, peer: str, request_id: int, pending: _Pending, which: str) -> list[Event]:
        error = ServiceError(f"protocol error: {peer} answered {pending.kind.value} with {which}")
        return self._fail(request_id, error)

    # -- replies ---------------------------------------------------------------------------------

    def _unmatched(
        self, peer: str, request_id: int, which: str, message: ipc.ServiceToConsumer
    ) -> list[Event]:
        if request_id in self._expired:
            self.late_replies += 1
            return []
        self.stray_replies += 1
        if which == "error":
            return [Notice(f"{peer}: {message.error.message}")]
        return [Notice(f"ignored {which} from {peer} for unknown request {request_id}")]

    def _fail(self, request_id: int, error: ConsumerError) -> list[Event]:
        """A request that was answered already (a running session, a subscription) only
        ends its stream; one that was not fails."""
        pending = self._pending.pop(request_id)
        events: list[Event] = []
        if not pending.answered:
            events.append(Failed(request_id, pending.kind, error))
        if pending.kind is Kind.ENABLE:
            self.session = SessionView.ENDED if pending.answered else SessionView.NONE
            self.session_error = str(error)
            events.append(SessionEnded(request_id, str(error)))
        return events

    def _on_hello(
        self, request_id: int, pending: _Pending, reply: ipc.HelloReply, now: int
    ) -> list[Event]:
        del self._pending[request_id]
        if reply.protocol_version != self.protocol_version:
            detail = f" ({reply.error})" if reply.error else ""
            error = ProtocolMismatch(
                f"the service speaks tracebus protocol {reply.protocol_version}, this consumer "
                f"speaks {self.protocol_version}{detail}"
            )
            return [Failed(request_id, Kind.HELLO, error)]
        if reply.error:
            return [Failed(request_id, Kind.HELLO, ProtocolMismatch(reply.error))]
        self.connected = True
        return [Completed(request_id, Kind.HELLO, reply.features)]

    def _on_enable(
        self, request_id: int, pending: _Pending, reply: ipc.EnableTracingResponse, now: int
    ) -> list[Event]:
        if not pending.answered:
            if reply.disabled or reply.error:
                error = reply.error or "the service disabled the session as it set it up"
                return self._fail(request_id, SessionError(error))
            pending.answered, pending.deadline = True, None
            self.session, self.session_id = SessionView.ACTIVE, reply.session_id
            result = EnableResult(
                reply.session_id,
                reply.started,
                tuple(reply.unsupported_fields),
                tuple(reply.unmatched_data_sources),
            )
            return [Completed(request_id, Kind.ENABLE, result)]
        if not reply.disabled:
            return [Notice("ignored a second enable_tracing reply that does not say 'disabled'")]
        del self._pending[request_id]
        self.session, self.session_error = SessionView.ENDED, reply.error
        return [SessionEnded(request_id, reply.error, tuple(reply.stop_timed_out))]

    def _on_flush(
        self, request_id: int, pending: _Pending, reply: ipc.FlushConsumerResponse, now: int
    ) -> list[Event]:
        return self._settle(request_id, pending, reply.success)

    def _on_query(
        self, request_id: int, pending: _Pending, reply: ipc.QueryServiceStateResponse, now: int
    ) -> list[Event]:
        return self._settle(request_id, pending, reply)

    def _on_ack(self, request_id: int, pending: _Pending, reply: ipc.Ack, now: int) -> list[Event]:
        if reply.error:
            return self._fail(request_id, ServiceError(f"{pending.kind.value}: {reply.error}"))
        return self._settle(request_id, pending, None)

    def _settle(self, request_id: int, pending: _Pending, value: Any) -> list[Event]:
        """A request that one reply completes (an OBSERVE stays registered for its events)."""
        if pending.kind is Kind.OBSERVE:
            pending.answered, pending.deadline = True, None
        else:
            del self._pending[request_id]
        events: list[Event] = [Completed(request_id, pending.kind, value)]
        if pending.kind is Kind.FREE:
            events += self._forget_session()
        elif pending.kind is Kind.DETACH:
            self._forget_session(ended=False)
        return events

    def _forget_session(self, ended: bool = True) -> list[Event]:
        """After free_buffers (or detach: `ended` false, the session goes on without
        this connection): the enable reply may still be pending; the session is gone."""
        events: list[Event] = []
        for request_id, pending in list(self._pending.items()):
            if pending.kind is Kind.ENABLE:
                del self._pending[request_id]
                self._expired.add(request_id)  # a 'disabled' reply may still arrive
                if ended:
                    events.append(SessionEnded(request_id, ""))
        self.session, self.session_id = SessionView.NONE, 0
        return events

    def _on_attach(
        self, request_id: int, pending: _Pending, reply: ipc.AttachResponse, now: int
    ) -> list[Event]:
        if reply.error:
            return self._fail(request_id, SessionError(f"attach: {reply.error}"))
        try:
            config = pb.TraceConfig.FromString(reply.trace_config)
        except DecodeError as e:
            return self._fail(request_id, ServiceError(f"attach: undecodable TraceConfig: {e}"))
        del self._pending[request_id]
        result = AttachResult(reply.session_id, config, reply.state)
        self.session = SessionView.ENDED if result.ended else SessionView.ACTIVE
        self.session_id, self.session_error = reply.session_id, ""
        return [Completed(request_id, Kind.ATTACH, result)]

    def _on_clone(
        self, request_id: int, pending: _Pending, reply: ipc.CloneSessionResponse, now: int
    ) -> list[Event]:
        if not reply.success:
            error = reply.error or "the service did not clone the session"
            return self._fail(request_id, SessionError(f"clone: {error}"))
        del self._pending[request_id]
        # A clone is read-only: readable until freed, never started or stopped.
        self.session, self.session_id, self.session_error = SessionView.ENDED, reply.session_id, ""
        result = CloneResult(
            reply.session_id, reply.uuid_msb, reply.uuid_lsb, reply.was_write_into_file
        )
        # Ended from the start: wait_disabled() on it returns at once (no end reply comes).
        return [Completed(request_id, Kind.CLONE, result), SessionEnded(request_id, "")]

    def _on_stats(
        self, request_id: int, pending: _Pending, reply: ipc.GetTraceStatsResponse, now: int
    ) -> list[Event]:
        try:
            stats = pb.TraceStats.FromString(reply.trace_stats)
        except DecodeError as e:
            return self._fail(request_id, ServiceError(f"undecodable TraceStats: {e}"))
        del self._pending[request_id]
        return [Completed(request_id, Kind.STATS, stats)]

    def _on_read(
        self, request_id: int, pending: _Pending, reply: ipc.ReadBuffersResponse, now: int
    ) -> list[Event]:
        """Join slices into packets; a packet may span slices and replies."""
        packets = []
        partial = pending.partial
        for piece in reply.slices:
            if piece.last_slice_for_packet and not partial:
                packets.append(piece.data)
            elif piece.last_slice_for_packet:
                partial += piece.data
                packets.append(bytes(partial))
                partial.clear()
            else:
                partial += piece.data
        pending.replies += 1
        pending.packets += len(packets)
        pending.bytes += sum(map(len, packets))
        events: list[Event] = [PacketsRead(request_id, tuple(packets))] if packets else []
        if reply.has_more:
            pending.deadline = _deadline(now, pending.timeout_ns)
            return events
        del self._pending[request_id]
        result = ReadResult(pending.packets, pending.bytes, pending.replies, len(partial))
        return events + [Completed(request_id, Kind.READ, result)]


# -- the trace file ------------------------------------------------------------------------------

TRACE_PACKET_TAG = b"\x0a"  # perfetto.protos.Trace.packet = 1, length-delimited


def frame_packet(packet: bytes) -> bytes:
    """One packet as it appears in a Perfetto trace file."""
    return TRACE_PACKET_TAG + varint(len(packet)) + packet
