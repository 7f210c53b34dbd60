"""`tracebus summary TRACE`: what a Perfetto trace file holds, without a browser.

read_trace(path) streams the file's packets through the official schema
(perfetto_trace_pb2) into a TraceContents: processes (pid, name from the process
descriptors or the process tree, packets), threads (tid, pid, name, events),
event counts per (category, name), counters (samples, min, max, last) and losses
(the last trace_stats: chunks overwritten and discarded, packets the writers
dropped, ABI violations, invalid packets; and the packets marked
previous_packet_dropped). format_contents(contents) turns it into one screen:
each table its top rows, then "... and K more".

Track events name their event and categories inline or by interning id. Interned
names are per sequence (trusted_packet_sequence_id): InternedData adds to the
sequence's tables, a packet with SEQ_INCREMENTAL_STATE_CLEARED (or the older
incremental_state_cleared) empties them first, and an id the table lacks (its
InternedData was lost) counts as "(interned #N)". Tracks are described globally,
by uuid (TrackDescriptor): which thread an event's track belongs to, a counter
track's name. A file that is missing, or whose framing is not a Perfetto Trace, is
a TraceReadError; a packet that does not decode is counted and skipped; a torn
end (a last packet cut short) is noted.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_SEQUENCE_ID = 1  # the tracing service's own packets (Perfetto's convention too)
SEQ_INCREMENTAL_STATE_CLEARED = 1
SLICE_BEGIN, SLICE_END, INSTANT, COUNTER = 1, 2, 3, 4
READ_BYTES = 1 << 20
TOP_ROWS = 12
EXIT_OK, EXIT_FAILED = 0, 1


class TraceReadError(Exception):
    """The file cannot be read as a Perfetto trace; the message says where and why."""


@dataclass
class ProcessInfo:
    pid: int
    name: str = ""
    packets: int = 0  # packets the service stamped with this trusted_pid
    service: bool = False  # the tracing service's own sequence


@dataclass
class ThreadInfo:
    tid: int
    pid: int = 0
    name: str = ""
    events: int = 0  # slices begun and instants on the thread's track


@dataclass
class CounterInfo:
    name: str
    samples: int = 0
    min: float = 0.0
    max: float = 0.0
    last: float = 0.0

    def add(self, value: float) -> None:
        if not self.samples:
            self.min = self.max = value
        self.min, self.max = min(self.min, value), max(self.max, value)
        self.last = value
        self.samples += 1


@dataclass
class Losses:
    chunks_overwritten: int = 0
    chunks_discarded: int = 0
    writer_packets_dropped: int = 0  # trace_writer_packet_loss, over the buffers
    abi_violations: int = 0
    patches_failed: int = 0
    invalid_packets: int = 0  # packets the service dropped (reserved fields, malformed)
    marked_packets: int = 0  # packets marked previous_packet_dropped
    undecodable_packets: int = 0  # packets in this file that do not parse

    def items(self) -> list[tuple[str, int]]:
        return [
            ("chunks overwritten", self.chunks_overwritten),
            ("chunks discarded", self.chunks_discarded),
            ("packets the writers dropped", self.writer_packets_dropped),
            ("ABI violations", self.abi_violations),
            ("patches failed", self.patches_failed),
            ("invalid packets", self.invalid_packets),
            ("packets marked previous_packet_dropped", self.marked_packets),
            ("packets that do not parse", self.undecodable_packets),
        ]


@dataclass
class TraceContents:
    packets: int = 0
    bytes: int = 0
    sequences: set[int] = field(default_factory=set)
    first_ns: int | None = None
    last_ns: int | None = None
    processes: dict[int, ProcessInfo] = field(default_factory=dict)
    threads: dict[int, ThreadInfo] = field(default_factory=dict)
    events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (category, name)
    counters: dict[str, CounterInfo] = field(default_factory=dict)
    losses: Losses = field(default_factory=Losses)
    has_stats: bool = False  # a trace_stats packet was found
    torn_bytes: int = 0  # a last packet cut short

    def process(self, pid: int) -> ProcessInfo:
        return self.processes.setdefault(pid, ProcessInfo(pid))

    def thread(self, tid: int) -> ThreadInfo:
        return self.threads.setdefault(tid, ThreadInfo(tid))


@dataclass
class _Sequence:
    """A sequence's incremental state: its interning tables and packet defaults."""

    names: dict[int, str] = field(default_factory=dict)
    categories: dict[int, str] = field(default_factory=dict)
    default_track: int = 0


# -- reading -----------------------------------------------------------------------------------


class _Reader:
    """Packets in, a TraceContents out; the state that spans packets."""

    def __init__(self) -> None:
        from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

        self.pb = pb
        self.contents = TraceContents()
        self.sequences: dict[int, _Sequence] = {}
        self.thread_tracks: dict[int, int] = {}  # track uuid -> tid
        self.counter_tracks: dict[int, str] = {}  # track uuid -> counter name

    def add(self, data: bytes) -> None:
        contents = self.contents
        contents.packets += 1
        contents.bytes += len(data)
        try:
            packet = self.pb.TracePacket.FromString(data)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError, or worse: count it
            contents.losses.undecodable_packets += 1
            return
        self._identity(packet)
        seq = self._sequence(packet)
        if packet.HasField("interned_data"):
            self._intern(seq, packet.interned_data)
        if packet.HasField("trace_packet_defaults"):
            seq.default_track = packet.trace_packet_defaults.track_event_defaults.track_uuid
        if packet.HasField("track_descriptor"):
            self._describe(packet.track_descriptor)
        if packet.HasField("process_tree"):
            for p in packet.process_tree.processes:
                info = contents.process(p.pid)
                info.name = info.name or (p.cmdline[0] if p.cmdline else "")
        if packet.HasField("track_event"):
            self._event(seq, packet.track_event)
        if packet.HasField("trace_stats"):
            self._stats(packet.trace_stats)

    def _identity(self, packet: Any) -> None:
        contents = self.contents
        sequence_id = packet.trusted_packet_sequence_id
        contents.sequences.add(sequence_id)
        if packet.HasField("trusted_pid"):
            info = contents.process(packet.trusted_pid)
            info.packets += 1
            info.service = info.service or sequence_id == SERVICE_SEQUENCE_ID
        if packet.previous_packet_dropped:
            contents.losses.marked_packets += 1
        if packet.HasField("timestamp"):
            ts = packet.timestamp
            contents.first_ns = ts if contents.first_ns is None else min(contents.first_ns, ts)
            contents.last_ns = ts if contents.last_ns is None else max(contents.last_ns, ts)

    def _sequence(self, packet: Any) -> _Sequence:
        cleared = packet.sequence_flags & SEQ_INCREMENTAL_STATE_CLEARED
        key = packet.trusted_packet_sequence_id
        if cleared or packet.incremental_state_cleared or key not in self.sequences:
            self.sequences[key] = _Sequence()
        return self.sequences[key]

    def _intern(self, seq: _Sequence, interned: Any) -> None:
        seq.names.update((e.iid, e.name) for e in interned.event_names)
        seq.categories.update((e.iid, e.name) for e in interned.event_categories)

    def _describe(self, track: Any) -> None:
        contents = self.contents
        if track.HasField("process"):
            info = contents.process(track.process.pid)
            info.name = track.process.process_name or track.name or info.name
        if track.HasField("thread"):
            thread = contents.thread(track.thread.tid)
            thread.pid = track.thread.pid
            thread.name = track.thread.thread_name or track.name or thread.name
            self.thread_tracks[track.uuid] = track.thread.tid
        if track.HasField("counter"):
            self.counter_tracks[track.uuid] = track.name or f"(counter track {track.uuid})"

    def _event(self, seq: _Sequence, event: Any) -> None:
        track = event.track_uuid if event.HasField("track_uuid") else seq.default_track
        if event.type == COUNTER:
            name = self.counter_tracks.get(track, f"(counter track {track})")
            counter = self.contents.counters.setdefault(name, CounterInfo(name))
            is_double = event.HasField("double_counter_value")
            counter.add(event.double_counter_value if is_double else event.counter_value)
            return
        if event.type == SLICE_END:
            return  # counted at its begin
        self.contents.events[self._category(seq, event), self._name(seq, event)] += 1
        tid = self.thread_tracks.get(track)
        if tid is not None:
            self.contents.thread(tid).events += 1

    @staticmethod
    def _name(seq: _Sequence, event: Any) -> str:
        if event.HasField("name_iid"):
            return seq.names.get(event.name_iid, f"(interned #{event.name_iid})")
        return event.name if event.HasField("name") else "(unnamed)"

    @staticmethod
    def _category(seq: _Sequence, event: Any) -> str:
        parts = [seq.categories.get(i, f"(interned #{i})") for i in event.category_iids]
        return ",".join([*parts, *event.categories])

    def _stats(self, stats: Any) -> None:
        """The last trace_stats describes the whole session: it replaces earlier ones."""
        seen = self.contents.losses  # what this file shows, not the service's counts
        losses = self.contents.losses = Losses(
            marked_packets=seen.marked_packets, undecodable_packets=seen.undecodable_packets
        )
        for b in stats.buffer_stats:
            losses.chunks_overwritten += b.chunks_overwritten
            losses.chunks_discarded += b.chunks_discarded
            losses.writer_packets_dropped += b.trace_writer_packet_loss
            losses.abi_violations += b.abi_violations
            losses.patches_failed += b.patches_failed
        losses.chunks_discarded += stats.chunks_discarded
        losses.invalid_packets = stats.invalid_packets
        self.contents.has_stats = True


def trace_packets(path: str | Path, contents: TraceContents) -> Iterator[bytes]:
    """The serialized packets of a trace file, read in slices; TraceReadError when the
    framing is not a Trace's; a torn end is left out and counted in contents."""
    from actors.consumer import split_trace

    try:
        with open(path, "rb") as f:
            pending, offset = b"", 0
            while data := f.read(READ_BYTES):
                buffered = pending + data
                packets, used = split_trace(buffered)
                yield from packets
                offset, pending = offset + used, buffered[used:]
                if pending and pending[0] != 0x0A:  # Trace.packet (1), length-delimited
                    raise TraceReadError(f"{path}: not a Perfetto trace (byte {offset})")
    except OSError as e:
        raise TraceReadError(f"cannot read {path}: {e.strerror}") from None
    contents.torn_bytes = len(pending)


def read_packets(packets: Iterable[bytes]) -> TraceContents:
    """A TraceContents of serialized TracePackets, in trace order."""
    reader = _Reader()
    for data in packets:
        reader.add(data)
    return reader.contents


def read_trace(path: str | Path) -> TraceContents:
    """The TraceContents of a trace file; TraceReadError if it is missing or not a trace."""
    reader = _Reader()
    for data in trace_packets(path, reader.contents):
        reader.add(data)
    if not reader.contents.packets and not reader.contents.torn_bytes:
        if Path(path).stat().st_size:
            raise TraceReadError(f"{path}: not a Perfetto trace")
    return reader.contents


# -- formatting --------------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) and not value.is_integer() else f"{value:.0f}"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _table(title: str, header: Sequence[str], rows: list[list[str]], top: int) -> list[str]:
    """A titled table of its first `top` rows, columns aligned, the rest counted. Cells
    hold names the traced programs chose: control characters print as '?' (an escape
    sequence must not drive the terminal, a newline must not forge a row)."""
    shown = [list(header), *([_printable(c) for c in r] for r in rows[:top])]
    widths = [max(len(r[i]) for r in shown) for i in range(len(header))]
    lines = [f"{title}:"]
    for row in shown:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        lines[-1] = lines[-1].rstrip()
    if len(rows) > top:
        lines.append(f"  ... and {len(rows) - top} more")
    return lines


def format_contents(contents: TraceContents, path: str = "", top: int = TOP_ROWS) -> str:
    """One screen: totals, processes, threads, events, counters, losses."""
    span = ""
    if contents.first_ns is not None and contents.last_ns is not None:
        span = f", {(contents.last_ns - contents.first_ns) / 1e9:.3f} s"
    head = f"{path}: " if path else ""
    lines = [
        f"{head}{contents.packets} packets ({_size(contents.bytes)}), "
        f"{len(contents.sequences)} sequences{span}"
    ]
    # Those that wrote first: a ProcessTree (linux.process_stats) names every process
    # of the machine, and the ones recorded must not scroll out of the table.
    processes = sorted(
        contents.processes.values(), key=lambda p: (not p.service, not p.packets, p.pid)
    )
    rows = [[str(p.pid), _process_name(p), str(p.packets)] for p in processes]
    lines += _table(f"processes ({len(rows)})", ["pid", "name", "packets"], rows, top)
    threads = sorted(contents.threads.values(), key=lambda t: (t.pid, t.tid))
    rows = [[str(t.tid), str(t.pid), t.name or "?", str(t.events)] for t in threads]
    lines += _table(f"threads ({len(rows)})", ["tid", "pid", "name", "events"], rows, top)
    events = contents.events.most_common()
    rows = [[str(n), category or "(none)", name] for (category, name), n in events]
    total = sum(contents.events.values())
    title = f"events ({total} in {len(rows)} kinds; slices and instants)"
    lines += _table(title, ["count", "category", "name"], rows, top)
    counters = sorted(contents.counters.values(), key=lambda c: c.name)
    rows = [
        [c.name, str(c.samples), _number(c.min), _number(c.max), _number(c.last)] for c in counters
    ]
    lines += _table(f"counters ({len(rows)})", ["name", "samples", "min", "max", "last"], rows, top)
    lines.append(_losses_line(contents))
    return "\n".join(lines)


def _process_name(p: ProcessInfo) -> str:
    if p.service:
        return f"{p.name} (tracing service)" if p.name else "(tracing service)"
    return p.name or "?"


def _losses_line(contents: TraceContents) -> str:
    found = [f"{what} {n}" for what, n in contents.losses.items() if n]
    if contents.torn_bytes:
        found.append(f"a torn last packet ({contents.torn_bytes} bytes)")
    text = "losses: " + (", ".join(found) if found else "none")
    if not contents.has_stats:
        text += " (no trace_stats in the file: the service's counts are unknown)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tracebus summary",
        description="What a Perfetto trace file holds: processes, threads, event counts "
        "per category and name, counters and losses.",
    )
    parser.add_argument("trace", help="the trace file (.pftrace)")
    parser.add_argument("--top", type=int, default=TOP_ROWS, help="rows per table "
                        f"(default {TOP_ROWS})")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        contents = read_trace(args.trace)
    except TraceReadError as e:
        print(f"tracebus: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(format_contents(contents, args.trace, max(1, args.top)))
    return EXIT_OK
