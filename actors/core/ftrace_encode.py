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
- Bundle.pids: the common_pid and every pid_t field of the events
  (sched_switch prev/next, sched_waking pid, task_newtask pid, ...), pid 0
  (the idle task) left out; Bundle.renamed: the pid of task_rename and
  task_newtask events, whose names changed (for linux.process_stats);
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
    pids: set[int] = field(default_factory=set)  # tasks the events named (pid > 0 only)
    renamed: set[int] = field(default_factory=set)  # task_rename / task_newtask pids
    errors: int = 0  # records or pages skipped (see the module docstring)


@dataclass(frozen=True)
class _Compact:
    """Where the compact layout's values sit in a codec's unpacked tuple."""

    switch_id: int  # -1: sched_switch not compact
    switch: tuple[int, ...]  # prev_state, next_pid, next_prio, next_comm, common_pid
    waking_id: int  # -1: sched_waking not compact
    waking: tuple[int, ...]  # pid, target_cpu, prio, comm, common_flags


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
                last_ts = self._records(page, pr.records, out, events, compact) or last_ts
            if pr.status != ParseStatus.OK:
                out.errors += 1
                errors.append(_error(pr.timestamp, pr.status))
        out.pids |= compact.pids(self._compact)
        # pid 0 is the idle task (no /proc entry); others below 1 come only from bad bytes
        out.pids = {pid for pid in out.pids if pid > 0}
        out.renamed = {pid for pid in out.renamed if pid > 0}
        if events or compact.switches or compact.wakings or out.lost or errors:
            out.packet = self._packet(cpu, out.lost, events, compact, errors)
        if last_ts:
            self._previous_end[cpu] = last_ts
        return out

    def _records(
        self, page: bytes, records, out: Bundle, events: list[bytes], compact: _CompactBuffer
    ) -> int:
        """Decode the records of one page into events/compact; the last timestamp written."""
        codecs, renames, layout = self._codecs, self._renames, self._compact
        switch_id, waking_id = layout.switch_id, layout.waking_id
        pids = out.pids
        last_ts = decoded = 0
        for ts, start, end in records:
            (event_id,) = _U16.unpack_from(page, start)
            codec = codecs.get(event_id)
            if codec is None or end - start < codec.size:
                out.errors += 1
                continue
            values = codec.unpack(page, start)
            last_ts = ts
            decoded += 1
            if event_id == switch_id:
                compact.switches.append((ts, values))
                continue
            if event_id == waking_id:
                compact.wakings.append((ts, values))
                continue
            fast = codec.fast
            if fast is not None:
                body, ok = fast(values, page, start, end)
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
        out.events += decoded
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
        body = b"".join([head, *events, compact.encode(self._compact), *errors])
        return tag(S.PACKET_FTRACE_EVENTS, LEN) + varint(len(body)) + body


def _error(timestamp: int, status: int) -> bytes:
    body = (
        tag(S.ERROR_TIMESTAMP, VARINT)
        + varint(timestamp)
        + tag(S.ERROR_STATUS, VARINT)
        + varint(status)
    )
    return tag(S.BUNDLE_ERROR, LEN) + varint(len(body)) + body


_NO_COMPACT = _Compact(-1, (0, 0, 0, 0, 0), -1, (0, 0, 0, 0, 0))


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
        return _Compact(switch[0], switch_at, -1, _NO_COMPACT.waking)
    return _Compact(switch[0], switch_at, waking[0], waking_at)


# (field name, accepted kinds, accepted sizes)
_SWITCH_FIELDS = (
    ("prev_state", {FieldKind.INT}, (4, 8)),
    ("next_pid", {FieldKind.PID}, (4,)),
    ("next_prio", {FieldKind.INT}, (4,)),
    ("next_comm", {FieldKind.FIXED_CSTRING}, (_COMM_LEN,)),
    ("common_pid", {FieldKind.COMMON_PID}, (4,)),  # not written; for Bundle.pids
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
    """CompactSched of one bundle being built: the (timestamp, unpacked values) of
    its switches and wakings, laid out into compact_sched.h's arrays at the end
    (one comprehension per array costs less than appends per event)."""

    def __init__(self) -> None:
        self.switches: list[tuple[int, tuple]] = []
        self.wakings: list[tuple[int, tuple]] = []

    def pids(self, layout: _Compact) -> set[int]:
        """The pids switched from and to, and the woken pids."""
        next_pid, prev_pid, woken = layout.switch[1], layout.switch[4], layout.waking[0]
        switched = {v[next_pid] for _, v in self.switches} | {v[prev_pid] for _, v in self.switches}
        return switched | {v[woken] for _, v in self.wakings}

    def encode(self, layout: _Compact) -> bytes:
        if not self.switches and not self.wakings:
            return b""
        interned: dict[bytes, int] = {}
        out = [_packed_sched(self.switches, layout.switch, _SWITCH_ARRAYS, interned)]
        out.append(_packed_sched(self.wakings, layout.waking, _WAKING_ARRAYS, interned))
        intern = tag(S.COMPACT_INTERN_TABLE, LEN)
        table = [intern + varint(len(c)) + c for c in interned]
        body = b"".join([*table, *out])
        return tag(S.BUNDLE_COMPACT_SCHED, LEN) + varint(len(body)) + body


# The arrays of each kind after its timestamps, in Perfetto's order, as (field
# number, position in the layout tuple, is the comm).
_SWITCH_ARRAYS = (
    (S.COMPACT_SWITCH_NEXT_PID, 1, False),
    (S.COMPACT_SWITCH_PREV_STATE, 0, False),
    (S.COMPACT_SWITCH_NEXT_PRIO, 2, False),
    (S.COMPACT_SWITCH_NEXT_COMM_INDEX, 3, True),
)
_WAKING_ARRAYS = (
    (S.COMPACT_WAKING_PID, 0, False),
    (S.COMPACT_WAKING_TARGET_CPU, 1, False),
    (S.COMPACT_WAKING_PRIO, 2, False),
    (S.COMPACT_WAKING_COMM_INDEX, 3, True),
    (S.COMPACT_WAKING_COMMON_FLAGS, 4, False),
)


def _packed_sched(
    items: list[tuple[int, tuple]], at: tuple[int, ...], arrays, interned: dict[bytes, int]
) -> bytes:
    """One kind's arrays: timestamps as deltas (the first from 0), then each
    value array; comms become indices into `interned` (shared by both kinds)."""
    if not items:
        return b""
    stamps = [ts for ts, _ in items]
    ts_field = (
        S.COMPACT_SWITCH_TIMESTAMP if arrays is _SWITCH_ARRAYS else S.COMPACT_WAKING_TIMESTAMP
    )
    out = [_packed(ts_field, [b - a for a, b in zip([0, *stamps[:-1]], stamps, strict=True)])]
    for number, pos, is_comm in arrays:
        i = at[pos]
        if is_comm:
            comms = [v[i].partition(b"\0")[0] for _, v in items]
            values = [interned.setdefault(c, len(interned)) for c in comms]
        else:
            values = [v[i] for _, v in items]
        out.append(_packed(number, values))
    return b"".join(out)


def _packed(number: int, values: list[int]) -> bytes:
    body = b"".join(map(varint, values))
    return tag(number, LEN) + varint(len(body)) + body
