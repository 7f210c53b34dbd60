"""benchmarks/sdk_events.py runs (a quick smoke run under tracebus run) and
reports every figure, calibration_ns among them."""

from __future__ import annotations

import json
import sys

from benchmarks.sdk_events import ROWS
from tests.processes import REPO, Runtime


def test_the_sdk_benchmark_reports_each_call(rt: Runtime) -> None:
    out = rt.dir / "sdk.json"
    env = {"XDG_RUNTIME_DIR": str(rt.dir / "xdg")}  # the runner's own service, in here
    (rt.dir / "xdg").mkdir(mode=0o700)
    proc = rt.run([sys.executable, "-m", "benchmarks.sdk_events", "--quick", "--json", str(out)],
                  env=env, timeout=300, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert set(figures) == {key for key, _ in ROWS} | {"calibration_ns"}
    assert figures["calibration_ns"] > 0
    # A slice nobody wants costs far less than one that is written.
    assert figures["loop_ns"] < figures["disabled_slice_ns"] < figures["slice_ns"]
    for label in ("slice (begin + end)", "calibration_ns"):
        assert label in proc.stdout
