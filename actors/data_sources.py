"""The built-in data sources every `python -m actors.producer` hosts.

`tracebus.synthetic` (SyntheticDataSource, and `synthetic_named(name)` for the
same source under another name) writes Perfetto's TestEvent packets, configured
by DataSourceConfig.for_testing (TestConfig), like Perfetto's fake producer:

- one writer, on a thread of the instance; packet i (i = 1..message_count) is
  ``TracePacket { for_testing { str, seq_value, counter: i, is_last } }``
  with its fields in that order and ``is_last: true`` on packet message_count only;
- ``seq_value``: std::minstd_rand0 seeded with `seed`, as Perfetto's fake
  producer uses it: x0 = seed % 2147483647, or 1 if that is 0; packet i carries
  x_i = x_{i-1} * 16807 % 2147483647 (`seq_values(seed, n)` computes them);
- ``str``: exactly message_size ASCII bytes, ``f"{seed}:{i}:"`` padded with "."
  and truncated to message_size (`synthetic_str(seed, i, size)`);
- max_messages_per_second 0 writes as fast as possible; otherwise packet i is
  not written before (i - 1) / rate seconds after the start.
The writer is flushed after the last packet, when a flush is requested, and at
stop; a stop before message_count packets ends the sequence early. At its end
the source logs "NAME instance N: wrote K packets": every one of them is in the
trace or among the losses trace_stats counts.

`tracebus.demo_timeline` (DemoTimelineDataSource) writes a small timeline for
ui.perfetto.dev: a process and a thread TrackDescriptor, then the descriptor of
its counter track, then frames of nested slices (frame > update > physics,
frame > render; category "demo", the frame number as the arg "frame" of each
frame slice) and a value on the counter track "queue_depth", timestamped with
CLOCK_BOOTTIME in ns (Perfetto's default trace clock, so TracePacket.timestamp
needs no clock id). for_testing.message_count bounds the number of frames (0:
until stopped), max_messages_per_second sets the frame rate (0: 100 per
second). Names, categories and arg names are interned. Every event sets
SEQ_NEEDS_INCREMENTAL_STATE; the descriptors (the first with
SEQ_INCREMENTAL_STATE_CLEARED) go out before the first event, and interning
restarts, again after each ClearIncrementalState the service sends (the source
declares handles_incremental_state_clear, so TraceConfig's
incremental_state_config.clear_period_ms reaches it) and after a loss its writer
saw. It is written with actors.track_event.TrackEventSequence, the SDK's event
path (track uuids and the incremental state are described there); custom data
sources can use TrackEvents, the same over the calling thread.

Packets are concatenated from precomputed tags (shm.protozero), never built
with the generated protobuf classes.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from actors.producer_sdk import DataSource, ThreadedDataSource
from actors.track_event import TrackEventSequence, boottime_ns
from shm.protozero import LEN, VARINT, tag, varint
from shm.writer import SMBExhaustedError, TraceWriter

_log = logging.getLogger("tracebus.producer")

MINSTD_MODULUS = 2147483647
MINSTD0_MULTIPLIER = 16807


def seq_values(seed: int, n: int) -> list[int]:
    """The first n outputs of std::minstd_rand0(seed)."""
    x = seed % MINSTD_MODULUS or 1
    out = []
    for _ in range(n):
        x = x * MINSTD0_MULTIPLIER % MINSTD_MODULUS
        out.append(x)
    return out


def synthetic_str(seed: int, counter: int, size: int) -> bytes:
    return f"{seed}:{counter}:".encode().ljust(size, b".")[:size]


# TestEvent inside TracePacket.for_testing (900).
_FOR_TESTING = tag(900, LEN)
_STR = tag(1, LEN)
_SEQ_VALUE = tag(2, VARINT)
_COUNTER = tag(3, VARINT)
_IS_LAST = tag(4, VARINT) + b"\x01"


def synthetic_packet(seed: int, counter: int, seq_value: int, size: int, last: bool) -> bytes:
    """One serialized TracePacket of the synthetic source."""
    s = synthetic_str(seed, counter, size)
    body = b"".join(
        (
            _STR, varint(len(s)), s,
            _SEQ_VALUE, varint(seq_value),
            _COUNTER, varint(counter),
            _IS_LAST if last else b"",
        )
    )  # fmt: skip
    return _FOR_TESTING + varint(len(body)) + body


class _Threaded(ThreadedDataSource):
    """A data source writing on one thread of its own, started by on_start. The
    thread flushes its writer when on_flush asks, even while it waits."""

    def _pause(self, seconds: float, w: TraceWriter) -> bool:
        """Wait up to `seconds`, flushing `w` if asked meanwhile; True if stopping."""
        deadline = time.monotonic() + seconds
        while True:
            self._serve_flush(w)
            if self._stopping:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wakeup.wait(remaining)
            self._wakeup.clear()


class SyntheticDataSource(_Threaded):
    """TestEvent packets whose contents a test can recompute (see the module docstring)."""

    name = "tracebus.synthetic"

    def _run(self) -> None:
        cfg = self.config.for_testing
        count, rate, size, seed = (
            cfg.message_count,
            cfg.max_messages_per_second,
            cfg.message_size,
            cfg.seed,
        )
        w = self.writer()
        x = seed % MINSTD_MODULUS or 1
        start = time.monotonic()
        written = 0
        for i in range(1, count + 1):
            if rate:
                if self._pause(start + (i - 1) / rate - time.monotonic(), w):
                    break
            elif self._stopping:
                break
            written = i
            x = x * MINSTD0_MULTIPLIER % MINSTD_MODULUS
            try:
                w.write_packet(synthetic_packet(seed, i, x, size, i == count))
            except SMBExhaustedError:
                pass  # STALL policy gave up on this packet; the writer counted it
            self._serve_flush(w)
        w.flush()
        # What a test compares with the trace: every packet written is in it or counted lost.
        _log.info("%s instance %d: wrote %d packets", self.name, self.instance_id, written)


def synthetic_named(name: str) -> type[DataSource]:
    """The synthetic data source under another name."""
    if name == SyntheticDataSource.name:
        return SyntheticDataSource
    return type(f"Synthetic[{name}]", (SyntheticDataSource,), {"name": name})


# -- tracebus.demo_timeline -------------------------------------------------------------

SLICES = ("frame", "update", "physics", "render")


class DemoTimelineDataSource(_Threaded):
    """Nested slices and a counter on the instance's thread (see the module docstring)."""

    name = "tracebus.demo_timeline"
    # The SDK marks the instance's writers on a clear; TrackEventSequence re-emits.
    handles_incremental_state_clear = True

    def _run(self) -> None:
        cfg = self.config.for_testing
        frames = cfg.message_count
        period = 1.0 / (cfg.max_messages_per_second or 100)
        w = self.writer()
        events = TrackEventSequence(
            w, boottime_ns, pid=os.getpid(), tid=threading.get_native_id(),
            process_name=self.producer_name or "tracebus",
            thread_name=threading.current_thread().name,
        )  # fmt: skip
        events.counter_track("queue_depth", unit="count")
        n = 0
        while not self._stopping and (frames == 0 or n < frames):
            n += 1
            events.begin("frame", "demo", args={"frame": n})
            events.begin("update", "demo")
            events.begin("physics", "demo")
            self._pause(period * 0.2, w)
            events.end()
            events.end()
            events.begin("render", "demo")
            self._pause(period * 0.3, w)
            events.end()
            events.end()
            events.counter("queue_depth", n % 17)
            self._pause(period * 0.5, w)
        w.flush()
