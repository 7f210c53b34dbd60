"""Track events: one thread's slices, instants, counters and log messages as
Perfetto TrackEvent packets, ready for ui.perfetto.dev and trace_processor.

`TrackEventSequence` is the hot part of an event (encode, frame, write into the
chunk through the thread's TraceWriter), with the clock injected: the SDK
(tracebus/) keeps one per thread and per track_event instance. `TrackEvents`
is the same over the calling thread, for custom data sources::

    class Pipeline(DataSource):
        name = "pipeline"
        handles_incremental_state_clear = True  # the service's periodic clears reach us

        def run(self):                           # on a thread of the instance
            events = TrackEvents(self.writer(), process_name="ingest")
            with events.slice("decode"):
                ...
            events.counter("queue_depth", 3)

Incremental state (Perfetto's docs/reference/synthetic-track-event.md): every
event packet sets SEQ_NEEDS_INCREMENTAL_STATE, since it refers to state written
earlier on its sequence: the track descriptors (process, thread, counter and
async tracks) and the interning tables (event names, categories, debug
annotation names, source locations, log message bodies: a string is written
once, in an InternedData entry of the first packet that uses it, and referred
to by its iid afterwards). The state goes out again before the next event
whenever the writer's `incremental_state_invalid` is set (a new writer; a gap
the writer marked with previous_packet_dropped; a clear the service asked for,
which the SDK forwards to the instance's writers; a write that failed): the
descriptors first, the first of them flagged SEQ_INCREMENTAL_STATE_CLEARED,
and interning restarts from iid 1. An importer drops a sequence's state at a
loss and skips its events up to the next such packet, so a reader that lost
the earlier packets still resolves everything after the clear. Tables that
grow past MAX_INTERNED entries (names made of changing data) are restarted the
same way, which bounds memory. The flag belongs to the writer's sequence, so a
writer carries one TrackEventSequence at a time (a new one describes its
tracks before its first event).

The fast path: a begin or instant of an already-seen (name, category, track)
without args or flows, and an end, is one clock call, cached bytes and one
write_packet (the timestamp's varint reuses its high bytes). The SDK's compiled
twin (tracebus/_speedups.c) does exactly this in C from the same caches
(tables()), about 20x faster; tests/test_sdk_twins.py proves the bytes
identical. Bytes come from
actors/track_event_encoding.py (precomputed tags), never from the generated
protobuf classes; nothing here imports the Perfetto schema. Odd input never
raises here (names of any str, args of any value); the writer's own errors
(SMBExhaustedError) propagate.

Timestamps are the clock's (CLOCK_BOOTTIME in ns, Perfetto's default trace
clock). Track uuids, so that producers and threads never collide:
process ``0x5EED << 48 | pid``; thread ``1 << 62 | pid << 24 | tid``; a counter
``3 << 62 | pid << 37 | hash(name)`` (37 bits of blake2b: the same track for
every thread of the process, across re-emissions); an async track
``3 << 62 | 1 << 61 | pid << 37 | n`` (n counts the process's async tracks);
pid and tid taken modulo 2**24.
"""

from __future__ import annotations

import itertools
import operator
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from actors.track_event_encoding import (
    CATEGORY_IIDS,
    CLEARED,
    COUNTER,
    COUNTER_VALUE,
    DEBUG_ANNOTATION_NAMES,
    DEBUG_ANNOTATIONS,
    DOUBLE_COUNTER_VALUE,
    EVENT_CATEGORIES,
    EVENT_NAMES,
    FLOW_IDS,
    INSTANT,
    LOG_MESSAGE_BODY,
    MAX_ITEMS,
    NAME_IID,
    NEEDS_STATE,
    SLICE_BEGIN,
    SLICE_END,
    SOURCE_LOCATIONS,
    TERMINATING_FLOW_IDS,
    TIMESTAMP,
    TRACK_DESCRIPTOR,
    TRACK_EVENT,
    TRACK_UUID,
    TYPE,
    annotation,
    counter_descriptor,
    double,
    event_fields,
    field,
    fixed64,
    interned_entry,
    log_message,
    log_message_prefix,
    named_descriptor,
    process_descriptor,
    safe_str,
    source_location_entry,
    thread_descriptor,
    utf8,
)
from shm.protozero import _V14C, varint  # _V14C: 14 bits, continuation bits set
from shm.writer import TraceWriter

MAX_INTERNED = 4096  # interned strings per sequence before interning restarts
MAX_CACHED = 4096  # fast-path entries before the cache starts over
MAX_TRACKS = 1024  # counter and async tracks kept per sequence; more are refused
CATEGORY = "tracebus"  # TrackEvents' category

_U64 = (1 << 64) - 1
_INT64_MIN, _INT64_END = -(1 << 63), 1 << 63
_LOW24 = 0xFFFFFF
_ASYNC_NUMBERS = itertools.count(1)  # per process; next() is atomic under the GIL


def _hash64(data: bytes) -> int:
    from hashlib import blake2b  # lazily: hashlib loads OpenSSL (~3 ms)

    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def track_uuids(pid: int, tid: int) -> tuple[int, int]:
    """(process, thread) track uuids; see the module docstring."""
    return 0x5EED << 48 | pid, 1 << 62 | (pid & _LOW24) << 24 | (tid & _LOW24)


def counter_uuid(pid: int, name: str) -> int:
    return 3 << 62 | (pid & _LOW24) << 37 | _hash64(utf8(name)) & ((1 << 37) - 1)


def async_uuid(pid: int, number: int) -> int:
    return 3 << 62 | 1 << 61 | (pid & _LOW24) << 37 | number & ((1 << 37) - 1)


def flow_id(value: object) -> int:
    """A user's flow key (int or str, the same in every process) as a non-zero
    64-bit flow id, the same in every process and run (not Python's hash())."""
    if isinstance(value, str):
        key = b"s" + utf8(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        key = b"i" + str(int(value)).encode()  # an IntEnum member as its value
    else:
        key = b"o" + utf8(safe_str(value))
    return _hash64(key) or 1


class TrackEventSequence:
    """One thread's TrackEvent packets into one TraceWriter (one sequence); see
    the module docstring. Owned by one thread; other threads may only set
    writer.incremental_state_invalid."""

    def __init__(
        self,
        writer: TraceWriter,
        clock: Callable[[], int],
        *,
        pid: int,
        tid: int,
        process_name: str,
        thread_name: str,
    ) -> None:
        self._writer = writer
        self._clock = clock
        self.pid, self.tid = pid, tid
        self.process_track, self.thread_track = track_uuids(pid, tid)
        self._base = (
            field(TRACK_DESCRIPTOR, process_descriptor(self.process_track, pid, process_name))
            + CLEARED,
            field(TRACK_DESCRIPTOR, thread_descriptor(
                self.thread_track, self.process_track, pid, tid, thread_name)),
        )  # fmt: skip
        self._tracks: dict[int, bytes] = {}  # counter and async tracks: uuid -> descriptor
        self._counters: dict[str, bytes] = {}  # name -> TrackEvent body up to the value
        self._interned: dict[tuple[int, Any], int] = {}  # (InternedData field, key) -> iid
        self._next_iid = 1
        # The fast path's event fields, for a begin and for an instant: track ->
        # category -> name -> fields (nested, so a lookup builds no key tuple).
        self._begins: dict[int, dict[str, dict[str, bytes]]] = {}
        self._instants: dict[int, dict[str, dict[str, bytes]]] = {}
        self._cached = 0  # entries in both
        self._logs: dict[tuple, tuple[bytes, bytes]] = {}  # log(): head and LogMessage prefix
        self._ends: dict[int, bytes] = {}  # track -> SLICE_END event fields
        self._high, self._tail = -1, b""  # _now(): the clock's bits above 28, encoded
        self.refused = 0  # counters and async tracks refused beyond MAX_TRACKS
        writer.incremental_state_invalid = True  # new tracks: describe them first

    def tables(self) -> tuple[dict, dict, dict, dict]:
        """The fast path's caches, which the compiled twin (tracebus/_speedups.c)
        reads directly: begins and instants (track -> category -> name -> event
        fields), ends (track -> SLICE_END fields), counters (name -> body up to
        the value). Cleared in place, never replaced."""
        return self._begins, self._instants, self._ends, self._counters

    # -- events ---------------------------------------------------------------------------

    def begin(
        self,
        name: str,
        category: str,
        args: Mapping[str, Any] | None = None,
        flows: Sequence[int] = (),
        terminating_flows: Sequence[int] = (),
        track: int = 0,
    ) -> None:
        """A slice begins on `track` (0: the thread's)."""
        self._point(SLICE_BEGIN, name, category, args, flows, terminating_flows, track)

    def end(self, track: int = 0) -> None:
        """The innermost open slice of `track` (0: the thread's) ends."""
        w = self._writer
        if w.incremental_state_invalid:
            self._emit_state()
        fields = self._ends.get(track)
        if fields is None:
            uuid = track if type(track) is int and 0 < track <= _U64 else self.thread_track
            if len(self._ends) >= MAX_CACHED:
                self._ends.clear()
            fields = self._ends[track] = event_fields(
                TYPE + varint(SLICE_END) + TRACK_UUID + varint(uuid)
            )
        w.write_packet(self._now() + fields)

    def instant(
        self,
        name: str,
        category: str,
        args: Mapping[str, Any] | None = None,
        flows: Sequence[int] = (),
        terminating_flows: Sequence[int] = (),
        track: int = 0,
    ) -> None:
        """A zero-length event on `track` (0: the thread's)."""
        self._point(INSTANT, name, category, args, flows, terminating_flows, track)

    def _point(
        self, type_: int, name: Any, category: Any, args: Any, flows: Any,
        terminating_flows: Any, track: int,
    ) -> None:  # fmt: skip
        """A slice begin or an instant: the fast path (an event seen since the last
        clear, without args or flows: cached bytes after a fresh timestamp), else
        the slow one."""
        if args is None and not flows and not terminating_flows:
            w = self._writer
            if not w.incremental_state_invalid:
                table = self._begins if type_ == SLICE_BEGIN else self._instants
                try:
                    fields = table[track][category][name]
                except (KeyError, TypeError):  # not seen yet, or unhashable: the slow path
                    fields = None
                if fields is not None:
                    w.write_packet(self._now() + fields)
                    return
        self._event(type_, name, category, args, flows, terminating_flows, track)

    def counter(self, name: str, value: int | float, category: str = "", unit: str = "") -> None:
        """A value on the counter track `name` of the process (described on first
        use with `unit`: "ns", "count", "bytes" or any unit name). `category` is
        the caller's to filter on: Perfetto writes none on counter events."""
        w = self._writer
        if w.incremental_state_invalid:
            self._emit_state()
        prefix = self._counters.get(name) if isinstance(name, str) else None
        if prefix is None:
            prefix = self._new_counter(name, unit)
            if prefix is None:
                return
        encoded = _counter_value(value)
        if encoded is None:
            return
        body = prefix + encoded
        w.write_packet(self._now() + field(TRACK_EVENT, body) + NEEDS_STATE)

    def log(
        self,
        body: str,
        prio: int,
        file: str,
        function: str,
        line: int,
        category: str = "log",
        name: str = "log",
    ) -> None:
        """A log message: an instant on the thread's track with Perfetto's
        LogMessage (prio: android LogPriority, 2 verbose .. 7 fatal). What one
        source line at one level always writes (the event's head, the location's
        and the level's fields) is encoded once; a record costs its body's iid."""
        self._ready()
        interned: list[bytes] = []
        try:
            fixed = self._logs.get((name, category, file, function, line, prio))
        except TypeError:  # unhashable arguments: the slow path copes
            fixed = None
        if fixed is None:
            fixed = self._log_fixed(name, category, file, function, line, prio, interned)
        head, prefix = fixed
        body = body if type(body) is str else _as_str(body)
        iid = self._interned.get((LOG_MESSAGE_BODY, body))
        if iid is None:
            iid = self._intern(LOG_MESSAGE_BODY, body, interned)
        event = head + log_message(prefix, iid)
        self._write(event_fields(event, b"".join(interned)), interned)

    def _log_fixed(
        self, name: Any, category: Any, file: Any, function: Any, line: Any, prio: Any,
        interned: list,
    ) -> tuple[bytes, bytes]:  # fmt: skip
        """A log record's event head and LogMessage prefix, kept in _logs (until the
        state is emitted again) when its arguments are plain."""
        location = (_as_str(file), _as_str(function), line if type(line) is int else 0)
        level = prio if type(prio) is int and 0 <= prio <= 7 else 0
        prefix = log_message_prefix(self._intern(SOURCE_LOCATIONS, location, interned), level)
        fixed = (self._head(INSTANT, _as_str(name), _as_str(category), 0, interned), prefix)
        plain = (name, category, file, function)
        if all(type(x) is str for x in plain) and type(line) is int and type(prio) is int:
            if len(self._logs) >= MAX_CACHED:
                self._logs.clear()
            self._logs[name, category, file, function, line, prio] = fixed
        return fixed

    # -- tracks ---------------------------------------------------------------------------

    def counter_track(self, name: str, unit: str = "") -> int:
        """The uuid of the counter track `name`, described now (or with the next
        re-emission of the state); 0 if refused (MAX_TRACKS)."""
        name = _as_str(name)
        if name not in self._counters and self._new_counter(name, unit) is None:
            return 0
        return counter_uuid(self.pid, name)

    def async_track(self, name: str) -> int:
        """A new track under the process's (an asyncio task's), named `name`:
        described now and after every clear until forget_track(uuid); 0 if
        refused (MAX_TRACKS)."""
        uuid = async_uuid(self.pid, next(_ASYNC_NUMBERS))
        descriptor = named_descriptor(uuid, self.process_track, _as_str(name))
        return uuid if self._add_track(uuid, descriptor) else 0

    def forget_track(self, uuid: int) -> None:
        """Stop describing an async track again (its task is done)."""
        self._tracks.pop(uuid, None)
        self._ends.pop(uuid, None)

    # -- the slow path --------------------------------------------------------------------

    def _now(self) -> bytes:
        """TracePacket.timestamp from the clock. A varint of v >= 2**28 is its
        low 28 bits (4 bytes, continuation bits set) then varint(v >> 28); that
        tail changes every 268 ms, so it is kept (a sixth of a begin+end pair)."""
        v = self._clock()
        if v >> 28 == self._high:
            return TIMESTAMP + _V14C[v & 0x3FFF] + _V14C[v >> 14 & 0x3FFF] + self._tail
        high = v >> 28
        if 0 < high < 1 << 36:  # a uint64 in range: the split above holds
            self._high, self._tail = high, varint(high)
        return TIMESTAMP + varint(v)

    def _event(
        self,
        type_: int,
        name: Any,
        category: Any,
        args: Any,
        flows: Any,
        terminating_flows: Any,
        track: int,
    ) -> None:
        """An event not in the fast-path cache: intern what it names, encode its
        args and flows, write it with the InternedData entries it introduces."""
        self._ready()
        interned: list[bytes] = []
        head = self._head(type_, _as_str(name), _as_str(category), track, interned)
        plain = args is None and not flows and not terminating_flows
        if plain and type(name) is str and type(category) is str and type(track) is int:
            if self._cached >= MAX_CACHED:
                self._clear_cache()
            table = self._begins if type_ == SLICE_BEGIN else self._instants
            table.setdefault(track, {}).setdefault(category, {})[name] = event_fields(head)
            self._cached += 1
        if args is not None:
            head += self._annotations(args, interned)
        head += _flows(FLOW_IDS, flows) + _flows(TERMINATING_FLOW_IDS, terminating_flows)
        self._write(event_fields(head, b"".join(interned)), interned)

    def _head(self, type_: int, name: str, category: str, track: Any, interned: list) -> bytes:
        """type, track, category iids (one per part of "a,b") and the name iid."""
        track = track if type(track) is int and 0 < track <= _U64 else self.thread_track
        head = TYPE + varint(type_) + TRACK_UUID + varint(track)
        for part in category.split(",") if category else ():
            head += CATEGORY_IIDS + varint(self._intern(EVENT_CATEGORIES, part, interned))
        return head + NAME_IID + varint(self._intern(EVENT_NAMES, name, interned))

    def _annotations(self, args: Any, interned: list) -> bytes:
        try:
            out = []
            for key, value in list(args.items())[:MAX_ITEMS]:
                iid = self._intern(DEBUG_ANNOTATION_NAMES, _as_str(key), interned)
                out.append(field(DEBUG_ANNOTATIONS, annotation(iid, value)))
            return b"".join(out)
        except Exception as e:  # an args object that is no mapping, or mutated meanwhile
            iid = self._intern(DEBUG_ANNOTATION_NAMES, "args", interned)
            return field(DEBUG_ANNOTATIONS, annotation(iid, f"<args: {type(e).__name__}>"))

    def _intern(self, kind: int, key: Any, interned: list) -> int:
        """The iid of `key` in the InternedData table `kind`; a new one adds its
        entry to `interned` (written with the packet that first uses it)."""
        iid = self._interned.get((kind, key))
        if iid is None:
            iid = self._interned[kind, key] = self._next_iid
            self._next_iid += 1
            if kind == SOURCE_LOCATIONS:
                interned.append(source_location_entry(iid, *key))
            else:
                interned.append(interned_entry(kind, iid, key))
        return iid

    def _write(self, fields: bytes, interned: list) -> None:
        try:
            self._writer.write_packet(self._now() + fields)
        except BaseException:
            if interned:  # iids the reader never got: start over before the next event
                self._writer.incremental_state_invalid = True
            raise

    def _ready(self) -> None:
        if self._writer.incremental_state_invalid or self._next_iid > MAX_INTERNED:
            self._emit_state()

    def _emit_state(self) -> None:
        """Describe every track again and restart interning. The flag is cleared
        first: a clear asked for meanwhile (another thread) or a drop while
        writing these sets it again."""
        w = self._writer
        w.incremental_state_invalid = False
        self._interned.clear()
        self._next_iid = 1
        self._clear_cache()
        self._logs.clear()
        ts = self._now()
        for descriptor in self._base:
            w.write_packet(ts + descriptor)
        for descriptor in list(self._tracks.values()):
            w.write_packet(ts + descriptor)

    def _clear_cache(self) -> None:
        self._begins.clear()
        self._instants.clear()
        self._cached = 0

    def _add_track(self, uuid: int, descriptor: bytes) -> bool:
        """Keep a track for re-emission, and describe it now unless the next
        event re-emits every descriptor anyway."""
        if len(self._tracks) >= MAX_TRACKS:
            self.refused += 1
            return False
        packet = self._tracks[uuid] = field(TRACK_DESCRIPTOR, descriptor)
        if not self._writer.incremental_state_invalid:
            self._writer.write_packet(self._now() + packet)
        return True

    def _new_counter(self, name: Any, unit: Any) -> bytes | None:
        name, unit = _as_str(name), _as_str(unit)
        prefix = self._counters.get(name)
        if prefix is not None:
            return prefix
        uuid = counter_uuid(self.pid, name)
        if not self._add_track(uuid, counter_descriptor(uuid, self.process_track, name, unit)):
            return None
        prefix = self._counters[name] = TYPE + varint(COUNTER) + TRACK_UUID + varint(uuid)
        return prefix


def _as_str(value: Any) -> str:
    return value if type(value) is str else safe_str(value)


def _counter_value(value: Any) -> bytes | None:
    """counter_value for an int64 (or an integer type's value), else
    double_counter_value for anything float() takes; None for anything else."""
    if type(value) is int and _INT64_MIN <= value < _INT64_END:
        return COUNTER_VALUE + varint(value)
    try:
        if not isinstance(value, (bool, float)) and hasattr(value, "__index__"):
            number = operator.index(value)  # IntEnum, numpy integers
            if _INT64_MIN <= number < _INT64_END:
                return COUNTER_VALUE + varint(number)
        return double(DOUBLE_COUNTER_VALUE, float(value))
    except Exception:
        return None


def _flows(key: bytes, ids: Any) -> bytes:
    """fixed64 flow ids: ints as given (mod 2**64, 0 skipped), other keys
    through flow_id()."""
    if not ids:
        return b""
    if isinstance(ids, (int, str)):
        ids = (ids,)
    try:
        values = [v & _U64 if type(v) is int else flow_id(v) for v in ids]
    except Exception:
        return b""
    return b"".join(fixed64(key, v) for v in values if v)


# -- TrackEvents: the calling thread's sequence, for custom data sources -------------------


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class TrackEvents:
    """Slices, instants and counters of the calling thread (category "tracebus"),
    written through one TraceWriter."""

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
        pid, tid = os.getpid(), threading.get_native_id()
        self.process_name = process_name or f"pid {pid}"
        self.thread_name = thread_name or threading.current_thread().name
        self.sequence = TrackEventSequence(
            writer, boottime_ns, pid=pid, tid=tid,
            process_name=self.process_name, thread_name=self.thread_name,
        )  # fmt: skip
        self.pid, self.tid = pid, tid
        self.process_track, self.thread_track = track_uuids(pid, tid)
        for name in counters:
            self.sequence.counter_track(name)

    def reset(self) -> None:
        """Describe the tracks again before the next event (any thread may call it)."""
        self._writer.incremental_state_invalid = True

    def begin(self, name: str) -> None:
        self.sequence.begin(name, CATEGORY)

    def end(self) -> None:
        self.sequence.end()

    def instant(self, name: str) -> None:
        self.sequence.instant(name, CATEGORY)

    @contextmanager
    def slice(self, name: str) -> Iterator[None]:
        self.begin(name)
        try:
            yield
        finally:
            self.end()

    def counter(self, name: str, value: int | float) -> None:
        self.sequence.counter(name, value)
