"""A session's life: its buffers and data source instances, start, stop, free.

Session and instance states change only through actors/core/lifecycle.py;
this module decides when, and tells producers (setup, start, stop) and the
observing consumer (instance state changes, all data sources started). Flushes
are in flushes.py; a session's pending flushes are failed by the caller before
`free`.
"""

from __future__ import annotations

import random

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import incremental_state, reports, service_packets, trigger_modes
from actors.core.config_rules import producer_entry
from actors.core.lifecycle import (
    AWAITING_STOP_ACK,
    LIVE_SESSION,
    RECORDING_SESSION,
    REPORTED_INSTANCE,
    RUNNING_INSTANCE,
    InstanceEvent,
    SessionEvent,
    apply,
    can_apply,
)
from actors.core.outbox import Peer
from actors.core.producers import ProducerEntry
from actors.core.service_context import ServiceContext
from actors.core.sessions import (
    Instance,
    Session,
    machine_matches,
    producer_matches,
    target_buffer_index,
)
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import Geometry, SharedMemoryABI, resolve_geometry
from shm.trace_buffer import TraceBuffer

NS_PER_MS = 1_000_000
_INT64 = 1 << 63
# ObserveEventsRequest.Type values a consumer subscribes to.
OBSERVE_INSTANCES = ipc.ObserveEventsRequest.TYPE_DATA_SOURCES_INSTANCES
OBSERVE_ALL_STARTED = ipc.ObserveEventsRequest.TYPE_ALL_DATA_SOURCES_STARTED
_CHANGE = ipc.ObservableEvents.DataSourceInstanceStateChange


def trace_uuid(config: pb.TraceConfig, rng: random.Random) -> tuple[int, int]:
    """(msb, lsb) of a new session's trace UUID, as int64s (TraceUuid's fields):
    the config's, if it sets one, else random."""
    if config.trace_uuid_msb or config.trace_uuid_lsb:
        return config.trace_uuid_msb, config.trace_uuid_lsb
    return rng.getrandbits(64) - _INT64, rng.getrandbits(64) - _INT64


def _matches(config: pb.TraceConfig, ds: pb.TraceConfig.DataSource, p: ProducerEntry) -> bool:
    """The producer and machine filters of a data source entry."""
    if not machine_matches(ds, config.trace_all_machines, p.machine_id, p.machine_name):
        return False
    return producer_matches(ds, p.name)


def _kib(geometry: Geometry) -> str:
    return f"{geometry.size // 1024} KiB in pages of {geometry.page_size // 1024} KiB"


def _note(session: Session, note: str) -> None:
    if note not in session.smb_notes:
        session.smb_notes.append(note)


class SessionControl:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    # -- enable: buffers and instances --------------------------------------------------

    def create(
        self, peer: Peer, request_id: int, config: pb.TraceConfig, buffers: list[TraceBuffer]
    ) -> Session:
        """A CONFIGURED session with its buffers (one per config.buffers entry,
        allocated by the caller), and instances on every matching producer (the
        config was checked against the limits already)."""
        ctx = self._ctx
        session = Session(
            ctx.session_ids.next(), peer.identity, peer.uid, config, request_id, peer.pid
        )
        for buffer in buffers:
            buffer_id = ctx.buffer_ids.allocate()
            # The consumer port refuses a session with more buffers than free ids.
            assert buffer_id is not None, "a session was enabled without free buffer ids"
            ctx.buffers[buffer_id] = buffer
            session.buffer_ids.append(buffer_id)
        session.uuid_msb, session.uuid_lsb = trace_uuid(config, ctx.rng)
        apply(session, SessionEvent.ENABLE)
        ctx.sessions[session.id] = session
        for producer in ctx.producers.values():
            for name in producer.data_sources:
                self._setup_instances(session, producer, name)
        return session

    def unmatched_data_sources(self, config: pb.TraceConfig) -> list[str]:
        """The config's data sources that no connected producer offers, after the
        producer filters: each name once, in the config's order (the consumer warns;
        a producer offering one may still connect while the session runs)."""
        producers = list(self._ctx.producers.values())
        unmatched: dict[str, None] = {}
        for ds in config.data_sources:
            name = ds.config.name
            if name in unmatched:
                continue
            offered = (p for p in producers if name in p.data_sources)
            if not any(_matches(config, ds, p) for p in offered):
                unmatched[name] = None
        return list(unmatched)

    def join_running_sessions(self, producer: ProducerEntry, name: str) -> None:
        """A data source registered late: instances in every live session that wants it."""
        for session in self._ctx.sessions.values():
            if session.state not in LIVE_SESSION:
                continue
            for instance in self._setup_instances(session, producer, name):
                if session.state in RECORDING_SESSION:
                    self._start_instance(session, instance, producer)

    def _setup_instances(
        self, session: Session, producer: ProducerEntry, name: str
    ) -> list[Instance]:
        created = []
        for ds in session.config.data_sources:
            if ds.config.name != name or not _matches(session.config, ds, producer):
                continue
            index = target_buffer_index(session.config, ds.config)[0]
            buffer_id = session.buffer_ids[index]
            if not self._ensure_smb(producer, session):
                break  # no SMB for this producer now: the next entry would not get one
            instance = self._new_instance(session, producer, ds.config, buffer_id)
            created.append(instance)
            setup = ipc.SetupDataSource(instance_id=instance.id, data_source_config=instance.config)
            self._ctx.out.to_producer(producer.peer, setup_data_source=setup)
        return created

    def _new_instance(
        self,
        session: Session,
        producer: ProducerEntry,
        ds_config: pb.DataSourceConfig,
        buffer_id: int,
    ) -> Instance:
        config = pb.DataSourceConfig()
        config.CopyFrom(ds_config)
        config.target_buffer = buffer_id
        config.tracing_session_id = session.id
        config.stop_timeout_ms = session.config.data_source_stop_timeout_ms
        config.trace_duration_ms = session.config.duration_ms
        # As traced: the data source may trust these (config_rules.SERVICE_SET_...).
        config.enable_extra_guardrails = session.config.enable_extra_guardrails
        config.ClearField("session_initiator")
        desc = producer.data_sources[ds_config.name]
        instance = Instance(
            self._ctx.instance_ids.next(),
            producer.id,
            ds_config.name,
            config.SerializeToString(),
            buffer_id,
            desc.will_notify_on_start,
            desc.will_notify_on_stop,
            desc.no_flush,
        )
        session.instances[instance.id] = instance
        if producer.machine_id:
            session.machines.add(producer.machine_id)
        producer.allow(buffer_id)
        return instance

    def _ensure_smb(self, producer: ProducerEntry, session: Session) -> bool:
        """The producer's SMB, created on its first instance: sized by the session's
        `producers` entry for its name if there is one (within shm.abi's geometry
        rules and the SMB limits; else from the producer's own hints), as traced does.
        An entry that cannot be honoured is noted in session.smb_notes."""
        if producer.smb is not None or producer.remote_geometry is not None:
            self._note_smb_kept(session, producer)
            return True
        geometry = self._smb_geometry(session, producer)
        if producer.machine_id:
            return self._remote_smb(producer, geometry)
        if self._smb_refused(producer, geometry.size):
            return False
        try:
            smb = producer.smb = self._ctx.smb_factory(geometry, producer.pid, producer.uid)
        except OSError:
            return False
        producer.abi = SharedMemoryABI(smb.buf, geometry)
        setup = ipc.SetupTracing(
            shm_size_bytes=geometry.size,
            shm_page_size_bytes=geometry.page_size,
            shm_token=smb.token,
            shm_socket=smb.socket,
        )
        self._ctx.out.to_producer(producer.peer, setup_tracing=setup)
        return True

    def _remote_smb(self, producer: ProducerEntry, geometry: Geometry) -> bool:
        """A relayed producer's SMB lives on its machine: its relay makes it, told
        the geometry only (no memory here, so no SMB limit of this machine)."""
        producer.remote_geometry = geometry
        setup = ipc.SetupTracing(
            shm_size_bytes=geometry.size, shm_page_size_bytes=geometry.page_size
        )
        self._ctx.out.to_producer(producer.peer, setup_tracing=setup)
        return True

    def _smb_geometry(self, session: Session, producer: ProducerEntry) -> Geometry:
        hinted = resolve_geometry(producer.shm_size_hint, producer.shm_page_hint)
        index = producer_entry(session.config, producer.name)
        if index is None:
            return hinted
        entry = session.config.producers[index]
        size = entry.shm_size_kb * 1024 or producer.shm_size_hint
        page = entry.page_size_kb * 1024 or producer.shm_page_hint
        geometry = resolve_geometry(size, page)
        over = self._smb_limit(producer, geometry.size)
        if over is not None and geometry != hinted:
            # The config's SMB would take the producer past a limit: its own hints
            # still give it an SMB (and the session its data).
            note = f"{_kib(geometry)} would pass {over[0]}; {_kib(hinted)} used"
            _note(session, f"producers[{index}] (producer {producer.name!r}: {note})")
            return hinted
        return geometry

    def _note_smb_kept(self, session: Session, producer: ProducerEntry) -> None:
        """A producer keeps the SMB it has (one per producer serves every session):
        note a producers entry that asked for another."""
        index = producer_entry(session.config, producer.name)
        have = producer.abi.geometry if producer.abi is not None else producer.remote_geometry
        if index is None or have is None:
            return
        entry = session.config.producers[index]
        size, page = entry.shm_size_kb * 1024, entry.page_size_kb * 1024
        if (size and size != have.size) or (page and page != have.page_size):
            note = f"producer {producer.name!r} already has an SMB of {_kib(have)}"
            _note(session, f"producers[{index}] ({note})")

    def _smb_limit(self, producer: ProducerEntry, size: int) -> tuple[str, str, int] | None:
        """(limit name, whose, limit) of the first SMB limit that an SMB of `size`
        bytes would take the producer's process or user past, or None."""
        ctx = self._ctx
        held = (
            ("max_smb_bytes_per_process", "process", ctx.producers.smb_bytes(pid=producer.pid)),
            ("max_smb_bytes_per_uid", "user", ctx.producers.smb_bytes(uid=producer.uid)),
        )
        for name, whose, taken in held:
            limit = getattr(ctx.limits, name)
            if taken + size > limit:
                return name, whose, limit
        return None

    def _smb_refused(self, producer: ProducerEntry, size: int) -> bool:
        """Whether an SMB of `size` bytes would take the producer's process or user
        past its limit; if so the producer is told (it gets no SMB, so no instance,
        this time) and the refusal counted."""
        over = self._smb_limit(producer, size)
        if over is None:
            return False
        name, whose, limit = over
        self._ctx.refuse(name)
        error = f"no SMB of {size} bytes: its {whose} would pass {name} ({limit} bytes)"
        self._ctx.out.to_producer(producer.peer, error=error)
        return True

    # -- start ----------------------------------------------------------------------------

    def start(self, session: Session, now: int) -> None:
        apply(session, SessionEvent.START)
        self._ctx.start_clock_snapshot(session)
        self._ctx.service_event(session, "tracing_started")
        if not session.config.builtin_data_sources.disable_clock_snapshotting:
            interval = service_packets.snapshot_interval_ns(session.config)
            session.next_clock_snapshot = now + interval
        duration_ms = trigger_modes.duration_ms(session.config)  # trigger_timeout_ms for STOP
        if duration_ms:
            session.duration_deadline = now + duration_ms * NS_PER_MS
        if session.config.flush_period_ms:
            session.next_periodic_flush = now + session.config.flush_period_ms * NS_PER_MS
        session.next_incremental_clear = incremental_state.first_clear(session, now)
        for instance in session.instances.values():
            producer = self._ctx.producers.by_id(instance.producer_id)
            if producer is not None:
                self._start_instance(session, instance, producer)
        self._maybe_all_started(session)

    def _start_instance(
        self, session: Session, instance: Instance, producer: ProducerEntry
    ) -> None:
        apply(instance, InstanceEvent.START)
        if not instance.notify_on_start:
            apply(instance, InstanceEvent.STARTED)  # no ack will come: started as sent
        start = ipc.StartDataSource(instance_id=instance.id, data_source_config=instance.config)
        self._ctx.out.to_producer(producer.peer, start_data_source=start)
        self._notify_instance(session, instance, producer)

    def _maybe_all_started(self, session: Session) -> None:
        if session.all_started_reported or session.state not in RECORDING_SESSION:
            return
        if all(i.state in RUNNING_INSTANCE for i in session.instances.values()):
            session.all_started_reported = True
            self._ctx.clock_snapshot(session)
            self._ctx.service_event(session, "all_data_sources_started")
            if session.observer_request_id and OBSERVE_ALL_STARTED in session.observe_types:
                events = ipc.ObservableEvents(all_data_sources_started=True)
                self._ctx.out.to_consumer(
                    session.consumer, session.observer_request_id, events=events
                )

    def instance_acked(
        self, producer: ProducerEntry, instance_id_untrusted: int, event: InstanceEvent, now: int
    ) -> None:
        """A producer says one of its instances started or stopped; an ack the
        instance's state does not expect (late, repeated, forged) is ignored."""
        found = self._instance_of(producer, instance_id_untrusted)
        if found is None or not can_apply(found[1], event):
            return
        session, instance = found
        apply(instance, event)
        self._notify_instance(session, instance, producer)
        if event is InstanceEvent.STARTED:
            self._maybe_all_started(session)
        else:
            self.finish_disable(session, now)

    def _instance_of(
        self, producer: ProducerEntry, instance_id_untrusted: int
    ) -> tuple[Session, Instance] | None:
        for session in self._ctx.sessions.values():
            instance = session.instances.get(instance_id_untrusted)
            if instance is not None and instance.producer_id == producer.id:
                return session, instance
        return None

    # -- stop and free -----------------------------------------------------------------------

    def disable(self, session: Session, now: int) -> None:
        """Ask every instance to stop; a session that is not live is left alone."""
        if not can_apply(session, SessionEvent.DISABLE):
            return
        apply(session, SessionEvent.DISABLE)
        session.duration_deadline = session.next_periodic_flush = None
        session.next_incremental_clear = session.next_clock_snapshot = None
        session.stop_deadline = now + session.stop_timeout_ns
        for instance in session.instances.values():
            apply(instance, InstanceEvent.STOP)
            producer = self._ctx.producers.by_id(instance.producer_id)
            if producer is None or not instance.notify_on_stop:
                apply(instance, InstanceEvent.STOPPED)  # no ack will come
            if producer is None:
                continue
            stop = ipc.StopDataSource(instance_id=instance.id)
            self._ctx.out.to_producer(producer.peer, stop_data_source=stop)
            self._notify_instance(session, instance, producer)
        self.finish_disable(session, now)

    def finish_disable(self, session: Session, now: int, force: bool = False) -> None:
        """A disabling session whose stop acks are in (or, `force`, given up on)
        becomes DISABLED: scrape, tell the consumer, answer disable requests."""
        if not can_apply(session, SessionEvent.STOPPED):
            return
        stopping = [i for i in session.instances.values() if i.state in AWAITING_STOP_ACK]
        if stopping and not force:
            return
        overdue = session.stop_deadline is not None and now >= session.stop_deadline
        timed_out = []
        for instance in stopping:  # its stop ack never came
            apply(instance, InstanceEvent.STOPPED)
            producer = self._ctx.producers.by_id(instance.producer_id)
            if producer is not None:
                self._notify_instance(session, instance, producer)
                if overdue:  # (not when freed at once: nobody waited)
                    timed_out.append(f"{producer.name}/{instance.name}")
        apply(session, SessionEvent.STOPPED)
        session.stop_deadline = None
        # After every stop ack (or the timeout): the last scrape, so that nothing a
        # stopped writer committed reaches a buffer after the consumer's final read.
        self._ctx.scrape_session(session)
        self._ctx.clock_snapshot(session)
        self._ctx.service_event(session, "tracing_disabled")
        file = self._ctx.files.get(session.id)
        if file is not None:
            file.end(session.id, timed_out)  # file_writes.py tells the consumer after it
            return
        self.tell_ended(session, timed_out)

    def tell_ended(self, session: Session, timed_out: list[str]) -> None:
        """The session's end reply (with the error of its trace file, if writing it
        failed), and the answers to disable requests; a detached session's end is
        kept for the consumer that attaches, or it is freed (detach.py)."""
        session.end_stop_timed_out = tuple(timed_out)  # for a consumer that attaches
        if session.detach_key:  # nobody to tell (actors/core/detach.py)
            session.free_due = session.stopped_on_its_own
            return
        out = self._ctx.out
        file = self._ctx.files.get(session.id)
        reply = ipc.EnableTracingResponse(
            disabled=True,
            session_id=session.id,
            stop_timed_out=timed_out,
            error=file.error if file is not None else "",
        )
        reports.bound_name_lists(reply)  # names from the config and producers
        if not session.end_reply_held:
            out.to_consumer(session.consumer, session.enable_request_id, enable_tracing=reply)
        for request_id in session.disable_waiters:
            out.ack(session.consumer, request_id)
        session.disable_waiters.clear()

    def stop_now(self, session: Session, now: int) -> None:
        """Stop the session at once, without waiting for stop acks (before `free`:
        a write_into_file session's last drain runs between the two)."""
        self.disable(session, now)
        self.finish_disable(session, now, force=True)

    def free(self, session: Session, now: int) -> None:
        """Stop the session at once (no waiting for acks) and drop its buffers."""
        ctx = self._ctx
        self.stop_now(session, now)
        for instance in session.instances.values():
            producer = ctx.producers.by_id(instance.producer_id)
            if producer is not None:
                producer.disallow(instance.target_buffer)
        for buffer_id in session.buffer_ids:
            del ctx.buffers[buffer_id]
            ctx.relay_loss.pop(buffer_id, None)
            ctx.buffer_ids.release(buffer_id)
        del ctx.sessions[session.id]

    def forget_instances(self, session: Session, producer_id: int) -> None:
        """A producer is gone: its instances leave the session (finish_disable
        then no longer waits for their stop acks)."""
        gone = [i for i in session.instances.values() if i.producer_id == producer_id]
        for instance in gone:
            del session.instances[instance.id]

    def unregistered(self, producer: ProducerEntry, name: str, now: int) -> None:
        """A producer unregistered data source `name`: its instances leave every
        session, and no longer let it write into their buffers."""
        for session in list(self._ctx.sessions.values()):
            gone = [
                i
                for i in session.instances.values()
                if i.producer_id == producer.id and i.name == name
            ]
            for instance in gone:
                del session.instances[instance.id]
                producer.disallow(instance.target_buffer)
            if gone:
                self._maybe_all_started(session)
                self.finish_disable(session, now)  # it may have waited for their stop

    # -- observers -----------------------------------------------------------------------------

    def observe(self, session: Session, request_id: int, types: set[int]) -> None:
        """Subscribe the session's consumer, and replay the current state."""
        session.observer_request_id = request_id
        session.observe_types = types
        self._ctx.out.ack(session.consumer, request_id)
        for instance in session.instances.values():
            producer = self._ctx.producers.by_id(instance.producer_id)
            if producer is not None:
                self._notify_instance(session, instance, producer)
        if session.all_started_reported and OBSERVE_ALL_STARTED in session.observe_types:
            events = ipc.ObservableEvents(all_data_sources_started=True)
            self._ctx.out.to_consumer(session.consumer, request_id, events=events)

    def _notify_instance(
        self, session: Session, instance: Instance, producer: ProducerEntry
    ) -> None:
        """Tell an observer an instance is STARTED or STOPPED (CONFIGURED shows as
        STOPPED); the transient STARTING and STOPPING are not reported."""
        if not session.observer_request_id or OBSERVE_INSTANCES not in session.observe_types:
            return
        if instance.state not in REPORTED_INSTANCE:
            return
        started = instance.state in RUNNING_INSTANCE
        change = _CHANGE(
            producer_id=producer.id,
            producer_name=producer.name,
            data_source_name=instance.name,
            instance_id=instance.id,
            state=_CHANGE.STATE_STARTED if started else _CHANGE.STATE_STOPPED,
        )
        events = ipc.ObservableEvents(instance_state_changes=[change])
        self._ctx.out.to_consumer(session.consumer, session.observer_request_id, events=events)
