"""The README's main command, end to end: examples/demo.yaml under the
supervisor, from a copy of examples/ so the trace lands in a temporary dir."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

REPO = Path(__file__).resolve().parents[1]


def test_demo_topology_records_every_producer_kind(tmp_path):
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "launch.supervisor", "examples/demo.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60
    trace = pb.Trace.FromString((tmp_path / "out" / "demo.pftrace").read_bytes())

    processes, threads = {}, {}
    for p in trace.packet:
        d = p.track_descriptor
        if d.HasField("process"):
            processes[d.uuid] = d.process.process_name
        if d.HasField("thread"):
            threads[d.uuid] = (d.parent_uuid, d.thread.pid)
    slices = collections.Counter()
    for p in trace.packet:
        if p.track_event.type == pb.TrackEvent.TYPE_SLICE_BEGIN:
            parent, pid = threads[p.track_event.track_uuid]
            assert p.trusted_pid == pid  # on the track of the process that wrote it
            slices[processes[parent], pid] += 1
    processes_per_group = collections.Counter(name for name, _ in slices)
    # sensors (2 instances), the SDK module, the command line, the attached one
    assert processes_per_group == {"sensors": 2, "pipeline": 1, "worker": 1, "late": 1}

    # The attached producer joined mid-session: its first packet is later than
    # the session's start.
    started = next(p.timestamp for p in trace.packet if p.service_event.tracing_started)
    late_pid = next(pid for (name, pid) in slices if name == "late")
    first_late = min(p.timestamp for p in trace.packet if p.trusted_pid == late_pid and p.timestamp)
    assert first_late > started
    assert "late#1" in proc.stderr and "recorder" in proc.stderr


def test_step_by_step_script_topology(tmp_path):
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    proc = subprocess.run(
        [sys.executable, "-m", "launch.supervisor", "examples/watch.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("all data sources started", "flush succeeded", "saved"):
        assert re.search(rf"^watcher +\| {line}", proc.stdout + proc.stderr, re.MULTILINE), line
    trace = pb.Trace.FromString((tmp_path / "out" / "watch.pftrace").read_bytes())
    assert any(p.HasField("track_event") for p in trace.packet)
