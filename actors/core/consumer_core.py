"""ConsumerCore: the consumer side of the consumer port (protos/__init__.py), without I/O.

The shell asks for a request (hello, enable_tracing, flush, read_buffers, ...)
and gets the ConsumerToService envelope to send, its request_id numbered here.
It feeds every decoded ServiceToConsumer to handle(), calls expire() at
next_deadline(), and acts on the events that come out: Completed or Failed for
a request, PacketsRead while a read streams, SessionEnded when the service sends
the second EnableTracing reply, EventsObserved, Notice. Deadlines live here, so
a request that gets no reply fails (a flush completes False) without the shell
keeping its own timers.

Below the protocol: what the record CLI needs that is pure too, so that it is
tested here: Perfetto's trace file framing, a scan of the trusted fields of a
read packet, and the summary printed at the end of a recording.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError, Message
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from protos import tracebus_ipc_pb2 as ipc
from shm.protozero import scan_fields, varint

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
}

FLUSH_REPLY_GRACE_NS = 1_000_000_000  # the service answers at its timeout; allow for the trip


@dataclass(frozen=True)
class EnableResult:
    session_id: int
    started: bool  # false for a deferred_start session: start_tracing starts it
    unsupported_fields: tuple[str, ...]


@dataclass(frozen=True)
class ReadResult:
    packets: int
    bytes: int
    replies: int
    incomplete_bytes: int  # slices of a packet whose last slice never came


@dataclass(frozen=True)
class Completed:
    """A request succeeded. value: HELLO features (int), ENABLE EnableResult, FLUSH bool,
    READ ReadResult, STATS pb.TraceStats, QUERY ipc.QueryServiceStateResponse, else None."""

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


@dataclass(frozen=True)
class EventsObserved:
    request_id: int
    events: ipc.ObservableEvents


@dataclass(frozen=True)
class Notice:
    """Something worth logging that answers no request (a stray or late reply)."""

    message: str


Event = Completed | Failed | PacketsRead | SessionEnded | EventsObserved | Notice


class SessionState(enum.Enum):
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


def _deadline(now: int, timeout_ns: int | None) -> int | None:
    return None if timeout_ns is None else now + timeout_ns


class ConsumerCore:
    """One consumer connection: request ids, handshake, one session, streamed reads."""

    def __init__(self, client_name: str = "tracebus-consumer") -> None:
        self.protocol_version = ipc.PROTOCOL_VERSION
        self.client_name = client_name
        self.connected = False
        self.lost: str | None = None
        self.session = SessionState.NONE
        self.session_id = 0
        self.session_error = ""
        self.late_replies = 0  # replies to requests that had timed out
        self.stray_replies = 0  # replies to no request of ours
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._expired: set[int] = set()

    # -- requests ------------------------------------------------------------------------------

    def hello(self, *, now: int, timeout_ns: int | None) -> ipc.ConsumerToService:
        fields = {"protocol_version": self.protocol_version, "client_name": self.client_name}
        return self._new(Kind.HELLO, fields, now, timeout_ns, handshake=True)

    def enable_tracing(
        self, trace_config: bytes, *, now: int, timeout_ns: int | None
    ) -> ipc.ConsumerToService:
        """timeout_ns bounds the first reply only; the second comes when the session ends."""
        if self.session is not SessionState.NONE:
            raise UsageError(
                f"this connection already has a session ({self.session.value}); one session "
                "per consumer connection: free_buffers first"
            )
        request = self._new(Kind.ENABLE, {"trace_config": trace_config}, now, timeout_ns)
        self.session, self.session_id, self.session_error = SessionState.ENABLING, 0, ""
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
        if needs_session and self.session is SessionState.NONE:
            raise UsageError(f"{kind.value}: no session on this connection, enable one first")
        request_id, self._next_id = self._next_id, self._next_id + 1
        self._pending[request_id] = _Pending(kind, timeout_ns, _deadline(now, timeout_ns))
        return ipc.ConsumerToService(request_id=request_id, **{kind.value: fields})

    # -- inputs ----------------------------------------------------------------------------------

    def handle(self, peer: str, message: ipc.ServiceToConsumer, now: int) -> list[Event]:
        """One decoded ServiceToConsumer from `peer` (the service's endpoint)."""
        request_id, which = message.request_id, message.WhichOneof("msg")
        if which == "heartbeat":
            return []
        pending = self._pending.get(request_id)
        if pending is None:
            return self._unmatched(peer, request_id, which, message)
        if which == "error":
            error = ServiceError(f"{pending.kind.value} failed: {message.error.message}")
            return self._fail(request_id, error)
        if which == "events" and pending.kind is Kind.OBSERVE:
            return [EventsObserved(request_id, message.events)]
        if which != REPLY_FIELD[pending.kind]:
            error = ServiceError(
                f"protocol error: {peer} answered {pending.kind.value} with {which}"
            )
            return self._fail(request_id, error)
        handlers = {
            Kind.HELLO: self._on_hello,
            Kind.ENABLE: self._on_enable,
            Kind.READ: self._on_read,
            Kind.STATS: self._on_stats,
        }
        handler = handlers.get(pending.kind, self._on_simple)
        return handler(request_id, pending, getattr(message, which), now)

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
        if self.session in (SessionState.ENABLING, SessionState.ACTIVE):
            self.session, self.session_error = SessionState.ENDED, reason
            events.append(SessionEnded(0, reason))
        return events

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
            self.session = SessionState.ENDED if pending.answered else SessionState.NONE
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
            self.session, self.session_id = SessionState.ACTIVE, reply.session_id
            result = EnableResult(reply.session_id, reply.started, tuple(reply.unsupported_fields))
            return [Completed(request_id, Kind.ENABLE, result)]
        if not reply.disabled:
            return [Notice("ignored a second enable_tracing reply that does not say 'disabled'")]
        del self._pending[request_id]
        self.session, self.session_error = SessionState.ENDED, reply.error
        return [SessionEnded(request_id, reply.error)]

    def _on_simple(
        self, request_id: int, pending: _Pending, reply: Message, now: int
    ) -> list[Event]:
        """Replies that settle a request in one message: acks, flush, service state."""
        if pending.kind is Kind.FLUSH:
            value = bool(reply.success)
        elif pending.kind is Kind.QUERY:
            value = reply
        elif reply.error:
            return self._fail(request_id, ServiceError(f"{pending.kind.value}: {reply.error}"))
        else:
            value = None
        if pending.kind is Kind.OBSERVE:
            pending.answered, pending.deadline = True, None  # stays registered for its events
        else:
            del self._pending[request_id]
        events: list[Event] = [Completed(request_id, pending.kind, value)]
        if pending.kind is Kind.FREE:
            events += self._forget_session()
        return events

    def _forget_session(self) -> list[Event]:
        """After free_buffers: the enable reply may still be pending; the session is gone."""
        events: list[Event] = []
        for request_id, pending in list(self._pending.items()):
            if pending.kind is Kind.ENABLE:
                del self._pending[request_id]
                self._expired.add(request_id)  # a 'disabled' reply may still arrive
                events.append(SessionEnded(request_id, ""))
        self.session, self.session_id = SessionState.NONE, 0
        return events

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


# -- the trace file and the summary ----------------------------------------------------------------

TRACE_PACKET_TAG = b"\x0a"  # perfetto.protos.Trace.packet = 1, length-delimited
SERVICE_SEQUENCE_ID = 1  # the service's own packets (clock snapshots, config, stats)


def frame_packet(packet: bytes) -> bytes:
    """One packet as it appears in a Perfetto trace file."""
    return TRACE_PACKET_TAG + varint(len(packet)) + packet


@dataclass(frozen=True)
class PacketIdentity:
    """The trusted fields the service appended (the last value of a field wins)."""

    uid: int | None = None
    pid: int | None = None
    sequence_id: int | None = None
    previous_packet_dropped: bool = False


_IDENTITY_FIELDS = {3: "uid", 79: "pid", 10: "sequence_id", 42: "previous_packet_dropped"}


def packet_identity(packet: bytes) -> PacketIdentity | None:
    """Scan the top level of a TracePacket; None if it is not well-formed."""
    fields = scan_fields(packet)
    if fields is None:
        return None
    found: dict[str, Any] = {}
    for number, wire, value in fields:
        if wire == 0 and number in _IDENTITY_FIELDS:
            found[_IDENTITY_FIELDS[number]] = value
    for name in ("uid", "pid"):  # int32 fields: negative values arrive as 64-bit varints
        if found.get(name, 0) >= 1 << 63:
            found[name] -= 1 << 64
    found["previous_packet_dropped"] = bool(found.get("previous_packet_dropped"))
    return PacketIdentity(**found)


@dataclass
class WriterGroup:
    """Packets of one producer process (or of the service, on sequence 1)."""

    pid: int | None
    uid: int | None
    service: bool = False
    packets: int = 0
    bytes: int = 0
    loss_marks: int = 0  # packets with previous_packet_dropped
    sequences: set[int] = field(default_factory=set)


class TraceSummary:
    """Packets and bytes per producer, grouped by the trusted fields of read packets."""

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.malformed = 0
        self.groups: dict[tuple, WriterGroup] = {}

    def add(self, packet: bytes) -> None:
        self.packets += 1
        self.bytes += len(packet)
        ident = packet_identity(packet)
        if ident is None:
            self.malformed += 1
            ident = PacketIdentity()
        service = ident.sequence_id == SERVICE_SEQUENCE_ID
        key = ("service",) if service else (ident.pid, ident.uid)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = WriterGroup(ident.pid, ident.uid, service)
        group.packets += 1
        group.bytes += len(packet)
        group.loss_marks += ident.previous_packet_dropped
        if ident.sequence_id is not None:
            group.sequences.add(ident.sequence_id)

    def add_all(self, packets: Iterable[bytes]) -> None:
        for packet in packets:
            self.add(packet)


# Loss counters by cause: per buffer (TraceStats.BufferStats) and service-wide (TraceStats).
BUFFER_LOSSES = (
    "chunks_overwritten",
    "chunks_discarded",
    "trace_writer_packet_loss",
    "abi_violations",
    "patches_failed",
    "oversized_packets_dropped",
)
SERVICE_LOSSES = ("chunks_discarded", "patches_discarded", "invalid_packets", "flushes_failed")
MAX_PRODUCER_ROWS = 16


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass
class SummaryInput:
    """What the record CLI knows at the end."""

    out_path: str
    summary: TraceSummary
    session_id: int = 0
    seconds: float = 0.0
    producer_names: dict[int, str] = field(default_factory=dict)  # by pid
    fill_policies: list[str] = field(default_factory=list)  # by buffer index
    stats: pb.TraceStats | None = None
    notes: list[str] = field(default_factory=list)


def format_summary(info: SummaryInput) -> str:
    """One screen: totals, a row per producer, losses by cause, buffer stats."""
    s = info.summary
    lines = [
        f"tracebus: wrote {s.packets} packets ({human_bytes(s.bytes)}) to {info.out_path}"
        f" (session {info.session_id}, {info.seconds:.1f} s)"
    ]
    lines += _producer_rows(info)
    lines += _loss_lines(info)
    lines += _buffer_lines(info)
    lines += [f"note: {note}" for note in info.notes]
    return "\n".join(lines)


def _group_name(group: WriterGroup, names: dict[int, str]) -> str:
    if group.service:
        return "(tracing service)"
    if group.pid is None:
        return "(no trusted pid)"
    return names.get(group.pid, "(producer gone)")


def _producer_rows(info: SummaryInput) -> list[str]:
    header = f"  {'producer':<24} {'pid':>7} {'uid':>6} {'seqs':>5} {'packets':>9} {'bytes':>11}"
    rows = [header + "  loss marks"]
    groups = sorted(info.summary.groups.values(), key=lambda g: (not g.service, -g.bytes))
    for g in groups[:MAX_PRODUCER_ROWS]:
        name = _group_name(g, info.producer_names)[:24]
        pid = "-" if g.pid is None else str(g.pid)
        uid = "-" if g.uid is None else str(g.uid)
        rows.append(
            f"  {name:<24} {pid:>7} {uid:>6} {len(g.sequences):>5} {g.packets:>9}"
            f" {human_bytes(g.bytes):>11}  {g.loss_marks}"
        )
    if len(groups) > MAX_PRODUCER_ROWS:
        rows.append(f"  ... and {len(groups) - MAX_PRODUCER_ROWS} more")
    if info.summary.malformed:
        rows.append(f"  {info.summary.malformed} packets did not parse at the top level")
    return rows


def _nonzero(message: Any, names: Sequence[str]) -> str:
    return ", ".join(f"{name} {getattr(message, name)}" for name in names if getattr(message, name))


def _loss_lines(info: SummaryInput) -> list[str]:
    lines = []
    stats = info.stats
    if stats is not None:
        for index, buf in enumerate(stats.buffer_stats):
            if causes := _nonzero(buf, BUFFER_LOSSES):
                lines.append(f"  buffer {index}: {causes}")
        if causes := _nonzero(stats, SERVICE_LOSSES):
            lines.append(f"  service: {causes}")
    marked = [g for g in info.summary.groups.values() if g.loss_marks]
    if marked:
        by = ", ".join(f"{_group_name(g, info.producer_names)} {g.loss_marks}" for g in marked)
        total = sum(g.loss_marks for g in marked)
        lines.append(f"  previous_packet_dropped: {total} packets ({by})")
    if not lines:
        return ["losses: none" if stats is not None else "losses: unknown (no trace stats)"]
    return ["losses:"] + lines


def _buffer_lines(info: SummaryInput) -> list[str]:
    if info.stats is None or not len(info.stats.buffer_stats):
        return []
    lines = ["buffers:"]
    for index, b in enumerate(info.stats.buffer_stats):
        policy = info.fill_policies[index] if index < len(info.fill_policies) else "?"
        lines.append(
            f"  #{index} {policy} {human_bytes(b.buffer_size)}:"
            f" written {b.chunks_written} chunks ({human_bytes(b.bytes_written)}),"
            f" read {b.chunks_read} ({human_bytes(b.bytes_read)}),"
            f" overwritten {b.chunks_overwritten} ({human_bytes(b.bytes_overwritten)}),"
            f" wraps {b.write_wrap_count}"
        )
    return lines
