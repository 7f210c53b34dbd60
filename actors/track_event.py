"""Track events for custom data sources: slices and counters on the calling
thread's track, ready for ui.perfetto.dev.

    from actors.track_event import TrackEvents

    class Pipeline(DataSource):
        name = "pipeline"

        def on_start(self, config):
            threading.Thread(target=self.run).start()

        def run(self):
            events = TrackEvents(self.writer(), process_name="ingest")
            with events.slice("decode"):
                ...
            events.counter("queue_depth", 3)

The first packet of a sequence carries the process and thread TrackDescriptors
and SEQ_INCREMENTAL_STATE_CLEARED; counter tracks are described the first time
they are used; `reset()` (call it from on_clear_incremental_state) emits the
descriptors again. Timestamps are CLOCK_BOOTTIME in ns, Perfetto's default
trace clock. Packets are built from precomputed tags (shm.protozero), never with
the generated protobuf classes, and each event body is encoded once per
(type, track, name) and reused.

Track uuids: process ``0x5EED << 48 | pid``, thread ``1 << 62 | pid << 24 | tid``,
counter k of a thread ``2 << 62 | (pid << 24 | tid) << 6 | k`` (pid and tid
below 2**24, k below 64), so producers and threads never collide.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from shm.protozero import LEN, VARINT, build, tag, varint
from shm.writer import TraceWriter

_TIMESTAMP = tag(8, VARINT)
_TRACK_EVENT = tag(11, LEN)
_SEQUENCE_FLAGS = tag(13, VARINT)
_TRACK_DESCRIPTOR = tag(60, LEN)
SEQ_INCREMENTAL_STATE_CLEARED = 1
SLICE_BEGIN, SLICE_END, INSTANT, COUNTER = 1, 2, 3, 4


MAX_COUNTERS = 64


def track_uuids(pid: int, tid: int) -> tuple[int, int, int]:
    """(process, thread, first counter) track uuids; see the module docstring."""
    low = (pid & 0xFFFFFF) << 24 | (tid & 0xFFFFFF)
    return 0x5EED << 48 | pid, 1 << 62 | low, 2 << 62 | low << 6


def event_body(type_: int, track: int, name: str | None = None, value: int | None = None):
    """A TrackEvent without its timestamp."""

    def fill(m):
        m.varint(9, type_).varint(11, track)
        if name is not None:
            m.string(22, "tracebus").string(23, name)  # categories, name
        if value is not None:
            m.varint(30, value)

    return build(fill)


class TrackEvents:
    """Slices and counters of the calling thread, written through one TraceWriter."""

    def __init__(
        self,
        writer: TraceWriter,
        process_name: str = "",
        thread_name: str | None = None,
        counters: tuple[str, ...] = (),
    ) -> None:
        """`counters` are described with the process and thread up front; others
        when first used."""
        self._writer = writer
        self.pid, self.tid = os.getpid(), threading.get_native_id()
        self.process_name = process_name or f"pid {self.pid}"
        self.thread_name = thread_name or threading.current_thread().name
        self.process_track, self.thread_track, self._counter_base = track_uuids(self.pid, self.tid)
        self._bodies: dict[tuple, bytes] = {}
        self._counters: dict[str, int] = {}
        self._declared = counters
        self._pending = True  # descriptors go out before the next event

    def reset(self) -> None:
        """Incremental state was cleared: describe the tracks again."""
        self._pending = True
        self._counters.clear()

    def begin(self, name: str) -> None:
        self._emit((SLICE_BEGIN, name), lambda: event_body(SLICE_BEGIN, self.thread_track, name))

    def end(self) -> None:
        self._emit((SLICE_END,), lambda: event_body(SLICE_END, self.thread_track))

    def instant(self, name: str) -> None:
        self._emit((INSTANT, name), lambda: event_body(INSTANT, self.thread_track, name))

    @contextmanager
    def slice(self, name: str) -> Iterator[None]:
        self.begin(name)
        try:
            yield
        finally:
            self.end()

    def counter(self, name: str, value: int) -> None:
        track = self._counter_track(name)
        self._write_event(event_body(COUNTER, track, value=value))

    # -- packets ------------------------------------------------------------------------

    def _emit(self, key: tuple, make) -> None:
        body = self._bodies.get(key)
        if body is None:
            body = self._bodies[key] = make()
        self._write_event(body)

    def _write_event(self, body: bytes) -> None:
        if self._pending:
            self._describe()
        ts = _TIMESTAMP + varint(time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        self._writer.write_packet(ts + _TRACK_EVENT + varint(len(body)) + body)

    def _descriptor(self, descriptor: bytes, first: bool = False) -> None:
        ts = _TIMESTAMP + varint(time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        flags = _SEQUENCE_FLAGS + varint(SEQ_INCREMENTAL_STATE_CLEARED) if first else b""
        self._writer.write_packet(
            ts + _TRACK_DESCRIPTOR + varint(len(descriptor)) + descriptor + flags
        )

    def _describe(self) -> None:
        self._pending = False

        def process(m):
            m.varint(1, self.process_track)
            with m.begin_nested(3) as p:
                p.varint(1, self.pid).string(6, self.process_name)

        def thread(m):
            m.varint(1, self.thread_track).varint(5, self.process_track)
            with m.begin_nested(4) as t:
                t.varint(1, self.pid).varint(2, self.tid).string(5, self.thread_name)

        self._descriptor(build(process), first=True)
        self._descriptor(build(thread))
        for name in self._declared:
            self._counter_track(name)

    def _counter_track(self, name: str) -> int:
        track = self._counters.get(name)
        if track is None:
            if self._pending:
                self._describe()
                return self._counter_track(name)
            if len(self._counters) >= MAX_COUNTERS:
                raise ValueError(f"at most {MAX_COUNTERS} counter tracks per thread")
            track = self._counters[name] = self._counter_base + len(self._counters)

            def counter(m):
                m.varint(1, track).varint(5, self.process_track).string(2, name)
                m.begin_nested(8).end()  # an empty CounterDescriptor marks a counter track

            self._descriptor(build(counter))
        return track
