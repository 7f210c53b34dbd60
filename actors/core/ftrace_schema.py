"""Perfetto's field numbers for ftrace packets, and its FtraceEvent schema.

The packet-level numbers are hard-coded below (tests/test_ftrace_core.py checks
each against Perfetto's descriptor). The per-event messages (FtraceEvent has a
field per kernel event Perfetto knows, ~600) are read from the descriptor of
perfetto_trace_pb2 on first use (`proto_events()`), so the probes process pays
for that import once, at setup, and applications never do.

Perfetto names an event's FtraceEvent field after the event ("sched_switch"),
or "GROUP_NAME" where vendor groups reuse a name ("mali_tracing_mark_write");
`proto_event(group, name)` tries the second first, then the first (every entry of
Perfetto's event_info.cc table resolves so).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

# TracePacket
PACKET_TIMESTAMP = 8
PACKET_FTRACE_EVENTS = 1
PACKET_FTRACE_STATS = 34

# FtraceEventBundle
BUNDLE_CPU = 1
BUNDLE_EVENT = 2
BUNDLE_LOST_EVENTS = 3
BUNDLE_COMPACT_SCHED = 4
BUNDLE_ERROR = 8
BUNDLE_PREVIOUS_END_TIMESTAMP = 10
ERROR_TIMESTAMP = 1  # FtraceEventBundle.FtraceError
ERROR_STATUS = 2

# FtraceEventBundle.CompactSched (all repeated, packed but the intern table)
COMPACT_INTERN_TABLE = 5
COMPACT_SWITCH_TIMESTAMP = 1
COMPACT_SWITCH_PREV_STATE = 2
COMPACT_SWITCH_NEXT_PID = 3
COMPACT_SWITCH_NEXT_PRIO = 4
COMPACT_SWITCH_NEXT_COMM_INDEX = 6
COMPACT_WAKING_TIMESTAMP = 7
COMPACT_WAKING_PID = 8
COMPACT_WAKING_TARGET_CPU = 9
COMPACT_WAKING_PRIO = 10
COMPACT_WAKING_COMM_INDEX = 11
COMPACT_WAKING_COMMON_FLAGS = 12

# FtraceEvent
EVENT_TIMESTAMP = 1
EVENT_PID = 2
EVENT_GENERIC = 327
GENERIC_EVENT_NAME = 1  # GenericFtraceEvent
GENERIC_FIELD = 2
GENERIC_FIELD_NAME = 1  # GenericFtraceEvent.Field
GENERIC_FIELD_STR = 3
GENERIC_FIELD_INT = 4
GENERIC_FIELD_UINT = 5

# FtraceStats
STATS_PHASE = 1
STATS_CPU_STATS = 2
STATS_ATRACE_ERRORS = 5
STATS_UNKNOWN_EVENTS = 6
STATS_FAILED_EVENTS = 7
PHASE_START_OF_TRACE = 1
PHASE_END_OF_TRACE = 2
# FtraceCpuStats
CPU_STATS_CPU = 1
CPU_STATS_ENTRIES = 2
CPU_STATS_OVERRUN = 3
CPU_STATS_COMMIT_OVERRUN = 4
CPU_STATS_BYTES_READ = 5
CPU_STATS_OLDEST_EVENT_TS = 6
CPU_STATS_NOW_TS = 7
CPU_STATS_DROPPED_EVENTS = 8
CPU_STATS_READ_EVENTS = 9

# descriptor field types (google.protobuf.descriptor.FieldDescriptor.TYPE_*)
TYPE_INT64 = 3
TYPE_UINT64 = 4
TYPE_INT32 = 5
TYPE_STRING = 9
TYPE_BYTES = 12
TYPE_UINT32 = 13


@dataclass(frozen=True)
class ProtoField:
    number: int
    type: int  # TYPE_*
    repeated: bool


@dataclass(frozen=True)
class ProtoEvent:
    """The FtraceEvent field of one kernel event and its message's fields by name."""

    number: int
    fields: dict[str, ProtoField]


@cache
def proto_events() -> dict[str, ProtoEvent]:
    """Every message field of FtraceEvent's `event` oneof, by field name."""
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    out = {}
    for f in pb.FtraceEvent.DESCRIPTOR.fields:
        msg = f.message_type
        if msg is None or f.number == EVENT_GENERIC:
            continue
        fields = {x.name: ProtoField(x.number, x.type, x.is_repeated) for x in msg.fields}
        out[f.name] = ProtoEvent(f.number, fields)
    return out


def proto_event(group: str, name: str) -> ProtoEvent | None:
    """The FtraceEvent field of kernel event GROUP/NAME; None if Perfetto has none
    (the event is then written as a GenericFtraceEvent)."""
    events = proto_events()
    return events.get(f"{group}_{name}") or events.get(name)
