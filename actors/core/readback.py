"""The read-back path: what the service sends a consumer that reads its
session, in bounded slices, and the service's own packets, built from values.

Order (Perfetto's): the service's packets on sequence 1 first (clock
snapshots, the trace_config on the first read, service events), then each
buffer's packets (buffer 0, 1, ...), then trace_stats, once the buffers are
read, so that it counts what the read found.

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

    producer bytes ... | trusted_uid (3) | trusted_packet_sequence_id (10)
                       | trusted_pid (79) | [previous_packet_dropped (42)]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.sessions import Session
from protos import tracebus_ipc_pb2 as ipc
from shm._validate import packet_is_valid_untrusted
from shm.buffer_reader import ReadPacket
from shm.protozero import varint
from shm.trace_buffer import TraceBuffer

SERVICE_SEQUENCE_ID = 1
BOOTTIME = pb.BuiltinClock.BUILTIN_CLOCK_BOOTTIME

_UID = b"\x18"  # trusted_uid (3), varint
_SEQ = b"\x50"  # trusted_packet_sequence_id (10), varint
_PID = b"\xf8\x04"  # trusted_pid (79), varint
_DROPPED = b"\xd0\x02"  # previous_packet_dropped (42), varint


def trusted_trailer(uid: int, sequence_id: int, pid: int) -> bytes:
    return _UID + varint(uid) + _SEQ + varint(sequence_id) + _PID + varint(pid)


def loss_trailer(loss_flags: int) -> bytes:
    return _DROPPED + varint(loss_flags) if loss_flags else b""


def _service_packet(packet: pb.TracePacket, uid: int, service_pid: int) -> bytes:
    return packet.SerializeToString() + trusted_trailer(uid, SERVICE_SEQUENCE_ID, service_pid)


def _stamped(boottime_ns: int) -> pb.TracePacket:
    return pb.TracePacket(timestamp=boottime_ns, timestamp_clock_id=BOOTTIME)


def clock_snapshot_packet(
    clocks: list[tuple[int, int]], boottime_ns: int, uid: int, service_pid: int
) -> bytes:
    """A ClockSnapshot of (clock id, timestamp) pairs, BOOTTIME the trace clock."""
    packet = _stamped(boottime_ns)
    for clock_id, ts in clocks:
        packet.clock_snapshot.clocks.add(clock_id=clock_id, timestamp=ts)
    packet.clock_snapshot.primary_trace_clock = BOOTTIME
    return _service_packet(packet, uid, service_pid)


def service_event_packet(event: str, boottime_ns: int, uid: int, service_pid: int) -> bytes:
    """A TracingServiceEvent with the flag `event` (a field name) set."""
    packet = _stamped(boottime_ns)
    setattr(packet.service_event, event, True)
    return _service_packet(packet, uid, service_pid)


def trace_config_packet(config_bytes: bytes, uid: int, service_pid: int) -> bytes:
    packet = pb.TracePacket()
    packet.trace_config.ParseFromString(config_bytes)
    return _service_packet(packet, uid, service_pid)


def trace_stats_packet(stats: pb.TraceStats, boottime_ns: int, uid: int, service_pid: int) -> bytes:
    packet = _stamped(boottime_ns)
    packet.trace_stats.CopyFrom(stats)
    return _service_packet(packet, uid, service_pid)


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
) -> tuple[list[bytes], bool]:
    """The next packets of `read`, stamped and framed (by `framing`: SLICES,
    ReadBuffersResponse slice records, unless told), within `budget` (at least
    one batch), and whether every buffer of the session is read (trace_stats
    comes next)."""
    framing = framing or SLICES
    out: list[bytes] = []
    if read.buffer_index < 0:
        for packet in _service_packets(session, uid, service_pid):
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
        stamped = _stamp(packets, session, read.trailers, out, framing)
        size += stamped
        read.buffer_bytes += stamped
        if size >= budget.max_bytes or budget.time_up():
            return out, False
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


def _service_packets(session: Session, uid: int, service_pid: int) -> list[bytes]:
    """The service's packets queued for the session's next read, in Perfetto's order."""
    out = list(session.clock_snapshots)
    session.clock_snapshots.clear()
    if not session.config_emitted:
        out.append(trace_config_packet(session.config.SerializeToString(), uid, service_pid))
        session.config_emitted = True
    out += session.trigger_packets
    session.trigger_packets.clear()
    out += session.service_events
    session.service_events.clear()
    return out


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
                trailer = trailers[key] = trusted_trailer(uid, seq, pid)
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
