"""The service's periodic ClearIncrementalState
(TraceConfig.incremental_state_config.clear_period_ms), as Perfetto's
TracingServiceImpl::PeriodicClearIncrementalStateTask does it.

While a session records, every clear_period_ms each producer gets one
ClearIncrementalState naming its instances of that session that are STARTED and
whose data source declared handles_incremental_state_clear; a producer with
none gets nothing. The first clear is one period after the start (data sources
emit their state when they start anyway). The writers then re-emit their
incremental state (descriptors, interned data) on their next packet, so that a
ring buffer that overwrote the first emission still imports from the next one.

The deadline is `Session.next_incremental_clear`: set by `first_clear` at the
start, cleared when the session stops (session_control.py), advanced by
`clear_if_due` (the service core's timer).
"""

from __future__ import annotations

from actors.core.lifecycle import RUNNING_INSTANCE
from actors.core.producers import ProducerEntry
from actors.core.service_context import ServiceContext
from actors.core.sessions import Instance, Session
from protos import tracebus_ipc_pb2 as ipc

NS_PER_MS = 1_000_000


def first_clear(session: Session, now: int) -> int | None:
    """The deadline of a starting session's first clear (None: no clears)."""
    period_ms = session.config.incremental_state_config.clear_period_ms
    return now + period_ms * NS_PER_MS if period_ms else None


def clear_if_due(ctx: ServiceContext, session: Session, now: int) -> None:
    """At the deadline: send the clears and set the next deadline."""
    deadline = session.next_incremental_clear
    if deadline is None or deadline > now:
        return
    period = session.config.incremental_state_config.clear_period_ms * NS_PER_MS
    # From now, not from the deadline: a late timer must not fire in a burst.
    session.next_incremental_clear = now + period
    send_clears(ctx, session)


def send_clears(ctx: ServiceContext, session: Session) -> None:
    """One ClearIncrementalState per producer with instances that take it."""
    by_producer: dict[int, tuple[ProducerEntry, list[int]]] = {}
    for instance in session.instances.values():
        producer = ctx.producers.by_id(instance.producer_id)
        if producer is not None and _takes_clears(instance, producer):
            by_producer.setdefault(producer.id, (producer, []))[1].append(instance.id)
    for producer, ids in by_producer.values():
        clear = ipc.ClearIncrementalState(instance_ids=ids)
        ctx.out.to_producer(producer.peer, clear_incremental_state=clear)


def _takes_clears(instance: Instance, producer: ProducerEntry) -> bool:
    if instance.state not in RUNNING_INSTANCE:
        return False
    descriptor = producer.data_sources.get(instance.name)
    return descriptor is not None and descriptor.handles_incremental_state_clear
