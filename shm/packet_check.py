"""Which producer packets the service keeps on read-back: the readable
reference of the validator.

A TracePacket read back from a buffer is kept when its top level is
well-formed protobuf (shm.protozero.scan_fields: no truncated varint or
length, no group, every tag at most 5 bytes and 32 bits so that field numbers
are 1..2**29-1, the wire format's rules as upb, the official parser, applies
them) and it sets none of the fields only the
service may write (RESERVED_FIELDS, Perfetto's list: the trusted uid, pid and
sequence id, and the like). Nested messages are not looked into: they are the
trace processor's business, and a producer can only hurt its own packets.

The service's hot path calls the C twin, `shm._validate.packet_is_valid_untrusted`
(same name, same argument, same answers); tests/test_packet_check.py proves
the two agree on valid, mutated and random bytes. Change the rule here and in
_validate.c together.
"""

from __future__ import annotations

from shm.protozero import scan_fields

# TracePacket fields only the service may set (Perfetto's list); _validate.c has
# the same table.
RESERVED_FIELDS = frozenset({3, 10, 33, 35, 36, 50, 69, 79, 98, 124, 125, 133})


def packet_is_valid_untrusted(data: bytes | memoryview) -> bool:
    """Top-level fields well-formed and none reserved for the service."""
    fields = scan_fields(data)
    return fields is not None and not any(number in RESERVED_FIELDS for number, _, _ in fields)
