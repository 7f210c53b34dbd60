"""One private ftrace instance of this process: set up, read, torn down.

    inst = FtraceInstance.create(tfs)          # mkdir instances/tracebus-<pid>[-n]
    setup = inst.configure(plan)               # clock, buffer size, events (nothing recorded yet)
    header, formats = inst.formats()           # the kernel's own format files, parsed
    inst.start()                               # per-CPU readers open, tracing_on 1
    pages = inst.read_cpu(cpu, max_pages)      # raw ring-buffer pages, never blocks
    inst.stop(); inst.close()                  # tracing_on 0; fds closed, instance removed

The instance's trace_clock is "boot" (CLOCK_BOOTTIME, the clock of
TracePacket.timestamp). Events are enabled in the instance only; the top-level
instance is never written. When ftrace/print is recorded, the instance's
`options/copy_trace_marker` is set (where the kernel has it, 6.17+), so that
what programs write to the top-level trace_marker is recorded as well as what
is written to the instance's own trace_marker.

Every instance not yet closed is closed at interpreter exit (atexit): a probes
process stopped by SIGTERM leaves nothing; after SIGKILL,
tracefs.remove_stale_instances finds the instance.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass, field

from actors.core.ftrace_format import EventFormat, PageHeader, parse_format, parse_header_page
from actors.core.ftrace_plan import FtracePlan, resolve_events
from actors.tracefs import Tracefs, create_instance, new_instance_name, remove_instance

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_PRINT = ("ftrace", "print")
_MKDIR_TRIES = 8


@dataclass
class SetupResult:
    """What configure() did: what the kernel records, and what it refused."""

    enabled: list[tuple[str, str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # not offered by the kernel
    failed: list[str] = field(default_factory=list)  # offered, but enabling/decoding failed
    errors: list[str] = field(default_factory=list)  # settings the kernel refused


class FtraceInstance:
    """A tracebus instance in the kernel; every method but create is for one thread."""

    def __init__(self, tfs: Tracefs, name: str) -> None:
        self.tfs = tfs
        self.name = name
        self.dir = tfs.instance(name)
        self.enabled: list[tuple[str, str]] = []
        self._fds: dict[int, int] = {}
        self._closed = False
        self._lock = threading.Lock()  # close() from the stop and from atexit
        self.read_errors = 0  # reads the kernel failed (not EAGAIN)
        # An open file of the instance makes the kernel refuse its rmdir (EBUSY):
        # held from creation to close(), it keeps any other process's stale-instance
        # cleanup off a live instance, whatever that cleanup thinks of our pid.
        self._pin: int | None = None
        try:
            self._pin = os.open(self.dir.path("tracing_on"), os.O_RDONLY)
        except OSError:
            pass  # unpinned: the cleanup's pid check is all that protects it

    @classmethod
    def create(cls, tfs: Tracefs) -> FtraceInstance:
        """A new instance named after this process; OSError if the kernel refuses."""
        for attempt in range(_MKDIR_TRIES):
            name = new_instance_name(tfs)
            try:
                create_instance(tfs, name)
            except FileExistsError:
                if attempt == _MKDIR_TRIES - 1:
                    raise
                continue  # another thread of this process took the name meanwhile
            inst = cls(tfs, name)
            _live.add(inst)
            return inst
        raise AssertionError("unreachable")

    # -- setup ---------------------------------------------------------------

    def configure(self, plan: FtracePlan) -> SetupResult:
        result = SetupResult()
        # A new instance records at once (tracing_on 1): nothing until start().
        self._set("tracing_on", "0", result)
        self._set("trace_clock", "boot", result)
        self._set("buffer_size_kb", str(plan.buffer_size_kb), result)
        wanted, result.unknown = resolve_events(plan.events, self.available_events())
        for group, name in wanted:
            if self._enable(group, name):
                result.enabled.append((group, name))
            else:
                result.failed.append(f"{group}/{name}")
        if _PRINT in result.enabled and os.path.exists(self.dir.path("options/copy_trace_marker")):
            self._set("options/copy_trace_marker", "1", result)
        self.enabled = result.enabled
        return result

    def available_events(self) -> dict[str, set[str]]:
        """Each event group the instance offers, with its event names."""
        events_dir = self.dir.path("events")
        groups: dict[str, set[str]] = {}
        for group in _subdirs(events_dir):
            groups[group] = set(_subdirs(os.path.join(events_dir, group)))
        return groups

    def _enable(self, group: str, name: str) -> bool:
        enable = f"events/{group}/{name}/enable"
        if not os.path.exists(self.dir.path(enable)):
            # ftrace/print is always recorded (trace_marker writes); other events
            # of the ftrace group belong to tracers, which this does not set.
            return (group, name) == _PRINT
        try:
            self.dir.write(enable, "1")
        except OSError:
            return False
        return True

    def _set(self, rel: str, value: str, result: SetupResult) -> None:
        try:
            self.dir.write(rel, value)
        except OSError as e:
            result.errors.append(f"{self.name}/{rel} = {value}: {e.strerror}")

    def formats(self) -> tuple[PageHeader, list[EventFormat], list[str]]:
        """The ring buffer's page header, the formats of the enabled events (and of
        ftrace/print, which trace_marker writes always produce), and the events
        whose format could not be read or parsed (they are disabled again)."""
        header = parse_header_page(self.dir.read("events/header_page"))
        formats, failed = [], []
        for group, name in dict.fromkeys([*self.enabled, _PRINT]):
            try:
                formats.append(parse_format(self.dir.read(f"events/{group}/{name}/format"), group))
            except (OSError, ValueError):
                failed.append(f"{group}/{name}")
                self._disable(group, name)
        return header, formats, failed

    def _disable(self, group: str, name: str) -> None:
        try:
            self.dir.write(f"events/{group}/{name}/enable", "0")
        except OSError:
            pass

    # -- recording -----------------------------------------------------------

    def cpus(self) -> list[int]:
        names = _subdirs(self.dir.path("per_cpu"))
        return sorted(int(n[3:]) for n in names if n.startswith("cpu") and n[3:].isdigit())

    def start(self) -> None:
        for cpu in self.cpus():
            path = self.dir.path(f"per_cpu/cpu{cpu}/trace_pipe_raw")
            self._fds[cpu] = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.dir.write("tracing_on", "1")

    def read_cpu(self, cpu: int, max_pages: int) -> list[bytes]:
        """Up to max_pages whole pages of CPU `cpu`, oldest first; [] when empty."""
        fd = self._fds.get(cpu)
        pages: list[bytes] = []
        while fd is not None and len(pages) < max_pages:
            try:
                page = os.read(fd, PAGE_SIZE)
            except BlockingIOError:
                break
            except OSError:
                # A CPU gone offline, say: counted (the stop's log line says it), the
                # other CPUs go on.
                self.read_errors += 1
                break
            if not page:
                break
            pages.append(page)
        return pages

    def cpu_stats_text(self, cpu: int) -> str:
        return self.dir.read(f"per_cpu/cpu{cpu}/stats")

    def stop(self) -> None:
        try:
            self.dir.write("tracing_on", "0")
        except OSError:
            pass  # close() removes it anyway

    def close(self) -> None:
        """Close the readers and remove the instance (idempotent). OSError if the
        kernel refuses the removal: the instance stays on the list, retried at exit."""
        with self._lock:
            if self._closed:
                return
            for fd in [*self._fds.values(), *([self._pin] if self._pin is not None else [])]:
                os.close(fd)
            self._fds.clear()
            self._pin = None
            remove_instance(self.tfs, self.name)
            self._closed = True
            _live.discard(self)


def _subdirs(path: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


class _LiveInstances:
    """The instances of this process not closed yet, closed at exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: set[FtraceInstance] = set()

    def add(self, inst: FtraceInstance) -> None:
        with self._lock:
            self._items.add(inst)

    def discard(self, inst: FtraceInstance) -> None:
        with self._lock:
            self._items.discard(inst)

    def close_all(self) -> None:
        with self._lock:
            items = list(self._items)
        for inst in items:
            try:
                inst.close()
            except OSError:
                pass  # nothing better to do at exit; remove_stale_instances will


_live = _LiveInstances()
atexit.register(_live.close_all)
