"""The chaos soak: one real service under 8 writing producers that are killed,
stopped and restarted at random, a producer scribbling on its own SMB, raw
peers sending mutated protocol messages on both ports and on both of
Perfetto's sockets (and raw bytes to every socket of the runtime directory),
a Perfetto SDK producer (the client double) killed and restarted like the
others, and two consumers
recording back to back (one reading at the end, one with write_into_file),
and a third consumer that is killed and stopped like the producers.

What it asserts (issue 11, item 8):

- the service stays up and answers query_state within QUERY_DEADLINE_S
  throughout (a probe process asks every PROBE_PERIOD_S: the test's own work,
  parsing traces, never delays it);
- every recording ends with exit code 0 and a trace that parses with Perfetto's
  schema; in it, every honest synthetic sequence has strictly increasing
  counters, its packets hold the bytes their counters imply, and every jump
  (a loss) lands on a packet flagged previous_packet_dropped;
- a consumer connection left idle all along (the harness's control) still
  answers at the end;
- nothing leaks: once every peer is gone, the service's fd count is back within
  FD_SLACK of its value before the soak and its RSS within RSS_SLACK_BYTES; it
  holds no SMB; no process of the soak, /dev/shm entry or socket file of the
  runtime directory remains (the harness checks the processes and /dev/shm
  again at its cleanup).

"Before the soak" is measured after a warm-up recording, so that what the
service imports and caches on its first session is not counted as a leak.

test_chaos_soak runs SOAK_S seconds; test_chaos_soak_long runs LONG_SOAK_S
(marked slow, and only with TRACEBUS_CHAOS_LONG=1: CI runs the slow marker,
this one is for a machine and a person who wait for it). TRACEBUS_CHAOS_SEED
replays a run's random choices (the seed is printed; the processes' timing
still differs from run to run), TRACEBUS_CHAOS_SECONDS sets SOAK_S. The
figures of a run are printed (`-s`).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from actors.consumer import Consumer
from actors.core.consumer_core import ConsumerError
from tests.chaos_peers import SCRIBBLER_MODULE, SDK_APP, TraceCheck, check_trace, is_socket
from tests.processes import Proc, Runtime, marked_pids, smb_memfds
from tests.waiting import wait_for

SOAK_S = float(os.environ.get("TRACEBUS_CHAOS_SECONDS") or 60)
LONG_SOAK_S = 600.0
SYNTHETIC_PRODUCERS = 6
SDK_APPS = 2  # with the synthetic ones: 8 producers writing
QUERY_DEADLINE_S = 1.0
PROBE_PERIOD_S = 0.2
FD_SLACK = 4
RSS_SLACK_BYTES = 20 << 20
KILLABLE = ("synthetic", "scribbler", "sdk", "perfetto-sdk", "victim")
RAW_MESSAGES = 400  # per raw peer process; the soak starts another when one exits
PERFETTO_PRODUCER_SOCKET = "perfetto-producer.sock"  # in the runtime directory
PERFETTO_CONSUMER_SOCKET = "perfetto-consumer.sock"
PERFETTO_PACKETS = 2000  # what the client double writes per session
SEED_BASE = 7  # the synthetic source's seed (TestConfig.seed)
MESSAGE_SIZE = 64
RATE = 300  # synthetic packets per second per instance

SOURCES = f"""
data_sources {{ config {{ name: "tracebus.synthetic"
  for_testing {{ message_count: 100000000 seed: {SEED_BASE} message_size: {MESSAGE_SIZE}
                 max_messages_per_second: {RATE} }} }} }}
data_sources {{ config {{ name: "track_event" }} }}
flush_timeout_ms: 3000
data_source_stop_timeout_ms: 3000
"""
# Read back at the end; a small ring, so that it wraps and overwrites.
READER_CONFIG = "buffers { size_kb: 512 fill_policy: RING_BUFFER }\nduration_ms: 6000\n" + SOURCES
# Written by the service as the session runs.
FILE_CONFIG = (
    "buffers { size_kb: 2048 }\nduration_ms: 8000\n"
    "write_into_file: true\nfile_write_period_ms: 1000\n" + SOURCES
)
# A third consumer's, killed and stopped at random; long, so that it is.
VICTIM_CONFIG = "buffers { size_kb: 4096 }\nduration_ms: 20000\n" + SOURCES
WARMUP_CONFIG = "buffers { size_kb: 256 }\nduration_ms: 500\n" + SOURCES


# -- the service as the kernel sees it -------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def socket_files(directory: Path) -> set[str]:
    return {p.name for p in directory.rglob("*") if is_socket(p)}


# -- the actors ------------------------------------------------------------------------------------


@dataclass
class Actor:
    label: str
    # synthetic | scribbler | sdk | perfetto-sdk | raw-producer | raw-consumer | raw-sockets
    # | raw-perfetto-producer | raw-perfetto-consumer | victim
    kind: str
    proc: Proc
    stopped_until: float = 0.0  # SIGSTOPped until then (monotonic), 0: running


@dataclass
class Figures:
    kills: int = 0
    stops: int = 0
    restarts: int = 0
    raw_peers: int = 0
    recordings: int = 0
    checks: list[TraceCheck] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    late: list[str] = field(default_factory=list)  # probes over QUERY_DEADLINE_S, and when
    rss: list[int] = field(default_factory=list)  # the service's, sampled by the driver
    failures: list[str] = field(default_factory=list)


class Soak:
    """The soak's processes, the threads that drive them and record, and the probe."""

    def __init__(self, rt: Runtime, seed: int, service_pid: int) -> None:
        self.rt = rt
        self.service_pid = service_pid
        self.rnd = random.Random(seed)
        self.seed = seed
        self.actors: list[Actor] = []
        self.honest_pids: set[int] = set()
        self.labels: dict[int, str] = {}  # pid -> label, for the failures' messages
        self.figures = Figures()
        self.stop = threading.Event()
        self.lock = threading.Lock()  # honest_pids and figures, shared with the threads
        rt.write_module("chaos_scribbler", SCRIBBLER_MODULE)
        self.sdk_app = rt.write_file("chaos_app.py", SDK_APP)
        self.victim_config = rt.write_file("victim.pbtxt", VICTIM_CONFIG)

    # -- starting actors --

    def start(self, label: str, kind: str) -> Actor:
        starters = {
            "synthetic": self._synthetic,
            "scribbler": self._scribbler,
            "sdk": self._sdk_app,
            "raw-producer": self._raw_peer,
            "raw-consumer": self._raw_peer,
            "raw-sockets": self._raw_peer,
            "raw-perfetto-producer": self._raw_peer,
            "raw-perfetto-consumer": self._raw_peer,
            "perfetto-sdk": self._perfetto_sdk,
            "victim": self._victim,
        }
        proc = starters[kind](label, kind)
        actor = Actor(label, kind, proc)
        self.labels[proc.pid] = label
        self.actors.append(actor)
        return actor

    def _synthetic(self, label: str, kind: str) -> Proc:
        proc = self.rt.start_producer(label, wait=False)
        with self.lock:
            self.honest_pids.add(proc.pid)
        return proc

    def _scribbler(self, label: str, kind: str) -> Proc:
        return self.rt.start_producer(label, "--module", "chaos_scribbler", wait=False)

    def _sdk_app(self, label: str, kind: str) -> Proc:
        env = {
            "TRACEBUS_PRODUCER_SOCK": self.rt.producer_endpoint,
            "TRACEBUS_STARTUP_WAIT_S": "0",
            "TRACEBUS_PRODUCER_NAME": label,
        }
        return self.rt.spawn(label, [str(self.sdk_app)], env)

    def _raw_peer(self, label: str, kind: str) -> Proc:
        side = kind.removeprefix("raw-")
        endpoints = {
            "producer": self.rt.producer_endpoint,
            "consumer": self.rt.consumer_endpoint,
            "perfetto-producer": str(self.rt.dir / PERFETTO_PRODUCER_SOCKET),
            "perfetto-consumer": str(self.rt.dir / PERFETTO_CONSUMER_SOCKET),
        }
        endpoint = endpoints.get(side, str(self.rt.dir))
        peer_seed = str(self.rnd.getrandbits(32))
        self.figures.raw_peers += 1
        argv = ["-m", "tests.chaos_peers", side, endpoint, peer_seed, str(RAW_MESSAGES)]
        return self.rt.spawn(label, argv)

    def _perfetto_sdk(self, label: str, kind: str) -> Proc:
        """The Perfetto client double as an SDK app: it writes PERFETTO_PACKETS once
        a session starts its track_event, then serves the service until every
        instance of it stopped, and exits (the soak starts another)."""
        socket = str(self.rt.dir / PERFETTO_PRODUCER_SOCKET)
        argv = ["-m", "tests.perfetto_client", "producer", socket, label, str(PERFETTO_PACKETS)]
        return self.rt.spawn(label, argv)

    def _victim(self, label: str, kind: str) -> Proc:
        """A record CLI that the driver kills and stops like a producer: its session
        must be freed whatever happens to it; what it records is not checked."""
        argv = ["-m", "actors.consumer", "-c", str(self.victim_config), "--txt"]
        argv += ["-o", str(self.rt.dir / f"{label}.pftrace")]
        return self.rt.spawn(label, [*argv, "--consumer-endpoint", self.rt.consumer_endpoint])

    def start_all(self) -> None:
        for i in range(SYNTHETIC_PRODUCERS):
            self.start(f"chaos-{i}", "synthetic")
        for i in range(SDK_APPS):
            self.start(f"chaos-app-{i}", "sdk")
        self.start("chaos-scribbler", "scribbler")
        self.start("raw-producer", "raw-producer")
        self.start("raw-consumer", "raw-consumer")
        self.start("raw-sockets", "raw-sockets")
        self.start("raw-perfetto-producer", "raw-perfetto-producer")
        self.start("raw-perfetto-consumer", "raw-perfetto-consumer")
        self.start("perfetto-app", "perfetto-sdk")
        self.start("victim", "victim")

    # -- the chaos driver --

    def drive(self) -> None:
        """Until stopped: every 0.3-1.5 s, kill, stop or restart an actor at random;
        resume stopped ones when their time is up; restart raw peers that ended."""
        try:
            while not self.stop.wait(self.rnd.uniform(0.3, 1.5)):
                self.figures.rss.append(rss_bytes(self.service_pid))
                self._resume_due()
                self._replace_ended()
                self._strike()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.figures.failures.append(f"the chaos driver failed: {e!r}")
            raise

    def _strike(self) -> None:
        running = [a for a in self.actors if a.proc.poll() is None]
        writers = [a for a in running if a.kind in KILLABLE]
        roll = self.rnd.random()
        if roll < 0.35 and writers:
            self._restart(self.rnd.choice(writers), signal.SIGKILL)
        elif roll < 0.7 and running:
            actor = self.rnd.choice([a for a in running if not a.stopped_until] or running)
            if not actor.stopped_until:
                actor.proc.send_signal(signal.SIGSTOP)
                actor.stopped_until = time.monotonic() + self.rnd.uniform(0.2, 3.0)
                self.figures.stops += 1
        elif roll < 0.85 and writers:
            self._restart(self.rnd.choice(writers), signal.SIGTERM)

    def _restart(self, actor: Actor, how: signal.Signals) -> None:
        if how == signal.SIGKILL:
            actor.proc.kill()
            self.figures.kills += 1
        else:
            actor.proc.send_signal(signal.SIGCONT)  # a stopped process takes SIGTERM late
            self.rt.stop(actor.proc)
        actor.proc.wait()
        self.actors.remove(actor)
        self.start(actor.label, actor.kind)
        self.figures.restarts += 1

    def _resume_due(self) -> None:
        now = time.monotonic()
        for actor in self.actors:
            if actor.stopped_until and actor.stopped_until <= now:
                actor.proc.send_signal(signal.SIGCONT)
                actor.stopped_until = 0.0

    def _replace_ended(self) -> None:
        """A raw peer ends after its messages, a victim consumer with its session:
        start another. A writer that ended on its own (no one killed it) is a
        failure of the soak; the scribbler may fall to its own scribbles."""
        for actor in [a for a in self.actors if a.proc.poll() is not None]:
            code = actor.proc.returncode
            if actor.kind.startswith("raw-") or actor.kind == "perfetto-sdk":
                if code != 0:
                    self.figures.failures.append(f"{actor.label} exited with {code}")
            elif actor.kind not in ("scribbler", "victim"):
                self.figures.failures.append(f"{actor.label} ended on its own ({code})")
            self.actors.remove(actor)
            self.start(actor.label, actor.kind)

    def end_actors(self) -> None:
        """Resume every stopped actor, then stop them all (SIGTERM, then SIGKILL)."""
        for actor in self.actors:
            if actor.proc.poll() is None:
                actor.proc.send_signal(signal.SIGCONT)
        for actor in self.actors:
            self.rt.stop(actor.proc)

    # -- the consumers --

    def record_loop(self, name: str, config: str) -> None:
        """Record sessions back to back until stopped; check each trace."""
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                self._record_one(f"{name}-{n}", config)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.figures.failures.append(f"consumer {name} failed: {e!r}")
            raise

    def _record_one(self, name: str, config: str) -> None:
        proc, out = self.rt.start_record(config, name)
        _, err = self.rt.communicate(proc, timeout=90)
        with self.lock:
            self.figures.recordings += 1
            honest = set(self.honest_pids)
        if proc.returncode != 0:
            self.figures.failures.append(f"recording {name} exited {proc.returncode}: {err}")
            return
        check = check_trace(out.read_bytes(), honest, SEED_BASE, MESSAGE_SIZE)
        out.unlink()
        self.figures.checks.append(check)
        self.figures.failures += [f"{name}: {p}" for p in check.problems[:5]]
        if check.problems:
            self.figures.failures.append(f"(the pids of the soak: {self.labels})")

    # -- the probe --

    def start_probe(self) -> Proc:
        """The probe process (tests.chaos_peers probe), once it is connected."""
        period_ms = str(int(PROBE_PERIOD_S * 1000))
        argv = ["-m", "tests.chaos_peers", "probe", self.rt.consumer_endpoint, period_ms, "0"]
        probe = self.rt.spawn("probe", argv, lines=True)
        self.rt.wait_line(probe, "ready", timeout=30)
        return probe

    def end_probe(self, probe: Proc) -> None:
        """Stop the probe; its latencies and errors into the figures."""
        assert probe.stdin is not None
        probe.stdin.close()
        assert self.rt.finish(probe) == 0, self.rt.output(probe)
        for line in self.rt.output(probe).splitlines():
            if line.startswith("latency "):
                _, latency, at = line.split()
                self.figures.latencies.append(float(latency))
                if float(latency) >= QUERY_DEADLINE_S:
                    self.figures.late.append(f"{float(latency):.2f} s at {at} s")
            elif line.startswith("error "):
                self.figures.failures.append(f"query_state failed: {line[6:]}")


# -- the soak --------------------------------------------------------------------------------------


def warm_up(rt: Runtime) -> None:
    """One producer, one short recording: what the service loads once is loaded."""
    producer = rt.start_producer("warmup")
    result, out = rt.record(WARMUP_CONFIG, "warmup")
    assert result.returncode == 0, result.stderr
    check_trace(out.read_bytes(), {producer.pid}, SEED_BASE, MESSAGE_SIZE)
    rt.stop(producer)
    wait_for(lambda: not rt.control.query_state(timeout=5).producers, 15, "no producer left")


def run_soak(rt: Runtime, duration: float) -> None:
    seed = int(os.environ.get("TRACEBUS_CHAOS_SEED") or random.randrange(1 << 32))
    print(f"chaos soak: seed {seed}, {duration:g} s")
    service = rt.start_service(
        "--perfetto-producer-socket", str(rt.dir / PERFETTO_PRODUCER_SOCKET),
        "--perfetto-consumer-socket", str(rt.dir / PERFETTO_CONSUMER_SOCKET),
    )  # fmt: skip
    warm_up(rt)
    soak = Soak(rt, seed, service.pid)
    probe = soak.start_probe()
    fds0, rss0, sockets0 = fd_count(service.pid), rss_bytes(service.pid), socket_files(rt.dir)

    soak.start_all()
    threads = [
        threading.Thread(target=soak.drive, name="driver"),
        threading.Thread(target=soak.record_loop, args=("reader", READER_CONFIG)),
        threading.Thread(target=soak.record_loop, args=("filer", FILE_CONFIG)),
    ]
    for t in threads:
        t.start()
    try:
        soak.stop.wait(duration)
    finally:
        soak.stop.set()
        threads[0].join(30)
        soak.end_actors()
        for t in threads:
            t.join(120)
        soak.end_probe(probe)
    rt.assert_running(service, "the service")
    settle(rt, service.pid, fds0)
    report(soak.figures, fds0, rss0, service.pid)
    assert_idle_consumer_kept(rt)
    assert_soak(soak.figures)
    assert_nothing_left(rt, service.pid, rss0, sockets0)


def report(figures: Figures, fds0: int, rss0: int, pid: int) -> None:
    checks = figures.checks
    worst = sorted(figures.latencies)[-3:]
    print(
        f"chaos soak: {figures.kills} kills, {figures.stops} stops, {figures.restarts} "
        f"restarts, {figures.raw_peers} raw peers; {figures.recordings} recordings, "
        f"{sum(c.packets for c in checks)} packets, {sum(c.synthetic for c in checks)} "
        f"checked in {sum(c.sequences for c in checks)} sequences, "
        f"{sum(c.gaps for c in checks)} gaps, {sum(c.flagged_losses for c in checks)} "
        f"packets flagged; query_state: {len(figures.latencies)} probes, worst "
        f"{', '.join(f'{x * 1000:.0f}' for x in worst)} ms; service fds {fds0} -> "
        f"{fd_count(pid)}, RSS {rss0 >> 20} -> {rss_bytes(pid) >> 20} MiB (during the soak "
        f"{min(figures.rss, default=0) >> 20}-{max(figures.rss, default=0) >> 20} MiB)"
    )


def assert_soak(figures: Figures) -> None:
    assert not figures.failures, "\n".join(figures.failures[:30])
    assert not figures.late, f"query_state answered late: {', '.join(figures.late)}"
    assert figures.checks, "no recording finished"
    assert sum(c.synthetic for c in figures.checks) > 0, "no honest packet in any trace"


def assert_idle_consumer_kept(rt: Runtime) -> None:
    """The connection start_service opened, idle all along, still answers."""
    try:
        rt.control.query_state(timeout=5)
    except ConsumerError as e:
        raise AssertionError(
            f"the idle control consumer lost its connection: {e}\n" + service_log_excerpt(rt)
        ) from None


def service_log_excerpt(rt: Runtime, lines: int = 60) -> str:
    """The service's log without its one line per dropped frame (a raw peer's)."""
    text = (rt.dir / "service.log").read_text(errors="replace").splitlines()
    kept = [line for line in text if "dropped a frame" not in line]
    return "\n".join(kept[-lines:])


def settle(rt: Runtime, pid: int, fds0: int) -> None:
    """Wait for the service to let go of the soak's peers: no producer, no session,
    no SMB, its fds back within FD_SLACK of fds0."""

    def settled(consumer: Consumer) -> bool:
        state = consumer.query_state(timeout=5)
        return not state.producers and not state.sessions

    with Consumer.connect(rt.consumer_endpoint, timeout=5, name="chaos-settle") as consumer:
        wait_for(lambda: settled(consumer), 20, "the service to list no producer and no session")
    wait_for(lambda: not smb_memfds(pid), 10, "the service to release every SMB")
    wait_for(lambda: fd_count(pid) <= fds0 + FD_SLACK, 10, f"service fds back near {fds0}")


def assert_nothing_left(rt: Runtime, pid: int, rss0: int, sockets0: set[str]) -> None:
    rss = rss_bytes(pid)
    assert rss <= rss0 + RSS_SLACK_BYTES, f"service RSS {rss >> 20} MiB, {rss0 >> 20} before"
    assert marked_pids(str(rt.dir)) == [pid], "a process of the soak is still running"
    assert socket_files(rt.dir) == sockets0, "socket files left in the runtime directory"
    assert not rt.new_dev_shm_entries(), "/dev/shm entries left"


@pytest.mark.timeout(SOAK_S + 240)
def test_chaos_soak(rt: Runtime) -> None:
    run_soak(rt, SOAK_S)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("TRACEBUS_CHAOS_LONG"), reason="a 10-minute soak: TRACEBUS_CHAOS_LONG=1"
)
@pytest.mark.timeout(LONG_SOAK_S + 300)
def test_chaos_soak_long(rt: Runtime) -> None:
    run_soak(rt, LONG_SOAK_S)
