"""Benchmark targets scale with the machine's calibration, in the right direction."""

from __future__ import annotations

import pytest

from benchmarks.calibration import REFERENCE_NS, scaled_target


def test_a_slower_machine_gets_looser_targets_both_ways():
    slow = 2 * REFERENCE_NS
    assert scaled_target("<=", 1500.0, slow) == pytest.approx(3000.0)  # a time may take longer
    assert scaled_target(">=", 200.0, slow) == pytest.approx(100.0)  # a rate may be lower
    assert scaled_target("<=", 1500.0, REFERENCE_NS) == pytest.approx(1500.0)
