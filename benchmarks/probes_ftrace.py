"""ftrace drain benchmark: how many kernel events per second the probes producer
drains without loss, and what each costs it.

    python -m benchmarks.probes_ftrace [--quick] [--seconds S] [--rates R,R,...] [--json FILE]

A real service and `python -m actors.probes`. For each rate R, a session asks
linux.ftrace for `ftrace/print` with Perfetto's default drain period (100 ms)
and a trace buffer far larger than the run; this process writes R markers per
second for S seconds into the probes' own ftrace instance (its trace_marker,
reached through /proc/<probes pid>/root, since the probes mount tracefs in a
mount namespace of their own), each marker "tbb R i". Then the session is
flushed, stopped and read back; the markers in the trace are counted and the
losses the trace reports (FtraceStats: overrun and dropped events at the end
less those at the start, summed over CPUs) are compared with the markers missing.

Figures per rate: written, recorded, missing, reported lost, and the probes'
CPU time (utime + stime from /proc/<pid>/stat) over the writing window, as % of
one core and per 10,000 events/s. --json writes:

  lossless_rate            the highest rate with every marker in the trace
  cpu_pct_per_10k          the probes' CPU % of one core per 10,000 events/s, at
                           the highest lossless rate (with the idle cost)
  losses_reported          at every rate, missing == reported lost (nothing hidden)
  calibration_ns           benchmarks/calibration.py, measured in this run
  rows                     the table
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

from actors.consumer import Consumer
from benchmarks.calibration import calibration_ns, save_json
from benchmarks.readback import READY_TIMEOUT_S, Runtime, _registered

RATES = (10_000, 50_000, 100_000, 200_000)
TARGET_RATE = 50_000  # the issue's: drained without loss at drain_period_ms 100
CONFIG = """
buffers { size_kb: 262144 fill_policy: DISCARD }
data_sources { config { name: "linux.ftrace" ftrace_config {
  ftrace_events: "ftrace/print" drain_period_ms: 100 } } }
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def trace_marker(pid: int) -> Path:
    """The probes' instance's trace_marker, as that process sees its mounts."""
    for line in Path(f"/proc/{pid}/mounts").read_text().splitlines():
        _, mount_point, fstype, *_ = line.split()
        if fstype == "tracefs":
            return Path(f"/proc/{pid}/root{mount_point}/instances/tracebus-{pid}/trace_marker")
    raise RuntimeError("the probes process has no tracefs mounted (not root?)")


def started(instance: Path) -> bool:
    """A new instance is on at once, with the "local" clock: on and "boot" mean started."""
    try:
        clock = (instance / "trace_clock").read_text()
        return "[boot]" in clock and (instance / "tracing_on").read_text() == "1\n"
    except OSError:
        return False


def write_markers(path: Path, rate: int, seconds: float) -> int:
    """rate markers per second, in 1 ms batches, for `seconds`; the count written."""
    fd = os.open(path, os.O_WRONLY)
    try:
        per_ms, written = max(1, rate // 1000), 0
        start = time.monotonic()
        batches = int(seconds * 1000)
        for batch in range(batches):
            for _ in range(per_ms):
                os.write(fd, b"tbb %d %d" % (rate, written))
                written += 1
            ahead = start + (batch + 1) / 1000 - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing the load, not synchronizing
        return written
    finally:
        os.close(fd)


def lost_reported(packets: list[Any]) -> int:
    """Overrun and dropped events at END_OF_TRACE less START_OF_TRACE, over CPUs."""
    totals = {}
    for p in packets:
        if p.HasField("ftrace_stats"):
            s = p.ftrace_stats
            totals[s.phase] = sum(c.overrun + c.dropped_events for c in s.cpu_stats)
    return totals.get(2, 0) - totals.get(1, 0)


def one_rate(rt: Runtime, probes_pid: int, rate: int, seconds: float) -> dict[str, Any]:
    consumer = Consumer.connect(rt.consumer_endpoint, 10, name="bench-ftrace")
    try:
        consumer.enable(CONFIG)
        marker = trace_marker(probes_pid)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not started(marker.parent):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no ftrace instance appeared:\n{rt.logs()}")
            time.sleep(0.01)  # polling a condition
        cpu0, t0 = cpu_seconds(probes_pid), time.monotonic()
        written = write_markers(marker, rate, seconds)
        consumer.flush(timeout=30)
        cpu1, t1 = cpu_seconds(probes_pid), time.monotonic()
        consumer.disable()
        packets = list(consumer.read_packets())
        consumer.free()
    finally:
        consumer.close()
    prefix = f"tbb {rate} "
    recorded = sum(
        1 for p in packets if p.HasField("ftrace_events")
        for e in p.ftrace_events.event if e.HasField("print") and e.print.buf.startswith(prefix)
    )  # fmt: skip
    cpu_pct = 100 * (cpu1 - cpu0) / (t1 - t0)
    return {
        "rate": rate, "written": written, "recorded": recorded,
        "missing": written - recorded, "reported_lost": lost_reported(packets),
        "cpu_pct": round(cpu_pct, 1),
        "cpu_pct_per_10k": round(cpu_pct * 10_000 / rate, 2),
    }  # fmt: skip


def run(rates: list[int], seconds: float) -> dict[str, Any]:
    rt = Runtime()
    try:
        _, control = rt.start_service()
        probes = rt.spawn(
            "probes", ["-m", "actors.probes", "--producer-endpoint", rt.producer_endpoint]
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while _registered(control, "perfetto.traced_probes", "linux.ftrace") < 1:
            if probes.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the probes did not register:\n{rt.logs()}")
            time.sleep(0.05)  # polling a condition
        control.close()
        rows = [one_rate(rt, probes.pid, rate, seconds) for rate in rates]
    finally:
        rt.close()
    lossless = [r for r in rows if r["missing"] == 0]
    best = max(lossless, key=lambda r: r["rate"], default=None)
    return {
        "lossless_rate": best["rate"] if best else 0,
        "cpu_pct_per_10k": best["cpu_pct_per_10k"] if best else None,
        "losses_reported": all(r["missing"] == r["reported_lost"] for r in rows),
        "rows": rows,
    }


def print_table(r: dict[str, Any], cal: float) -> None:
    print(f"ftrace drain, drain_period_ms 100 ({platform.node()}, calibration {cal:.1f} ns)")
    head = "events/s written recorded missing reported_lost probes_CPU_% per_10k/s".split()
    print("  ".join(f"{h:>13}" for h in head))
    for row in r["rows"]:
        cells = (row["rate"], row["written"], row["recorded"], row["missing"],
                 row["reported_lost"], row["cpu_pct"], row["cpu_pct_per_10k"])  # fmt: skip
        print("  ".join(f"{c:>13}" for c in cells))
    ok = r["lossless_rate"] >= TARGET_RATE
    verdict = "met" if ok else "NOT met"
    print(f"lossless up to {r['lossless_rate']} events/s (target >= {TARGET_RATE}: {verdict});")
    print(f"every loss reported: {r['losses_reported']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probes_ftrace")
    parser.add_argument("--quick", action="store_true", help="1 s per rate")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", default=",".join(map(str, RATES)))
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (the probes mount tracefs)")
    cal = calibration_ns()
    rates = [int(x) for x in args.rates.split(",")]
    r = run(rates, 1.0 if args.quick else args.seconds)
    print_table(r, cal)
    save_json(args.json, {**r, "calibration_ns": cal})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
