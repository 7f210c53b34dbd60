"""A trace as a user sees it in ui.perfetto.dev, for tests: processes, tracks,
slices with their names, categories, args and flows, instants, counters.

Decoded with Perfetto's official schema and trace processor's rules, written
apart from the SDK's encoder so that a test does not check the encoder with
itself: interned names (InternedData event_names, event_categories,
debug_annotation_names) are per trusted sequence and start again at
SEQ_INCREMENTAL_STATE_CLEARED; a TrackEvent's name is `name` or its `name_iid`,
its categories `categories` or `category_iids`; a slice is a SLICE_BEGIN closed
by the next SLICE_END on the same track (a stack per track).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
TE = pb.TrackEvent


@dataclass
class Track:
    uuid: int
    name: str = ""
    parent: int = 0
    pid: int = 0  # for process and thread tracks
    tid: int = 0  # for thread tracks
    kind: str = "track"  # process, thread, counter or track


@dataclass
class Event:
    type: int
    ts: int
    track: int
    pid: int  # the trusted pid of the writer
    name: str
    categories: tuple[str, ...]
    args: dict[str, Any]
    flows: tuple[int, ...]
    terminating_flows: tuple[int, ...]
    value: float | None = None  # counters
    log_body: str = ""


@dataclass
class Slice:
    name: str
    categories: tuple[str, ...]
    track: int
    pid: int
    start: int
    end: int
    args: dict[str, Any]
    flows: tuple[int, ...]
    terminating_flows: tuple[int, ...]

    @property
    def dur_ms(self) -> float:
        return (self.end - self.start) / 1e6


@dataclass
class Timeline:
    tracks: dict[int, Track] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    slices: list[Slice] = field(default_factory=list)
    unclosed: int = 0  # slice begins with no end
    unmatched_ends: int = 0
    unresolved: int = 0  # an interned id the sequence never defined
    stats: pb.TraceStats | None = None
    dropped_marks: int = 0  # packets flagged previous_packet_dropped

    def process_names(self) -> dict[int, str]:
        return {t.pid: t.name for t in self.tracks.values() if t.kind == "process"}

    def slices_named(self, name: str) -> list[Slice]:
        return [s for s in self.slices if s.name == name]


def _annotation_value(a: pb.DebugAnnotation, names: dict[int, str]) -> Any:
    kind = a.WhichOneof("value")
    if kind is not None:
        return getattr(a, kind)
    if a.dict_entries:
        return {_annotation_name(e, names): _annotation_value(e, names) for e in a.dict_entries}
    if a.array_values:
        return [_annotation_value(e, names) for e in a.array_values]
    return None


def _annotation_name(a: pb.DebugAnnotation, names: dict[int, str]) -> str:
    return a.name if a.HasField("name") else names.get(a.name_iid, f"?{a.name_iid}")


@dataclass
class _Interned:
    names: dict[int, str] = field(default_factory=dict)
    categories: dict[int, str] = field(default_factory=dict)
    arg_names: dict[int, str] = field(default_factory=dict)
    bodies: dict[int, str] = field(default_factory=dict)

    def add(self, d: pb.InternedData) -> None:
        self.names.update((e.iid, e.name) for e in d.event_names)
        self.categories.update((e.iid, e.name) for e in d.event_categories)
        self.arg_names.update((e.iid, e.name) for e in d.debug_annotation_names)
        self.bodies.update((e.iid, e.body) for e in d.log_message_body)


def decode(trace: pb.Trace) -> Timeline:
    t = Timeline()
    interned: dict[int, _Interned] = defaultdict(_Interned)
    for p in trace.packet:
        if p.HasField("trace_stats"):
            t.stats = p.trace_stats
        t.dropped_marks += p.previous_packet_dropped
        seq = p.trusted_packet_sequence_id
        if p.sequence_flags & CLEARED or p.incremental_state_cleared:
            interned[seq] = _Interned()
        if p.HasField("interned_data"):
            interned[seq].add(p.interned_data)
        if p.HasField("track_descriptor"):
            _add_track(t, p.track_descriptor)
        if p.HasField("track_event"):
            t.events.append(_event(t, p, interned[seq]))
    _pair_slices(t)
    return t


def _add_track(t: Timeline, d: pb.TrackDescriptor) -> None:
    track = Track(d.uuid, d.name, d.parent_uuid)
    if d.HasField("process"):
        track.kind, track.pid, track.name = "process", d.process.pid, d.process.process_name
    elif d.HasField("thread"):
        track.kind, track.pid, track.tid = "thread", d.thread.pid, d.thread.tid
        track.name = d.thread.thread_name
    elif d.HasField("counter"):
        track.kind = "counter"
    t.tracks[d.uuid] = track


def _event(t: Timeline, p: pb.TracePacket, i: _Interned) -> Event:
    e = p.track_event
    if e.HasField("name_iid"):
        name = i.names.get(e.name_iid)
        if name is None:
            t.unresolved += 1
            name = f"?{e.name_iid}"
    else:
        name = e.name
    cats = tuple(e.categories) + tuple(i.categories.get(c, f"?{c}") for c in e.category_iids)
    t.unresolved += sum(c not in i.categories for c in e.category_iids)
    args = {_annotation_name(a, i.arg_names): _annotation_value(a, i.arg_names)
            for a in e.debug_annotations}  # fmt: skip
    value: float | None = None
    if e.HasField("counter_value"):
        value = e.counter_value
    elif e.HasField("double_counter_value"):
        value = e.double_counter_value
    body = i.bodies.get(e.log_message.body_iid, "") if e.HasField("log_message") else ""
    return Event(e.type, p.timestamp, e.track_uuid, p.trusted_pid, name, cats, args,
                 tuple(e.flow_ids), tuple(e.terminating_flow_ids), value, body)  # fmt: skip


def _pair_slices(t: Timeline) -> None:
    open_: dict[int, list[Event]] = defaultdict(list)
    for e in sorted(t.events, key=lambda e: e.ts):
        if e.type == TE.TYPE_SLICE_BEGIN:
            open_[e.track].append(e)
        elif e.type == TE.TYPE_SLICE_END:
            if not open_[e.track]:
                t.unmatched_ends += 1
                continue
            b = open_[e.track].pop()
            t.slices.append(Slice(b.name, b.categories, b.track, b.pid, b.ts, e.ts, b.args,
                                  b.flows, b.terminating_flows))  # fmt: skip
    t.unclosed = sum(len(v) for v in open_.values())


def load(path: Path) -> Timeline:
    return decode(pb.Trace.FromString(path.read_bytes()))
