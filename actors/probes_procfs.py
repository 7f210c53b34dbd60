"""linux.process_stats and linux.sys_stats: Perfetto's data sources of processes
and system counters, read from /proc by the probes producer (actors/probes.py).

Each instance runs one thread of its own (started in on_start, joined in
on_stop) that reads /proc and writes the packets that actors/core/procfs.py and
actors/core/sys_stats.py encode; the loop-thread callbacks only set flags and
wake it. Timestamps are CLOCK_BOOTTIME ns (Perfetto's default trace clock).

linux.process_stats (ProcessStatsConfig), as traced_probes' ProcessStatsDataSource:
- scan_all_processes_on_start: one ProcessTree of every process (pid, ppid, uid,
  cmdline, nspid, is_kthread; process_start_from_boot with record_process_age)
  and thread (tid, tgid; name with record_thread_names), cut into packets of
  about PACKET_BYTES so that a large machine does not make one huge packet;
- the pids linux.ftrace of the same session publishes on actors.probes_bus.PIDS
  (tracing_session_id): a ProcessTree entry for each pid not written yet (unless
  quirks DISABLE_ON_DEMAND); a renamed pid is written again;
- every proc_stats_poll_ms (0: never; below 100 raised to 100): ProcessStats of
  every process with memory (VmSize, VmRSS, RssAnon, RssFile, RssShmem, VmSwap,
  VmLck, VmHWM, oom_score_adj; smaps_rollup with scan_smaps_rollup; utime/stime
  with record_process_runtime), only the counters that changed since they were
  last written (the cache is dropped every proc_stats_cache_ttl_ms, by default
  after every poll); then a ProcessTree entry for every process not written yet,
  so processes that appear during the session get their names and command lines
  (what is remembered of a process is forgotten once it ends, so a reused pid is
  named afresh); a poll of many processes is cut into packets like the scan;
- ClearIncrementalState forgets what was written (the next packet says
  incremental_state_cleared); a cmdline is read only for a pid not written yet.

linux.sys_stats (SysStatsConfig): meminfo, vmstat, stat, psi, buddyinfo,
diskstat, cpufreq, thermal, cpuidle at their periods (see
actors/core/sys_stats.py); devfreq, gpufreq and slab are not read.

Fields a config sets that are not implemented are named in one log line at
setup (logger "tracebus.probes"); so are periods that were raised. A /proc file
that cannot be read is logged once per instance and skipped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from actors.core import procfs, sys_stats
from actors.probes_bus import PIDS
from actors.producer_sdk import ThreadedDataSource, perfetto_config
from actors.track_event import boottime_ns
from shm.writer import SMBExhaustedError, TraceWriter

_log = logging.getLogger("tracebus.probes")

PROC = "/proc"
SYS_CPU = "/sys/devices/system/cpu"
SYS_THERMAL = "/sys/class/thermal"
# A scan or a poll of many processes is cut into packets of about this size.
PACKET_BYTES = 32 * 1024
_READ_SIZE = 64 * 1024
NS_PER_TICK = 1_000_000_000 // (os.sysconf("SC_CLK_TCK") or 100)


def read_file(path: str) -> bytes:
    """A whole /proc or /sys file; b"" when it cannot be read (the task is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return _read_all(fd)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _read_all(fd: int, offset: int | None = None) -> bytes:
    """Everything from `offset` (pread; None: the file position) to the end. A
    /proc or /sys file (seq_file) fills a read up to its size or its end, so a
    short read is the end: most files take one read, not two."""
    parts: list[bytes] = []
    pos = offset or 0
    while True:
        data = os.pread(fd, _READ_SIZE, pos) if offset is not None else os.read(fd, _READ_SIZE)
        parts.append(data)
        pos += len(data)
        if len(data) < _READ_SIZE:
            return b"".join(parts)


def read_text(path: str) -> str:
    return read_file(path).decode("utf-8", "replace")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def numeric_entries(path: str) -> Iterator[int]:
    """The pids (or tids) listed in a /proc directory."""
    try:
        with os.scandir(path) as entries:
            names = [e.name for e in entries]
    except OSError:
        return iter(())
    return (int(n) for n in names if n.isdigit())


class _PollingSource(ThreadedDataSource):
    """One thread per instance: it waits for its next deadline or a wake-up, and
    serves flushes. Subclasses define _begin (first work) and _turn (each wake)."""

    def _run(self) -> None:
        w = self.writer()
        try:
            self._begin(w)
            while not self._stopping:
                self._serve_flush(w)
                self._wakeup.wait(self._next_wait())
                self._wakeup.clear()
                if not self._stopping:
                    self._turn(w)
        finally:
            self.release_writer(w)

    def _write(self, w: TraceWriter, packet: bytes) -> None:
        try:
            w.write_packet(packet)
        except SMBExhaustedError:
            pass  # STALL gave up on it; the writer counted the loss

    def _begin(self, w: TraceWriter) -> None:
        raise NotImplementedError

    def _next_wait(self) -> float | None:
        raise NotImplementedError

    def _turn(self, w: TraceWriter) -> None:
        raise NotImplementedError


def _until_aligned(period_ms: int, now_ns: int) -> float:
    """Seconds to the next multiple of the period on the boot clock (traced aligns
    its polls on the wall clock: sessions with the same period poll together)."""
    period_ns = period_ms * 1_000_000
    return (period_ns - now_ns % period_ns) / 1e9


def _log_ignored(source: str, ignored: list[str], notes: list[str]) -> None:
    if ignored:
        _log.warning("%s: ignored: %s", source, ", ".join(ignored))
    for note in notes:
        _log.info("%s: %s", source, note)


class ProcessStatsDataSource(_PollingSource):
    """linux.process_stats (see the module docstring)."""

    name = "linux.process_stats"
    handles_incremental_state_clear = True

    def on_setup(self, config: Any) -> None:
        cfg = perfetto_config(config).process_stats_config
        self._scan_on_start = cfg.scan_all_processes_on_start
        self._thread_names = cfg.record_thread_names
        self._process_age = cfg.record_process_age
        self._runtime = cfg.record_process_runtime
        self._smaps_rollup = cfg.scan_smaps_rollup
        self._main_thread = not cfg.skip_main_thread_message
        self._on_demand = 2 not in cfg.quirks  # DISABLE_ON_DEMAND
        self._poll_ms = procfs.poll_period_ms(cfg.proc_stats_poll_ms)
        self._ttl_ticks = procfs.cache_ttl_ticks(self._poll_ms, cfg.proc_stats_cache_ttl_ms)
        notes = []
        if self._poll_ms != cfg.proc_stats_poll_ms:
            notes.append(f"proc_stats_poll_ms {cfg.proc_stats_poll_ms} raised to {self._poll_ms}")
        ignored = [
            f for f in ("resolve_process_fds", "record_process_dmabuf_rss") if getattr(cfg, f)
        ]
        _log_ignored(self.name, ignored, notes)
        self._lock = threading.Lock()
        self._pending: set[int] = set()  # pids published, not written yet
        self._renamed: set[int] = set()
        self._clear_wanted = False
        self._cleared = False  # the next packet says incremental_state_cleared
        self._seen: dict[int, int] = {}  # tid -> tgid written into the ProcessTree
        self._no_memory: set[int] = set()  # kernel threads: no counters to poll
        self._cache = procfs.ProcessStatsCache()
        self._ticks = 0
        self._next_poll = 0.0

    def on_start(self, config: Any) -> None:
        super().on_start(config)
        PIDS.subscribe(self.config.tracing_session_id, self._on_pids)

    def on_stop(self) -> None:
        PIDS.unsubscribe(self.config.tracing_session_id, self._on_pids)
        super().on_stop()

    def on_clear_incremental_state(self) -> None:
        self._clear_wanted = True
        self._wakeup.set()

    def _on_pids(self, pids: Collection[int], renamed: Collection[int]) -> None:
        """PidBus callback, on linux.ftrace's thread: record only."""
        if not self._on_demand:
            return
        with self._lock:
            self._pending.update(pids)
            self._renamed.update(renamed)
        self._wakeup.set()

    # -- the thread -----------------------------------------------------------------

    def _begin(self, w: TraceWriter) -> None:
        if self._scan_on_start:
            self._write_all_processes(w)
        if self._poll_ms:
            self._next_poll = time.monotonic()  # the first poll right away, as traced

    def _next_wait(self) -> float | None:
        if not self._poll_ms:
            return None
        return max(self._next_poll - time.monotonic(), 0.0)

    def _turn(self, w: TraceWriter) -> None:
        if self._clear_wanted:
            self._clear_wanted = False
            self._clear()
        with self._lock:
            pending, self._pending = self._pending, set()
            renamed, self._renamed = self._renamed, set()
        for pid in renamed:
            self._seen.pop(pid, None)
        if pending or renamed:
            self._write_tree(w, pending | renamed)
        if self._poll_ms and time.monotonic() >= self._next_poll:
            self._poll(w)
            self._next_poll = time.monotonic() + _until_aligned(self._poll_ms, boottime_ns())

    def _clear(self) -> None:
        self._seen.clear()
        self._no_memory.clear()
        self._cache.clear()
        self._ticks = 0
        self._cleared = True

    def _emit(
        self, w: TraceWriter, build: Callable[..., bytes], ts: int, entries: Iterable[bytes]
    ) -> None:
        """Packets of `entries` (all stamped `ts`, the collection's start), cut at
        about PACKET_BYTES: a machine with many processes makes many packets, not a
        huge one. Nothing when there are no entries."""
        batch: list[bytes] = []
        size = 0
        for entry in entries:
            batch.append(entry)
            size += len(entry)
            if size >= PACKET_BYTES:
                self._emit_one(w, build, ts, batch)
                batch, size = [], 0
        if batch:
            self._emit_one(w, build, ts, batch)

    def _emit_one(
        self, w: TraceWriter, build: Callable[..., bytes], ts: int, entries: list[bytes]
    ) -> None:
        cleared, self._cleared = self._cleared, False
        self._write(w, build(ts, entries, boottime_ns(), incremental_state_cleared=cleared))

    # -- ProcessTree ----------------------------------------------------------------

    def _write_all_processes(self, w: TraceWriter) -> None:
        self._emit(w, procfs.process_tree_packet, boottime_ns(), self._scan())

    def _scan(self) -> Iterator[bytes]:
        """ProcessTree entries of every process and its threads."""
        for pid in numeric_entries(PROC):
            if self._stopping:
                return  # a machine with many processes must not hold up the stop
            status = procfs.parse_status(read_text(f"{PROC}/{pid}/status"))
            if status is None or status.tgid != pid:
                continue  # gone, or the pid now names a thread
            yield from self._process_entries(pid, status)
            yield from self._thread_entries(pid, status)

    def _thread_entries(self, pid: int, status: procfs.ProcStatus) -> list[bytes]:
        out = []
        for tid in numeric_entries(f"{PROC}/{pid}/task"):
            if tid == pid:
                continue
            if self._thread_names or status.ns_ids:
                thread = procfs.parse_status(read_text(f"{PROC}/{pid}/task/{tid}/status"))
                if thread is not None:
                    out.append(self._detailed_thread(tid, pid, thread))
            else:
                out.append(procfs.tree_thread(tid, pid))
                self._seen[tid] = pid
        return out

    def _write_tree(self, w: TraceWriter, pids: Collection[int]) -> None:
        """ProcessTree entries for the pids (or tids) not written yet."""
        ts = boottime_ns()
        entries = (
            entry
            for pid in sorted(pids)
            if pid > 0 and pid not in self._seen
            for entry in self._process_or_thread(pid)
        )
        self._emit(w, procfs.process_tree_packet, ts, entries)

    def _process_or_thread(self, pid: int) -> list[bytes]:
        status = procfs.parse_status(read_text(f"{PROC}/{pid}/status"))
        if status is None:
            return []
        out = []
        tgid = status.tgid
        if tgid not in self._seen:
            main = (
                status if tgid == pid else procfs.parse_status(read_text(f"{PROC}/{tgid}/status"))
            )
            if main is not None and main.tgid == tgid:
                out += self._process_entries(tgid, main)
        if pid != tgid:
            out.append(self._detailed_thread(pid, tgid, status))
        return out

    def _process_entries(self, pid: int, status: procfs.ProcStatus) -> list[bytes]:
        """The process, and its main thread unless skip_main_thread_message."""
        cmdline = procfs.parse_cmdline(read_file(f"{PROC}/{pid}/cmdline"))
        start = None
        if self._process_age:
            times = procfs.parse_stat_times(read_text(f"{PROC}/{pid}/stat"), NS_PER_TICK)
            start = times.start_from_boot_ns if times else None
        entry = procfs.tree_process(
            pid, status.ppid, status.uid, cmdline or [status.name],
            cmdline_is_comm=not cmdline, ns_ids=status.ns_ids,
            start_from_boot_ns=start, kthread=status.kthread,
        )  # fmt: skip
        self._seen[pid] = pid
        if not self._main_thread:
            return [entry]
        return [entry, self._detailed_thread(pid, pid, status)]

    def _detailed_thread(self, tid: int, tgid: int, status: procfs.ProcStatus) -> bytes:
        self._seen[tid] = tgid
        name = status.name if self._thread_names else None
        return procfs.tree_thread(tid, tgid, name, status.ns_ids)

    # -- ProcessStats ---------------------------------------------------------------

    def _poll(self, w: TraceWriter) -> None:
        ts = boottime_ns()
        live = list(numeric_entries(PROC))
        for pid in live:  # a pid once a thread's tid (tgid alive): a new process now
            if self._seen.get(pid, pid) != pid:
                del self._seen[pid]
        self._emit(w, procfs.process_stats_packet, ts, self._stats_entries(live))
        self._forget_gone(live)
        self._ticks += 1
        if self._ticks >= self._ttl_ticks:
            self._ticks = 0
            self._cache.clear()
        # Our addition to traced's poll: every process new since the last one is
        # named, kernel threads included (traced names only those with counters).
        self._write_tree(w, [pid for pid in live if pid not in self._seen])

    def _stats_entries(self, pids: list[int]) -> Iterator[bytes]:
        for pid in pids:
            counters = self._counters(pid)
            changed = self._cache.changed(pid, counters) if counters else []
            if changed:
                yield procfs.stats_process(pid, changed)

    def _forget_gone(self, live: list[int]) -> None:
        """Forget processes that ended, so that a pid the kernel reuses is named and
        polled afresh (traced keeps them until a ClearIncrementalState)."""
        alive = set(live)
        self._cache.forget_except(alive)
        self._no_memory &= alive
        self._seen = {tid: tgid for tid, tgid in self._seen.items() if tgid in alive}

    def _counters(self, pid: int) -> dict[int, int]:
        counters: dict[int, int] = {}
        if self._runtime:
            times = procfs.parse_stat_times(read_text(f"{PROC}/{pid}/stat"), NS_PER_TICK)
            if times is not None:
                counters[procfs.RUNTIME_USER_MODE] = times.utime_ns
                counters[procfs.RUNTIME_KERNEL_MODE] = times.stime_ns
        if pid in self._no_memory:
            return counters
        status = read_text(f"{PROC}/{pid}/status")
        if self._smaps_rollup and status:
            status += read_text(f"{PROC}/{pid}/smaps_rollup")
        memory = procfs.mem_counters(status) if status else None
        if memory is None:
            if status:
                self._no_memory.add(pid)
            return counters
        counters.update(memory)
        oom = procfs.parse_oom_score_adj(read_text(f"{PROC}/{pid}/oom_score_adj"))
        if oom is not None:
            counters[procfs.OOM_SCORE_ADJ] = oom
        return counters


class SysStatsDataSource(_PollingSource):
    """linux.sys_stats (see the module docstring)."""

    name = "linux.sys_stats"

    def on_setup(self, config: Any) -> None:
        cfg = perfetto_config(config).sys_stats_config
        periods = {n: getattr(cfg, f"{n}_period_ms") for n in sys_stats.PERIOD_FIELDS}
        self._schedule = sys_stats.schedule(periods)
        self._meminfo = sys_stats.meminfo_keys(list(cfg.meminfo_counters))
        self._vmstat = sys_stats.vmstat_keys(list(cfg.vmstat_counters))
        self._stat_counters = list(cfg.stat_counters)
        ignored = [
            f"{n}_period_ms" for n, ms in periods.items() if ms and n not in sys_stats.IMPLEMENTED
        ]
        notes = list(self._schedule.notes)
        if self._schedule.error:
            _log.error("%s: %s", self.name, self._schedule.error)
        _log_ignored(self.name, ignored, notes)
        self._fds: dict[str, int] = {}
        self._unreadable: set[str] = set()
        self._tick = 0
        self._next_tick = 0.0
        self._readers: dict[str, Callable[[], bytes]] = {
            "meminfo": self._read_meminfo,
            "vmstat": self._read_vmstat,
            "stat": self._read_stat,
            "psi": self._read_psi,
            "buddyinfo": self._read_buddyinfo,
            "diskstat": self._read_diskstats,
            "cpufreq": self._read_cpufreq,
            "thermal": self._read_thermal,
            "cpuidle": self._read_cpuidle,
        }

    def on_stop(self) -> None:
        super().on_stop()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _begin(self, w: TraceWriter) -> None:
        self._next_tick = time.monotonic()  # the first tick right away, as traced

    def _next_wait(self) -> float | None:
        if not self._schedule.tick_ms:
            return None
        return max(self._next_tick - time.monotonic(), 0.0)

    def _turn(self, w: TraceWriter) -> None:
        if not self._schedule.tick_ms or time.monotonic() < self._next_tick:
            return
        ts = boottime_ns()
        due = self._schedule.due(self._tick)
        if due:  # a tick only for sources this does not read writes nothing
            parts = [self._readers[name]() for name in due]
            self._write(w, sys_stats.sys_stats_packet(ts, parts, boottime_ns()))
        self._tick += 1
        self._next_tick = time.monotonic() + _until_aligned(self._schedule.tick_ms, boottime_ns())

    def _proc_text(self, path: str) -> str:
        """A file kept open across ticks (as traced), read from its start."""
        if path in self._unreadable:
            return ""
        try:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            return _read_all(fd, 0).decode("utf-8", "replace")
        except OSError as e:
            self._unreadable.add(path)
            _log.warning("%s: cannot read %s (%s): skipped", self.name, path, e.strerror)
            return ""

    def _read_meminfo(self) -> bytes:
        text = self._proc_text("/proc/meminfo")
        return sys_stats.encode_meminfo(sys_stats.key_values(text, self._meminfo))

    def _read_vmstat(self) -> bytes:
        text = self._proc_text("/proc/vmstat")
        return sys_stats.encode_vmstat(sys_stats.key_values(text, self._vmstat))

    def _read_stat(self) -> bytes:
        text = self._proc_text("/proc/stat")
        return sys_stats.encode_stat(sys_stats.parse_stat(text, self._stat_counters, NS_PER_TICK))

    def _read_psi(self) -> bytes:
        samples = []
        for name, some, full in sys_stats.PSI_FILES:
            samples += sys_stats.parse_psi(self._proc_text(f"/proc/pressure/{name}"), some, full)
        return sys_stats.encode_psi(samples)

    def _read_buddyinfo(self) -> bytes:
        return sys_stats.encode_buddyinfo(
            sys_stats.parse_buddyinfo(self._proc_text("/proc/buddyinfo"))
        )

    def _read_diskstats(self) -> bytes:
        return sys_stats.encode_diskstats(
            sys_stats.parse_diskstats(self._proc_text("/proc/diskstats"))
        )

    def _read_thermal(self) -> bytes:
        zones = []
        for name in sorted(_listdir(SYS_THERMAL)):
            if name.startswith("thermal_zone"):
                base = f"{SYS_THERMAL}/{name}"
                kind = read_text(f"{base}/type").strip()
                temp = sys_stats.parse_uint(read_text(f"{base}/temp"))
                zones.append((name, temp, kind or None))
        return sys_stats.encode_thermal(zones)

    def _read_cpuidle(self) -> bytes:
        cpus = []
        for name in _listdir(SYS_CPU):
            if not (name.startswith("cpu") and name[3:].isdigit()):
                continue
            base = f"{SYS_CPU}/{name}/cpuidle"
            states = []
            for state in sorted(_listdir(base)):
                if not state.startswith("state"):
                    continue
                label = read_text(f"{base}/{state}/name").strip()
                time_us = sys_stats.parse_uint(read_text(f"{base}/{state}/time"))
                if label and time_us is not None:
                    states.append((label, time_us))
            cpus.append((int(name[3:]), states))
        return sys_stats.encode_cpuidle(sorted(cpus))

    def _read_cpufreq(self) -> bytes:
        cpus = os.sysconf("SC_NPROCESSORS_CONF")
        base = SYS_CPU + "/cpu{}/cpufreq/scaling_cur_freq"
        return sys_stats.encode_cpufreq(
            sys_stats.parse_cpufreq(read_text(base.format(i))) for i in range(cpus)
        )
