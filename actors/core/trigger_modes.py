"""What a TraceConfig's trigger_config means for its session, as values: its
mode, how long it runs from its start,
whether it waits CONFIGURED for a START trigger, whether a read of it returns
anything, and when it ends by itself. actors/core/triggers.py acts on triggers;
the session's start, reads and file drains, the record CLI and scripts ask here.
"""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.config_rules import trigger_mode as mode
from actors.core.lifecycle import CLONE_SESSION
from actors.core.sessions import Session

NS_PER_MS = 1_000_000
MODE = pb.TraceConfig.TriggerConfig


def waits_to_start(config: pb.TraceConfig) -> bool:
    """A START_TRACING session stays CONFIGURED until its trigger."""
    return mode(config) == MODE.START_TRACING


def duration_ms(config: pb.TraceConfig) -> int:
    """How long a session runs from its start unless something ends it earlier:
    trigger_timeout_ms for STOP_TRACING and CLONE_SNAPSHOT, else duration_ms."""
    if mode(config) in (MODE.STOP_TRACING, MODE.CLONE_SNAPSHOT):
        return config.trigger_config.trigger_timeout_ms
    return config.duration_ms


def expected_end_ms(config: pb.TraceConfig) -> int:
    """The latest a trigger session ends by itself, from its enable: the timeout,
    plus the longest stop_delay_ms (perfetto_cmd's expected duration); 0 for a
    session without triggers."""
    if mode(config) == MODE.UNSPECIFIED:
        return 0
    delays = [t.stop_delay_ms for t in config.trigger_config.triggers]
    return config.trigger_config.trigger_timeout_ms + max(delays, default=0)


def empty_trace_reason(config: pb.TraceConfig) -> str:
    """Why a read of a trigger session found no packet at all ("" if it would not
    be for its triggers)."""
    trigger_mode = mode(config)
    if trigger_mode == MODE.CLONE_SNAPSHOT:
        return "a CLONE_SNAPSHOT session returns nothing itself: its snapshots are clones"
    if trigger_mode == MODE.UNSPECIFIED:
        return ""
    timeout = config.trigger_config.trigger_timeout_ms
    names = ", ".join(t.name for t in config.trigger_config.triggers)
    return f"no trigger fired within trigger_timeout_ms ({timeout} ms; triggers: {names})"


def withholds_data(session: Session) -> bool:
    """A read of the session returns nothing (Perfetto's IsWaitingForTrigger): it
    has triggers and none was recorded, or it is a CLONE_SNAPSHOT session."""
    if session.state in CLONE_SESSION:  # a snapshot: read whatever its source's mode
        return False
    config = session.config
    if config.trigger_config.triggers and not session.received_triggers:
        return True
    return mode(config) == MODE.CLONE_SNAPSHOT


def enabled(session: Session, now: int) -> None:
    """A session was just created: a START session's trigger_timeout_ms runs from now."""
    if waits_to_start(session.config):
        timeout_ms = session.config.trigger_config.trigger_timeout_ms
        session.start_trigger_deadline = now + timeout_ms * NS_PER_MS
