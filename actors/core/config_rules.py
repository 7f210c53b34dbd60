"""What a TraceConfig may ask for: traced's checks, and the fields the service acts on.

    config_error(config, sessions) -> str   the first rule `config` breaks ("" if none)
    ignored_fields(config) -> list[str]     every field set that the service does not
                                            act on, as a path ("buffers[0].experimental_mode")

The rules are the ones traced applies in TracingServiceImpl::EnableTracing
(src/tracing/service/tracing_service_impl.cc), with its limits; a config traced
refuses is refused here, for the same reason. In order:

    rule                                                          limit / note
    at least one buffer                                           (tracebus: a session
                                                                  without buffers records nothing)
    duration_ms                                                   at most 7 days
    with a trigger_mode: trigger_timeout_ms                       > 0, at most 7 days
    trigger_mode                                                  a known TriggerMode
    use_clone_snapshot_if_available                               only with STOP_TRACING
    with a trigger_mode: no duration_ms                           (the triggers end it)
    STOP_TRACING / CLONE_SNAPSHOT with write_into_file            refused
    trigger names                                                 unique
    triggers' producer_name_regex, skip_probability               compile; in [0, 1] (tracebus)
    buffers[i].size_kb                                            > 0, under 4 GiB
    buffer names                                                  unique
    each data source's target buffer (index or name)              exists; both agree
    producer_name_regex_filter                                    compiles
    unique_session_name                                           not held by another session

The session and buffer count limits and the memory budget are checked by the
callers (sessions.check_config, buffer_budget.py). traced clamps, rather than
refuses, a file_write_period_ms under 100 ms (file_sink.write_period_ns), and
takes any flush_timeout_ms and data_source_stop_timeout_ms (0: the default).

Fields outside the table below are reported, never refused (traced's rules
for them, e.g. enable_extra_guardrails' tighter limits, do not apply here):
the consumer is told which fields of its config were ignored, in one warning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple, Protocol, Union

from google.protobuf import unknown_fields
from google.protobuf.message import Message
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.lifecycle import CLONE_SESSION
from shm.abi import resolve_geometry

MAX_BUFFER_BYTES = (4 << 30) - 4096  # a buffer is rounded up to 4 KiB; its size is a u32
MAX_DURATION_MS = 7 * 24 * 3600 * 1000  # traced's kMaxTracingDurationMillis
_SEVEN_DAYS = f"7 days ({MAX_DURATION_MS} ms)"

_Mode = pb.TraceConfig.TriggerConfig
_KNOWN_MODES = frozenset(_Mode.TriggerMode.values())


class _Session(Protocol):
    """What the rules read of a session already held by the service."""

    config: pb.TraceConfig

    @property
    def state(self) -> object: ...


# -- the rules ----------------------------------------------------------------------------


def trigger_mode(config: pb.TraceConfig) -> int:
    """The mode the triggers act in: traced treats STOP_TRACING with
    use_clone_snapshot_if_available as CLONE_SNAPSHOT (GetTriggerMode)."""
    trigger = config.trigger_config
    return _Mode.CLONE_SNAPSHOT if trigger.use_clone_snapshot_if_available else trigger.trigger_mode


def config_error(config: pb.TraceConfig, sessions: Iterable[_Session]) -> str:
    """Why traced would refuse `config` next to `sessions` ("" if it would not)."""
    for rule in (_length_error, _trigger_error, _buffer_error, _data_source_error):
        error = rule(config)
        if error:
            return error
    return _name_error(config, sessions)


def _length_error(config: pb.TraceConfig) -> str:
    if not config.buffers:
        return "the config has no buffers"
    if config.duration_ms > MAX_DURATION_MS:
        return f"duration_ms must be at most {_SEVEN_DAYS}, got {config.duration_ms}"
    return ""


def _trigger_error(config: pb.TraceConfig) -> str:
    trigger = config.trigger_config
    if trigger.trigger_mode not in _KNOWN_MODES:
        return f"trigger_config.trigger_mode {trigger.trigger_mode} is not a known trigger mode"
    mode = trigger_mode(config)
    if mode == _Mode.UNSPECIFIED:
        return ""
    timeout = trigger.trigger_timeout_ms
    if not 0 < timeout <= MAX_DURATION_MS:
        return (
            f"trigger_config.trigger_timeout_ms must be > 0 and at most {_SEVEN_DAYS} "
            f"with a trigger_mode, got {timeout}"
        )
    if trigger.use_clone_snapshot_if_available and trigger.trigger_mode != _Mode.STOP_TRACING:
        return "trigger_config.use_clone_snapshot_if_available needs trigger_mode STOP_TRACING"
    if config.duration_ms:
        return "duration_ms must not be set with a trigger_mode (the triggers end the session)"
    if mode in (_Mode.STOP_TRACING, _Mode.CLONE_SNAPSHOT) and config.write_into_file:
        name = _Mode.TriggerMode.Name(trigger.trigger_mode)
        return f"trigger_mode {name} and write_into_file cannot be used together"
    return _triggers_error(trigger.triggers)


def _triggers_error(triggers: Iterable[pb.TraceConfig.TriggerConfig.Trigger]) -> str:
    names: set[str] = set()
    for i, trigger in enumerate(triggers):
        if trigger.name in names:
            return f"duplicate trigger name {trigger.name!r} (trigger_config.triggers[{i}])"
        names.add(trigger.name)
        where = f"trigger_config.triggers[{i}]"
        error = _regex_error(f"{where}.producer_name_regex", trigger.producer_name_regex)
        if error:
            return error
        p = trigger.skip_probability
        if math.isnan(p) or not 0 <= p <= 1:
            return f"{where}.skip_probability must be between 0 and 1, got {p}"
    return ""


def _buffer_error(config: pb.TraceConfig) -> str:
    first_of: dict[str, int] = {}
    for i, buf in enumerate(config.buffers):
        if not 0 < buf.size_kb * 1024 <= MAX_BUFFER_BYTES:
            return f"buffers[{i}].size_kb must be > 0 and < 4 GiB, got {buf.size_kb}"
        if not buf.name:
            continue
        if buf.name in first_of:
            first = first_of[buf.name]
            return f"duplicate buffer name {buf.name!r}: buffers[{i}] and buffers[{first}]"
        first_of[buf.name] = i
    return ""


def _data_source_error(config: pb.TraceConfig) -> str:
    for i, ds in enumerate(config.data_sources):
        error = target_buffer_index(config, ds.config)[1]
        if error:
            return f"data_sources[{i}] ({ds.config.name!r}): {error}"
        for j, regex in enumerate(ds.producer_name_regex_filter):
            error = _regex_error(f"data_sources[{i}].producer_name_regex_filter[{j}]", regex)
            if error:
                return error
    return ""


def _name_error(config: pb.TraceConfig, sessions: Iterable[_Session]) -> str:
    name = config.unique_session_name
    # A clone keeps its source's config, not its name (traced skips clones too).
    held = (s.config.unique_session_name == name for s in sessions if s.state not in CLONE_SESSION)
    if name and any(held):
        return f"a session with unique_session_name {name!r} already exists"
    return ""


def _regex_error(where: str, regex: str) -> str:
    try:
        re.compile(regex)
    except re.error as e:
        return f"{where} {regex!r} is not a valid regular expression: {e}"
    return ""


def target_buffer_index(config: pb.TraceConfig, ds: pb.DataSourceConfig) -> tuple[int, str]:
    """(index into config.buffers, error). target_buffer_name wins; a target_buffer
    beside it must agree unless 0 (traced cannot tell 0 from unset)."""
    index = ds.target_buffer
    if ds.target_buffer_name:
        names = [b.name for b in config.buffers]
        if ds.target_buffer_name not in names:
            return 0, f"no buffer named {ds.target_buffer_name!r}"
        by_name = names.index(ds.target_buffer_name)
        if index and by_name != index:
            name = f"{ds.target_buffer_name!r} (buffers[{by_name}])"
            return 0, f"target_buffer {index} and target_buffer_name {name} disagree"
        index = by_name
    if index >= len(config.buffers):
        return 0, f"target_buffer {index} out of range ({len(config.buffers)} buffers)"
    return index, ""


# -- the fields the service acts on ---------------------------------------------------------


class Forwarded(NamedTuple):
    """A message handed on verbatim (a DataSourceConfig goes to its data source):
    every field is someone's to act on, except those the service overwrites."""

    overwritten: frozenset[str]


# A field's entry: None (acted on, with all it holds), a table of its own fields, or
# Forwarded. Any field set in a config and not in its table is reported as ignored.
Table = Mapping[str, Union["Table", Forwarded, None]]

# What traced sets in each instance's copy of a DataSourceConfig, whatever the config
# says (SetupDataSource); session_control._new_instance does the same.
SERVICE_SET_DATA_SOURCE_FIELDS = frozenset(
    {
        "trace_duration_ms",
        "stop_timeout_ms",
        "tracing_session_id",
        "session_initiator",
        "enable_extra_guardrails",
    }
)

_TRIGGER: Table = dict.fromkeys(
    ("name", "producer_name_regex", "stop_delay_ms", "max_per_24_h", "skip_probability")
)
_BUILTIN: Table = dict.fromkeys(
    (
        "disable_clock_snapshotting",
        "disable_trace_config",
        "disable_system_info",
        "disable_service_events",
        "primary_trace_clock",
        "snapshot_interval_ms",
        "disable_chunk_usage_histograms",
    )
)
IMPLEMENTED: Table = {
    "buffers": dict.fromkeys(
        ("size_kb", "fill_policy", "name", "transfer_on_clone", "clear_before_clone")
    ),
    "data_sources": {
        "config": Forwarded(SERVICE_SET_DATA_SOURCE_FIELDS),
        "producer_name_filter": None,
        "producer_name_regex_filter": None,
        "machine_name_filter": None,
    },
    **dict.fromkeys(
        (
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
            "compression_type",
            "trace_uuid_msb",
            "trace_uuid_lsb",
            "trace_all_machines",
        )
    ),
    "trigger_config": {
        "trigger_mode": None,
        "use_clone_snapshot_if_available": None,
        "trigger_timeout_ms": None,
        "triggers": _TRIGGER,
    },
    "builtin_data_sources": _BUILTIN,
    "producers": dict.fromkeys(("producer_name", "shm_size_kb", "page_size_kb")),
    # deflate as compression_type's; zstd is named (Python has no zstd: the trace
    # stays uncompressed, as from a traced built without it).
    "compression": {"deflate": {}},
}

# Out of scope here (Android, statsd, bugreports, filters, newer knobs): named as
# ignored like any other field outside IMPLEMENTED, never refused for.
OUT_OF_SCOPE = (
    "trace_filter",
    "bugreport_score",
    "bugreport_filename",
    "statsd_metadata",
    "statsd_logging",
    "incident_report_config",
    "android_report_config",
    "notify_traceur",
    "allow_user_build_tracing",
    "guardrail_overrides",
    "enable_extra_guardrails",
    "lockdown_mode",
    "activate_triggers",
    "cmd_trace_start_delay",
    "session_semaphores",
    "priority_boost",
    "exclusive_prio",
    "write_flush_mode",
    "fflush_post_write",
    "trace_attributes",
    "persist_trace_across_reboots",
    "prefer_suspend_clock_for_duration",
    "experimental_trace_buffer_v2_compaction",
)


def ignored_fields(config: pb.TraceConfig) -> list[str]:
    """Every field set in `config` that the service does not act on, as a path from
    the config (`data_sources[2].config.tracing_session_id`), in field order; then
    settings that are set but can have no effect (with the reason in parentheses)."""
    return [*_ignored(config, IMPLEMENTED, ""), *_without_effect(config)]


def _ignored(message: Message, table: Table, prefix: str) -> Iterable[str]:
    for field, value in message.ListFields():
        path = prefix + field.name
        entry = table.get(field.name, _MISSING)
        if entry is None:
            continue
        if entry is _MISSING:
            yield path
            continue
        values = value if field.is_repeated else [value]
        for i, item in enumerate(values):
            where = f"{path}[{i}]." if field.is_repeated else f"{path}."
            if isinstance(entry, Forwarded):
                yield from _overwritten(item, entry, where)
            else:
                yield from _ignored(item, entry, where)
    yield from _unknown(message, prefix)


_MISSING: Table = {}


def _overwritten(message: Message, forwarded: Forwarded, prefix: str) -> Iterable[str]:
    for field, _ in message.ListFields():
        if field.name in forwarded.overwritten:
            yield f"{prefix}{field.name} (set by the service)"


def _unknown(message: Message, prefix: str) -> Iterable[str]:
    """Fields this schema does not know (a config from a newer Perfetto, in binary)."""
    found = unknown_fields.UnknownFieldSet(message)
    numbers = sorted({found[i].field_number for i in range(len(found))})
    for number in numbers:
        yield f"{prefix}<field {number}> (unknown)"


def _without_effect(config: pb.TraceConfig) -> Iterable[str]:
    if config.HasField("trigger_config") and trigger_mode(config) == _Mode.UNSPECIFIED:
        if config.trigger_config.triggers:
            yield "trigger_config.triggers (no trigger_mode: the triggers do nothing)"
    first_of: dict[str, int] = {}
    for i, entry in enumerate(config.producers):
        note = _producer_note(entry, first_of.setdefault(entry.producer_name, i), i)
        if note:
            yield f"producers[{i}] ({note})"


def _producer_note(entry: pb.TraceConfig.ProducerConfig, first: int, i: int) -> str:
    """Why a producers entry cannot be honoured as written ("" if it can)."""
    if not entry.producer_name:
        return "no producer_name: it matches no producer"
    if first != i:
        return f"producers[{first}] already sizes producer {entry.producer_name!r}"
    size, page = entry.shm_size_kb * 1024, entry.page_size_kb * 1024
    got = resolve_geometry(size, page)
    if (size and got.size != size) or (page and got.page_size != page):
        return (
            f"not a valid SMB: its producer gets {got.size // 1024} KiB "
            f"in pages of {got.page_size // 1024} KiB"
        )
    return ""


def producer_entry(config: pb.TraceConfig, producer_name: str) -> int | None:
    """The index of the producers entry that sizes `producer_name`'s SMB (the
    first with its name, as traced), or None."""
    for i, entry in enumerate(config.producers):
        if entry.producer_name == producer_name:
            return i
    return None
