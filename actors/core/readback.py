"""What the service adds to a trace when it is read back.

Producer packets are validated and stamped: a packet whose top level is not
well-formed protobuf, or that sets a field only the service may write
(RESERVED_FIELDS), is dropped and counted as invalid_packets. A kept packet
gets a trailer appended after the producer's bytes; protobuf keeps the last
value of a field, so a producer cannot forge what the trailer says::

    producer bytes ... | trusted_uid (3) | trusted_packet_sequence_id (10)
                       | trusted_pid (79) | [previous_packet_dropped (42)]

The service's own packets go on sequence 1 with the service's uid and pid;
each builder here takes the values it writes and returns the packet's bytes.
"""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from shm.protozero import scan_fields, varint

# TracePacket fields only the service may set (Perfetto's list).
RESERVED_FIELDS = frozenset({3, 10, 33, 35, 36, 50, 69, 79, 98, 124, 125, 133})
SERVICE_SEQUENCE_ID = 1
BOOTTIME = pb.BuiltinClock.BUILTIN_CLOCK_BOOTTIME

_UID = b"\x18"  # trusted_uid (3), varint
_SEQ = b"\x50"  # trusted_packet_sequence_id (10), varint
_PID = b"\xf8\x04"  # trusted_pid (79), varint
_DROPPED = b"\xd0\x02"  # previous_packet_dropped (42), varint


def packet_is_valid_untrusted(data: bytes) -> bool:
    """Top-level fields well-formed and none reserved for the service."""
    fields = scan_fields(data)
    return fields is not None and not any(f[0] in RESERVED_FIELDS for f in fields)


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
