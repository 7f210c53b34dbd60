"""What one FtraceConfig asks of the kernel, decided without touching it.

Perfetto's rules (src/traced/probes/ftrace/ftrace_config_muxer.cc,
ftrace_controller.cc, compact_sched.cc), applied to one private instance:

- Events: "group/name" as given; "group/*" is every event of that group the
  instance offers; a bare "name" is looked up in every group (no group has it:
  unknown). An event the instance does not offer is unknown
  (FtraceStats.unknown_ftrace_events); one it offers but that cannot be enabled
  is failed (decided by the shell, which writes the enable file).
- Per-CPU buffer: buffer_size_kb, or when 0 (or below the default with
  buffer_size_lower_bound) 8 MiB on machines with at least 7 GiB of RAM, else
  2 MiB; never less than one page.
- Drain period: drain_period_ms, default 100; outside [1, 60000] the default
  (and a note in the log, as Perfetto logs it).
- compact_sched: on whenever sched_switch is recorded, unless
  compact_sched { enabled: false }.
- Every other field that is set is named in `ignored` (one log line at setup).

Pure: values in, a FtracePlan out; the config is Perfetto's FtraceConfig message
(or anything with the same attributes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

DEFAULT_DRAIN_PERIOD_MS = 100
MIN_DRAIN_PERIOD_MS = 1
MAX_DRAIN_PERIOD_MS = 60_000
LOW_RAM_BUFFER_KB = 2 * 1024
HIGH_RAM_BUFFER_KB = 8 * 1024
HIGH_RAM_BYTES = 7 << 30

# The FtraceConfig fields this implementation honours; any other field set is reported.
IMPLEMENTED = frozenset(
    {"ftrace_events", "buffer_size_kb", "buffer_size_lower_bound", "drain_period_ms",
     "compact_sched", "disable_generic_events"}
)  # fmt: skip


@dataclass(frozen=True)
class FtracePlan:
    events: tuple[str, ...]  # "group/name", as the config asked, before resolution
    buffer_size_kb: int  # per CPU
    drain_period_ms: int
    compact_sched: bool  # if sched_switch ends up recorded
    disable_generic_events: bool
    ignored: tuple[str, ...]  # config fields set but not implemented
    notes: tuple[str, ...]  # adjustments worth a log line


def plan_ftrace(config: Any, phys_bytes: int, page_size: int) -> FtracePlan:
    """The plan for one FtraceConfig on a machine with `phys_bytes` of RAM."""
    notes = []
    period = config.drain_period_ms
    if not config.HasField("drain_period_ms"):
        period = DEFAULT_DRAIN_PERIOD_MS
    elif not MIN_DRAIN_PERIOD_MS <= period <= MAX_DRAIN_PERIOD_MS:
        notes.append(
            f"drain_period_ms {period} is outside [{MIN_DRAIN_PERIOD_MS}, "
            f"{MAX_DRAIN_PERIOD_MS}]: using {DEFAULT_DRAIN_PERIOD_MS}"
        )
        period = DEFAULT_DRAIN_PERIOD_MS
    compact_off = config.HasField("compact_sched") and (
        config.compact_sched.HasField("enabled") and not config.compact_sched.enabled
    )
    return FtracePlan(
        events=tuple(config.ftrace_events),
        buffer_size_kb=buffer_size_kb(
            config.buffer_size_kb, config.buffer_size_lower_bound, phys_bytes, page_size
        ),
        drain_period_ms=period,
        compact_sched=not compact_off,
        disable_generic_events=bool(config.disable_generic_events),
        ignored=tuple(sorted(f.name for f, _ in config.ListFields() if f.name not in IMPLEMENTED)),
        notes=tuple(notes),
    )  # fmt: skip


def buffer_size_kb(requested_kb: int, lower_bound: bool, phys_bytes: int, page_size: int) -> int:
    """Perfetto's ComputeCpuBufferSizeInPages, in KiB (whole pages, at least one)."""
    default_kb = HIGH_RAM_BUFFER_KB if phys_bytes >= HIGH_RAM_BYTES else LOW_RAM_BUFFER_KB
    size_kb = requested_kb
    if requested_kb == 0 or (lower_bound and default_kb > requested_kb):
        size_kb = default_kb
    page_kb = max(page_size // 1024, 1)
    return max(size_kb // page_kb, 1) * page_kb


def resolve_events(
    requested: Iterable[str], available: Mapping[str, Set[str]]
) -> tuple[list[tuple[str, str]], list[str]]:
    """(group, name) pairs to enable, in order without duplicates, and the unknown
    requests. `available` maps each group the instance offers to its event names."""
    resolved: dict[tuple[str, str], None] = {}
    unknown: list[str] = []
    for request in requested:
        group, _, name = request.rpartition("/")
        if not name:
            unknown.append(request)
        elif name == "*":
            found = sorted(available.get(group, ()))
            resolved.update(((group, n), None) for n in found)
            if not found:
                unknown.append(request)
        elif not group:
            groups = sorted(g for g, names in available.items() if name in names)
            if groups:
                resolved[(groups[0], name)] = None
            else:
                unknown.append(request)
        elif name in available.get(group, ()):
            resolved[(group, name)] = None
        else:
            unknown.append(request)
    return list(resolved), unknown
