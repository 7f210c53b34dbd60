"""Applications instrumented with `import tracebus`, run as real processes against
a real service (the `rt` harness, tests/processes.py), their traces read back
with Perfetto's schema: the first event of a short app under the startup wait,
args/flows/counters/logs, asyncio tasks on their own tracks, a disabled
category, multiprocessing children of every start method, fork after init,
no service at all, a service that dies, shutdown from many threads."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.protobuf import text_format
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

import tracebus
from tests.processes import Proc, Runtime
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
NEEDS = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
BEGIN, END = pb.TrackEvent.TYPE_SLICE_BEGIN, pb.TrackEvent.TYPE_SLICE_END
INSTANT, COUNTER = pb.TrackEvent.TYPE_INSTANT, pb.TrackEvent.TYPE_COUNTER


# -- reading what the apps wrote -------------------------------------------------------------


@dataclass
class Event:
    pid: int  # trusted_pid: the process that wrote it
    ts: int
    type: int
    name: str
    categories: tuple[str, ...]
    track: int
    flows: tuple[int, ...]
    ends_flows: tuple[int, ...]
    args: dict[str, Any]
    log: tuple[str, int, str, str, int] | None  # body, prio, file, function, line
    value: float | None  # counters


@dataclass
class Trace:
    events: list[Event] = field(default_factory=list)
    tracks: dict[int, pb.TrackDescriptor] = field(default_factory=dict)
    track_pids: dict[int, int] = field(default_factory=dict)  # uuid -> trusted_pid of its writer
    skipped: int = 0  # events after a loss, before the state was written again

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]

    def process_names(self) -> dict[int, str]:
        processes = [t.process for t in self.tracks.values() if t.process.pid]
        return {p.pid: p.process_name for p in processes}

    def slices(self) -> list[tuple[Event, int]]:
        """Every begin with its duration, matched per track."""
        open_: dict[int, list[Event]] = defaultdict(list)
        out = []
        for e in sorted(self.events, key=lambda e: e.ts):
            if e.type == BEGIN:
                open_[e.track].append(e)
            elif e.type == END:
                begin = open_[e.track].pop()
                out.append((begin, e.ts - begin.ts))
        return out


def _annotation(a: pb.DebugAnnotation) -> Any:
    kind = a.WhichOneof("value")
    return getattr(a, kind) if kind else None


def decode(packets: list[pb.TracePacket]) -> Trace:
    """TrackEvents with their interned strings resolved, by trace_processor's rules:
    a sequence's state is valid from a SEQ_INCREMENTAL_STATE_CLEARED packet on
    (interning restarts there) until a packet marks a loss (previous_packet_dropped,
    as after the SMB was full); events that need the state while it is not valid
    are skipped (counted in `skipped`)."""
    trace = Trace()
    interned: dict[int, dict[tuple[str, int], Any]] = defaultdict(dict)
    valid: dict[int, bool] = defaultdict(bool)
    for p in packets:
        seq = p.trusted_packet_sequence_id
        table = interned[seq]
        if p.sequence_flags & CLEARED:
            table.clear()
            valid[seq] = True
        elif p.previous_packet_dropped:
            table.clear()
            valid[seq] = False
        if p.sequence_flags & NEEDS and not valid[seq]:
            trace.skipped += 1
            continue
        d = p.interned_data
        for kind, entries in (("name", d.event_names), ("cat", d.event_categories)):
            table.update({(kind, x.iid): x.name for x in entries})
        table.update({("arg", x.iid): x.name for x in d.debug_annotation_names})
        table.update({("body", x.iid): x.body for x in d.log_message_body})
        for loc in d.source_locations:
            table[("loc", loc.iid)] = (loc.file_name, loc.function_name, loc.line_number)
        if p.HasField("track_descriptor"):
            trace.tracks[p.track_descriptor.uuid] = p.track_descriptor
            trace.track_pids[p.track_descriptor.uuid] = p.trusted_pid
        if p.HasField("track_event"):
            trace.events.append(_event(p, table))
    return trace


def _event(p: pb.TracePacket, table: dict[tuple[str, int], Any]) -> Event:
    te = p.track_event
    log = None
    if te.HasField("log_message"):
        m = te.log_message
        log = (table[("body", m.body_iid)], m.prio, *table[("loc", m.source_location_iid)])
    value = None
    if te.HasField("counter_value") or te.HasField("double_counter_value"):
        value = te.counter_value if te.HasField("counter_value") else te.double_counter_value
    return Event(
        pid=p.trusted_pid, ts=p.timestamp, type=te.type,
        name=table.get(("name", te.name_iid), te.name),
        categories=tuple(table[("cat", i)] for i in te.category_iids),
        track=te.track_uuid, flows=tuple(te.flow_ids), ends_flows=tuple(te.terminating_flow_ids),
        args={table[("arg", a.name_iid)]: _annotation(a) for a in te.debug_annotations},
        log=log, value=value,
    )  # fmt: skip


# -- running apps ----------------------------------------------------------------------------

CONFIG = """
buffers {{ size_kb: 16384 fill_policy: DISCARD }}
data_sources {{ config {{ name: "track_event" {extra} }} }}
flush_timeout_ms: 5000
data_source_stop_timeout_ms: 5000
"""
STARTUP_WAIT_S = "30"  # generous: a cold interpreter on a loaded machine; the wait ends early


def start_session(rt: Runtime, extra: str = "") -> Any:
    rt.start_service()
    consumer = rt.consumer()
    consumer.enable(text_format.Parse(CONFIG.format(extra=extra), pb.TraceConfig()))
    return consumer


def app_env(rt: Runtime, **extra: str) -> dict[str, str]:
    env = {"TRACEBUS_PRODUCER_SOCK": rt.producer_endpoint}
    return {**env, "TRACEBUS_STARTUP_WAIT_S": STARTUP_WAIT_S, **extra}


def run_app(rt: Runtime, name: str, text: str, env: dict[str, str] | None = None) -> Proc:
    """Run DIR/name.py to its end; it must exit 0 without a traceback."""
    path = rt.write_file(f"{name}.py", text)
    proc = rt.spawn(name, [str(path)], app_env(rt) if env is None else env)
    code = rt.finish(proc, timeout=90)
    log = (rt.dir / f"{name}.log").read_text()
    assert code == 0 and "Traceback" not in log, log
    return proc


def read_trace(rt: Runtime, consumer: Any, *pids: int) -> Trace:
    """Once the service no longer lists `pids` (gone: their chunks are in), flush,
    stop the session and read it all."""

    def gone() -> bool:
        state = rt.control.query_state(timeout=5)
        return not {p.pid for p in state.producers} & set(pids)

    wait_for(gone, 30, f"producers {pids} to leave the service")
    consumer.flush()
    consumer.disable()
    return decode(list(consumer.read_packets()))


def assert_own_tracks(trace: Trace) -> None:
    """Every event is on a track its own process described, under its own pid."""
    for e in trace.events:
        assert trace.track_pids.get(e.track) == e.pid, e
        d = trace.tracks[e.track]
        pid = d.thread.pid or d.process.pid or trace.tracks[d.parent_uuid].process.pid
        assert pid == e.pid, (e, d)


# -- the tests -------------------------------------------------------------------------------


SHORT_APP = """
import tracebus
tracebus.instant("first line")
"""


def test_a_short_app_is_recorded_from_its_first_event(rt):
    consumer = start_session(rt)
    app = run_app(rt, "short", SHORT_APP)
    trace = read_trace(rt, consumer, app.pid)
    (first,) = trace.named("first line")
    assert first.pid == app.pid and first.type == INSTANT and first.categories == ("default",)
    assert trace.process_names()[app.pid] == "short"
    assert trace.tracks[first.track].thread.thread_name == "MainThread"


CONTENT_APP = """
import logging, threading, tracebus

tracebus.init(name="content")
log = logging.getLogger("app")
log.addHandler(tracebus.LoggingHandler())
log.setLevel(logging.DEBUG)

def work(i):
    with tracebus.slice("job", category="io", args={"i": i, "tag": "x", "nested": {"k": [1, 2.5]}},
                        flow=f"job-{i}"):
        tracebus.counter("depth", i)
        tracebus.counter("load", i / 4, unit="ratio")
        log.warning("job %d done", i)
    tracebus.instant("handed over", category="io", terminate_flow=f"job-{i}")

for i in range(3):
    work(i)
t = threading.Thread(target=work, args=(3,), name="worker-thread")
t.start(); t.join()
"""


def test_args_flows_counters_and_log_records_arrive(rt):
    consumer = start_session(rt)
    app = run_app(rt, "content_app", CONTENT_APP)
    trace = read_trace(rt, consumer, app.pid)
    assert_own_tracks(trace)
    jobs = sorted(trace.named("job"), key=lambda e: e.args["i"])
    assert [e.args["i"] for e in jobs] == [0, 1, 2, 3]
    assert jobs[0].args["tag"] == "x" and jobs[0].categories == ("io",)
    for i, job in enumerate(jobs):
        assert job.flows == (tracebus.flow_id(f"job-{i}"),)
    handed = trace.named("handed over")
    assert sorted(e.ends_flows for e in handed) == sorted(
        (tracebus.flow_id(f"job-{i}"),) for i in range(4)
    )
    depth = [e for e in trace.events if e.type == COUNTER and trace.tracks[e.track].name == "depth"]
    load = [e for e in trace.events if e.type == COUNTER and trace.tracks[e.track].name == "load"]
    assert sorted(e.value for e in depth) == [0, 1, 2, 3]
    assert sorted(e.value for e in load) == [0.0, 0.25, 0.5, 0.75]
    logs = [e.log for e in trace.events if e.log is not None]
    assert sorted(body for body, *_ in logs) == [f"job {i} done" for i in range(4)]
    body, prio, file, function, line = logs[0]
    assert prio == pb.LogMessage.PRIO_WARN and file.endswith("content_app.py")
    assert function == "work" and line == 14
    threads = {trace.tracks[e.track].thread.thread_name for e in jobs}
    assert threads == {"MainThread", "worker-thread"}
    assert trace.process_names()[app.pid] == "content"


ASYNC_APP = """
import asyncio, tracebus

async def step(name, seconds):
    with tracebus.slice(name):
        await asyncio.sleep(seconds)

@tracebus.trace
async def traced():
    await asyncio.sleep(0.05)

async def main():
    long = asyncio.create_task(step("long", 0.4), name="long-task")
    await asyncio.sleep(0.05)
    await asyncio.gather(step("short", 0.05), traced())
    await long

asyncio.run(main())
"""


def test_interleaved_asyncio_tasks_keep_their_own_slices(rt):
    consumer = start_session(rt)
    app = run_app(rt, "aio", ASYNC_APP)
    trace = read_trace(rt, consumer, app.pid)
    assert_own_tracks(trace)
    durations = {begin.name: ns / 1e9 for begin, ns in trace.slices()}
    assert durations["long"] >= 0.4 and durations["short"] < 0.3
    assert 0.05 <= durations["traced"] < 0.3
    (long_begin,) = trace.named("long")
    assert trace.tracks[long_begin.track].name == "long-task"
    tracks = {e.track for e in trace.events}
    assert len(tracks) == 3  # one per task


FILTER_APP = """
import tracebus
tracebus.define_category("heavy", tags=["slow"])
for i in range(5):
    with tracebus.slice("kept", category="io"):
        tracebus.instant("noise", category="noisy")
        tracebus.instant("expensive", category="heavy")
    tracebus.counter("noisy-counter", i, category="noisy")
"""


def test_a_category_disabled_in_the_config_is_absent(rt):
    consumer = start_session(rt, 'track_event_config { disabled_categories: "noisy" }')
    app = run_app(rt, "filtered", FILTER_APP)
    trace = read_trace(rt, consumer, app.pid)
    assert len(trace.named("kept")) == 5
    assert trace.named("noise") == [] and trace.named("expensive") == []
    assert not [e for e in trace.events if e.type == COUNTER]


MP_APP = """
import multiprocessing as mp, sys, tracebus

def child(method):
    with tracebus.slice("child work", args={"method": method}):
        tracebus.instant("child instant")

if __name__ == "__main__":
    tracebus.init(name="jobs")  # the children carry it, whatever their start method
    tracebus.instant("parent before")
    for method in ("fork", "spawn", "forkserver"):
        p = mp.get_context(method).Process(target=child, args=(method,), name=f"W-{method}")
        p.start()
        p.join()
        assert p.exitcode == 0, (method, p.exitcode)
        print(method, p.pid, flush=True)
    tracebus.instant("parent after")
"""


def test_multiprocessing_children_of_every_start_method_are_recorded(rt):
    consumer = start_session(rt)
    app = run_app(rt, "mpapp", MP_APP)
    pids = {m: int(p) for m, p in re.findall(r"^(\w+) (\d+)$", rt.logs(), re.MULTILINE)}
    assert set(pids) == {"fork", "spawn", "forkserver"}
    trace = read_trace(rt, consumer, app.pid, *pids.values())
    assert_own_tracks(trace)
    work = {e.args["method"]: e.pid for e in trace.named("child work")}
    assert work == pids
    assert {e.pid for e in trace.named("child instant")} == set(pids.values())
    names = trace.process_names()
    assert names[app.pid] == "jobs"
    for method, pid in pids.items():
        assert names[pid] == f"jobs (W-{method})"
    assert [e.pid for e in trace.named("parent after")] == [app.pid]


FORK_APP = """
import os, sys, threading, tracebus

N = int(sys.argv[1])
tracebus.init()
stop = threading.Event()

def busy():  # the parent keeps writing while it forks (paced: the buffer is DISCARD)
    while not stop.wait(0.0002):
        with tracebus.slice("parent busy"):
            tracebus.counter("n", 1)

t = threading.Thread(target=busy, name="busy")
t.start()
children = []
for i in range(N):
    with tracebus.slice("forking"):
        pid = os.fork()
    if pid == 0:
        tracebus.instant("child", args={"i": i})
        sys.exit(0)  # atexit flushes, in the child too
    children.append(pid)
    if len(children) == 10:
        for c in children:
            _, status = os.waitpid(c, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
        children.clear()
for c in children:
    _, status = os.waitpid(c, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
stop.set()
t.join()
print("done", flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fork_after_init_100_times(rt):
    """The parent writes on another thread while it forks; every child exits 0 and
    its event is under its own pid, on tracks it described itself."""
    consumer = start_session(rt)
    path = rt.write_file("forker.py", FORK_APP)
    app = rt.spawn("forker", [str(path), "100"], app_env(rt))
    assert rt.finish(app, timeout=500) == 0, rt.logs()
    assert "Traceback" not in rt.logs()
    children = read_trace(rt, consumer, app.pid)
    assert_own_tracks(children)
    child_events = children.named("child")
    assert sorted(e.args["i"] for e in child_events) == list(range(100))
    pids = {e.pid for e in child_events}
    assert len(pids) == 100 and app.pid not in pids
    assert {e.pid for e in children.named("parent busy")} == {app.pid}
    assert {e.pid for e in children.named("forking")} == {app.pid}


SPEED_APP = """
import sys, time, tracebus
t0 = time.perf_counter()
for i in range(200_000):
    with tracebus.slice("item", category="work", args={"i": i}):
        tracebus.counter("i", i)
print(f"elapsed {time.perf_counter() - t0:.4f}", flush=True)
# Live a little after the loop, as apps do (the log line is written meanwhile).
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_an_app_without_a_service_runs_at_full_speed_and_exits_0_with_one_line(rt):
    path = rt.write_file("speed.py", SPEED_APP)
    times, stderr = {}, {}
    for mode, extra in (("off", {"TRACEBUS_DISABLE": "1"}), ("no service", {})):
        env = {"TRACEBUS_PRODUCER_SOCK": rt.producer_endpoint, **extra}
        result = rt.run([sys.executable, str(path), "1"], env, timeout=60)
        assert result.returncode == 0, result.stderr
        times[mode] = float(re.search(r"elapsed (\S+)", result.stdout).group(1))
        stderr[mode] = result.stderr.strip().splitlines()
    assert times["no service"] < 3 * times["off"] + 0.05, times
    assert stderr["off"] == []
    (line,) = stderr["no service"]
    assert "no tracing service" in line


DYING_APP = """
import sys, threading, tracebus
stop = threading.Event()
count = 0

def reader():
    sys.stdin.read()
    stop.set()

threading.Thread(target=reader, daemon=True).start()
announced = False
while not stop.is_set():
    with tracebus.slice("loop", args={"n": count}):
        tracebus.counter("count", count)
    count += 1
    if not announced and tracebus.stats()["instances"] and count > 1000:
        print("writing", flush=True)
        announced = True
    if count % 20000 == 0:
        print("alive", count, flush=True)
print("done", count, tracebus.stats()["errors"], flush=True)
"""


def test_a_service_that_dies_does_not_hurt_the_app(rt):
    start_session(rt)
    path = rt.write_file("dying.py", DYING_APP)
    app = rt.spawn("dying", [str(path)], app_env(rt), lines=True)
    rt.wait_line(app, "writing", timeout=60)
    os.kill(rt.service.pid, signal.SIGKILL)
    rt.service.wait(10)
    rt.wait_line(app, "alive", timeout=60)  # still writing after the service died
    rt.wait_line(app, "alive", timeout=60)
    app.stdin.close()
    assert rt.finish(app, timeout=30) == 0, rt.logs()
    assert re.search(r"^done \d+ 0$", rt.output(app), re.MULTILINE), rt.output(app)
    assert "Traceback" not in rt.logs()


SHUTDOWN_APP = """
import threading, tracebus
barrier = threading.Barrier(9)

def worker(k):
    barrier.wait()
    for i in range(50):
        with tracebus.slice("w", args={"k": k}):
            pass
        tracebus.shutdown()

threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
for t in threads:
    t.start()
tracebus.instant("before")
barrier.wait()
tracebus.shutdown()
for t in threads:
    t.join()
tracebus.shutdown()
tracebus.instant("after")
print("stats", tracebus.stats()["errors"], flush=True)
"""


def test_shutdown_from_many_threads_at_once_and_repeatedly(rt):
    consumer = start_session(rt)
    app = run_app(rt, "shutter", SHUTDOWN_APP)
    assert "stats 0" in rt.logs()
    trace = read_trace(rt, consumer, app.pid)
    assert len(trace.named("before")) == 1 and trace.named("after") == []
    assert_own_tracks(trace)


POLICY_APP = """
import tracebus
from tracebus import _runtime

for i in range(50_000):
    tracebus.instant("burst", args={"i": i})
(instance,) = _runtime.current.instances
print("policy", instance._local.seq.writer.policy.name, flush=True)
print("errors", tracebus.stats()["errors"], flush=True)
"""


def test_writers_drop_whatever_policy_the_config_asks_for(rt):
    """The API never blocks: a session asking its writers to stall when the SMB is
    full still gets writers that drop."""
    consumer = start_session(rt, "buffer_exhausted_policy: BUFFER_EXHAUSTED_STALL_THEN_ABORT")
    app = run_app(rt, "policy", POLICY_APP)
    out = (rt.dir / "policy.log").read_text()
    assert "policy DROP" in out and "errors 0" in out, out
    trace = read_trace(rt, consumer, app.pid)
    assert trace.named("burst")


EARLY_FORK_APP = """
import os, sys, tracebus
tracebus.instant("parent first")  # starts the producer; no wait: its imports are under way
pids = []
for i in range(5):
    pid = os.fork()
    if pid == 0:
        tracebus.init(wait_for_start=30)
        tracebus.instant("early child", args={"i": i})
        sys.exit(0)
    pids.append(pid)
for pid in pids:
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
"""


def test_forks_right_after_the_first_call_make_working_children(rt):
    consumer = start_session(rt)
    app = run_app(rt, "early", EARLY_FORK_APP, app_env(rt, TRACEBUS_STARTUP_WAIT_S=""))
    trace = read_trace(rt, consumer, app.pid)
    assert_own_tracks(trace)
    children = trace.named("early child")
    assert sorted(e.args["i"] for e in children) == list(range(5))
    assert len({e.pid for e in children}) == 5 and app.pid not in {e.pid for e in children}


RESTART_APP = """
import sys, threading, tracebus
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
seen = None
while not stop.is_set():
    with tracebus.slice("loop"):
        pass
    instances = tracebus.stats()["instances"]
    if instances != seen:
        print("instances", instances, flush=True)
        seen = instances
    stop.wait(0.001)
"""


def test_the_app_follows_the_service_through_a_restart(rt):
    start_session(rt)
    path = rt.write_file("restart.py", RESTART_APP)
    app = rt.spawn("restart", [str(path)], app_env(rt), lines=True)
    rt.wait_line(app, "instances 1", timeout=60)
    assert rt.stop(rt.service) == 0  # SIGTERM: a restart, as an operator does it
    rt.start_service()
    consumer = rt.consumer()
    consumer.enable(text_format.Parse(CONFIG.format(extra=""), pb.TraceConfig()))
    # The new service's answer tells the producer to reconnect: the old instance
    # stops with the old connection, the new session's starts.
    rt.wait_line(app, "instances 0", timeout=60)
    rt.wait_line(app, "instances 1", timeout=60)
    app.stdin.close()
    assert rt.finish(app, timeout=30) == 0, rt.logs()
    trace = read_trace(rt, consumer, app.pid)
    assert {e.pid for e in trace.named("loop")} == {app.pid}
    assert_own_tracks(trace)


CHURN_APP = """
import sys, threading, tracebus
tracebus.init()
stop = threading.Event()

counts = [0] * 4

def write(k):
    while not stop.is_set():
        with tracebus.slice("w", args={"k": k, "n": counts[k]}):
            tracebus.counter(f"c{k}", counts[k])
        counts[k] += 1

# The writers start with the first session: a start under four spinning threads
# is slow (the producer's imports queue for the GIL), and not what this tests.
threads = [threading.Thread(target=write, args=(k,), name=f"writer-{k}") for k in range(4)]
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
seen, since = None, None
while not stop.is_set():
    instances = tracebus.stats()["instances"]
    if instances != seen:
        if instances and not threads[0].is_alive():
            for t in threads:
                t.start()
        print("instances", instances, flush=True)
        seen, since = instances, list(counts)
    if since is not None and seen and all(c > s + 100 for c, s in zip(counts, since)):
        print("all writing", flush=True)  # into this instance: each thread wrote since it began
        since = None
    stop.wait(0.01)
for t in threads:
    t.join()
print("errors", tracebus.stats()["errors"], flush=True)
"""
SESSIONS = 5


def test_sessions_start_and_stop_while_threads_write(rt):
    """Each stop closes the instance's writers while four threads write into it:
    no error in the app, and every session's trace reads back whole."""
    rt.start_service()
    path = rt.write_file("churn.py", CHURN_APP)
    app = rt.spawn("churn", [str(path)], app_env(rt, TRACEBUS_STARTUP_WAIT_S=""), lines=True)
    rt.wait_line(app, "instances 0", timeout=60)
    for _ in range(SESSIONS):
        consumer = rt.consumer()
        consumer.enable(text_format.Parse(CONFIG.format(extra=""), pb.TraceConfig()))
        rt.wait_line(app, "instances 1", timeout=60)
        rt.wait_line(app, "all writing", timeout=60)
        assert consumer.flush()
        consumer.disable()
        trace = decode(list(consumer.read_packets()))
        consumer.close()
        assert_own_tracks(trace)
        assert {e.args["k"] for e in trace.named("w")} == {0, 1, 2, 3}
        rt.wait_line(app, "instances 0", timeout=60)
    app.stdin.close()
    assert rt.finish(app, timeout=30) == 0, rt.logs()
    assert "errors 0" in rt.output(app)


THREAD_PER_REQUEST_APP = """
import threading, tracebus

def request(i):
    with tracebus.slice("request", args={"i": i}):
        tracebus.instant("step")

for i in range(N):
    t = threading.Thread(target=request, args=(i,))
    t.start()
    t.join()
print("stats", tracebus.stats()["dropped_packets"], tracebus.stats()["errors"], flush=True)
"""


def test_an_app_with_a_thread_per_request_loses_nothing(rt):
    """Each thread takes a writer (and a chunk of the SMB): an ended thread must
    hand them back, or a few dozen dead threads fill the SMB and later events drop."""
    consumer = start_session(rt)
    app = run_app(rt, "perrequest", THREAD_PER_REQUEST_APP.replace("N", "400"))
    trace = read_trace(rt, consumer, app.pid)
    assert sorted(e.args["i"] for e in trace.named("request") if e.type == 1) == list(range(400))
    assert len(trace.named("step")) == 400
    assert "stats 0 0" in (rt.dir / "perrequest.log").read_text()


SIGNAL_SHUTDOWN_APP = """
import os, signal, sys, threading, time, tracebus

def on_term(signum, frame):  # the usual graceful exit, run between two bytecodes of an event
    t = time.monotonic()
    tracebus.shutdown()
    print(f"shutdown took {time.monotonic() - t:.3f}", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
tracebus.instant("ready")
print("ready", flush=True)
i = 0
while True:
    with tracebus.slice("work", args={"i": i, "pad": "x" * 200}):  # long: the slow path
        i += 1
"""


def test_shutdown_in_a_signal_handler_that_interrupted_a_write(rt):
    """The handler's own thread is inside a write: shutdown does not wait for it
    (it cannot end first) nor close its writer under it, and returns at once."""
    consumer = start_session(rt)
    path = rt.write_file("sigshut.py", SIGNAL_SHUTDOWN_APP)
    proc = rt.spawn("sigshut", [str(path)], app_env(rt), lines=True)
    rt.wait_output(proc, r"^ready$", timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert rt.finish(proc, timeout=30) == 0
    log = (rt.dir / "sigshut.log").read_text()  # stderr
    took = float(rt.wait_output(proc, r"shutdown took ([\d.]+)").group(1))
    assert took < 0.5, (took, log)
    assert "Traceback" not in log and "failed" not in log, log
    trace = read_trace(rt, consumer, proc.pid)
    assert trace.named("ready") and trace.named("work")


BARRIER_APP = """
import threading, tracebus
start = threading.Barrier(8)

def work(i):
    start.wait()  # all eight make their first call at once
    with tracebus.slice("s", args={"i": i}):
        pass

threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_threads_that_start_tracing_together_all_wait_for_the_start(rt):
    consumer = start_session(rt)
    app = run_app(rt, "together", BARRIER_APP)
    trace = read_trace(rt, consumer, app.pid)
    assert sorted(e.args["i"] for e in trace.named("s") if e.type == 1) == list(range(8))


POOL_APP = """
import threading, tracebus
from concurrent.futures import ThreadPoolExecutor

busy = threading.Barrier(100)

def task(i):
    if i < 100:
        busy.wait(30)  # all 100 threads hold a writer at once
    with tracebus.slice("task", args={"i": i}):
        pass

with ThreadPoolExecutor(100) as pool:
    list(pool.map(task, range(1000)))
print("dropped", tracebus.stats()["dropped_packets"], flush=True)
"""


def test_a_pool_of_a_hundred_threads_loses_nothing(rt):
    """Each writing thread holds a chunk of the SMB: the SDK's SMB has room for
    hundreds (Perfetto's default 256 KiB, 64 chunks, dropped from the 65th)."""
    consumer = start_session(rt)
    app = run_app(rt, "pool", POOL_APP)
    trace = read_trace(rt, consumer, app.pid)
    assert sorted(e.args["i"] for e in trace.named("task") if e.type == 1) == list(range(1000))
    assert "dropped 0" in (rt.dir / "pool.log").read_text()


LOGGING_APP = """
import logging, time, tracebus
logging.basicConfig(level=logging.INFO)  # the SDK's own INFO lines reach the handler too
logging.getLogger().addHandler(tracebus.LoggingHandler())
start = time.monotonic()
logging.getLogger("app").warning("first record")
with tracebus.slice("work"):
    pass
print("first calls took", round(time.monotonic() - start, 3), flush=True)
"""


def test_a_logging_handler_on_an_info_root_logger_neither_stalls_nor_loses(rt):
    """The producer's own INFO records reach the root logger's LoggingHandler on
    the producer's thread: they are skipped before anything could wait there (a
    stall until the startup wait's end, and every event lost, before)."""
    consumer = start_session(rt)
    path = rt.write_file("loginfo.py", LOGGING_APP)
    proc = rt.spawn("loginfo", [str(path)], app_env(rt), lines=True)
    assert rt.finish(proc, timeout=90) == 0
    took = float(rt.wait_output(proc, r"first calls took ([\d.]+)").group(1))
    assert took < 10, took  # the startup wait is 30 s here: it ended with the start
    trace = read_trace(rt, consumer, proc.pid)
    assert [e.log[0] for e in trace.events if e.log] == ["first record"]
    assert trace.named("work")
