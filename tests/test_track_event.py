"""TrackEventSequence and TrackEvents: what the SDK and custom data sources
write, read back with the official schema and trace_processor's rules for
interning (tests/track_event_import.py)."""

from __future__ import annotations

import enum
import itertools
import math
import os

from hypothesis import given
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.track_event import TrackEvents, TrackEventSequence, flow_id
from actors.track_event_encoding import MAX_DEPTH
from shm.writer import BufferExhaustedPolicy
from tests.test_writer import Rig
from tests.track_event_import import Event, LogRecord, Outcome, import_track_events

TE = pb.TrackEvent
CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
NEEDS = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE


def written(rig: Rig, writer) -> list[pb.TracePacket]:
    writer.flush()
    packets = [pb.TracePacket.FromString(p) for p in rig.packets(writer)[0]]
    for p in packets:
        p.trusted_packet_sequence_id = 7  # as the service stamps them on read-back
    return packets


def events_of(packets: list[pb.TracePacket]) -> list[Event]:
    imported = import_track_events(packets)
    assert imported.count(Outcome.SKIPPED) == imported.count(Outcome.UNRESOLVED) == 0
    return imported.events.get(7, [])


class Clock:
    def __init__(self) -> None:
        self.now = itertools.count(1000, 10)

    def __call__(self) -> int:
        return next(self.now)


def sequence(rig: Rig, **kw) -> tuple[TrackEventSequence, object]:
    w = rig.arbiter.create_trace_writer(1, kw.pop("policy", BufferExhaustedPolicy.DROP))
    seq = TrackEventSequence(
        w, Clock(), pid=4242, tid=77, process_name="app", thread_name="main", **kw
    )
    return seq, w


# -- TrackEventSequence ---------------------------------------------------------------------


def test_names_categories_args_and_flows_come_back_resolved():
    rig = Rig()
    seq, w = sequence(rig)
    args = {"n": 3, "big": 2**63, "huge": 2**70, "neg": -5, "f": 1.5, "ok": True,
            "s": "x", "none": None, "nested": {"a": [1, "b", {"c": 2.0}]}}  # fmt: skip
    seq.begin("decode", "io,net", args=args, flows=[flow_id("job-1")])
    seq.instant("tick", "io", terminating_flows=[flow_id("job-1"), 99])
    seq.end()
    seq.begin("decode", "io,net")  # cached: interned names only by iid
    seq.end()
    events = events_of(written(rig, w))
    begin, tick, end, again, _ = events
    assert (begin.type, begin.name) == (TE.TYPE_SLICE_BEGIN, "decode")
    assert begin.categories == ("io", "net")
    assert begin.args == {**args, "huge": str(2**70), "none": "None"}
    assert begin.flows == (flow_id("job-1"),) and tick.terminating_flows == (flow_id("job-1"), 99)
    assert (tick.type, tick.name, tick.categories) == (TE.TYPE_INSTANT, "tick", ("io",))
    assert (end.type, end.name, end.categories) == (TE.TYPE_SLICE_END, None, ())
    assert (again.name, again.categories, again.args) == ("decode", ("io", "net"), {})
    assert {e.track_uuid for e in events} == {seq.thread_track}
    # Interned once: the second begin carries no InternedData.
    packets = written(rig, w)
    with_names = [p for p in packets if p.interned_data.event_names]
    assert len(with_names) == 2  # "decode" and "tick"


class Index:
    """An integer type that is no int (numpy's integers are)."""

    def __index__(self) -> int:
        return 5


def test_arg_types_survive_as_the_schema_types():
    rig = Rig()
    seq, w = sequence(rig)
    seq.instant("e", "c", args={"i": -1, "u": 2**64 - 1, "d": math.inf, "b": False})
    seq.instant("e", "c", args={"x": Index()})
    seq.counter("n", Index())
    seq.counter("n", True)  # not an integer type: a bool is a double here, as float() says
    first, second, count, flag = [p for p in written(rig, w) if p.HasField("track_event")]
    kinds = {a.WhichOneof("value") for a in first.track_event.debug_annotations}
    assert kinds == {"int_value", "uint_value", "double_value", "bool_value"}
    assert second.track_event.debug_annotations[0].int_value == 5
    assert count.track_event.counter_value == 5 and flag.track_event.double_counter_value == 1.0


def test_process_and_thread_tracks_are_described_first():
    rig = Rig()
    seq, w = sequence(rig)
    seq.instant("a", "c")
    packets = written(rig, w)
    proc, thread = (p.track_descriptor for p in packets[:2])
    assert [p.sequence_flags for p in packets] == [CLEARED, 0, NEEDS]
    assert (proc.uuid, proc.process.pid, proc.process.process_name) == (
        seq.process_track, 4242, "app")  # fmt: skip
    assert (thread.uuid, thread.parent_uuid) == (seq.thread_track, seq.process_track)
    assert (thread.thread.pid, thread.thread.tid, thread.thread.thread_name) == (4242, 77, "main")
    assert [p.timestamp for p in packets] == sorted(p.timestamp for p in packets)


def test_counters_with_units_on_process_tracks():
    rig = Rig()
    seq, w = sequence(rig)
    seq.counter("depth", 3, unit="count")
    seq.counter("load", 0.5, unit="%")
    seq.counter("depth", -4)
    seq.counter("lat", 7, unit="ns")
    packets = written(rig, w)
    tracks = {p.track_descriptor.name: p.track_descriptor for p in packets[2:]
              if p.HasField("track_descriptor")}  # fmt: skip
    assert tracks["depth"].counter.unit == pb.CounterDescriptor.UNIT_COUNT
    assert tracks["lat"].counter.unit == pb.CounterDescriptor.UNIT_TIME_NS
    assert tracks["load"].counter.unit_name == "%"
    assert {t.parent_uuid for t in tracks.values()} == {seq.process_track}
    values = [(e.track_uuid, e.counter) for e in events_of(packets)]
    uuid = {name: t.uuid for name, t in tracks.items()}
    assert values == [
        (uuid["depth"], 3), (uuid["load"], 0.5), (uuid["depth"], -4), (uuid["lat"], 7)]  # fmt: skip
    # The same name is the same track in every thread of the process.
    other = TrackEventSequence(rig.arbiter.create_trace_writer(1), Clock(), pid=4242, tid=78,
                               process_name="app", thread_name="t2")  # fmt: skip
    assert other.counter_track("depth") == uuid["depth"]


def test_log_messages_resolve_body_priority_and_location():
    rig = Rig()
    seq, w = sequence(rig)
    seq.log("disk full", 6, "app.py", "save", 42)
    seq.log("disk full", 6, "app.py", "save", 42)  # interned: ids only
    seq.log("retry", 4, "app.py", "save", 43, category="app", name="WARNING")
    events = events_of(written(rig, w))
    assert [e.log for e in events] == [
        LogRecord("disk full", 6, "app.py", "save", 42),
        LogRecord("disk full", 6, "app.py", "save", 42),
        LogRecord("retry", 4, "app.py", "save", 43),
    ]
    assert [(e.type, e.name, e.categories) for e in events] == [
        (TE.TYPE_INSTANT, "log", ("log",)), (TE.TYPE_INSTANT, "log", ("log",)),
        (TE.TYPE_INSTANT, "WARNING", ("app",)),
    ]  # fmt: skip


def test_async_tracks_are_named_and_described_again_until_forgotten():
    rig = Rig()
    seq, w = sequence(rig)
    seq.instant("first", "c")
    a, b = seq.async_track("task a"), seq.async_track("task b")
    assert len({a, b, seq.thread_track, seq.process_track}) == 4
    seq.begin("step", "c", track=a)
    seq.begin("step", "c", track=b)
    seq.end(track=a)
    w.incremental_state_invalid = True  # a clear
    seq.forget_track(a)
    seq.end(track=b)
    packets = written(rig, w)
    described = [(p.track_descriptor.uuid, p.track_descriptor.name, p.track_descriptor.parent_uuid)
                 for p in packets if p.HasField("track_descriptor")]  # fmt: skip
    assert described[2:4] == [(a, "task a", seq.process_track), (b, "task b", seq.process_track)]
    assert described[4:] == [(seq.process_track, "", 0), (seq.thread_track, "", seq.process_track),
                             (b, "task b", seq.process_track)]  # fmt: skip
    events = events_of(packets)
    assert [(e.type, e.track_uuid) for e in events[1:]] == [
        (TE.TYPE_SLICE_BEGIN, a), (TE.TYPE_SLICE_BEGIN, b), (TE.TYPE_SLICE_END, a),
        (TE.TYPE_SLICE_END, b),
    ]  # fmt: skip


def test_a_clear_restarts_interning_so_the_rest_reads_without_the_start():
    rig = Rig()
    seq, w = sequence(rig)
    seq.begin("work", "app", args={"k": 1})
    seq.end()
    seq.counter("depth", 1)
    w.incremental_state_invalid = True  # ClearIncrementalState, from any thread
    seq.begin("work", "app", args={"k": 2})
    seq.end()
    seq.counter("depth", 2)
    seq.log("hi", 4, "f.py", "g", 1)
    packets = written(rig, w)
    clear = [i for i, p in enumerate(packets) if p.sequence_flags & CLEARED]
    assert len(clear) == 2
    # A reader that lost everything before the second clear (its state invalid
    # until a clear) resolves all after it.
    lost = packets[clear[1] :]
    events = events_of(lost)
    assert [(e.name, e.args, e.counter) for e in events[:3]] == [
        ("work", {"k": 2}, None), (None, {}, None), (None, {}, 2)]  # fmt: skip
    assert events[3].log == LogRecord("hi", 4, "f.py", "g", 1)


def test_after_a_loss_interning_restarts_before_the_next_event():
    rig = Rig(pages=2, hold=True)  # the service frees nothing for now
    seq, w = sequence(rig)
    seq.instant("before", "c")
    while w.dropped_packets == 0:
        seq.instant("before", "c")
    rig.release_held()
    while w._dropping:  # recovery is tried each time the scratch chunk fills
        seq.instant("before", "c")
    for i in range(3):
        seq.instant(f"after {i}", "c", args={"i": i})
    imported = import_track_events(written(rig, w))
    (events,) = imported.events.values()
    assert imported.count(Outcome.UNRESOLVED) == 0
    resolved = [(e.name, e.args) for e in events if e.outcome is Outcome.RESOLVED]
    assert resolved[-3:] == [(f"after {i}", {"i": i}) for i in range(3)]


def test_interning_restarts_when_its_tables_grow_too_large(monkeypatch):
    monkeypatch.setattr("actors.track_event.MAX_INTERNED", 8)
    rig = Rig(pages=8)
    seq, w = sequence(rig)
    for i in range(20):
        seq.instant(f"name {i}", "c")
    packets = written(rig, w)
    assert sum(bool(p.sequence_flags & CLEARED) for p in packets) >= 3
    assert [e.name for e in events_of(packets)] == [f"name {i}" for i in range(20)]


def test_odd_input_never_raises():
    class Bad:
        def __str__(self):
            raise RuntimeError("no")

    rig = Rig()
    seq, w = sequence(rig)
    looped: dict = {}
    looped["self"] = looped
    seq.instant("\udcff odd", "a,\ud800", args={Bad(): Bad(), "loop": looped, "nan": math.nan})
    seq.instant("e", "c", args=[1, 2])  # type: ignore[arg-type]  # not a mapping
    seq.instant("e", "c", flows=["job", 3.5, 0])  # type: ignore[list-item]
    seq.counter("c", "not a number")  # type: ignore[arg-type]
    seq.begin(["unhashable"], "c")  # type: ignore[arg-type]
    seq.end(track=-5)  # no track uuid: the thread's
    events = events_of(written(rig, w))
    first = events[0]
    assert first.name == "? odd" and first.categories == ("a", "?")
    assert first.args["<unprintable Bad>"] == "<unprintable Bad>" and math.isnan(first.args["nan"])
    assert events[1].args == {"args": "<args: AttributeError>"}
    assert events[2].flows == (flow_id("job"), flow_id(3.5))
    assert events[3].name == "['unhashable']"
    assert events[4].track_uuid == seq.thread_track


def test_flow_ids_are_stable_and_non_zero():
    assert flow_id("job-1") == flow_id("job-1") != flow_id("job-2")
    assert flow_id(1) != flow_id("1") and flow_id(True) != flow_id(1)
    assert flow_id(enum.IntEnum("Job", "A")(1)) == flow_id(1)
    assert all(0 < flow_id(k) < 2**64 for k in (0, 7, -1, "", "job", 2**70))
    # Fixed across runs and processes (not Python's salted hash()).
    assert flow_id("job-1") == int.from_bytes(
        __import__("hashlib").blake2b(b"sjob-1", digest_size=8).digest(), "little")  # fmt: skip


class Unprintable:
    def __str__(self) -> str:
        raise ValueError("no")


class Printable:
    def __str__(self) -> str:
        return "printable \udc80"


def _text(s: str) -> str:
    """A str as it comes back: UTF-8, lone surrogates as "?"."""
    return s.encode("utf-8", "replace").decode()


def expected(value, depth: int = 0):
    """What a reader gets back for an arg (actors/track_event_encoding.py's rules),
    NaN as a comparable marker."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else value
    if value is None:
        return "None"
    if depth < MAX_DEPTH and isinstance(value, (dict, list, tuple)):
        if not value:
            return None  # no entries: an annotation without a value
        if isinstance(value, dict):
            return {_text(str(k)): expected(v, depth + 1) for k, v in value.items()}
        return [expected(v, depth + 1) for v in value]
    return "<unprintable Unprintable>" if isinstance(value, Unprintable) else _text(str(value))


def comparable(decoded):
    if isinstance(decoded, float) and math.isnan(decoded):
        return "NaN"
    if isinstance(decoded, dict):
        return {k: comparable(v) for k, v in decoded.items()}
    if isinstance(decoded, list):
        return [comparable(v) for v in decoded]
    return decoded


scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()
    | st.builds(Unprintable) | st.builds(Printable) | st.sets(st.integers(), max_size=2)
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(
    name=st.text(),
    category=st.text(),
    args=st.dictionaries(st.text(max_size=8), values, max_size=4),
    flows=st.lists(st.integers(0, 2**64 - 1) | st.text(max_size=5), max_size=3),
)
def test_any_names_categories_and_args_never_raise_and_always_decode(name, category, args, flows):
    rig = Rig()
    seq, w = sequence(rig)
    seq.begin(name, category, args=args, flows=flows)
    seq.instant(name, category)  # the cached path
    seq.end()
    begin, instant, _ = events_of(written(rig, w))
    parts = tuple(_text(category).split(",")) if category else ()
    assert (
        (begin.name, begin.categories) == (instant.name, instant.categories) == (_text(name), parts)
    )
    assert comparable(begin.args) == {_text(k): expected(v) for k, v in args.items()}
    ids = [v if isinstance(v, int) else flow_id(v) for v in flows]
    assert begin.flows == tuple(v for v in ids if v)


@given(
    st.lists(
        st.integers(0, 2**64 - 1)
        | st.integers(2**28 - 2, 2**28 + 2)
        | st.integers(9 * 2**40, 9 * 2**40 + 2**29),  # a boot time: the high bits repeat
        min_size=1,
        max_size=20,
    )
)
def test_timestamps_are_the_clocks(stamps):
    rig = Rig()
    w = rig.arbiter.create_trace_writer(1)
    clock = iter([0, *stamps])  # 0: the descriptors'
    seq = TrackEventSequence(
        w, lambda: next(clock), pid=1, tid=2, process_name="p", thread_name="t"
    )
    for i, _ in enumerate(stamps):
        seq.begin("e", "c") if i % 2 else seq.end()
    packets = written(rig, w)
    assert [p.timestamp for p in packets[2:]] == stamps


# -- TrackEvents ----------------------------------------------------------------------------


def test_track_events_slices_instants_and_counters_on_described_tracks():
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
    assert packets[0].sequence_flags == CLEARED
    assert [p.sequence_flags for p in packets[1:3]] == [0, 0]
    assert all(p.sequence_flags == NEEDS for p in packets if p.HasField("track_event"))
    assert (proc.process.pid, proc.process.process_name) == (os.getpid(), "ingest")
    assert thread.parent_uuid == proc.uuid and thread.thread.thread_name == "worker"
    assert depth.HasField("counter") and depth.name == "depth"
    resolved = events_of(packets)
    assert [(e.type, e.name) for e in resolved] == [
        (TE.TYPE_SLICE_BEGIN, "outer"),
        (TE.TYPE_SLICE_BEGIN, "inner"),
        (TE.TYPE_INSTANT, "tick"),
        (TE.TYPE_SLICE_END, None),
        (TE.TYPE_SLICE_END, None),
        (TE.TYPE_COUNTER, None),
        (TE.TYPE_COUNTER, None),
    ]
    assert {e.categories for e in resolved[:3]} == {("tracebus",)}
    lag = next(p.track_descriptor for p in packets[3:] if p.HasField("track_descriptor"))
    counters = [(e.track_uuid, e.counter) for e in resolved if e.type == TE.TYPE_COUNTER]
    assert counters == [(depth.uuid, 4), (lag.uuid, 9)]
    assert len({proc.uuid, thread.uuid, depth.uuid, lag.uuid}) == 4


def test_reset_describes_the_tracks_again():
    rig = Rig()
    w = rig.arbiter.create_trace_writer(1)
    events = TrackEvents(w, process_name="p")
    events.instant("a")
    events.reset()
    events.instant("a")
    packets = written(rig, w)
    flagged = [i for i, p in enumerate(packets) if p.sequence_flags == CLEARED]
    assert flagged == [0, 3]  # descriptors, "a", descriptors again, "a"
    assert [p.HasField("track_descriptor") for p in packets] == [True, True, False] * 2
    # The same tracks, described again; "a" interned again after the clear.
    assert [p.track_descriptor for p in packets[3:5]] == [p.track_descriptor for p in packets[:2]]
    assert packets[5].interned_data == packets[2].interned_data
