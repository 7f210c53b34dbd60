"""Which producer packets the service keeps on read-back: the readable
reference of the validator.

A TracePacket read back from a buffer is kept when the official parser (upb,
in Perfetto's schema) would read it, so that whatever a producer writes, the
trace parses as a whole, and when it sets none of the fields only the service
may write (RESERVED_FIELDS, Perfetto's list: the trusted uid, pid and sequence
id, and the like; top level only). "Would read it" is the wire format's rules
applied to the packet and to every length-delimited field the parser reads
into (shm/trace_schema.py, generated from Perfetto's schema): nested messages
and packed repeated numbers. Everywhere: tags of at most 5 bytes and 32 bits
(field numbers 1..2**29-1), no field number 0, varints of at most 10 bytes,
wire types 0, 1, 2 and 5 only (no groups), no field running past its message;
packed fixed-size numbers a whole number of them; messages nested at most
MAX_DEPTH deep (upb stops at 100 levels counted from the Trace). Strings,
bytes and unknown fields are not looked into: the parser does not either.

The service's hot path calls the C twin, `shm._validate.packet_is_valid_untrusted`
(same name, same argument, same answers); tests/test_packet_check.py proves
the two agree on valid, mutated and random bytes, and that a kept packet
parses with the official schema. Change the rule here and in _validate.c
together.
"""

from __future__ import annotations

from shm.protozero import MAX_TAG_BYTES, read_varint
from shm.trace_schema import MESSAGES, PACKED_32, PACKED_64, PACKED_VARINT

# TracePacket fields only the service may set (Perfetto's list); _validate.c has
# the same table.
RESERVED_FIELDS = frozenset({3, 10, 33, 35, 36, 50, 69, 79, 98, 124, 125, 133})
MAX_DEPTH = 64  # messages nested inside the packet (the packet is depth 0)

_KINDS = [dict(row) for row in MESSAGES]


def packet_is_valid_untrusted(data: bytes | memoryview) -> bool:
    """The official parser reads it, and no field is reserved for the service."""
    return _message_ok(data, 0, len(data), 0, 0)


def _message_ok(data, i: int, end: int, message: int, depth: int) -> bool:
    kinds = _KINDS[message]
    while i < end:
        start = i
        tag, i = read_varint(data, i, end)
        if i < 0 or i - start > MAX_TAG_BYTES or tag > 0xFFFFFFFF or tag >> 3 == 0:
            return False
        if message == 0 and tag >> 3 in RESERVED_FIELDS:
            return False
        wire = tag & 7
        if wire == 0:
            _, i = read_varint(data, i, end)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            size, i = read_varint(data, i, end)
            if i < 0 or size > end - i:
                return False
            kind = kinds.get(tag >> 3)
            if kind is not None and not _payload_ok(data, i, i + size, kind, depth):
                return False
            i += size
        else:
            return False
        if i < 0 or i > end:
            return False
    return True


def _payload_ok(data, i: int, end: int, kind: int, depth: int) -> bool:
    """The payload of a length-delimited field the parser reads into."""
    if kind >= 0:
        return depth < MAX_DEPTH and _message_ok(data, i, end, kind, depth + 1)
    if kind == PACKED_VARINT:
        while i < end:
            _, i = read_varint(data, i, end)
            if i < 0:
                return False
        return True
    return (end - i) % (4 if kind == PACKED_32 else 8) == 0 and kind in (PACKED_32, PACKED_64)
