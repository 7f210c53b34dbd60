"""`python -m benchmarks.readback --quick` runs end to end and writes the figures the
issue names, with their types (the figures themselves are the benchmark's to judge);
its loss check holds only when every producer's sequence accounts for its drops."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from benchmarks.readback import _losses_match
from tests.processes import REPO

KEYS = {
    "e2e_readback_mb_s": float,
    "readback_complete": bool,
    "readback_max_stall_ms": float,
    "readback_rss_growth_mib": float,
    "loss_exact": bool,
    "calibration_ns": float,
}


@pytest.mark.slow
@pytest.mark.timeout(600)
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


def packet(seq: int, counter: int, pid: int, *, after_loss: bool = False) -> pb.TracePacket:
    p = pb.TracePacket(trusted_packet_sequence_id=seq, trusted_pid=pid)
    p.for_testing.counter = counter
    if after_loss:
        p.previous_packet_dropped = 1  # a uint32 in this schema
    return p


def stats(lost: int) -> pb.TracePacket:
    p = pb.TracePacket()
    p.trace_stats.buffer_stats.add(trace_writer_packet_loss=lost)
    return p


# pid 10 wrote 6 and dropped 3 (3, 4 and its tail 6); pid 11 wrote 1, dropped none.
TRACE = [packet(2, 1, 10), packet(2, 2, 10), packet(2, 5, 10, after_loss=True), packet(3, 1, 11)]


def test_the_loss_check_holds_when_each_producer_accounts_for_its_drops():
    assert _losses_match([*TRACE, stats(3)], {10: (6, 3), 11: (1, 0)}).exact


@pytest.mark.parametrize(
    ("packets", "logged"),
    [
        ([*TRACE, stats(3)], {10: (6, 2), 11: (1, 1)}),  # right total, wrong producers
        ([*TRACE, stats(3)], {10: (7, 3), 11: (1, 0)}),  # a packet missing, uncounted
        ([*TRACE, stats(2)], {10: (6, 3), 11: (1, 0)}),  # trace_stats under-reports
        ([*TRACE[:2], packet(2, 5, 10), TRACE[3], stats(3)], {10: (6, 3), 11: (1, 0)}),
        ([*TRACE[:3], stats(3)], {10: (6, 3), 11: (1, 0)}),  # a producer without sequence
        ([packet(2, 1, 10), stats(0)], {10: (1, 0)}),  # nothing dropped: nothing checked
    ],
    ids=["per-producer", "uncounted-tail", "stats", "unmarked-gap", "no-sequence", "no-drops"],
)
def test_the_loss_check_fails_on_any_mismatch_and_when_nothing_was_dropped(packets, logged):
    assert not _losses_match(packets, logged).exact
