"""What one event costs an application with tracebus, against its peers, in one run.

    python -m benchmarks.sdk [--quick] [--json FILE]

Every figure is the cost of ONE statement in ns, measured by
benchmarks/statement_timer.py (inline in a loop, minus the empty loop, best of
the rounds), tracebus and peers alike:

1. tracebus, recorded for real: the benchmark runs itself under `tracebus run`
   (a service of its own, a session recording every category but "off" into a
   DISCARD buffer large enough for every event, a consumer writing the trace).
   The recorded process times `with tracebus.slice("slice", category="c")` and
   the other tracebus rows (each its own event name), a slice whose category
   the session does not want, and a `with` on a trivial context manager; then
   a second recorded process, started with TRACEBUS_PURE_PYTHON=1, times the
   slice again on the pure-Python twins (slice_ns_pure).
2. The trace is read back with the official schema (tracebus/trace_summary.py)
   and every timed event counted: slices and instants per name, counter samples
   and their range. A row whose events are not all there (or, for the disabled
   slice, not all absent) is reported as lost, not timed: null in the JSON,
   LOST in the table, and all_events_read_back false. Any loss the trace's stats
   report, a trace without stats, or a packet the SDK says it dropped (its
   stats()) makes every row of that process lost: which events it hit is unknown.
3. The peers, in this process (benchmarks/sdk_peers.py): VizTracer's log_event,
   an OpenTelemetry span, a logging QueueHandler onto a multiprocessing.Queue.

Then calibration_ns (benchmarks/calibration.py), and the issue's targets, each
"ok" or "MISSED", with every peer's cost as a multiple of tracebus's slice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from tracebus.trace_summary import TraceContents

CATEGORY, OFF = "c", "off"
BUFFER_KB = 65536  # DISCARD, twice what a full run writes (~30 MiB): nothing may be lost
CONFIG = f"""
buffers {{ size_kb: {BUFFER_KB} fill_policy: DISCARD }}
data_sources {{ config {{ name: "track_event"
  track_event_config {{ disabled_categories: "{OFF}" }} }} }}
"""
FULL, QUICK = (10_000, 10), (2_000, 3)  # statements per round, rounds: short rounds, so that
# the best of them is one the other processes on the machine left alone
RUN_TIMEOUT_S = 900


class Row(NamedTuple):
    key: str
    label: str
    statement: str
    event: str  # its name in the trace; "" when nothing is recorded
    expected: str  # "all": every run is in the trace; "none": no run is


def _slice(name: str, category: str = CATEGORY, args: str = "") -> str:
    """The statement timed for a slice: begin and end, nothing inside."""
    return f'with tracebus.slice("{name}", category="{category}"{args}):\n    pass'


RECORDED = [
    Row("noop_with_ns", "with on a trivial context manager", "with cm:\n    pass", "", ""),
    Row("disabled_slice_ns", "tracebus slice, category not wanted", _slice("disabled", OFF),
        "disabled", "none"),
    Row("slice_ns", "tracebus slice (begin + end)", _slice("slice"), "slice", "all"),
    Row("slice_args_ns", "tracebus slice, 2 args",
        _slice("slice_args", args=', args={"i": i, "name": "job"}'), "slice_args", "all"),
    Row("instant_ns", "tracebus instant",
        f'tracebus.instant("instant", category="{CATEGORY}")', "instant", "all"),
    Row("counter_ns", "tracebus counter",
        f'tracebus.counter("counter", i, category="{CATEGORY}")', "counter", "all"),
]  # fmt: skip
PURE = [
    Row("slice_ns_pure", "tracebus slice, pure-Python twin", _slice("slice_pure"),
        "slice_pure", "all"),
]  # fmt: skip
COUNTERS = {"counter"}  # events recorded as counter samples, not slices or instants
PEERS = [
    ("viztracer_slice_ns", "VizTracer with log_event"),
    ("otel_span_ns", "OpenTelemetry span, batch processor"),
    ("queue_handler_ns", "logging QueueHandler, mp.Queue"),
]


class Target(NamedTuple):  # figures[key] op factor * figures[other]
    key: str
    op: str
    other: str
    factor: float
    text: str


TARGETS = [
    Target("slice_ns", "<=", "viztracer_slice_ns", 1 / 3, "<= viztracer_slice_ns / 3"),
    Target("otel_span_ns", ">=", "slice_ns", 50.0, ">= 50 x slice_ns"),
    Target("queue_handler_ns", ">=", "slice_ns", 50.0, ">= 50 x slice_ns"),
    Target("counter_ns", "<=", "slice_ns", 1.0, "<= slice_ns"),
    Target("instant_ns", "<=", "slice_ns", 1.0, "<= slice_ns"),
    Target("disabled_slice_ns", "<=", "noop_with_ns", 2.0, "<= 2 x noop_with_ns"),
]


# -- in a recorded process ---------------------------------------------------------------------


class _Trivial:
    def __enter__(self) -> _Trivial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def measure(rows: list[Row], per_round: int, rounds: int) -> dict[str, Any]:
    """In a recorded process: each row timed, what it ran, and the SDK's stats."""
    import tracebus
    from benchmarks.statement_timer import statement_ns
    from shm import native

    tracebus.init(wait_for_start=10)
    namespace = {"tracebus": tracebus, "cm": _Trivial()}
    timings = {row.key: statement_ns(row.statement, namespace, per_round, rounds) for row in rows}
    tracebus.shutdown()  # flushed and committed: what the trace can hold is there
    return {
        "ns": {key: t.ns for key, t in timings.items()},
        "executed": {key: t.executed for key, t in timings.items()},
        "sdk_stats": tracebus.stats(),
        "pure_python": native.PURE_PYTHON,
    }


def recorded_main(figures_file: str, quick: bool) -> int:
    """The command `tracebus run` records: its rows, then the pure-Python process's."""
    per_round, rounds = QUICK if quick else FULL
    results = {"recorded": measure(RECORDED, per_round, rounds)}
    pure_file = figures_file + ".pure"
    env = {**os.environ, "TRACEBUS_PURE_PYTHON": "1"}
    argv = [sys.executable, "-m", "benchmarks.sdk", "--inner-pure", pure_file]
    subprocess.run([*argv, *(["--quick"] if quick else [])], env=env, check=True,
                   timeout=RUN_TIMEOUT_S)  # fmt: skip
    results["pure"] = json.loads(Path(pure_file).read_text())
    Path(figures_file).write_text(json.dumps(results))
    return 0


def pure_main(figures_file: str, quick: bool) -> int:
    per_round, rounds = QUICK if quick else FULL
    Path(figures_file).write_text(json.dumps(measure(PURE, per_round, rounds)))
    return 0


# -- reading the trace back --------------------------------------------------------------------


def found_in_trace(contents: TraceContents, row: Row) -> int:
    """How many events of `row` the trace holds (counter samples, or slices and
    instants of that name in any category)."""
    if row.event in COUNTERS:
        info = contents.counters.get(row.event)
        return info.samples if info else 0
    return sum(n for (_category, name), n in contents.events.items() if name == row.event)


def trace_losses(contents: TraceContents) -> dict[str, int]:
    """Every loss the trace reports; a trace without stats or with a torn end counts
    as a loss too (nothing proves the events are all there)."""
    losses = dict(contents.losses.items())
    losses["trace without trace_stats"] = int(not contents.has_stats)
    losses["torn bytes at the end"] = contents.torn_bytes
    return losses


def all_there(contents: TraceContents, row: Row, executed: int, per_round: int) -> bool:
    found = found_in_trace(contents, row)
    if row.expected == "none":
        return found == 0
    if found != executed:
        return False
    if row.event in COUNTERS:  # the values too: i over each round
        info = contents.counters[row.event]
        return info.min == 0 and info.max == per_round - 1
    return True


def sdk_lost(process: dict[str, Any]) -> bool:
    stats = process["sdk_stats"]
    return bool(stats.get("dropped_packets", 1) or stats.get("errors", 1))


def tracebus_figures(
    contents: TraceContents, results: dict[str, Any], per_round: int
) -> dict[str, Any]:
    """The tracebus rows (`results` of the recorded processes, `contents` of their
    trace): ns, or None where the trace lacks what was timed."""
    losses = trace_losses(contents)
    figures: dict[str, Any] = {}
    executed: dict[str, int] = {}
    found: dict[str, int] = {}
    for rows, process in ((RECORDED, results["recorded"]), (PURE, results["pure"])):
        intact = not any(losses.values()) and not sdk_lost(process)
        for row in rows:
            runs = process["executed"][row.key]
            ok = not row.event or (intact and all_there(contents, row, runs, per_round))
            figures[row.key] = process["ns"][row.key] if ok else None
            if row.event:
                executed[row.key], found[row.key] = runs, found_in_trace(contents, row)
    figures["all_events_read_back"] = all(figures[row.key] is not None for row in RECORDED + PURE)
    figures["events_timed"], figures["events_in_trace"] = executed, found
    figures["trace_losses"], figures["trace_bytes"] = losses, contents.bytes
    figures["sdk_stats"] = {name: results[name]["sdk_stats"] for name in ("recorded", "pure")}
    figures["pure_python_forced"] = results["pure"]["pure_python"]
    return figures


# -- the run -----------------------------------------------------------------------------------


def record(quick: bool, tmp: Path) -> tuple[dict[str, Any], Path]:
    """Run the recorded processes under `tracebus run`: their results, and the trace."""
    config, figures_file, trace = tmp / "c.pbtxt", tmp / "f.json", tmp / "t.pftrace"
    config.write_text(CONFIG)
    inner = [sys.executable, "-m", "benchmarks.sdk", "--inner", str(figures_file)]
    run = [sys.executable, "-m", "tracebus", "run", "-c", str(config), "--txt", "-o", str(trace),
           "--", *inner, *(["--quick"] if quick else [])]  # fmt: skip
    done = subprocess.run(run, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if done.returncode != 0 or not figures_file.exists():
        raise RuntimeError(f"tracebus run failed ({done.returncode}):\n{done.stderr}")
    return json.loads(figures_file.read_text()), trace


def peer_figures(per_round: int, rounds: int) -> dict[str, Any]:
    from benchmarks import sdk_peers

    figures: dict[str, Any] = {}
    delivered: dict[str, list[int]] = {}
    for key, measure_peer in (("viztracer_slice_ns", sdk_peers.viztracer_slice),
                              ("otel_span_ns", sdk_peers.otel_span),
                              ("queue_handler_ns", sdk_peers.queue_handler)):  # fmt: skip
        timing, recorded = measure_peer(per_round, rounds)
        figures[key] = timing.ns
        delivered[key] = [recorded, timing.executed]
    figures["peer_events_recorded"] = delivered  # [recorded, timed] per peer
    return figures


def check_targets(figures: dict[str, Any]) -> dict[str, bool | None]:
    """Each target: True met, False missed, None when a figure it needs was lost."""
    checks: dict[str, bool | None] = {}
    for t in TARGETS:
        value, other = figures.get(t.key), figures.get(t.other)
        name = f"{t.key} {t.text}"
        if value is None or other is None:
            checks[name] = None
        else:
            bound = t.factor * other
            checks[name] = value <= bound if t.op == "<=" else value >= bound
    return checks


# -- the table ---------------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    return "LOST" if ok is None else "ok" if ok else "MISSED"


def table(figures: dict[str, Any]) -> str:
    """One row per figure: ns per event, as a multiple of tracebus's slice, its target."""
    checks = check_targets(figures)
    targets = {t.key: (t.text, checks[f"{t.key} {t.text}"]) for t in TARGETS}
    slice_ns = figures["slice_ns"]
    lines = [f"{'event':<38} {'ns/event':>9} {'x slice':>8}  target"]
    for key, label in [(r.key, r.label) for r in RECORDED + PURE] + PEERS:
        value = figures[key]
        ns = "LOST" if value is None else f"{value:.0f}"
        ratio = "" if value is None or not slice_ns else f"{value / slice_ns:.2f}"
        text, ok = targets.get(key, ("", None))
        target = f"{text}: {_verdict(ok)}" if text else ""
        lines.append(f"{label:<38} {ns:>9} {ratio:>8}  {target}".rstrip())
    lines.append(f"{'calibration_ns':<38} {figures['calibration_ns']:>9.1f}")
    read_back = figures["all_events_read_back"]
    timed, found = figures["events_timed"], figures["events_in_trace"]
    counts = ", ".join(f"{key} {found[key]}/{timed[key]}" for key in timed)
    counts = counts.replace("disabled_slice_ns 0/", "disabled_slice_ns (none wanted) 0/")
    lines.append(f"all_events_read_back: {str(read_back).lower()} (in the trace / timed: {counts};"
                 f" trace {figures['trace_bytes'] / 2**20:.1f} MiB)")  # fmt: skip
    losses = {name: n for name, n in figures["trace_losses"].items() if n}
    if losses:
        lines.append(f"the trace reports losses: {losses}")
    for key, (recorded, ran) in figures["peer_events_recorded"].items():
        if recorded != ran:
            lines.append(f"{key}: the peer recorded {recorded} of {ran} events")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("--inner", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--inner-pure", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        return recorded_main(args.inner, args.quick)
    if args.inner_pure:
        return pure_main(args.inner_pure, args.quick)
    from benchmarks.calibration import calibration_ns, save_json

    per_round, rounds = QUICK if args.quick else FULL
    from tracebus.trace_summary import read_trace

    with tempfile.TemporaryDirectory(prefix="tb-sdk-") as tmp:
        try:
            results, trace = record(args.quick, Path(tmp))
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        figures = tracebus_figures(read_trace(trace), results, per_round)
    figures.update(peer_figures(per_round, rounds))
    figures["calibration_ns"] = calibration_ns()
    figures["rounds"], figures["statements_per_round"] = rounds, per_round
    figures["targets"] = check_targets(figures)
    print(table(figures))
    save_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
