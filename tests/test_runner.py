"""`tracebus run` end to end with real processes: the runner's own service (started,
then stopped and removed) or the harness's running service (reused), a recorded app
that embeds a producer hosting the demo timeline, the exit code passed through,
SIGINT/SIGTERM forwarded to the app, and a command that cannot run (or a service
that cannot be reached) costing nothing. The harness's cleanup (tests/processes.py)
fails a test that leaves a process behind: the runner's service carries its marker."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.processes import PYTHON, Proc, Runtime
from tests.waiting import wait_for
from tracebus import runner
from tracebus.trace_summary import read_trace

pytestmark = pytest.mark.timeout(90)

FRAMES = 20
APP = """
import os, signal, sys, threading
from actors.producer import Producer
from actors.data_sources import DemoTimelineDataSource

got = []

def on_signal(signum, frame):
    got.append(signum)
    producer.stop()

class Demo(DemoTimelineDataSource):
    announced = False

    def _pause(self, seconds, writer):  # first called inside the first frame
        if not self.announced:
            self.announced = True
            print("demo started", flush=True)
        return super()._pause(seconds, writer)

    def _run(self):
        super()._run()
        producer.stop()

for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, on_signal)
print("env", os.environ.get("TRACEBUS_STARTUP_WAIT_S", "-"), os.environ["TRACEBUS_PRODUCER_SOCK"],
      flush=True)
producer = Producer("demo-app")
producer.register(Demo)
thread = threading.Thread(target=producer.run)
thread.start()
thread.join()
sys.exit(100 + got[0] if got else int(sys.argv[1]))
"""
SDK_APP = """
import sys, tracebus
tracebus.instant("first line", category="app")
for i in range(10):
    with tracebus.slice("work", category="app", args={"i": i}):
        tracebus.counter("progress", i)
sys.exit(4)
"""
OWN_SERVICE = re.compile(r"starting one in (/tmp/tb-run-\S+)")


def demo_config(frames: int) -> str:
    return (
        "buffers { size_kb: 1024 }\n"
        'data_sources { config { name: "tracebus.demo_timeline" '
        f"for_testing {{ message_count: {frames} max_messages_per_second: 200 }} }} }}\n"
    )


def start_run(
    rt: Runtime, *args: str, env: dict[str, str] | None = None, frames: int = FRAMES
) -> Proc:
    """`python -m tracebus run -c demo.pbtxt ARGS` in the runtime dir; stdout and
    stderr (the app's and the runner's) read as lines. With no `env`, nothing but
    the runner's own service is reachable (the per-user runtime dir is the test's)."""
    rt.write_file("demo.pbtxt", demo_config(frames))
    env = env if env is not None else {"XDG_RUNTIME_DIR": str(rt.dir / "xdg")}
    (rt.dir / "xdg").mkdir(mode=0o700, exist_ok=True)
    argv = ["-m", "tracebus", "run", "-c", "demo.pbtxt", *args]
    return rt.spawn("run", argv, env, lines=True, stderr="stdout", cwd=rt.dir)


def frames_in(path: Path) -> int:
    """The demo timeline's frames in the trace (whatever their category)."""
    return sum(n for (_, name), n in read_trace(path).events.items() if name == "frame")


def test_own_service_records_the_app_and_is_removed_after(rt: Runtime) -> None:
    run = start_run(rt, "-o", "out.pftrace", "--", PYTHON, rt.write_file("app.py", APP), "3")
    assert rt.finish(run) == 3  # the app's exit code
    output = rt.output(run)
    own = Path(OWN_SERVICE.search(output).group(1))  # type: ignore[union-attr]
    assert not own.exists()  # its sockets and directory removed
    # The app was pointed at it; no startup wait: the config records no track_event.
    assert f"env - ipc://{own}/p" in output
    assert frames_in(rt.dir / "out.pftrace") == FRAMES
    names = [p.name for p in read_trace(rt.dir / "out.pftrace").processes.values()]
    assert "demo-app" in names  # its process descriptor
    assert "tracebus: wrote" in output and "losses: none" in output  # the record summary


def test_the_default_config_records_an_sdk_app_from_its_first_line(rt: Runtime) -> None:
    app = rt.write_file("app.py", SDK_APP)
    (rt.dir / "xdg").mkdir(mode=0o700)
    argv = ["-m", "tracebus", "run", "--", PYTHON, str(app)]
    run = rt.spawn("run", argv, {"XDG_RUNTIME_DIR": str(rt.dir / "xdg")}, cwd=rt.dir)
    assert rt.finish(run) == 4
    trace = read_trace(rt.dir / "tracebus.pftrace")
    assert trace.events["app", "first line"] == 1  # the startup wait let it in
    assert trace.events["app", "work"] == 10
    assert trace.counters["progress"].samples == 10
    assert "app" in [p.name for p in trace.processes.values()]


def test_a_running_service_is_reused(rt: Runtime) -> None:
    service = rt.start_service()
    env = {"TRACEBUS_CONSUMER_SOCK": rt.consumer_endpoint}
    env["TRACEBUS_PRODUCER_SOCK"] = rt.producer_endpoint
    run = start_run(rt, "--", PYTHON, rt.write_file("app.py", APP), "0", env=env)
    assert rt.finish(run) == 0
    assert "starting one" not in rt.output(run)
    trace = read_trace(rt.dir / "tracebus.pftrace")  # the default OUT, in the cwd
    assert [p.pid for p in trace.processes.values() if p.service] == [service.pid]
    assert frames_in(rt.dir / "tracebus.pftrace") == FRAMES
    rt.assert_running(service, "the reused service")  # not stopped by the runner
    assert not rt.control.query_state().sessions  # the session was freed


def test_a_session_the_service_ended_before_the_command_is_read_back_as_is(
    rt: Runtime,
) -> None:
    """duration_ms ends the session while the command still runs (the runner reuses
    the harness's service, which shows the session's state): no final flush then."""
    rt.start_service()
    rt.write_file("short.pbtxt", "duration_ms: 200\n" + demo_config(3))
    env = {"TRACEBUS_CONSUMER_SOCK": rt.consumer_endpoint}
    env["TRACEBUS_PRODUCER_SOCK"] = rt.producer_endpoint
    app = [PYTHON, "-c", "import sys; sys.stdin.read()"]  # runs until its stdin closes
    argv = ["-m", "tracebus", "run", "-c", "short.pbtxt", "--", *app]
    run = rt.spawn("run", argv, env, lines=True, stderr="stdout", cwd=rt.dir)

    def ended() -> bool:
        sessions = rt.control.query_state().sessions
        return bool(sessions) and sessions[0].state == "DISABLED"

    wait_for(ended, 30, "the service to end the session at its duration")
    assert run.stdin is not None
    run.stdin.close()  # now the app exits
    assert rt.finish(run) == 0
    assert "flush did not complete" not in rt.output(run)
    assert read_trace(rt.dir / "tracebus.pftrace").has_stats  # read back whole


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_is_forwarded_and_what_was_recorded_is_written(rt: Runtime, signum: int) -> None:
    app = rt.write_file("app.py", APP)
    run = start_run(rt, "-o", "out.pftrace", "--", PYTHON, app, "0", frames=0)  # endless
    rt.wait_output(run, "^demo started$")
    run.send_signal(signum)
    assert rt.finish(run) == 100 + signum  # the app got it, and its exit code came back
    assert frames_in(rt.dir / "out.pftrace") > 0
    own = Path(OWN_SERVICE.search(rt.output(run)).group(1))  # type: ignore[union-attr]
    assert not own.exists()


def test_ctrl_c_in_a_terminal_reaches_the_app_once(rt: Runtime) -> None:
    """The terminal sends SIGINT to the whole foreground group, the app included: the
    runner must not send it a second one (the app reports each one it gets, and
    its shutdown would see a duplicate), and its own service must survive it."""
    app = rt.write_file("app.py", APP.replace("got.append(signum)", "got.append(signum); "
                                              "print(f'got {signum}', flush=True)"))  # fmt: skip
    rt.write_file("demo.pbtxt", demo_config(0))
    (rt.dir / "xdg").mkdir(mode=0o700)
    argv = [PYTHON, "-m", "tracebus", "run", "-c", "demo.pbtxt", "-o", "out.pftrace", "--"]
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # the runner leads a session on the pty
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    run = subprocess.Popen(
        [*argv, PYTHON, str(app), "0"], cwd=rt.dir, env=rt.env({"XDG_RUNTIME_DIR":
        str(rt.dir / "xdg")}), stdin=slave, stdout=slave, stderr=slave,
        preexec_fn=controlling_terminal,
    )  # fmt: skip
    rt.procs.append(("run", run))
    os.close(slave)
    output = read_pty(master, until=b"demo started")
    os.write(master, b"\x03")  # Ctrl-C
    output += read_pty(master)
    assert run.wait(30) == 100 + signal.SIGINT, output
    assert len(re.findall(r"got\s+2", output)) == 1, output  # the tty may split a line
    assert frames_in(rt.dir / "out.pftrace") > 0


def read_pty(master: int, until: bytes | None = None, timeout: float = 30.0) -> str:
    """What the pty shows until `until` appears, or until it closes (the runner exited)."""
    data, deadline = b"", time.monotonic() + timeout
    while until is None or until not in data:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"nothing more from the terminal: {data!r}"
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every process holding the terminal closed it
            chunk = b""
        if not chunk:
            assert until is None, f"the terminal closed before {until!r}: {data!r}"
            os.close(master)
            break
        data += chunk
    return data.decode(errors="replace")


def test_killed_by_a_signal_exits_128_plus_n(rt: Runtime) -> None:
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    run = start_run(rt, "-o", "out.pftrace", "--", PYTHON, "-c", kill)
    assert rt.finish(run) == 128 + signal.SIGKILL
    assert (rt.dir / "out.pftrace").exists()


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [("no-such-command-xyz", 127, "command not found"), ("./notes.txt", 126, "not executable")],
)
def test_a_command_that_cannot_start_starts_nothing(
    rt: Runtime, command: str, code: int, message: str
) -> None:
    rt.write_file("notes.txt", "not a program")
    run = start_run(rt, "-o", "out.pftrace", "--", command)
    assert rt.finish(run) == code
    assert message in rt.output(run) and "starting one" not in rt.output(run)
    assert not (rt.dir / "out.pftrace").exists()


def test_an_executable_the_kernel_refuses_leaves_nothing_behind(rt: Runtime) -> None:
    """It passes the check before the service starts, and fails only at the spawn."""
    bad = rt.write_file("bad.bin", "\x7fELF, but not a program")
    bad.chmod(0o755)
    run = start_run(rt, "-o", "out.pftrace", "--", "./bad.bin")
    assert rt.finish(run) == 126
    output = rt.output(run)
    assert "Exec format error" in output
    assert not Path(OWN_SERVICE.search(output).group(1)).exists()  # type: ignore[union-attr]
    assert not (rt.dir / "out.pftrace").exists()
    assert not list(rt.dir.glob(".out.pftrace.*"))  # nor the temporary trace file


def test_an_unreachable_service_runs_nothing(rt: Runtime) -> None:
    marker = rt.dir / "ran"
    env = {"TRACEBUS_CONSUMER_SOCK": f"ipc://{rt.dir}/nobody", "TRACEBUS_CONNECT_TIMEOUT": "1"}
    touch = f"open({str(marker)!r}, 'w')"
    run = start_run(rt, "-o", "out.pftrace", "--", PYTHON, "-c", touch, env=env)
    assert rt.finish(run) == 1
    assert "no tracing service answered" in rt.output(run)
    assert not marker.exists() and not (rt.dir / "out.pftrace").exists()


def test_a_service_that_cannot_start_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runner, "SERVICE_MODULE", "no_such_service_module")
    monkeypatch.delenv("TRACEBUS_CONSUMER_SOCK", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # no service running there
    marker = tmp_path / "ran"
    touch = f"open({str(marker)!r}, 'w')"
    assert runner.main(["-o", str(tmp_path / "out"), "--", PYTHON, "-c", touch]) == 1
    err = capsys.readouterr().err
    assert "could not start a tracing service" in err and "no_such_service_module" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert not Path(OWN_SERVICE.search(err).group(1)).exists()  # type: ignore[union-attr]


def test_usage_errors(rt: Runtime) -> None:
    result = rt.run([PYTHON, "-m", "tracebus", "run", "-c", "x.pbtxt"], cwd=rt.dir)
    assert result.returncode == 2 and "no command to run" in result.stderr
    (rt.dir / "bad.pbtxt").write_text("buffers { size_kb: }")
    argv = [PYTHON, "-m", "tracebus", "run", "-c", "bad.pbtxt", "--", PYTHON, "-c", "0"]
    result = rt.run(argv, cwd=rt.dir)
    assert result.returncode == 2 and "bad.pbtxt" in result.stderr


def test_the_startup_wait_is_asked_for_only_when_the_session_records_track_events() -> None:
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    from tracebus.runner import default_config, records_track_events

    assert records_track_events(default_config())
    other = pb.TraceConfig()
    other.data_sources.add().config.name = "tracebus.demo_timeline"
    assert not records_track_events(other)  # no instance would come: no 5 s wait per process
