"""Triggers: a named event, fired by a producer (ActivateTriggers) or a trusted
consumer (ctl, scripts), that starts, stops or snapshots the sessions whose
trigger_config names it (Perfetto's TracingServiceImpl::ActivateTriggers).

    trigger (name, producer name, uid, now)
      for each live session whose trigger_config.triggers has `name`:
        producer_name_regex set and not a full match of the sender's name -> skip
        a draw from ctx.rng below skip_probability                         -> skip
        max_per_24_h reached (service-wide count of `name` in the last 24 h) -> skip
        recorded (a `trigger` packet for the session's next read), then by mode:
          START_TRACING   CONFIGURED session: start it; it ends stop_delay_ms later
                          (0: no end of its own, as traced)
          STOP_TRACING    first trigger only: flush + stop after stop_delay_ms
          CLONE_SNAPSHOT  after stop_delay_ms, a clone_trigger_hit event to the
                          session's consumer if it observes TYPE_CLONE_TRIGGER_HIT
                          (it clones the session; the session goes on)

trigger_timeout_ms (trigger_modes.py says what a config's mode means for its
session): a START session still CONFIGURED at the timeout (counted
from the enable) is disabled without a flush and holds no data; a STOP or
CLONE_SNAPSHOT session runs at most that long from its start (its duration),
then flushes and stops like a duration_ms session.

What a trigger session returns: nothing at all (not even the service's packets)
while no trigger was recorded, and never anything when its mode is
CLONE_SNAPSHOT (it is read through its clones) -- `withholds_data`. The
producer name and uid of a trigger are the service's record of the sender
(a consumer is named by its Hello.client_name), never what the sender claims.
Sender-supplied names are untrusted: they are only compared with the config's.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import readback
from actors.core.lifecycle import LIVE_SESSION, SessionEvent, can_apply
from actors.core.sessions import Session
from actors.core.trigger_modes import MODE, NS_PER_MS, mode, withholds_data
from protos import tracebus_ipc_pb2 as ipc

if TYPE_CHECKING:
    from actors.core.outbox import Peer
    from actors.core.producers import ProducerEntry
    from actors.core.service_context import ServiceContext
    from actors.core.session_control import SessionControl

ONE_DAY_NS = 24 * 3600 * 1_000_000_000
# What a session keeps of the triggers it took (their records, the trigger packets
# not read yet, the snapshot hits waiting for their delay): beyond it a sender firing
# in a loop would grow the service's memory without bound; the first ones are kept.
MAX_KEPT_TRIGGERS = 1024
CONSUMER_TRIGGER_NAME = "consumer"  # a consumer that gave no client_name
MAX_HISTORY_PER_NAME = 1 << 16  # times kept per trigger name (max_per_24_h counts them)
# Names one ActivateTriggers may carry (producer_core.MAX_PENDING_TRIGGERS sends no more):
# each is matched against every session, so a request of millions would stall the service.
MAX_NAMES_PER_REQUEST = 256
OBSERVE_CLONE_HIT = ipc.ObserveEventsRequest.TYPE_CLONE_TRIGGER_HIT


@dataclass(frozen=True)
class Fired:
    """A trigger recorded by a session (Perfetto's TriggerInfo)."""

    name: str
    producer_name: str
    producer_uid: int
    boot_time_ns: int
    stop_delay_ms: int


def producer_allowed(regex: str, producer_name: str) -> bool:
    if not regex:
        return True
    try:
        return re.fullmatch(regex, producer_name) is not None
    except re.error:  # the config checks refuse it; never crash on one
        return False


def trigger_packet(fired: Fired, uid: int, service_pid: int) -> bytes:
    """TracePacket.trigger, on the service's sequence, stamped at the trigger's time."""
    packet = pb.TracePacket(timestamp=fired.boot_time_ns, timestamp_clock_id=readback.BOOTTIME)
    packet.trigger.trigger_name = fired.name
    packet.trigger.producer_name = fired.producer_name
    packet.trigger.trusted_producer_uid = fired.producer_uid
    packet.trigger.stop_delay_ms = fired.stop_delay_ms
    return packet.SerializeToString() + readback.trusted_trailer(
        uid, readback.SERVICE_SEQUENCE_ID, service_pid
    )


class TriggerHistory:
    """The service's record of matched triggers in the last 24 h, for
    max_per_24_h (service-wide per name, as traced counts it). Only names a
    session's config holds are recorded, each with its times in order, at most
    MAX_HISTORY_PER_NAME of them (a count saturates there: a sender firing in a
    loop costs bounded memory and constant time)."""

    def __init__(self) -> None:
        self._fired: dict[str, deque[int]] = {}

    def count(self, name: str, now: int) -> int:
        times = self._fired.get(name)
        if times is None:
            return 0
        while times and times[0] < now - ONE_DAY_NS:
            times.popleft()
        if not times:
            del self._fired[name]
        return len(times)

    def add(self, name: str, now: int) -> None:
        self._fired.setdefault(name, deque(maxlen=MAX_HISTORY_PER_NAME)).append(now)


def _keep(kept: list[Any], item: Any) -> None:
    if len(kept) < MAX_KEPT_TRIGGERS:
        kept.append(item)


def _too_many(names: list[str]) -> str:
    if len(names) <= MAX_NAMES_PER_REQUEST:
        return ""
    return f"{len(names)} trigger names in one request: at most {MAX_NAMES_PER_REQUEST}, none fired"


class Triggers:
    def __init__(self, ctx: ServiceContext, control: SessionControl) -> None:
        self._ctx = ctx
        self._control = control
        self.history = TriggerHistory()

    def activate(self, names: list[str], producer_name: str, uid: int, now: int) -> None:
        """Triggers `names` fired by `producer_name` (uid `uid`, from the kernel)."""
        for name in names:
            in_window = self.history.count(name, now)
            matched = False
            for session in list(self._ctx.sessions.values()):
                matched |= self._fire(session, name, producer_name, uid, in_window, now)
            if matched:
                self.history.add(name, now)

    def _fire(
        self, session: Session, name: str, producer_name: str, uid: int, in_window: int, now: int
    ) -> bool:
        """Whether the session took trigger `name` (then it acts on it)."""
        spec = next((t for t in session.config.trigger_config.triggers if t.name == name), None)
        if spec is None or session.state not in LIVE_SESSION:
            return False
        if not producer_allowed(spec.producer_name_regex, producer_name):
            return False
        if self._ctx.rng.random() < spec.skip_probability:
            return False
        if spec.max_per_24_h and in_window >= spec.max_per_24_h:
            return False
        first = not session.received_triggers
        fired = Fired(name, producer_name, uid, self._ctx.clocks.boottime(), spec.stop_delay_ms)
        _keep(session.received_triggers, fired)
        trigger_mode = mode(session.config)
        if trigger_mode != MODE.CLONE_SNAPSHOT:  # (a clone records its own trigger)
            ctx = self._ctx
            _keep(session.trigger_packets, trigger_packet(fired, ctx.uid, ctx.service_pid))
        delay_ns = spec.stop_delay_ms * NS_PER_MS
        if trigger_mode == MODE.START_TRACING:
            self._start(session, delay_ns, now)
        elif trigger_mode == MODE.STOP_TRACING and first:
            session.duration_deadline = now + delay_ns  # flush + stop, as duration_ms
        elif trigger_mode == MODE.CLONE_SNAPSHOT:
            _keep(session.clone_hits_due, (now + delay_ns, fired))
            self.send_clone_hits(session, now)
        return True

    def _start(self, session: Session, delay_ns: int, now: int) -> None:
        """A START trigger: a session still waiting starts, and ends after the delay
        (0: it runs until stopped, as traced)."""
        if not can_apply(session, SessionEvent.START):
            return  # started already (an earlier trigger, or start_tracing)
        session.start_trigger_deadline = None
        self._control.start(session, now)
        if delay_ns:
            session.duration_deadline = now + delay_ns

    # -- the handlers (service_core.py's dispatch tables) -------------------------------------

    def from_producer(
        self,
        producer: ProducerEntry,
        request_id: int,
        req_untrusted: ipc.ActivateTriggersRequest,
        now: int,
    ) -> None:
        """A producer's ActivateTriggers: named and identified as the service knows it."""
        names = list(req_untrusted.trigger_names)
        error = _too_many(names)
        if error:
            self._ctx.out.to_producer(producer.peer, request_id, error=error)
            return
        self.activate(names, producer.name, producer.uid, now)

    def from_consumer(
        self, peer: Peer, request_id: int, req: ipc.ActivateTriggersRequest, now: int
    ) -> None:
        """A consumer's (ctl, a script): recorded under its Hello.client_name (traced
        records `perfetto --trigger` as its producer, perfetto_cmd_producer)."""
        names = list(req.trigger_names)
        error = _too_many(names)
        if not error:
            sender = self._ctx.consumer_names.get(peer.identity) or CONSUMER_TRIGGER_NAME
            self.activate(names, sender, peer.uid, now)
        self._ctx.out.ack(peer.identity, request_id, error)

    # -- timers ----------------------------------------------------------------------------

    def deadlines(self, session: Session) -> list[int]:
        due = [t for t, _ in session.clone_hits_due]
        if session.start_trigger_deadline is not None:
            due.append(session.start_trigger_deadline)
        return due

    def on_timer(self, session: Session, now: int) -> None:
        deadline = session.start_trigger_deadline
        if deadline is not None and deadline <= now:
            session.start_trigger_deadline = None
            if session.state not in LIVE_SESSION or session.received_triggers:
                return
            # No trigger in time: stopped without a flush; it returns no data.
            self._control.disable(session, now)
        self.send_clone_hits(session, now)

    def send_clone_hits(self, session: Session, now: int) -> None:
        """The clone_trigger_hit events due, to a consumer that observes them."""
        due = [fired for t, fired in session.clone_hits_due if t <= now]
        if not due:
            return
        session.clone_hits_due = [(t, f) for t, f in session.clone_hits_due if t > now]
        if not session.observer_request_id or OBSERVE_CLONE_HIT not in session.observe_types:
            return  # (traced, too, drops them without an observing consumer)
        if session.state not in LIVE_SESSION:
            return
        for fired in due:
            hit = ipc.ObservableEvents.CloneTriggerHit(
                tracing_session_id=session.id,
                trigger_name=fired.name,
                producer_name=fired.producer_name,
                producer_uid=fired.producer_uid,
                boot_time_ns=fired.boot_time_ns,
                trigger_delay_ms=fired.stop_delay_ms,
            )
            events = ipc.ObservableEvents(clone_trigger_hit=hit)
            self._ctx.out.to_consumer(session.consumer, session.observer_request_id, events=events)


__all__ = ["Fired", "TriggerHistory", "Triggers", "trigger_packet", "withholds_data"]
