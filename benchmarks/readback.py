"""Read-back benchmark: a real service, producers and the record CLI, each its own process.

    python -m benchmarks.readback [--quick] [--json FILE]

Read-back scenario: LOAD_PRODUCERS producers (`actors.producer --module
benchmarks.readback --policy stall`) each write a fixed number of ~100-byte
TrackEvent packets (ReadbackLoad below) into one RING_BUFFER of 64 MiB (8 MiB
with --quick), filled to about FILL of its size so that it never wraps; the
stock record CLI (`python -m actors.consumer`) holds the session. Once every
producer has written all its packets, the CLI gets SIGINT: it flushes, stops the
session and reads it back into its output file. Meanwhile a second consumer (in
this process) asks query_service_state every 10 ms, and the service's RSS is
sampled from /proc every 10 ms.

Loss scenario: LOSS_PRODUCERS producers of the built-in synthetic source write
flat out (DROP policy, default SMB) into a DISCARD buffer of LOSS_BUFFER_KB; this
process holds the session through the Consumer API, stops it once 16 MiB (4 MiB
with --quick) reached the buffer, far from full, and reads it. Sixteen writers
flat out on a small machine fill their SMBs, so producers drop.

Figures (one table; --json writes exactly these keys):
  e2e_readback_mb_s        MiB in the output file / seconds from the CLI's first read
                           request after the stop to its file closed (the CLI's
                           summary line "read back ... in S s")
  readback_complete        the file holds every packet the buffer held: trace_stats'
                           chunks_read == chunks_written, nothing overwritten, and
                           each producer's sequence has all its packets, unmarked
  readback_max_stall_ms    the slowest query_service_state answer, from the stop
                           (SIGINT) to the CLI's exit, a superset of the read
  readback_rss_growth_mib  service RSS: peak over that window minus the sample just
                           before it
  loss_exact               for every producer of the loss scenario (one sequence each):
                           every gap in its counters is marked previous_packet_dropped
                           and the counters missing from the trace, its tail included,
                           are as many as the producer logged dropping; trace_stats'
                           lost packets (trace_writer_packet_loss; per sequence the trace
                           has only the marks) are their sum; and some were dropped
                           (false if none: nothing would have been checked)
  calibration_ns           benchmarks/calibration.py, measured in this run; the
                           rate and stall targets are stated for 55 ns and scale
                           with it (the RSS target does not)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.consumer import Consumer
from actors.core.consumer_core import ConsumerError
from actors.producer_sdk import DataSource
from actors.track_event import TrackEvents
from benchmarks.calibration import calibration_ns, save_json, scaled_target

REPO = Path(__file__).resolve().parents[1]
LOAD_SOURCE = "bench.readback"
LOAD_PRODUCERS = 2
LOSS_PRODUCERS = 16
FILL = 0.8  # of the ring buffer: chunk headers and partly filled chunks stay well inside it
PACKET_BYTES = 100  # in the trace, the service's trusted fields included
EVENT_NAME = "readback-benchmark-event-" + "x" * 34  # makes a ~92-byte producer packet
PROBE_PERIOD_S = 0.010
CLI_WAIT_S = 300  # the whole stop and read-back, at most (the CLI times out itself)
READY_TIMEOUT_S = 30.0
# (op, bound at 55 ns, scales with the calibration): a rate and a time do, memory does not.
TARGETS = {
    "e2e_readback_mb_s": (">=", 50.0, True),
    "readback_max_stall_ms": ("<=", 50.0, True),
    "readback_rss_growth_mib": ("<=", 64.0, False),
}


# -- the load: a data source hosted by the producers ---------------------------------------------


class ReadbackLoad(DataSource):
    """for_testing.message_count instant TrackEvents of ~100 bytes, flat out on a thread
    of its own; prints "done" on stdout once all are written and flushed."""

    name = LOAD_SOURCE

    def on_start(self, config: Any) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, args=(config.for_testing.message_count,))
        self._thread.start()

    def on_stop(self) -> None:
        self._stopping = True
        self._thread.join()

    def _run(self, count: int) -> None:
        w = self.writer()
        events = TrackEvents(w, self.producer_name or "load")
        for _ in range(count):
            if self._stopping:
                return
            events.instant(EVENT_NAME)
        w.flush()
        print("done", flush=True)


# -- processes ---------------------------------------------------------------------------------


class Runtime:
    """A runtime directory (short: ipc:// paths), its children, and their cleanup."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))
        self.producer_endpoint = f"ipc://{self.dir}/p"
        self.consumer_endpoint = f"ipc://{self.dir}/c"
        self.procs: list[subprocess.Popen[str]] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEBUS_")}
        self.env["PYTHONPATH"] = str(REPO)

    def spawn(self, label: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        log = open(self.dir / f"{label}.log", "ab")  # noqa: SIM115 - the child holds it
        kwargs.setdefault("stdout", log)
        kwargs.setdefault("stderr", log)
        proc = subprocess.Popen(
            [sys.executable, *argv], cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
            text=True, **kwargs,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def start_service(self) -> tuple[subprocess.Popen[str], Consumer]:
        argv = ["-m", "actors.service", "--producer-endpoint", self.producer_endpoint]
        service = self.spawn("service", [*argv, "--consumer-endpoint", self.consumer_endpoint])
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                return service, Consumer.connect(self.consumer_endpoint, 0.5, name="bench-probe")
            except ConsumerError:
                if service.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the service did not come up:\n{self.logs()}") from None

    def start_producers(
        self, control: Consumer, prefix: str, n: int, source: str, *args: str
    ) -> list[subprocess.Popen[str]]:
        """n producers; returns once the service lists them all with `source`."""
        procs = []
        for i in range(n):
            argv = ["-m", "actors.producer", "--name", f"{prefix}{i}", *args]
            argv += ["--producer-endpoint", self.producer_endpoint]
            procs.append(self.spawn(f"{prefix}{i}", argv, stdout=subprocess.PIPE))
        deadline = time.monotonic() + READY_TIMEOUT_S * max(1, n // 4)
        while _registered(control, prefix, source) < n:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{prefix} producers did not register:\n{self.logs()}")
            time.sleep(0.05)  # polling a condition, not synchronizing
        return procs

    def logs(self) -> str:
        logs = sorted(self.dir.glob("*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _registered(control: Consumer, prefix: str, source: str) -> int:
    state = control.query_state(timeout=10)
    ids = {p.id for p in state.producers if p.name.startswith(prefix)}
    hosts = {d.producer_id for d in state.data_sources if d.descriptor.name == source}
    return len(hosts & ids)


# -- what is sampled during the read -------------------------------------------------------------


class Sampler:
    """Every PROBE_PERIOD_S until stop(), each on a thread of its own (a stalled
    query must not pause the RSS samples): the slowest query_service_state answer
    on a second consumer, and the peak RSS of the service and of the record CLI."""

    def __init__(self, endpoint: str, service_pid: int, cli_pid: int) -> None:
        self.service_pid, self.cli_pid = service_pid, cli_pid
        self.rss_before = rss_bytes(service_pid)
        self.rss_peak = self.rss_before
        self.cli_rss_before = rss_bytes(cli_pid)
        self.cli_rss_peak = self.cli_rss_before
        self.max_stall_s = 0.0
        self._consumer = Consumer.connect(endpoint, 5, name="bench-stall-probe")
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._every_period, args=(fn,), daemon=True)
            for fn in (self._probe, self._sample_rss)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._consumer.close()

    def _every_period(self, fn: Callable[[], None]) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            fn()
            next_at = max(next_at + PROBE_PERIOD_S, time.monotonic())
            self._stop.wait(next_at - time.monotonic())

    def _probe(self) -> None:
        start = time.monotonic()
        try:
            self._consumer.query_state(timeout=60)
        except ConsumerError:
            pass  # counted as a stall as long as the timeout
        self.max_stall_s = max(self.max_stall_s, time.monotonic() - start)

    def _sample_rss(self) -> None:
        self.rss_peak = max(self.rss_peak, rss_bytes(self.service_pid))
        self.cli_rss_peak = max(self.cli_rss_peak, rss_bytes(self.cli_pid))


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- the read-back scenario --------------------------------------------------------------------


@dataclass(frozen=True)
class ReadbackFigures:
    e2e_mb_s: float
    complete: bool
    max_stall_ms: float
    rss_growth_mib: float
    file_mib: float
    cli_exit: int
    cli_rss_growth_mib: float  # not a key of the JSON: shows the CLI streams


def readback(rt: Runtime, control: Consumer, service_pid: int, buffer_mib: int) -> ReadbackFigures:
    per_producer = int(buffer_mib * (1 << 20) * FILL / PACKET_BYTES / LOAD_PRODUCERS)
    load = rt.start_producers(
        control, "load", LOAD_PRODUCERS, LOAD_SOURCE,
        "--module", "benchmarks.readback", "--policy", "stall",
    )  # fmt: skip
    config = rt.dir / "readback.pbtxt"
    config.write_text(
        f"buffers {{ size_kb: {buffer_mib * 1024} fill_policy: RING_BUFFER }}\n"
        f'data_sources {{ config {{ name: "{LOAD_SOURCE}" '
        f"for_testing {{ message_count: {per_producer} }} }} }}\n"
    )
    out = rt.dir / "readback.pftrace"
    cli = rt.spawn(
        "record",
        ["-m", "actors.consumer", "-c", str(config), "--txt", "-o", str(out),
         "--consumer-endpoint", rt.consumer_endpoint],  # the stock CLI, default timeouts
        stderr=subprocess.PIPE,
    )  # fmt: skip
    for proc in load:  # each prints "done" once its packets are written
        if _read_line(proc.stdout) != "done":
            raise RuntimeError(f"a load producer ended early:\n{rt.logs()}")
    sampler = Sampler(rt.consumer_endpoint, service_pid, cli.pid)
    sampler.start()
    cli.send_signal(signal.SIGINT)  # the session stops; the CLI reads it back
    try:
        _, err = cli.communicate(timeout=CLI_WAIT_S)
    finally:
        sampler.stop()
    for proc in load:
        proc.send_signal(signal.SIGTERM)
    seconds = _readback_seconds(err)
    file_mib = out.stat().st_size / (1 << 20) if out.exists() else 0.0
    if cli.returncode != 130 or seconds is None:  # 130: stopped by SIGINT, as asked
        print(f"the record CLI exited {cli.returncode}:\n{err}", file=sys.stderr)
    return ReadbackFigures(
        e2e_mb_s=file_mib / seconds if seconds else 0.0,
        complete=out.exists() and _complete(out.read_bytes(), per_producer),
        max_stall_ms=sampler.max_stall_s * 1000,
        rss_growth_mib=(sampler.rss_peak - sampler.rss_before) / (1 << 20),
        file_mib=file_mib,
        cli_exit=cli.returncode,
        cli_rss_growth_mib=(sampler.cli_rss_peak - sampler.cli_rss_before) / (1 << 20),
    )


def _read_line(stream: IO[str] | None) -> str:
    assert stream is not None, "spawned with stdout=PIPE"
    return stream.readline().strip()


def _readback_seconds(cli_stderr: str) -> float | None:
    found = re.search(r"^read back .* in ([\d.]+) s ", cli_stderr, re.M)
    return float(found.group(1)) if found else None


def _complete(data: bytes, per_producer: int) -> bool:
    """Every chunk written was read, none overwritten, and each load sequence whole."""
    trace = pb.Trace.FromString(data)
    stats = [p.trace_stats for p in trace.packet if p.HasField("trace_stats")]
    if not stats or not len(stats[-1].buffer_stats):
        return False
    buffers = stats[-1].buffer_stats
    if any(b.chunks_read != b.chunks_written or b.chunks_overwritten for b in buffers):
        return False
    events: dict[int, int] = defaultdict(int)
    for packet in trace.packet:
        if packet.previous_packet_dropped:
            return False
        if packet.HasField("track_event"):
            events[packet.trusted_packet_sequence_id] += 1
    return sorted(events.values()) == [per_producer] * LOAD_PRODUCERS


# -- the loss scenario ---------------------------------------------------------------------------


LOSS_BUFFER_KB = 65536
LOG_WROTE = re.compile(r"tracebus\.synthetic instance \d+: wrote (\d+) packets")
LOG_DROPPED = re.compile(
    r"stopped tracebus\.synthetic \(instance \d+\): \d+ writers, (\d+) packets"
)


@dataclass(frozen=True)
class LossFigures:
    exact: bool
    dropped: int  # packets the producers say they dropped: 0 would make `exact` vacuous
    why: str  # the first mismatch found, or ""


def loss_exact(rt: Runtime, control: Consumer, written_mib: int) -> LossFigures:
    """LOSS_PRODUCERS synthetic producers write flat out (until stopped) into a
    DISCARD buffer; the session stops once `written_mib` reached it, well before it
    fills. Compared per producer: its own log (wrote, dropped) with its sequence."""
    procs = rt.start_producers(control, "loss", LOSS_PRODUCERS, "tracebus.synthetic")
    config = (
        f"buffers {{ size_kb: {LOSS_BUFFER_KB} fill_policy: DISCARD }}\n"
        'data_sources { config { name: "tracebus.synthetic" '
        "for_testing { message_count: 1000000000 message_size: 40 } } }\n"
    )
    with Consumer.connect(rt.consumer_endpoint, 5, name="bench-loss") as c:
        c.enable(config)
        deadline = time.monotonic() + READY_TIMEOUT_S * 4
        while sum(b.bytes_written for b in c.stats().buffer_stats) < written_mib << 20:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{written_mib} MiB not written in time:\n{rt.logs()}")
            time.sleep(0.05)  # polling a condition, not synchronizing
        c.disable(timeout=60)  # the stop acks carry the writers' last drop counts
        c.wait_disabled(60)
        packets = [pb.TracePacket.FromString(p) for p in c.read_buffers(timeout=120)]
        c.free()
    logged = {p.pid: _logged_counts(rt, f"loss{i}") for i, p in enumerate(procs)}
    return _losses_match(packets, logged)


def _logged_counts(rt: Runtime, label: str) -> tuple[int, int]:
    """(packets written, packets dropped), from the producer's own log: both lines are
    logged before its stop ack, so before the session ends."""
    log = (rt.dir / f"{label}.log").read_text(errors="replace")
    (wrote,), (dropped,) = LOG_WROTE.findall(log), LOG_DROPPED.findall(log)
    return int(wrote), int(dropped)


def _losses_match(packets: list[pb.TracePacket], logged: dict[int, tuple[int, int]]) -> LossFigures:
    """For each producer (pid -> its logged (wrote, dropped)): one sequence, every gap
    in its counters marked on the packet after it, and the counters missing from it
    (its tail included) as many as it dropped; trace_stats' lost packets their sum."""
    dropped = sum(d for _, d in logged.values())
    counters: dict[int, list[int]] = defaultdict(list)
    pid_of: dict[int, int] = {}
    stats = [p.trace_stats for p in packets if p.HasField("trace_stats")]
    for p in packets:
        if not p.HasField("for_testing"):
            continue
        seq, counter = p.trusted_packet_sequence_id, p.for_testing.counter
        pid_of[seq] = p.trusted_pid
        previous = counters[seq][-1] if counters[seq] else 0
        if counter <= previous or (counter != previous + 1 and not p.previous_packet_dropped):
            return LossFigures(False, dropped, f"sequence {seq}: {previous} then {counter}")
        counters[seq].append(counter)
    if sorted(pid_of.values()) != sorted(logged):
        return LossFigures(False, dropped, "not one sequence per producer")
    for seq, pid in pid_of.items():
        wrote, lost = logged[pid]
        if wrote - len(counters[seq]) != lost or counters[seq][-1] > wrote:
            why = f"pid {pid}: wrote {wrote}, {len(counters[seq])} in the trace, dropped {lost}"
            return LossFigures(False, dropped, why)
    if not stats or any(b.chunks_discarded or b.chunks_overwritten for b in stats[-1].buffer_stats):
        return LossFigures(False, dropped, "no trace_stats, or the buffer lost chunks")
    reported = sum(b.trace_writer_packet_loss for b in stats[-1].buffer_stats)
    if reported != dropped:
        return LossFigures(False, dropped, f"trace_stats: {reported} lost, producers: {dropped}")
    if not dropped:  # no loss to account for: the check checked nothing
        return LossFigures(False, dropped, "no producer dropped")
    return LossFigures(True, dropped, "")


# -- running it ----------------------------------------------------------------------------------


def run(quick: bool) -> dict[str, float | bool]:
    calibration = calibration_ns()
    rt = Runtime()
    try:
        service, control = rt.start_service()
        try:
            figures = readback(rt, control, service.pid, 8 if quick else 64)
            loss = loss_exact(rt, control, 4 if quick else 16)
        finally:
            control.close()
    finally:
        rt.close()
    results: dict[str, float | bool] = {
        "e2e_readback_mb_s": round(figures.e2e_mb_s, 2),
        "readback_complete": figures.complete,
        "readback_max_stall_ms": round(figures.max_stall_ms, 1),
        "readback_rss_growth_mib": round(figures.rss_growth_mib, 1),
        "loss_exact": loss.exact,
        "calibration_ns": round(calibration, 1),
    }
    print_table(results, figures, quick)
    print(f"loss scenario: the producers dropped {loss.dropped} packets {loss.why}".rstrip())
    return results


def print_table(r: dict[str, float | bool], figures: ReadbackFigures, quick: bool) -> None:
    cal = float(r["calibration_ns"])
    size = "8 MiB (--quick)" if quick else "64 MiB"
    print(
        f"tracebus read-back — {platform.machine()}, {os.cpu_count()} cpus, Python "
        f"{platform.python_version()}, calibration {cal:.1f} ns (targets scaled from 55 ns)"
    )
    print(
        f"{size} ring buffer, {figures.file_mib:.1f} MiB trace; record CLI: exit "
        f"{figures.cli_exit}, RSS growth {figures.cli_rss_growth_mib:.1f} MiB"
    )
    print(f"{'figure':<26}{'value':>10}  target")
    for key, value in r.items():
        target = ""
        if key in TARGETS:
            op, bound, scales = TARGETS[key]
            bound = scaled_target(op, bound, cal) if scales else bound
            ok = value <= bound if op == "<=" else value >= bound
            target = f"{op} {bound:.1f} " + ("ok" if ok else "MISSED")
        elif isinstance(value, bool):
            target = "true " + ("ok" if value else "MISSED")
        print(f"{key:<26}{str(value):>10}  {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="an 8 MiB buffer: a smoke test")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    results = run(args.quick)
    save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
