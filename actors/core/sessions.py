"""Tracing sessions: what a TraceConfig asks for, checked against the limits,
and what a session holds (its instances, flushes, sequence ids, and the
service's packets queued for its next read; readback.py reads it back). The
rules traced applies to a config, and the table of the config fields the
service acts on, are config_rules.py's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.config_rules import (  # noqa: F401 - the last two re-exported
    config_error,
    ignored_fields,
    target_buffer_index,
)
from actors.core.lifecycle import CLONE_SESSION, HasInstanceState, HasSessionState
from actors.core.limits import DEFAULT_LIMITS, Limits

DEFAULT_FLUSH_TIMEOUT_MS = 5000
DEFAULT_STOP_TIMEOUT_MS = 5000


@dataclass
class Instance(HasInstanceState):
    """One data source instance: (session, config entry, matching producer);
    its state moves only through actors/core/lifecycle.py."""

    id: int
    producer_id: int
    name: str
    config: bytes  # DataSourceConfig with the service's rewrites
    target_buffer: int
    notify_on_start: bool = False
    notify_on_stop: bool = False
    no_flush: bool = False


@dataclass(frozen=True)
class ReplyToConsumer:
    """When the flush completes, answer the consumer's FlushConsumerRequest."""

    consumer: bytes
    request_id: int


@dataclass(frozen=True)
class StopSession:
    """The flush that ends a session's duration_ms: when it completes, stop the session."""


@dataclass(frozen=True)
class CloneAfterFlush:
    """The flush before a clone (CloneSession): when it completes, copy the source's
    buffers into a new session held by `consumer` and answer its request
    (actors/core/clones.py)."""

    consumer: bytes
    uid: int
    pid: int
    request_id: int
    trigger_packet: bytes  # clone_snapshot_trigger packet for the clone, or b""


# What to do when a flush completes (None: nothing more, a periodic flush).
AfterFlush = ReplyToConsumer | StopSession | CloneAfterFlush | None


@dataclass
class PendingFlush:
    id: int
    producers: set[int]  # producer ids whose ack is awaited
    deadline: int
    after: AfterFlush


class Session(HasSessionState):
    def __init__(
        self,
        sid: int,
        consumer: bytes,
        uid: int,
        config: pb.TraceConfig,
        request_id: int,
        consumer_pid: int = 0,
    ) -> None:
        self.id = sid
        self.consumer = consumer
        self.uid = uid
        self.consumer_pid = consumer_pid  # from the kernel; 0 when unknown
        self.config = config
        self.enable_request_id = request_id
        self.buffer_ids: list[int] = []
        self.instances: dict[int, Instance] = {}
        self.flushes: dict[int, PendingFlush] = {}
        self.seq_ids: dict[tuple[int, int], int] = {}
        # The service's own packets, queued until the next read as values
        # (actors/core/service_packets.py): the clock snapshot taken at start, the
        # later ones, (boottime, name) of service events; and whether the first
        # read's packets (trace_config, trace_uuid, ...) are out.
        self.initial_clock_snapshot: list[tuple[int, int]] = []
        self.clock_snapshots: list[list[tuple[int, int]]] = []
        self.service_events: list[tuple[int, str]] = []
        self.config_emitted = False
        self.invalid_packets = 0
        self.flushes_requested = self.flushes_succeeded = self.flushes_failed = 0
        self.disable_waiters: list[int] = []
        self.duration_deadline: int | None = None
        self.stop_deadline: int | None = None
        self.next_periodic_flush: int | None = None
        self.next_incremental_clear: int | None = None  # actors/core/incremental_state.py
        self.all_started_reported = False
        self.observer_request_id = 0  # ObserveEvents subscription, 0 = none
        self.observe_types: set[int] = set()
        # The trace's UUID (TracePacket.trace_uuid): the config's trace_uuid_msb/lsb
        # if set, else random (session_control.create); a clone gets a new msb.
        self.uuid_msb = self.uuid_lsb = 0
        # Part "rules": the config's `producers` entries the service could not honour
        # (session_control._ensure_smb), named with the ignored fields at enable.
        self.smb_notes: list[str] = []
        # Triggers (actors/core/triggers.py): those the session took, in order; their
        # `trigger` packets queued for the next read (readback emits them after the
        # trace_config); a START session's trigger_timeout_ms deadline; and the
        # CLONE_SNAPSHOT hits waiting for their stop_delay_ms, (due time, Fired).
        self.received_triggers: list[Any] = []
        self.trigger_packets: list[bytes] = []
        self.start_trigger_deadline: int | None = None
        self.clone_hits_due: list[tuple[int, Any]] = []
        # Detach and attach (actors/core/detach.py): the key the session is kept under
        # while no consumer holds it ("" while one does); its end's stop_timed_out once
        # it ended (told again to a consumer that attaches); whether its own stop
        # (duration_ms, a trigger: StopSession) ended it, so that it is freed if that
        # happened while detached; and whether that free is due (ServiceCore's timer).
        self.detach_key = ""
        self.end_stop_timed_out: tuple[str, ...] | None = None
        self.stopped_on_its_own = False
        self.free_due = False
        # Attached, its attach_notification_only request not in yet: the end reply
        # waits for it (it has no request id to go under before).
        self.end_reply_held = False
        # TraceStats.final_flush_outcome: how the flush that ended the session
        # (duration_ms, a trigger's stop: sessions.StopSession) went; set by
        # flushes.py when it completes, UNSPECIFIED (0) until then.
        self.final_flush_outcome = 0
        # Part "packets": the next periodic clock snapshot (snapshot_interval_ms).
        self.next_clock_snapshot: int | None = None
        # Relayed machines (actors/core/machines.py): per machine id, the incarnation
        # whose system_info this session emitted, and the serial of the last clock
        # round it emitted in a remote_clock_sync packet.
        self.machine_incarnations: dict[int, int] = {}
        self.machine_serials: dict[int, int] = {}
        # Relayed machines that had an instance in this session: the only ones whose
        # system_info and clock rounds its trace needs (connected or not by then).
        self.machines: set[int] = set()

    @property
    def flush_timeout_ns(self) -> int:
        return (self.config.flush_timeout_ms or DEFAULT_FLUSH_TIMEOUT_MS) * 1_000_000

    @property
    def stop_timeout_ns(self) -> int:
        return (self.config.data_source_stop_timeout_ms or DEFAULT_STOP_TIMEOUT_MS) * 1_000_000

    def sequence_id(self, producer_id: int, writer_id: int) -> int:
        key = (producer_id, writer_id)
        sid = self.seq_ids.get(key)
        if sid is None:
            sid = self.seq_ids[key] = len(self.seq_ids) + 2  # 1 is the service's
        return sid


class Refusal(NamedTuple):
    """Why a config is refused: the message for the consumer, and the Limits field
    it ran into ("" when it breaks no limit but a rule)."""

    message: str
    limit: str = ""


def check_config(
    config: pb.TraceConfig, sessions: list[Session], uid: int, limits: Limits = DEFAULT_LIMITS
) -> Refusal | None:
    """The first reason to refuse `config`, or None (the buffer memory budget is
    buffer_budget.py's)."""
    refusal = limit_refusal(config, sessions, uid, limits)
    if refusal is not None:
        return refusal
    error = config_error(config, sessions)
    return Refusal(error) if error else None


def limit_refusal(
    config: pb.TraceConfig, sessions: list[Session], uid: int, limits: Limits
) -> Refusal | None:
    """Why one more session of `uid` with `config`'s buffers breaks a limit (a clone
    counts as a session too), or None."""
    n = limits.max_sessions
    if len(sessions) >= n:
        return Refusal(f"too many tracing sessions (max_sessions {n})", "max_sessions")
    n = limits.max_sessions_per_uid
    if sum(1 for s in sessions if s.uid == uid) >= n:
        message = f"too many tracing sessions for uid {uid} (max_sessions_per_uid {n})"
        return Refusal(message, "max_sessions_per_uid")
    n = limits.max_buffers_per_session
    if len(config.buffers) > n:
        message = f"too many buffers: {len(config.buffers)} (max_buffers_per_session {n})"
        return Refusal(message, "max_buffers_per_session")
    return None


def named(unique_session_name: str, sessions: Iterable[Session]) -> Session | None:
    """The session with this unique_session_name; clones keep their source's name
    but are not it (Perfetto skips them in both the check and the lookup)."""
    for session in sessions:
        if session.state in CLONE_SESSION:
            continue
        if session.config.unique_session_name == unique_session_name:
            return session
    return None


def machine_matches(
    ds: pb.TraceConfig.DataSource, trace_all_machines: bool, machine_id: int, machine_name: str
) -> bool:
    """Perfetto's machine rule for a data source entry (SetupDataSource, v54): with a
    machine_name_filter, a producer whose machine is listed ("host": the service's
    own machine); without one, remote producers only when trace_all_machines."""
    if ds.machine_name_filter:
        name = "host" if machine_id == 0 else machine_name
        return name in ds.machine_name_filter
    return machine_id == 0 or trace_all_machines


def producer_matches(ds: pb.TraceConfig.DataSource, producer_name: str) -> bool:
    if not ds.producer_name_filter and not ds.producer_name_regex_filter:
        return True
    if producer_name in ds.producer_name_filter:
        return True
    return any(re.fullmatch(r, producer_name) for r in ds.producer_name_regex_filter)
