"""Finding tracefs, and the kernel ftrace instances tracebus owns.

Contract (what the probes producer, the service's cleanup and the tests rely on):

- `open_tracefs(allow_mount=True) -> Tracefs | str`: a usable tracefs, or the
  reason there is none (one sentence a user can act on). In this order:
  `$TRACEBUS_TRACEFS` (a tracefs directory given explicitly); an existing tracefs
  mount from /proc/self/mounts (never a debugfs `tracing/` that is not mounted
  yet: a look into it would automount tracefs here, for good); else, as root and
  only while the process is single-threaded, a PRIVATE mount: unshare(CLONE_NEWNS),
  "/" made a recursive slave (unmounts outside still reach it), tracefs mounted
  at /sys/kernel/tracing inside that namespace. Nobody else sees that mount and
  it dies with the process, even after SIGKILL. The first result is kept:
  `shared_tracefs()` returns it to the data sources (actors.probes calls
  open_tracefs first thing in main, before zmq starts threads; unshare is
  impossible afterwards).
- Instances: tracebus works only in `instances/tracebus-<pid>` (a second
  concurrent one of the same process: `tracebus-<pid>-<n>`). It never writes a
  setting of the top-level instance, which other tools own.
- `remove_stale_instances(tfs)`: every tracebus instance whose process is gone is
  removed (rmdir only: an owner holds a file of its instance open, so the kernel
  refuses to remove a live one, and nothing is turned off before that). A pid
  that is alive keeps its instance unless that process started after the
  instance was created (the pid was reused): a live creator's instance is never
  removed.
- `kernel_state(tfs)`: the global ftrace settings and the instance list, to
  compare before/after a session; `python -m actors.tracefs --state` prints it
  as JSON and `--cleanup` removes stale instances (both mount privately
  themselves when needed).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass

_log = logging.getLogger("tracebus.probes")

TRACEFS_ENV = "TRACEBUS_TRACEFS"
MOUNT_POINT = "/sys/kernel/tracing"
INSTANCE_PREFIX = "tracebus-"
_INSTANCE_NAME = re.compile(r"^tracebus-(\d+)(?:-(\d+))?$")

# <sched.h>, <sys/mount.h>
_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_SLAVE = 1 << 19

# A rmdir the kernel refuses while a reader still closes its files: a few tries.
_RMDIR_TRIES = 20
_RMDIR_PAUSE_S = 0.01


@dataclass(frozen=True)
class Tracefs:
    """A tracefs directory: the mount's root, or one instance inside it."""

    root: str

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read(self, rel: str) -> str:
        with open(self.path(rel)) as f:
            return f.read()

    def write(self, rel: str, text: str) -> None:
        """OSError as the kernel answers (EINVAL for a bad value, ENOENT...)."""
        fd = os.open(self.path(rel), os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def instance(self, name: str) -> Tracefs:
        return Tracefs(os.path.join(self.root, "instances", name))

    def instance_names(self) -> list[str]:
        try:
            return sorted(os.listdir(self.path("instances")))
        except OSError:
            return []


# -- finding or mounting tracefs ---------------------------------------------

_opened: Tracefs | str | None = None
_opened_lock = threading.Lock()


def open_tracefs(allow_mount: bool = True) -> Tracefs | str:
    """A usable tracefs, or why there is none; the first answer is kept."""
    global _opened
    with _opened_lock:
        if _opened is None:
            _opened = _find_tracefs(allow_mount)
        return _opened


def shared_tracefs() -> Tracefs | str:
    """What open_tracefs found for this process (trying now if nobody asked yet)."""
    return open_tracefs(allow_mount=True)


def _find_tracefs(allow_mount: bool) -> Tracefs | str:
    explicit = os.environ.get(TRACEFS_ENV)
    if explicit:
        if _looks_like_tracefs(explicit):
            return _usable(explicit)
        return f"${TRACEFS_ENV}={explicit} is not a tracefs directory"
    mounted = mounted_tracefs()
    if mounted is not None:
        return _usable(mounted)
    if not allow_mount:
        return "tracefs is not mounted"
    return _mount_privately()


def mounted_tracefs(mounts_text: str | None = None) -> str | None:
    """The tracefs directory of an existing mount (tracefs, or debugfs's tracing/)."""
    if mounts_text is None:
        with open("/proc/self/mounts") as f:
            mounts_text = f.read()
    candidates: list[str] = []
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = parts[1].replace("\\040", " ")
        # Only tracefs mounts: a debugfs's tracing/ that is not mounted yet would be
        # automounted in this (the root) namespace by merely looking at it, and
        # stay. Where it is mounted, it is listed here as tracefs.
        if parts[2] == "tracefs":
            candidates.append(mount_point)
    return next((c for c in candidates if _looks_like_tracefs(c)), None)


def _looks_like_tracefs(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "instances")) and os.path.exists(
        os.path.join(path, "trace_marker")
    )


def _usable(path: str) -> Tracefs | str:
    if not os.access(os.path.join(path, "instances"), os.W_OK):
        return f"tracefs at {path} does not let uid {os.geteuid()} create instances (needs root)"
    return Tracefs(path)


def _mount_privately() -> Tracefs | str:
    if os.geteuid() != 0:
        return f"tracefs is not mounted, and mounting it needs root (running as uid {os.geteuid()})"
    threads = _thread_count()
    if threads != 1:
        return (
            f"tracefs is not mounted, and a private mount needs a single-threaded "
            f"process (this one runs {threads} threads): open tracefs before starting threads"
        )
    if not os.path.isdir(MOUNT_POINT):
        return f"tracefs is not mounted and {MOUNT_POINT} does not exist"
    libc = ctypes.CDLL(None, use_errno=True)
    steps = (
        ("unshare(CLONE_NEWNS)", lambda: libc.unshare(_CLONE_NEWNS)),
        # A slave, not private: our mount stays ours, and a filesystem unmounted
        # outside goes here too (not kept busy while the probes run).
        ("making / a slave", lambda: libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None)),
        (f"mount -t tracefs {MOUNT_POINT}",
         lambda: libc.mount(b"nodev", MOUNT_POINT.encode(), b"tracefs", 0, None)),
    )  # fmt: skip
    for what, call in steps:
        if call() != 0:
            err = ctypes.get_errno()
            return f"tracefs is not mounted, and {what} failed: {os.strerror(err)}"
    return _usable(MOUNT_POINT)


def _thread_count() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return threading.active_count()


# -- instances ----------------------------------------------------------------


def instance_owner(name: str) -> int | None:
    """The pid a tracebus instance name carries, None for other names."""
    m = _INSTANCE_NAME.match(name)
    return int(m.group(1)) if m else None


def new_instance_name(tfs: Tracefs, pid: int | None = None) -> str:
    """`tracebus-<pid>`, or `tracebus-<pid>-<n>` when this process already has one."""
    pid = os.getpid() if pid is None else pid
    existing = set(tfs.instance_names())
    name, n = f"{INSTANCE_PREFIX}{pid}", 1
    while name in existing:
        name, n = f"{INSTANCE_PREFIX}{pid}-{n}", n + 1
    return name


def create_instance(tfs: Tracefs, name: str) -> Tracefs:
    """mkdir instances/NAME (the kernel creates its buffers); OSError if it fails."""
    os.mkdir(tfs.path(os.path.join("instances", name)))
    return tfs.instance(name)


def remove_instance(tfs: Tracefs, name: str, *, owner: bool = True) -> None:
    """Remove the instance (the kernel stops it recording). The kernel refuses (EBUSY)
    while a file of the instance is still open. Its owner first turns it off and
    retries briefly; anyone else only tries rmdir once, so that an instance still
    in use (its owner alive after all) is left exactly as it was. OSError if refused."""
    if owner:
        inst = tfs.instance(name)
        for setting, value in (("tracing_on", "0"), ("events/enable", "0")):
            try:
                inst.write(setting, value)
            except OSError:
                pass  # removal below is what matters; it also disables everything
    path = tfs.path(os.path.join("instances", name))
    tries = _RMDIR_TRIES if owner else 1
    for attempt in range(tries):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or attempt == tries - 1:
                raise
            time.sleep(_RMDIR_PAUSE_S)


def remove_stale_instances(tfs: Tracefs) -> list[str]:
    """Remove every tracebus instance whose creator is gone; the names removed."""
    removed = []
    for name in tfs.instance_names():
        pid = instance_owner(name)
        if pid is None or _creator_alive(pid, tfs.path(os.path.join("instances", name))):
            continue
        try:
            remove_instance(tfs, name, owner=False)
        except OSError as e:
            _log.warning("could not remove stale ftrace instance %s: %s", name, e)
            continue
        removed.append(name)
    return removed


def _creator_alive(pid: int, instance_path: str) -> bool:
    started = _process_start_realtime(pid)
    if started is None:
        return False
    try:
        created = os.stat(instance_path).st_mtime
    except OSError:
        return True  # gone already: nothing to remove
    # A process that started after the instance existed cannot have created it
    # (its pid was reused); 1 s covers the resolution of btime.
    return started <= created + 1.0


def _process_start_realtime(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None  # a zombie's instance is as stale as a dead one's
    start_ticks = int(fields[19])
    return _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")


def _boot_time() -> float:
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


# -- the kernel's ftrace state, for before/after checks -----------------------

STATE_FILES = (
    "tracing_on",
    "current_tracer",
    "trace_clock",
    "buffer_size_kb",
    "set_event",
    "tracing_cpumask",
    "events/enable",
    "options/copy_trace_marker",
)


def kernel_state(tfs: Tracefs) -> dict[str, object]:
    """The top-level settings tracebus must never change, and the instance list."""
    state: dict[str, object] = {"instances": tfs.instance_names()}
    for rel in STATE_FILES:
        try:
            state[rel] = tfs.read(rel).strip()
        except OSError as e:
            state[rel] = f"<{e.strerror}>"
    return state


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m actors.tracefs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--state", action="store_true", help="print kernel_state() as JSON")
    group.add_argument("--cleanup", action="store_true", help="remove stale tracebus instances")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    tfs = open_tracefs(allow_mount=True)
    if isinstance(tfs, str):
        print(f"tracefs unavailable: {tfs}", file=sys.stderr)
        return 1
    if args.state:
        json.dump(kernel_state(tfs), sys.stdout, indent=1, sort_keys=True)
        print()
        return 0
    for name in remove_stale_instances(tfs):
        _log.info("removed stale ftrace instance %s", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
