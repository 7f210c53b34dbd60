"""TrackEvents: what custom data sources write for ui.perfetto.dev."""

from __future__ import annotations

import os

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.track_event import TrackEvents
from tests.test_writer import Rig

TE = pb.TrackEvent


def written(rig: Rig, writer) -> list[pb.TracePacket]:
    writer.flush()
    return [pb.TracePacket.FromString(p) for p in rig.packets(writer)[0]]


def test_slices_instants_and_counters_on_described_tracks():
    rig = Rig()
    w = rig.arbiter.create_trace_writer(1)
    events = TrackEvents(w, process_name="ingest", thread_name="worker", counters=("depth",))
    with events.slice("outer"):
        with events.slice("inner"):
            events.instant("tick")
    events.counter("depth", 4)
    events.counter("lag", 9)  # described when first used
    packets = written(rig, w)
    proc, thread, depth = (p.track_descriptor for p in packets[:3])
    assert packets[0].sequence_flags == pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    assert [p.sequence_flags for p in packets[1:3]] == [0, 0]
    # Every event refers to tracks described before it on its sequence.
    needs = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
    assert all(p.sequence_flags == needs for p in packets if p.HasField("track_event"))
    assert (proc.process.pid, proc.process.process_name) == (os.getpid(), "ingest")
    assert thread.parent_uuid == proc.uuid and thread.thread.thread_name == "worker"
    assert depth.HasField("counter") and depth.name == "depth"
    kinds = [
        (p.track_event.type, p.track_event.name) for p in packets[3:] if p.HasField("track_event")
    ]
    assert kinds == [
        (TE.TYPE_SLICE_BEGIN, "outer"),
        (TE.TYPE_SLICE_BEGIN, "inner"),
        (TE.TYPE_INSTANT, "tick"),
        (TE.TYPE_SLICE_END, ""),
        (TE.TYPE_SLICE_END, ""),
        (TE.TYPE_COUNTER, ""),
        (TE.TYPE_COUNTER, ""),
    ]
    lag = next(p.track_descriptor for p in packets[3:] if p.HasField("track_descriptor"))
    counters = [p.track_event for p in packets if p.track_event.type == TE.TYPE_COUNTER]
    assert [(c.track_uuid, c.counter_value) for c in counters] == [(depth.uuid, 4), (lag.uuid, 9)]
    assert len({proc.uuid, thread.uuid, depth.uuid, lag.uuid}) == 4
    stamps = [p.timestamp for p in packets]
    assert stamps == sorted(stamps)


def test_reset_describes_the_tracks_again():
    rig = Rig()
    w = rig.arbiter.create_trace_writer(1)
    events = TrackEvents(w, process_name="p")
    events.instant("a")
    events.reset()
    events.instant("b")
    packets = written(rig, w)
    cleared = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    flagged = [i for i, p in enumerate(packets) if p.sequence_flags == cleared]
    assert flagged == [0, 3]  # descriptors, "a", descriptors again, "b"
    assert [p.HasField("track_descriptor") for p in packets] == [True, True, False] * 2
    # The same tracks, described again.
    assert [p.track_descriptor for p in packets[3:5]] == [p.track_descriptor for p in packets[:2]]
