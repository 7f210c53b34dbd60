"""`import tracebus` stays cheap (issue 10, item 3): at most 100 ms more than
`python -c pass` (median of 5, at calibration 55 ns, scaled), measured by the
start-up benchmark, which also shows the producer side never loads Perfetto's schema."""

from __future__ import annotations

import json

import pytest

from benchmarks import startup

pytestmark = pytest.mark.timeout(300)

KEYS = {
    "python_pass_ms", "import_tracebus_ms", "import_overhead_ms", "producer_import_ms",
    "producer_loads_perfetto", "calibration_ns",
}  # fmt: skip


def test_import_tracebus_costs_at_most_100_ms_more_than_python(tmp_path, capsys):
    path = tmp_path / "startup.json"
    assert startup.main(["--runs", "5", "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    assert set(results) == KEYS
    target = startup.import_overhead_target_ms(results["calibration_ns"])
    assert results["import_overhead_ms"] <= target, results
    assert results["producer_loads_perfetto"] is False
    assert "import tracebus adds" in capsys.readouterr().out
