"""benchmarks/sdk.py runs (a quick run: a real session under `tracebus run`, the
pure-Python process, the peers) and reports every figure the issue names, each
event it timed read back from the trace."""

from __future__ import annotations

import json
import sys

from benchmarks.sdk import (
    COUNTERS,
    PEERS,
    PURE,
    RECORDED,
    TARGETS,
    check_targets,
    table,
    tracebus_figures,
)
from benchmarks.statement_timer import statement_ns
from tests.processes import REPO, Runtime
from tracebus.trace_summary import CounterInfo, TraceContents

ISSUE_KEYS = {
    "slice_ns", "slice_args_ns", "counter_ns", "instant_ns", "disabled_slice_ns",
    "noop_with_ns", "slice_ns_pure", "viztracer_slice_ns", "otel_span_ns",
    "queue_handler_ns", "all_events_read_back", "calibration_ns",
}  # fmt: skip
FIGURES = ISSUE_KEYS - {"all_events_read_back"}


def test_the_sdk_benchmark_reads_back_every_event_it_timed(rt: Runtime) -> None:
    out = rt.dir / "sdk.json"
    env = {"XDG_RUNTIME_DIR": str(rt.dir / "xdg")}  # the runner's own service, in here
    (rt.dir / "xdg").mkdir(mode=0o700)
    proc = rt.run([sys.executable, "-m", "benchmarks.sdk", "--quick", "--json", str(out)],
                  env=env, timeout=300, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert ISSUE_KEYS <= set(figures)
    assert figures["all_events_read_back"] is True, figures
    for key in FIGURES:
        assert figures[key] > 0, key
    timed, found = figures["events_timed"], figures["events_in_trace"]
    assert found == {**timed, "disabled_slice_ns": 0}  # and none of the unwanted category
    assert figures["pure_python_forced"] is True
    recorded = figures["peer_events_recorded"]
    for key in ("viztracer_slice_ns", "queue_handler_ns"):  # a ring far larger than a round,
        # an unbounded queue: nothing dropped
        assert recorded[key][0] == recorded[key][1], key
    assert 0 < recorded["otel_span_ns"][0] <= recorded["otel_span_ns"][1]  # its queue may drop
    assert len(figures["targets"]) == len(TARGETS)
    for label in [row.label for row in RECORDED + PURE] + [label for _, label in PEERS]:
        assert label in proc.stdout
    assert "LOST" not in proc.stdout


# -- the read-back rule, on trace contents made here -------------------------------------------

PER_ROUND, EXECUTED = 10, 31


def _results(pure_dropped: int = 0) -> dict:
    def process(rows: list, dropped: int) -> dict:
        return {
            "ns": {row.key: 1000.0 for row in rows},
            "executed": {row.key: EXECUTED for row in rows},
            "sdk_stats": {"dropped_packets": dropped, "errors": 0},
            "pure_python": True,
        }

    return {"recorded": process(RECORDED, 0), "pure": process(PURE, pure_dropped)}


def _contents() -> TraceContents:
    """A trace holding every event the rows timed."""
    contents = TraceContents(has_stats=True)
    for row in RECORDED + PURE:
        if row.expected == "all" and row.event in COUNTERS:
            contents.counters[row.event] = CounterInfo(
                row.event, samples=EXECUTED, min=0, max=PER_ROUND - 1
            )
        elif row.expected == "all":
            contents.events[("c", row.event)] = EXECUTED
    return contents


def _with_peers(figures: dict) -> dict:
    figures.update(viztracer_slice_ns=3000.0, otel_span_ns=25000.0, queue_handler_ns=16000.0)
    figures["peer_events_recorded"] = {key: [1, 1] for key, _ in PEERS}
    figures["calibration_ns"] = 80.0
    return figures


def test_a_trace_with_every_event_times_every_row() -> None:
    figures = tracebus_figures(_contents(), _results(), PER_ROUND)
    assert figures["all_events_read_back"] is True
    assert all(figures[row.key] == 1000.0 for row in RECORDED + PURE)


def test_a_row_missing_one_event_is_lost_not_timed() -> None:
    contents = _contents()
    contents.events[("c", "slice")] -= 1
    figures = _with_peers(tracebus_figures(contents, _results(), PER_ROUND))
    assert figures["slice_ns"] is None
    assert figures["all_events_read_back"] is False
    assert figures["instant_ns"] == figures["slice_ns_pure"] == 1000.0
    assert check_targets(figures)["slice_ns <= viztracer_slice_ns / 3"] is None
    printed = table(figures)
    assert "tracebus slice (begin + end)" in printed and "LOST" in printed


def test_counter_values_are_checked_too() -> None:
    contents = _contents()
    contents.counters["counter"].max = PER_ROUND - 2  # as many samples, not the values timed
    figures = tracebus_figures(contents, _results(), PER_ROUND)
    assert figures["counter_ns"] is None and figures["slice_ns"] == 1000.0


def test_an_unwanted_category_in_the_trace_voids_the_disabled_row() -> None:
    contents = _contents()
    contents.events[("off", "disabled")] = 1
    figures = tracebus_figures(contents, _results(), PER_ROUND)
    assert figures["disabled_slice_ns"] is None and figures["all_events_read_back"] is False


def test_any_loss_in_the_trace_stats_voids_every_recorded_row() -> None:
    contents = _contents()
    contents.losses.chunks_discarded = 1
    figures = tracebus_figures(contents, _results(), PER_ROUND)
    assert all(figures[r.key] is None for r in RECORDED + PURE if r.event)
    assert figures["noop_with_ns"] == 1000.0  # records nothing: nothing to lose


def test_a_trace_without_stats_proves_nothing() -> None:
    contents = _contents()
    contents.has_stats = False
    assert tracebus_figures(contents, _results(), PER_ROUND)["all_events_read_back"] is False


def test_packets_the_sdk_dropped_void_that_process_rows_only() -> None:
    figures = tracebus_figures(_contents(), _results(pure_dropped=1), PER_ROUND)
    assert figures["slice_ns_pure"] is None and figures["slice_ns"] == 1000.0


# -- the timer ---------------------------------------------------------------------------------


def test_the_timer_subtracts_the_loop_and_counts_every_run() -> None:
    heavy = statement_ns("sum(range(2000))", {}, per_round=200, rounds=3)
    light = statement_ns("x = i", {}, per_round=200, rounds=3)
    assert heavy.executed == light.executed == 200 + 3 * 200
    assert heavy.ns > 10 * max(light.ns, 1.0)  # ~2000 additions against one store
    assert light.ns < heavy.statement_round_ns / heavy.per_round


def test_the_timed_statement_sees_the_namespace_and_the_loop_counter() -> None:
    seen: list[int] = []
    timing = statement_ns("seen.append(i)", {"seen": seen}, per_round=5, rounds=2)
    assert len(seen) == timing.executed and seen[-5:] == [0, 1, 2, 3, 4]
