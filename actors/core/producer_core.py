"""ProducerCore: the producer's side of the tracing protocol, with no I/O.

It speaks the producer port exactly as protos/__init__.py lays it out, and
nothing else: decoded ServiceToProducer messages and the shell's reports go in,
a list of outputs comes out, and the shell performs them in order:

- `Send(message)`: put this ProducerToService on the socket.
- `MapSmb(socket, token, size, page_size)`: claim the SMB the service offers on its
  handoff socket under that one-time token (actors/smb_handoff.py) and map it,
  then report with `smb_mapped()`.
- `SetupInstance` / `StartInstance` / `StopInstance` / `FlushInstances` /
  `ClearIncrementalState`: run the data sources' callbacks, then report with
  `instance_started()`, `instance_stopped()`, `flush_done()` (so that the acks
  follow whatever the callbacks committed, on the same socket).
- `Log(level, text)`, `Connected(producer_id)`, `Reconnect(reason, delay_s)`
  (drop the socket, stop everything, call `connect()` after the delay) and
  `Fatal(reason)` (a refused handshake: say why and exit).

Writers and commits: the shell reports each new TraceWriter with
`writer_created()` (-> register_trace_writer, always before that writer's first
commit, because both leave through the same ordered outputs) and hands over
CommitBatches (shm.commits', duck-typed here) with `commit()`, which merges them
into one CommitDataRequest with the writers' cumulative drop counts.

Liveness: the handshake is retried with backoff when no reply comes within
HANDSHAKE_TIMEOUT_NS (ZeroMQ connects lazily, so a missing service shows up only
as silence). Once connected the core sends a Heartbeat every second. A service
that knows us ignores it (or answers it); an Error in reply means the service
no longer knows us (it restarted, and ZeroMQ silently reconnected us to the new
one), so the core reconnects. A service that rejects the first heartbeat of two
fresh connections in a row simply does not take heartbeats: they stop. If the
service has ever answered a heartbeat, a silence of LIVENESS_TIMEOUT_NS also
means it is gone.

Triggers: `activate_triggers(names, now, ttl_ns)` sends them at once when
connected; before (or between connections) they wait, up to MAX_PENDING_TRIGGERS
names, and go out with the next handshake unless their ttl has passed by then
(Perfetto's SDK keeps them the same way); those dropped are counted in
`triggers_dropped`.

Dispatch: one table maps each ServiceToProducer kind to its handler; kinds in
BEFORE_HANDSHAKE are taken in any state, the others only once connected. A kind
with no handler (a newer service's) cannot be answered, since commands are
pushed: it is counted in `unhandled` and logged once per kind.

Time comes in as `now` (ns, monotonic).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from protos import data_source_config_pb2 as dsc
from protos import tracebus_ipc_pb2 as ipc

# Log levels, equal to logging's (which this module may not import: it loads threading).
INFO, WARNING, ERROR = 20, 30, 40

HANDSHAKE_TIMEOUT_NS = 2_000_000_000
RECONNECT_BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 4.0)  # then the last one, forever
HEARTBEAT_INTERVAL_NS = 1_000_000_000
LIVENESS_TIMEOUT_NS = 3_500_000_000

# ServiceToProducer kinds handled in any state; every other one only once connected.
# Names waiting for a connection (beyond, dropped and counted), and per request (the
# service takes at most 256 names in one: actors/core/triggers.py).
MAX_PENDING_TRIGGERS = 256
BEFORE_HANDSHAKE = frozenset({"initialize_connection", "error", "heartbeat"})
# ServiceToProducer kinds this producer deliberately has no handler for (they reach
# _unhandled: counted and logged). Today: none.
NOT_SUPPORTED: frozenset[str] = frozenset()


# -- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    message: ipc.ProducerToService


@dataclass(frozen=True, slots=True)
class Log:
    level: int  # INFO, WARNING, ERROR
    text: str


@dataclass(frozen=True, slots=True)
class MapSmb:
    socket: str  # the service's handoff socket
    token: bytes  # one-time, bound to this process by the service
    size: int
    page_size: int


@dataclass(frozen=True, slots=True)
class Registered:
    """The service accepted data source `name`: the instances of the sessions already
    recording that want it follow right after, in the same turn of the service."""

    name: str


@dataclass(frozen=True, slots=True)
class SetupInstance:
    instance_id: int
    name: str
    config: dsc.DataSourceConfig


@dataclass(frozen=True, slots=True)
class StartInstance:
    instance_id: int
    name: str
    config: dsc.DataSourceConfig


@dataclass(frozen=True, slots=True)
class StopInstance:
    instance_id: int


@dataclass(frozen=True, slots=True)
class FlushInstances:
    flush_request_id: int
    instance_ids: tuple[int, ...]
    timeout_ms: int = 0  # the service's wait for the ack; 0 if it did not say


@dataclass(frozen=True, slots=True)
class ClearIncrementalState:
    instance_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Connected:
    producer_id: int


@dataclass(frozen=True, slots=True)
class Reconnect:
    reason: str
    delay_s: float


@dataclass(frozen=True, slots=True)
class Fatal:
    reason: str


Output = (
    Send
    | Log
    | MapSmb
    | Registered
    | SetupInstance
    | StartInstance
    | StopInstance
    | FlushInstances
    | ClearIncrementalState
    | Connected
    | Reconnect
    | Fatal
)


Handler = Callable[[ipc.ServiceToProducer, int], list[Output]]


class WriterStats(NamedTuple):
    """A writer's cumulative losses, as TraceWriter counts them."""

    writer_id: int
    target_buffer: int
    dropped_packets: int
    dropped_bytes: int


class State(enum.Enum):
    IDLE = "idle"  # not connected; connect() starts a handshake
    CONNECTING = "connecting"  # initialize_connection sent, no reply yet
    CONNECTED = "connected"
    FAILED = "failed"  # the service refused us; nothing more happens


@dataclass(slots=True)
class _Instance:
    name: str
    config: Any
    started: bool = False


class ProducerCore:
    """The producer's protocol state machine. Not thread-safe: one (loop) thread calls it."""

    def __init__(
        self,
        name: str,
        descriptors: Iterable[ipc.DataSourceDescriptor] = (),
        *,
        smb_size_hint: int = 0,
        page_size_hint: int = 0,
        policy: int = 1,
        pid: int = 0,
        uid: int = 0,
    ) -> None:
        self.name = name
        self.smb_size_hint = smb_size_hint
        self.page_size_hint = page_size_hint
        self.policy = policy
        self.pid = pid
        self.uid = uid
        self.descriptors: dict[str, Any] = {}
        for d in descriptors:
            self.descriptors[d.name] = d
        self.state = State.IDLE
        self.producer_id = 0
        self.smb_token: bytes | None = None  # the token of the SMB mapped
        self.instances: dict[int, _Instance] = {}
        self._attempt = 0
        self._heartbeats = True  # off for good once the service turns out not to take them
        self._first_heartbeat_rejections = 0  # fresh connections in a row
        self.unhandled: dict[str, int] = {}  # messages of a kind without handler, by kind
        # Triggers fired while not connected: (expiry, name), kept across reconnects.
        self._pending_triggers: list[tuple[int, str]] = []
        self.triggers_dropped = 0  # too many waiting, or expired before a connection
        self._handlers: dict[str, Handler] = {
            "initialize_connection": self._on_initialized,
            "register_data_source": self._on_registered,
            "setup_tracing": self._on_setup_tracing,
            "setup_data_source": self._on_setup_data_source,
            "start_data_source": self._on_start_data_source,
            "stop_data_source": self._on_stop_data_source,
            "flush": self._on_flush,
            "clear_incremental_state": self._on_clear_incremental_state,
            "error": self._on_error,
            "heartbeat": self._on_heartbeat,
        }
        self._reset()

    @property
    def handled_kinds(self) -> frozenset[str]:
        """The ServiceToProducer kinds that have a handler."""
        return frozenset(self._handlers)

    def _reset(self) -> None:
        self._next_request_id = 1
        self._init_request_id = 0
        self._sent_at = 0
        self._last_heard = 0
        self._pending_registrations: dict[int, str] = {}
        self._reported: dict[int, tuple[int, int, int]] = {}
        self._heartbeat_id = 0
        self._heartbeats_sent = 0  # on this connection
        self._next_heartbeat = 0
        self._heartbeats_answered = False
        self.smb_token = None
        self.instances = {}
        self.producer_id = 0

    # -- sending ------------------------------------------------------------------------

    def _request(self, field: str, msg: Any) -> tuple[int, Send]:
        """An envelope with the next request id around `msg` (in oneof `field`)."""
        rid = self._next_request_id
        self._next_request_id += 1
        return rid, Send(ipc.ProducerToService(request_id=rid, **{field: msg}))

    def _send(self, field: str, msg: Any) -> Send:
        return self._request(field, msg)[1]

    # -- the handshake ------------------------------------------------------------------

    def connect(self, now: int) -> list[Output]:
        """Start (or restart) the handshake on a fresh connection."""
        if self.state is State.FAILED:
            return []
        self._reset()
        req = ipc.InitializeConnectionRequest(
            hello=ipc.Hello(
                protocol_version=ipc.PROTOCOL_VERSION, features=0, client_name=self.name
            ),
            producer_name=self.name,
            shm_size_hint_bytes=self.smb_size_hint,
            shm_page_size_hint_bytes=self.page_size_hint,
            buffer_exhausted_policy=self.policy,
            claimed_pid=self.pid,
            claimed_uid=self.uid,
        )
        self._init_request_id, send = self._request("initialize_connection", req)
        self.state = State.CONNECTING
        self._sent_at = now
        return [send]

    def add_data_source(self, descriptor: ipc.DataSourceDescriptor) -> list[Output]:
        """Register one more data source (now if connected, else at the next handshake)."""
        self.descriptors[descriptor.name] = descriptor
        if self.state is not State.CONNECTED:
            return []
        return [self._register(descriptor)]

    def _register(self, descriptor: ipc.DataSourceDescriptor) -> Send:
        req = ipc.RegisterDataSourceRequest()
        req.descriptor.CopyFrom(descriptor)
        rid, send = self._request("register_data_source", req)
        self._pending_registrations[rid] = descriptor.name
        return send

    def _on_initialized(self, msg: ipc.ServiceToProducer, now: int) -> list[Output]:
        if self.state is not State.CONNECTING or msg.request_id != self._init_request_id:
            return [Log(WARNING, "ignoring a stale initialize_connection reply")]
        reply = msg.initialize_connection
        ours = ipc.PROTOCOL_VERSION
        theirs = reply.hello.protocol_version
        if reply.hello.error or (theirs and theirs != ours):
            self.state = State.FAILED
            why = reply.hello.error or "no reason given"
            return [
                Fatal(
                    f"the service refused the connection (protocol version: ours {ours}, "
                    f"the service's {theirs or 'unknown'}): {why}"
                )
            ]
        self.state = State.CONNECTED
        self.producer_id = reply.producer_id
        self._attempt = 0
        self._next_heartbeat = now + HEARTBEAT_INTERVAL_NS
        out: list[Output] = [Connected(reply.producer_id)]
        out += [self._register(d) for d in self.descriptors.values()]
        out += self._send_pending_triggers(now)
        return out

    # -- triggers ------------------------------------------------------------------------

    def activate_triggers(self, names: Sequence[str], now: int, ttl_ns: int) -> list[Output]:
        """Fire named triggers: now if connected, else with the next handshake if
        that comes within ttl_ns."""
        if self.state is State.CONNECTED:
            return self._trigger_requests(list(names))
        room = MAX_PENDING_TRIGGERS - len(self._pending_triggers)
        self.triggers_dropped += max(0, len(names) - room)
        self._pending_triggers += [(now + ttl_ns, name) for name in names[: max(0, room)]]
        return []

    def _send_pending_triggers(self, now: int) -> list[Output]:
        pending, self._pending_triggers = self._pending_triggers, []
        names = [name for expiry, name in pending if expiry >= now]
        self.triggers_dropped += len(pending) - len(names)
        return self._trigger_requests(names)

    def _trigger_requests(self, names: list[str]) -> list[Output]:
        """ActivateTriggers requests of at most MAX_PENDING_TRIGGERS names each (the
        most the service takes in one)."""
        step = MAX_PENDING_TRIGGERS
        return [
            self._send("activate_triggers", ipc.ActivateTriggersRequest(trigger_names=chunk))
            for chunk in (names[i : i + step] for i in range(0, len(names), step))
        ]

    def _on_registered(self, msg: ipc.ServiceToProducer, now: int) -> list[Output]:
        name = self._pending_registrations.pop(msg.request_id, "?")
        error = msg.register_data_source.error
        if error:
            return [Log(ERROR, f"the service refused data source {name!r}: {error}")]
        return [Registered(name)]

    # -- service commands ----------------------------------------------------------------

    def handle(self, msg: ipc.ServiceToProducer, now: int) -> list[Output]:
        """One message from the service."""
        if self.state is State.FAILED:
            return []
        self._last_heard = now
        kind = msg.WhichOneof("msg")
        handler = self._handlers.get(kind) if kind is not None else None
        if handler is None:
            return self._unhandled(kind)
        if self.state is not State.CONNECTED and kind not in BEFORE_HANDSHAKE:
            return [Log(WARNING, f"ignoring {kind} before the handshake completed")]
        return handler(msg, now)

    def _unhandled(self, kind: str | None) -> list[Output]:
        """A kind this producer has no handler for (None: a field newer than our
        protocol). Commands are pushed, so there is no request to answer with an
        error: count every one, log the first of each kind."""
        name = kind or "(unknown kind)"
        self.unhandled[name] = self.unhandled.get(name, 0) + 1
        if self.unhandled[name] > 1:
            return []
        return [Log(WARNING, f"ignoring {name} from the service: this producer does not handle it")]

    def _on_setup_tracing(self, msg: ipc.ServiceToProducer, now: int) -> list[Output]:
        st = msg.setup_tracing
        if self.smb_token is not None:
            error = "" if st.shm_token == self.smb_token else "an SMB is already mapped"
            return [self._send("smb_mapped", ipc.SmbMapped(error=error))]
        return [MapSmb(st.shm_socket, st.shm_token, st.shm_size_bytes, st.shm_page_size_bytes)]

    def smb_mapped(self, token: bytes, error: str = "") -> list[Output]:
        """The shell's report on a MapSmb: "" if mapped, else why not."""
        if not error:
            self.smb_token = token
        out: list[Output] = [self._send("smb_mapped", ipc.SmbMapped(error=error))]
        if error:
            out.append(Log(ERROR, f"cannot map the SMB: {error}"))
        return out

    def _parse_config(self, instance_id: int, data: bytes) -> tuple[Any, list[Output]]:
        config = dsc.DataSourceConfig()
        try:
            config.ParseFromString(data)
        except DecodeError as e:  # the service is trusted, but say so if it slips
            return None, [Log(ERROR, f"instance {instance_id}: bad config: {e}")]
        if config.name not in self.descriptors:
            return None, [Log(ERROR, f"instance {instance_id}: no data source {config.name!r}")]
        return config, []

    def _on_setup_data_source(self, msg: ipc.ServiceToProducer, now: int) -> list[Output]:
        cmd = msg.setup_data_source
        if cmd.instance_id in self.instances:
            return [Log(WARNING, f"instance {cmd.instance_id} is already set up")]
        config, out = self._parse_config(cmd.instance_id, cmd.data_source_config)
        if config is None:
            return out
        self.instances[cmd.instance_id] = _Instance(config.name, config)
        return [SetupInstance(cmd.instance_id, config.name, config)]

    def _on_start_data_source(self, msg: ipc.ServiceToProducer, now: int) -> list[Output]:
        cmd = msg.start_data_source
        inst = self.instances.get(cmd.instance_id)
        out: list[Output] = []
        if inst is None:  # no setup came first: do it now, as Perfetto's SDK does
            config, out = self._parse_config(cmd.instance_id, cmd.data_source_config)
            if config is None:
                return out
            inst = self.instances[cmd.instance_id] = _Instance(config.name, config)
            out.append(SetupInstance(cmd.instance_id, config.name, config))
        elif inst.started:
            return [Log(WARNING, f"instance {cmd.instance_id} is already started")]
        inst.started = True
        out.append(StartInstance(cmd.instance_id, inst.name, inst.config))
        return out

    def instance_started(self, instance_id: int) -> list[Output]:
        """The shell ran on_start."""
        inst = self.instances.get(instance_id)
        if inst is None or not self.descriptors[inst.name].will_notify_on_start:
            return []
        started = ipc.NotifyDataSourceStarted(instance_id=instance_id)
        return [self._send("data_source_started", started)]

    def _on_stop_data_source(self, msg: ipc.ServiceToProducer, now: int) -> list[Output]:
        instance_id = msg.stop_data_source.instance_id
        if instance_id not in self.instances:
            # Unknown (e.g. its setup failed): ack anyway so the service need not wait.
            stopped = ipc.NotifyDataSourceStopped(instance_id=instance_id)
            return [self._send("data_source_stopped", stopped)]
        return [StopInstance(instance_id)]

    def instance_stopped(self, instance_id: int) -> list[Output]:
        """The shell ran on_stop and committed what the instance wrote."""
        inst = self.instances.pop(instance_id, None)
        if inst is None or not self.descriptors[inst.name].will_notify_on_stop:
            return []
        stopped = ipc.NotifyDataSourceStopped(instance_id=instance_id)
        return [self._send("data_source_stopped", stopped)]

    def _on_flush(self, msg: ipc.ServiceToProducer, now: int) -> list[Output]:
        cmd = msg.flush
        ids = tuple(i for i in cmd.instance_ids if i in self.instances)
        return [FlushInstances(cmd.flush_request_id, ids, cmd.timeout_ms)]

    def flush_done(self, flush_request_id: int) -> list[Output]:
        """The shell flushed and committed: ack, even if nothing was pending."""
        req = ipc.CommitDataRequest(flush_request_id=flush_request_id)
        return [self._send("commit_data", req)]

    def _on_clear_incremental_state(self, msg: ipc.ServiceToProducer, now: int) -> list[Output]:
        ids = msg.clear_incremental_state.instance_ids
        return [ClearIncrementalState(tuple(i for i in ids if i in self.instances))]

    def _on_error(self, msg: ipc.ServiceToProducer, now: int) -> list[Output]:
        text = msg.error.message
        if self.state is State.CONNECTING and msg.request_id == self._init_request_id:
            self.state = State.FAILED
            return [Fatal(f"the service refused the connection: {text}")]
        if msg.request_id and msg.request_id == self._heartbeat_id:
            return self._heartbeat_rejected(text)
        return [Log(WARNING, f"error from the service (request {msg.request_id}): {text}")]

    def _heartbeat_rejected(self, text: str) -> list[Output]:
        if self._heartbeats_sent == 1:
            self._first_heartbeat_rejections += 1
            if self._first_heartbeat_rejections >= 2:
                self._heartbeats = False
                return [Log(INFO, f"the service rejects heartbeats ({text}); not sending more")]
        else:
            self._first_heartbeat_rejections = 0
        return self._reconnect(f"the service no longer knows us ({text})", RECONNECT_BACKOFF_S[0])

    def _on_heartbeat(self, msg: ipc.ServiceToProducer, now: int) -> list[Output]:
        if msg.request_id and msg.request_id == self._heartbeat_id:
            self._heartbeats_answered = True
            return []
        reply = ipc.ProducerToService(request_id=msg.request_id)
        reply.heartbeat.SetInParent()
        return [Send(reply)]

    # -- writers and commits ------------------------------------------------------------

    def writer_created(self, writer_id: int, target_buffer: int) -> list[Output]:
        """A new TraceWriter: register it before anything it writes is committed."""
        if self.state is not State.CONNECTED:
            return []
        self._reported[writer_id] = (target_buffer, 0, 0)
        req = ipc.RegisterTraceWriterRequest(writer_id=writer_id, target_buffer=target_buffer)
        return [self._send("register_trace_writer", req)]

    def commit(self, batches: Sequence[Any], stats: Iterable[WriterStats] = ()) -> list[Output]:
        """One CommitDataRequest for `batches` (CommitBatch-like) and the writers whose
        drop counts changed since they were last reported; nothing if both are empty."""
        if self.state is not State.CONNECTED:
            return []
        req = commit_request(batches)
        flush_id = req.flush_request_id
        for s in stats:
            values = (s.target_buffer, s.dropped_packets, s.dropped_bytes)
            if self._reported.get(s.writer_id) != values and (s.dropped_packets or s.dropped_bytes):
                self._reported[s.writer_id] = values
                req.writer_stats.add(
                    writer_id=s.writer_id,
                    target_buffer=s.target_buffer,
                    dropped_packets=s.dropped_packets,
                    dropped_bytes=s.dropped_bytes,
                )
        if not (req.chunks_to_move or req.chunks_to_patch or flush_id or req.writer_stats):
            return []
        return [self._send("commit_data", req)]

    # -- time -------------------------------------------------------------------------

    def tick(self, now: int) -> list[Output]:
        """Deadlines: the handshake timeout, heartbeats, the service's liveness."""
        if self.state is State.CONNECTING and now - self._sent_at >= HANDSHAKE_TIMEOUT_NS:
            return self._reconnect(
                f"no reply to initialize_connection within {HANDSHAKE_TIMEOUT_NS / 1e9:g} s",
                RECONNECT_BACKOFF_S[min(self._attempt, len(RECONNECT_BACKOFF_S) - 1)],
            )
        if self.state is not State.CONNECTED or not self._heartbeats:
            return []
        if self._heartbeats_answered and now - self._last_heard >= LIVENESS_TIMEOUT_NS:
            return self._reconnect("the service stopped answering", RECONNECT_BACKOFF_S[0])
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL_NS
            self._heartbeats_sent += 1
            self._heartbeat_id, send = self._request("heartbeat", ipc.Heartbeat())
            return [send]
        return []

    def _reconnect(self, reason: str, delay_s: float) -> list[Output]:
        self._attempt += 1
        self._reset()
        self.state = State.IDLE
        return [Reconnect(reason, delay_s)]


def commit_request(batches: Sequence[Any]) -> ipc.CommitDataRequest:
    """The CommitDataRequest carrying the arbiter's CommitBatches, in order (the
    largest flush id acknowledges every earlier flush)."""
    req = ipc.CommitDataRequest()
    for batch in batches:
        for m in batch.chunks_to_move:
            req.chunks_to_move.add(page=m.page, chunk=m.chunk, target_buffer=m.target_buffer)
        for p in batch.chunks_to_patch:
            entry = req.chunks_to_patch.add(
                target_buffer=p.target_buffer,
                writer_id=p.writer_id,
                chunk_id=p.chunk_id,
                has_more_patches=p.has_more_patches,
            )
            for offset, data in p.patches:
                entry.patches.add(offset=offset, data=bytes(data))
        req.flush_request_id = max(req.flush_request_id, batch.flush_request_id)
    return req
