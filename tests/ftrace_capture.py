"""Capture real ftrace inputs from this machine's kernel into a directory.

    unshare -m --propagation private python -m tests.ftrace_capture OUT_DIR

(as root). It made tests/data/probes/ftrace/ (kernel 6.18, x86-64) and runs
again in tests/test_ftrace_core.py against the running kernel. It mounts
tracefs on a temporary directory of the new mount namespace (so the mount is
never visible outside and dies with the process), creates the instance
``instances/tracebus-<pid>``, never touches the top-level instance, and removes
the instance on every way out. OUT_DIR receives:

- header_page, header_event, format/GROUP/NAME of the events below;
- pages_cpuN.raw, stats_cpuN: whole pages of per_cpu/cpuN/trace_pipe_raw after
  sched_switch, sched_waking, task_newtask and task_rename were enabled, MARKERS
  lines "tracebus marker I" were written to the instance's trace_marker and
  RENAMES children renamed themselves (comm "renamed") and exited, and the
  per-CPU stats read before the pages;
- pages_lost_cpu0.raw, stats_lost_cpu0: with a 1 kB buffer and only
  ftrace/print, OVERFLOW markers written from CPU 0, then read: pages that say
  events were lost (RB_MISSED_EVENTS, with the count stored).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EVENTS = (
    "sched/sched_switch", "sched/sched_waking", "sched/sched_wakeup", "task/task_newtask",
    "task/task_rename", "ftrace/print", "sched/sched_process_exit", "sched/sched_process_free",
    "irq/irq_handler_entry", "signal/signal_generate", "raw_syscalls/sys_enter",
)  # fmt: skip
ENABLED = ("sched/sched_switch", "sched/sched_waking", "task/task_newtask", "task/task_rename")
MARKERS = 20
RENAMES = 3
OVERFLOW = 3000
PAGE = 4096


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _read_pages(path: Path) -> bytes:
    """Whole pages until the buffer is empty (EAGAIN) or a read comes back short."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    out = bytearray()
    try:
        while True:
            try:
                chunk = os.read(fd, PAGE)
            except BlockingIOError:
                break
            out += chunk
            if len(chunk) < PAGE:
                break
    finally:
        os.close(fd)
    return bytes(out)


@contextlib.contextmanager
def instance():
    """A private tracefs mount and an instance of our own in it; both removed."""
    mnt = Path(tempfile.mkdtemp(prefix="tracefs-"))
    subprocess.run(["mount", "-t", "tracefs", "nodev", str(mnt)], check=True)
    inst = mnt / "instances" / f"tracebus-{os.getpid()}"
    try:
        inst.mkdir()
        try:
            yield inst
        finally:
            with contextlib.suppress(OSError):
                _write(inst / "tracing_on", "0")
            inst.rmdir()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def capture(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with instance() as inst:
        for name in ("header_page", "header_event"):
            shutil.copyfile(inst / "events" / name, out / name)
        for event in EVENTS:
            (out / "format" / event).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(inst / "events" / event / "format", out / "format" / event)
        _write(inst / "trace_clock", "boot")
        _write(inst / "buffer_size_kb", "64")
        for event in ENABLED:
            _write(inst / "events" / event / "enable", "1")
        _write(inst / "tracing_on", "1")
        for i in range(1, MARKERS + 1):
            _write(inst / "trace_marker", f"tracebus marker {i}")
        for _ in range(RENAMES):
            script = "printf renamed > /proc/self/comm; /bin/true"
            subprocess.run(["sh", "-c", script], check=True)
        _write(inst / "tracing_on", "0")
        cpus = sorted(int(p.name[3:]) for p in (inst / "per_cpu").iterdir())
        for cpu in cpus:
            per_cpu = inst / "per_cpu" / f"cpu{cpu}"
            shutil.copyfile(per_cpu / "stats", out / f"stats_cpu{cpu}")
            (out / f"pages_cpu{cpu}.raw").write_bytes(_read_pages(per_cpu / "trace_pipe_raw"))
        _overflow(inst, out)


def _overflow(inst: Path, out: Path) -> None:
    _write(inst / "events" / "enable", "0")
    _write(inst / "buffer_size_kb", "1")
    _write(inst / "tracing_on", "1")
    marker = inst / "trace_marker"
    loop = f"for i in $(seq 1 {OVERFLOW}); do echo overflow $i > {marker}; done"
    subprocess.run(["taskset", "-c", "0", "sh", "-c", loop], check=True)
    _write(inst / "tracing_on", "0")
    per_cpu = inst / "per_cpu" / "cpu0"
    shutil.copyfile(per_cpu / "stats", out / "stats_lost_cpu0")
    (out / "pages_lost_cpu0.raw").write_bytes(_read_pages(per_cpu / "trace_pipe_raw"))


if __name__ == "__main__":
    capture(Path(sys.argv[1]))
