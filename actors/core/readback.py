"""The read-back path: what the service sends a consumer that reads its
session, in bounded slices, with the service's own packets.

Order (traced's): the service's packets on sequence 1 first (clock
snapshots; on the first read trace_config, trace_uuid, trace_provenance,
system_info; trigger packets; service events: service_packets.py has the
list and builds them), then each buffer's packets (buffer 0, 1, ...), then
read_tracing_buffers_completed and trace_stats, once the buffers are read,
so that it counts what the read found.

A read is answered in slices: each `read_slice` call takes packets from the
buffer reader as it goes (never the whole buffer at once) until SliceBudget's
bytes are out or its time_up() says so (the shell's clock; the core reads
none), and the caller sends them in ReadBuffers replies with has_more; the
last reply (has_more false) carries trace_stats. Where a read stands between
slices is data (PendingRead), so other peers are served in between. Packets
come out framed, never as protobuf objects: as ReadBuffersResponse slice
records for a consumer (SLICES), as Trace file bytes for a write_into_file
drain (TRACE_FILE).

Producer packets are validated (shm.packet_check: a packet the official parser
would not read, at any depth it reads, or a field only the service may write,
drops the packet and counts it as invalid_packets; the C twin runs here) and stamped: a kept
packet gets a trailer appended after the producer's bytes; protobuf keeps the
last value of a field, so a producer cannot forge what the trailer says::

    producer bytes ... | [machine_id (98)] | trusted_uid (3)
                       | trusted_packet_sequence_id (10) | trusted_pid (79)
                       | [previous_packet_dropped (42)]

machine_id is stamped on a relayed producer's packets only (its machine's id,
never 0: the service's own machine carries none, as in Perfetto); it comes
first, so that the trailer still ends as consumers read it backwards
(consumer_summary.trailer_start).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import service_packets as sp
from actors.core.service_packets import (
    BOOTTIME,
    SERVICE_SEQUENCE_ID,
    clock_snapshot_packet,
    service_event_packet,
    trace_config_packet,
    trace_stats_packet,
    trusted_trailer,
)
from actors.core.sessions import Session
from protos import tracebus_ipc_pb2 as ipc
from shm._validate import packet_is_valid_untrusted
from shm.buffer_reader import ReadPacket
from shm.protozero import varint
from shm.trace_buffer import TraceBuffer

__all__ = [  # the builders, where callers have always found them
    "BOOTTIME",
    "SERVICE_SEQUENCE_ID",
    "clock_snapshot_packet",
    "service_event_packet",
    "trace_config_packet",
    "trace_stats_packet",
    "trusted_trailer",
]

_DROPPED = b"\xd0\x02"  # previous_packet_dropped (42), varint
_MACHINE = b"\x90\x06"  # machine_id (98), varint: a relayed producer's packets only
MachineOf = dict[tuple[int, int, int], int]  # (producer id, uid, pid) -> machine id


def loss_trailer(loss_flags: int) -> bytes:
    return _DROPPED + varint(loss_flags) if loss_flags else b""


# -- reading a session in slices -----------------------------------------------------------

READ_SLICE_BYTES = 1 << 20  # packet bytes per slice, and per ReadBuffers reply
READ_BATCH_BYTES = 32 << 10  # taken from a buffer between two looks at time_up()


def _never() -> bool:
    return False


def _always(_consumer: bytes) -> bool:
    return True


@dataclass(frozen=True)
class SliceBudget:
    """What one slice may take: about max_bytes of packets, and until the shell's
    time_up() (asked between batches of READ_BATCH_BYTES) says stop. A consumer
    for which may_send() is false (the shell still holds replies it has not
    taken) gets no slice this turn: the read waits for it, so a slow reader
    holds at most a few slices in the service, not its whole trace."""

    max_bytes: int = READ_SLICE_BYTES
    time_up: Callable[[], bool] = _never
    may_send: Callable[[bytes], bool] = _always


# A trusted trailer per (producer id, writer id, uid, pid) a read has met.
Trailers = dict[tuple[int, int, int, int], bytes]


@dataclass
class PendingRead:
    """A ReadBuffers request being answered: where its read stands between slices."""

    consumer: bytes  # who asked, and the request its replies answer
    request_id: int
    session_id: int
    buffer_index: int = -1  # into the session's buffer_ids; -1: service packets not out yet
    # Bytes read from that buffer: a copy between slices ends its read generation,
    # and another begins, as long as this stays below the buffer's size (so a
    # read of a buffer that producers keep filling ends).
    buffer_bytes: int = 0
    trailers: Trailers = field(default_factory=dict)


def read_slice(
    read: PendingRead,
    session: Session,
    buffers: dict[int, TraceBuffer],
    uid: int,
    service_pid: int,
    budget: SliceBudget,
    framing: Framing | None = None,
    *,
    system_info: pb.SystemInfo | None = None,
    boottime_ns: int = 0,
    machines: Callable[[Session], tuple[list[bytes], list[bytes]]] | None = None,
    machine_of: MachineOf | None = None,
) -> tuple[list[bytes], bool]:
    """The next packets of `read`, stamped and framed (by `framing`: SLICES,
    ReadBuffersResponse slice records, unless told), within `budget` (at least
    one batch), and whether every buffer of the session is read (trace_stats
    comes next). The service's packets come first (`system_info`: the shell's,
    for the first read), read_tracing_buffers_completed (at boottime_ns, the
    shell's clock) after the last buffer. `machines` gives the relayed machines'
    packets for the head (ServiceContext.machine_packets); `machine_of` the machine
    of a relayed producer's records, (producer id, uid, pid) -> machine id."""
    framing = framing or SLICES
    out: list[bytes] = []
    if read.buffer_index < 0:
        remote = machines(session) if machines is not None else ([], [])
        head = _service_packets(
            session, buffers, uid, service_pid, system_info, boottime_ns, remote
        )
        for packet in head:
            out += framing.frame(packet)
        read.buffer_index = 0
        _begin(read, session, buffers)
    size = 0
    while read.buffer_index < len(session.buffer_ids):
        buffer = buffers.get(session.buffer_ids[read.buffer_index])
        batch = min(READ_BATCH_BYTES, budget.max_bytes - size)
        packets = buffer.read_packets(batch) if buffer is not None else []
        if not packets:
            if buffer is not None and _more_after_a_copy(read, buffer):
                buffer.begin_read()
            else:
                read.buffer_index += 1
                _begin(read, session, buffers)
            continue
        stamped = _stamp(packets, session, read.trailers, out, framing, machine_of or {})
        size += stamped
        read.buffer_bytes += stamped
        if size >= budget.max_bytes or budget.time_up():
            return out, False
    for packet in _read_completed(session, uid, service_pid, boottime_ns):
        out += framing.frame(packet)
    return out, True


def _begin(read: PendingRead, session: Session, buffers: dict[int, TraceBuffer]) -> None:
    """Start reading the buffer at read.buffer_index, if there is one."""
    read.buffer_bytes = 0
    if read.buffer_index < len(session.buffer_ids):
        buffer = buffers.get(session.buffer_ids[read.buffer_index])
        if buffer is not None:
            buffer.begin_read()


def _more_after_a_copy(read: PendingRead, buffer: TraceBuffer) -> bool:
    """Whether a copy cut the buffer's read short, and the read may go on."""
    return buffer.read_interrupted and read.buffer_bytes < buffer.stats.buffer_size


def _service_packets(
    session: Session,
    buffers: dict[int, TraceBuffer],
    uid: int,
    service_pid: int,
    system_info: pb.SystemInfo | None,
    boottime_ns: int,
    remote: tuple[list[bytes], list[bytes]] = ([], []),
) -> list[bytes]:
    """The service's packets queued for the session's next read, in traced's
    order (service_packets.py), with the first read's own; `remote`: the relayed
    machines' system_info packets (after the service's own) and remote_clock_sync
    packets (after the service events)."""
    builtins = session.config.builtin_data_sources
    primary = builtins.primary_trace_clock or BOOTTIME
    readings = [session.initial_clock_snapshot] if session.initial_clock_snapshot else []
    readings += session.clock_snapshots
    out = [
        clock_snapshot_packet(r, sp.snapshot_boottime(r), uid, service_pid, primary)
        for r in readings
    ]
    session.initial_clock_snapshot = []
    session.clock_snapshots.clear()
    first = not session.config_emitted
    session.config_emitted = True
    if not builtins.disable_trace_config:
        if first:
            out.append(trace_config_packet(session.config.SerializeToString(), uid, service_pid))
        out += session.trigger_packets
    session.trigger_packets.clear()
    if first:
        out.append(sp.trace_uuid_packet(session.uuid_msb, session.uuid_lsb, uid, service_pid))
        provenance = _provenance(session, buffers)
        out.append(sp.trace_provenance_packet(provenance, boottime_ns, uid, service_pid))
        if system_info is not None and not builtins.disable_system_info:
            out.append(sp.system_info_packet(system_info, uid, service_pid))
    out += remote[0]
    out += sp.event_packets(session.service_events, uid, service_pid)
    session.service_events.clear()
    out += remote[1]
    return out


def _provenance(session: Session, buffers: dict[int, TraceBuffer]) -> list[list[tuple[int, int]]]:
    """Per buffer of the session, (sequence id, producer id) of who wrote to it."""
    out: list[list[tuple[int, int]]] = []
    for buffer_id in session.buffer_ids:
        buffer = buffers.get(buffer_id)
        sequences = buffer.sequences() if buffer is not None else []
        out.append([(session.sequence_id(p, w), p) for p, w in sequences])
    return out


def _read_completed(session: Session, uid: int, service_pid: int, boottime_ns: int) -> list[bytes]:
    """At the end of a read that emptied the buffers: read_tracing_buffers_completed,
    with the events queued while the read went on."""
    if session.config.builtin_data_sources.disable_service_events:
        return []
    sp.add_event(session.service_events, sp.READ_COMPLETED, boottime_ns)
    packets = sp.event_packets(session.service_events, uid, service_pid)
    session.service_events.clear()
    return packets


# Read-back does not build a protobuf object per packet: each packet becomes one
# encoded ReadBuffersResponse.slices entry, and a reply is parsed from them at once.
#   0x0a len(slice) | 0x0a len(data) data | 0x10 0x01
_TAG = b"\x0a"  # ReadBuffersResponse.slices (1) and Slice.data (1): length-delimited
_LAST = b"\x10\x01"  # Slice.last_slice_for_packet (2) = true
_SMALL = 1 << 14  # packets below this size take their slice header from a table
_HEADS = [_TAG + varint(n + len(varint(n)) + 3) + _TAG + varint(n) for n in range(_SMALL)]


def _record(piece: bytes, last: bool) -> bytes:
    """One encoded Slice entry of a ReadBuffersResponse."""
    body = _TAG + varint(len(piece)) + piece + (_LAST if last else b"")
    return _TAG + varint(len(body)) + body


def slice_records(packet: bytes) -> list[bytes]:
    """A packet as encoded ReadBuffersResponse.slices entries: one, or a packet
    larger than READ_SLICE_BYTES cut into pieces (a frame must stay small)."""
    if len(packet) <= READ_SLICE_BYTES:
        return [_record(packet, True)]
    starts = range(0, len(packet), READ_SLICE_BYTES)
    pieces = [packet[start : start + READ_SLICE_BYTES] for start in starts]
    return [_record(piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)]


@dataclass(frozen=True)
class Framing:
    """How a read frames each stamped packet: a packet of n < _SMALL bytes (no
    loss trailer) as heads[n] + packet + tail (the hot path); any as frame(packet)."""

    heads: list[bytes]
    tail: bytes
    frame: Callable[[bytes], list[bytes]]


def trace_file_records(packet: bytes) -> list[bytes]:
    """A packet as Trace.packet (1), length-delimited: what a trace file holds."""
    return [_TAG + varint(len(packet)) + packet]


# A consumer's read: ReadBuffersResponse slice records (read_replies parses them).
SLICES = Framing(_HEADS, _LAST, slice_records)
# A drain into a write_into_file session's file: Trace file bytes, one per packet.
TRACE_FILE = Framing([_TAG + varint(n) for n in range(_SMALL)], b"", trace_file_records)


def _stamp(
    packets: list[ReadPacket],
    session: Session,
    trailers: Trailers,
    out: list[bytes],
    framing: Framing,
    machine_of: MachineOf,
) -> int:
    """Append each valid packet, with its trailers, framed, to `out`; count the
    invalid ones. Returns the bytes of the packets out. The hot loop of read-back:
    packets of a sequence come in runs, so the trailer is looked up once a run."""
    valid, join, heads, tail = packet_is_valid_untrusted, b"".join, framing.heads, framing.tail
    append = out.append
    size = 0
    last_key = None
    trailer = b""
    for data, producer_id, writer_id, uid, pid, loss_flags in packets:
        if not valid(data):
            session.invalid_packets += 1
            continue
        key = (producer_id, writer_id, uid, pid)  # pid: the producer's process id
        if key != last_key:
            trailer = trailers.get(key) or b""
            if not trailer:
                seq = session.sequence_id(producer_id, writer_id)
                machine = machine_of.get((producer_id, uid, pid), 0) if machine_of else 0
                stamp = _MACHINE + varint(machine) if machine else b""
                trailer = trailers[key] = stamp + trusted_trailer(uid, seq, pid)
            last_key = key
        n = len(data) + len(trailer)
        size += n
        if n < _SMALL and not loss_flags:
            append(join((heads[n], data, trailer, tail)))
        else:
            out += framing.frame(data + trailer + loss_trailer(loss_flags))
    return size


def read_replies(records: list[bytes], has_more: bool) -> list[ipc.ReadBuffersResponse]:
    """Slice records (slice_records) in replies of about READ_SLICE_BYTES each
    (a slice within its budget makes one); the last reply says has_more, the
    others has_more = true."""
    groups = [records]
    if sum(map(len, records)) > READ_SLICE_BYTES + READ_BATCH_BYTES:
        groups, size = [[]], 0
        for record in records:
            if size >= READ_SLICE_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(record)
            size += len(record)
    replies = [ipc.ReadBuffersResponse.FromString(b"".join(group)) for group in groups]
    for reply in replies:
        reply.has_more = True
    replies[-1].has_more = has_more
    return replies
