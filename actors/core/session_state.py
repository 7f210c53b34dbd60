"""The tracing session state machine: the one place a session's state changes.

    DISABLED ──enable──► CONFIGURED ──start──► STARTED
                              │                   │
                              └──────disable──────┤
                                                  ▼
    DISABLED ◄──stopped── DISABLING_WAITING_STOP_ACKS

A session is created CONFIGURED (its buffers and data source instances set up)
and, unless deferred_start, started at once. Disabling asks every data source
to stop and waits for the acks of those that promised one (bounded by
data_source_stop_timeout_ms); then the session is DISABLED, its buffers still
readable until it is freed. Any other move is a bug and raises.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    DISABLED = "DISABLED"
    CONFIGURED = "CONFIGURED"
    STARTED = "STARTED"
    DISABLING_WAITING_STOP_ACKS = "DISABLING_WAITING_STOP_ACKS"


class Event(enum.Enum):
    ENABLE = "enable"
    START = "start"
    DISABLE = "disable"
    STOPPED = "stopped"


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.DISABLED, Event.ENABLE): State.CONFIGURED,
    (State.CONFIGURED, Event.START): State.STARTED,
    (State.CONFIGURED, Event.DISABLE): State.DISABLING_WAITING_STOP_ACKS,
    (State.STARTED, Event.DISABLE): State.DISABLING_WAITING_STOP_ACKS,
    (State.DISABLING_WAITING_STOP_ACKS, Event.STOPPED): State.DISABLED,
}


class InvalidTransition(RuntimeError):
    pass


class HasState:
    """Mixin for objects whose `state` only this module may change."""

    _state: State = State.DISABLED

    @property
    def state(self) -> State:
        return self._state


def can_apply(obj: HasState, event: Event) -> bool:
    return (obj.state, event) in TRANSITIONS


def apply(obj: HasState, event: Event) -> State:
    """Move `obj` along the table; raises InvalidTransition for any other move."""
    try:
        new = TRANSITIONS[(obj.state, event)]
    except KeyError:
        message = f"{event.value} is not allowed in state {obj.state.value}"
        raise InvalidTransition(message) from None
    obj._state = new
    return new
