"""What the service adds to a trace when it is read back.

Producer packets are validated and stamped: a packet whose top level is not
well-formed protobuf, or that sets a field only the service may write
(RESERVED_FIELDS), is dropped and counted as invalid_packets. A kept packet
gets a trailer appended after the producer's bytes; protobuf keeps the last
value of a field, so a producer cannot forge what the trailer says::

    producer bytes ... | trusted_uid (3) | trusted_packet_sequence_id (10)
                       | trusted_pid (79) | [previous_packet_dropped (42)]

The service's own packets go on sequence 1 with the service's uid and pid.
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


def service_packet(uid: int, pid: int, fill) -> bytes:
    """A packet of the service's own, on sequence 1: `fill(packet)` sets its fields."""
    packet = pb.TracePacket()
    fill(packet)
    return packet.SerializeToString() + trusted_trailer(uid, SERVICE_SEQUENCE_ID, pid)


def clock_snapshot_fill(clocks: list[tuple[int, int]], boottime_ns: int):
    def fill(packet: pb.TracePacket) -> None:
        packet.timestamp = boottime_ns
        packet.timestamp_clock_id = BOOTTIME
        for clock_id, ts in clocks:
            packet.clock_snapshot.clocks.add(clock_id=clock_id, timestamp=ts)
        packet.clock_snapshot.primary_trace_clock = BOOTTIME

    return fill


def service_event_fill(boottime_ns: int, event: str):
    def fill(packet: pb.TracePacket) -> None:
        packet.timestamp = boottime_ns
        packet.timestamp_clock_id = BOOTTIME
        setattr(packet.service_event, event, True)

    return fill


def trace_config_fill(config_bytes: bytes):
    def fill(packet: pb.TracePacket) -> None:
        packet.trace_config.ParseFromString(config_bytes)

    return fill


def trace_stats_fill(stats: pb.TraceStats, boottime_ns: int):
    def fill(packet: pb.TracePacket) -> None:
        packet.timestamp = boottime_ns
        packet.timestamp_clock_id = BOOTTIME
        packet.trace_stats.CopyFrom(stats)

    return fill
