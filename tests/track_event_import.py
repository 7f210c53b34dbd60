"""A test-side TrackEvent importer: trace_processor's rules for incremental
state, applied to a list of TracePackets (Perfetto's official schema).

Based on google/perfetto:
- docs/reference/synthetic-track-event.md (sequence_flags: the first packet of
  a sequence's state sets SEQ_INCREMENTAL_STATE_CLEARED, packets that depend on
  it set SEQ_NEEDS_INCREMENTAL_STATE; TrackDescriptors define track uuids);
- src/trace_processor/importers/proto/proto_trace_reader.cc (ParsePacket:
  incremental_state_cleared or SEQ_INCREMENTAL_STATE_CLEARED resets the
  sequence's state and makes it valid, else previous_packet_dropped marks it
  lost; a SEQ_NEEDS_INCREMENTAL_STATE packet on a sequence whose state is not
  valid is skipped, counted as packet_skipped_seq_needs_incremental_state_invalid);
- src/trace_processor/importers/proto/packet_sequence_state_builder.h (a
  sequence starts with its state invalid: packets may have been missed before
  the first one read).

- src/trace_processor/importers/proto/track_event_tokenizer.cc and
  packet_sequence_state_generation.h (InternedData entries are kept per
  sequence, in tables per InternedData field keyed by iid, and dropped at each
  clear; TrackEvent.name_iid, category_iids, DebugAnnotation.name_iid and
  LogMessage's iids are looked up there).

Rules stricter than trace_processor, so that a writer's mistake shows up: an
event resolves only if its track was described on its own sequence since that
sequence's last clear (trace_processor resolves track uuids across the whole
trace), and every iid it uses was interned on its sequence since that clear;
the InternedData of a skipped packet is ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
NEEDS = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE


class Outcome(enum.Enum):
    RESOLVED = "resolved"  # imported, on a track described since the last clear
    SKIPPED = "skipped"  # SEQ_NEEDS_INCREMENTAL_STATE on an invalid state
    UNRESOLVED = "unresolved"  # imported, but its track_uuid or an iid is unknown on the sequence


@dataclass(frozen=True)
class LogRecord:
    body: str | None
    prio: int
    file: str | None
    function: str | None
    line: int | None


@dataclass(frozen=True)
class Event:
    """One TrackEvent packet as the importer saw it."""

    index: int  # in the packets given to import_track_events
    outcome: Outcome
    needs_state: bool  # it set SEQ_NEEDS_INCREMENTAL_STATE
    after_clear: bool  # a clear was seen on its sequence before it
    # The event with its interned strings resolved (None: an iid unknown there).
    type: int = 0
    track_uuid: int = 0
    name: str | None = None
    categories: tuple[str | None, ...] = ()
    args: dict[str | None, Any] = field(default_factory=dict)
    flows: tuple[int, ...] = ()
    terminating_flows: tuple[int, ...] = ()
    counter: int | float | None = None
    log: LogRecord | None = None


@dataclass
class SequenceState:
    valid: bool = False  # packet_sequence_state_builder.h: invalid until a clear
    tracks: set[int] = field(default_factory=set)  # described since the last clear
    clears: int = 0
    # InternedData field name -> iid -> entry, since the last clear
    interned: dict[str, dict[int, Any]] = field(default_factory=dict)
    missing: int = 0  # iids looked up and not found (while resolving one event)

    def lookup(self, table: str, iid: int) -> Any:
        entry = self.interned.get(table, {}).get(iid)
        if entry is None:
            self.missing += 1
        return entry

    def intern(self, data: pb.InternedData) -> None:
        for descriptor, entries in data.ListFields():
            table = self.interned.setdefault(descriptor.name, {})
            for entry in entries:
                table[entry.iid] = entry


@dataclass
class Import:
    """What importing found, per trusted_packet_sequence_id."""

    events: dict[int, list[Event]] = field(default_factory=dict)
    sequences: dict[int, SequenceState] = field(default_factory=dict)

    def count(self, outcome: Outcome) -> int:
        return sum(e.outcome is outcome for seq in self.events.values() for e in seq)


def import_track_events(packets: Iterable[pb.TracePacket]) -> Import:
    result = Import()
    for index, p in enumerate(packets):
        seq = p.trusted_packet_sequence_id
        state = result.sequences.setdefault(seq, SequenceState())
        if p.incremental_state_cleared or p.sequence_flags & CLEARED:
            state.valid, state.tracks, state.interned = True, set(), {}
            state.clears += 1
        elif p.previous_packet_dropped:
            state.valid = False
        needs = bool(p.sequence_flags & NEEDS)
        if needs and not state.valid:
            outcome = Outcome.SKIPPED
        else:
            state.intern(p.interned_data)
            if p.HasField("track_descriptor"):
                state.tracks.add(p.track_descriptor.uuid)
                continue
            if not p.HasField("track_event"):
                continue
            outcome = Outcome.RESOLVED
        if p.HasField("track_event"):
            state.missing = 0
            details = resolve(p.track_event, state) if outcome is Outcome.RESOLVED else {}
            if outcome is Outcome.RESOLVED and (
                state.missing or p.track_event.track_uuid not in state.tracks
            ):
                outcome = Outcome.UNRESOLVED
            event = Event(index, outcome, needs, state.clears > 0, **details)
            result.events.setdefault(seq, []).append(event)
    return result


def resolve(e: pb.TrackEvent, state: SequenceState) -> dict[str, Any]:
    """An event's fields with its interned strings looked up on `state`."""
    name = e.name if e.HasField("name") else None
    if e.name_iid:
        name = _name(state, "event_names", e.name_iid)
    categories = [_name(state, "event_categories", iid) for iid in e.category_iids]
    if e.HasField("counter_value"):
        counter: int | float | None = e.counter_value
    elif e.HasField("double_counter_value"):
        counter = e.double_counter_value
    else:
        counter = None
    log = None
    if e.HasField("log_message"):
        m = e.log_message
        loc = state.lookup("source_locations", m.source_location_iid)
        body = state.lookup("log_message_body", m.body_iid)
        log = LogRecord(
            body.body if body else None,
            m.prio,
            loc.file_name if loc else None,
            loc.function_name if loc else None,
            loc.line_number if loc else None,
        )
    args = {_annotation_name(state, a): annotation_value(a) for a in e.debug_annotations}
    return dict(
        type=e.type,
        track_uuid=e.track_uuid,
        name=name,
        categories=tuple(list(e.categories) + categories),
        args=args,
        flows=tuple(e.flow_ids),
        terminating_flows=tuple(e.terminating_flow_ids),
        counter=counter,
        log=log,
    )


def _name(state: SequenceState, table: str, iid: int) -> str | None:
    entry = state.lookup(table, iid)
    return entry.name if entry is not None else None


def _annotation_name(state: SequenceState, a: pb.DebugAnnotation) -> str | None:
    if a.HasField("name"):
        return a.name
    return _name(state, "debug_annotation_names", a.name_iid)


def annotation_value(a: pb.DebugAnnotation) -> Any:
    """A DebugAnnotation's value as Python: scalars, dicts of entries (by their
    `name`), lists of array values; None when it has none."""
    if a.dict_entries:
        return {entry.name: annotation_value(entry) for entry in a.dict_entries}
    if a.array_values:
        return [annotation_value(v) for v in a.array_values]
    kind = a.WhichOneof("value")
    return getattr(a, kind) if kind else None
