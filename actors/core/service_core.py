"""ServiceCore: the tracing service without I/O.

The shell feeds it decoded envelopes with the sender's trusted identity (the
ROUTER identity plus pid and uid from the kernel), tells it when a peer went
away, and calls on_timer() at next_deadline(). It answers with outputs: the
envelopes to send, in order. The shell also passes in an SMB factory and the
clocks (for clock snapshots and service packet timestamps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import readback, reports
from actors.core.ids import Counter, IdPool
from actors.core.lifecycle import (
    LIVE_SESSION,
    REPORTED_INSTANCE,
    InstanceEvent,
    InstanceState,
    SessionEvent,
    SessionState,
    apply,
    can_apply,
)
from actors.core.producers import (
    CommitPath,
    ProducerEntry,
    ServiceCounters,
    SmbFactory,
)
from actors.core.sessions import (
    DEFAULT_LIMITS,
    Instance,
    Limits,
    PendingFlush,
    ReadContext,
    Session,
    check_config,
    new_buffer,
    producer_matches,
    read_session,
    target_buffer_index,
    unsupported_fields,
)
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import SharedMemoryABI, resolve_geometry
from shm.trace_buffer import TraceBuffer


@dataclass(frozen=True)
class Peer:
    identity: bytes
    pid: int
    uid: int


@dataclass(frozen=True)
class ToProducer:
    identity: bytes
    msg: ipc.ServiceToProducer


@dataclass(frozen=True)
class ToConsumer:
    identity: bytes
    msg: ipc.ServiceToConsumer


def version_error(version: int) -> str:
    return f"protocol version {version} is not supported (service speaks {ipc.PROTOCOL_VERSION})"


class Clocks:
    """The shell's clocks, as the core may see them."""

    def __init__(self, snapshot: Callable[[], list[tuple[int, int]]], boottime: Callable[[], int]):
        self.snapshot = snapshot
        self.boottime = boottime


class ServiceCore:
    def __init__(
        self,
        smb_factory: SmbFactory,
        clocks: Clocks,
        uid: int,
        pid: int,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._smb_factory = smb_factory
        self.limits = limits
        self._clocks = clocks
        self.uid = uid
        self.pid = pid
        self.producers: dict[bytes, ProducerEntry] = {}
        self.sessions: dict[int, Session] = {}
        self.buffers: dict[int, TraceBuffer] = {}
        self.counters = ServiceCounters()
        self._commit = CommitPath(self.buffers, self.counters)
        self._producer_ids = IdPool(0xFFFF)
        self._buffer_ids = IdPool(0xFFFF)
        self._session_ids = Counter()
        self._instance_ids = Counter()
        self._flush_ids = Counter()
        self._out: list[ToProducer | ToConsumer] = []
        self.producers_seen = 0
        self.data_sources_seen = 0
        self.now = 0  # of the call being handled

    # -- entry points -----------------------------------------------------------------

    def handle_producer(self, peer: Peer, msg: ipc.ProducerToService, now: int) -> list:
        self.now = now
        kind = msg.WhichOneof("msg")
        producer = self.producers.get(peer.identity)
        if kind == "initialize_connection":
            self._initialize(peer, msg.request_id, msg.initialize_connection, now)
        elif producer is None:
            self._to_producer(
                peer.identity, msg.request_id, error="initialize the connection first"
            )
        else:
            handler = getattr(self, f"_p_{kind}", None)
            if handler is not None:
                handler(producer, msg.request_id, getattr(msg, kind), now)
        return self._drain()

    def handle_consumer(self, peer: Peer, msg: ipc.ConsumerToService, now: int) -> list:
        self.now = now
        kind = msg.WhichOneof("msg")
        handler = getattr(self, f"_c_{kind}", None)
        if handler is not None:
            handler(peer, msg.request_id, getattr(msg, kind), now)
        return self._drain()

    def producer_gone(self, identity: bytes, now: int) -> list:
        self.now = now
        producer = self.producers.pop(identity, None)
        if producer is not None:
            self._drop_producer(producer, now)
        return self._drain()

    def consumer_gone(self, identity: bytes, now: int) -> list:
        self.now = now
        for session in [s for s in self.sessions.values() if s.consumer == identity]:
            self._free(session, now)
        return self._drain()

    def on_timer(self, now: int) -> list:
        self.now = now
        for session in list(self.sessions.values()):
            self._session_timers(session, now)
        return self._drain()

    def next_deadline(self) -> int | None:
        deadlines = []
        for s in self.sessions.values():
            deadlines += [s.duration_deadline, s.stop_deadline, s.next_periodic_flush]
            deadlines += [f.deadline for f in s.flushes.values()]
        deadlines = [d for d in deadlines if d is not None]
        return min(deadlines) if deadlines else None

    def shutdown(self, now: int) -> list:
        """Stop every session and release every SMB (SIGINT/SIGTERM)."""
        self.now = now
        for session in list(self.sessions.values()):
            self._free(session, now)
        for producer in list(self.producers.values()):
            producer.release_smb()
        return self._drain()

    # -- output helpers -------------------------------------------------------------------

    def _drain(self) -> list:
        out, self._out = self._out, []
        return out

    def _to_producer(self, identity: bytes, request_id: int = 0, error: str = "", **kw) -> None:
        msg = ipc.ServiceToProducer(request_id=request_id)
        if error:
            msg.error.message = error
        for name, value in kw.items():
            getattr(msg, name).CopyFrom(value)
        self._out.append(ToProducer(identity, msg))

    def _to_consumer(self, identity: bytes, request_id: int, **kw) -> None:
        msg = ipc.ServiceToConsumer(request_id=request_id)
        for name, value in kw.items():
            getattr(msg, name).CopyFrom(value)
        self._out.append(ToConsumer(identity, msg))

    def _ack(self, identity: bytes, request_id: int, error: str = "") -> None:
        self._to_consumer(identity, request_id, ack=ipc.Ack(error=error))

    # -- producers --------------------------------------------------------------------------

    def _initialize(self, peer: Peer, request_id: int, req_untrusted, now: int) -> None:
        reply = ipc.InitializeConnectionResponse()
        reply.hello.protocol_version = ipc.PROTOCOL_VERSION
        version = req_untrusted.hello.protocol_version
        if version != ipc.PROTOCOL_VERSION:
            reply.hello.error = version_error(version)
        elif peer.identity in self.producers:
            reply.hello.error = "this connection is already initialized"
        else:
            pid = self._producer_ids.allocate()
            if pid is None:
                reply.hello.error = "too many producers"
            else:
                self.producers[peer.identity] = ProducerEntry(
                    pid,
                    peer.identity,
                    req_untrusted.producer_name[:256],
                    peer.pid,
                    peer.uid,
                    req_untrusted.shm_size_hint_bytes,
                    req_untrusted.shm_page_size_hint_bytes,
                )
                self.producers_seen += 1
                reply.producer_id = pid
        self._to_producer(peer.identity, request_id, initialize_connection=reply)

    def _p_register_data_source(self, producer: ProducerEntry, request_id, req_untrusted, now):
        desc = req_untrusted.descriptor
        error = ""
        if not desc.name or len(desc.name) > 256:
            error = "a data source needs a name of 1 to 256 characters"
        elif desc.name in producer.data_sources:
            error = f"data source {desc.name!r} is already registered"
        else:
            producer.data_sources[desc.name] = desc
            self.data_sources_seen += 1
        reply = ipc.RegisterDataSourceResponse(error=error)
        self._to_producer(producer.peer, request_id, register_data_source=reply)
        if not error:
            self._join_running_sessions(producer, desc.name, now)

    def _p_unregister_data_source(self, producer, request_id, req_untrusted, now):
        producer.data_sources.pop(req_untrusted.name, None)

    def _p_register_trace_writer(self, producer, request_id, req_untrusted, now):
        if 1 <= req_untrusted.writer_id <= 32767:
            producer.writers[req_untrusted.writer_id] = req_untrusted.target_buffer

    def _p_unregister_trace_writer(self, producer, request_id, req_untrusted, now):
        producer.writers.pop(req_untrusted.writer_id, None)

    def _p_smb_mapped(self, producer, request_id, req_untrusted, now):
        pass  # an error here shows up as missing data; commits need the SMB mapped

    def _p_heartbeat(self, producer, request_id, req_untrusted, now):
        pass

    def _p_commit_data(self, producer: ProducerEntry, request_id, req_untrusted, now):
        self._commit.commit(producer, req_untrusted)
        if producer.abi is not None and req_untrusted.flush_request_id:
            self._flush_acked(producer.id, req_untrusted.flush_request_id, now)

    def _p_data_source_started(self, producer, request_id, req_untrusted, now):
        self._instance_acked(producer, req_untrusted.instance_id, InstanceEvent.STARTED, now)

    def _p_data_source_stopped(self, producer, request_id, req_untrusted, now):
        self._instance_acked(producer, req_untrusted.instance_id, InstanceEvent.STOPPED, now)

    def _instance_acked(self, producer, instance_id_untrusted: int, event, now: int) -> None:
        """A producer says one of its instances started or stopped; an ack the
        instance's state does not expect (late, repeated, forged) is ignored."""
        instance, session = self._instance_of(producer, instance_id_untrusted)
        if instance is None or not can_apply(instance, event):
            return
        apply(instance, event)
        self._notify_instance(session, instance, producer)
        if event is InstanceEvent.STARTED:
            self._maybe_all_started(session, now)
        else:
            self._maybe_disabled(session, now)

    def _instance_of(self, producer: ProducerEntry, instance_id: int):
        for session in self.sessions.values():
            instance = session.instances.get(instance_id)
            if instance is not None and instance.producer_id == producer.id:
                return instance, session
        return None, None

    def _producer_by_id(self, producer_id: int) -> ProducerEntry | None:
        for producer in self.producers.values():
            if producer.id == producer_id:
                return producer
        return None

    def _drop_producer(self, producer: ProducerEntry, now: int) -> None:
        """A producer is gone: keep what it committed and what is left in its SMB."""
        for session in self.sessions.values():
            self._commit.scrape(producer, set(session.buffer_ids))
        for session in list(self.sessions.values()):
            gone = [i for i in session.instances.values() if i.producer_id == producer.id]
            for instance in gone:
                del session.instances[instance.id]
            for flush in list(session.flushes.values()):
                self._flush_acked_in(session, flush, producer.id, now)
            self._maybe_disabled(session, now)
        producer.release_smb()
        self._producer_ids.release(producer.id)

    # -- sessions: enable ---------------------------------------------------------------------

    def _c_hello(self, peer: Peer, request_id: int, req, now: int) -> None:
        reply = ipc.HelloReply(protocol_version=ipc.PROTOCOL_VERSION)
        if req.protocol_version != ipc.PROTOCOL_VERSION:
            reply.error = version_error(req.protocol_version)
        self._to_consumer(peer.identity, request_id, hello=reply)

    def _c_enable_tracing(self, peer: Peer, request_id: int, req, now: int) -> None:
        config = pb.TraceConfig()
        error = ""
        try:
            config.ParseFromString(req.trace_config)
        except Exception as e:  # noqa: BLE001 - a consumer's bad bytes must not end the service
            error = f"the TraceConfig does not parse: {e}"
        if not error and any(s.consumer == peer.identity for s in self.sessions.values()):
            error = "this consumer already has a tracing session"
        sessions = list(self.sessions.values())
        error = error or check_config(config, sessions, peer.uid, self.limits) or ""
        if error:
            reply = ipc.EnableTracingResponse(disabled=True, error=error)
            self._to_consumer(peer.identity, request_id, enable_tracing=reply)
            return
        session = self._create_session(peer, request_id, config, now)
        reply = ipc.EnableTracingResponse(session_id=session.id)
        reply.unsupported_fields.extend(unsupported_fields(config))
        if not config.deferred_start:
            self._start(session, now)
        reply.started = session.state is SessionState.STARTED
        self._to_consumer(peer.identity, request_id, enable_tracing=reply)

    def _create_session(self, peer: Peer, request_id: int, config, now: int) -> Session:
        session = Session(self._session_ids.next(), peer.identity, peer.uid, config, request_id)
        for buf_config in config.buffers:
            buffer_id = self._buffer_ids.allocate()
            self.buffers[buffer_id] = new_buffer(buf_config)
            session.buffer_ids.append(buffer_id)
        apply(session, SessionEvent.ENABLE)
        self.sessions[session.id] = session
        for producer in self.producers.values():
            for name in producer.data_sources:
                self._setup_instances(session, producer, name)
        return session

    def _join_running_sessions(self, producer: ProducerEntry, name: str, now: int) -> None:
        for session in self.sessions.values():
            if session.state not in LIVE_SESSION:
                continue
            for instance in self._setup_instances(session, producer, name):
                if session.state is SessionState.STARTED:
                    self._start_instance(session, instance, producer)

    def _setup_instances(self, session: Session, producer: ProducerEntry, name: str):
        created = []
        for ds in session.config.data_sources:
            if ds.config.name != name or not producer_matches(ds, producer.name):
                continue
            index = target_buffer_index(session.config, ds.config)[0]
            buffer_id = session.buffer_ids[index]
            if not self._ensure_smb(producer):
                continue
            instance = self._new_instance(session, producer, ds.config, buffer_id)
            created.append(instance)
            setup = ipc.SetupDataSource(instance_id=instance.id, data_source_config=instance.config)
            self._to_producer(producer.peer, setup_data_source=setup)
        return created

    def _new_instance(self, session, producer, ds_config, buffer_id: int) -> Instance:
        config = pb.DataSourceConfig()
        config.CopyFrom(ds_config)
        config.target_buffer = buffer_id
        config.tracing_session_id = session.id
        config.stop_timeout_ms = session.config.data_source_stop_timeout_ms
        config.trace_duration_ms = session.config.duration_ms
        desc = producer.data_sources[ds_config.name]
        instance = Instance(
            self._instance_ids.next(),
            producer.id,
            ds_config.name,
            config.SerializeToString(),
            buffer_id,
            desc.will_notify_on_start,
            desc.will_notify_on_stop,
            desc.no_flush,
        )
        session.instances[instance.id] = instance
        producer.allow(buffer_id)
        return instance

    def _ensure_smb(self, producer: ProducerEntry) -> bool:
        if producer.smb is not None:
            return True
        geometry = resolve_geometry(producer.shm_size_hint, producer.shm_page_hint)
        try:
            producer.smb = self._smb_factory(geometry)
        except OSError:
            return False
        producer.abi = SharedMemoryABI(producer.smb.buf, geometry)
        setup = ipc.SetupTracing(
            shm_size_bytes=geometry.size,
            shm_page_size_bytes=geometry.page_size,
            shm_path=producer.smb.path,
        )
        self._to_producer(producer.peer, setup_tracing=setup)
        return True

    # -- sessions: start, stop, free -------------------------------------------------------------

    def _c_start_tracing(self, peer: Peer, request_id: int, req, now: int) -> None:
        session = self._session_of(peer)
        if session is None or not can_apply(session, SessionEvent.START):
            self._ack(peer.identity, request_id, "no deferred session to start")
            return
        self._start(session, now)
        self._ack(peer.identity, request_id)

    def _start(self, session: Session, now: int) -> None:
        apply(session, SessionEvent.START)
        boottime = self._clocks.boottime()
        fill = readback.clock_snapshot_fill(self._clocks.snapshot(), boottime)
        session.clock_snapshots.append(readback.service_packet(self.uid, self.pid, fill))
        self._service_event(session, "tracing_started")
        if session.config.duration_ms:
            session.duration_deadline = now + session.config.duration_ms * 1_000_000
        if session.config.flush_period_ms:
            session.next_periodic_flush = now + session.config.flush_period_ms * 1_000_000
        for instance in session.instances.values():
            producer = self._producer_by_id(instance.producer_id)
            if producer is not None:
                self._start_instance(session, instance, producer)
        self._maybe_all_started(session, now)

    def _start_instance(self, session: Session, instance: Instance, producer) -> None:
        apply(instance, InstanceEvent.START)
        if not instance.notify_on_start:
            apply(instance, InstanceEvent.STARTED)  # no ack will come: started as sent
        start = ipc.StartDataSource(instance_id=instance.id, data_source_config=instance.config)
        self._to_producer(producer.peer, start_data_source=start)
        self._notify_instance(session, instance, producer)

    def _maybe_all_started(self, session: Session, now: int) -> None:
        if session.all_started_reported or session.state is not SessionState.STARTED:
            return
        if all(i.state is InstanceState.STARTED for i in session.instances.values()):
            session.all_started_reported = True
            self._service_event(session, "all_data_sources_started")
            if session.observer_request_id and 2 in session.observe_types:
                events = ipc.ObservableEvents(all_data_sources_started=True)
                self._to_consumer(session.consumer, session.observer_request_id, events=events)

    def _c_disable_tracing(self, peer: Peer, request_id: int, req, now: int) -> None:
        session = self._session_of(peer)
        if session is None:
            self._ack(peer.identity, request_id, "no tracing session")
            return
        if session.state is SessionState.DISABLED:
            self._ack(peer.identity, request_id)
            return
        session.disable_waiters.append(request_id)
        self._disable(session, now)

    def _disable(self, session: Session, now: int) -> None:
        if not can_apply(session, SessionEvent.DISABLE):
            return
        apply(session, SessionEvent.DISABLE)
        session.duration_deadline = session.next_periodic_flush = None
        session.stop_deadline = now + session.stop_timeout_ns
        for instance in session.instances.values():
            apply(instance, InstanceEvent.STOP)
            producer = self._producer_by_id(instance.producer_id)
            if producer is None or not instance.notify_on_stop:
                apply(instance, InstanceEvent.STOPPED)  # no ack will come
            if producer is None:
                continue
            stop = ipc.StopDataSource(instance_id=instance.id)
            self._to_producer(producer.peer, stop_data_source=stop)
            self._notify_instance(session, instance, producer)
        self._maybe_disabled(session, now)

    def _maybe_disabled(self, session: Session, now: int, force: bool = False) -> None:
        if not can_apply(session, SessionEvent.STOPPED):
            return
        stopping = [i for i in session.instances.values() if i.state is InstanceState.STOPPING]
        if stopping and not force:
            return
        for instance in stopping:  # its stop ack never came
            apply(instance, InstanceEvent.STOPPED)
            producer = self._producer_by_id(instance.producer_id)
            if producer is not None:
                self._notify_instance(session, instance, producer)
        apply(session, SessionEvent.STOPPED)
        session.stop_deadline = None
        self._scrape_session(session)
        self._service_event(session, "tracing_disabled")
        reply = ipc.EnableTracingResponse(disabled=True, session_id=session.id)
        self._to_consumer(session.consumer, session.enable_request_id, enable_tracing=reply)
        for request_id in session.disable_waiters:
            self._ack(session.consumer, request_id)
        session.disable_waiters.clear()

    def _c_free_buffers(self, peer: Peer, request_id: int, req, now: int) -> None:
        session = self._session_of(peer)
        if session is not None:
            self._free(session, now)
        self._ack(peer.identity, request_id)

    def _free(self, session: Session, now: int) -> None:
        for flush in list(session.flushes.values()):
            self._complete_flush(session, flush, False)
        self._disable(session, now)
        self._maybe_disabled(session, now, force=True)
        for instance in session.instances.values():
            producer = self._producer_by_id(instance.producer_id)
            if producer is not None:
                producer.disallow(instance.target_buffer)
        for buffer_id in session.buffer_ids:
            del self.buffers[buffer_id]
            self._buffer_ids.release(buffer_id)
        del self.sessions[session.id]

    def _session_of(self, peer: Peer) -> Session | None:
        for session in self.sessions.values():
            if session.consumer == peer.identity:
                return session
        return None

    # -- flush ----------------------------------------------------------------------------------

    def _c_flush(self, peer: Peer, request_id: int, req, now: int) -> None:
        session = self._session_of(peer)
        if session is None or session.state is not SessionState.STARTED:
            self._to_consumer(peer.identity, request_id, flush=ipc.FlushConsumerResponse())
            return

        def done(success: bool) -> None:
            reply = ipc.FlushConsumerResponse(success=success)
            self._to_consumer(peer.identity, request_id, flush=reply)

        timeout = req.timeout_ms * 1_000_000 if req.timeout_ms else session.flush_timeout_ns
        self._flush(session, now, timeout, req.flags, done)

    def _flush(self, session: Session, now: int, timeout_ns: int, flags: int, done) -> None:
        flush = PendingFlush(self._flush_ids.next(), set(), now + timeout_ns, done)
        session.flushes_requested += 1
        by_producer: dict[int, list[int]] = {}
        for instance in session.instances.values():
            if not instance.no_flush:
                by_producer.setdefault(instance.producer_id, []).append(instance.id)
        for producer_id, instance_ids in by_producer.items():
            producer = self._producer_by_id(producer_id)
            if producer is None:
                continue
            flush.producers.add(producer_id)
            req = ipc.FlushRequest(
                flush_request_id=flush.id, instance_ids=instance_ids, flags=flags
            )
            self._to_producer(producer.peer, flush=req)
        session.flushes[flush.id] = flush
        if not flush.producers:
            self._complete_flush(session, flush, True)

    def _flush_acked(self, producer_id: int, flush_id_untrusted: int, now: int) -> None:
        for session in list(self.sessions.values()):
            for flush in list(session.flushes.values()):
                if flush.id <= flush_id_untrusted:
                    self._flush_acked_in(session, flush, producer_id, now)

    def _flush_acked_in(self, session: Session, flush: PendingFlush, producer_id, now) -> None:
        flush.producers.discard(producer_id)
        if not flush.producers and flush.id in session.flushes:
            self._complete_flush(session, flush, True)

    def _complete_flush(self, session: Session, flush: PendingFlush, success: bool) -> None:
        session.flushes.pop(flush.id, None)
        self._scrape_session(session)
        if success:
            session.flushes_succeeded += 1
            self._service_event(session, "all_data_sources_flushed")
        else:
            session.flushes_failed += 1
        flush.done(success)

    def _scrape_session(self, session: Session) -> None:
        ids = set(session.buffer_ids)
        for instance_producer in {i.producer_id for i in session.instances.values()}:
            producer = self._producer_by_id(instance_producer)
            if producer is not None:
                self._commit.scrape(producer, ids)

    # -- timers ------------------------------------------------------------------------------------

    def _session_timers(self, session: Session, now: int) -> None:
        for flush in list(session.flushes.values()):
            if flush.deadline <= now:
                self._complete_flush(session, flush, False)
        if session.stop_deadline is not None and session.stop_deadline <= now:
            self._maybe_disabled(session, now, force=True)
        if session.duration_deadline is not None and session.duration_deadline <= now:
            session.duration_deadline = None
            self._flush(session, now, session.flush_timeout_ns, 0, self._stopper(session))
        period = session.config.flush_period_ms * 1_000_000
        if session.next_periodic_flush is not None and session.next_periodic_flush <= now:
            session.next_periodic_flush = now + period
            self._flush(session, now, session.flush_timeout_ns, 0, lambda ok: None)

    def _stopper(self, session: Session):
        """After the flush that ends a session's duration: stop it."""
        return lambda _ok: self._disable(session, self.now)

    # -- read-back, stats, state ------------------------------------------------------------------

    def _c_read_buffers(self, peer: Peer, request_id: int, req, now: int) -> None:
        session = self._session_of(peer)
        packets: list[bytes] = []
        if session is not None:
            ctx = ReadContext(
                self.buffers, self.uid, self.pid, self._clocks.boottime(), self._trace_stats
            )
            packets = read_session(session, ctx)
        for reply in reports.read_replies(packets):
            self._to_consumer(peer.identity, request_id, read_buffers=reply)

    def _trace_stats(self, session: Session | None) -> pb.TraceStats:
        return reports.trace_stats(self, session)

    def _c_get_trace_stats(self, peer: Peer, request_id: int, req, now: int) -> None:
        stats = self._trace_stats(self._session_of(peer)).SerializeToString()
        reply = ipc.GetTraceStatsResponse(trace_stats=stats)
        self._to_consumer(peer.identity, request_id, trace_stats=reply)

    def _c_query_service_state(self, peer: Peer, request_id: int, req, now: int) -> None:
        reply = reports.service_state(self, peer.uid)
        self._to_consumer(peer.identity, request_id, service_state=reply)

    def _c_observe_events(self, peer: Peer, request_id: int, req, now: int) -> None:
        session = self._session_of(peer)
        if session is None:
            self._ack(peer.identity, request_id, "no tracing session")
            return
        session.observer_request_id = request_id
        session.observe_types = set(req.types)
        self._ack(peer.identity, request_id)
        for instance in session.instances.values():  # replay the current state
            producer = self._producer_by_id(instance.producer_id)
            if producer is not None:
                self._notify_instance(session, instance, producer)
        if session.all_started_reported and 2 in session.observe_types:
            self._to_consumer(
                peer.identity,
                request_id,
                events=ipc.ObservableEvents(all_data_sources_started=True),
            )

    def _c_heartbeat(self, peer: Peer, request_id: int, req, now: int) -> None:
        pass

    def _notify_instance(self, session: Session, instance: Instance, producer) -> None:
        """Tell an observer an instance is STARTED or STOPPED (CONFIGURED shows as
        STOPPED); the transient STARTING and STOPPING are not reported."""
        if not session.observer_request_id or 1 not in session.observe_types:
            return
        if instance.state not in REPORTED_INSTANCE:
            return
        change_type = ipc.ObservableEvents.DataSourceInstanceStateChange
        change = change_type(
            producer_id=producer.id,
            producer_name=producer.name,
            data_source_name=instance.name,
            instance_id=instance.id,
            state=(
                change_type.STATE_STARTED
                if instance.state is InstanceState.STARTED
                else change_type.STATE_STOPPED
            ),
        )
        events = ipc.ObservableEvents(instance_state_changes=[change])
        self._to_consumer(session.consumer, session.observer_request_id, events=events)

    def _service_event(self, session: Session, event: str) -> None:
        fill = readback.service_event_fill(self._clocks.boottime(), event)
        session.service_events.append(readback.service_packet(self.uid, self.pid, fill))
