"""The supervisor: `python -m launch.supervisor topology.yaml [--log-dir DIR]`.

Runs a topology (launch/topology.py, docs/topology.md) as one OS process per actor, each step
gated on readiness, not on time: the service, until a consumer handshake on
its consumer port succeeds; the producers, until the service lists each
instance's pid (or its process group's, for a command line that forks; one
that has not registered within 15 s is reported and the start goes on); then
the consumers (scripts through launch/script_runner.py, configs through the
record CLI). Every actor runs in a session of its own, so that a Ctrl-C in the
terminal reaches the supervisor only: the shutdown order is ours to keep
(consumers read back while the producers and the service still run).

Output: each actor's stdout and stderr lines go to ours, prefixed with its
name ("NAME#k | ..." for producer instances); they are also appended to the
actor's `log:` file from the topology, and with --log-dir to DIR/NAME.log (a
place that outlives the runtime directory).

Runtime directory: the topology's runtime_dir, else a fresh /tmp/tb-XXXXXXXX
(short: ipc:// paths must fit in sun_path), 0700. It holds the service's
sockets (unless the topology names endpoints), the control socket
control.sock and the script runners' result files; if its sockets answer, the
topology runs already and we exit 2. Every actor gets TRACEBUS_CONTROL,
TRACEBUS_PRODUCER_SOCK and TRACEBUS_CONSUMER_SOCK in its environment; `python
-m launch.ctl` finds the supervisor through them, or through the per-user
default link (launch/control.py).

Restarts: a producer instance that exits is restarted per its group's policy
(never / on-failure / always) after 0.5 s, doubling up to 8 s while it keeps
failing within 10 s of its start, at most max_restarts times in all; then
"NAME#k crashed N times, giving up" is logged, and `list` and the summary show
the state "gave up". Exits are noticed through a pidfd per child on the loop.

Shutdown (SIGINT, SIGTERM, SIGHUP, `ctl stop`, the service dying, or the last
consumer ending under stop_when: consumers_done): running consumers get SIGINT
(they flush, stop and write their traces; 20 s), then the producers SIGTERM
(10 s), then the service SIGTERM (its stop_timeout_s, else 10 s); a step that
times out SIGKILLs. A signal during the shutdown skips to SIGKILL of
everything. Cleanup always runs: every process group we started is killed,
our sockets and the default control link are removed, and the runtime
directory too if we created it.

Exit code: 0 if every consumer exited 0 (and the service did not fail),
128+signum if a signal stopped the topology, 1 otherwise, 2 for a bad
topology (nothing started). A summary goes to stderr: every actor's state,
exit status and restarts, and per consumer its traces with packets, bytes and
losses (packets marked previous_packet_dropped, chunks overwritten or
discarded), counted from the files with Perfetto's own schema; script
consumers report the files they saved in a JSON result file.

This module is the orchestration: start order, readiness, the control channel,
restart decisions and shutdown. One actor's OS process (spawning, process
groups, pidfds, prefixed output) is launch/children.py; the end-of-run summary
and trace counting is launch/summary.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import zmq

from actors.consumer import Consumer
from actors.core.consumer_core import ConsumerError
from actors.endpoints import CONSUMER_ENV, PRODUCER_ENV, runtime_dir, socket_answers
from actors.loop import Loop, Timer
from launch import control
from launch.children import Actor, Echo, Output, exit_text, group_of, pipe_output
from launch.summary import collect_traces, run_summary
from launch.topology import ConsumerSpec, ProducerGroup, Topology, TopologyError
from launch.topology_parser import load_topology, parse_producer_group

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
READY_TIMEOUT = 15.0  # for the service's port, and for each producer to register
POLL_PERIOD = 0.05  # between readiness checks (the loop serves everything meanwhile)
CONSUMER_STOP_TIMEOUT = 20.0  # they flush, stop and read back before they exit
STOP_TIMEOUT = 10.0  # producers, the service
KILL_TIMEOUT = 5.0  # for SIGKILLed processes to be reaped
BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_RUN = 0.5, 8.0, 10.0


class SetupError(Exception):
    """The topology cannot be run here (paths, directories): exit 2, nothing started."""


# -- the supervisor --------------------------------------------------------------------------


class Supervisor:
    def __init__(self, topology: Topology, *, log_dir: Path | None = None) -> None:
        self.topology = topology
        self.loop = Loop()
        self.ctx = zmq.Context()
        self.actors: list[Actor] = []
        self.outputs: list[Output] = []
        self.echo = Echo(max([10, *(len(n) for n in self._topology_names())]), log_dir)
        self.runtime_dir = Path()
        self.created_dir = False
        self.endpoints: dict[str, str] = {}
        self.control_sock: zmq.Socket | None = None
        self.default_link: Path | None = None
        self.probe: Consumer | None = None
        self.pending: list[tuple[Callable[[], dict | None], bytes, Any]] = []
        self.tick: Timer | None = None
        self.stop_reason: str | None = None
        self.stop_signal = 0
        self.kill_now = False
        self.killing_said = False
        self.service: Actor | None = None
        self.bound = False  # the control socket file is ours to remove
        self.failed = False
        self.began = time.monotonic()
        self.began_wall = time.time()

    def _topology_names(self) -> Iterable[str]:
        for group in self.topology.producers:
            yield from group.instance_names()
        for consumer in self.topology.consumers:
            yield consumer.name

    def say(self, text: str) -> None:
        self.echo.say(text)

    # -- running ---------------------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until told to stop, stop in order, clean up; the exit code."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        try:
            self._prepare()
            if self._start():
                self.loop.run(until=self._stopping)
            if self.stop_reason is None:
                self._request_stop(signal.Signals(self.stop_signal).name)  # noticed now
            self._shutdown()
            seconds = time.monotonic() - self.began
            summary = run_summary(self.topology, self.stop_reason, seconds, self.actors)
        finally:
            self._cleanup()
        print(summary, file=sys.stderr, flush=True)
        return self._exit_code()

    def _on_signal(self, signum: int, _frame: object) -> None:
        """Flags only (printing here could re-enter a write): the first signal stops,
        one during the shutdown kills."""
        if self._stopping():
            self.kill_now = True
        self.stop_signal = self.stop_signal or signum
        self.loop.stop()

    def _stopping(self) -> bool:
        return self.stop_reason is not None or self.stop_signal != 0

    def _request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.say(f"stopping ({reason})")
            self.loop.stop()

    def _wait_until(self, check: Callable[[], bool], timeout: float) -> bool:
        """Serve the loop until check() holds; False on timeout or stop."""
        end = time.monotonic() + timeout
        while not self._stopping():
            if check():
                return True
            if time.monotonic() >= end:
                return False
            self.loop.run(until=self._stopping, timeout=POLL_PERIOD)
        return False

    # -- setting up ------------------------------------------------------------------------

    def _prepare(self) -> None:
        """The runtime directory, the endpoints and the control socket."""
        wanted = self.topology.runtime_dir
        if wanted is None:
            self.runtime_dir = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))
            self.created_dir = True
        else:
            self.runtime_dir = wanted
            self.created_dir = not self.runtime_dir.exists()
            self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.runtime_dir, 0o700)
        service = self.topology.service
        self.endpoints = {
            PRODUCER_ENV: service.producer_endpoint or self._ipc("producer.sock"),
            CONSUMER_ENV: service.consumer_endpoint or self._ipc("consumer.sock"),
            control.CONTROL_ENV: self._ipc(control.CONTROL_SOCKET),
        }
        for endpoint in self.endpoints.values():  # binding would steal a live one's path
            path = Path(endpoint.removeprefix("ipc://"))
            if endpoint.startswith("ipc://") and socket_answers(path):
                raise SetupError(f"{endpoint} is in use: is this topology running already?")
        (self.runtime_dir / "results").mkdir(exist_ok=True)
        self.control_sock = self.ctx.socket(zmq.ROUTER)
        self.control_sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.control_sock.setsockopt(zmq.LINGER, 500)  # the reply to `stop` still leaves
        old_umask = os.umask(0o077)  # attach runs commands: owner only
        try:
            self.control_sock.bind(self.endpoints[control.CONTROL_ENV])
        except zmq.ZMQError as e:
            raise SetupError(f"cannot bind {self.endpoints[control.CONTROL_ENV]}: {e}") from None
        finally:
            os.umask(old_umask)
        self.bound = True
        self.loop.add_socket(self.control_sock, self._on_control)
        self._link_default_control()
        self.say(f"runtime dir {self.runtime_dir}")
        self.say(f"export {control.CONTROL_ENV}={self.endpoints[control.CONTROL_ENV]}")

    def _ipc(self, name: str) -> str:
        return f"ipc://{self.runtime_dir / name}"

    def _link_default_control(self) -> None:
        """Point the per-user default control path at our socket, unless a live
        supervisor holds it (then ctl needs --control or TRACEBUS_CONTROL)."""
        ours = self.runtime_dir / control.CONTROL_SOCKET
        try:
            link = runtime_dir() / control.CONTROL_SOCKET
            if link == ours:
                return
            if link.is_symlink() or link.exists():
                if socket_answers(link):
                    self.say(f"{link} belongs to another supervisor; ctl needs --control")
                    return
                link.unlink()
            link.symlink_to(ours)
            self.default_link = link
        except (OSError, RuntimeError) as e:
            self.say(f"no default control link: {e}")

    def _base_env(self) -> dict[str, str]:
        """What every actor gets: our environment, the three endpoints, and unbuffered
        Python output (its lines reach us as they are printed)."""
        return {**os.environ, **self.endpoints, "PYTHONUNBUFFERED": "1"}

    # -- starting --------------------------------------------------------------------------

    def _start(self) -> bool:
        """Service, producers, consumers, each when the previous step is ready."""
        cwd = str(self.topology.base_dir)
        spec = self.topology.service
        argv = spec.argv(sys.executable, self.endpoints[PRODUCER_ENV], self.endpoints[CONSUMER_ENV])
        self.service = Actor("service", "service", argv, self._base_env(), cwd)
        self.service.log = spec.log
        self._spawn(self.service)
        ready_timeout = spec.ready_timeout_s or READY_TIMEOUT
        if not self._wait_until(self._service_answers, ready_timeout):
            if not self._stopping():
                self.failed = True
                self._request_stop(f"the service did not answer within {ready_timeout:g} s")
            return False
        for group in self.topology.producers:
            for actor in self._producer_actors(group, cwd):
                self._spawn(actor)
        self._wait_until(self._producers_settled, READY_TIMEOUT + 1)  # the tick's deadline
        if self._stopping():
            return False
        for consumer in self.topology.consumers:
            self._spawn(self._consumer_actor(consumer, cwd))
        return True

    def _service_answers(self) -> bool:
        if not self.service.alive:
            return False  # _on_exit asked to stop
        try:
            self.probe = Consumer.connect(
                self.endpoints[CONSUMER_ENV], timeout=0.25, name="tracebus-supervisor"
            )
        except ConsumerError:
            return False
        self.say(f"service ready on {self.endpoints[CONSUMER_ENV]}")
        return True

    def _producer_actors(self, group: ProducerGroup, cwd: str) -> list[Actor]:
        endpoint = self.endpoints[PRODUCER_ENV]
        argv = group.argv(sys.executable, endpoint)
        env = group.environment(self._base_env(), endpoint)
        actors = []
        for name in group.instance_names():
            actor = Actor(name, "producer", list(argv), env, cwd)
            actor.restart = group.restart
            actor.log, actor.log_prefixed = group.log, group.count > 1
            actors.append(actor)
        return actors

    def _consumer_actor(self, spec: ConsumerSpec, cwd: str) -> Actor:
        endpoint = self.endpoints[CONSUMER_ENV]
        env = spec.environment(self._base_env(), endpoint)
        if spec.output is not None:
            spec.output.parent.mkdir(parents=True, exist_ok=True)
        if spec.kind == "script":
            result = self.runtime_dir / "results" / f"{spec.name}.json"
            argv = [sys.executable, "-m", "launch.script_runner", str(spec.script)]
            argv += ["--name", spec.name, "--consumer-endpoint", endpoint]
            argv += ["--control", self.endpoints[control.CONTROL_ENV], "--result", str(result)]
            if spec.output is not None:
                argv += ["--output", str(spec.output)]
        else:
            argv = spec.consumer_argv(sys.executable, endpoint)
        actor = Actor(spec.name, "consumer", argv, env, cwd)
        actor.log = spec.log
        if spec.kind == "script":
            actor.result_file = result
        elif spec.config is None:
            actor.stdin = spec.config_text.encode()  # `-c -`
        return actor

    def _spawn(self, actor: Actor) -> None:
        actor.returncode = None
        if actor not in self.actors:
            self.actors.append(actor)
        self.outputs = [o for o in self.outputs if o.fd >= 0]
        try:
            proc = actor.popen()
        except OSError as e:
            self.say(f"cannot start {actor.name}: {e}")
            actor.returncode, actor.proc = 127, None
            self._after_exit(actor)
            return
        actor.adopt(proc)
        self.loop.add_fd(actor.pidfd, lambda: self._on_exit(actor))
        self.outputs += pipe_output(self.loop, self.echo.emit, actor)
        if actor.kind == "producer":
            actor.state = "starting"
            actor.ready_deadline = time.monotonic() + READY_TIMEOUT
            self._arm_tick()
        else:
            actor.state = "running"
        self.say(f"started {actor.name} (pid {proc.pid})")

    # -- producers registering ---------------------------------------------------------------

    def _producers_settled(self) -> bool:
        return not any(a.state == "starting" for a in self.actors)

    def _arm_tick(self) -> None:
        if self.tick is None:
            self.tick = self.loop.call_later(POLL_PERIOD, self._on_tick)

    def _on_tick(self) -> None:
        """Which starting producers the service lists now (by pid, or by the pid's
        process group for a command line that forked)."""
        self.tick = None
        starting = [a for a in self.actors if a.state == "starting" and a.alive]
        if starting and self.probe is not None:
            try:
                producers = self.probe.query_state(timeout=2.0).producers
            except ConsumerError as e:
                self.say(f"cannot ask the service for its producers: {e}")
                producers = []
            for actor in starting:
                if any(p.pid == actor.pid or group_of(p.pid) == actor.pid for p in producers):
                    actor.state = "running"
                    self.say(f"{actor.name} registered")
                elif time.monotonic() > actor.ready_deadline:
                    actor.state = "running"
                    self.say(f"warning: {actor.name} did not register within {READY_TIMEOUT:g} s")
        self._settle_pending()
        if any(a.state == "starting" for a in self.actors) or self.pending:
            self._arm_tick()

    # -- exits and restarts ------------------------------------------------------------------

    def _on_exit(self, actor: Actor) -> None:
        actor.close_pidfd(self.loop)
        actor.returncode = actor.proc.wait()
        for output in self.outputs:
            if output.actor is actor:
                output.on_readable()  # what it wrote last comes before our line
        if actor.kill_timer is not None:
            actor.kill_timer.cancel()
        self.say(f"{actor.name} (pid {actor.pid}) exited: {exit_text(actor.returncode)}")
        self._after_exit(actor)

    def _after_exit(self, actor: Actor) -> None:
        failed = actor.returncode != 0
        if actor.stop_requested:
            actor.state = "detached" if actor.detached else "stopped"
        elif actor.kind == "producer":
            self._maybe_restart(actor, failed)
        else:
            actor.state = "failed" if failed else "exited"
        if actor.kind == "service" and self.stop_reason is None:
            self.failed = True
            self._request_stop("the service exited")
        if actor.kind == "consumer":
            output = self.topology.consumer(actor.name).output
            collect_traces(actor, output, self.began_wall)
            consumers = [a for a in self.actors if a.kind == "consumer"]
            done = len(consumers) == len(self.topology.consumers)
            if done and not any(a.alive for a in consumers):
                if self.topology.stop_when == "consumers_done":
                    self._request_stop("consumers done")
        self._settle_pending()

    def _maybe_restart(self, actor: Actor, failed: bool) -> None:
        policy = actor.restart
        if not self._stopping() and policy.should_restart(actor.returncode, actor.restarts):
            self._schedule_restart(actor)
            return
        wanted = policy.policy == "always" or (policy.policy == "on-failure" and failed)
        if wanted and not self._stopping():  # the cap: a crash loop, said out loud
            times = actor.restarts + 1
            self.say(f"{actor.name} {'crashed' if failed else 'exited'} {times} times, giving up")
            actor.state = "gave up"
        else:
            actor.state = "failed" if failed else "exited"

    def _schedule_restart(self, actor: Actor) -> None:
        ran = (time.monotonic_ns() - actor.started_ns) / 1e9
        actor.quick_failures = 0 if ran >= HEALTHY_RUN else actor.quick_failures + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, actor.quick_failures - 1))
        actor.state = "restarting"
        n, cap = actor.restarts + 1, actor.restart.max_restarts
        self.say(f"restarting {actor.name} in {delay:g} s (restart {n} of {cap})")
        actor.restart_timer = self.loop.call_later(delay, lambda: self._restart(actor))

    def _restart(self, actor: Actor) -> None:
        actor.restart_timer = None
        if not self._stopping() and not actor.stop_requested:
            actor.restarts += 1
            self._spawn(actor)

    # -- the control channel -----------------------------------------------------------------

    def _on_control(self) -> None:
        while self.control_sock is not None:
            try:
                frames = self.control_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, payload = frames[0], frames[-1]
            try:
                req = control.decode_request(payload)
            except control.ControlError as e:
                self._reply(identity, e.request_id, control.reply(False, str(e)))
                continue
            try:
                answer = getattr(self, f"_cmd_{req['cmd']}")(identity, req)
            except control.ControlError as e:
                answer = control.reply(False, str(e))
            if answer is not None:
                self._reply(identity, req["id"], answer)

    def _reply(self, identity: bytes, request_id: Any, answer: dict) -> None:
        try:
            message = control.encode({**answer, "id": request_id})
            self.control_sock.send_multipart([identity, b"", message], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client gave up and left

    def _defer(self, identity: bytes, request_id: Any, check: Callable[[], dict | None]) -> None:
        """Reply once check() returns a reply (after exits and registration ticks)."""
        self.pending.append((check, identity, request_id))
        self._arm_tick()

    def _settle_pending(self) -> None:
        still = []
        for check, identity, request_id in self.pending:
            answer = check()
            if answer is None:
                still.append((check, identity, request_id))
            else:
                self._reply(identity, request_id, answer)
        self.pending = still

    def _cmd_list(self, _identity: bytes, _req: dict) -> dict:
        return control.reply(actors=[a.describe() for a in self.actors])

    def _cmd_stop(self, _identity: bytes, _req: dict) -> dict:
        self._request_stop("ctl stop")
        return control.reply()

    def _cmd_attach(self, identity: bytes, req: dict) -> dict | None:
        if self._stopping():
            raise control.ControlError("the topology is stopping")
        cwd = req["cwd"] or str(self.topology.base_dir)
        taken = {a.group for a in self.actors} | {c.name for c in self.topology.consumers}
        taken |= {g.name for g in self.topology.producers}
        try:
            group = parse_producer_group(control.attach_entry(req), Path(cwd), taken=taken)
        except TopologyError as e:
            raise control.ControlError(f"attach: {e}") from None
        actors = self._producer_actors(group, cwd)
        for actor in actors:
            self._spawn(actor)
        names = [a.name for a in actors]
        self.say(f"attached {', '.join(names)}")

        def check() -> dict | None:
            if req["wait"] and any(a.state == "starting" for a in actors):
                return None
            gone = [f"{a.name} {exit_text(a.returncode)}" for a in actors if not a.alive]
            if req["wait"] and gone:
                return control.reply(False, f"exited before registering: {', '.join(gone)}")
            return control.reply(instances=names, pids=[a.pid for a in actors])

        self._defer(identity, req["id"], check)
        return None

    def _cmd_detach(self, identity: bytes, req: dict) -> dict | None:
        name = req["name"]
        targets = [a for a in self.actors if name in (a.name, a.group)]
        if not targets:
            raise control.ControlError(f"no actor named {name!r}")
        if any(a.kind != "producer" for a in targets):
            raise control.ControlError(f"{name} is not a producer: only producers detach")
        for actor in targets:
            actor.stop_requested = actor.detached = True
            if actor.restart_timer is not None:
                actor.restart_timer.cancel()
                actor.restart_timer = None
                actor.state = "detached"
            self._stop_one(actor, signal.SIGTERM, STOP_TIMEOUT)

        def check() -> dict | None:
            if any(a.alive for a in targets):
                return None
            return control.reply(detached=[a.name for a in targets])

        self._defer(identity, req["id"], check)
        return None

    def _stop_one(self, actor: Actor, signum: int, timeout: float) -> None:
        """signum now, SIGKILL after timeout if it is still there."""
        if not actor.alive:
            return
        actor.signal(signum)

        def kill() -> None:
            if actor.alive:
                self.say(f"{actor.name} did not stop within {timeout:g} s: SIGKILL")
                actor.signal(signal.SIGKILL)

        actor.kill_timer = self.loop.call_later(timeout, kill)

    # -- stopping --------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Consumers (SIGINT), producers (SIGTERM), the service (SIGTERM), in turn."""
        for actor in self.actors:
            if actor.restart_timer is not None:
                actor.restart_timer.cancel()
                actor.restart_timer = None
                actor.state = "stopped"
        kinds = (
            ("consumer", signal.SIGINT, CONSUMER_STOP_TIMEOUT),
            ("producer", signal.SIGTERM, STOP_TIMEOUT),
            ("service", signal.SIGTERM, self.topology.service.stop_timeout_s or STOP_TIMEOUT),
        )
        for kind, signum, timeout in kinds:
            if kind == "service" and self.probe is not None:
                self.probe.close()
                self.probe = None
            self._stop_all([a for a in self.actors if a.kind == kind], signum, timeout)

    def _stop_all(self, actors: list[Actor], signum: int, timeout: float) -> None:
        if self.kill_now and not self.killing_said:
            self.killing_said = True
            self.say("signalled again: killing everything")
        for actor in actors:
            actor.stop_requested = True
        alive = [a for a in actors if a.alive]
        if not self.kill_now:
            for actor in alive:
                actor.signal(signum)
            self._wait_exits(alive, timeout)
        late = [a for a in alive if a.alive]
        for actor in late:
            if not self.kill_now:
                self.say(f"{actor.name} did not stop within {timeout:g} s: SIGKILL")
            actor.signal(signal.SIGKILL)
        self._wait_exits(late, KILL_TIMEOUT, killing=True)

    def _wait_exits(self, actors: list[Actor], timeout: float, killing: bool = False) -> None:
        def done() -> bool:
            return not any(a.alive for a in actors) or (self.kill_now and not killing)

        self.loop.run(until=done, timeout=timeout)

    def _cleanup(self) -> None:
        """Whatever happened: no process group of ours, no socket file, no runtime dir."""
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        for actor in self.actors:
            actor.kill_all(self.loop)
        for output in self.outputs:
            output.close()
        self.echo.close()
        if self.control_sock is not None:
            for _check, identity, request_id in self.pending:
                self._reply(identity, request_id, control.reply(False, "the topology stopped"))
            self.loop.remove(self.control_sock)
            self.control_sock.close()
            self.control_sock = None
        self.ctx.term()
        if self.default_link is not None and self.default_link.is_symlink():
            if self.default_link.readlink() == self.runtime_dir / control.CONTROL_SOCKET:
                self.default_link.unlink(missing_ok=True)
        ours = [control.CONTROL_ENV] if self.bound else []
        if self.service is not None and self.service.pids:  # a killed service leaves its own
            ours += [PRODUCER_ENV, CONSUMER_ENV]
        for key in ours:
            if self.endpoints[key].startswith("ipc://"):
                Path(self.endpoints[key].removeprefix("ipc://")).unlink(missing_ok=True)
        if self.created_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        else:
            shutil.rmtree(self.runtime_dir / "results", ignore_errors=True)
        self.loop.close()

    # -- the end ---------------------------------------------------------------------------

    def _exit_code(self) -> int:
        if self.stop_signal:
            return 128 + self.stop_signal
        consumers = [a for a in self.actors if a.kind == "consumer"]
        ok = len(consumers) == len(self.topology.consumers) and not self.failed
        return EXIT_OK if ok and all(a.returncode == 0 for a in consumers) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.supervisor",
        description="Run a tracing topology: the service, producers and consumers of a "
        "topology.yaml, until its consumers are done or Ctrl-C.",
    )
    parser.add_argument("topology", help="the topology file (YAML)")
    parser.add_argument(
        "--log-dir", type=Path, help="also append each actor's output to DIR/NAME.log"
    )
    args = parser.parse_args(argv)
    try:
        topology = load_topology(args.topology)
        if args.log_dir is not None:
            args.log_dir.mkdir(parents=True, exist_ok=True)
    except TopologyError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"{args.log_dir}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    supervisor = Supervisor(topology, log_dir=args.log_dir)
    try:
        return supervisor.run()
    except SetupError as e:
        print(f"{args.topology}: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
