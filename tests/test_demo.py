"""The README's main command, end to end: examples/demo.yaml under the
supervisor, run as the README says from a copy of examples/ in the process
harness's runtime directory (tests/processes.py, fixture `rt`), so the trace
lands there and the harness's cleanup covers every actor the demo starts."""

from __future__ import annotations

import collections
import os
import re
import shutil
import time

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tests.processes import REPO, Runtime


def test_demo_topology_records_every_producer_kind(rt: Runtime) -> None:
    shutil.copytree(REPO / "examples", rt.dir / "examples")
    start = time.monotonic()
    proc = rt.run_supervisor("examples/demo.yaml", cwd=rt.dir, timeout=90)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60
    trace = pb.Trace.FromString((rt.dir / "out" / "demo.pftrace").read_bytes())

    processes: dict[int, str] = {}
    threads: dict[int, tuple[int, int]] = {}
    for p in trace.packet:
        d = p.track_descriptor
        if d.HasField("process"):
            processes[d.uuid] = d.process.process_name
        if d.HasField("thread"):
            threads[d.uuid] = (d.parent_uuid, d.thread.pid)
    slices: collections.Counter[tuple[str, int]] = collections.Counter()
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
    assert_probes_recorded(trace, {pid for _, pid in slices})


def assert_probes_recorded(trace: pb.Trace, pids: set[int]) -> None:
    """The demo's probes group (linux.process_stats, linux.sys_stats): every producer
    process of the topology named with its command line and its memory counted, and
    the system's memory and CPU times."""
    cmdlines = {
        p.pid: p.cmdline for t in trace.packet for p in t.process_tree.processes if p.cmdline
    }
    assert pids <= cmdlines.keys(), pids - cmdlines.keys()
    assert all("python" in cmdlines[pid][0] for pid in pids)
    rss = {p.pid for t in trace.packet for p in t.process_stats.processes if p.vm_rss_kb}
    assert pids <= rss, pids - rss
    sys_stats = [t.sys_stats for t in trace.packet if t.HasField("sys_stats")]
    assert any(s.meminfo for s in sys_stats) and any(s.cpu_stat for s in sys_stats)
    assert_scheduling_recorded(trace, pids)


def assert_scheduling_recorded(trace: pb.Trace, pids: set[int]) -> None:
    """linux.ftrace's sched_switch (compact_sched) on every CPU, switching to threads of
    every producer process, where tracefs works (root); else its FtraceStats say why."""
    stats = [t.ftrace_stats for t in trace.packet if t.HasField("ftrace_stats")]
    assert stats, "linux.ftrace wrote no FtraceStats"
    if any(s.atrace_errors for s in stats):  # no tracefs here: the reason, and nothing else
        assert not any(t.HasField("ftrace_events") for t in trace.packet), stats
        return
    tgid = {th.tid: th.tgid for t in trace.packet for th in t.process_tree.threads}
    tgid.update((p.pid, p.pid) for t in trace.packet for p in t.process_tree.processes)
    switched: dict[int, set[int]] = collections.defaultdict(set)  # cpu -> next tgids
    for t in (t for t in trace.packet if t.HasField("ftrace_events")):
        bundle = t.ftrace_events
        switched[bundle.cpu].update(
            tgid.get(tid, -1) for tid in bundle.compact_sched.switch_next_pid
        )
    assert set(switched) == set(range(os.cpu_count() or 1)), sorted(switched)
    ran = set().union(*switched.values())
    assert pids <= ran, pids - ran


def test_step_by_step_script_topology(rt: Runtime) -> None:
    shutil.copytree(REPO / "examples", rt.dir / "examples")
    proc = rt.run_supervisor("examples/watch.yaml", cwd=rt.dir, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("all data sources started", "flush succeeded", "saved"):
        assert re.search(rf"^watcher +\| {line}", proc.stdout + proc.stderr, re.MULTILINE), line
    trace = pb.Trace.FromString((rt.dir / "out" / "watch.pftrace").read_bytes())
    assert any(p.HasField("track_event") for p in trace.packet)
