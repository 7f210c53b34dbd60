"""Start-up cost of an instrumented process (issue 10, item 3).

    python -m benchmarks.startup [--runs N] [--json FILE]

Each figure is the median of N fresh interpreters (5 by default), started the
way an application starts (`sys.executable`, this environment):

  python_pass_ms          wall time of `python -c pass`, process start to exit
  import_tracebus_ms      the same for `python -c "import tracebus"`
  import_overhead_ms      the difference: what `import tracebus` adds; target
                          <= 100 ms at calibration 55 ns (scaled linearly)
  producer_import_ms      inside a process that imported tracebus, the import of
                          the producer side (tracebus._data_source: actors.producer,
                          zmq, the protocol's protobuf module, shm), what the first
                          event pays on the SDK's background thread
  producer_loads_perfetto whether that import loaded any `perfetto` module (the
                          Perfetto schema); must be false
  calibration_ns          benchmarks/calibration.py, measured in this run

Wall times include the interpreter's own start, so only the difference is
compared with the target; rerun on a busy machine (this VM has 2 cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.calibration import calibration_ns, save_json, scaled_target

REPO = Path(__file__).resolve().parent.parent
IMPORT_OVERHEAD_TARGET_MS = 100.0  # at calibration 55 ns
PRODUCER_PROBE = (
    "import sys, time, json, tracebus\n"
    "t0 = time.perf_counter()\n"
    "import tracebus._data_source\n"
    "ms = (time.perf_counter() - t0) * 1e3\n"
    "print(json.dumps([ms, any(m.startswith('perfetto') for m in sys.modules)]))\n"
)


def wall_ms(code: str) -> float:
    """Wall time of `python -c code`, from the spawn to the exit."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return (time.perf_counter() - t0) * 1e3


def producer_import() -> tuple[float, bool]:
    """(ms, loaded Perfetto's schema) of the producer side's import, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", PRODUCER_PROBE], cwd=REPO, check=True, capture_output=True, text=True
    )
    ms, loaded = json.loads(out.stdout)
    return float(ms), bool(loaded)


def measure(runs: int = 5) -> dict[str, float | bool]:
    """The figures of the module docstring (interleaved runs: a load spike hits both)."""
    passes, imports = [], []
    for _ in range(runs):
        passes.append(wall_ms("pass"))
        imports.append(wall_ms("import tracebus"))
    producer = [producer_import() for _ in range(runs)]
    pass_ms, import_ms = statistics.median(passes), statistics.median(imports)
    return {
        "python_pass_ms": round(pass_ms, 1),
        "import_tracebus_ms": round(import_ms, 1),
        "import_overhead_ms": round(import_ms - pass_ms, 1),
        "producer_import_ms": round(statistics.median(ms for ms, _ in producer), 1),
        "producer_loads_perfetto": any(loaded for _, loaded in producer),
        "calibration_ns": round(calibration_ns(), 1),
    }


def import_overhead_target_ms(calibration: float) -> float:
    return scaled_target("<=", IMPORT_OVERHEAD_TARGET_MS, calibration)


def report(results: dict[str, float | bool]) -> str:
    target = import_overhead_target_ms(float(results["calibration_ns"]))
    rows = [
        ("python -c pass", f"{results['python_pass_ms']} ms", ""),
        ("python -c 'import tracebus'", f"{results['import_tracebus_ms']} ms", ""),
        ("import tracebus adds", f"{results['import_overhead_ms']} ms", f"<= {target:.0f} ms"),
        ("producer import (first event)", f"{results['producer_import_ms']} ms", ""),
        ("producer loads Perfetto's schema", str(results["producer_loads_perfetto"]), "False"),
    ]
    lines = [f"{'start-up':34} {'median':>10}  target"]
    lines += [f"{name:34} {value:>10}  {goal}" for name, value, goal in rows]
    machine = f"{platform.node()} {platform.machine()}, python {platform.python_version()}"
    lines.append(f"machine: {machine}, calibration {results['calibration_ns']} ns")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="interpreters per figure (median)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    results = measure(max(1, args.runs))
    print(report(results))
    save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
