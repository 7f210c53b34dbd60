"""System counters as linux.sys_stats sees them: /proc and /sys text in, values
out, and Perfetto's SysStats packet out of values. Pure: the shell
(actors/probes_procfs.py) reads the files at the ticks `SysStatsSchedule` names
and passes the time.

Sources and the SysStats fields they fill (as traced_probes' sys_stats_data_source.cc):

    /proc/meminfo        meminfo {key: MeminfoCounters, value (kB)}   meminfo_period_ms
    /proc/vmstat         vmstat {key: VmstatCounters, value}          vmstat_period_ms
    /proc/stat           cpu_stat per CPU (user..steal in ns), num_irq_total + num_irq
                         (non-zero lines only), num_softirq_total + num_softirq,
                         num_forks ("processes")                      stat_period_ms
    /proc/pressure/*     psi {resource: CPU/IO/MEMORY x SOME/FULL, total_ns}  psi_period_ms
    /proc/buddyinfo      buddy_info {node, zone, order_pages*}        buddyinfo_period_ms
    /proc/diskstats      disk_stat {device_name, read/write/discard sectors and ms,
                         flush count and ms}                          diskstat_period_ms
    cpuN/cpufreq/scaling_cur_freq  cpufreq_khz* (0 for a CPU without one)  cpufreq_period_ms
    /sys/class/thermal/thermal_zone*  thermal_zone {name, temp (degrees C), type}
                                                                      thermal_period_ms
    cpuN/cpuidle/state*  cpuidle_state {cpu_id, cpuidle_state_entry {state (its name),
                         duration_us (its time)}}                     cpuidle_period_ms
(cpuN under /sys/devices/system/cpu)

Counter selection: a config that lists no meminfo_counters (vmstat_counters,
stat_counters) gets all of them; the /proc keys map to the enums through
Perfetto's tables (actors/core/sys_stats_keys.py).

Periods: 0 = off; under 10 ms raised to 10 (Perfetto's floor). One tick runs at
the smallest period, each source every period/tick ticks; periods that are not
multiples of that tick disable polling altogether, as in Perfetto (the schedule
carries the error, the shell logs it). Every tick at which a source is due
writes one packet TracePacket{timestamp, sys_stats{..., collection_end_timestamp}}.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from actors.core.procfs import leading_int
from actors.core.sys_stats_keys import MEMINFO_KEYS, VMSTAT_KEYS
from shm.protozero import LEN, VARINT, tag, varint

# SysStats field numbers (Perfetto's schema; tests/test_procfs.py checks them).
MEMINFO, VMSTAT, CPU_STAT, NUM_FORKS = 1, 2, 3, 4
NUM_IRQ_TOTAL, NUM_IRQ, NUM_SOFTIRQ_TOTAL, NUM_SOFTIRQ = 5, 6, 7, 8
COLLECTION_END, CPUFREQ_KHZ, BUDDY_INFO, DISK_STAT, PSI = 9, 11, 12, 13, 14
THERMAL_ZONE, CPUIDLE_STATE = 15, 16
TRACE_PACKET_TIMESTAMP, TRACE_PACKET_SYS_STATS = 8, 7

# SysStatsConfig.StatCounters
STAT_CPU_TIMES, STAT_IRQ_COUNTS, STAT_SOFTIRQ_COUNTS, STAT_FORK_COUNT = 1, 2, 3, 4
ALL_STAT_COUNTERS = frozenset(
    (STAT_CPU_TIMES, STAT_IRQ_COUNTS, STAT_SOFTIRQ_COUNTS, STAT_FORK_COUNT)
)

# SysStats.PsiSample.PsiResource: (file under /proc/pressure, "some" value, "full" value)
PSI_FILES = (("cpu", 1, 2), ("io", 3, 4), ("memory", 5, 6))

PERIOD_FLOOR_MS = 10
# The config's *_period_ms fields in Perfetto's order; those the shell implements.
PERIOD_FIELDS = (
    "meminfo", "vmstat", "stat", "devfreq", "cpufreq", "buddyinfo", "diskstat",
    "psi", "thermal", "cpuidle", "gpufreq", "slab",
)  # fmt: skip
IMPLEMENTED = frozenset(
    ("meminfo", "vmstat", "stat", "cpufreq", "buddyinfo", "diskstat", "psi", "thermal", "cpuidle")
)


# -- what to poll, and when ------------------------------------------------------------


@dataclass
class SysStatsSchedule:
    """Which sources are read at which tick. `tick_ms` 0: nothing is polled."""

    tick_ms: int = 0
    every: dict[str, int] = field(default_factory=dict)  # source -> every N ticks
    notes: list[str] = field(default_factory=list)  # raised periods, to log
    error: str = ""  # why nothing is polled although periods were set

    def due(self, tick: int) -> list[str]:
        return [name for name, n in self.every.items() if tick % n == 0]


def schedule(periods_ms: Mapping[str, int]) -> SysStatsSchedule:
    """The schedule of the configured periods (source name -> *_period_ms); sources
    this implementation does not read are left out of it (the shell names them)."""
    out = SysStatsSchedule()
    clamped: dict[str, int] = {}
    for name in PERIOD_FIELDS:
        ms = periods_ms.get(name, 0)
        if 0 < ms < PERIOD_FLOOR_MS:
            out.notes.append(f"{name}_period_ms {ms} is below {PERIOD_FLOOR_MS} ms: raised")
            ms = PERIOD_FLOOR_MS
        if ms > 0:
            clamped[name] = ms
    if not clamped:
        return out
    tick = min(clamped.values())
    if any(ms % tick for ms in clamped.values()):
        out.error = "sys_stats periods are not integer multiples of each other: nothing polled"
        return out
    out.every = {n: ms // tick for n, ms in clamped.items() if n in IMPLEMENTED}
    out.tick_ms = tick if out.every else 0  # only sources not read: no ticks at all
    return out


def enabled_keys(table: Iterable[tuple[str, int]], selected: Sequence[int]) -> dict[str, int]:
    """/proc key -> enum value of the counters a config selects (none listed: all)."""
    wanted = set(selected)
    return {key: n for key, n in table if not wanted or n in wanted}


def meminfo_keys(selected: Sequence[int]) -> dict[str, int]:
    return enabled_keys(((k, n) for k, _, n in MEMINFO_KEYS), selected)


def vmstat_keys(selected: Sequence[int]) -> dict[str, int]:
    return enabled_keys(VMSTAT_KEYS, selected)


# -- parsing ---------------------------------------------------------------------------


def key_values(text: str, keys: Mapping[str, int]) -> list[tuple[int, int]]:
    """(enum, value) of the lines "key[:] value ..." of meminfo or vmstat whose key
    is selected, in the file's order."""
    out = []
    for line in text.split("\n"):
        words = line.split()
        if len(words) < 2:
            continue
        n = keys.get(words[0].removesuffix(":"))
        value = leading_int(words[1]) if n is not None else None
        if n is not None and value is not None and value >= 0:
            out.append((n, value))
    return out


@dataclass
class StatSample:
    """What /proc/stat says, in the units SysStats wants."""

    cpu_times: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)  # cpu, 8 ns
    irq_total: int | None = None
    irqs: list[tuple[int, int]] = field(default_factory=list)  # (irq, count) non-zero only
    softirq_total: int | None = None
    softirqs: list[tuple[int, int]] = field(default_factory=list)
    forks: int | None = None


def _numbers(words: Sequence[str]) -> list[int]:
    return [max(leading_int(w) or 0, 0) for w in words]


def parse_stat(text: str, counters: Iterable[int], ns_per_tick: int) -> StatSample:
    """The selected StatCounters of /proc/stat (the "cpu" total line is not a CPU)."""
    wanted = set(counters) or ALL_STAT_COUNTERS
    out = StatSample()
    for line in text.split("\n"):
        words = line.split()
        if not words:
            continue
        head, values = words[0], _numbers(words[1:])
        if STAT_CPU_TIMES in wanted and head.startswith("cpu") and head[3:].isdigit():
            times = (values + [0] * 8)[:8]
            out.cpu_times.append((int(head[3:]), tuple(t * ns_per_tick for t in times)))
        elif STAT_IRQ_COUNTS in wanted and head == "intr" and values:
            out.irq_total = values[0]
            out.irqs = [(i, v) for i, v in enumerate(values[1:]) if v > 0]
        elif STAT_SOFTIRQ_COUNTS in wanted and head == "softirq" and values:
            out.softirq_total = values[0]
            out.softirqs = list(enumerate(values[1:]))
        elif STAT_FORK_COUNT in wanted and head == "processes" and values:
            out.forks = values[0]
    return out


def parse_psi(text: str, some: int, full: int) -> list[tuple[int, int]]:
    """(resource, total_ns) of a /proc/pressure file ("some avg10=.. total=US")."""
    out = []
    for line in text.split("\n"):
        words = line.split()
        if len(words) < 5 or words[0] not in ("some", "full"):
            continue
        total_us = leading_int(words[4].removeprefix("total="))
        out.append((some if words[0] == "some" else full, max(total_us or 0, 0) * 1000))
    return out


def parse_buddyinfo(text: str) -> list[tuple[str, str, list[int]]]:
    """(node, zone, free blocks per order) of "Node 0, zone   Normal  12 11 ..."."""
    out = []
    for line in text.split("\n"):
        words = line.split()
        if len(words) < 4 or words[0] != "Node" or words[2] != "zone":
            continue
        out.append((words[1].rstrip(","), words[3], _numbers(words[4:])))
    return out


# /proc/diskstats columns (0-based, after major minor name) -> DiskStat field
_DISK_COLUMNS = {5: 2, 6: 3, 9: 4, 10: 5, 16: 6, 17: 7, 18: 8, 19: 9}


def parse_diskstats(text: str) -> list[tuple[str, list[tuple[int, int]]]]:
    """(device, [(DiskStat field, value)]) per line; columns a kernel lacks are 0."""
    out = []
    for line in text.split("\n"):
        words = line.split()
        if len(words) < 3:
            continue
        values = _numbers(words)
        out.append(
            (words[2], [(f, values[c] if c < len(values) else 0) for c, f in _DISK_COLUMNS.items()])
        )
    return out


def parse_uint(text: str) -> int | None:
    """A sysfs file holding one unsigned number; None if it does not."""
    value = leading_int(text.strip())
    return value if value is not None and value >= 0 else None


def parse_cpufreq(text: str) -> int:
    """scaling_cur_freq in kHz; 0 when unreadable (an offline CPU), as Perfetto."""
    value = leading_int(text.strip())
    return value if value is not None and 0 <= value < 1 << 32 else 0


# -- encoding --------------------------------------------------------------------------


def _msg(field_no: int, body: bytes) -> bytes:
    return tag(field_no, LEN) + varint(len(body)) + body


def _int(field_no: int, value: int) -> bytes:
    return tag(field_no, VARINT) + varint(value)


def _pair(field_no: int, key: int, value: int) -> bytes:
    return _msg(field_no, _int(1, key) + _int(2, value))


def encode_meminfo(values: Iterable[tuple[int, int]]) -> bytes:
    return b"".join(_pair(MEMINFO, k, v) for k, v in values)


def encode_vmstat(values: Iterable[tuple[int, int]]) -> bytes:
    return b"".join(_pair(VMSTAT, k, v) for k, v in values)


def encode_stat(sample: StatSample) -> bytes:
    parts = []
    for cpu, times in sample.cpu_times:
        body = _int(1, cpu) + b"".join(_int(i + 2, t) for i, t in enumerate(times))
        parts.append(_msg(CPU_STAT, body))
    if sample.forks is not None:
        parts.append(_int(NUM_FORKS, sample.forks))
    if sample.irq_total is not None:
        parts.append(_int(NUM_IRQ_TOTAL, sample.irq_total))
        parts += [_pair(NUM_IRQ, irq, n) for irq, n in sample.irqs]
    if sample.softirq_total is not None:
        parts.append(_int(NUM_SOFTIRQ_TOTAL, sample.softirq_total))
        parts += [_pair(NUM_SOFTIRQ, irq, n) for irq, n in sample.softirqs]
    return b"".join(parts)


def encode_psi(samples: Iterable[tuple[int, int]]) -> bytes:
    return b"".join(_pair(PSI, resource, total) for resource, total in samples)


def encode_buddyinfo(entries: Iterable[tuple[str, str, list[int]]]) -> bytes:
    parts = []
    for node, zone, pages in entries:
        body = _msg(1, node.encode()) + _msg(2, zone.encode())
        parts.append(_msg(BUDDY_INFO, body + b"".join(_int(3, p) for p in pages)))
    return b"".join(parts)


def encode_diskstats(disks: Iterable[tuple[str, list[tuple[int, int]]]]) -> bytes:
    parts = []
    for name, values in disks:
        body = _msg(1, name.encode("utf-8", "replace")) + b"".join(_int(f, v) for f, v in values)
        parts.append(_msg(DISK_STAT, body))
    return b"".join(parts)


def encode_cpufreq(khz: Iterable[int]) -> bytes:
    return b"".join(_int(CPUFREQ_KHZ, f) for f in khz)


def encode_thermal(zones: Iterable[tuple[str, int | None, str | None]]) -> bytes:
    """(zone name, temperature in millidegrees or None, type or None) per zone."""
    parts = []
    for name, millideg, kind in zones:
        body = _msg(1, name.encode("utf-8", "replace"))
        if millideg is not None:
            body += _int(2, millideg // 1000)
        if kind is not None:
            body += _msg(3, kind.encode("utf-8", "replace"))
        parts.append(_msg(THERMAL_ZONE, body))
    return b"".join(parts)


def encode_cpuidle(cpus: Iterable[tuple[int, Sequence[tuple[str, int]]]]) -> bytes:
    """(cpu, [(state name, time in us)]) per CPU."""
    parts = []
    for cpu, states in cpus:
        entries = b"".join(
            _msg(2, _msg(1, name.encode("utf-8", "replace")) + _int(2, us)) for name, us in states
        )
        parts.append(_msg(CPUIDLE_STATE, _int(1, cpu) + entries))
    return b"".join(parts)


_TIMESTAMP = tag(TRACE_PACKET_TIMESTAMP, VARINT)
_SYS_STATS = tag(TRACE_PACKET_SYS_STATS, LEN)


def sys_stats_packet(timestamp_ns: int, parts: Iterable[bytes], collection_end_ns: int) -> bytes:
    """TracePacket{timestamp, sys_stats{parts..., collection_end_timestamp}}."""
    body = b"".join(parts) + _int(COLLECTION_END, collection_end_ns)
    return _TIMESTAMP + varint(timestamp_ns) + _SYS_STATS + varint(len(body)) + body
