"""FtraceStats packets: the kernel buffers' counters and the setup errors of the
linux.ftrace data source, at the start and at the end of a trace (Perfetto
writes the pair; trace_processor subtracts them into its ftrace_cpu_* stats).

`parse_cpu_stats(text, cpu)` reads ``per_cpu/cpuN/stats`` of the instance::

    entries: 23             events in the buffer now
    overrun: 0              overwritten before they were read (overwrite mode)
    commit overrun: 0
    bytes: 1340
    oldest event ts: 47613.745661    seconds of the trace clock
    now ts: 47613.955231
    dropped events: 0       lost because the buffer was full (no-overwrite mode)
    read events: 0

as Perfetto's cpu_stats_parser.cc: unknown lines and lines whose value is not a
number are skipped (the value stays 0).

`ftrace_stats_packet(...)` is TracePacket { timestamp, ftrace_stats { phase,
cpu_stats*, unknown_ftrace_events*, failed_ftrace_events*, atrace_errors } }.
A setup error (tracefs unavailable and why) goes in atrace_errors: that is the
free-text error field of Perfetto's FtraceSetupErrors that trace_processor
shows (as "Atrace failures: ...", stat ftrace_setup_errors, on the UI's
notices) and there is no other. ftrace_parse_errors is never written: a trace
holding one is refused by trace_processor; decoding errors are recorded in the
bundles instead (FtraceEventBundle.error, see actors.core.ftrace_encode).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from actors.core import ftrace_schema as S
from shm.protozero import FIXED64, LEN, VARINT, tag, varint

_DOUBLE = struct.Struct("<d")


@dataclass
class CpuStats:
    cpu: int
    entries: int = 0
    overrun: int = 0
    commit_overrun: int = 0
    bytes_read: int = 0  # the kernel's "bytes": Perfetto's historical name
    oldest_event_ts: float = 0.0
    now_ts: float = 0.0
    dropped_events: int = 0
    read_events: int = 0


_KEYS = {
    "entries": "entries",
    "overrun": "overrun",
    "commit overrun": "commit_overrun",
    "bytes": "bytes_read",
    "oldest event ts": "oldest_event_ts",
    "now ts": "now_ts",
    "dropped events": "dropped_events",
    "read events": "read_events",
}
_FLOATS = {"oldest_event_ts", "now_ts"}


def parse_cpu_stats(text: str, cpu: int) -> CpuStats:
    """per_cpu/cpuN/stats as a CpuStats (see the module docstring)."""
    stats = CpuStats(cpu)
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        attr = _KEYS.get(key.strip())
        if not sep or attr is None:
            continue
        try:
            setattr(stats, attr, float(value) if attr in _FLOATS else int(value))
        except ValueError:
            continue
    return stats


def _cpu_stats_message(s: CpuStats) -> bytes:
    ints = (
        (S.CPU_STATS_CPU, s.cpu), (S.CPU_STATS_ENTRIES, s.entries),
        (S.CPU_STATS_OVERRUN, s.overrun), (S.CPU_STATS_COMMIT_OVERRUN, s.commit_overrun),
        (S.CPU_STATS_BYTES_READ, s.bytes_read),
    )  # fmt: skip
    out = [tag(n, VARINT) + varint(v) for n, v in ints]
    out.append(tag(S.CPU_STATS_OLDEST_EVENT_TS, FIXED64) + _DOUBLE.pack(s.oldest_event_ts))
    out.append(tag(S.CPU_STATS_NOW_TS, FIXED64) + _DOUBLE.pack(s.now_ts))
    out.append(tag(S.CPU_STATS_DROPPED_EVENTS, VARINT) + varint(s.dropped_events))
    out.append(tag(S.CPU_STATS_READ_EVENTS, VARINT) + varint(s.read_events))
    return b"".join(out)


def _len_field(number: int, body: bytes) -> bytes:
    return tag(number, LEN) + varint(len(body)) + body


def ftrace_stats_packet(
    phase: int,
    cpu_stats: Sequence[CpuStats],
    timestamp_ns: int,
    *,
    unknown_events: Sequence[str] = (),
    failed_events: Sequence[str] = (),
    setup_error: str = "",
) -> bytes:
    """One serialized TracePacket holding FtraceStats (phase: PHASE_START_OF_TRACE
    or PHASE_END_OF_TRACE of actors.core.ftrace_schema, 1 and 2)."""
    body = [tag(S.STATS_PHASE, VARINT) + varint(phase)]
    body += [_len_field(S.STATS_CPU_STATS, _cpu_stats_message(s)) for s in cpu_stats]
    if setup_error:
        body.append(_len_field(S.STATS_ATRACE_ERRORS, setup_error.encode()))
    body += [_len_field(S.STATS_UNKNOWN_EVENTS, e.encode()) for e in unknown_events]
    body += [_len_field(S.STATS_FAILED_EVENTS, e.encode()) for e in failed_events]
    stats = b"".join(body)
    return (
        tag(S.PACKET_TIMESTAMP, VARINT)
        + varint(timestamp_ns)
        + _len_field(S.PACKET_FTRACE_STATS, stats)
    )
