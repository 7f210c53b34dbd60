"""Raw ring-buffer pages of one CPU in, one FtraceEventBundle packet out
(Perfetto's CpuReader::ProcessPagesForDataSource, without the reading).

    translator = FtraceTranslator(parse_header_page(hp), formats, compact_sched=True)
    b = translator.bundle(cpu, pages)      # pages: whole pages read from trace_pipe_raw
    writer.write(b.packet)                 # if b.packet; b.pids -> actors.probes_bus

The packet is ``TracePacket { ftrace_events: FtraceEventBundle { cpu, lost_events,
previous_bundle_end_timestamp, event*, compact_sched, error* } }``:

- every record whose event ID has a format becomes ``FtraceEvent { timestamp,
  pid (common_pid), <event>: {...} }`` (actors.core.ftrace_codecs: the fields
  mapped by name onto Perfetto's message for the event, or a GenericFtraceEvent
  when Perfetto has none and generic events are on); timestamps are the
  instance's trace clock in ns ("boot" is CLOCK_BOOTTIME, the trace's default);
- with compact_sched, sched_switch and sched_waking go into CompactSched
  instead, as Perfetto's compact_sched.cc lays it out: parallel packed arrays,
  timestamps as deltas from the previous one of the same kind in the bundle
  (the first from 0), comms as indices into intern_table; prev pid and comm
  of a switch and the waker of a waking are not written (trace_processor
  derives them). It is used only when the kernel's formats have the fields
  and widths that layout assumes (else those events are written in full);
- lost_events is set when a page says events were lost before it
  (RB_MISSED_EVENTS); Bundle.lost_count adds up the counts pages stored;
- previous_bundle_end_timestamp is the last event timestamp of this CPU's
  previous bundle (0 at first), which trace_processor uses to tell where this
  CPU's data is complete;
- bytes that contradict the page layout, records too short for their format,
  __data_loc fields pointing outside their record and records of an event ID
  with no format are skipped and counted (Bundle.errors); page-level problems
  are also written as FtraceError { timestamp of the page, FtraceParseStatus }.
  Nothing here raises on page contents.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from actors.core import ftrace_schema as S
from actors.core.ftrace_codecs import EventCodec, compile_codec, encode
from actors.core.ftrace_format import EventFormat, FieldKind, PageHeader, field_kind
from actors.core.ftrace_pages import ParseStatus, page_records
from actors.core.ftrace_stats import CpuStats, ftrace_stats_packet, parse_cpu_stats
from shm.protozero import LEN, VARINT, tag, varint

__all__ = [
    "Bundle",
    "CpuStats",
    "FtraceTranslator",
    "ftrace_stats_packet",
    "parse_cpu_stats",
]

_U16 = struct.Struct("<H")
_EVENT = tag(S.BUNDLE_EVENT, LEN)
_EV_TS = tag(S.EVENT_TIMESTAMP, VARINT)
_EV_PID = tag(S.EVENT_PID, VARINT)
_COMM_LEN = 16  # TASK_COMM_LEN: what the compact layout assumes


@dataclass
class Bundle:
    packet: bytes = b""  # one TracePacket; b"" if there was nothing to say
    events: int = 0  # events decoded (compact ones included)
    lost: bool = False  # a page said events were lost before it (RB_MISSED_EVENTS)
    lost_count: int = 0  # the counts pages stored (RB_MISSED_STORED); 0 if none did
    pids: set[int] = field(default_factory=set)  # tasks the events named (pid 0, idle, left out)
    renamed: set[int] = field(default_factory=set)  # task_rename / task_newtask pids
    errors: int = 0  # records or pages skipped (see the module docstring)


@dataclass(frozen=True)
class _Compact:
    """Where the compact layout's values sit in a codec's unpacked tuple."""

    switch_id: int  # -1: sched_switch not compact
    switch: tuple[int, int, int, int]  # prev_state, next_pid, next_prio, next_comm
    waking_id: int  # -1: sched_waking not compact
    waking: tuple[int, int, int, int, int]  # pid, target_cpu, prio, comm, common_flags


class FtraceTranslator:
    """Decodes pages with the formats it was given (one per event ID) and keeps,
    per CPU, the end of the previous bundle. Not thread-safe: one per reader."""

    def __init__(
        self,
        header: PageHeader,
        formats: Iterable[EventFormat],
        *,
        compact_sched: bool,
        generic_events: bool = True,
    ) -> None:
        self._header = header
        self._codecs: dict[int, EventCodec] = {}
        self._renames: dict[int, int] = {}  # event ID -> index of its pid field
        for fmt in formats:
            self._add(fmt, generic_events)
        self._compact = _compact_layout(self._codecs) if compact_sched else _NO_COMPACT
        self._previous_end: dict[int, int] = {}

    def _add(self, fmt: EventFormat, generic_events: bool) -> None:
        proto = S.proto_event(fmt.group, fmt.name)
        if proto is None and not generic_events:
            return
        codec = compile_codec(fmt, proto, proto.number if proto else S.EVENT_GENERIC)
        self._codecs[fmt.id] = codec
        if (fmt.group, fmt.name) in (("task", "task_rename"), ("task", "task_newtask")):
            index = codec.index.get("pid", -1)
            if index >= 0:
                self._renames[fmt.id] = index

    @property
    def compact_sched(self) -> bool:
        """Whether sched_switch is written compact (the formats allow it and it was asked)."""
        return self._compact.switch_id >= 0

    def bundle(self, cpu: int, pages: Sequence[bytes]) -> Bundle:
        out = Bundle()
        events: list[bytes] = []
        errors: list[bytes] = []
        compact = _CompactBuffer()
        last_ts = 0
        for page in pages:
            pr = page_records(page, self._header)
            out.lost |= pr.lost
            out.lost_count += pr.lost_count
            if pr.records:
                last_ts = self._records(page, pr.records, out, events, compact)
            if pr.status != ParseStatus.OK:
                out.errors += 1
                errors.append(_error(pr.timestamp, pr.status))
        out.pids.discard(0)
        if events or compact.switch_ts or compact.waking_ts or out.lost or errors:
            out.packet = self._packet(cpu, out.lost, events, compact, errors)
        if last_ts:
            self._previous_end[cpu] = last_ts
        return out

    def _records(
        self, page: bytes, records, out: Bundle, events: list[bytes], compact: _CompactBuffer
    ) -> int:
        """Decode the records of one page into events/compact; the last timestamp written."""
        codecs, renames, layout = self._codecs, self._renames, self._compact
        pids = out.pids
        last_ts = 0
        for ts, start, end in records:
            (event_id,) = _U16.unpack_from(page, start)
            codec = codecs.get(event_id)
            if codec is None or end - start < codec.size:
                out.errors += 1
                continue
            values = codec.unpack(page, start)
            if event_id == layout.switch_id:
                compact.add_switch(ts, values, layout.switch)
                pids.add(values[layout.switch[1]])
            elif event_id == layout.waking_id:
                compact.add_waking(ts, values, layout.waking)
                pids.add(values[layout.waking[0]])
            else:
                body, ok = encode(codec, values, page, start, end)
                if not ok:
                    out.errors += 1
                head = _EV_TS + varint(ts)
                if codec.pid_index >= 0:
                    head += _EV_PID + varint(values[codec.pid_index])
                    pids.add(values[codec.pid_index])
                ev = head + codec.head + varint(len(body)) + body
                events.append(_EVENT + varint(len(ev)) + ev)
                for i in codec.pid_fields:
                    pids.add(values[i])
                rename = renames.get(event_id)
                if rename is not None:
                    out.renamed.add(values[rename])
            last_ts = ts
            out.events += 1
        return last_ts

    def _packet(
        self,
        cpu: int,
        lost: bool,
        events: list[bytes],
        compact: _CompactBuffer,
        errors: list[bytes],
    ) -> bytes:
        head = tag(S.BUNDLE_CPU, VARINT) + varint(cpu)
        if lost:
            head += tag(S.BUNDLE_LOST_EVENTS, VARINT) + b"\x01"
        head += tag(S.BUNDLE_PREVIOUS_END_TIMESTAMP, VARINT) + varint(
            self._previous_end.get(cpu, 0)
        )
        body = b"".join([head, *events, compact.encode(), *errors])
        return tag(S.PACKET_FTRACE_EVENTS, LEN) + varint(len(body)) + body


def _error(timestamp: int, status: int) -> bytes:
    body = (
        tag(S.ERROR_TIMESTAMP, VARINT)
        + varint(timestamp)
        + tag(S.ERROR_STATUS, VARINT)
        + varint(status)
    )
    return tag(S.BUNDLE_ERROR, LEN) + varint(len(body)) + body


_NO_COMPACT = _Compact(-1, (0, 0, 0, 0), -1, (0, 0, 0, 0, 0))


def _compact_layout(codecs: dict[int, EventCodec]) -> _Compact:
    """Where compact_sched reads its values, if the formats fit its layout
    (Perfetto's ValidateFormatForCompactSched); sched_waking is compact only
    when sched_switch is (its waker is derived from the switches)."""
    by_name = {(c.fmt.group, c.fmt.name): (i, c) for i, c in codecs.items()}
    switch = by_name.get(("sched", "sched_switch"))
    waking = by_name.get(("sched", "sched_waking"))
    switch_at = _layout(switch[1], _SWITCH_FIELDS) if switch else None
    if switch is None or switch_at is None:
        return _NO_COMPACT
    waking_at = _layout(waking[1], _WAKING_FIELDS) if waking else None
    if waking is None or waking_at is None:
        return _Compact(switch[0], switch_at, -1, _NO_COMPACT.waking)  # type: ignore[arg-type]
    return _Compact(switch[0], switch_at, waking[0], waking_at)  # type: ignore[arg-type]


# (field name, accepted kinds, accepted sizes)
_SWITCH_FIELDS = (
    ("prev_state", {FieldKind.INT}, (4, 8)),
    ("next_pid", {FieldKind.PID}, (4,)),
    ("next_prio", {FieldKind.INT}, (4,)),
    ("next_comm", {FieldKind.FIXED_CSTRING}, (_COMM_LEN,)),
)
_WAKING_FIELDS = (
    ("pid", {FieldKind.PID}, (4,)),
    ("target_cpu", {FieldKind.INT}, (4,)),
    ("prio", {FieldKind.INT}, (4,)),
    ("comm", {FieldKind.FIXED_CSTRING}, (_COMM_LEN,)),
    ("common_flags", {FieldKind.UINT}, (1,)),
)


def _layout(codec: EventCodec, wanted) -> tuple[int, ...] | None:
    out = []
    for name, kinds, sizes in wanted:
        f = codec.fmt.field(name)
        if (
            f is None
            or name not in codec.index
            or field_kind(f) not in kinds
            or f.size not in sizes
        ):
            return None
        out.append(codec.index[name])
    return tuple(out)


class _CompactBuffer:
    """CompactSched of one bundle being built (compact_sched.h's buffers)."""

    def __init__(self) -> None:
        self.interned: dict[bytes, int] = {}
        self.switch_ts: list[int] = []
        self.switch: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
        self.waking_ts: list[int] = []
        self.waking: tuple[list[int], ...] = ([], [], [], [], [])
        self._last_switch = self._last_waking = 0

    def _intern(self, comm: bytes) -> int:
        n = comm.find(0)
        if n >= 0:
            comm = comm[:n]
        return self.interned.setdefault(comm, len(self.interned))

    def add_switch(self, ts: int, values: tuple, at: tuple[int, int, int, int]) -> None:
        self.switch_ts.append(ts - self._last_switch)
        self._last_switch = ts
        prev_state, next_pid, next_prio, comm = self.switch
        prev_state.append(values[at[0]])
        next_pid.append(values[at[1]])
        next_prio.append(values[at[2]])
        comm.append(self._intern(values[at[3]]))

    def add_waking(self, ts: int, values: tuple, at: tuple[int, ...]) -> None:
        self.waking_ts.append(ts - self._last_waking)
        self._last_waking = ts
        pid, target_cpu, prio, comm, flags = self.waking
        pid.append(values[at[0]])
        target_cpu.append(values[at[1]])
        prio.append(values[at[2]])
        comm.append(self._intern(values[at[3]]))
        flags.append(values[at[4]])

    def encode(self) -> bytes:
        if not self.switch_ts and not self.waking_ts:
            return b""
        intern = tag(S.COMPACT_INTERN_TABLE, LEN)
        out = [intern + varint(len(c)) + c for c in self.interned]
        if self.switch_ts:
            prev_state, next_pid, next_prio, comm = self.switch
            out += [
                _packed(S.COMPACT_SWITCH_TIMESTAMP, self.switch_ts),
                _packed(S.COMPACT_SWITCH_NEXT_PID, next_pid),
                _packed(S.COMPACT_SWITCH_PREV_STATE, prev_state),
                _packed(S.COMPACT_SWITCH_NEXT_PRIO, next_prio),
                _packed(S.COMPACT_SWITCH_NEXT_COMM_INDEX, comm),
            ]
        if self.waking_ts:
            pid, target_cpu, prio, comm, flags = self.waking
            out += [
                _packed(S.COMPACT_WAKING_TIMESTAMP, self.waking_ts),
                _packed(S.COMPACT_WAKING_PID, pid),
                _packed(S.COMPACT_WAKING_TARGET_CPU, target_cpu),
                _packed(S.COMPACT_WAKING_PRIO, prio),
                _packed(S.COMPACT_WAKING_COMM_INDEX, comm),
                _packed(S.COMPACT_WAKING_COMMON_FLAGS, flags),
            ]
        body = b"".join(out)
        return tag(S.BUNDLE_COMPACT_SCHED, LEN) + varint(len(body)) + body


def _packed(number: int, values: list[int]) -> bytes:
    body = b"".join(map(varint, values))
    return tag(number, LEN) + varint(len(body)) + body
