"""The supervisor: `python -m launch.supervisor topology.yaml [--machine NAME] [--log-dir DIR]`.

Runs a topology (the file: docs/topology.md; the model: launch/topology.py)
as one OS process per actor, each step gated on readiness, not on time: the
service, until a consumer handshake on its consumer port succeeds; the
consumers with `start: before_producers`, one by one, each until the service
lists a started session of its process (or of its process group; 15 s at
most, or until it exits: either is reported and the start goes on); the
producers, until the service lists each instance's pid (or its process
group's, for a command line that forks; one that has not registered within
15 s is reported and the start goes on), with TRACEBUS_STARTUP_WAIT_S set
when a session runs already; then the other consumers (scripts through
launch/script_runner.py, configs through the record CLI). Every actor runs in
a session of its own, so that a Ctrl-C in the terminal reaches the supervisor
only: the shutdown order is ours to keep (consumers read back while the
producers and the service still run).

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
A probes instance (`builtin: [probes]`) that exits on a failure or a signal
cannot have removed its kernel ftrace instance: the supervisor runs `python -m
actors.probes --cleanup` in the background (actors/probe_cleanup.py).

Shutdown (SIGINT, SIGTERM, SIGHUP, `ctl stop`, the service dying, or the last
consumer ending under stop_when: consumers_done): running consumers get SIGINT
(they flush, stop and write their traces; 20 s), then the producers SIGTERM
(10 s), then the service SIGTERM (its stop_timeout_s, else 10 s); a step that
times out SIGKILLs. A signal during the shutdown skips to SIGKILL of
everything. Cleanup always runs: every process group we started is killed,
our sockets and the default control link are removed, and the runtime
directory too if we created it.

Exit code: 0 if every consumer exited 0, the service did not fail and every
producer group came up (some process of it registered with the service; one
that never did is named at the end with the last line its first failed
instance printed, e.g. a SyntaxError), 128+signum if a signal stopped the
topology, 1 otherwise, 2 for a bad topology (nothing started; one line, never
a traceback). A summary goes to stderr: every actor's state,
exit status and restarts, and per consumer its traces with packets, bytes and
losses (packets marked previous_packet_dropped, chunks overwritten or
discarded), counted from the files with Perfetto's own schema; script
consumers report the files they saved in a JSON result file.

Several machines (docs/topology.md, "Several machines"): without --machine
the supervisor runs the central part (the service with its relay port, the
consumers, the groups without `machine:`); with `--machine NAME` the part of
relay NAME's machine: the relay, started first and ready once its producer
socket answers, then the groups with `machine: NAME` pointed at it; no
service, no consumer. The relay cannot list its producers, so they run without
a registration step; that part runs until a signal or `ctl stop`, or until the
relay exits and its `restart` policy does not start it again (exit 1, as for
the service); a restarted relay serves the same socket, and its producers
reconnect to it. Before anything starts, each part
loads the key files it needs (topology_parser.check_part): exit 2 if one is
missing or wrong.

This module is the orchestration: start order, readiness, exits and restart
decisions, the order of the shutdown. Around it: one actor's OS process
(spawning, process groups, pidfds, prefixed output) and the actors of a
topology's entries are launch/children.py; the runtime directory and its
endpoints launch/runtime.py; the control channel and its command handlers
launch/control_server.py; stopping actors launch/shutdown.py; the end-of-run
summary and trace counting launch/summary.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import zmq

from actors.consumer import Consumer
from actors.core.consumer_core import ConsumerError
from actors.endpoints import CONSUMER_ENV, PRODUCER_ENV, socket_answers
from actors.loop import Loop, Timer
from actors.probe_cleanup import ProbeCleanup
from launch.children import (
    Actor,
    Echo,
    Output,
    consumer_actor,
    exit_text,
    group_of,
    pipe_output,
    producer_actors,
    relay_actor,
    relay_link,
    service_actor,
)
from launch.control import CONTROL_ENV
from launch.control_server import Commands, ControlServer
from launch.runtime import Runtime, SetupError
from launch.shutdown import CONSUMER_STOP_TIMEOUT, STOP_TIMEOUT, Stopper
from launch.summary import collect_traces, run_summary
from launch.topology import ConsumerSpec, ProducerGroup, RelaySpec, Topology, TopologyError
from launch.topology_parser import check_part, load_topology
from protos import tracebus_ipc_pb2 as ipc

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
READY_TIMEOUT = 15.0  # for the service's port, each producer to register, each early session
# Seconds an SDK producer's first call may wait for its instance of a session that
# runs before it starts (TRACEBUS_STARTUP_WAIT_S; `tracebus run` uses the same).
STARTUP_WAIT_S = 5.0
POLL_PERIOD = 0.05  # between readiness checks (the loop serves everything meanwhile)
BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_RUN = 0.5, 8.0, 10.0


class Supervisor:
    """Runs one part of a topology: `topology` is that part (Topology.part), `machine`
    the relay's machine it belongs to (None: the central part)."""

    def __init__(
        self, topology: Topology, *, log_dir: Path | None = None, machine: str | None = None
    ) -> None:
        self.topology = topology
        self.machine = machine
        self.relay_spec: RelaySpec | None = None if machine is None else topology.relay(machine)
        self.loop = Loop()
        self.ctx = zmq.Context()
        self.actors: list[Actor] = []
        self.outputs: list[Output] = []
        self.echo = Echo(max([10, *(len(n) for n in self._topology_names())]), log_dir)
        self.runtime = Runtime(topology.runtime_dir, topology.service, relay=machine is not None)
        self.control = ControlServer(self.ctx, self.loop, Commands(self).table(), self._arm_tick)
        self.stopper = Stopper(self.loop, self.say)
        self.probe_cleanup = ProbeCleanup(self.loop, self.say)
        self.probe: Consumer | None = None
        self.tick: Timer | None = None
        self.stop_reason: str | None = None
        self.stop_signal = 0
        self.service: Actor | None = None
        self.relay: Actor | None = None  # on a relay's machine, instead of the service
        self.link: str | None = None  # what the relay last said of its link (relay_link)
        self.failed = False
        self.state_truncated = False  # a state reply the service had to cut short was seen
        self.began = time.monotonic()
        self.began_wall = time.time()

    def _topology_names(self) -> Iterable[str]:
        for group in self.topology.producers:
            yield from group.instance_names()
        for consumer in self.topology.consumers:
            yield consumer.name

    def say(self, text: str) -> None:
        self.echo.say(text)

    def _emit(self, actor: Actor | None, line: bytes, stream: BinaryIO) -> None:
        """An actor's output line, echoed; the relay's link state noted from it."""
        self.echo.emit(actor, line, stream)
        if actor is not None and actor.kind == "relay":
            self.link = relay_link(line) or self.link

    # -- running ---------------------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until told to stop, stop in order, clean up; the exit code."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        try:
            self._prepare()
            if self._start():
                self.loop.run(until=self.stopping)
            if self.stop_reason is None:
                self.request_stop(signal.Signals(self.stop_signal).name)  # noticed now
            self._shutdown()
            self._report_groups_never_up()
            seconds = time.monotonic() - self.began
            summary = run_summary(self.topology, self.stop_reason, seconds, self.actors)
        finally:
            self._cleanup()
        print(summary, file=sys.stderr, flush=True)
        return self._exit_code()

    def _on_signal(self, signum: int, _frame: object) -> None:
        """Flags only (printing here could re-enter a write): the first signal stops,
        one during the shutdown kills."""
        if self.stopping():
            self.stopper.kill_now = True
        self.stop_signal = self.stop_signal or signum
        self.loop.stop()

    def stopping(self) -> bool:
        return self.stop_reason is not None or self.stop_signal != 0

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.say(f"stopping ({reason})")
            self.loop.stop()

    def _wait_until(self, check: Callable[[], bool], timeout: float) -> bool:
        """Serve the loop until check() holds; False on timeout or stop."""
        end = time.monotonic() + timeout
        while not self.stopping():
            if check():
                return True
            if time.monotonic() >= end:
                return False
            self.loop.run(until=self.stopping, timeout=POLL_PERIOD)
        return False

    def _prepare(self) -> None:
        """The runtime directory, the endpoints and the control socket."""
        self.runtime.prepare()
        control_endpoint = self.runtime.endpoints[CONTROL_ENV]
        self.control.bind(control_endpoint)
        self.runtime.link_default_control(self.say)
        self.say(f"runtime dir {self.runtime.dir}")
        self.say(f"export {CONTROL_ENV}={control_endpoint}")

    def _base_env(self) -> dict[str, str]:
        """What every actor gets: our environment, the three endpoints, and unbuffered
        Python output (its lines reach us as they are printed)."""
        return {**os.environ, **self.runtime.endpoints, "PYTHONUNBUFFERED": "1"}

    # -- starting --------------------------------------------------------------------------

    def _start(self) -> bool:
        """Service, producers, consumers, each when the previous step is ready (on a
        relay's machine: the relay, then the producers)."""
        if self.relay_spec is not None:
            return self._start_machine(self.relay_spec)
        cwd = str(self.topology.base_dir)
        endpoints = self.runtime.endpoints
        self.service = service_actor(self.topology.service, endpoints, self._base_env(), cwd)
        self._spawn(self.service)
        ready_timeout = self.topology.service.ready_timeout_s or READY_TIMEOUT
        if not self._wait_until(self._service_answers, ready_timeout):
            if not self.stopping():
                self.failed = True
                self.request_stop(f"the service did not answer within {ready_timeout:g} s")
            return False
        self._say_machine_parts()
        early = [s for s in self.topology.consumers if s.start == "before_producers"]
        for spec in early:
            self._start_consumer_first(spec, cwd)
            if self.stopping():
                return False
        wait = STARTUP_WAIT_S if early else None
        for group in self.topology.producers:
            self.start_producers(group, cwd, startup_wait_s=wait)
        self._wait_until(self._producers_settled, READY_TIMEOUT + 1)  # the tick's deadline
        if self.stopping():
            return False
        for spec in self.topology.consumers:
            if spec not in early:
                self._start_consumer(spec, cwd)
        return True

    def _start_machine(self, spec: RelaySpec) -> bool:
        """The relay, until its producer socket answers; then this machine's groups."""
        cwd = str(self.topology.base_dir)
        self.relay = relay_actor(spec, self.runtime.endpoints, self._base_env(), cwd)
        self._spawn(self.relay)
        if not self._wait_until(self._relay_answers, READY_TIMEOUT):
            if not self.stopping():
                self.failed = True
                self.request_stop(f"the relay did not listen within {READY_TIMEOUT:g} s")
            return False
        for group in self.topology.producers:
            self.start_producers(group, cwd)
        return not self.stopping()

    def _say_machine_parts(self) -> None:
        """How to start each relay's part: on its machine, with this file."""
        for relay in self.topology.relays:
            source = self.topology.source
            self.say(f"machine {relay.name}: python -m launch.supervisor {source} "
                     f"--machine {relay.name}")  # fmt: skip

    def _relay_answers(self) -> bool:
        if self.relay is None or not self.relay.alive:
            return False  # _on_exit asked to stop
        endpoint = self.runtime.endpoints[PRODUCER_ENV]
        if not socket_answers(Path(endpoint.removeprefix("ipc://"))):
            return False
        self.say(f"relay ready on {endpoint}")
        return True

    def _start_consumer(self, spec: ConsumerSpec, cwd: str) -> Actor:
        result = self.runtime.result_file(spec.name)
        actor = consumer_actor(spec, self.runtime.endpoints, self._base_env(), cwd, result)
        self._spawn(actor)
        return actor

    def _start_consumer_first(self, spec: ConsumerSpec, cwd: str) -> None:
        """A consumer whose session must run before the producers start; if it does not
        within READY_TIMEOUT, or the consumer exits first, say so and go on."""
        actor = self._start_consumer(spec, cwd)
        runs = self._wait_until(lambda: not actor.alive or self._session_runs(actor), READY_TIMEOUT)
        if not actor.alive:
            self.say(f"{actor.name} exited before the producers started")
        elif runs:
            self.say(f"{actor.name}'s session started")
        elif not self.stopping():
            self.say(f"warning: {actor.name}'s session did not start within {READY_TIMEOUT:g} s")

    def _session_runs(self, actor: Actor) -> bool:
        """Whether the service lists a started session of the actor's process (group)."""
        state = self.service_state()
        if state is None:
            return False
        started = [s.consumer_pid for s in state.sessions if s.state == "STARTED"]
        return any(pid and actor.pid in (pid, group_of(pid)) for pid in started)

    def _service_answers(self) -> bool:
        if self.service is None or not self.service.alive:
            return False  # _on_exit asked to stop
        endpoint = self.runtime.endpoints[CONSUMER_ENV]
        try:
            self.probe = Consumer.connect(endpoint, timeout=0.25, name="tracebus-supervisor")
        except ConsumerError:
            return False
        self.say(f"service ready on {endpoint}")
        return True

    def start_producers(
        self, group: ProducerGroup, cwd: str, *, startup_wait_s: float | None = None
    ) -> list[Actor]:
        """Spawn the group's instances (registration is checked on the tick)."""
        endpoints, env = self.runtime.endpoints, self._base_env()
        actors = producer_actors(group, endpoints, env, cwd, startup_wait_s)
        for actor in actors:
            self._spawn(actor)
        return actors

    def _spawn(self, actor: Actor) -> None:
        actor.returncode = None
        if actor not in self.actors:
            self.actors.append(actor)
        self.outputs = [o for o in self.outputs if o.fd >= 0]
        try:
            proc = actor.popen()
        except (OSError, ValueError) as e:  # ValueError: an argument Popen refuses
            self.say(f"cannot start {actor.name}: {e}")
            actor.last_line = f"cannot start: {e}"
            actor.returncode, actor.proc = 127, None
            self._after_exit(actor, 127)
            return
        actor.adopt(proc)
        self.loop.add_fd(actor.pidfd, lambda: self._on_exit(actor))
        self.outputs += pipe_output(self.loop, self._emit, actor)
        if actor.kind == "producer" and self.machine is None:  # a relay lists no producer
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
        process group for a command line that forked); then the pending replies."""
        self.tick = None
        starting = [a for a in self.actors if a.state == "starting" and a.alive]
        if starting:
            state = self.service_state()
            self._note_registered(starting, state)
            for actor in starting:
                if actor.registered:
                    actor.state = "running"
                    self.say(f"{actor.name} registered")
                elif time.monotonic() > actor.ready_deadline:
                    actor.state = "running"
                    self.say(f"warning: {actor.name} did not register within {READY_TIMEOUT:g} s")
        self.control.settle()
        if any(a.state == "starting" for a in self.actors) or self.control.pending:
            self._arm_tick()

    def _note_registered(
        self, actors: Iterable[Actor], state: ipc.QueryServiceStateResponse | None
    ) -> None:
        """Mark the producers the service lists (by pid, or by the pid's process group
        for a command line that forked), connected or departed already."""
        if state is None:
            return
        if state.truncated:  # cut short (a flood of registrations): absence proves nothing
            self.state_truncated = True
        pids = [p.pid for p in state.producers] + [p.pid for p in state.departed_producers]
        for actor in actors:
            if any(pid == actor.pid or group_of(pid) == actor.pid for pid in pids):
                actor.registered = True

    def service_state(self) -> ipc.QueryServiceStateResponse | None:
        """The service's producers, sessions and machines (None if it cannot say, or
        on a relay's machine)."""
        if self.probe is None:
            return None
        try:
            return self.probe.query_state(timeout=2.0)
        except ConsumerError as e:
            self.say(f"cannot ask the service for its state: {e}")
            return None

    # -- exits and restarts ------------------------------------------------------------------

    def _on_exit(self, actor: Actor) -> None:
        actor.close_pidfd(self.loop)
        returncode = actor.reap()
        for output in self.outputs:
            if output.actor is actor:
                output.on_readable()  # what it wrote last comes before our line
        if actor.kill_timer is not None:
            actor.kill_timer.cancel()
        self.say(f"{actor.name} (pid {actor.pid}) exited: {exit_text(returncode)}")
        self._after_exit(actor, returncode)

    def _after_exit(self, actor: Actor, returncode: int) -> None:
        failed = returncode != 0
        if actor.probes and failed and actor.proc is not None:  # it could not clean up
            self.probe_cleanup.request(f"{actor.name} exited: {exit_text(returncode)}")
        if actor.kind == "producer" and not actor.registered and actor.proc is not None:
            self._note_unregistered_exit(actor)
        if actor.stop_requested:
            actor.state = "detached" if actor.detached else "stopped"
        elif actor.kind in ("producer", "relay"):  # the relay's producers reconnect to it
            self._maybe_restart(actor, returncode)
        else:
            actor.state = "failed" if failed else "exited"
        server = actor.kind in ("service", "relay") and actor.state != "restarting"
        if server and self.stop_reason is None:
            self.failed = True
            self.request_stop(f"the {actor.kind} exited")
        if actor.kind == "consumer":
            self._consumer_done(actor)
        self.control.settle()

    def _note_unregistered_exit(self, actor: Actor) -> None:
        """A producer that exited unseen: it may have registered and left already, else
        say so with its last line (not on a relay's machine: nothing lists producers)."""
        if self.machine is not None:
            return
        self._note_registered([actor], self.service_state())
        if not actor.registered and not actor.stop_requested:
            why = f": {actor.last_line}" if actor.last_line else ""
            self.say(f"warning: {actor.name} exited before registering{why}")

    def _consumer_done(self, actor: Actor) -> None:
        """Its traces; the end of the topology if it was the last consumer."""
        output = self.topology.consumer(actor.name).output
        collect_traces(actor, output, self.began_wall)
        consumers = [a for a in self.actors if a.kind == "consumer"]
        done = len(consumers) == len(self.topology.consumers)
        if done and not any(a.alive for a in consumers):
            if self.topology.stop_when == "consumers_done":
                self.request_stop("consumers done")

    def _maybe_restart(self, actor: Actor, returncode: int) -> None:
        policy = actor.restart
        failed = returncode != 0
        if not self.stopping() and policy.should_restart(returncode, actor.restarts):
            self._schedule_restart(actor)
            return
        wanted = policy.policy == "always" or (policy.policy == "on-failure" and failed)
        if wanted and not self.stopping():  # the cap: a crash loop, said out loud
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
        if not self.stopping() and not actor.stop_requested:
            actor.restarts += 1
            self._spawn(actor)

    # -- stopping --------------------------------------------------------------------------

    def stop_actor(self, actor: Actor, signum: int, timeout: float) -> None:
        self.stopper.stop_one(actor, signum, timeout)

    def _shutdown(self) -> None:
        """Consumers (SIGINT), producers (SIGTERM), the service (SIGTERM), in turn."""
        self.stopper.cancel_restarts(self.actors)
        self.stopper.stop_all(self._of_kind("consumer"), signal.SIGINT, CONSUMER_STOP_TIMEOUT)
        self.stopper.stop_all(self._of_kind("producer"), signal.SIGTERM, STOP_TIMEOUT)
        if self.probe is not None:  # the service's last peer of ours
            self.probe.close()
            self.probe = None
        service_timeout = self.topology.service.stop_timeout_s or STOP_TIMEOUT
        servers = self._of_kind("service") + self._of_kind("relay")
        self.stopper.stop_all(servers, signal.SIGTERM, service_timeout)

    def groups_never_up(self) -> list[str]:
        """Why each producer group that was started never came up: no process of it
        ever registered with the service (none on a relay's machine: it cannot tell)."""
        if self.machine is not None:
            return []
        groups: dict[str, list[Actor]] = {}
        for actor in self._of_kind("producer"):
            if actor.pids or actor.returncode is not None:  # started, or failed to start
                groups.setdefault(actor.group, []).append(actor)
        reasons = []
        for name, actors in groups.items():
            if not any(a.registered for a in actors):
                reasons.append(f"producer group {name} never came up: {_never_up(actors)}")
        return reasons

    def _report_groups_never_up(self) -> None:
        if self.stop_signal:  # stopped by hand: not a failure of the topology
            return
        for reason in self.groups_never_up():
            if self.state_truncated:  # the group may have registered unseen
                self.say(f"warning: {reason} (or registered unseen: the service's state was cut)")
                continue
            self.failed = True
            self.say(f"error: {reason}")

    def _of_kind(self, kind: str) -> list[Actor]:
        return [a for a in self.actors if a.kind == kind]

    def _cleanup(self) -> None:
        """Whatever happened: no process group of ours, no socket file, no runtime dir."""
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        killed_probes = [a.name for a in self.actors if a.probes and a.alive]
        for actor in self.actors:
            actor.kill_all(self.loop)
        if killed_probes:
            self.probe_cleanup.request(f"{', '.join(killed_probes)} killed at cleanup")
        self.probe_cleanup.close()
        for output in self.outputs:
            output.close()
        self.echo.close()
        self.control.close()
        self.ctx.term()
        server = self.service or self.relay
        service_started = server is not None and bool(server.pids)
        self.runtime.remove(control_bound=self.control.bound, service_started=service_started)
        self.loop.close()

    def _exit_code(self) -> int:
        if self.stop_signal:
            return 128 + self.stop_signal
        consumers = self._of_kind("consumer")
        ok = len(consumers) == len(self.topology.consumers) and not self.failed
        return EXIT_OK if ok and all(a.returncode == 0 for a in consumers) else EXIT_FAILED


def _never_up(actors: list[Actor]) -> str:
    """What became of a group none of whose processes registered: the first that
    exited by itself, with its last line of output (a traceback's last line says why)."""
    exited = [a for a in actors if a.state in ("failed", "exited", "gave up")]
    actor = exited[0] if exited else actors[0]
    if exited:
        how = f"{actor.name} exited ({exit_text(actor.returncode)}) before registering"
    else:
        how = f"{actor.name} did not register before the topology stopped"
    return f"{how}: {actor.last_line}" if actor.last_line else how


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.supervisor",
        description="Run a tracing topology: the service, producers and consumers of a "
        "topology.yaml, until its consumers are done or Ctrl-C.",
    )
    parser.add_argument("topology", help="the topology file (YAML)")
    parser.add_argument(
        "--machine",
        metavar="NAME",
        help="run relay NAME's part of the topology (its relay and the producer groups with "
        "machine: NAME) instead of the central part",
    )
    parser.add_argument(
        "--log-dir", type=Path, help="also append each actor's output to DIR/NAME.log"
    )
    args = parser.parse_args(argv)
    try:
        topology = load_topology(args.topology)
        check_part(topology, args.machine)
        topology = topology.part(args.machine)
        if args.log_dir is not None:
            args.log_dir.mkdir(parents=True, exist_ok=True)
    except TopologyError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"{args.log_dir}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - a parser bug: still one line, never a traceback
        problem = " ".join(str(e).split())[:200]
        print(f"{args.topology}: cannot load the topology: {type(e).__name__}: {problem}",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    supervisor = Supervisor(topology, log_dir=args.log_dir, machine=args.machine)
    try:
        return supervisor.run()
    except SetupError as e:
        print(f"{args.topology}: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
