"""actors/core/lifecycle.py: every (state, event) pair of both tables.

An allowed pair moves to the state the design names (written out here, not read
from the table under test); any other pair raises, names the event and the
state, and leaves the state as it was."""

from __future__ import annotations

import itertools

import pytest

from actors.core.lifecycle import (
    HasInstanceState,
    HasSessionState,
    InstanceEvent,
    InstanceState,
    InvalidTransition,
    SessionEvent,
    SessionState,
    apply,
    can_apply,
)

S, SE = SessionState, SessionEvent
DS, IE = InstanceState, InstanceEvent

SESSION_MOVES = {
    (S.DISABLED, SE.ENABLE): S.CONFIGURED,
    (S.CONFIGURED, SE.START): S.STARTED,
    (S.CONFIGURED, SE.DISABLE): S.DISABLING_WAITING_STOP_ACKS,
    (S.STARTED, SE.DISABLE): S.DISABLING_WAITING_STOP_ACKS,
    (S.DISABLING_WAITING_STOP_ACKS, SE.STOPPED): S.DISABLED,
    # A clone is made DISABLED, then frozen: nothing moves it again.
    (S.DISABLED, SE.CLONE): S.CLONED_READ_ONLY,
}
INSTANCE_MOVES = {
    (DS.CONFIGURED, IE.START): DS.STARTING,
    (DS.STARTING, IE.STARTED): DS.STARTED,
    (DS.CONFIGURED, IE.STOP): DS.STOPPING,
    (DS.STARTING, IE.STOP): DS.STOPPING,
    (DS.STARTED, IE.STOP): DS.STOPPING,
    (DS.STOPPING, IE.STOPPED): DS.STOPPED,
}


def _in(holder_type, state):
    holder = holder_type()
    holder._state = state  # test set-up: put the object in the state under test
    return holder


PAIRS = [(HasSessionState, st, ev, SESSION_MOVES) for st, ev in itertools.product(S, SE)] + [
    (HasInstanceState, st, ev, INSTANCE_MOVES) for st, ev in itertools.product(DS, IE)
]


@pytest.mark.parametrize(
    ("holder_type", "state", "event", "moves"),
    PAIRS,
    ids=[f"{st.name}-{ev.name}" for _, st, ev, _ in PAIRS],
)
def test_every_state_event_pair(holder_type, state, event, moves):
    holder = _in(holder_type, state)
    expected = moves.get((state, event))
    assert can_apply(holder, event) == (expected is not None)
    if expected is not None:
        assert apply(holder, event) is expected
        assert holder.state is expected
        return
    with pytest.raises(InvalidTransition) as raised:
        apply(holder, event)
    assert event.value in str(raised.value) and state.value in str(raised.value)
    assert holder.state is state


def test_new_objects_start_where_the_design_says():
    assert HasSessionState().state is S.DISABLED
    assert HasInstanceState().state is DS.CONFIGURED


def test_state_is_read_only_outside_the_module():
    with pytest.raises(AttributeError):
        HasSessionState().state = S.STARTED  # type: ignore[misc]
