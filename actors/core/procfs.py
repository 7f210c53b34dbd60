"""Processes as linux.process_stats sees them: /proc/PID text in, values out,
and Perfetto's ProcessTree / ProcessStats packets out of values. Pure: the shell
(actors/probes_procfs.py) reads the files, passes the time, and writes the bytes.

What is read, and how it becomes Perfetto's packets (as traced_probes'
process_stats_data_source.cc does):

    /proc/PID/status   Name, Tgid, Pid, PPid, Uid (the real uid, first of four),
                       NSpid (the ids in nested pid namespaces, after the root one),
                       Kthread (6.4+), and the memory counters:
                         VmSize VmRSS RssAnon RssFile RssShmem VmSwap VmLck VmHWM
                       (+ Rss Pss Pss_Anon Pss_File Pss_Shmem SwapPss of smaps_rollup,
                       appended to the status text when scan_smaps_rollup asks)
    /proc/PID/cmdline  NUL-separated argv; empty for kernel threads and zombies,
                       then the cmdline is [Name] with cmdline_is_comm
    /proc/PID/stat     utime, stime, starttime in clock ticks (fields 14, 15, 22,
                       counted after the ")" that ends comm, which may hold spaces)

    TracePacket { timestamp (scan start, CLOCK_BOOTTIME ns),
                  incremental_state_cleared (first packet after a clear),
                  process_tree { processes {pid ppid cmdline* cmdline_is_comm uid nspid*
                                            process_start_from_boot is_kthread}
                                 threads {tid tgid name nstid*}  collection_end_timestamp }
                | process_stats { processes {pid vm_size_kb ... oom_score_adj}
                                  collection_end_timestamp } }

A process without VmSize in its status (a kernel thread) has no memory
counters: `mem_counters` returns None and the shell stops polling it.
ProcessStatsCache keeps the last value written of each counter per pid, so
that an unchanged counter is not written again until the cache is dropped
(every proc_stats_cache_ttl_ms, and on ClearIncrementalState).

Kernel text is not a producer's, but it is parsed as defensively: malformed
input gives None or fewer values, never an exception (property-tested).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shm.protozero import LEN, VARINT, tag, varint

# -- field numbers (Perfetto's schema; tests/test_procfs.py checks them) -----------
TRACE_PACKET_TIMESTAMP = 8
TRACE_PACKET_PROCESS_TREE = 2
TRACE_PACKET_PROCESS_STATS = 9
TRACE_PACKET_INCREMENTAL_STATE_CLEARED = 41

# ProcessTree
TREE_PROCESSES = 1
TREE_THREADS = 2
TREE_COLLECTION_END = 3
# ProcessTree.Process
PROC_PID, PROC_PPID, PROC_CMDLINE, PROC_UID, PROC_NSPID = 1, 2, 3, 5, 6
PROC_START_FROM_BOOT, PROC_IS_KTHREAD, PROC_CMDLINE_IS_COMM = 7, 8, 9
# ProcessTree.Thread
THREAD_TID, THREAD_NAME, THREAD_TGID, THREAD_NSTID = 1, 2, 3, 4
# ProcessStats
STATS_PROCESSES = 1
STATS_COLLECTION_END = 2
# ProcessStats.Process
STATS_PID = 1
OOM_SCORE_ADJ = 10
RUNTIME_USER_MODE = 21
RUNTIME_KERNEL_MODE = 22

# status (and smaps_rollup) key -> ProcessStats.Process field
MEM_COUNTER_FIELDS: Mapping[str, int] = {
    "VmSize": 2,
    "VmRSS": 3,
    "RssAnon": 4,
    "RssFile": 5,
    "RssShmem": 6,
    "VmSwap": 7,
    "VmLck": 8,
    "VmHWM": 9,
    "Rss": 16,
    "Pss": 17,
    "Pss_Anon": 18,
    "Pss_File": 19,
    "Pss_Shmem": 20,
    "SwapPss": 23,
}

_TIMESTAMP = tag(TRACE_PACKET_TIMESTAMP, VARINT)
_CLEARED = tag(TRACE_PACKET_INCREMENTAL_STATE_CLEARED, VARINT) + b"\x01"
_PROCESS_TREE = tag(TRACE_PACKET_PROCESS_TREE, LEN)
_PROCESS_STATS = tag(TRACE_PACKET_PROCESS_STATS, LEN)


# -- parsing --------------------------------------------------------------------------


_LEADING_INT = re.compile(r"[ \t]*([-+]?[0-9]+)")


def leading_int(text: str) -> int | None:
    """The integer a text starts with after blanks ("92 kB" -> 92, "-5" -> -5), as
    strtol reads it; None if there is none."""
    m = _LEADING_INT.match(text)
    return int(m.group(1)) if m else None


def status_fields(status: str) -> dict[str, str]:
    """ "Key:<blanks>value" lines of /proc/PID/status (or smaps_rollup) -> {key: value}.
    The first line of a key wins, as Perfetto's lookup does."""
    fields: dict[str, str] = {}
    for line in status.split("\n"):
        key, sep, value = line.partition(":")
        if sep and key not in fields:
            fields[key] = value.strip(" \t")
    return fields


@dataclass(frozen=True)
class ProcStatus:
    """What /proc/PID/status says about a task (a process or a thread)."""

    name: str
    tgid: int
    pid: int  # the task's own id: the tid of a thread
    ppid: int
    uid: int
    ns_ids: tuple[int, ...]  # NSpid after the root id: ids in nested pid namespaces
    kthread: bool | None  # None: the kernel does not say (before 6.4)


def parse_status(status: str) -> ProcStatus | None:
    """A task's identity from its status text; None when Tgid or Pid is missing or
    not positive (the task is gone, or the text is not a status file)."""
    f = status_fields(status)
    tgid = leading_int(f.get("Tgid", ""))
    pid = leading_int(f.get("Pid", ""))
    if tgid is None or pid is None or tgid <= 0 or pid <= 0:
        return None
    ns_ids = tuple(i for i in (leading_int(t) for t in f.get("NSpid", "").split()[1:]) if i)
    kthread = leading_int(f.get("Kthread", ""))
    return ProcStatus(
        name=f.get("Name", ""),
        tgid=tgid,
        pid=pid,
        ppid=leading_int(f.get("PPid", "")) or 0,
        uid=leading_int(f.get("Uid", "")) or 0,
        ns_ids=ns_ids,
        kthread=bool(kthread) if kthread in (0, 1) else None,
    )


# One pass of the regex engine over the status text finds the counters' lines (a
# Python loop over its ~55 lines cost most of a poll).
_MEM_LINE = re.compile(r"^(" + "|".join(MEM_COUNTER_FIELDS) + r"):[ \t]*([0-9]*)", re.MULTILINE)


def mem_counters(status: str) -> dict[int, int] | None:
    """ProcessStats.Process field -> value (kB) of the memory counters in a status
    text (with smaps_rollup appended, if read); None when it has no VmSize (a kernel
    thread: Perfetto then stops polling that pid). The first line of a key wins."""
    out: dict[int, int] = {}
    for key, digits in _MEM_LINE.findall(status):
        out.setdefault(MEM_COUNTER_FIELDS[key], int(digits) if digits else 0)
    return out if MEM_COUNTER_FIELDS["VmSize"] in out else None


def parse_cmdline(raw: bytes) -> list[str]:
    """argv from /proc/PID/cmdline (NUL-separated; empty pieces skipped as Perfetto's
    splitter does); bytes that are not UTF-8 are replaced, so the trace stays valid."""
    return [p.decode("utf-8", "replace") for p in raw.split(b"\0") if p]


@dataclass(frozen=True)
class ProcTimes:
    """CPU times and start of a process, in ns (from clock ticks)."""

    utime_ns: int
    stime_ns: int
    start_from_boot_ns: int


def parse_stat_times(stat: str, ns_per_tick: int) -> ProcTimes | None:
    """utime, stime, starttime of /proc/PID/stat; None if the text is malformed."""
    _, paren, rest = stat.rpartition(")")
    fields = rest.split()
    if not paren or len(fields) < 20:
        return None
    values = [leading_int(fields[i]) for i in (11, 12, 19)]  # stat fields 14, 15, 22
    if any(v is None or v < 0 for v in values):
        return None
    utime, stime, start = (int(v or 0) * ns_per_tick for v in values)
    return ProcTimes(utime, stime, start)


def parse_oom_score_adj(text: str) -> int | None:
    """/proc/PID/oom_score_adj, -1000..1000."""
    value = leading_int(text)
    return value if value is not None and -1000 <= value <= 1000 else None


# -- encoding -------------------------------------------------------------------------


def _len_field(field: int, body: bytes) -> bytes:
    return tag(field, LEN) + varint(len(body)) + body


def _string(field: int, text: str) -> bytes:
    return _len_field(field, text.encode("utf-8", "replace"))


_VARINT_TAGS = {f: tag(f, VARINT) for f in range(1, 32)}


def _int(field: int, value: int) -> bytes:
    return _VARINT_TAGS[field] + varint(value)


def tree_process(
    pid: int, ppid: int, uid: int, cmdline: Sequence[str], *, cmdline_is_comm: bool = False,
    ns_ids: Sequence[int] = (), start_from_boot_ns: int | None = None,
    kthread: bool | None = None,
) -> bytes:  # fmt: skip
    """One ProcessTree.processes entry (tagged, ready to join into a tree)."""
    parts = [_int(PROC_PID, pid), _int(PROC_PPID, ppid)]
    parts += [_string(PROC_CMDLINE, arg) for arg in cmdline]
    if cmdline_is_comm:
        parts.append(_int(PROC_CMDLINE_IS_COMM, 1))
    parts.append(_int(PROC_UID, uid))
    parts += [_int(PROC_NSPID, i) for i in ns_ids]
    if start_from_boot_ns is not None:
        parts.append(_int(PROC_START_FROM_BOOT, start_from_boot_ns))
    if kthread is not None:
        parts.append(_int(PROC_IS_KTHREAD, int(kthread)))
    return _len_field(TREE_PROCESSES, b"".join(parts))


def tree_thread(tid: int, tgid: int, name: str | None = None, ns_ids: Sequence[int] = ()) -> bytes:
    """One ProcessTree.threads entry; `name` only when record_thread_names asks."""
    parts = [_int(THREAD_TID, tid), _int(THREAD_TGID, tgid)]
    if name is not None:
        parts.append(_string(THREAD_NAME, name))
    parts += [_int(THREAD_NSTID, i) for i in ns_ids]
    return _len_field(TREE_THREADS, b"".join(parts))


def stats_process(pid: int, counters: Iterable[tuple[int, int]]) -> bytes:
    """One ProcessStats.processes entry: pid, then (field, value) counters."""
    body = _int(STATS_PID, pid) + b"".join(_int(f, v) for f, v in counters)
    return _len_field(STATS_PROCESSES, body)


def _packet(
    what: bytes, end_field: int, timestamp_ns: int, entries: Sequence[bytes],
    collection_end_ns: int, incremental_state_cleared: bool,
) -> bytes:  # fmt: skip
    body = b"".join(entries) + _int(end_field, collection_end_ns)
    return b"".join(
        (
            _TIMESTAMP, varint(timestamp_ns),
            _CLEARED if incremental_state_cleared else b"",
            what, varint(len(body)), body,
        )
    )  # fmt: skip


def process_tree_packet(
    timestamp_ns: int, entries: Sequence[bytes], collection_end_ns: int, *,
    incremental_state_cleared: bool = False,
) -> bytes:  # fmt: skip
    """TracePacket{timestamp, process_tree{entries..., collection_end_timestamp}}."""
    return _packet(
        _PROCESS_TREE, TREE_COLLECTION_END, timestamp_ns, entries, collection_end_ns,
        incremental_state_cleared,
    )  # fmt: skip


def process_stats_packet(
    timestamp_ns: int, entries: Sequence[bytes], collection_end_ns: int, *,
    incremental_state_cleared: bool = False,
) -> bytes:  # fmt: skip
    """TracePacket{timestamp, process_stats{entries..., collection_end_timestamp}}."""
    return _packet(
        _PROCESS_STATS, STATS_COLLECTION_END, timestamp_ns, entries, collection_end_ns,
        incremental_state_cleared,
    )  # fmt: skip


# -- state ----------------------------------------------------------------------------


class ProcessStatsCache:
    """The last value written of each counter, per pid: `changed` answers the counters
    to write now. `clear()` forgets everything (the TTL, a ClearIncrementalState)."""

    def __init__(self) -> None:
        self._last: dict[int, dict[int, int]] = {}

    def changed(self, pid: int, counters: Mapping[int, int]) -> list[tuple[int, int]]:
        last = self._last.setdefault(pid, {})
        out = [(f, v) for f, v in counters.items() if last.get(f) != v]
        last.update(out)
        return out

    def forget_except(self, live: Iterable[int]) -> None:
        """Drop pids that are gone (a pid reused later starts afresh)."""
        keep = set(live)
        for pid in [p for p in self._last if p not in keep]:
            del self._last[pid]

    def clear(self) -> None:
        self._last.clear()


def cache_ttl_ticks(poll_ms: int, ttl_ms: int) -> int:
    """Polls between cache drops: ttl / poll, at least 1 (Perfetto's rule; a ttl of 0
    drops the cache after every poll, so every counter is written every time)."""
    return max(ttl_ms // poll_ms, 1) if poll_ms else 1


PROC_STATS_POLL_FLOOR_MS = 100


def poll_period_ms(configured_ms: int) -> int:
    """proc_stats_poll_ms as Perfetto applies it: 0 = no polling, else at least 100."""
    if configured_ms <= 0:
        return 0
    return max(configured_ms, PROC_STATS_POLL_FLOOR_MS)
