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

One rule is stricter than trace_processor, which resolves track uuids across
the whole trace: here an event resolves only if its track was described on its
own sequence since that sequence's last clear, so a writer that relied on
another sequence's (or an overwritten) descriptor shows up.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
NEEDS = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE


class Outcome(enum.Enum):
    RESOLVED = "resolved"  # imported, on a track described since the last clear
    SKIPPED = "skipped"  # SEQ_NEEDS_INCREMENTAL_STATE on an invalid state
    UNRESOLVED = "unresolved"  # imported, but its track_uuid is unknown on the sequence


@dataclass(frozen=True)
class Event:
    """One TrackEvent packet as the importer saw it."""

    index: int  # in the packets given to import_track_events
    outcome: Outcome
    needs_state: bool  # it set SEQ_NEEDS_INCREMENTAL_STATE
    after_clear: bool  # a clear was seen on its sequence before it


@dataclass
class SequenceState:
    valid: bool = False  # packet_sequence_state_builder.h: invalid until a clear
    tracks: set[int] = field(default_factory=set)  # described since the last clear
    clears: int = 0


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
            state.valid, state.tracks = True, set()
            state.clears += 1
        elif p.previous_packet_dropped:
            state.valid = False
        needs = bool(p.sequence_flags & NEEDS)
        if needs and not state.valid:
            outcome = Outcome.SKIPPED
        elif p.HasField("track_descriptor"):
            state.tracks.add(p.track_descriptor.uuid)
            continue
        elif not p.HasField("track_event"):
            continue
        elif p.track_event.track_uuid in state.tracks:
            outcome = Outcome.RESOLVED
        else:
            outcome = Outcome.UNRESOLVED
        if p.HasField("track_event"):
            event = Event(index, outcome, needs, state.clears > 0)
            result.events.setdefault(seq, []).append(event)
    return result
