"""One actor's OS process, for the supervisor (launch/supervisor.py).

Actor holds an actor's command line and its current process: started in a
session (so a process group) of its own, an inline config fed to its stdin, a
pidfd for the loop to notice its exit; signals go to the whole group, and at
cleanup every group started for it is killed. Output copies one child pipe to
our stream line by line; Echo writes each line with the actor's name first,
to our stream and to the actor's log files. describe_exit and exit_text say how
a process ended; group_of finds a pid's process group. service_actor,
relay_actor, producer_actors and consumer_actor make the Actors of a
topology's entries.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from actors.endpoints import CONSUMER_ENV, PRODUCER_ENV
from actors.loop import Loop, Timer
from launch.control import CONTROL_ENV
from launch.topology import ConsumerSpec, ProducerGroup, RelaySpec, RestartPolicy, ServiceSpec

Emit = Callable[["Actor | None", bytes, BinaryIO], None]
# The relay's log lines that say its link changed (actors/relay.py): "link up: machine
# id N", "link down: WHY".
RELAY_LINK_LINE = re.compile(rb"\[relay\] (link (?:up|down)\b.*)")
# Bytes an actor's output may hold without a newline before they go out as a line:
# what is kept waiting for the end of a line stays bounded, whatever the actor prints.
MAX_LINE = 64 * 1024


class Actor:
    """One actor: its command line, its current process, and what happened to it."""

    def __init__(self, name: str, kind: str, argv: list[str], env: dict[str, str], cwd: str):
        self.name, self.kind, self.argv, self.env, self.cwd = name, kind, argv, env, cwd
        self.group = name.split("#")[0]
        self.restart = RestartPolicy()
        self.log: Path | None = None  # the topology's `log` for this actor
        self.log_prefixed = False  # several instances share that log
        self.stdin = b""  # an inline config for the record CLI
        self.proc: subprocess.Popen | None = None
        self.pidfd = -1
        self.pids: list[int] = []  # every process (group) started for it
        self.started_ns = 0
        self.returncode: int | None = None
        self.state = "new"
        self.restarts = 0
        self.quick_failures = 0
        self.restart_timer: Timer | None = None
        self.kill_timer: Timer | None = None
        self.ready_deadline = 0.0
        self.stop_requested = False
        self.detached = False
        self.result_file: Path | None = None
        self.traces: list[str] = []
        self.registered = False  # a producer: the service listed one of its processes
        self.probes = False  # runs actors.probes: its death may leave an ftrace instance
        self.last_line = ""  # the last non-blank line it printed: why it failed, often

    @property
    def pid(self) -> int | None:
        return self.pids[-1] if self.pids else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.returncode is None

    def signal(self, signum: int) -> None:
        """The whole process group: a command line's children stop with it."""
        proc = self.proc
        if proc is None or self.returncode is not None:  # not alive
            return
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:  # the group is gone and its id reused: the leader only
            proc.send_signal(signum)

    def popen(self) -> subprocess.Popen:
        """Start the command line in a session (a process group) of its own; OSError if
        it cannot start."""
        return subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def adopt(self, proc: subprocess.Popen) -> None:
        """The process popen() started: its stdin fed and closed, a pidfd opened."""
        self.proc = proc
        self.pids.append(proc.pid)
        if self.stdin and proc.stdin is not None:  # a config of a few KiB: the pipe takes it
            try:
                proc.stdin.write(self.stdin)
            except BrokenPipeError:
                pass
            proc.stdin.close()
        self.started_ns = time.monotonic_ns()
        self.pidfd = os.pidfd_open(proc.pid)

    def reap(self) -> int:
        """The exit status of the process that exited (its pidfd fired), now recorded."""
        assert self.proc is not None, "only a started actor exits"
        self.returncode = self.proc.wait()
        return self.returncode

    def close_pidfd(self, loop: Loop) -> None:
        loop.remove(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = -1

    def kill_all(self, loop: Loop) -> None:
        """The process if it still runs, every process group started for it, its pidfd."""
        if self.alive:  # only if shutdown itself failed
            self.signal(signal.SIGKILL)
            self.reap()
        for pid in self.pids:  # stragglers a command line left in its group
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.pidfd >= 0:
            self.close_pidfd(loop)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "exit": None if self.alive else describe_exit(self.returncode),
        }


# -- the actors of a topology ----------------------------------------------------------------
# `endpoints` maps PRODUCER_ENV, CONSUMER_ENV and CONTROL_ENV to the endpoints in use;
# `base` is the environment every actor starts from.


def service_actor(
    spec: ServiceSpec, endpoints: Mapping[str, str], base: Mapping[str, str], cwd: str
) -> Actor:
    argv = spec.argv(sys.executable, endpoints[PRODUCER_ENV], endpoints[CONSUMER_ENV])
    actor = Actor("service", "service", argv, dict(base), cwd)
    actor.log = spec.log
    return actor


def relay_actor(
    spec: RelaySpec, endpoints: Mapping[str, str], base: Mapping[str, str], cwd: str
) -> Actor:
    """The relay of a machine's part, serving its producers on our producer endpoint."""
    argv = spec.argv(sys.executable, endpoints[PRODUCER_ENV])
    actor = Actor("relay", "relay", argv, dict(base), cwd)
    actor.restart = spec.restart
    actor.log = spec.log
    return actor


def relay_link(line: bytes) -> str | None:
    """What one line of the relay's output says of its link ("link up: machine id 7"),
    None if it says nothing of it."""
    match = RELAY_LINK_LINE.fullmatch(line.rstrip(b"\r"))
    return match.group(1).decode(errors="replace")[:200] if match else None


def producer_actors(
    group: ProducerGroup,
    endpoints: Mapping[str, str],
    base: Mapping[str, str],
    cwd: str,
    startup_wait_s: float | None = None,
) -> list[Actor]:
    """NAME#1..NAME#count, each with the group's restart policy and log (and the SDK's
    first-call wait, when a session runs before they start)."""
    endpoint = endpoints[PRODUCER_ENV]
    argv = group.argv(sys.executable, endpoint)
    env = group.environment(base, endpoint, startup_wait_s)
    actors = []
    for name in group.instance_names():
        actor = Actor(name, "producer", list(argv), env, cwd)
        actor.restart = group.restart
        actor.log, actor.log_prefixed = group.log, group.count > 1
        actor.probes = group.probes
        actors.append(actor)
    return actors


def consumer_actor(
    spec: ConsumerSpec,
    endpoints: Mapping[str, str],
    base: Mapping[str, str],
    cwd: str,
    result: Path,
) -> Actor:
    """A script through launch/script_runner.py (which reports its traces in `result`),
    a config through the record CLI; the output's directory is made here."""
    endpoint = endpoints[CONSUMER_ENV]
    env = spec.environment(base, endpoint)
    if spec.output is not None:
        try:
            spec.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the consumer's own check of its output says why, and it exits 2
    if spec.kind == "script":
        argv = [sys.executable, "-m", "launch.script_runner", str(spec.script)]
        argv += ["--name", spec.name, "--consumer-endpoint", endpoint]
        argv += ["--control", endpoints[CONTROL_ENV], "--result", str(result)]
        if spec.output is not None:
            argv += ["--output", str(spec.output)]
    else:
        argv = spec.consumer_argv(sys.executable, endpoint)
    actor = Actor(spec.name, "consumer", argv, env, cwd)
    actor.log = spec.log
    if spec.kind == "script":
        actor.result_file = result
    elif spec.config_text is not None:
        actor.stdin = spec.config_text.encode()  # `-c -`
    return actor


def describe_exit(returncode: int | None) -> str | None:
    if returncode is None:
        return None
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return str(returncode)


def exit_text(returncode: int | None) -> str:
    text = describe_exit(returncode)
    return f"code {text}" if text and text.isdigit() else f"killed by {text}"


def group_of(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


class Output:
    """Copies one child pipe to our stream line by line, with the actor's name first."""

    def __init__(self, loop: Loop, emit: Emit, actor: Actor, fd: int, stream: BinaryIO) -> None:
        self.loop, self.emit, self.actor, self.fd, self.stream = loop, emit, actor, fd, stream
        self.partial = b""
        os.set_blocking(fd, False)
        loop.add_fd(fd, self.on_readable)

    def on_readable(self) -> None:
        while self.fd >= 0:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self.close()
                return
            *lines, self.partial = (self.partial + data).split(b"\n")
            if len(self.partial) >= MAX_LINE:  # no newline for that long: a line anyway
                lines.append(self.partial)
                self.partial = b""
            for line in lines:
                self.emit(self.actor, line, self.stream)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.partial:
            self.emit(self.actor, self.partial, self.stream)
            self.partial = b""
        self.loop.remove(self.fd)
        os.close(self.fd)
        self.fd = -1


def pipe_output(loop: Loop, emit: Emit, actor: Actor) -> list[Output]:
    """The started process's stdout and stderr, copied to ours (the pipes are ours now)."""
    proc = actor.proc
    assert proc is not None, "pipe_output comes after popen() and adopt()"
    outputs = []
    for pipe, stream in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer)):
        assert pipe is not None, "popen() pipes stdout and stderr"
        outputs.append(Output(loop, emit, actor, os.dup(pipe.fileno()), stream))
        pipe.close()
    return outputs


class Echo:
    """Lines to our streams with a name first ("NAME | ..."), and to log files."""

    def __init__(self, width: int, log_dir: Path | None) -> None:
        self.width = width
        self.log_dir = log_dir
        self.logs: dict[Path, BinaryIO | None] = {}  # None: could not be opened

    def emit(self, actor: Actor | None, line: bytes, stream: BinaryIO) -> None:
        """One line to our stream, and to the actor's log files (--log-dir, `log:`)."""
        name = actor.name if actor is not None else "supervisor"
        line = line.rstrip(b"\r")
        if actor is not None and line.strip():
            actor.last_line = line.decode(errors="replace").strip()[:200]
        prefix = f"{name:<{self.width}} | ".encode()
        try:
            stream.write(prefix + line + b"\n")
            stream.flush()
        except OSError:
            pass  # our own output is gone (a closed pipe): the actors keep running
        if self.log_dir is not None:
            self._log(self.log_dir / f"{name}.log", line)
        if actor is not None and actor.log is not None:
            self._log(actor.log, prefix + line if actor.log_prefixed else line)

    def _log(self, path: Path, line: bytes) -> None:
        if path not in self.logs:
            self.logs[path] = None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.logs[path] = open(path, "ab")  # noqa: SIM115 - closed in close()
            except OSError as e:
                self.say(f"cannot write {path}: {e.strerror}")
        log = self.logs[path]
        if log is not None:
            log.write(line + b"\n")
            log.flush()

    def say(self, text: str) -> None:
        self.emit(None, text.encode(), sys.stderr.buffer)

    def close(self) -> None:
        for log in self.logs.values():
            if log is not None:
                log.close()
