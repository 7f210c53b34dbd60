"""Track events for custom data sources: slices and counters on the calling
thread's track, ready for ui.perfetto.dev.

    from actors.track_event import TrackEvents

    class Pipeline(DataSource):
        name = "pipeline"
        handles_incremental_state_clear = True  # the service's periodic clears reach us

        def on_start(self, config):
            threading.Thread(target=self.run).start()

        def run(self):
            events = TrackEvents(self.writer(), process_name="ingest")
            with events.slice("decode"):
                ...
            events.counter("queue_depth", 3)

Incremental state (Perfetto's docs/reference/synthetic-track-event.md): every
TrackEvent packet sets SEQ_NEEDS_INCREMENTAL_STATE, since it refers to tracks
described earlier on its sequence. The track descriptors (process, thread, every
counter track used so far) are the sequence's incremental state: they go out
before the next event whenever the writer's `incremental_state_invalid` is set
(a new writer; a gap the writer marked with previous_packet_dropped; a clear the
service asked for, which the SDK forwards to the instance's writers), the first
of them with SEQ_INCREMENTAL_STATE_CLEARED. An importer (trace_processor) skips
the events of a sequence from a loss up to the next such packet, so a ring
buffer that overwrote the first descriptors still imports from the next
re-emission on. `reset()` asks for a re-emission from any thread. A counter
track first used while the state is valid is described on the spot. The flag
belongs to the writer's sequence, so a writer carries one TrackEvents at a time
(a new one re-describes its tracks before its first event).

Timestamps are CLOCK_BOOTTIME in ns, Perfetto's default trace clock. Packets are
concatenated from precomputed tags (shm.protozero), never built with the
generated protobuf classes; each event body is encoded once per (type, track,
name) and reused, and the descriptor packets once per track.

Track uuids: process ``0x5EED << 48 | pid``, thread ``1 << 62 | pid << 24 | tid``,
counter k of a thread ``2 << 62 | (pid << 24 | tid) << 6 | k`` (pid and tid
below 2**24, k below 64), so producers and threads never collide; a counter's
uuid stays the same across re-emissions.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from shm.protozero import LEN, VARINT, tag, varint
from shm.writer import TraceWriter

# TracePacket fields.
_TIMESTAMP = tag(8, VARINT)
_TRACK_EVENT = tag(11, LEN)
_SEQUENCE_FLAGS = tag(13, VARINT)
_TRACK_DESCRIPTOR = tag(60, LEN)
SEQ_INCREMENTAL_STATE_CLEARED = 1
SEQ_NEEDS_INCREMENTAL_STATE = 2
_CLEARED = _SEQUENCE_FLAGS + varint(SEQ_INCREMENTAL_STATE_CLEARED)
_NEEDS_STATE = _SEQUENCE_FLAGS + varint(SEQ_NEEDS_INCREMENTAL_STATE)

# TrackEvent fields.
_TYPE = tag(9, VARINT)
_TRACK_UUID = tag(11, VARINT)
_CATEGORIES = tag(22, LEN)
_NAME = tag(23, LEN)
_COUNTER_VALUE = tag(30, VARINT)
SLICE_BEGIN, SLICE_END, INSTANT, COUNTER = 1, 2, 3, 4
CATEGORY = b"tracebus"

# TrackDescriptor fields, and those of its ProcessDescriptor and ThreadDescriptor.
_UUID = tag(1, VARINT)
_TRACK_NAME = tag(2, LEN)
_PROCESS = tag(3, LEN)
_THREAD = tag(4, LEN)
_PARENT_UUID = tag(5, VARINT)
_EMPTY_COUNTER = tag(8, LEN) + b"\x00"  # an empty CounterDescriptor marks a counter track
_PID = tag(1, VARINT)
_TID = tag(2, VARINT)
_THREAD_NAME = tag(5, LEN)
_PROCESS_NAME = tag(6, LEN)

MAX_COUNTERS = 64


def track_uuids(pid: int, tid: int) -> tuple[int, int, int]:
    """(process, thread, first counter) track uuids; see the module docstring."""
    low = (pid & 0xFFFFFF) << 24 | (tid & 0xFFFFFF)
    return 0x5EED << 48 | pid, 1 << 62 | low, 2 << 62 | low << 6


def _field(key: bytes, data: bytes) -> bytes:
    """A length-delimited field: its tag, length and bytes."""
    return key + varint(len(data)) + data


def event_body(type_: int, track: int, name: str | None = None, value: int | None = None) -> bytes:
    """A TrackEvent without its timestamp."""
    body = _TYPE + varint(type_) + _TRACK_UUID + varint(track)
    if name is not None:
        body += _field(_CATEGORIES, CATEGORY) + _field(_NAME, name.encode())
    if value is not None:
        body += _COUNTER_VALUE + varint(value)
    return body


def event_fields(body: bytes) -> bytes:
    """A TracePacket's fields after its timestamp for a TrackEvent `body`."""
    return _field(_TRACK_EVENT, body) + _NEEDS_STATE


def process_descriptor(uuid: int, pid: int, name: str) -> bytes:
    process = _PID + varint(pid) + _field(_PROCESS_NAME, name.encode())
    return _UUID + varint(uuid) + _field(_PROCESS, process)


def thread_descriptor(uuid: int, parent: int, pid: int, tid: int, name: str) -> bytes:
    thread = _PID + varint(pid) + _TID + varint(tid) + _field(_THREAD_NAME, name.encode())
    return _UUID + varint(uuid) + _PARENT_UUID + varint(parent) + _field(_THREAD, thread)


def counter_descriptor(uuid: int, parent: int, name: str) -> bytes:
    named = _UUID + varint(uuid) + _PARENT_UUID + varint(parent)
    return named + _field(_TRACK_NAME, name.encode()) + _EMPTY_COUNTER


def _now() -> bytes:
    return _TIMESTAMP + varint(time.clock_gettime_ns(time.CLOCK_BOOTTIME))


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
        self._events: dict[tuple, bytes] = {}  # key -> event_fields(), encoded once
        self._counters: dict[str, bytes] = {}  # name -> TrackEvent body up to the value
        # The sequence's incremental state: descriptor packets (after the
        # timestamp), the first one flagged SEQ_INCREMENTAL_STATE_CLEARED.
        self._descriptors = [
            _field(_TRACK_DESCRIPTOR, process_descriptor(
                self.process_track, self.pid, self.process_name)) + _CLEARED,
            _field(_TRACK_DESCRIPTOR, thread_descriptor(
                self.thread_track, self.process_track, self.pid, self.tid, self.thread_name)),
        ]  # fmt: skip
        writer.incremental_state_invalid = True  # new tracks: describe them first
        for name in counters:
            self._counter_prefix(name)

    def reset(self) -> None:
        """Describe the tracks again before the next event (any thread may call it)."""
        self._writer.incremental_state_invalid = True

    def begin(self, name: str) -> None:
        self._emit((SLICE_BEGIN, name), SLICE_BEGIN, name)

    def end(self) -> None:
        self._emit((SLICE_END,), SLICE_END, None)

    def instant(self, name: str) -> None:
        self._emit((INSTANT, name), INSTANT, name)

    @contextmanager
    def slice(self, name: str) -> Iterator[None]:
        self.begin(name)
        try:
            yield
        finally:
            self.end()

    def counter(self, name: str, value: int) -> None:
        prefix = self._counters.get(name) or self._counter_prefix(name)
        self._write_event(event_fields(prefix + _COUNTER_VALUE + varint(value)))

    # -- packets ------------------------------------------------------------------------

    def _emit(self, key: tuple, type_: int, name: str | None) -> None:
        fields = self._events.get(key)
        if fields is None:
            fields = self._events[key] = event_fields(event_body(type_, self.thread_track, name))
        self._write_event(fields)

    def _write_event(self, fields: bytes) -> None:
        w = self._writer
        if w.incremental_state_invalid:
            self._describe()
        w.write_packet(_now() + fields)

    def _describe(self) -> None:
        """Emit the incremental state. The flag is cleared first: a clear asked for
        meanwhile (another thread) or a drop while writing these sets it again."""
        w = self._writer
        w.incremental_state_invalid = False
        ts = _now()
        for descriptor in self._descriptors:
            w.write_packet(ts + descriptor)

    def _counter_prefix(self, name: str) -> bytes:
        """A new counter track: its uuid, its descriptor (written now unless the
        next event re-emits every descriptor anyway), its event prefix."""
        if len(self._counters) >= MAX_COUNTERS:
            raise ValueError(f"at most {MAX_COUNTERS} counter tracks per thread")
        track = self._counter_base + len(self._counters)
        descriptor = _field(_TRACK_DESCRIPTOR, counter_descriptor(track, self.process_track, name))
        self._descriptors.append(descriptor)
        if not self._writer.incremental_state_invalid:
            self._writer.write_packet(_now() + descriptor)
        prefix = self._counters[name] = event_body(COUNTER, track)
        return prefix
