"""traced's checks on a TraceConfig (each rule's message), and the fields a config
sets that the service ignores, named by path at every depth."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from google.protobuf import text_format
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.config_rules import (
    IMPLEMENTED,
    OUT_OF_SCOPE,
    config_error,
    ignored_fields,
    producer_entry,
    target_buffer_index,
)
from actors.core.lifecycle import SessionState

BUFFER = "buffers { size_kb: 64 }\n"


def cfg(text: str) -> pb.TraceConfig:
    return text_format.Parse(text, pb.TraceConfig())


def error(text: str, sessions: list[object] = ()) -> str:  # type: ignore[assignment]
    return config_error(cfg(text), sessions)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "the config has no buffers"),
        (
            BUFFER + "duration_ms: 604800001",
            "duration_ms must be at most 7 days (604800000 ms), got 604800001",
        ),
        (
            BUFFER + "trigger_config { trigger_mode: START_TRACING trigger_timeout_ms: 900000000 }",
            "trigger_config.trigger_timeout_ms must be > 0 and at most 7 days (604800000 ms) "
            "with a trigger_mode, got 900000000",
        ),
        (
            BUFFER + "trigger_config { trigger_mode: STOP_TRACING }",
            "trigger_config.trigger_timeout_ms must be > 0 and at most 7 days (604800000 ms) "
            "with a trigger_mode, got 0",
        ),
        (
            BUFFER + "trigger_config { trigger_mode: START_TRACING trigger_timeout_ms: 1000 "
            "use_clone_snapshot_if_available: true }",
            "trigger_config.use_clone_snapshot_if_available needs trigger_mode STOP_TRACING",
        ),
        (
            BUFFER + "duration_ms: 10 trigger_config { trigger_mode: STOP_TRACING "
            "trigger_timeout_ms: 1000 }",
            "duration_ms must not be set with a trigger_mode (the triggers end the session)",
        ),
        (
            BUFFER + "write_into_file: true trigger_config { trigger_mode: STOP_TRACING "
            "trigger_timeout_ms: 1000 }",
            "trigger_mode STOP_TRACING and write_into_file cannot be used together",
        ),
        (
            BUFFER + "write_into_file: true trigger_config { trigger_mode: CLONE_SNAPSHOT "
            "trigger_timeout_ms: 1000 }",
            "trigger_mode CLONE_SNAPSHOT and write_into_file cannot be used together",
        ),
        (
            BUFFER + "write_into_file: true trigger_config { trigger_mode: STOP_TRACING "
            "use_clone_snapshot_if_available: true trigger_timeout_ms: 1000 }",
            "trigger_mode STOP_TRACING and write_into_file cannot be used together",
        ),
        (
            BUFFER + "trigger_config { trigger_mode: STOP_TRACING trigger_timeout_ms: 1000 "
            'triggers { name: "a" } triggers { name: "b" } triggers { name: "a" } }',
            "duplicate trigger name 'a' (trigger_config.triggers[2])",
        ),
        (
            BUFFER + "trigger_config { trigger_mode: START_TRACING trigger_timeout_ms: 1000 "
            'triggers { name: "a" producer_name_regex: "(" } }',
            "trigger_config.triggers[0].producer_name_regex '(' is not a valid regular expression",
        ),
        (
            BUFFER + "trigger_config { trigger_mode: START_TRACING trigger_timeout_ms: 1000 "
            'triggers { name: "a" skip_probability: 1.5 } }',
            "trigger_config.triggers[0].skip_probability must be between 0 and 1, got 1.5",
        ),
        ("buffers { size_kb: 0 }", "buffers[0].size_kb must be > 0 and < 4 GiB, got 0"),
        (
            BUFFER + "buffers { size_kb: 4194304 }",
            "buffers[1].size_kb must be > 0 and < 4 GiB, got 4194304",
        ),
        (
            'buffers { size_kb: 4 name: "a" } buffers { size_kb: 4 name: "b" } '
            'buffers { size_kb: 4 name: "a" }',
            "duplicate buffer name 'a': buffers[2] and buffers[0]",
        ),
        (
            BUFFER + 'data_sources { config { name: "x" target_buffer: 1 } }',
            "data_sources[0] ('x'): target_buffer 1 out of range (1 buffers)",
        ),
        (
            BUFFER + 'data_sources { config { name: "x" target_buffer_name: "big" } }',
            "data_sources[0] ('x'): no buffer named 'big'",
        ),
        (
            BUFFER + 'buffers { size_kb: 4 name: "b" } buffers { size_kb: 4 } '
            'data_sources { config { name: "x" target_buffer: 2 target_buffer_name: "b" } }',
            "data_sources[0] ('x'): target_buffer 2 and target_buffer_name 'b' (buffers[1]) "
            "disagree",
        ),
        (
            BUFFER + 'data_sources { config { name: "x" } producer_name_regex_filter: "ok" '
            'producer_name_regex_filter: "[" }',
            "data_sources[0].producer_name_regex_filter[1] '[' is not a valid regular expression",
        ),
    ],
)
def test_a_rule_traced_applies_refuses_with_its_reason(text, expected):
    assert error(text).startswith(expected)


@pytest.mark.parametrize(
    "text",
    [
        BUFFER + "duration_ms: 604800000",
        BUFFER + "trigger_config { trigger_mode: START_TRACING trigger_timeout_ms: 604800000 }",
        BUFFER + "trigger_config { trigger_mode: STOP_TRACING trigger_timeout_ms: 1 "
        'use_clone_snapshot_if_available: true triggers { name: "a" skip_probability: 1 } }',
        BUFFER + "write_into_file: true trigger_config { trigger_mode: START_TRACING "
        "trigger_timeout_ms: 1000 }",
        # traced cannot tell target_buffer 0 from unset: the name wins.
        BUFFER + 'buffers { size_kb: 4 name: "b" } '
        'data_sources { config { name: "x" target_buffer: 0 target_buffer_name: "b" } }',
        # Unnamed buffers are not duplicates of each other.
        BUFFER + BUFFER + "file_write_period_ms: 1 write_into_file: true",
        BUFFER + 'trigger_config { triggers { name: "a" } triggers { name: "a" } }',
    ],
)
def test_what_traced_accepts_is_accepted(text):
    assert error(text) == ""


def test_target_buffer_name_resolves_to_its_index():
    config = cfg('buffers { size_kb: 4 } buffers { size_kb: 4 name: "b" }')
    ds = pb.DataSourceConfig(name="x", target_buffer_name="b")
    assert target_buffer_index(config, ds) == (1, "")


def test_a_unique_session_name_is_held_once_but_not_by_a_clone():
    text = BUFFER + 'unique_session_name: "s"'
    held = SimpleNamespace(config=cfg(text), state=SessionState.STARTED)
    clone = SimpleNamespace(config=cfg(text), state=SessionState.CLONED_READ_ONLY)
    assert error(text, [held]) == "a session with unique_session_name 's' already exists"
    assert error(text, [clone]) == ""
    assert error(BUFFER + 'unique_session_name: "t"', [held]) == ""


# -- ignored fields ---------------------------------------------------------------------


def test_every_implemented_field_is_not_named():
    text = """
        buffers { size_kb: 64 fill_policy: DISCARD name: "main" transfer_on_clone: true
                  clear_before_clone: true }
        data_sources { config { name: "track_event" target_buffer: 0 target_buffer_name: "main"
                                track_event_config { enabled_categories: "*" }
                                ftrace_config { ftrace_events: "sched_switch" }
                                legacy_config: "x" buffer_exhausted_policy: BUFFER_EXHAUSTED_DROP }
                       producer_name_filter: "a" producer_name_regex_filter: "b.*" }
        duration_ms: 1 deferred_start: true flush_period_ms: 1 flush_timeout_ms: 1
        data_source_stop_timeout_ms: 1 incremental_state_config { clear_period_ms: 5 }
        unique_session_name: "n" write_into_file: true file_write_period_ms: 100
        max_file_size_bytes: 5 output_path: "/tmp/x" compression_type: COMPRESSION_TYPE_DEFLATE
        trace_uuid_msb: 1 trace_uuid_lsb: 2
        trigger_config { trigger_mode: STOP_TRACING use_clone_snapshot_if_available: true
                         trigger_timeout_ms: 5
                         triggers { name: "t" producer_name_regex: "p" stop_delay_ms: 1
                                    max_per_24_h: 2 skip_probability: 0.5 } }
        builtin_data_sources { disable_clock_snapshotting: true disable_trace_config: true
                               disable_system_info: true disable_service_events: true
                               primary_trace_clock: BUILTIN_CLOCK_MONOTONIC
                               snapshot_interval_ms: 5 disable_chunk_usage_histograms: true }
        producers { producer_name: "p" shm_size_kb: 1024 page_size_kb: 16 }
    """
    assert ignored_fields(cfg(text)) == []


def test_ignored_fields_are_named_by_path_at_every_depth():
    text = """
        buffers { size_kb: 64 } buffers { size_kb: 64 experimental_mode: TRACE_BUFFER_V2 }
        data_sources { config { name: "a" } }
        data_sources { config { name: "b" tracing_session_id: 7 trace_duration_ms: 9
                                stop_timeout_ms: 1 enable_extra_guardrails: true }
                       machine_name_filter: "host" }
        trace_filter { bytecode: "x" }
        builtin_data_sources { disable_extension_descriptors: true
                               enable_concurrent_session_events: true }
        lockdown_mode: LOCKDOWN_SET
        bugreport_score: 3
        activate_triggers: "t"
    """
    assert ignored_fields(cfg(text)) == [  # in field number order
        "buffers[1].experimental_mode",
        "data_sources[1].config.trace_duration_ms (set by the service)",
        "data_sources[1].config.tracing_session_id (set by the service)",
        "data_sources[1].config.enable_extra_guardrails (set by the service)",
        "data_sources[1].config.stop_timeout_ms (set by the service)",
        "lockdown_mode",
        "activate_triggers",
        "builtin_data_sources.disable_extension_descriptors",
        "builtin_data_sources.enable_concurrent_session_events",
        "bugreport_score",
        "trace_filter",
    ]


def test_each_out_of_scope_field_is_named_never_refused():
    for name in OUT_OF_SCOPE:
        assert name not in IMPLEMENTED
        config = cfg(BUFFER)
        _set_some_value(config, pb.TraceConfig.DESCRIPTOR.fields_by_name[name])
        assert name in ignored_fields(config), name
        assert config_error(config, []) == "", name


def _set_some_value(config: pb.TraceConfig, field) -> None:
    value = getattr(config, field.name)
    if field.message_type is not None:
        value.add() if field.is_repeated else value.SetInParent()
    elif field.is_repeated:
        value.append("x")
    elif field.type == field.TYPE_STRING:
        setattr(config, field.name, "x")
    else:
        setattr(config, field.name, 1)


def test_fields_of_a_newer_schema_are_named_by_number():
    data = cfg(BUFFER).SerializeToString() + b"\xf8\x7f\x01"  # field 2047, varint 1
    assert ignored_fields(pb.TraceConfig.FromString(data)) == ["<field 2047> (unknown)"]


def test_triggers_without_a_mode_are_named_as_doing_nothing():
    config = cfg(BUFFER + 'trigger_config { triggers { name: "t" } }')
    assert ignored_fields(config) == [
        "trigger_config.triggers (no trigger_mode: the triggers do nothing)"
    ]


@pytest.mark.parametrize(
    "entry, note",
    [
        ("shm_size_kb: 1024", None),
        ('producer_name: "p" shm_size_kb: 1024 page_size_kb: 32', None),
        ('producer_name: "p"', None),
        (
            'producer_name: "p" page_size_kb: 3',
            "producers[0] (not a valid SMB: its producer gets 256 KiB in pages of 4 KiB)",
        ),
        (
            'producer_name: "p" shm_size_kb: 65536',
            "producers[0] (not a valid SMB: its producer gets 32768 KiB in pages of 4 KiB)",
        ),
        (
            'producer_name: "p" shm_size_kb: 20 page_size_kb: 8',
            "producers[0] (not a valid SMB: its producer gets 256 KiB in pages of 4 KiB)",
        ),
    ],
)
def test_a_producers_entry_that_cannot_be_honoured_is_named(entry, note):
    config = cfg(BUFFER + f"producers {{ {entry} }}")
    expected = [note] if note else []
    if "producer_name" not in entry:
        expected = ["producers[0] (no producer_name: it matches no producer)"]
    assert ignored_fields(config) == expected


def test_the_first_producers_entry_of_a_name_sizes_it():
    config = cfg(
        BUFFER + 'producers { producer_name: "p" shm_size_kb: 64 } '
        'producers { producer_name: "q" } producers { producer_name: "p" shm_size_kb: 128 }'
    )
    assert producer_entry(config, "p") == 0 and producer_entry(config, "r") is None
    assert ignored_fields(config) == ["producers[2] (producers[0] already sizes producer 'p')"]


def test_deflate_compression_is_implemented_and_zstd_is_named():
    config = cfg(BUFFER)
    config.compression.deflate.SetInParent()
    assert ignored_fields(config) == []
    config.compression.zstd.level = 3
    assert ignored_fields(config) == ["compression.zstd"]
