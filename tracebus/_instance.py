"""One track_event data source instance (one per session that asks for it), as
the API writes into it: its category filter, and one sequence per thread.

Each application thread gets, on its first event for the instance, its own
TraceWriter (from the host; policy DROP, so a write never waits) and a
TrackEventSequence over it (actors/track_event.py: the encoding, the interning,
the track descriptors). The sequence belongs to that thread alone.

Stopping while threads write. The host closes the instance's writers once
on_stop returns, so on_stop must return only when no thread is inside a write:

    writer thread                         stopping thread (the producer's)
    seq.busy = True                       instance.live = False
    if instance.live: write               wait until no seq.busy (bounded)
    seq.busy = False                      return -> the host closes the writers

Either the writer sees live False and writes nothing, or the stopper sees busy
and waits for the write to end. A busy flag found set on entry means the same
thread re-entered (a signal handler or a log record emitted mid-write): that
event is dropped rather than interleaved into a half-written packet.

Threads that end. A thread's sequence, writer and writer id would otherwise
live as long as the instance (an app that starts a thread per request would
run out of writer ids, and hold a chunk per dead thread). Beside its sequence
the thread keeps a `_ThreadEnd` in its thread-local storage; Python drops it
on that very thread when the thread ends, and it hands the writer back there,
by its owner (flushed, committed, closed, forgotten by the host), under the
same busy flag as a write.

asyncio: while a task is current on the thread's running loop, slices and
instants go to the task's own track (TrackEventSequence.async_track, named
after the task), so interleaved tasks never close each other's slices; the
track is forgotten when the task is done (a done callback, which runs on the
loop's thread, the sequence's owner).

The compiled twin. ThreadSequence and TrackEventInstance build on
SequenceCore and InstanceCore: from tracebus/_speedups.c when it was built
(shm/native.py), whose slice()/instant()/counter() then read the busy and live
flags, the writer and the sequence's caches as C members; else on the pure
classes below, which hold the same attributes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from actors.track_event import TrackEventSequence, flow_id
from actors.track_event_config import CategoryFilter
from shm.native import compiled
from shm.writer import TraceWriter

_modules = sys.modules  # asyncio is looked up, never imported: no loop runs without it
STOP_WAIT_S = 1.0  # how long on_stop waits for a write in progress (microseconds, normally)


# Perfetto's default trace clock (a partial: no Python frame per event).
boottime_ns: Callable[[], int] = partial(time.clock_gettime_ns, time.CLOCK_BOOTTIME)


class _PySequenceCore:
    """The pure twin of _speedups.SequenceCore: what the compiled path reads of
    a ThreadSequence (unused by the pure-Python path, but for busy and writer)."""

    __slots__ = ("busy", "abandoned", "writer", "begins", "instants", "ends", "counters", "clock")


class _PyInstanceCore:
    """The pure twin of _speedups.InstanceCore: an instance's live flag and the
    threading.local holding each thread's sequence (the compiled one also keeps
    the last writing thread's, which forget_thread() drops)."""

    live: bool
    _local: threading.local

    def forget_thread(self) -> None:
        pass


_speedups = compiled("tracebus._speedups")
if TYPE_CHECKING:
    from tracebus._speedups import InstanceCore, SequenceCore
elif _speedups is not None:
    SequenceCore, InstanceCore = _speedups.SequenceCore, _speedups.InstanceCore
else:
    SequenceCore, InstanceCore = _PySequenceCore, _PyInstanceCore


def flow_ids(flow: Any) -> Sequence[int]:
    """flow= / terminate_flow=: one key, or a list/tuple/set of keys (callers
    pass () themselves for None, the common case)."""
    if isinstance(flow, list | tuple | set | frozenset):
        return tuple(flow_id(f) for f in flow)
    return (flow_id(flow),)


class ThreadSequence(SequenceCore):
    """One thread's sequence into one instance."""

    __slots__ = ("events", "tasks", "owner", "__weakref__")

    writer: TraceWriter

    def __init__(
        self, events: TrackEventSequence, writer: TraceWriter, clock: Callable[[], int] | None
    ) -> None:
        self.busy = False  # set by its thread around each write (see the module docstring)
        self.abandoned = False  # its write cannot end before the instance stops
        self.events = events
        self.writer = writer
        # What the compiled path reads: the caches of a real sequence only (a test's
        # fake has none, and then every event takes the Python path); clock None
        # means CLOCK_BOOTTIME, read in C.
        tables = events.tables() if hasattr(events, "tables") else (None,) * 4
        self.begins, self.instants, self.ends, self.counters = tables
        self.clock = clock
        self.owner = threading.get_ident()
        self.tasks: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def current_track(self) -> int:
        """The current asyncio task's track, or 0 (the thread track)."""
        aio = _modules.get("asyncio")
        if aio is None:
            return 0
        loop = aio.events._get_running_loop()
        if loop is None:
            return 0
        task = aio.current_task(loop)
        if task is None:
            return 0
        track = self.tasks.get(task)
        if track is None:
            track = self.events.async_track(task.get_name())
            self.tasks[task] = track
            task.add_done_callback(partial(_forget_task_track, weakref.ref(self), track))
        return track


def _forget_task_track(seq_ref: weakref.ref[ThreadSequence], track: int, task: Any) -> None:
    seq = seq_ref()
    if seq is not None:
        seq.tasks.pop(task, None)
        seq.events.forget_track(track)


class _ThreadEnd:
    """Dropped by Python when its thread ends (see the module docstring)."""

    __slots__ = ("instance", "seq")

    def __init__(self, instance: TrackEventInstance, seq: ThreadSequence) -> None:
        self.instance = instance
        self.seq = seq

    def __del__(self) -> None:
        try:
            self.instance.thread_ended(self.seq)
        except Exception:  # noqa: BLE001 - a destructor must not raise
            pass


def _instant(seq: ThreadSequence, name: str, category: str, args: Any, flow: Any, end: Any) -> None:
    flows = () if flow is None else flow_ids(flow)
    ends = () if end is None else flow_ids(end)
    seq.events.instant(name, category, args, flows, ends, seq.current_track())


def _counter(seq: ThreadSequence, *args: Any) -> None:
    seq.events.counter(*args)


def _log(seq: ThreadSequence, *args: Any) -> None:
    seq.events.log(*args)


class TrackEventInstance(InstanceCore):
    """See the module docstring. `new_writer` is the host's DataSource.writer of
    this instance (the calling thread's writer)."""

    def __init__(
        self,
        new_writer: Callable[[], TraceWriter],
        category_filter: CategoryFilter,
        process_name: str,
        pid: int,
        clock: Callable[[], int] = boottime_ns,
        release_writer: Callable[[TraceWriter], None] = lambda _w: None,
    ) -> None:
        self.live = False  # set by the runtime when the instance starts
        self.filter = category_filter
        self.process_name = process_name
        self.pid = pid
        self.clock = clock
        self._new_writer = new_writer
        self._release_writer = release_writer
        self._local = threading.local()
        # Guards _sequences (threads add theirs); reentrant: creating a writer may log.
        self._lock = threading.RLock()
        self._sequences: list[ThreadSequence] = []
        self._retired_drops = 0  # packets dropped by sequences of ended threads
        self._reentered = 0  # events dropped because their thread was inside a write

    def wants(self, category: str, tags: tuple[str, ...]) -> bool:
        return self.filter.enabled(category, tags)

    # -- writing (application threads) ----------------------------------------------------------

    def begin(self, name: str, category: str, args: Any, flow: Any, terminate_flow: Any) -> Any:
        """A slice begins: returns what end() needs, or None if nothing was written."""
        seq = getattr(self._local, "seq", None) or self._sequence()
        if seq is None or seq.busy:
            self._count_reentered(seq)
            return None
        seq.busy = True
        try:
            if not self.live:
                return None
            track = seq.current_track()
            flows = () if flow is None else flow_ids(flow)
            ends = () if terminate_flow is None else flow_ids(terminate_flow)
            seq.events.begin(name, category, args, flows, ends, track)
            return (seq, track)
        except BaseException:
            self._interrupted(seq)
            raise
        finally:
            seq.busy = False

    def end(self, opened: tuple[ThreadSequence, int]) -> None:
        seq, track = opened
        if seq.busy:
            self._count_reentered(seq)
            return
        if getattr(self._local, "seq", None) is not seq:
            return  # a slice object ended on another thread than it began
        seq.busy = True
        try:
            if self.live:
                seq.events.end(track)
        except BaseException:
            self._interrupted(seq)
            raise
        finally:
            seq.busy = False

    def instant(self, name: str, category: str, args: Any, flow: Any, terminate_flow: Any) -> None:
        self._guarded(_instant, name, category, args, flow, terminate_flow)

    def counter(self, name: str, value: int | float, category: str, unit: str) -> None:
        self._guarded(_counter, name, value, category, unit)

    def log(self, body: str, prio: int, file: str, function: str, line: int, category: str) -> None:
        self._guarded(_log, body, prio, file, function, line, category)

    def _guarded(self, write: Callable[..., None], *args: Any) -> None:
        """write(the thread's sequence, *args) under its busy flag, while live."""
        seq = self._sequence()
        if seq is None or seq.busy:
            self._count_reentered(seq)
            return
        seq.busy = True
        try:
            if self.live:
                write(seq, *args)
        except BaseException:
            self._interrupted(seq)
            raise
        finally:
            seq.busy = False

    def _count_reentered(self, seq: ThreadSequence | None) -> None:
        """An event dropped because its thread was inside a write already (a signal
        handler, a log record emitted mid-write): counted with the dropped packets."""
        if seq is not None:
            self._reentered += 1  # a race between threads costs a count, never a crash

    def _interrupted(self, seq: ThreadSequence) -> None:
        """An exception left a write half done (a KeyboardInterrupt from a signal
        handler, an error of ours): describe everything again before the next
        event, and if the writer gave up its chunk (TraceWriter.abandon), the
        thread's next event starts a new sequence on a new writer, and the old
        writer's chunk and id go back (TraceWriter.salvage: this thread has left
        the write), once the host has forgotten it."""
        try:
            seq.writer.incremental_state_invalid = True
            if not seq.writer.closed:
                return
            if getattr(self._local, "seq", None) is seq:
                del self._local.seq
                del self._local.end  # its thread_ended() sees seq busy and leaves it
                self.forget_thread()
            with self._lock:
                if seq not in self._sequences:
                    return  # stop() took it: the host closes what is left
                self._sequences.remove(seq)
                self._retired_drops += seq.writer.dropped_packets
                self._release_writer(seq.writer)
                seq.writer.salvage()
        except Exception:  # noqa: BLE001 - the exception in flight is the one to report
            pass

    def _sequence(self) -> ThreadSequence | None:
        seq: ThreadSequence | None = getattr(self._local, "seq", None)
        if seq is None and self.live:
            local = self._local
            if getattr(local, "creating", False):
                # A signal handler's event while this thread makes its sequence: a
                # second sequence (and writer) would replace the first under it.
                self._reentered += 1
                return None
            local.creating = True
            try:
                seq = self._new_sequence()
            finally:
                local.creating = False
        return seq

    def _new_sequence(self) -> ThreadSequence | None:
        with self._lock:
            if not self.live:
                return None
            writer = self._new_writer()
            events = TrackEventSequence(
                writer, self.clock, pid=self.pid, tid=threading.get_native_id(),
                process_name=self.process_name, thread_name=threading.current_thread().name,
            )  # fmt: skip
            seq = ThreadSequence(events, writer, None if self.clock is boottime_ns else self.clock)
            self._sequences.append(seq)
            self._local.seq = seq
            self._local.end = _ThreadEnd(self, seq)
            self.forget_thread()
        return seq

    def thread_ended(self, seq: ThreadSequence) -> None:
        """The thread of `seq` ends (its _ThreadEnd is being dropped): on that thread,
        hand its writer back. Anywhere else (the thread-locals replaced by stop(),
        or a forked child clearing its parent's threads) nothing is touched."""
        self.forget_thread()  # its thread id may come back with a new thread
        if threading.get_ident() != seq.owner or os.getpid() != self.pid or seq.busy:
            return
        seq.busy = True
        try:
            with self._lock:  # stop() takes the sequences under it: one of us has seq
                if not self.live or seq not in self._sequences:
                    return
                self._sequences.remove(seq)
                self._release_writer(seq.writer)
                self._retired_drops += seq.writer.dropped_packets
        finally:
            seq.busy = False

    # -- stopping (the producer's thread) -------------------------------------------------------

    def stop(self, wait_s: float = STOP_WAIT_S) -> bool:
        """Refuse new writes and wait for those in progress; False if one was still
        going after `wait_s`. Drops this instance's sequences (the host closes their
        writers next)."""
        self.live = False
        deadline = time.monotonic() + wait_s
        if not self._lock.acquire(timeout=wait_s):  # a thread still creating its sequence
            return False
        try:
            sequences, self._sequences = self._sequences, []
        finally:
            self._lock.release()
        for seq in sequences:
            while seq.busy and not seq.abandoned:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.0001)  # a write takes microseconds; this is the stopping thread
        self._local = threading.local()  # threads' references go with their next event
        self.forget_thread()
        return True

    def abandon_own_write(self) -> bool:
        """shutdown() on a thread inside a write of its own (a signal handler that ran
        mid-event): that write cannot end before shutdown returns, so stop() must
        not wait for it, nor may its writer be closed under it: it is given up
        (TraceWriter.abandon) and the service scrapes what it completed."""
        seq: ThreadSequence | None = getattr(self._local, "seq", None)
        if seq is None or not seq.busy:
            return False
        seq.abandoned = True
        seq.writer.abandon()
        return True

    def dropped_packets(self) -> int:
        with self._lock:
            live = sum(seq.writer.dropped_packets for seq in self._sequences)
            return self._retired_drops + self._reentered + live
