"""benchmarks/probes.py runs (a short window, a few extra processes) and reports the
figures the issue names, with the polling it measured visible in the trace."""

from __future__ import annotations

import json
import sys

import pytest

from tests.processes import REPO, Runtime


@pytest.mark.slow
def test_the_probes_benchmark_measures_a_session_that_polled(rt: Runtime) -> None:
    out = rt.dir / "probes.json"
    argv = [sys.executable, "-m", "benchmarks.probes", "--seconds", "3", "--processes", "20"]
    proc = rt.run([*argv, "--json", str(out)], timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert {"probes_cpu_pct", "processes", "calibration_ns"} <= set(figures)
    assert 0 < figures["probes_cpu_pct"] < 100 and figures["processes"] > 20
    # About one poll a second of each, and every process named by the first scan.
    assert figures["process_stats_packets"] >= 3 and figures["sys_stats_packets"] >= 3
    assert figures["process_tree_processes"] >= figures["processes"] - 5
