"""What one call of the tracebus API costs an application, recorded for real.

    python -m benchmarks.sdk_events [--quick] [--json FILE]

Runs itself under `tracebus run` (a service of its own, a session recording
every category but `off`, a 64 MiB ring buffer) and times, in the recorded
process, each call in a loop: the loop alone (the baseline), a slice whose
category no session wants, a slice, a slice with two args, an instant, a
counter, a call of a @tracebus.trace function, and a log record through
tracebus.LoggingHandler minus the same record through a handler that does
nothing (what logging costs by itself is printed beside it). Figures are the
best of three rounds, in ns per call, with calibration_ns
(benchmarks/calibration.py); the next issue's targets will be stated against
them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

CONFIG = """
buffers { size_kb: 65536 fill_policy: RING_BUFFER }
data_sources { config { name: "track_event" track_event_config { disabled_categories: "off" } } }
"""


def _best_ns(fn: Callable[[int], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter_ns()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter_ns() - start) / n)
    return best


def measure(n: int) -> dict[str, float]:
    """In the recorded process: ns per call of each kind."""
    import tracebus

    tracebus.init(wait_for_start=10)

    def loop(i: int) -> None:
        pass

    def disabled(i: int) -> None:
        with tracebus.slice("x", category="off"):
            pass

    def plain(i: int) -> None:
        with tracebus.slice("work"):
            pass

    def with_args(i: int) -> None:
        with tracebus.slice("work", args={"i": i, "name": "job"}):
            pass

    @tracebus.trace
    def traced(i: int) -> None:
        pass

    figures = {
        "loop_ns": _best_ns(loop, n),
        "disabled_slice_ns": _best_ns(disabled, n),
        "slice_ns": _best_ns(plain, n),
        "slice_2_args_ns": _best_ns(with_args, n),
        "instant_ns": _best_ns(lambda i: tracebus.instant("tick"), n),
        "counter_ns": _best_ns(lambda i: tracebus.counter("depth", i), n),
        "trace_call_ns": _best_ns(traced, n),
    }
    log = logging.getLogger("bench")
    log.propagate, log.level = False, logging.INFO
    nothing = logging.NullHandler()
    log.addHandler(nothing)
    logging_alone = _best_ns(lambda i: log.info("job %d done", i), n // 2)
    log.removeHandler(nothing)
    log.addHandler(tracebus.LoggingHandler())
    with_handler = _best_ns(lambda i: log.info("job %d done", i), n // 2)
    figures["logging_alone_ns"] = logging_alone
    figures["log_handler_ns"] = with_handler - logging_alone
    return figures


ROWS = [
    ("loop_ns", "the loop alone"),
    ("disabled_slice_ns", "slice, category not wanted"),
    ("slice_ns", "slice (begin + end)"),
    ("slice_2_args_ns", "slice with 2 args"),
    ("instant_ns", "instant"),
    ("counter_ns", "counter"),
    ("trace_call_ns", "@trace call"),
    ("log_handler_ns", "LoggingHandler, its own cost"),
    ("logging_alone_ns", "logging.info itself"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("--inner", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n = 5_000 if args.quick else 50_000
    if args.inner:  # the recorded process
        with open(args.inner, "w") as f:
            json.dump(measure(n), f)
        return 0
    from benchmarks.calibration import calibration_ns, save_json

    with tempfile.TemporaryDirectory(prefix="tb-bench-") as tmp:
        config, figures_file = os.path.join(tmp, "c.pbtxt"), os.path.join(tmp, "f.json")
        with open(config, "w") as f:
            f.write(CONFIG)
        inner = [sys.executable, "-m", "benchmarks.sdk_events", "--inner", figures_file]
        if args.quick:
            inner.append("--quick")
        run = [sys.executable, "-m", "tracebus", "run", "-c", config, "--txt",
               "-o", os.path.join(tmp, "t.pftrace"), "--", *inner]  # fmt: skip
        done = subprocess.run(run, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        with open(figures_file) as f:
            figures = json.load(f)
    figures["calibration_ns"] = calibration_ns()
    print(f"{'call':<32} {'ns':>8}")
    for key, label in ROWS:
        print(f"{label:<32} {figures[key]:>8.0f}")
    print(f"{'calibration_ns':<32} {figures['calibration_ns']:>8.1f}")
    save_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
