"""The supervisor with real processes: `python -m launch.supervisor topology.yaml`.

Each test writes a small topology (and the scripts it names) into the process
harness's runtime directory (tests/processes.py, fixture `rt`), starts the
supervisor through it with its output read as lines, and checks what a user
would see: the order actors start in, traces that parse with Perfetto's own
schema, `python -m launch.ctl` attaching and detaching producers mid-session,
restarts, and a Ctrl-C that leaves no process, socket or runtime directory
behind. Waits are conditions polled with a deadline. Every actor inherits the
supervisor's environment, so the harness's marker: its cleanup finds and kills
whatever a topology left running, and fails the test for it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, cast

import pytest
import zmq
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.consumer import Consumer
from actors.loop import Loop
from launch import control
from launch.control import ControlError, SupervisorClient
from launch.control_server import Commands, ControlServer, Handler, Later, Supervising
from launch.topology_parser import parse_producer_group
from tests.processes import Proc, Runtime, marked_pids
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

PYTHON = sys.executable
TICK_NS = 10**9 // os.sysconf("SC_CLK_TCK")

TRACK_EVENT = 'buffers { size_kb: 4096 } data_sources { config { name: "tracebus.demo_timeline" } }'

# A command-line producer: any program that registers through TRACEBUS_PRODUCER_SOCK.
WORKER = """
import os
from actors.data_sources import DemoTimelineDataSource
from actors.producer import Producer

producer = Producer(os.environ["TRACEBUS_PRODUCER_NAME"],
                    endpoint=os.environ["TRACEBUS_PRODUCER_SOCK"])
producer.register(DemoTimelineDataSource)
raise SystemExit(producer.run())
"""


def start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def write(rt: Runtime, name: str, text: str) -> Path:
    """DIR/name holding `text`, dedented."""
    return rt.write_file(name, textwrap.dedent(text).lstrip())


def start(rt: Runtime, topology: str, *args: str) -> Proc:
    """The supervisor of DIR/topology.yaml holding `topology`."""
    return rt.start_supervisor(write(rt, "topology.yaml", topology), *args)


def control_endpoint(rt: Runtime) -> str:
    """The control socket of a topology whose runtime_dir is `run`."""
    return f"ipc://{rt.dir}/run/control.sock"


def ctl(rt: Runtime, endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return rt.run([PYTHON, "-m", "launch.ctl", "--control", endpoint, *args])


def actors(endpoint: str) -> dict[str, dict[str, Any]]:
    with SupervisorClient(endpoint) as client:
        return {a["name"]: a for a in client.list()}


def read_trace(path: Path) -> pb.Trace:
    return pb.Trace.FromString(path.read_bytes())


def pids_with_track_events(packets) -> set[int]:
    return {p.trusted_pid for p in packets if p.HasField("track_event")}


# -- the control protocol, in this process -------------------------------------------------------


def test_control_requests_round_trip_and_are_checked() -> None:
    data = control.encode(control.request("attach", name="x", command="python app.py", count=2))
    req = control.decode_request(data)
    assert (req["cmd"], req["name"], req["count"], req["wait"]) == ("attach", "x", 2, True)
    assert control.decode_request(control.encode({"cmd": "list", "id": 7})) == {
        "cmd": "list",
        "id": 7,
    }
    bad = [
        (b"\xc1", "not a msgpack message"),
        (control.encode({"cmd": "explode", "id": 3}), "unknown command 'explode'"),
        (control.encode({"cmd": "detach", "id": 4}), "detach: name is required"),
        (control.encode({"cmd": "attach", "name": "x", "count": "2"}), "count: unexpected str"),
        (control.encode({"cmd": "attach", "name": "x", "wait": 1}), "wait: unexpected int"),
        (control.encode({"cmd": "stop", "force": True}), "stop: unknown field 'force'"),
    ]
    for payload, message in bad:
        with pytest.raises(ControlError, match=re.escape(message)) as info:
            control.decode_request(payload)
        if payload != b"\xc1":
            assert info.value.request_id == control._decode_map(payload).get("id")
    assert control.decode_reply(control.encode({"ok": False, "error": "no", "id": 1}))["error"]
    with pytest.raises(ControlError, match="boolean 'ok'"):
        control.decode_reply(control.encode({"error": "x"}))


def test_attach_requests_become_topology_entries(tmp_path: Path) -> None:
    """ctl attach is checked by the topology's own rules, with its messages."""
    req = control.request("attach", name="s", data_sources=["extra.ds"], smb_size_kb=512)
    group = parse_producer_group(control.attach_entry(req), tmp_path)
    assert (group.kind, group.data_sources, group.smb_size_kb) == ("builtin", ("extra.ds",), 512)
    req = control.request("attach", name="m", module="pkg.mod", restart="on-failure")
    group = parse_producer_group(control.attach_entry(req), tmp_path)
    assert (group.kind, group.modules) == ("module", ("pkg.mod",))
    assert group.restart.policy == "on-failure"
    with pytest.raises(ControlError, match="only for builtin"):
        control.attach_entry(control.request("attach", name="c", command="x", data_sources=["d"]))
    with pytest.raises(ControlError, match="give one of"):
        control.attach_entry(control.request("attach", name="c", command="x", module="m"))


def test_client_times_out_with_a_clear_error(tmp_path: Path) -> None:
    with SupervisorClient(f"ipc://{tmp_path}/none.sock", timeout=0.2) as client:
        with pytest.raises(ControlError, match=r"no supervisor answered 'list' .* within 0.2 s"):
            client.list()


def test_every_control_command_has_a_handler() -> None:
    """The supervisor's dispatch table names a handler for each command clients may send."""
    table = Commands(cast(Supervising, None)).table()
    assert sorted(table) == sorted(control.FIELDS)


def test_control_server_answers_now_later_and_without_a_handler(tmp_path: Path) -> None:
    """A reply now, a reply once its check is ready (after settle), an error reply for a
    command the table has no handler for, and one for a request pending at close."""
    ctx, loop = zmq.Context(), Loop()
    ready: list[bool] = []

    def on_later() -> None:
        def settle() -> None:
            ready.append(True)
            server.settle()

        loop.call_later(0.01, settle)

    handlers: dict[str, Handler] = {
        "list": lambda _req: control.reply(actors=[]),
        "stop": lambda _req: Later(lambda: control.reply(done=True) if ready else None),
        "attach": lambda _req: Later(lambda: None),  # never ready: answered at close
    }
    server = ControlServer(ctx, loop, handlers, on_later)
    endpoint = f"ipc://{tmp_path}/control.sock"
    server.bind(endpoint)
    answers: dict[str, object] = {}

    def client() -> None:
        with SupervisorClient(endpoint, timeout=10) as c:
            answers["list"] = c.list()
            answers["stop"] = c.call("stop")["done"]
            for cmd, call in (("detach", lambda: c.detach("x")), ("attach", lambda: c.attach("x"))):
                try:
                    call()
                except ControlError as e:
                    answers[cmd] = str(e)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        assert loop.run(until=lambda: "detach" in answers and bool(server.pending), timeout=20)
    finally:
        server.close()
        thread.join(timeout=20)
        ctx.term()
        loop.close()
    assert answers == {
        "list": [],
        "stop": True,
        "detach": "detach: not supported by this supervisor",
        "attach": "the topology stopped",
    }


# -- the supervisor ------------------------------------------------------------------------------


def test_bad_topology_exits_2_and_starts_nothing(rt: Runtime) -> None:
    path = write(
        rt,
        "topology.yaml",
        """
        runtime_dir: run
        producers:
          - name: ok
            builtin: []
          - name: app
            builtin: []
            count: three
        consumers:
          - name: cli
            config_text: 'duration_ms: 100'
            output: out.pftrace
        """,
    )
    result = rt.run_supervisor(path, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:7: producers[1].count: expected a positive integer, got 'three'"
    ]
    assert not (rt.dir / "run").exists()
    assert marked_pids(str(rt.dir)) == []


def test_start_order_readiness_and_script_attach(rt: Runtime) -> None:
    """Service, then producers (all registered), then the consumer script, which sees
    them all, attaches one more through tracing.supervisor and records them all."""
    write(rt, "worker.py", WORKER)
    write(
        rt,
        "rec.py",
        f"""
        import json
        import os
        from pathlib import Path

        def start_ticks(pid):
            return int(Path(f"/proc/{{pid}}/stat").read_text().rsplit(")", 1)[1].split()[19])

        def main(tracing):
            actors = tracing.supervisor.list()
            report = {{
                "me": os.getpid(),
                "actors": {{a["name"]: [a["pid"], a["state"], start_ticks(a["pid"])]
                            for a in actors}},
                "registered": [[p.name, p.pid] for p in tracing.query_state().producers],
            }}
            attached = []
            tracing.record({TRACK_EVENT!r}, duration_s=1.0,
                           during=lambda t: attached.extend(t.supervisor.attach("extra")))
            report["attached"] = attached
            report["extra"] = {{a["name"]: a["pid"] for a in tracing.supervisor.list()}}["extra#1"]
            (tracing.output.parent / "report.json").write_text(json.dumps(report))
        """,
    )
    supervisor = start(
        rt,
        """
        runtime_dir: run
        producers:
          - name: alpha
            builtin: []
            count: 2
          - name: worker
            command: [python, worker.py]
        consumers:
          - name: rec
            script: rec.py
            output: out/rec.pftrace
        """,
    )
    assert rt.finish(supervisor) == 0, rt.output(supervisor)
    out = rt.output(supervisor)
    report = json.loads((rt.dir / "out" / "report.json").read_text())
    actors = report["actors"]
    producers = ["alpha#1", "alpha#2", "worker#1"]

    # The order of the supervisor's own lines: each step waited for the previous one.
    steps = ["started service", "service ready"]
    steps += [f"started {p}" for p in producers] + [f"{p} registered" for p in producers]
    steps += ["started rec"]
    positions = {s: out.index(f"supervisor | {s}") for s in steps}
    assert positions["started service"] < positions["service ready"]
    assert positions["service ready"] < min(positions[f"started {p}"] for p in producers)
    assert max(positions[f"{p} registered"] for p in producers) < positions["started rec"]

    # The processes' own start times agree, and the consumer found every producer
    # registered with the service (by pid) when its script began.
    service_start = actors["service"][2]
    assert all(service_start <= actors[p][2] <= actors["rec"][2] for p in producers)
    assert actors["rec"][0] == report["me"]
    registered = {tuple(x) for x in report["registered"]}
    assert registered == {(p.split("#")[0], actors[p][0]) for p in producers}
    assert all(actors[p][1] == "running" for p in producers)

    # Everyone's timeline is in the trace, the producer attached by the script too.
    assert report["attached"] == ["extra#1"]
    trace = read_trace(rt.dir / "out" / "rec.pftrace")
    expected = {actors[p][0] for p in producers} | {report["extra"]}
    assert expected <= pids_with_track_events(trace.packet)

    # The summary names the trace; the runtime directory the supervisor created is gone.
    assert re.search(rf"{rt.dir}/out/rec.pftrace\s+rec\s+{len(trace.packet)}\s", out), out
    assert not (rt.dir / "run").exists()


def test_ctl_attach_and_detach_mid_session(rt: Runtime) -> None:
    """A session runs; `ctl attach` starts a producer that joins it (its process and
    its first packet come after the session's start); `ctl detach` stops it."""
    supervisor = start(
        rt,
        """
        runtime_dir: run
        stop_when: never
        producers:
          - name: base
            builtin: []
        """,
    )
    endpoint = control_endpoint(rt)
    rt.wait_output(supervisor, r"base#1 registered")
    consumer = Consumer.connect(f"ipc://{rt.dir}/run/consumer.sock", timeout=10)
    try:
        consumer.enable(TRACK_EVENT)
        attach = ctl(rt, endpoint, "attach", "late", "--builtin")
        assert attach.returncode == 0, attach.stderr
        assert attach.stdout.strip() == "attached late#1"
        late = actors(endpoint)["late#1"]
        assert late["state"] == "running"
        late_start = start_ticks(late["pid"])

        packets: list[pb.TracePacket] = []

        def late_wrote() -> bool:
            consumer.flush(5)
            packets.extend(consumer.read_packets())
            return late["pid"] in pids_with_track_events(packets)

        wait_for(late_wrote, 20, "the attached producer's packets")
        detach = ctl(rt, endpoint, "detach", "late")
        assert detach.returncode == 0, detach.stderr
        assert detach.stdout.strip() == "detached late#1"
        listed = ctl(rt, endpoint, "list")
        assert re.search(r"^late#1\s+producer\s+\d+\s+detached\s+0\s+0$", listed.stdout, re.M)
        assert re.search(r"^base#1\s+producer\s+\d+\s+running\s", listed.stdout, re.M)
        consumer.disable()
        consumer.wait_disabled(10)
        packets.extend(consumer.read_packets())
        consumer.free()
    finally:
        consumer.close()
    stop = ctl(rt, endpoint, "stop")
    assert stop.returncode == 0, stop.stderr
    assert rt.finish(supervisor) == 0, rt.output(supervisor)

    started = [p.timestamp for p in packets if p.service_event.tracing_started]
    assert len(started) == 1
    first_late = min(
        p.timestamp for p in packets if p.trusted_pid == late["pid"] and p.HasField("track_event")
    )
    assert first_late > started[0]
    assert late_start * TICK_NS >= started[0] - TICK_NS  # started after the session
    base = started_pid(rt.output(supervisor), "base#1")
    assert pids_with_track_events(packets) >= {late["pid"], base}


def started_pid(output: str, name: str) -> int:
    """The pid the supervisor's output gives for actor `name` when it started it."""
    match = re.search(rf"started {re.escape(name)} \(pid (\d+)\)", output)
    assert match is not None, f"{name} never started:\n{output}"
    return int(match.group(1))


def test_restart_on_failure_then_give_up(rt: Runtime) -> None:
    write(
        rt,
        "waiter.py",
        """
        import json
        import time

        def main(tracing):
            deadline = time.monotonic() + 30
            while True:
                flaky = {a["name"]: a for a in tracing.supervisor.list()}["flaky#1"]
                if flaky["state"] == "gave up":
                    break
                assert time.monotonic() < deadline, flaky
                tracing.wait(0.05)
            print("RESULT", json.dumps(flaky))
        """,
    )
    supervisor = start(
        rt,
        """
        runtime_dir: run
        producers:
          - name: flaky
            command: [python, -c, "import sys; sys.exit(1)"]
            restart: {policy: on-failure, max_restarts: 2}
        consumers:
          - name: waiter
            script: waiter.py
        """,
    )
    # The group never registered: the topology failed (issue 11), and says which and why.
    assert rt.finish(supervisor) == 1, rt.output(supervisor)
    out = rt.output(supervisor)
    never_up = "error: producer group flaky never came up: flaky#1 exited (code 1) before"
    assert f"supervisor | {never_up} registering" in out
    assert len(re.findall(r"supervisor \| started flaky#1 \(pid \d+\)", out)) == 3
    assert "restarting flaky#1 in 0.5 s (restart 1 of 2)" in out
    assert "restarting flaky#1 in 1 s (restart 2 of 2)" in out
    assert "supervisor | flaky#1 crashed 3 times, giving up" in out
    result = re.search(r"RESULT (.*)$", out, re.M)
    assert result is not None, out
    flaky = json.loads(result.group(1))
    assert (flaky["state"], flaky["restarts"], flaky["exit"]) == ("gave up", 2, "1")
    assert re.search(r"^\s+flaky#1\s+producer\s+\d+\s+gave up\s+1\s+2$", out, re.M), out


RECORDER = f"""
def main(tracing):
    tracing.record({TRACK_EVENT!r}, duration_s=60)
"""

STUBBORN = """
from actors.core.consumer_core import Interrupted

def main(tracing):
    print("waiting", flush=True)
    try:
        tracing.wait(60)
    except Interrupted:
        print("interrupted; lingering", flush=True)
    tracing.wait(60)
"""


@pytest.mark.parametrize("signals", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_leaves_nothing_behind(rt: Runtime, signals: int) -> None:
    """One SIGINT: the consumer writes its trace, then everything stops in order. A
    second one while a consumer lingers: everything is killed. Either way nothing of
    the topology is left: processes, sockets, runtime directory, shared memory."""
    write(rt, "worker.py", WORKER)
    write(rt, "stubborn.py", STUBBORN)
    write(rt, "rec.py", RECORDER)
    stubborn = "- name: stubborn\n            script: stubborn.py" if signals == 2 else ""
    proc = start(
        rt,
        """
        stop_when: never
        producers:
          - name: alpha
            builtin: []
            count: 2
          - name: worker
            command: [python, worker.py]
        consumers:
          - name: cli
            config_text: |
              buffers { size_kb: 1024 }
              data_sources { config { name: "tracebus.demo_timeline" } }
              duration_ms: 60000
            output: out/cli.pftrace
          - name: rec
            script: rec.py
            output: out/rec.pftrace
          STUBBORN
        """.replace("STUBBORN", stubborn),
    )
    control = rt.wait_output(proc, r"TRACEBUS_CONTROL=(\S+)").group(1)
    runtime = Path(control.removeprefix("ipc://")).parent  # the supervisor's: no runtime_dir
    rt.wait_output(proc, r"started cli \(pid")
    with Consumer.connect(f"ipc://{runtime}/consumer.sock", timeout=10) as probe:
        wait_for(
            lambda: len([s for s in probe.query_state().sessions if s.state == "STARTED"]) == 2,
            20,
            "both consumers' sessions",
        )
    if signals == 2:
        rt.wait_output(proc, r"^stubborn +\| waiting")
    pids = set(marked_pids(str(rt.dir)))  # every actor inherited the harness's marker
    listed = {a["pid"] for a in actors(control).values()}
    assert len(listed) == 5 + signals and listed <= pids

    proc.send_signal(signal.SIGINT)
    if signals == 2:
        rt.wait_output(proc, r"^stubborn +\| interrupted; lingering")
        rt.wait_output(proc, r"cli \(pid \d+\) exited: code 130")
        rt.wait_output(proc, r"rec \(pid \d+\) exited: code 130")
        proc.send_signal(signal.SIGINT)
    assert rt.finish(proc) == 128 + signal.SIGINT, rt.output(proc)

    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    assert marked_pids(str(rt.dir)) == []
    assert not runtime.exists()
    assert not rt.new_dev_shm_entries()
    out = rt.output(proc)
    assert re.search(r"^tracebus: .*topology.yaml: SIGINT after", out, re.M), out
    for name in ("cli", "rec"):  # asked to stop by the first SIGINT, both wrote their trace
        packets = len(read_trace(rt.dir / "out" / f"{name}.pftrace").packet)
        assert packets > 0
        assert re.search(rf"^\s+{name}\s+consumer\s+\d+\s+stopped\s+130\s+0$", out, re.M), out
        assert re.search(rf"/out/{name}.pftrace\s+{name}\s+{packets}\s", out), out
    if signals == 2:
        assert "supervisor | signalled again: killing everything" in out
        assert re.search(r"^\s+stubborn\s+consumer\s+\d+\s+stopped\s+SIGKILL\s", out, re.M)
        assert "did not stop within" not in out  # no step waited for its timeout


# -- a consumer before the producers it records (issue 9, item 3) ---------------------------------

FRAMES = 5
# A batch program: it embeds a producer, and (as the application SDK does when
# TRACEBUS_STARTUP_WAIT_S is set) waits at most that long for its data source to
# start; then it writes its frames at once, stops and exits. Without the wait it
# would have nothing to record into and exit at once.
BATCH = """
import os
import threading

from actors.data_sources import DemoTimelineDataSource
from actors.producer import Producer

started, done = threading.Event(), threading.Event()


class Batch(DemoTimelineDataSource):
    def _run(self):
        started.set()
        super()._run()  # message_count frames, then a flush
        done.set()


producer = Producer(os.environ["TRACEBUS_PRODUCER_NAME"],
                    endpoint=os.environ["TRACEBUS_PRODUCER_SOCK"])
producer.register(Batch)
runner = threading.Thread(target=producer.run)
runner.start()
wait_s = float(os.environ.get("TRACEBUS_STARTUP_WAIT_S", "0"))
print(f"batch pid {os.getpid()} waits {wait_s:g} s", flush=True)
if started.wait(wait_s):
    done.wait(30)
print("batch recorded" if done.is_set() else "batch: no session", flush=True)
producer.stop()
runner.join()
"""

EARLY_RECORDER = f"""
import time

CONFIG = '''
buffers {{ size_kb: 4096 }}
data_sources {{ config {{
  name: "tracebus.demo_timeline"
  for_testing {{ message_count: {FRAMES} max_messages_per_second: 1000 }}
}} }}
'''


def batch_exited(tracing):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(a["name"] == "batch#1" and a["state"] in ("exited", "failed")
               for a in tracing.supervisor.list()):
            return
        tracing.wait(0.05)
    raise RuntimeError("batch#1 did not exit")


def main(tracing):
    tracing.record(CONFIG, duration_s=0, during=batch_exited)
"""


def test_a_consumer_started_first_records_a_batch_producer_from_its_first_event(
    rt: Runtime,
) -> None:
    write(rt, "batch.py", BATCH)
    write(rt, "rec.py", EARLY_RECORDER)
    supervisor = start(
        rt,
        """
        runtime_dir: run
        producers:
          - name: batch
            command: [python, batch.py]
        consumers:
          - name: rec
            script: rec.py
            output: out/rec.pftrace
            start: before_producers
        """,
    )
    assert rt.finish(supervisor) == 0, rt.output(supervisor)
    out = rt.output(supervisor)
    steps = ["started rec", "rec's session started", "started batch#1"]
    positions = [out.index(f"supervisor | {s}") for s in steps]
    assert positions == sorted(positions), out
    found = re.search(r"^batch#1 +\| batch pid (\d+) waits 5 s$", out, re.M)
    assert found is not None, out
    assert re.search(r"^batch#1 +\| batch recorded$", out, re.M), out

    # Its whole timeline is in the trace, from the first packet of its sequence on.
    trace = read_trace(rt.dir / "out" / "rec.pftrace")
    batch = [p for p in trace.packet if p.trusted_pid == int(found.group(1))]
    assert batch, out
    assert batch[0].sequence_flags & pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    assert not any(p.previous_packet_dropped for p in batch)
    begins = [p for p in batch if p.track_event.type == pb.TrackEvent.TYPE_SLICE_BEGIN]
    assert len(begins) == 4 * FRAMES  # frame > update > physics, frame > render


def test_a_consumer_that_fails_before_its_session_runs_does_not_hang_the_start(
    rt: Runtime,
) -> None:
    write(rt, "broken.py", "def main(tracing):\n    raise RuntimeError('no session today')\n")
    supervisor = start(
        rt,
        """
        runtime_dir: run
        producers:
          - name: batch
            command: [python, -c, "print('never started')"]
        consumers:
          - name: broken
            script: broken.py
            start: before_producers
        """,
    )
    assert rt.finish(supervisor) == 1, rt.output(supervisor)
    out = rt.output(supervisor)
    assert "supervisor | broken exited before the producers started" in out
    assert "started batch#1" not in out  # the topology ended with its only consumer
