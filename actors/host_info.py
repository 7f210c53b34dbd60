"""What the service reads of its host for its own packets (service_packets.py):
the clocks of a ClockSnapshot and the SystemInfo of a trace.

Clocks, as traced snapshots them (BuiltinClock id: POSIX clock), BOOTTIME
first (the trace clock; the core measures drift against it), all read back to
back so that the snapshot is as close to atomic as Python gets:

    6 BOOTTIME, 2 REALTIME_COARSE, 4 MONOTONIC_COARSE,
    1 REALTIME, 3 MONOTONIC, 5 MONOTONIC_RAW

SystemInfo, collected once when the service starts (traced's fields on Linux):
utsname (sysname, version, release, machine), page_size, num_cpus (configured),
system_ram_bytes, timezone_off_mins (local time's offset from UTC) and
tracing_service_version ("tracebus <version>").
"""

from __future__ import annotations

import os
import time
from importlib import metadata

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

# Linux's clock ids for the coarse clocks (Python's time module has no names for them).
CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)
CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)

CLOCKS = (
    (pb.BuiltinClock.BUILTIN_CLOCK_BOOTTIME, time.CLOCK_BOOTTIME),
    (pb.BuiltinClock.BUILTIN_CLOCK_REALTIME_COARSE, CLOCK_REALTIME_COARSE),
    (pb.BuiltinClock.BUILTIN_CLOCK_MONOTONIC_COARSE, CLOCK_MONOTONIC_COARSE),
    (pb.BuiltinClock.BUILTIN_CLOCK_REALTIME, time.CLOCK_REALTIME),
    (pb.BuiltinClock.BUILTIN_CLOCK_MONOTONIC, time.CLOCK_MONOTONIC),
    (pb.BuiltinClock.BUILTIN_CLOCK_MONOTONIC_RAW, time.CLOCK_MONOTONIC_RAW),
)


def snapshot_clocks() -> list[tuple[int, int]]:
    readings = [time.clock_gettime_ns(clk) for _, clk in CLOCKS]
    return [(int(clock_id), ns) for (clock_id, _), ns in zip(CLOCKS, readings, strict=True)]


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def service_version() -> str:
    try:
        return f"tracebus {metadata.version('tracebus')}"
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "tracebus"


def system_info() -> pb.SystemInfo:
    """This host's SystemInfo; a value the host does not give is left out."""
    info = pb.SystemInfo(tracing_service_version=service_version())
    info.timezone_off_mins = time.localtime().tm_gmtoff // 60
    uname = os.uname()
    info.utsname.sysname = uname.sysname
    info.utsname.version = uname.version
    info.utsname.release = uname.release
    info.utsname.machine = uname.machine
    for field, name in (("page_size", "SC_PAGESIZE"), ("num_cpus", "SC_NPROCESSORS_CONF")):
        value = _sysconf(name)
        if value > 0:
            setattr(info, field, value)
    pages, page_size = _sysconf("SC_PHYS_PAGES"), _sysconf("SC_PAGESIZE")
    if pages > 0 and page_size > 0:
        info.system_ram_bytes = pages * page_size
    return info


def _sysconf(name: str) -> int:
    try:
        return os.sysconf(name)
    except (ValueError, OSError):
        return -1
