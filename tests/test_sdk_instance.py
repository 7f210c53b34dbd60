"""tracebus/_instance.py with a fake TrackEventSequence: one sequence per thread,
stop() waits for writes in progress (and only so long), re-entered writes are
dropped, asyncio tasks get tracks of their own that are forgotten when done."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from actors.track_event_config import CategoryFilter
from tests.waiting import wait_for
from tracebus import _instance
from tracebus._instance import TrackEventInstance


class FakeSequence:
    """Records events; `hold` makes begin() wait inside the write until released."""

    hold: threading.Event | None = None
    entered = threading.Event()
    made: list[FakeSequence] = []

    def __init__(self, writer: Any, clock: Any, **kw: Any) -> None:
        self.writer, self.kw = writer, kw
        self.events: list[tuple[Any, ...]] = []
        self.tracks: list[str] = []
        self.forgotten: list[int] = []
        self.on_begin: Any = None
        FakeSequence.made.append(self)

    def begin(self, name: str, category: str, args: Any, flows: Any, ends: Any, track: int) -> None:
        if self.on_begin is not None:
            self.on_begin()
        if FakeSequence.hold is not None:
            FakeSequence.entered.set()
            FakeSequence.hold.wait(30)
        self.events.append(("begin", name, tuple(flows), tuple(ends), track))

    def end(self, track: int = 0) -> None:
        self.events.append(("end", track))

    def instant(self, name: str, category: str, args: Any, flows: Any, ends: Any, track: int):
        self.events.append(("instant", name, track))

    def async_track(self, name: str) -> int:
        self.tracks.append(name)
        return 1000 + len(self.tracks)

    def forget_track(self, uuid: int) -> None:
        self.forgotten.append(uuid)


class FakeWriter:
    dropped_packets = 0


@pytest.fixture
def instance(monkeypatch):
    FakeSequence.made = []
    FakeSequence.hold = None
    FakeSequence.entered = threading.Event()
    monkeypatch.setattr(_instance, "TrackEventSequence", FakeSequence)
    inst = TrackEventInstance(FakeWriter, CategoryFilter.from_config(None), "app", 4242)
    inst.live = True
    return inst


def test_each_thread_writes_its_own_sequence(instance):
    def write() -> None:
        instance.instant("x", "c", None, None, None)

    threads = [threading.Thread(target=write, name=f"w{i}") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    write()
    assert len(FakeSequence.made) == 4
    assert sorted(s.kw["thread_name"] for s in FakeSequence.made) == sorted(
        ["w0", "w1", "w2", threading.current_thread().name]
    )
    assert all(s.kw["pid"] == 4242 and s.kw["process_name"] == "app" for s in FakeSequence.made)


def test_flows_map_keys_to_ids(instance):
    token = instance.begin("s", "c", None, ["job-1", 7], "job-2")
    (seq,) = FakeSequence.made
    _, _, flows, ends, _ = seq.events[0]
    assert len(flows) == 2 and flows[1] == _instance.flow_id(7)
    assert flows[0] == _instance.flow_id("job-1") and ends == (_instance.flow_id("job-2"),)
    instance.end(token)
    assert seq.events[-1] == ("end", 0)


def test_stop_waits_for_a_write_in_progress(instance):
    FakeSequence.hold = threading.Event()
    writer = threading.Thread(target=lambda: instance.begin("slow", "c", None, None, None))
    writer.start()
    assert FakeSequence.entered.wait(10)
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(instance.stop(wait_s=30)))
    stopper.start()
    wait_for(lambda: not instance.live, 10, "stop() to refuse new writes")
    stopper.join(0.2)
    assert stopper.is_alive(), "stop() returned while a thread was inside a write"
    FakeSequence.hold.set()
    stopper.join(10)
    writer.join(10)
    assert stopped == [True]
    (seq,) = FakeSequence.made
    assert [e[0] for e in seq.events] == ["begin"]
    instance.instant("after", "c", None, None, None)  # refused: the instance stopped
    assert len(seq.events) == 1 and len(FakeSequence.made) == 1


def test_stop_gives_up_after_its_bound(instance):
    FakeSequence.hold = threading.Event()
    writer = threading.Thread(target=lambda: instance.begin("stuck", "c", None, None, None))
    writer.start()
    assert FakeSequence.entered.wait(10)
    try:
        assert instance.stop(wait_s=0.1) is False
    finally:
        FakeSequence.hold.set()
        writer.join(10)


def test_a_write_reentered_on_the_same_thread_is_dropped(instance):
    instance.instant("first", "c", None, None, None)  # creates the sequence
    (seq,) = FakeSequence.made
    seq.on_begin = lambda: instance.instant("nested", "c", None, None, None)
    instance.begin("outer", "c", None, None, None)
    assert [e[:2] for e in seq.events] == [("instant", "first"), ("begin", "outer")]
    assert instance.dropped_packets() == 1  # the dropped event is counted, not silent


def test_asyncio_tasks_get_tracks_that_are_forgotten_when_done(instance):
    async def job(i: int) -> None:
        token = instance.begin(f"job{i}", "c", None, None, None)
        await asyncio.sleep(0)
        instance.end(token)

    async def main() -> None:
        await asyncio.gather(*(asyncio.create_task(job(i), name=f"t{i}") for i in range(200)))
        await asyncio.sleep(0)  # done callbacks run on the loop's next turns

    instance.begin("outside", "c", None, None, None)
    asyncio.run(main())
    (seq,) = FakeSequence.made
    assert seq.events[0] == ("begin", "outside", (), (), 0)
    assert sorted(seq.tracks) == sorted(f"t{i}" for i in range(200))
    by_name = {e[1]: e[4] for e in seq.events if e[0] == "begin"}
    assert len({by_name[f"job{i}"] for i in range(200)}) == 200  # one track each
    assert sorted(seq.forgotten) == sorted(by_name[f"job{i}"] for i in range(200))
    assert len(instance._local.seq.tasks) == 0  # nothing kept for tasks that are done


class BrokenWriter:
    """A writer that fails every write until mended."""

    incremental_state_invalid = True
    dropped_packets = 0
    broken = True
    closed = False

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def write_packet(self, data: bytes) -> None:
        if BrokenWriter.broken:
            raise OSError("the SMB went away")
        self.packets.append(data)


def test_a_broken_writer_costs_events_never_the_app(monkeypatch):
    """The real TrackEventSequence over a writer that raises: the API counts the
    errors, and the thread's sequence is not wedged once the writer works again."""
    import tracebus
    from tracebus import _runtime

    writers: list[BrokenWriter] = []

    def new_writer() -> BrokenWriter:
        writers.append(BrokenWriter())
        return writers[-1]

    _runtime.WANTED.clear()
    runtime = _runtime.Runtime(_runtime.WANTED, service_appeared=lambda endpoint: False)
    runtime.state = _runtime.RUNNING  # no producer: the instance is added by hand
    monkeypatch.setattr(_runtime, "current", runtime)
    monkeypatch.setattr(BrokenWriter, "broken", True)
    inst = TrackEventInstance(new_writer, CategoryFilter.from_config(None), "app", 4242)
    runtime.add_instance(inst)
    try:
        for _ in range(3):
            with tracebus.slice("s", args={"a": 1}):
                tracebus.instant("i")
            tracebus.counter("c", 1.5)
        errors = tracebus.stats()["errors_by_kind"]
        assert errors == {"slice": 3, "instant": 3, "counter": 3}
        BrokenWriter.broken = False
        tracebus.instant("after")
        assert len(writers) == 1 and writers[0].packets  # the same sequence, writing again
    finally:
        _runtime.WANTED.clear()


def test_a_slice_ended_on_another_thread_does_not_touch_the_first_threads_sequence(instance):
    token = instance.begin("s", "c", None, None, None)
    other = threading.Thread(target=instance.end, args=(token,))
    other.start()
    other.join(10)
    (seq,) = FakeSequence.made
    assert [e[0] for e in seq.events] == ["begin"]
    instance.end(token)
    assert [e[0] for e in seq.events] == ["begin", "end"]


class Unprintable:
    def __str__(self) -> str:
        raise ValueError("no")

    __repr__ = __str__


def test_hostile_arguments_through_the_real_encoding_still_make_valid_packets(monkeypatch):
    """The whole API over the real TrackEventSequence: odd names, args, flows and
    counter values neither raise nor count errors, and every packet parses."""
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    import tracebus
    from tracebus import _runtime

    writer = BrokenWriter()
    monkeypatch.setattr(BrokenWriter, "broken", False)
    _runtime.WANTED.clear()
    runtime = _runtime.Runtime(_runtime.WANTED, service_appeared=lambda endpoint: False)
    runtime.state = _runtime.RUNNING
    monkeypatch.setattr(_runtime, "current", runtime)
    everything = CategoryFilter.from_config(None)
    runtime.add_instance(TrackEventInstance(lambda: writer, everything, "app", 1))
    hostile_args = {
        "unprintable": Unprintable(), "huge": 1 << 70, "negative": -(1 << 63), "nan": float("nan"),
        "deep": [[[[[[[[[[{"k": ()}]]]]]]]]]], 7: "int key", "bytes": b"\xff", None: None,
    }  # fmt: skip
    try:
        name = "\udcff surrogate"
        with tracebus.slice(name, category="a,b", args=hostile_args, flow=[Unprintable()]):
            tracebus.instant("", category="", args={"x": object()}, terminate_flow=1 << 80)
        tracebus.counter("inf", float("inf"), unit="bytes")
        tracebus.counter("huge", 1 << 70)
        assert tracebus.stats()["errors"] == 0, tracebus.stats()
    finally:
        _runtime.WANTED.clear()
    assert len(writer.packets) >= 5
    for data in writer.packets:
        pb.TracePacket.FromString(data)


def test_a_thread_that_ends_hands_its_writer_back_on_its_own_thread(monkeypatch):
    """An app that starts a thread per request must not keep a writer (an id, a
    chunk) per dead thread: the writer is released when its thread ends, by that
    thread, and a stop afterwards finds nothing of it."""
    monkeypatch.setattr(_instance, "TrackEventSequence", FakeSequence)
    released: list[tuple[Any, int]] = []
    inst = TrackEventInstance(
        FakeWriter, CategoryFilter.from_config(None), "app", os.getpid(),
        release_writer=lambda w: released.append((w, threading.get_ident())),
    )  # fmt: skip
    inst.live = True
    idents = []

    def request() -> None:
        idents.append(threading.get_ident())
        inst.instant("x", "c", None, None, None)

    for _ in range(5):
        t = threading.Thread(target=request)
        t.start()
        t.join(10)
    # Python drops the thread's locals before join() returns.
    assert [ident for _, ident in released] == idents  # each on its own thread
    assert inst._sequences == []
    assert inst.stop()


def test_a_stop_and_a_thread_end_never_both_release_a_writer(monkeypatch):
    monkeypatch.setattr(_instance, "TrackEventSequence", FakeSequence)
    released: list[Any] = []
    inst = TrackEventInstance(
        FakeWriter, CategoryFilter.from_config(None), "app", os.getpid(),
        release_writer=released.append,
    )  # fmt: skip
    inst.live = True
    wrote, go = threading.Event(), threading.Event()

    def request() -> None:
        inst.instant("x", "c", None, None, None)
        wrote.set()
        go.wait(10)

    t = threading.Thread(target=request)
    t.start()
    wrote.wait(10)
    assert inst.stop()  # the instance stops first: the host closes the writer
    go.set()
    t.join(10)
    assert released == []  # so the ending thread leaves it alone


class InterruptedWriter(BrokenWriter):
    """A writer whose first write is interrupted mid-packet (a Ctrl-C): it gives
    up its chunk, as TraceWriter.abandon does."""

    interrupts = 1

    def write_packet(self, data: bytes) -> None:
        if InterruptedWriter.interrupts and not self.closed:
            InterruptedWriter.interrupts -= 1
            self.closed = True
            raise KeyboardInterrupt
        if self.closed:
            self.dropped_packets += 1
            return
        self.packets.append(data)

    def salvage(self) -> None:
        self.salvaged = True


def test_a_ctrl_c_inside_a_write_reaches_the_app_and_the_next_event_writes_again(monkeypatch):
    import tracebus
    from tracebus import _runtime

    writers: list[InterruptedWriter] = []

    def new_writer() -> InterruptedWriter:
        writers.append(InterruptedWriter())
        return writers[-1]

    monkeypatch.setattr(BrokenWriter, "broken", False)
    _runtime.WANTED.clear()
    runtime = _runtime.Runtime(_runtime.WANTED, service_appeared=lambda endpoint: False)
    runtime.state = _runtime.RUNNING
    monkeypatch.setattr(_runtime, "current", runtime)
    runtime.add_instance(TrackEventInstance(new_writer, CategoryFilter.from_config(None), "a", 1))
    try:
        with pytest.raises(KeyboardInterrupt):
            tracebus.instant("interrupted")
        for _ in range(3):
            tracebus.instant("after")
        assert len(writers) == 2  # a new sequence on a new writer
        assert len(writers[1].packets) >= 3 and writers[0].packets == []
        assert tracebus.stats()["errors"] == 0
    finally:
        _runtime.WANTED.clear()


def test_an_event_reentered_while_the_thread_makes_its_sequence_is_dropped(monkeypatch):
    """A signal handler's event while this thread's first event makes its sequence
    (the writer is being created) is dropped and counted: a second sequence would
    replace the first under it."""
    monkeypatch.setattr(_instance, "TrackEventSequence", FakeSequence)
    FakeSequence.made = []
    inst: TrackEventInstance

    def new_writer() -> FakeWriter:
        inst.instant("from a handler", "c", None, None, None)
        return FakeWriter()

    inst = TrackEventInstance(new_writer, CategoryFilter.from_config(None), "app", 4242)
    inst.live = True
    inst.instant("first", "c", None, None, None)
    (seq,) = FakeSequence.made
    assert [e[:2] for e in seq.events] == [("instant", "first")]
    assert inst.dropped_packets() == 1
