"""The lifecycle tables: the one place a tracing session's state or a data
source instance's state changes.

Session (Perfetto's TracingSession::State)::

    DISABLED ──enable──► CONFIGURED ──start──► STARTED
                              │                   │
                              └──────disable──────┤
                                                  ▼
    DISABLED ◄──stopped── DISABLING_WAITING_STOP_ACKS

    DISABLED ──clone──► CLONED_READ_ONLY

A session is created CONFIGURED (its buffers and data source instances set up)
and, unless deferred_start, started at once. Disabling asks every data source
to stop and waits for the acks of those that promised one (bounded by
data_source_stop_timeout_ms); then the session is DISABLED, its buffers still
readable until it is freed. A clone (actors/core/clones.py, CloneSession) is
created CLONED_READ_ONLY: a frozen copy of another session's buffers, with no
data source instances; it is only read and freed (Perfetto's state of the
same name).

Data source instance (Perfetto's DataSourceInstance::DataSourceInstanceState)::

    CONFIGURED ──start──► STARTING ──started──► STARTED
        │                    │                     │
        └───────stop─────────┴────────stop─────────┤
                                                   ▼
                      STOPPED ◄──stopped── STOPPING

`started` and `stopped` are the producer's acks; for a data source that did
not promise one (will_notify_on_start/stop) the service applies them itself at
once. A stop ack that never comes is applied when the stop times out.

Each table is a dict (state, event) -> new state; `apply` is the only mutator
and raises InvalidTransition, naming the event and the state, for any move the
table does not hold. Callers ask the table (`can_apply`, or the named state
sets below) instead of re-testing states.
"""

from __future__ import annotations

import enum
from typing import Generic, TypeVar, overload


class SessionState(enum.Enum):
    DISABLED = "DISABLED"
    CONFIGURED = "CONFIGURED"
    STARTED = "STARTED"
    DISABLING_WAITING_STOP_ACKS = "DISABLING_WAITING_STOP_ACKS"
    CLONED_READ_ONLY = "CLONED_READ_ONLY"


class SessionEvent(enum.Enum):
    ENABLE = "enable"
    START = "start"
    DISABLE = "disable"
    STOPPED = "stopped"
    CLONE = "clone"


SESSION_TRANSITIONS: dict[tuple[SessionState, SessionEvent], SessionState] = {
    (SessionState.DISABLED, SessionEvent.ENABLE): SessionState.CONFIGURED,
    (SessionState.CONFIGURED, SessionEvent.START): SessionState.STARTED,
    (SessionState.CONFIGURED, SessionEvent.DISABLE): SessionState.DISABLING_WAITING_STOP_ACKS,
    (SessionState.STARTED, SessionEvent.DISABLE): SessionState.DISABLING_WAITING_STOP_ACKS,
    (SessionState.DISABLING_WAITING_STOP_ACKS, SessionEvent.STOPPED): SessionState.DISABLED,
    (SessionState.DISABLED, SessionEvent.CLONE): SessionState.CLONED_READ_ONLY,
}


class InstanceState(enum.Enum):
    CONFIGURED = "CONFIGURED"
    STARTING = "STARTING"
    STARTED = "STARTED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


class InstanceEvent(enum.Enum):
    START = "start"
    STARTED = "started"
    STOP = "stop"
    STOPPED = "stopped"


INSTANCE_TRANSITIONS: dict[tuple[InstanceState, InstanceEvent], InstanceState] = {
    (InstanceState.CONFIGURED, InstanceEvent.START): InstanceState.STARTING,
    (InstanceState.STARTING, InstanceEvent.STARTED): InstanceState.STARTED,
    (InstanceState.CONFIGURED, InstanceEvent.STOP): InstanceState.STOPPING,
    (InstanceState.STARTING, InstanceEvent.STOP): InstanceState.STOPPING,
    (InstanceState.STARTED, InstanceEvent.STOP): InstanceState.STOPPING,
    (InstanceState.STOPPING, InstanceEvent.STOPPED): InstanceState.STOPPED,
}

# A session in these states takes new data source instances (late registration)
# and can be disabled.
LIVE_SESSION = frozenset({SessionState.CONFIGURED, SessionState.STARTED})
# A session in these states records: a data source that joins it starts at once,
# a flush reaches its producers, and it reports itself started.
RECORDING_SESSION = frozenset({SessionState.STARTED})
# A session in these states may still take data: a write_into_file session's
# periodic drains go on while it waits for stop acks (file_writes.py).
TAKING_DATA_SESSION = frozenset({SessionState.STARTED, SessionState.DISABLING_WAITING_STOP_ACKS})
# A session in these states has nothing left to stop: disable is answered at once.
ENDED_SESSION = frozenset({SessionState.DISABLED, SessionState.CLONED_READ_ONLY})
# A session in these states is a read-only copy of another (clones.py): it is
# never cloned again, never found by unique_session_name, and its buffers are
# read whatever its trigger_config says (Perfetto's IsWaitingForTrigger).
CLONE_SESSION = frozenset({SessionState.CLONED_READ_ONLY})
# Instance states that are writing (a session reports all_data_sources_started
# once every instance is in one).
RUNNING_INSTANCE = frozenset({InstanceState.STARTED})
# Instance states that hold up their session's stop until the ack (or the timeout).
AWAITING_STOP_ACK = frozenset({InstanceState.STOPPING})
# Instance states an observer hears about; the transient ones are not reported.
REPORTED_INSTANCE = frozenset(
    {InstanceState.CONFIGURED, InstanceState.STARTED, InstanceState.STOPPED}
)

S = TypeVar("S", SessionState, InstanceState)


class InvalidTransition(RuntimeError):
    pass


class _HasState(Generic[S]):
    _state: S

    @property
    def state(self) -> S:
        return self._state


class HasSessionState(_HasState[SessionState]):
    """Mixin for a session, whose `state` only this module may change."""

    _state = SessionState.DISABLED


class HasInstanceState(_HasState[InstanceState]):
    """Mixin for a data source instance, whose `state` only this module may change."""

    _state = InstanceState.CONFIGURED


def _table(event: SessionEvent | InstanceEvent) -> dict:
    return SESSION_TRANSITIONS if isinstance(event, SessionEvent) else INSTANCE_TRANSITIONS


@overload
def can_apply(obj: HasSessionState, event: SessionEvent) -> bool: ...
@overload
def can_apply(obj: HasInstanceState, event: InstanceEvent) -> bool: ...
def can_apply(obj: _HasState, event: SessionEvent | InstanceEvent) -> bool:
    """Whether the table holds a move for `event` from `obj`'s state."""
    return (obj.state, event) in _table(event)


@overload
def apply(obj: HasSessionState, event: SessionEvent) -> SessionState: ...
@overload
def apply(obj: HasInstanceState, event: InstanceEvent) -> InstanceState: ...
def apply(obj: _HasState, event: SessionEvent | InstanceEvent) -> SessionState | InstanceState:
    """Move `obj` along its table; raises InvalidTransition for any other move."""
    try:
        new = _table(event)[(obj.state, event)]
    except KeyError:
        kind = "session" if isinstance(event, SessionEvent) else "data source instance"
        message = f"{event.value} is not allowed for a {kind} in state {obj.state.value}"
        raise InvalidTransition(message) from None
    obj._state = new
    return new
