"""Tracing sessions: what a TraceConfig asks for, checked against the limits,
and what a session holds (its instances, flushes, sequence ids, and the
service's packets queued for its next read; readback.py reads it back).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.lifecycle import CLONE_SESSION, HasInstanceState, HasSessionState
from actors.core.limits import DEFAULT_LIMITS, Limits

MAX_BUFFER_BYTES = (4 << 30) - 4096
DEFAULT_FLUSH_TIMEOUT_MS = 5000
DEFAULT_STOP_TIMEOUT_MS = 5000
MAX_DURATION_MS = 7 * 24 * 3600 * 1000

# TraceConfig fields this service acts on; any other field set in a config is
# reported back to the consumer as unsupported (never silently ignored).
IMPLEMENTED_FIELDS = frozenset(
    {
        "buffers",
        "data_sources",
        "duration_ms",
        "deferred_start",
        "flush_period_ms",
        "flush_timeout_ms",
        "data_source_stop_timeout_ms",
        "incremental_state_config",
        "unique_session_name",
        "write_into_file",
        "file_write_period_ms",
        "max_file_size_bytes",
        "output_path",
    }
)
IMPLEMENTED_DATA_SOURCE_FIELDS = frozenset(
    {"config", "producer_name_filter", "producer_name_regex_filter"}
)


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
        # The service's own packets, queued until the next read.
        self.clock_snapshots: list[bytes] = []
        self.service_events: list[bytes] = []
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
        # Trigger packets queued for the next read, after the trace_config (a clone's
        # clone_snapshot_trigger; the source's received triggers move to its clone).
        self.trigger_packets: list[bytes] = []

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
    error = _config_error(config, sessions)
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


def _config_error(config: pb.TraceConfig, sessions: list[Session]) -> str:
    if not config.buffers:
        return "the config has no buffers"
    for i, buf in enumerate(config.buffers):
        if not 0 < buf.size_kb * 1024 <= MAX_BUFFER_BYTES:
            return f"buffers[{i}].size_kb must be > 0 and < 4 GiB, got {buf.size_kb}"
    if config.duration_ms > MAX_DURATION_MS:
        return f"duration_ms {config.duration_ms} exceeds the maximum of 7 days"
    if config.unique_session_name and named(config.unique_session_name, sessions):
        return f"a session named {config.unique_session_name!r} is already running"
    for i, ds in enumerate(config.data_sources):
        error = target_buffer_index(config, ds.config)[1]
        if error:
            return f"data_sources[{i}]: {error}"
        for regex in ds.producer_name_regex_filter:
            try:
                re.compile(regex)
            except re.error as e:
                return f"data_sources[{i}].producer_name_regex_filter {regex!r}: {e}"
    return ""


def named(unique_session_name: str, sessions: Iterable[Session]) -> Session | None:
    """The session with this unique_session_name; clones keep their source's name
    but are not it (Perfetto skips them in both the check and the lookup)."""
    for session in sessions:
        if session.state in CLONE_SESSION:
            continue
        if session.config.unique_session_name == unique_session_name:
            return session
    return None


def target_buffer_index(config: pb.TraceConfig, ds: pb.DataSourceConfig) -> tuple[int, str]:
    """(index into config.buffers, error)."""
    index = ds.target_buffer
    if ds.target_buffer_name:
        names = [b.name for b in config.buffers]
        if ds.target_buffer_name not in names:
            return 0, f"no buffer named {ds.target_buffer_name!r}"
        by_name = names.index(ds.target_buffer_name)
        if ds.HasField("target_buffer") and by_name != index:
            return 0, "target_buffer and target_buffer_name disagree"
        index = by_name
    if index >= len(config.buffers):
        return 0, f"target_buffer {index} out of range ({len(config.buffers)} buffers)"
    return index, ""


def unsupported_fields(config: pb.TraceConfig) -> list[str]:
    names = [f.name for f, _ in config.ListFields() if f.name not in IMPLEMENTED_FIELDS]
    for i, ds in enumerate(config.data_sources):
        for f, _ in ds.ListFields():
            if f.name not in IMPLEMENTED_DATA_SOURCE_FIELDS:
                names.append(f"data_sources[{i}].{f.name}")
    return names


def producer_matches(ds: pb.TraceConfig.DataSource, producer_name: str) -> bool:
    if not ds.producer_name_filter and not ds.producer_name_regex_filter:
        return True
    if producer_name in ds.producer_name_filter:
        return True
    return any(re.fullmatch(r, producer_name) for r in ds.producer_name_regex_filter)
