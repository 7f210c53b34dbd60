"""How fast this machine runs plain Python right now, so that figures from
different days (this VM varies about 2.5x) can be compared.

`calibration_ns()` is the nanoseconds per iteration of
`for i in range(10**7): x += i` run at module level (names in a dict, as in a
script: about 55 ns on a quiet day here; the same loop inside a function runs
about twice as fast, so the two must not be mixed), the best of three runs.
Absolute targets are
stated for 55 ns and scale linearly with it: a time target is multiplied by
calibration_ns / 55, a throughput target divided by it.
"""

from __future__ import annotations

import json
import time

REFERENCE_NS = 55.0
_ITERATIONS = 10**7
_LOOP = compile(f"x = 0\nfor i in range({_ITERATIONS}):\n    x += i\n", "<calibration>", "exec")


def calibration_ns(rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        exec(_LOOP, {})  # module-level name lookups, as the reference figure was taken
        best = min(best, (time.perf_counter_ns() - start) / _ITERATIONS)
    return best


def scaled_target(op: str, bound: float, calibration: float) -> float:
    """`bound` (stated for REFERENCE_NS) on a machine that measures `calibration`."""
    factor = calibration / REFERENCE_NS
    return bound * factor if op == "<=" else bound / factor


def save_json(path: str | None, results: dict) -> None:
    """Write a benchmark's figures (calibration_ns among them) as JSON, if asked."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
