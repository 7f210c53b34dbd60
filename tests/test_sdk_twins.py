"""The SDK's compiled event path (tracebus/_speedups.c over shm/_writer.c)
against its pure-Python twin (tracebus/_api.py's functions over shm/writer.py's
PyTraceWriter): the same random stream of API calls, with the same
timestamps, leaves byte-identical shared memory and commits, through chunk
turnovers, interning resets, clears, flush requests and losses.

With TRACEBUS_PURE_PYTHON=1 nothing is compiled and there is nothing to
compare: the module is skipped then, and only then (a build that should have
compiled the twins and did not fails here).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import track_event
from actors.track_event_config import CategoryFilter
from shm.abi import SharedMemoryABI, resolve_geometry
from shm.arbiter import SharedMemoryArbiter
from shm.commits import CommitBatch
from shm.native import PURE_PYTHON, compiled
from shm.region import InProcessRegion
from shm.writer import BufferExhaustedPolicy, PyTraceWriter, TraceWriter
from tests.smb_oracle import Oracle
from tracebus import _api, _runtime
from tracebus._instance import TrackEventInstance

pytestmark = pytest.mark.skipif(PURE_PYTHON, reason="TRACEBUS_PURE_PYTHON=1: no compiled twin")

speedups = compiled("tracebus._speedups")
CATEGORIES = ("c", "d,e", "default")
NAMES = ("a", "b", "a longer name " * 12, "é ☃", "")
PID = 4242
PAGES = 4


def test_the_compiled_twins_were_built():
    assert speedups is not None, "tracebus._speedups did not build"
    assert compiled("shm._writer") is not None, "shm._writer did not build"
    assert speedups.has_writer()
    assert TraceWriter is not PyTraceWriter


class Twin:
    """One side: an SMB, an arbiter, a service that frees what is committed (or
    holds it: the SMB fills and the writer drops), one track_event instance."""

    def __init__(self, writer_class: type, clock: Callable[[], int], page_size: int) -> None:
        geometry = resolve_geometry(PAGES * page_size, page_size)
        self.region = InProcessRegion(geometry.size)
        self.abi = SharedMemoryABI(self.region.buf, geometry)
        self.oracle = Oracle(self.abi)
        self.batches: list[CommitBatch] = []
        self.held: list[CommitBatch] = []
        self.hold = False
        self.arbiter = SharedMemoryArbiter(self.abi, self.on_commit, sleep=lambda s: None)
        self.writer_class = writer_class
        self.instance = TrackEventInstance(
            self.new_writer, CategoryFilter.from_config(None), "app", PID, clock=clock
        )
        self.instance.live = True

    def new_writer(self) -> Any:
        writer_id = self.arbiter._allocate_writer_id()
        return self.writer_class(self.arbiter, writer_id, 0, BufferExhaustedPolicy.DROP)

    def on_commit(self, batch: CommitBatch) -> None:
        self.batches.append(batch)
        if self.hold:
            self.held.append(batch)
        else:
            self.oracle.on_commit(batch)

    def set_hold(self, hold: bool) -> None:
        self.hold = hold
        if not hold:
            for batch in self.held:
                self.oracle.on_commit(batch)
            self.held.clear()

    def writer(self) -> Any:
        seq = getattr(self.instance._local, "seq", None)
        return seq.writer if seq is not None else None


def run(ops: list[tuple], api: Any, twin: Twin) -> list[Any]:
    """Play `ops` through the API functions `api` (slice, instant, counter);
    returns what a reader would compare besides the memory."""
    _runtime.WANTED.clear()
    _runtime.WANTED.update({c: (twin.instance,) for c in CATEGORIES})
    slice_, instant, counter = api
    open_slices: list[Any] = []
    fresh = itertools.count()

    def event_name(i: int) -> str:  # 20 and up: a new name (interning grows, then restarts)
        return f"n{next(fresh)}" if i >= 20 else NAMES[i % len(NAMES)]

    for op, *a in ops:
        name = event_name(a[0]) if op in ("open", "instant", "args") else ""
        if op == "open":
            s = slice_(name, category=CATEGORIES[a[1] % 3])
            s.__enter__()
            open_slices.append(s)
        elif op == "close" and open_slices:
            open_slices.pop().__exit__(None, None, None)
        elif op == "instant":
            instant(name, CATEGORIES[a[1] % 3])
        elif op == "args":
            with slice_(name, category="c", args={"i": a[1], "s": "x"}):
                pass
        elif op == "counter":
            counter(NAMES[a[0] % 2], a[1], category="c")
        elif op == "clear" and twin.writer() is not None:
            twin.writer().incremental_state_invalid = True
        elif op == "flush" and twin.writer() is not None:
            twin.writer().request_flush()
        elif op == "hold":
            twin.set_hold(bool(a[0]))
    while open_slices:
        open_slices.pop().__exit__(None, None, None)
    w = twin.writer()
    if w is not None:
        w.flush()
    return [
        twin.batches,
        (w.dropped_packets, w.dropped_bytes) if w is not None else None,
        bytes(twin.region.buf),
    ]


def compiled_api() -> tuple:
    fast = speedups.Api(
        _runtime.WANTED, _api.py_slice, _api.py_instant, _api.py_counter, _api._error
    )
    return fast.slice, fast.instant, fast.counter


PURE_API = (_api.py_slice, _api.py_instant, _api.py_counter)

counter_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=2**63, max_value=2**70),  # beyond int64: a double
    st.floats(allow_nan=True, allow_infinity=True),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.integers(0, 24), st.integers(0, 2)),
        st.tuples(st.just("close")),
        st.tuples(st.just("instant"), st.integers(0, 24), st.integers(0, 2)),
        st.tuples(st.just("args"), st.integers(0, 24), st.integers(-5, 5)),
        st.tuples(st.just("counter"), st.integers(0, 1), counter_values),
        st.tuples(st.just("clear")),
        st.tuples(st.just("flush")),
        st.tuples(st.just("hold"), st.integers(0, 1)),
    ),
    max_size=300,
)


@pytest.fixture
def small_interning(monkeypatch: pytest.MonkeyPatch):
    """Interning restarts after a few names, so streams reach it."""
    monkeypatch.setattr(track_event, "MAX_INTERNED", 12)
    yield
    _runtime.WANTED.clear()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stream=ops,
    start=st.integers(min_value=0, max_value=2**62),
    step=st.integers(min_value=0, max_value=2**33),
    page_size=st.sampled_from([4096, 8192]),
)
def test_compiled_and_pure_write_the_same_bytes(small_interning, stream, start, step, page_size):
    sides = []
    for writer_class, api in ((PyTraceWriter, PURE_API), (TraceWriter, compiled_api())):
        clock = itertools.count(start, step).__next__
        twin = Twin(writer_class, clock, page_size)
        sides.append(run(stream, api, twin))
    pure, fast = sides
    assert fast[0] == pure[0]  # the commits: chunks moved, patches, flushes
    assert fast[1] == pure[1]  # what the writer counted as dropped
    assert fast[2] == pure[2]  # every byte of the SMB


def test_the_common_case_never_enters_python(monkeypatch: pytest.MonkeyPatch):
    """After one event of each kind has filled the caches, slices, instants and
    counters are written by the compiled path alone."""
    twin = Twin(TraceWriter, itertools.count(10**12, 1000).__next__, 4096)
    api = compiled_api()
    run([("open", 0, 0), ("close",), ("instant", 1, 0), ("counter", 0, 7)], api, twin)
    before = len(twin.oracle.packets(twin.writer().writer_id)[0])

    def python_path(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the compiled path fell back to Python")

    for name in ("_point", "end", "counter", "_event"):
        monkeypatch.setattr(track_event.TrackEventSequence, name, python_path)
    errors = dict(_runtime.current.errors)
    slice_, instant, counter = api
    for i in range(300):
        with slice_("a", category="c"):
            instant("b", "c")
            counter("a", i, category="c")
    assert dict(_runtime.current.errors) == errors
    twin.writer().flush()
    packets, _ = twin.oracle.packets(twin.writer().writer_id)
    assert len(packets) - before >= 4 * 300 - 10  # begin, instant, counter, end each time
    _runtime.WANTED.clear()


def test_events_inside_an_asyncio_task_go_to_the_tasks_track(monkeypatch: pytest.MonkeyPatch):
    """The compiled path leaves a running loop's events to Python, which puts
    them on the current task's track."""
    import asyncio

    twin = Twin(TraceWriter, itertools.count(10**12, 1000).__next__, 4096)
    api = compiled_api()
    run([("open", 0, 0), ("close",), ("instant", 1, 0)], api, twin)  # warm the caches
    tracks: list[int] = []
    original = track_event.TrackEventSequence._point

    def spy(self: Any, type_: int, name: Any, category: Any, *rest: Any) -> None:
        tracks.append(rest[-1])
        original(self, type_, name, category, *rest)

    monkeypatch.setattr(track_event.TrackEventSequence, "_point", spy)
    slice_, instant, _ = api

    async def job() -> None:
        with slice_("a", category="c"):
            instant("b", "c")

    asyncio.run(job())
    assert len(tracks) == 2 and all(t != 0 for t in tracks)
    tracks.clear()
    with slice_("a", category="c"):  # outside the loop again: the C path, no Python
        pass
    assert tracks == []
    _runtime.WANTED.clear()
