"""The summary the record CLI prints at the end of a recording, without I/O.

TraceSummary counts the packets read back per writer, grouped by the trusted
fields the service appended (packet_identity scans them from the top level of a
TracePacket; the service's trailer spares most scans, see TraceSummary);
format_summary turns that, the producers' names (producer_names reads them
from the service state, also of producers that left), the session's TraceStats
and the read-back's time into one screen: totals, a row per producer, losses by
cause and buffer stats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import compression
from shm.protozero import scan_fields

SERVICE_SEQUENCE_ID = 1  # the service's own packets (clock snapshots, config, stats)


@dataclass(frozen=True)
class PacketIdentity:
    """The trusted fields the service appended (the last value of a field wins)."""

    uid: int | None = None
    pid: int | None = None
    sequence_id: int | None = None
    previous_packet_dropped: bool = False
    machine_id: int = 0  # a relay's machine; 0 the service's own


_IDENTITY_FIELDS = {
    3: "uid", 79: "pid", 10: "sequence_id", 42: "previous_packet_dropped", 98: "machine_id",
}  # fmt: skip


def packet_identity(packet: bytes) -> PacketIdentity | None:
    """Scan the top level of a TracePacket; None if it is not well-formed."""
    fields = scan_fields(packet)
    if fields is None:
        return None
    found: dict[str, Any] = {}
    for number, wire, value in fields:
        if wire == 0 and number in _IDENTITY_FIELDS:
            found[_IDENTITY_FIELDS[number]] = value
    for name in ("uid", "pid"):  # int32 fields: negative values arrive as 64-bit varints
        if found.get(name, 0) >= 1 << 63:
            found[name] -= 1 << 64
    found["previous_packet_dropped"] = bool(found.get("previous_packet_dropped"))
    return PacketIdentity(**found)


@dataclass
class WriterGroup:
    """Packets of one producer process (or of the service, on sequence 1)."""

    pid: int | None
    uid: int | None
    service: bool = False
    machine_id: int = 0  # pids are per machine
    packets: int = 0
    bytes: int = 0
    loss_marks: int = 0  # packets with previous_packet_dropped
    sequences: set[int] = field(default_factory=set)


# The service ends every packet with its trusted trailer (actors/core/readback.py):
#   ... | 0x18 uid | 0x50 sequence id | 0xf8 0x04 pid | [0xd0 0x02 previous_packet_dropped]
TAIL_BYTES = 16  # a trailer within the last TAIL_BYTES decides the identity alone
_COMPRESSED_TAG = b"\x92\x03"  # compressed_packets (50): the only field of such a packet
_DROPPED_TAG = b"\xd0\x02"  # previous_packet_dropped (42): a producer may set it too


def _varint_start(data: bytes, end: int) -> int:
    """Where the varint that ends at data[end - 1] starts; -1 if none does."""
    if end <= 0 or data[end - 1] >= 0x80:
        return -1
    j = end - 1
    while j > 0 and data[j - 1] >= 0x80 and end - j < 10:
        j -= 1
    return j


def trailer_start(packet: bytes) -> int:
    """Where a trailer without previous_packet_dropped starts, read backwards; -1 if the
    packet does not end in one. Unambiguous: each field's tag ends in a byte < 0x80,
    which no varint byte before a varint's last has."""
    j = _varint_start(packet, len(packet))  # pid
    if j < 2 or packet[j - 2 : j] != b"\xf8\x04":
        return -1
    j = _varint_start(packet, j - 2)  # sequence id
    if j < 1 or packet[j - 1] != 0x50:
        return -1
    j = _varint_start(packet, j - 1)  # uid
    if j < 1 or packet[j - 1] != 0x18:
        return -1
    return j - 1


class TraceSummary:
    """Packets and bytes per producer, grouped by the trusted fields of read packets.

    Scanning every packet's top level costs ~20 us in Python, more than the rest of
    the read-back together. The service's contract makes most scans unnecessary:
    the producer's bytes hold no trusted field (the service drops such packets), so
    a packet's identity is its trailer's. A packet whose last TAIL_BYTES were seen
    before on a packet whose whole trailer lay within them has the same trailer, so
    the same group; unless it holds the bytes of a previous_packet_dropped tag
    anywhere (the producer may set it), when it is scanned in full.
    """

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.malformed = 0
        self.compressed = 0  # compressed packets (deflate), counted by what they hold
        self.groups: dict[tuple, WriterGroup] = {}
        self._by_tail: dict[bytes, WriterGroup] = {}

    def add(self, packet: bytes) -> None:
        self.add_all((packet,))

    def add_all(self, packets: Sequence[bytes]) -> None:
        by_tail = self._by_tail
        for packet in packets:  # the hot loop of a read-back: locals only
            group = by_tail.get(packet[-TAIL_BYTES:])
            if group is not None and _DROPPED_TAG not in packet:
                group.packets += 1
                group.bytes += len(packet)
            else:
                self._add_scanned(packet)
        self.packets += len(packets)
        self.bytes += sum(map(len, packets))

    def _add_scanned(self, packet: bytes) -> None:
        """Count the packet in the group a scan of its top level finds; remember its
        tail if its trailer lies within it (see the class docstring). A compressed
        packet counts as the packets it holds."""
        if packet.startswith(_COMPRESSED_TAG):
            inner = compression.inner_packets(packet)
            if inner is not None:  # add_all counted it as one packet: it is these
                self.packets -= 1
                self.bytes -= len(packet)
                self.compressed += 1
                self.add_all(inner)
                return
        ident = packet_identity(packet)
        if ident is None:
            self.malformed += 1
            ident = PacketIdentity()
        service = ident.sequence_id == SERVICE_SEQUENCE_ID
        key: tuple = ("service",) if service else (ident.pid, ident.uid)
        if ident.machine_id and not service:
            key += (ident.machine_id,)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = WriterGroup(ident.pid, ident.uid, service, ident.machine_id)
        group.packets += 1
        group.bytes += len(packet)
        group.loss_marks += ident.previous_packet_dropped
        if ident.sequence_id is not None:
            group.sequences.add(ident.sequence_id)
        size = len(packet)
        if _DROPPED_TAG not in packet and trailer_start(packet) >= size - TAIL_BYTES >= 0:
            self._by_tail[packet[-TAIL_BYTES:]] = group


# Loss counters by cause: per buffer (TraceStats.BufferStats) and service-wide (TraceStats).
BUFFER_LOSSES = (
    "chunks_overwritten",
    "chunks_discarded",
    "trace_writer_packet_loss",
    "abi_violations",
    "patches_failed",
    "oversized_packets_dropped",
)
SERVICE_LOSSES = ("chunks_discarded", "patches_discarded", "invalid_packets", "flushes_failed")
MAX_PRODUCER_ROWS = 16


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def printable(name: str, limit: int = 64) -> str:
    """A name a producer chose, safe to print on a terminal: control characters (an
    escape sequence, a newline that would forge a line of the summary) become '?',
    and it is cut at `limit` characters."""
    safe = "".join(c if c.isprintable() else "?" for c in name[:limit])
    return safe + "..." if len(name) > limit else safe


ProducerKey = int | tuple[int, int]  # a pid on the service's machine, else (machine id, pid)


def producer_names(state: Any) -> dict[ProducerKey, str]:
    """pid -> registered name from a QueryServiceStateResponse: the producers that left
    (oldest first, so the last to use a pid wins), then the connected ones, which win
    on a pid reused by a live producer. Names are made printable (producers are not
    trusted). A producer behind a relay is keyed (machine id, pid) and named
    NAME@MACHINE."""
    machines = {m.id: printable(m.name) for m in getattr(state, "machines", ())}
    names: dict[ProducerKey, str] = {}
    for p in [*state.departed_producers, *state.producers]:
        machine = getattr(p, "machine_id", 0)
        if machine:
            names[(machine, p.pid)] = f"{printable(p.name)}@{machines.get(machine, machine)}"
        else:
            names[p.pid] = printable(p.name)
    return names


def _data_sources(names: Sequence[str]) -> str:
    listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return f"the data source{'' if len(names) == 1 else 's'} {listed}"


def unmatched_at_start(names: Sequence[str]) -> str:
    """The warning for the config's data sources no producer offers as the session starts."""
    return (
        f"no connected producer offers {_data_sources(names)}: nothing is recorded for them"
        " unless a producer offering them connects"
    )


def unmatched_at_end(names: Sequence[str]) -> str:
    """The summary's warning for data sources no producer offered during the session."""
    return f"no producer offered {_data_sources(names)} during the session: they recorded nothing"


@dataclass
class SummaryInput:
    """What the record CLI knows at the end."""

    out_path: str
    summary: TraceSummary
    session_id: int = 0
    seconds: float = 0.0
    producer_names: dict[ProducerKey, str] = field(default_factory=dict)  # producer_names()
    fill_policies: list[str] = field(default_factory=list)  # by buffer index
    stats: pb.TraceStats | None = None
    notes: list[str] = field(default_factory=list)
    unmatched_data_sources: Sequence[str] = ()  # no producer offered them during the session
    # From the first read request to the output file closed; with the file's size.
    readback_seconds: float | None = None
    file_bytes: int = 0


def format_summary(info: SummaryInput) -> str:
    """One screen: totals, a row per producer, losses by cause, buffer stats."""
    s = info.summary
    lines = [
        f"tracebus: wrote {s.packets} packets ({human_bytes(s.bytes)}) to {info.out_path}"
        f" (session {info.session_id}, {info.seconds:.1f} s)"
    ]
    if s.compressed:
        lines.append(f"compressed (deflate) into {s.compressed} packets")
    if info.readback_seconds is not None:
        lines.append(_readback_line(info.file_bytes, info.readback_seconds))
    if info.unmatched_data_sources:
        lines.append(f"warning: {unmatched_at_end(info.unmatched_data_sources)}")
    lines += _producer_rows(info)
    lines += _loss_lines(info)
    lines += _buffer_lines(info)
    lines += [f"note: {note}" for note in info.notes]
    return "\n".join(lines)


def _readback_line(file_bytes: int, seconds: float) -> str:
    rate = file_bytes / (1 << 20) / seconds if seconds > 0 else float("inf")
    return f"read back {human_bytes(file_bytes)} in {seconds:.3f} s ({rate:.1f} MiB/s)"


def _group_name(group: WriterGroup, names: dict[ProducerKey, str]) -> str:
    if group.service:
        return "(tracing service)"
    if group.pid is None:
        return "(no trusted pid)"
    key: ProducerKey = (group.machine_id, group.pid) if group.machine_id else group.pid
    return names.get(key, "(producer gone)")


def _fit(name: str, width: int) -> str:
    """The name cut to `width`; a relayed producer's keeps its @MACHINE."""
    base, at, machine = name.rpartition("@")
    if len(name) <= width or not at or len(machine) > width // 2:
        return name[:width]
    return base[: width - len(machine) - 1] + "@" + machine


def _producer_rows(info: SummaryInput) -> list[str]:
    header = f"  {'producer':<24} {'pid':>7} {'uid':>6} {'seqs':>5} {'packets':>9} {'bytes':>11}"
    rows = [header + "  loss marks"]
    groups = sorted(info.summary.groups.values(), key=lambda g: (not g.service, -g.bytes))
    for g in groups[:MAX_PRODUCER_ROWS]:
        name = _fit(_group_name(g, info.producer_names), 24)
        pid = "-" if g.pid is None else str(g.pid)
        uid = "-" if g.uid is None else str(g.uid)
        rows.append(
            f"  {name:<24} {pid:>7} {uid:>6} {len(g.sequences):>5} {g.packets:>9}"
            f" {human_bytes(g.bytes):>11}  {g.loss_marks}"
        )
    if len(groups) > MAX_PRODUCER_ROWS:
        rows.append(f"  ... and {len(groups) - MAX_PRODUCER_ROWS} more")
    if info.summary.malformed:
        rows.append(f"  {info.summary.malformed} packets did not parse at the top level")
    return rows


def _nonzero(message: Any, names: Sequence[str]) -> str:
    return ", ".join(f"{name} {getattr(message, name)}" for name in names if getattr(message, name))


def _loss_lines(info: SummaryInput) -> list[str]:
    lines = []
    stats = info.stats
    if stats is not None:
        for index, buf in enumerate(stats.buffer_stats):
            causes = _nonzero(buf, BUFFER_LOSSES)
            if unread := unread_chunks(buf):
                causes = ", ".join(c for c in (causes, f"chunks not read {unread}") if c)
            if causes:
                lines.append(f"  buffer {index}: {causes}")
        if causes := _nonzero(stats, SERVICE_LOSSES):
            lines.append(f"  service: {causes}")
    marked = [g for g in info.summary.groups.values() if g.loss_marks]
    if marked:
        by = ", ".join(f"{_group_name(g, info.producer_names)} {g.loss_marks}" for g in marked)
        total = sum(g.loss_marks for g in marked)
        lines.append(f"  previous_packet_dropped: {total} packets ({by})")
    if not lines:
        return ["losses: none" if stats is not None else "losses: unknown (no trace stats)"]
    return ["losses:"] + lines


def unread_chunks(buf: pb.TraceStats.BufferStats) -> int:
    """Chunks a buffer took in that neither reached the trace nor were overwritten
    (a chunk discarded was never written, so it is not among them): nonzero means
    the trace lacks data no other counter covers, e.g. a chunk committed after
    the last read."""
    return buf.chunks_written - buf.chunks_read - buf.chunks_overwritten


def _buffer_lines(info: SummaryInput) -> list[str]:
    if info.stats is None or not len(info.stats.buffer_stats):
        return []
    lines = ["buffers:"]
    for index, b in enumerate(info.stats.buffer_stats):
        policy = info.fill_policies[index] if index < len(info.fill_policies) else "?"
        lines.append(
            f"  #{index} {policy} {human_bytes(b.buffer_size)}:"
            f" written {b.chunks_written} chunks ({human_bytes(b.bytes_written)}),"
            f" read {b.chunks_read} ({human_bytes(b.bytes_read)}),"
            f" overwritten {b.chunks_overwritten} ({human_bytes(b.bytes_overwritten)}),"
            f" wraps {b.write_wrap_count}"
        )
    return lines
