"""The issue's example app (examples/job_pipeline.py: a source, 4 workers, an
asyncio writer over multiprocessing queues, instrumented with the tracebus API
only), recorded as a user records it: `tracebus run` with fork and with spawn
workers, and the topology examples/job_pipeline.yaml under the supervisor.

What a user looks for in the trace: every process on its own track with its
name, each job's flow from the source through a worker to the writer, the
asyncio tasks' slices as long as the tasks (not closed by each other), the
category the config disables absent, and nothing lost."""

from __future__ import annotations

import shutil
import sys
from collections import Counter

import pytest

from actors.track_event import flow_id
from tests.processes import REPO, Runtime
from tests.timeline import TE, Timeline, load

JOBS = 24
CONFIG = REPO / "examples" / "configs" / "job_pipeline.pbtxt"
ROLES = ("source", "worker-0", "worker-1", "worker-2", "worker-3", "writer")


def check_pipeline_trace(t: Timeline, app: str, jobs: int = JOBS) -> None:
    assert t.unresolved == 0 and t.unclosed == 0 and t.unmatched_ends == 0

    # Every process on its own track, named: the app, and each child by its role.
    names = t.process_names()
    pids = {e.pid for e in t.events}
    assert pids <= set(names), "an event from a process with no process track"
    by_role = {role: [pid for pid, n in names.items() if n == f"{app} ({role})"] for role in ROLES}
    assert all(len(found) == 1 for found in by_role.values()), names
    assert app in names.values(), names
    assert len(pids) == len(ROLES) + 1

    # Events on the tracks of the processes that wrote them.
    for s in t.slices:
        track = t.tracks[s.track]
        owner = t.tracks[track.parent] if track.kind != "process" and track.parent else track
        assert owner.pid == s.pid, (s.name, track)

    # Each job's flow: made in the source, processed by a worker, ended by the writer.
    source, writer = by_role["source"][0], by_role["writer"][0]
    workers = {by_role[f"worker-{i}"][0] for i in range(4)}
    made = {f: s for s in t.slices_named("make_job") for f in s.flows}
    processed = {f: s for s in t.slices_named("process") for f in s.flows}
    written = {f: s for s in t.slices_named("write") for f in s.terminating_flows}
    for job in range(jobs):
        fid = flow_id(job)
        assert made[fid].pid == source and made[fid].args == {"job": job}
        assert processed[fid].pid in workers and processed[fid].args == {"job": job}
        assert written[fid].pid == writer
        assert made[fid].start < processed[fid].start < written[fid].start

    # Interleaved asyncio tasks: each enrich slice on a task track of its own,
    # lasting at least its task's sleep (a slice closed by another task's end is
    # shorter), and not much more.
    enrich = t.slices_named("enrich")
    assert len(enrich) == jobs
    assert len({s.track for s in enrich}) == jobs
    for s in enrich:
        assert t.tracks[s.track].kind == "track" and s.pid == writer
        slept = 5.0 * (1 + s.args["job"] % 3)
        assert slept - 1.0 <= s.dur_ms < slept + 250.0, (s.args, s.dur_ms)

    # The disabled category is absent, the others present, in the expected numbers.
    counts = Counter((s.categories, s.name) for s in t.slices)
    assert not any("verbose" in cats for cats, _ in counts)
    for cats, name in [(("source",), "make_job"), (("work",), "process"), (("io",), "write")]:
        assert counts[cats, name] == jobs
    instants = [e for e in t.events if e.type == TE.TYPE_INSTANT]
    assert any(e.name == "cache_miss" and e.pid in workers for e in instants)
    counters = [e for e in t.events if e.value is not None]
    assert max(e.value for e in counters if e.pid == source) == jobs

    # Nothing lost.
    assert t.dropped_marks == 0
    assert t.stats is not None
    for b in t.stats.buffer_stats:
        assert b.chunks_overwritten == b.chunks_discarded == b.abi_violations == 0
        assert b.trace_writer_packet_loss == 0


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_tracebus_run_records_the_pipeline(rt: Runtime, start_method: str) -> None:
    rt.start_service()
    out = rt.dir / "pipeline.pftrace"
    app = [sys.executable, str(REPO / "examples" / "job_pipeline.py")]
    proc = rt.run(
        [sys.executable, "-m", "tracebus", "run", "-c", str(CONFIG), "-o", str(out), "--",
         *app, "--jobs", str(JOBS), "--start-method", start_method],
        env={"TRACEBUS_CONSUMER_SOCK": rt.consumer_endpoint,
             "TRACEBUS_PRODUCER_SOCK": rt.producer_endpoint},
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_pipeline_trace(load(out), app="job_pipeline")  # the script's name


def test_topology_records_the_pipeline(rt: Runtime) -> None:
    shutil.copytree(REPO / "examples", rt.dir / "examples")
    proc = rt.run_supervisor("examples/job_pipeline.yaml", cwd=rt.dir, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The producer group's name (the supervisor sets TRACEBUS_PRODUCER_NAME).
    check_pipeline_trace(load(rt.dir / "out" / "job_pipeline.pftrace"), app="pipeline", jobs=40)
