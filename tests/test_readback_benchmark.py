"""`python -m benchmarks.readback --quick` runs end to end and writes the figures the
issue names, with their types (the figures themselves are the benchmark's to judge)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.processes import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KEYS = {
    "e2e_readback_mb_s": float,
    "readback_complete": bool,
    "readback_max_stall_ms": float,
    "readback_rss_growth_mib": float,
    "loss_exact": bool,
    "calibration_ns": float,
}


def test_quick_run_writes_every_key_with_its_type(tmp_path):
    out = tmp_path / "readback.json"
    argv = [sys.executable, "-m", "benchmarks.readback", "--quick", "--json", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    assert set(figures) == set(KEYS)
    for key, kind in KEYS.items():
        assert type(figures[key]) is kind, (key, figures[key])
    assert figures["readback_complete"] is True, "the stock CLI read back the whole buffer"
    assert figures["e2e_readback_mb_s"] > 0 and figures["calibration_ns"] > 0
    for key in KEYS:
        assert f"\n{key} " in done.stdout, "one table row per figure"
