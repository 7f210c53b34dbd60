"""RelayCore: the relay between a machine's local producers and the central
service, with no I/O (python -m actors.relay is its shell).

    local producers --ipc + SMB--> RelayCore --[channel][envelope] queue--> service

Toward local producers the relay IS their service: it answers their handshake
(producer id = the producer's channel on the link, never reused), registrations
(checked as the service checks them) and heartbeats itself, makes each one's SMB
when the service's SetupTracing for it arrives, and hands it over with its own
SetupTracing (token, socket). Toward the service each producer is a channel:
its InitializeConnection (the kernel's pid and uid as the claimed ones), data
sources and writers are sent with the relay's own request ids (bit 63 set; the
replies are swallowed, an error logged) and sent again whenever the link comes
up; its other messages are forwarded with its own request ids. A CommitData's
chunks are copied out of the SMB (then freed there) into ChunkToMove.data, the
commit split into pieces, its patches, writer stats and flush ack in the last
(actors/core/relay_chunks.py).

Outputs: `ToProducer(identity, msg)` and `Log(text)` in the returned list; what
goes to the service is pushed onto `queue` (actors/core/relay_upstream.py),
which the shell drains, calling `drained()` when it took some.

A producer is gone when its process exits (the shell's pidfd), or when it says
nothing for PRODUCER_SILENCE_NS (it heartbeats every second): the complete
chunks left in its SMB go up, then RelayProducerGone.

Backpressure: while the queue is over its bound, a producer's commits wait
(in order, with whatever it sends after them) and its chunks stay in its SMB:
the SMB fills and the producer's own BufferExhaustedPolicy applies. What waits
is bounded: MAX_WAITING messages and MAX_WAITING_BYTES per producer, and the
send queue's bound for all of them together; past that a message is dropped
(a commit's chunks freed and counted as lost).

Limits (actors/core/limits.py, the service's): connections (producers) per
process and per user, data sources per producer, SMB bytes per process and per
user. A request over one is refused with the service's words, counted in
`refusals` under the limit's name, and logged once per doubling of the count.

Link states (LINK_TRANSITIONS; one mutator, `_move`):

    CONNECTING --init_relay answered--> UP --dead link_timeout / unknown relay--> DOWN
        ^  InitRelay resent, backoff 0.1 s doubling to 5 s                           |
        +-------------------------------- reconnect ----------------------------------+

The link is dead when for link_timeout the service sent nothing (it heartbeats
every second on its own, and answers ours) and ZeroMQ took nothing from the
queue: a slow link that moves data is up even while the answers to our
heartbeats wait behind the chunks in ZeroMQ's pipe (`drained` is progress).

Going DOWN stops locally every instance the service had set up, drops the queue
and the waiting commits (their chunks freed) and counts them; while not UP,
commits free their chunks and count them. The count goes up in a RelayLoss once
the link is UP again, before anything else of the new link but the producers.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from actors.core.limits import DEFAULT_LIMITS, Limits
from actors.core.outbox import version_error
from actors.core.producer_port import data_source_error, known_fields
from actors.core.relay_chunks import Targets, commit_pieces, free_commit, leftovers
from actors.core.relay_upstream import ClockSync, Loss, ReadClocks, SendQueue
from protos import data_source_config_pb2 as dsc
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import Geometry, SharedMemoryABI, is_valid_writer_id, resolve_geometry

UNKNOWN_RELAY = "unknown relay"  # in the service's error when it does not know our link
RELAY_REQUEST_BIT = 1 << 63  # request ids of the relay's own requests upstream
INIT_BACKOFF_NS = (100_000_000, 5_000_000_000)  # first, then doubling up to the last
HEARTBEAT_INTERVAL_NS = 1_000_000_000
# A local producer heartbeats every second: one silent this long is ended as gone
# (it reconnected under another routing id, or is stopped; it starts over when it speaks).
PRODUCER_SILENCE_NS = 30_000_000_000
MAX_WAITING = 4096  # messages of one producer behind the queue bound
MAX_WAITING_BYTES = 1 << 20  # their encoded bytes, at most
# Instances a producer had that ended (stopped, or their link went down), whose
# buffers still take its chunks: its last ones come after the stop, and those
# freed without a link are counted as lost under them.
ENDED_KEPT = 64


class Link(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"


class LinkEvent(enum.Enum):
    INITIALIZED = "initialized"  # InitRelayResponse without error
    LOST = "lost"  # silence for link_timeout, or the service does not know us
    RECONNECT = "reconnect"


LINK_TRANSITIONS: dict[tuple[Link, LinkEvent], Link] = {
    (Link.CONNECTING, LinkEvent.INITIALIZED): Link.UP,
    (Link.UP, LinkEvent.LOST): Link.DOWN,
    (Link.DOWN, LinkEvent.RECONNECT): Link.CONNECTING,
}


@dataclass(frozen=True, slots=True)
class ToProducer:
    identity: bytes
    msg: ipc.ServiceToProducer


@dataclass(frozen=True, slots=True)
class Log:
    text: str


Output = ToProducer | Log
ProducerHandler = Callable[["LocalProducer", ipc.ProducerToService, int], list[Output]]


class Smb(Protocol):
    """A producer's SMB as the relay's shell made it (actors/service.py ServedSmb)."""

    buf: Any
    socket: str
    token: bytes

    def close(self) -> None: ...


SmbFactory = Callable[[Geometry, int, int], Smb]  # (geometry, pid, uid); OSError if none


@dataclass
class RelayConfig:
    machine_name: str
    machine_id_hint: str
    system_info: bytes
    send_queue_bytes: int = 16 << 20
    link_timeout_ns: int = 5_000_000_000
    clock_sync_interval_ns: int = 30_000_000_000
    limits: Limits = DEFAULT_LIMITS


@dataclass
class LocalProducer:
    identity: bytes
    channel: int
    pid: int  # from the kernel
    uid: int
    init: ipc.InitializeConnectionRequest  # as sent upstream (kernel's pid/uid claimed)
    data_sources: dict[str, ipc.DataSourceDescriptor] = field(default_factory=dict)
    writers: dict[int, int] = field(default_factory=dict)  # writer id -> target buffer
    smb: Smb | None = None
    abi: SharedMemoryABI | None = None
    started: dict[int, int] = field(default_factory=dict)  # instance the service set up -> buffer
    ended: OrderedDict[int, int] = field(default_factory=OrderedDict)  # the last ENDED_KEPT
    last_seen: int = 0  # when it last sent anything (monotonic ns)
    waiting: deque[ipc.ProducerToService] = field(default_factory=deque)
    waiting_bytes: int = 0  # their encoded size

    def targets(self) -> Targets:
        """Where its chunks may go: the buffers the service set it up for."""
        buffers = set(self.started.values())
        buffers.update(self.ended.values())
        return Targets(buffers, self.writers)

    def end(self, instance: int) -> None:
        buffer = self.started.pop(instance, None)
        if buffer is None:
            return
        self.ended[instance] = buffer
        while len(self.ended) > ENDED_KEPT:
            self.ended.popitem(last=False)


@dataclass
class RelayCounters:
    chunks_sent: int = 0
    # moves naming a chunk that was not COMPLETE (or out of range), or a buffer the
    # service did not set the producer up for (or not its writer's)
    chunks_invalid: int = 0
    waiting_dropped: int = 0  # messages of a producer past the waiting bounds
    replies_swallowed: int = 0


class RelayCore:
    def __init__(self, config: RelayConfig, make_smb: SmbFactory, read_clocks: ReadClocks) -> None:
        self.config = config
        self.make_smb = make_smb
        self.link = Link.CONNECTING
        self.machine_id = 0
        self.queue = SendQueue(config.send_queue_bytes)
        self.loss = Loss()  # freed unsent since the link was last up
        self.lost_total = Loss()  # since the relay started
        self.clock = ClockSync(read_clocks, config.clock_sync_interval_ns)
        self.producers: dict[bytes, LocalProducer] = {}
        self.by_channel: dict[int, LocalProducer] = {}
        self.counters = RelayCounters()
        self.refusals: dict[str, int] = {}  # limit name -> requests refused over it
        self.waiting_bytes = 0  # of every producer
        self._next_channel = 1
        self._next_request = 1
        self._last_heard = 0  # the last message from the service
        self._last_progress = 0  # the last time ZeroMQ took some of the queue
        self._next_heartbeat = 0
        self._init_backoff = INIT_BACKOFF_NS[0]
        self._next_init: int | None = 0  # CONNECTING: when InitRelay goes (again)
        self._producer_handlers: dict[str, ProducerHandler] = {
            "register_data_source": self._p_register_data_source,
            "unregister_data_source": self._p_unregister_data_source,
            "register_trace_writer": self._p_register_trace_writer,
            "unregister_trace_writer": self._p_unregister_trace_writer,
            "commit_data": self._p_commit_data,
            "smb_mapped": self._p_smb_mapped,
            "heartbeat": self._p_heartbeat,
            "data_source_started": self._p_forward,
            "data_source_stopped": self._p_forward,
            "activate_triggers": self._p_forward,
        }

    # -- the link ---------------------------------------------------------------------

    def _move(self, event: LinkEvent) -> None:
        self.link = LINK_TRANSITIONS[(self.link, event)]

    def _relay_request_id(self) -> int:
        self._next_request += 1
        return RELAY_REQUEST_BIT | self._next_request

    def _send_init_relay(self, now: int) -> None:
        """InitRelay, unless one still waits unsent (no connection yet): the service
        takes each InitRelay for a new incarnation of the link."""
        self._next_init = now + self._init_backoff
        self._init_backoff = min(2 * self._init_backoff, INIT_BACKOFF_NS[1])
        if self.queue.holds("init_relay"):
            return
        msg = ipc.RelayToService(request_id=self._relay_request_id())
        init = msg.init_relay
        init.hello.protocol_version = ipc.PROTOCOL_VERSION
        init.machine_name = self.config.machine_name
        init.machine_id_hint = self.config.machine_id_hint
        init.system_info = self.config.system_info
        self.queue.push(0, msg)

    def handle_control(self, msg: ipc.ServiceToRelay, now: int) -> list[Output]:
        """A message on channel 0 from the service."""
        self._last_heard = now
        kind = msg.WhichOneof("msg")
        if kind == "init_relay":
            return self._on_init_relay(msg.init_relay, now)
        if kind == "sync_clock" and self.link is Link.UP:
            self._push_control(self.clock.answered(msg.sync_clock.round, now))
        elif kind == "error":
            return self._on_error(msg.error.message, now)
        return []

    def _on_error(self, text: str, now: int) -> list[Output]:
        """ "unknown relay" means the service lost our link (it restarted, or gave up
        on us): start over. Anything else is said and changes nothing."""
        if UNKNOWN_RELAY in text and self.link is Link.UP:
            return self._link_lost(f"the service says: {text}", now)
        if UNKNOWN_RELAY in text:
            return []  # an answer to what was sent before our InitRelay went
        return [Log(f"the service answered with an error: {text}")]

    def _on_init_relay(self, reply: ipc.InitRelayResponse, now: int) -> list[Output]:
        if self.link is not Link.CONNECTING:
            return []  # the answer to a resent InitRelay: the first one counted
        if reply.hello.error:
            return [Log(f"the service refused the link: {reply.hello.error}")]
        self._move(LinkEvent.INITIALIZED)
        self.machine_id = reply.machine_id
        self._next_init = None
        self._init_backoff = INIT_BACKOFF_NS[0]
        self._next_heartbeat = now + HEARTBEAT_INTERVAL_NS
        out: list[Output] = [Log(f"link up: machine id {reply.machine_id}")]
        for producer in self.producers.values():
            self._announce(producer)
        if self.loss:
            chunks, nbytes = self.loss.totals()
            out.append(Log(f"dropped {chunks} chunks ({nbytes} bytes) without a link"))
        # Always: the service's first one from us sets its baseline of what we sent.
        self.queue.push(0, self.loss.message(self.queue.sent_through_tail()))
        self.loss = Loss()
        self._push_control(self.clock.start(now))
        return out

    def _push_control(self, messages: list[ipc.RelayToService]) -> None:
        for msg in messages:
            self.queue.push(0, msg)

    def _link_lost(self, why: str, now: int) -> list[Output]:
        """UP -> DOWN -> CONNECTING: stop the service's instances locally, count what
        cannot be sent any more, start over with InitRelay."""
        self._move(LinkEvent.LOST)
        out: list[Output] = [Log(f"link down: {why}")]
        self.clock.stop()
        self._lose(self.queue.drop_all())
        for producer in self.producers.values():
            for instance in sorted(producer.started):
                stop = ipc.ServiceToProducer(
                    stop_data_source=ipc.StopDataSource(instance_id=instance)
                )
                out.append(ToProducer(producer.identity, stop))
                producer.end(instance)
            while producer.waiting:
                waiting = self._pop_waiting(producer)
                if waiting.WhichOneof("msg") == "commit_data":
                    self._free_commit(producer, waiting.commit_data)
        self._move(LinkEvent.RECONNECT)
        self._init_backoff = INIT_BACKOFF_NS[0]
        self._send_init_relay(now)
        return out

    def _lose(self, lost: Loss) -> None:
        self.loss.merge(lost)
        self.lost_total.merge(lost)

    # -- time ---------------------------------------------------------------------------

    def on_timer(self, now: int) -> list[Output]:
        out = self._end_silent_producers(now)
        return out + self._link_timers(now)

    def _end_silent_producers(self, now: int) -> list[Output]:
        out: list[Output] = []
        for producer in list(self.producers.values()):
            if now - producer.last_seen >= PRODUCER_SILENCE_NS:
                silence = PRODUCER_SILENCE_NS / 1e9
                out.append(
                    Log(f"producer pid {producer.pid} said nothing for {silence:g} s: ended")
                )
                out += self.producer_gone(producer.identity, now)
        return out

    def _link_timers(self, now: int) -> list[Output]:
        if self.link is Link.CONNECTING:
            if self._next_init is not None and now >= self._next_init:
                self._send_init_relay(now)
            return []
        if now - self._last_alive() >= self.config.link_timeout_ns:
            timeout = self.config.link_timeout_ns / 1e9
            why = f"no message from the service and nothing sent for {timeout:g} s"
            return self._link_lost(why, now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL_NS
            self.queue.push(0, ipc.RelayToService(heartbeat=ipc.Heartbeat()))
        self._push_control(self.clock.tick(now))
        return []

    def _last_alive(self) -> int:
        """When the link last showed it works: a message from the service, or
        ZeroMQ taking some of the queue."""
        return max(self._last_heard, self._last_progress)

    def next_deadline(self) -> int | None:
        deadlines = [p.last_seen + PRODUCER_SILENCE_NS for p in self.producers.values()]
        if self.link is Link.CONNECTING and self._next_init is not None:
            deadlines.append(self._next_init)
        elif self.link is Link.UP:
            deadlines += [self._next_heartbeat, self._last_alive() + self.config.link_timeout_ns]
            clock = self.clock.deadline()
            if clock is not None:
                deadlines.append(clock)
        return min(deadlines, default=None)

    # -- local producers --------------------------------------------------------------

    def handle_producer(
        self, identity: bytes, pid: int, uid: int, msg: ipc.ProducerToService, now: int
    ) -> list[Output]:
        kind = msg.WhichOneof("msg")
        producer = self.producers.get(identity)
        if kind == "initialize_connection":
            return self._p_initialize(identity, pid, uid, msg, producer, now)
        if producer is None:
            return [self._error(identity, msg.request_id, "initialize the connection first")]
        handler = self._producer_handlers.get(kind or "")
        if handler is None:
            return [
                self._error(identity, msg.request_id, f"{kind or 'this message'} is not handled")
            ]
        producer.last_seen = now
        return handler(producer, msg, now)

    @staticmethod
    def _error(identity: bytes, request_id: int, text: str) -> ToProducer:
        reply = ipc.ServiceToProducer(request_id=request_id)
        reply.error.message = text
        return ToProducer(identity, reply)

    def _p_initialize(
        self,
        identity: bytes,
        pid: int,
        uid: int,
        msg: ipc.ProducerToService,
        producer: LocalProducer | None,
        now: int,
    ) -> list[Output]:
        req_untrusted = msg.initialize_connection
        reply = ipc.ServiceToProducer(request_id=msg.request_id)
        hello = reply.initialize_connection.hello
        hello.protocol_version = ipc.PROTOCOL_VERSION
        version = req_untrusted.hello.protocol_version
        if version != ipc.PROTOCOL_VERSION:
            hello.error = version_error(version)
        elif producer is not None:
            hello.error = "this connection is already initialized"
        elif (over := self._connection_limit(pid, uid)) is not None:
            name, hello.error = over
            return [ToProducer(identity, reply), *self._refuse(name, hello.error)]
        else:
            producer = self._add_producer(identity, pid, uid, req_untrusted)
            producer.last_seen = now
            reply.initialize_connection.producer_id = producer.channel
            if self.link is Link.UP:
                self._announce(producer)
        return [ToProducer(identity, reply)]

    def _connection_limit(self, pid: int, uid: int) -> tuple[str, str] | None:
        """(limit name, error) if another producer of this process or user would
        pass a limit: each connection here is one producer."""
        limits = self.config.limits
        of_pid = sum(1 for p in self.producers.values() if p.pid == pid)
        of_uid = sum(1 for p in self.producers.values() if p.uid == uid)
        if of_pid >= limits.max_connections_per_process:
            limit = limits.max_connections_per_process
            return "max_connections_per_process", (
                f"pid {pid} has {limit} connections (max_connections_per_process)"
            )
        if of_uid >= limits.max_producers_per_uid:
            limit = limits.max_producers_per_uid
            return (
                "max_producers_per_uid",
                f"uid {uid} has {limit} producers (max_producers_per_uid)",
            )
        if of_uid >= limits.max_connections_per_uid:
            limit = limits.max_connections_per_uid
            return "max_connections_per_uid", (
                f"uid {uid} has {limit} connections (max_connections_per_uid)"
            )
        return None

    def _refuse(self, name: str, error: str) -> list[Output]:
        """Count a request refused over limit `name`; a log line per doubling."""
        count = self.refusals[name] = self.refusals.get(name, 0) + 1
        if not once_per_doubling(count):
            return []
        return [Log(f"refused: {error} ({count} refused over {name} so far)")]

    def _add_producer(
        self, identity: bytes, pid: int, uid: int, req_untrusted: ipc.InitializeConnectionRequest
    ) -> LocalProducer:
        init = ipc.InitializeConnectionRequest()
        init.CopyFrom(req_untrusted)
        init.DiscardUnknownFields()
        init.claimed_pid, init.claimed_uid = max(pid, 0), max(uid, 0)  # the kernel's, not its own
        producer = LocalProducer(identity, self._next_channel, pid, uid, init)
        self._next_channel += 1
        self.producers[identity] = producer
        self.by_channel[producer.channel] = producer
        return producer

    def _announce(self, producer: LocalProducer) -> None:
        """The producer, its data sources and writers, to the service (again)."""
        channel = producer.channel
        self._upstream(channel, self._relay_request_id(), initialize_connection=producer.init)
        for desc in producer.data_sources.values():
            request = ipc.RegisterDataSourceRequest(descriptor=desc)
            self._upstream(channel, self._relay_request_id(), register_data_source=request)
        for writer_id, buffer in producer.writers.items():
            writer = ipc.RegisterTraceWriterRequest(writer_id=writer_id, target_buffer=buffer)
            self._upstream(channel, self._relay_request_id(), register_trace_writer=writer)

    def _upstream(self, channel: int, request_id: int, **kind: Any) -> None:
        self.queue.push(channel, ipc.ProducerToService(request_id=request_id, **kind))

    def _p_register_data_source(
        self, producer: LocalProducer, msg: ipc.ProducerToService, now: int
    ) -> list[Output]:
        desc = msg.register_data_source.descriptor
        error = data_source_error(desc.name)
        out: list[Output] = []
        limit = self.config.limits.max_data_sources_per_producer
        if not error and desc.name in producer.data_sources:
            error = f"data source {desc.name!r} is already registered"
        elif not error and len(producer.data_sources) >= limit:
            error = f"this producer has {limit} data sources (max_data_sources_per_producer)"
            out = self._refuse("max_data_sources_per_producer", error)
        if not error:
            producer.data_sources[desc.name] = known_fields(desc)
            if self.link is Link.UP:
                request = ipc.RegisterDataSourceRequest(descriptor=producer.data_sources[desc.name])
                self._upstream(
                    producer.channel, self._relay_request_id(), register_data_source=request
                )
        reply = ipc.ServiceToProducer(request_id=msg.request_id)
        reply.register_data_source.error = error
        return [ToProducer(producer.identity, reply), *out]

    def _p_unregister_data_source(
        self, producer: LocalProducer, msg: ipc.ProducerToService, now: int
    ) -> list[Output]:
        if producer.data_sources.pop(msg.unregister_data_source.name, None) is not None:
            return self._p_forward(producer, msg, now)
        return []

    def _p_register_trace_writer(
        self, producer: LocalProducer, msg: ipc.ProducerToService, now: int
    ) -> list[Output]:
        req_untrusted = msg.register_trace_writer
        if not is_valid_writer_id(req_untrusted.writer_id):
            return []
        producer.writers[req_untrusted.writer_id] = req_untrusted.target_buffer
        return self._p_forward(producer, msg, now)

    def _p_unregister_trace_writer(
        self, producer: LocalProducer, msg: ipc.ProducerToService, now: int
    ) -> list[Output]:
        producer.writers.pop(msg.unregister_trace_writer.writer_id, None)
        return self._p_forward(producer, msg, now)

    def _p_smb_mapped(
        self, producer: LocalProducer, msg: ipc.ProducerToService, now: int
    ) -> list[Output]:
        if msg.smb_mapped.error:  # the service needs no SmbMapped: chunks come inline
            return [
                Log(f"producer pid {producer.pid} could not map its SMB: {msg.smb_mapped.error}")
            ]
        return []

    def _p_heartbeat(
        self, producer: LocalProducer, msg: ipc.ProducerToService, now: int
    ) -> list[Output]:
        reply = ipc.ServiceToProducer(request_id=msg.request_id, heartbeat=ipc.Heartbeat())
        return [ToProducer(producer.identity, reply)]

    def _p_forward(
        self, producer: LocalProducer, msg: ipc.ProducerToService, now: int
    ) -> list[Output]:
        """Up with the producer's own request id, behind its waiting commits; dropped
        while the link is not up (the service's state of it ends with the link)."""
        if self.link is not Link.UP:
            return []
        if producer.waiting:
            return self._wait(producer, msg)
        self.queue.push(producer.channel, msg)
        return []

    def _wait(self, producer: LocalProducer, msg: ipc.ProducerToService) -> list[Output]:
        """Behind the queue bound, while the producer's and all producers' waiting
        bounds have room; else dropped (its chunks freed and counted as lost)."""
        size = msg.ByteSize()
        if (
            len(producer.waiting) >= MAX_WAITING
            or producer.waiting_bytes + size > MAX_WAITING_BYTES
            or self.waiting_bytes + size > self.config.send_queue_bytes
        ):
            return self._drop_waiting(producer, msg)
        producer.waiting.append(msg)
        producer.waiting_bytes += size
        self.waiting_bytes += size
        return []

    def _drop_waiting(self, producer: LocalProducer, msg: ipc.ProducerToService) -> list[Output]:
        self.counters.waiting_dropped += 1
        if msg.WhichOneof("msg") == "commit_data":
            self._free_commit(producer, msg.commit_data)
        dropped = self.counters.waiting_dropped
        if not once_per_doubling(dropped):
            return []
        return [
            Log(
                f"producer pid {producer.pid} has too much waiting for the link: a message "
                f"dropped ({dropped} so far)"
            )
        ]

    # -- commits ----------------------------------------------------------------------

    def _p_commit_data(
        self, producer: LocalProducer, msg: ipc.ProducerToService, now: int
    ) -> list[Output]:
        if self.link is not Link.UP:
            self._free_commit(producer, msg.commit_data)
            return []
        if producer.waiting or self.queue.over_bound():
            return self._wait(producer, msg)
        self._send_commit(producer, msg)
        return []

    def _send_commit(self, producer: LocalProducer, msg: ipc.ProducerToService) -> None:
        """The commit's chunks out of the SMB, in pieces (relay_chunks.py)."""
        for piece in commit_pieces(producer.abi, msg.commit_data, producer.targets()):
            self.counters.chunks_invalid += piece.invalid
            envelope = ipc.ProducerToService(request_id=msg.request_id, commit_data=piece.request)
            self.queue.push(producer.channel, envelope, piece.carried if piece.carried else None)
            self.counters.chunks_sent += len(piece.request.chunks_to_move)

    def _free_commit(self, producer: LocalProducer, req_untrusted: ipc.CommitDataRequest) -> None:
        """No link: the commit's chunks are freed in the SMB and counted as lost."""
        lost, invalid = free_commit(producer.abi, req_untrusted, producer.targets())
        self.counters.chunks_invalid += invalid
        self._lose(lost)

    def drained(self, now: int) -> list[Output]:
        """The shell sent some of the queue (the link moves: progress): waiting
        commits go on while it has room, one message per producer in turn."""
        self._last_progress = now
        busy = [p for p in self.producers.values() if p.waiting]
        while busy and not self.queue.over_bound() and self.link is Link.UP:
            for producer in list(busy):
                self._send_waiting(producer)
                if not producer.waiting:
                    busy.remove(producer)
        return []

    def _pop_waiting(self, producer: LocalProducer) -> ipc.ProducerToService:
        msg = producer.waiting.popleft()
        size = msg.ByteSize()
        producer.waiting_bytes -= size
        self.waiting_bytes -= size
        return msg

    def _send_waiting(self, producer: LocalProducer) -> None:
        msg = self._pop_waiting(producer)
        if msg.WhichOneof("msg") == "commit_data":
            self._send_commit(producer, msg)
        else:
            self.queue.push(producer.channel, msg)

    def producer_gone(self, identity: bytes, now: int) -> list[Output]:
        """The producer's process exited or its connection closed: what it committed,
        then the complete chunks it left in its SMB, go up first, then
        RelayProducerGone; its SMB is released."""
        producer = self.producers.pop(identity, None)
        if producer is None:
            return []
        del self.by_channel[producer.channel]
        left = ipc.ProducerToService(commit_data=leftovers(producer.abi, producer.writers))
        producer.waiting.append(left)
        while producer.waiting:  # bounded by its SMB: each commit frees chunks
            if self.link is Link.UP:
                self._send_waiting(producer)
            else:
                msg = self._pop_waiting(producer)
                if msg.WhichOneof("msg") == "commit_data":
                    self._free_commit(producer, msg.commit_data)
        if self.link is Link.UP:
            gone = ipc.RelayToService(producer_gone=ipc.RelayProducerGone(channel=producer.channel))
            self.queue.push(0, gone)
        if producer.smb is not None:
            producer.smb.close()
            producer.smb = producer.abi = None
        return []

    # -- from the service, for a producer ---------------------------------------------------

    def handle_for_producer(
        self, channel: int, msg: ipc.ServiceToProducer, now: int
    ) -> list[Output]:
        """A message on channel `channel` from the service."""
        self._last_heard = now
        producer = self.by_channel.get(channel)
        if producer is None or self.link is not Link.UP:
            return []  # for a producer gone since, or from before the link went down
        kind = msg.WhichOneof("msg")
        if msg.request_id & RELAY_REQUEST_BIT:
            return self._reply_to_relay(producer, kind, msg)
        if kind == "setup_tracing":
            return self._setup_tracing(producer, msg.setup_tracing)
        if kind in ("setup_data_source", "start_data_source"):
            self._set_up(producer, getattr(msg, kind))
        elif kind == "stop_data_source":
            producer.end(msg.stop_data_source.instance_id)
        return [ToProducer(producer.identity, msg)]

    @staticmethod
    def _set_up(producer: LocalProducer, setup: ipc.SetupDataSource | ipc.StartDataSource) -> None:
        """The instance's target buffer, from its config (SetupDataSource's; a
        StartDataSource without a setup before it has its own)."""
        if setup.instance_id in producer.started:
            return
        try:
            config = dsc.DataSourceConfig.FromString(setup.data_source_config)
        except DecodeError:
            return  # the service's bytes: the producer cannot parse them either
        producer.started[setup.instance_id] = config.target_buffer
        producer.ended.pop(setup.instance_id, None)

    def _reply_to_relay(
        self, producer: LocalProducer, kind: str | None, msg: ipc.ServiceToProducer
    ) -> list[Output]:
        self.counters.replies_swallowed += 1
        error = ""
        if kind == "initialize_connection":
            error = msg.initialize_connection.hello.error
        elif kind == "register_data_source":
            error = msg.register_data_source.error
        elif kind == "error":
            error = msg.error.message
        if error:
            return [Log(f"the service refused producer pid {producer.pid} ({kind}): {error}")]
        return []

    def _setup_tracing(self, producer: LocalProducer, setup: ipc.SetupTracing) -> list[Output]:
        """The SMB is made here, on the producer's machine, once: a SetupTracing after
        the link came back finds the producer already mapped (the service needs no
        answer: its chunks come inline)."""
        if producer.smb is not None:
            return []
        geometry = resolve_geometry(setup.shm_size_bytes, setup.shm_page_size_bytes)
        over = self._smb_limit(producer, geometry.size)
        if over is not None:
            name, whose, limit = over
            error = (
                f"no SMB of {geometry.size} bytes: its {whose} would pass {name} ({limit} bytes)"
            )
            return [self._error(producer.identity, 0, error), *self._refuse(name, error)]
        try:
            smb = self.make_smb(geometry, producer.pid, producer.uid)
        except OSError as e:
            return [Log(f"cannot make an SMB for producer pid {producer.pid}: {e}")]
        producer.smb = smb
        producer.abi = SharedMemoryABI(smb.buf, geometry)
        local = ipc.SetupTracing(
            shm_size_bytes=geometry.size,
            shm_page_size_bytes=geometry.page_size,
            shm_token=smb.token,
            shm_socket=smb.socket,
        )
        return [ToProducer(producer.identity, ipc.ServiceToProducer(setup_tracing=local))]

    def _smb_limit(self, producer: LocalProducer, size: int) -> tuple[str, str, int] | None:
        """(limit name, whose, limit) of the first SMB limit that an SMB of `size`
        bytes would take the producer's process or user past, or None (the
        service's rule, actors/core/session_control.py)."""
        held = (
            (
                "max_smb_bytes_per_process",
                "process",
                self._smb_bytes(lambda p: p.pid == producer.pid),
            ),
            ("max_smb_bytes_per_uid", "user", self._smb_bytes(lambda p: p.uid == producer.uid)),
        )
        for name, whose, taken in held:
            limit = getattr(self.config.limits, name)
            if taken + size > limit:
                return name, whose, limit
        return None

    def _smb_bytes(self, whose: Callable[[LocalProducer], bool]) -> int:
        return sum(
            p.abi.geometry.size for p in self.producers.values() if p.abi is not None and whose(p)
        )

    def close(self) -> None:
        for producer in self.producers.values():
            if producer.smb is not None:
                producer.smb.close()
                producer.smb = producer.abi = None


def once_per_doubling(count: int) -> bool:
    """Whether the count-th of a repeated event is said: the 1st, 2nd, 4th, 8th..."""
    return count & (count - 1) == 0
