"""actors/core/ftrace_plan.py: FtraceConfig -> what the kernel is asked, by Perfetto's rules."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.ftrace_plan import (
    DEFAULT_DRAIN_PERIOD_MS,
    HIGH_RAM_BUFFER_KB,
    LOW_RAM_BUFFER_KB,
    buffer_size_kb,
    plan_ftrace,
    resolve_events,
)

GIB = 1 << 30
AVAILABLE = {
    "sched": {"sched_switch", "sched_waking", "sched_wakeup"},
    "task": {"task_newtask", "task_rename"},
    "ftrace": {"print", "function"},
    "power": {"cpu_idle"},
}


def config(text: str) -> pb.FtraceConfig:
    from google.protobuf import text_format

    return text_format.Parse(text, pb.FtraceConfig())


def test_events_resolve_with_groups_wildcards_and_bare_names() -> None:
    wanted, unknown = resolve_events(
        ["sched/sched_switch", "task/*", "cpu_idle", "sched/sched_switch", "nope/x",
         "no_such_event", "sched/nothing", "empty/*", "trailing/"],
        AVAILABLE,
    )  # fmt: skip
    assert wanted == [
        ("sched", "sched_switch"), ("task", "task_newtask"), ("task", "task_rename"),
        ("power", "cpu_idle"),
    ]  # fmt: skip
    assert unknown == ["nope/x", "no_such_event", "sched/nothing", "empty/*", "trailing/"]


@given(st.lists(st.text(max_size=20), max_size=10))
def test_resolution_never_raises_and_partitions_the_requests(requests: list[str]) -> None:
    wanted, unknown = resolve_events(requests, AVAILABLE)
    assert all(name in AVAILABLE[group] for group, name in wanted)
    assert len(wanted) == len(set(wanted))
    assert set(unknown) <= set(requests)


def test_buffer_size_follows_perfetto_defaults_and_lower_bound() -> None:
    assert buffer_size_kb(0, False, 16 * GIB, 4096) == HIGH_RAM_BUFFER_KB
    assert buffer_size_kb(0, False, 4 * GIB, 4096) == LOW_RAM_BUFFER_KB
    assert buffer_size_kb(100, False, 16 * GIB, 4096) == 100
    assert buffer_size_kb(6, False, 16 * GIB, 4096) == 4  # whole pages
    assert buffer_size_kb(1, False, 16 * GIB, 4096) == 4  # at least one page
    assert buffer_size_kb(100, True, 16 * GIB, 4096) == HIGH_RAM_BUFFER_KB
    assert buffer_size_kb(65536, True, 16 * GIB, 4096) == 65536


def test_plan_defaults_and_reports_what_it_ignores() -> None:
    plan = plan_ftrace(
        config('ftrace_events: "sched/sched_switch" atrace_categories: "x" symbolize_ksyms: true'),
        16 * GIB, 4096,
    )  # fmt: skip
    assert plan.events == ("sched/sched_switch",)
    assert plan.drain_period_ms == DEFAULT_DRAIN_PERIOD_MS
    assert plan.compact_sched is True  # Perfetto's default since compact_sched.cc
    assert plan.ignored == ("atrace_categories", "symbolize_ksyms")
    assert plan.notes == ()


def test_plan_honours_its_fields_and_falls_back_on_bad_periods() -> None:
    plan = plan_ftrace(
        config("buffer_size_kb: 64 drain_period_ms: 250 compact_sched { enabled: false }"
               " disable_generic_events: true"),
        16 * GIB, 4096,
    )  # fmt: skip
    assert (plan.buffer_size_kb, plan.drain_period_ms) == (64, 250)
    assert plan.compact_sched is False and plan.disable_generic_events is True
    assert plan.ignored == ()
    for bad in (0, 60_001):
        plan = plan_ftrace(config(f"drain_period_ms: {bad}"), 16 * GIB, 4096)
        assert plan.drain_period_ms == DEFAULT_DRAIN_PERIOD_MS
        assert plan.notes and str(bad) in plan.notes[0]
