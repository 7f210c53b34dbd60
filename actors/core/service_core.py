"""ServiceCore: the tracing service without I/O.

The shell feeds it decoded envelopes with the sender's trusted identity (the
ROUTER identity plus pid and uid from the kernel), tells it when a peer went
away, calls on_timer() at next_deadline(), and, while pending_work() (a read
being answered in slices), continue_reads() once per loop turn with a time
budget (drains into write_into_file sessions' files run the same way: see
file_writes.py). It answers with outputs: the envelopes to send and the file
writes to do, in order (a write that fails comes back as file_failed). The
shell also passes in an SMB factory, a file opener, the clocks (for clock
snapshots and service packet timestamps) and the host's SystemInfo.

Every message kind of the protocol is routed by one of the two dispatch tables
built in ServiceCore.__init__ (producer_handlers, consumer_handlers; the
producer's initialize_connection comes first, outside the table) or answered
"not supported" (NOT_SUPPORTED); a kind in neither, or an envelope with no
message, gets an error reply and is counted
(ServiceCounters.messages_not_handled). The work is done by the parts that
service_context.py draws.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import incremental_state
from actors.core.clones import Clones
from actors.core.consumer_port import ConsumerPort
from actors.core.file_sink import FileOpener, no_files
from actors.core.file_writes import FileWrites
from actors.core.flushes import Flushes
from actors.core.machines import Machine
from actors.core.outbox import (
    AppendToFile,
    CloseFile,
    Output,
    Peer,
    ToConsumer,
    ToProducer,
    ToRelay,
)
from actors.core.producer_port import ProducerPort
from actors.core.producer_table import ProducerTable
from actors.core.producers import ProducerEntry, ServiceCounters, SmbFactory
from actors.core.readback import SliceBudget
from actors.core.relays import RELAYED_PREFIX, RelayPort, relayed_identity
from actors.core.service_context import Clocks, ServiceContext
from actors.core.service_packets import ClockReading
from actors.core.session_control import SessionControl
from actors.core.sessions import DEFAULT_LIMITS, Limits, Session, StopSession
from actors.core.triggers import Triggers
from protos import tracebus_ipc_pb2 as ipc
from shm.trace_buffer import TraceBuffer

__all__ = [
    "AppendToFile",
    "Clocks",
    "CloseFile",
    "Peer",
    "ServiceCore",
    "SliceBudget",
    "ToConsumer",
    "ToProducer",
    "ToRelay",
]

ProducerHandler = Callable[[ProducerEntry, int, Any, int], None]
ConsumerHandler = Callable[[Peer, int, Any, int], None]

# Message kinds the protocol defines and this service declines, with the reason.
NOT_SUPPORTED: dict[str, str] = {}

UNTIMED_SLICE = SliceBudget()  # a slice bounded by size alone (tests, a fake clock)


class ServiceCore:
    def __init__(
        self,
        smb_factory: SmbFactory,
        clocks: Clocks,
        uid: int,
        service_pid: int,
        limits: Limits = DEFAULT_LIMITS,
        open_file: FileOpener = no_files,
        rng: random.Random | None = None,
        system_info: pb.SystemInfo | None = None,
    ) -> None:
        ctx = self._ctx = ServiceContext(
            smb_factory, clocks, uid, service_pid, limits, open_file, rng, system_info
        )
        self._control = SessionControl(ctx)
        clones = Clones(ctx)
        self._flushes = Flushes(ctx, self._control, clones)
        self._files = FileWrites(ctx, self._control)
        t = self._triggers = Triggers(ctx, self._control)
        self._drains_first = False  # flips every continue_reads
        p = self._producer_port = ProducerPort(ctx, self._control, self._flushes)
        self._relay_port = RelayPort(ctx, p.gone)
        c = self._consumer_port = ConsumerPort(
            ctx, self._control, self._flushes, self._files, clones
        )
        # initialize_connection is handled before the table: it has no producer yet.
        self.producer_handlers: dict[str, ProducerHandler] = {
            "register_data_source": p.register_data_source,
            "unregister_data_source": p.unregister_data_source,
            "register_trace_writer": p.register_trace_writer,
            "unregister_trace_writer": p.unregister_trace_writer,
            "commit_data": p.commit_data,
            "smb_mapped": p.smb_mapped,
            "data_source_started": p.data_source_started,
            "data_source_stopped": p.data_source_stopped,
            "heartbeat": p.heartbeat,
            "activate_triggers": t.from_producer,
        }
        self.consumer_handlers: dict[str, ConsumerHandler] = {
            "hello": c.hello,
            "enable_tracing": c.enable_tracing,
            "start_tracing": c.start_tracing,
            "disable_tracing": c.disable_tracing,
            "flush": c.flush,
            "read_buffers": c.read_buffers,
            "free_buffers": c.free_buffers,
            "get_trace_stats": c.get_trace_stats,
            "query_service_state": c.query_service_state,
            "observe_events": c.observe_events,
            "detach": c.detach,
            "attach": c.attach,
            "clone_session": c.clone_session,
            "heartbeat": c.heartbeat,
            "activate_triggers": t.from_consumer,
        }

    # What tests and reports look at.
    @property
    def producers(self) -> ProducerTable:
        return self._ctx.producers

    @property
    def sessions(self) -> dict[int, Session]:
        return self._ctx.sessions

    @property
    def buffers(self) -> dict[int, TraceBuffer]:
        return self._ctx.buffers

    @property
    def counters(self) -> ServiceCounters:
        return self._ctx.counters

    @property
    def limits(self) -> Limits:
        return self._ctx.limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self._ctx.limits = limits

    # -- entry points -----------------------------------------------------------------

    def handle_producer(self, peer: Peer, msg: ipc.ProducerToService, now: int) -> list[Output]:
        if peer.identity.startswith(RELAYED_PREFIX):  # a local peer posing as a relayed one
            reply = ipc.ServiceToProducer(request_id=msg.request_id)
            reply.error.message = "this routing id is reserved for producers behind a relay"
            return [ToProducer(peer.identity, reply)]
        return self._producer_message(peer, msg, now)

    def _producer_message(self, peer: Peer, msg: ipc.ProducerToService, now: int) -> list[Output]:
        kind = msg.WhichOneof("msg")
        if kind == "initialize_connection":
            self._producer_port.initialize(peer, msg.request_id, msg.initialize_connection)
            return self._ctx.out.drain()
        producer = self._ctx.producers.get(peer.identity)
        handler = self.producer_handlers.get(kind) if kind else None
        if producer is None:
            error = "initialize the connection first"
        elif handler is None:
            error = self._not_handled(kind)
        else:
            handler(producer, msg.request_id, getattr(msg, kind), now)
            return self._ctx.out.drain()
        self._ctx.out.to_producer(peer.identity, msg.request_id, error=error)
        return self._ctx.out.drain()

    def handle_consumer(self, peer: Peer, msg: ipc.ConsumerToService, now: int) -> list[Output]:
        kind = msg.WhichOneof("msg")
        handler = self.consumer_handlers.get(kind) if kind else None
        if handler is None:
            self._ctx.out.consumer_error(peer.identity, msg.request_id, self._not_handled(kind))
        else:
            handler(peer, msg.request_id, getattr(msg, kind), now)
        return self._ctx.out.drain()

    def handle_relay(
        self,
        relay: bytes,
        msg: ipc.RelayToService,
        now: int,
        clocks: ClockReading,
        key: str = "",
    ) -> list[Output]:
        """A relay's control message (channel 0). `clocks`: the shell's clocks read on
        receipt (a SyncClock round's host side); `key`: the relay's CURVE public key."""
        self._relay_port.handle(relay, msg, now, clocks, key)
        return self._ctx.out.drain()

    def handle_relay_producer(
        self, relay: bytes, channel: int, msg: ipc.ProducerToService, now: int, key: str = ""
    ) -> list[Output]:
        """A message of the relay's local producer `channel` (>= 1): the producer port's,
        its pid and uid the ones its relay's kernel gave (claimed_pid/uid)."""
        if channel < 1 or not self._relay_port.known(relay, now, key):
            return self._ctx.out.drain()
        machine = self._ctx.machines.of_relay(relay)
        assert machine is not None
        identity = relayed_identity(relay, channel)
        producer = self._ctx.producers.get(identity)
        if producer is None and msg.WhichOneof("msg") == "initialize_connection":
            init = msg.initialize_connection
            self._ctx.out.relayed[identity] = (relay, channel)
            peer = Peer(identity, init.claimed_pid, init.claimed_uid, machine.id)
            outputs = self._producer_message(peer, msg, now)
            producer = self._ctx.producers.get(identity)
            if producer is None:
                self._ctx.out.relayed.pop(identity, None)
            else:
                producer.machine_id, producer.machine_name = machine.id, machine.name
                self._ctx.remote_producer(producer.id, producer.uid, producer.pid, machine.id)
            return outputs
        if producer is None:
            error = "initialize the connection first"
            self._ctx.out.to_relay(relay, msg.request_id, error=f"channel {channel}: {error}")
            return self._ctx.out.drain()
        if msg.WhichOneof("msg") == "commit_data":
            self._relay_port.received(relay, producer, msg.commit_data)
        peer = Peer(identity, producer.pid, producer.uid, machine.id)
        return self._producer_message(peer, msg, now)

    def relay_lost(self, relay: bytes, now: int) -> list[Output]:
        """The relay's link is gone (silent past the timeout): its producers end as
        gone producers (what they committed is kept); its machine stays listed."""
        self._relay_port.lost(relay, now)
        return self._ctx.out.drain()

    def machine_of_relay(self, relay: bytes) -> Machine | None:
        return self._ctx.machines.of_relay(relay)

    def heartbeat_relays(self) -> list[Output]:
        """A heartbeat to every connected relay, sent every second on our own: the
        relay hears us even while its own heartbeats wait behind its chunks on a
        slow link (its link timeout counts what it hears from us)."""
        for machine in self._ctx.machines:
            if machine.connected:
                self._ctx.out.to_relay(machine.relay, heartbeat=ipc.Heartbeat())
        return self._ctx.out.drain()

    def relays_silent(self, now: int, timeout_ns: int) -> list[bytes]:
        """Relays that sent nothing for `timeout_ns` (the shell calls relay_lost)."""
        return self._ctx.machines.expired(now, timeout_ns)

    def next_relay_expiry(self, timeout_ns: int) -> int | None:
        return self._ctx.machines.next_expiry(timeout_ns)

    def _not_handled(self, kind: str | None) -> str:
        self._ctx.counters.messages_not_handled += 1
        if kind is None:
            return "the message carries no request this service knows"
        return NOT_SUPPORTED.get(kind, f"{kind} is not handled by this service")

    def producer_gone(self, identity: bytes, now: int) -> list[Output]:
        self._producer_port.gone(identity, now)
        return self._ctx.out.drain()

    def consumer_gone(self, identity: bytes, now: int) -> list[Output]:
        self._consumer_port.gone(identity, now)
        return self._ctx.out.drain()

    def file_failed(self, file_id: int, error: str, now: int) -> list[Output]:
        """The shell could not write a write_into_file session's file (ENOSPC, EIO...)
        and closed it: the session ends, its consumer told why."""
        self._files.failed(file_id, error, now)
        return self._ctx.out.drain()

    def shutdown(self, now: int) -> list[Output]:
        """Stop every session and release every SMB (SIGINT/SIGTERM)."""
        for session in list(self._ctx.sessions.values()):
            self._consumer_port.free(session, now)
        for producer in self._ctx.producers.values():
            producer.release_smb()
        return self._ctx.out.drain()

    # -- work between messages -------------------------------------------------------------

    def pending_work(self, may_send: Callable[[bytes], bool] = lambda _consumer: True) -> bool:
        """True while a read waits for its next slice and its consumer may take
        one, or a write_into_file drain has more to write: the shell then calls
        continue_reads once per loop turn, between the messages it receives."""
        return self._consumer_port.reads_pending(may_send) or self._files.pending()

    def continue_reads(self, now: int, budget: SliceBudget = UNTIMED_SLICE) -> list[Output]:
        """The next slice of each pending read and of each drain into a file
        (write_into_file), within `budget` (its time_up is the shell's clock)."""
        # Consumers' reads and file drains go first in turn, so that neither starves
        # the other when a turn's time runs out.
        self._drains_first = not self._drains_first
        if self._drains_first:
            self._files.continue_drains(budget, now)
            if not budget.time_up():
                self._consumer_port.continue_reads(budget)
        else:
            self._consumer_port.continue_reads(budget)
            if not budget.time_up():
                self._files.continue_drains(budget, now)
        return self._ctx.out.drain()

    # -- timers -----------------------------------------------------------------------

    def on_timer(self, now: int) -> list[Output]:
        for session in list(self._ctx.sessions.values()):
            self._session_timers(session, now)
        return self._ctx.out.drain()

    def next_deadline(self) -> int | None:
        deadlines: list[int] = []
        for s in self._ctx.sessions.values():
            timers = (
                s.duration_deadline,
                s.stop_deadline,
                s.next_periodic_flush,
                s.next_incremental_clear,
                s.next_clock_snapshot,
            )
            deadlines += [d for d in timers if d is not None]
            deadlines += [f.deadline for f in s.flushes.values()]
            deadlines += self._triggers.deadlines(s)
            if s.free_due:  # a detached session that ended on its own: at once
                deadlines.append(0)
        deadlines += self._files.deadlines()
        return min(deadlines) if deadlines else None

    def _session_timers(self, session: Session, now: int) -> None:
        """Flush timeouts, the stop timeout, the end of duration_ms (flush, then
        stop), the periodic flush, the periodic incremental state clear, the
        periodic clock snapshot, the periodic drain into the session's file, the
        triggers' timers (a START session's trigger_timeout_ms, CLONE_SNAPSHOT hits
        after stop_delay_ms), and the free of a detached session that ended on its
        own (actors/core/detach.py)."""
        if session.free_due:
            self._consumer_port.free(session, now)
            return
        self._flushes.expire(session, now)
        self._triggers.on_timer(session, now)
        if session.stop_deadline is not None and session.stop_deadline <= now:
            self._control.finish_disable(session, now, force=True)
        timeout = session.flush_timeout_ns
        if session.duration_deadline is not None and session.duration_deadline <= now:
            session.duration_deadline = None
            self._flushes.request(session, now, timeout, 0, StopSession())
        period = session.config.flush_period_ms * 1_000_000
        if session.next_periodic_flush is not None and session.next_periodic_flush <= now:
            session.next_periodic_flush = now + period
            self._flushes.request(session, now, timeout, 0, None)
        incremental_state.clear_if_due(self._ctx, session, now)
        self._ctx.periodic_clock_snapshot(session, now)
        self._files.on_timer(session, now)
