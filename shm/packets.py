"""Fragment framing inside a chunk's payload, and its untrusted parser.

A chunk payload is `count` fragments, each a varint length of 1 to 4 bytes
followed by that many bytes of TracePacket (no field tag)::

    +--------+-------------+--------+---------+-- ... --+------+
    | len0   | packet 0    | len1   | packet 1|         | 0x00 |  <- optional empty
    | 1-4 B  | len0 bytes  | 1-4 B  |         |         |      |     fragment
    +--------+-------------+--------+---------+-- ... --+------+

Writers reserve 4 bytes for a length and backfill it as a *redundant* varint
(continuation bit set on bytes 0-2: 7 -> 87 80 80 00), so the largest length is
2**28 - 1. That value, PACKET_DROPPED_SIZE, means "the writer abandoned this
packet". A length of 0 is an empty fragment and carries no packet. Short whole
packets may use a 1-byte length. When a packet spans chunks, the last fragment
of chunk N (flag LAST_PACKET_CONTINUES) and the first of chunk N+1 (flag
FIRST_PACKET_CONTINUES) are pieces of it; pieces always keep 4-byte lengths.
"""

from __future__ import annotations

import struct

from shm.abi import PACKET_DROPPED_SIZE

MAX_FRAGMENT_SIZE = PACKET_DROPPED_SIZE - 1


def encode_size4(n: int) -> bytes:
    """The redundant 4-byte varint writers backfill into reserved size fields."""
    return bytes(
        ((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, ((n >> 14) & 0x7F) | 0x80, (n >> 21) & 0x7F)
    )


_U32 = struct.Struct("<I")


def write_size4(buf, off: int, n: int) -> None:
    """Backfill a reserved 4-byte size field in place (the same bytes as encode_size4,
    each 7-bit group shifted into its byte as one little-endian u32)."""
    _U32.pack_into(
        buf,
        off,
        0x808080 | (n & 0x7F) | (n << 1 & 0x7F00) | (n << 2 & 0x7F0000) | (n << 3 & 0x7F000000),
    )


# Status of parse_fragments_untrusted.
OK = 0
MALFORMED = 1  # a length not ended within 4 bytes, or running past the payload
WRITER_DROPPED = 2  # a PACKET_DROPPED_SIZE length: the rest of the chunk is void


def parse_fragments_untrusted(data, start: int, end: int, count: int) -> tuple[list[int], int]:
    """Split `count` fragments out of data[start:end].

    Returns (bounds, status): bounds is a flat list [begin0, end0, begin1, end1, ...]
    of the fragments that are whole and in bounds (offsets into `data`), and the
    status says why parsing stopped early, if it did. Never reads outside
    [start, end) and never raises for any content.
    """
    bounds: list[int] = []
    off = start
    for _ in range(count):
        if off >= end:
            return bounds, MALFORMED
        b = data[off]
        if b < 0x80:
            size, off = b, off + 1
        else:
            size, shift, i = b & 0x7F, 7, off + 1
            while True:
                if i >= end or i - off >= 4:
                    return bounds, MALFORMED
                b = data[i]
                size |= (b & 0x7F) << shift
                i += 1
                if b < 0x80:
                    break
                shift += 7
            off = i
        if size == PACKET_DROPPED_SIZE:
            return bounds, WRITER_DROPPED
        if size > end - off:
            return bounds, MALFORMED
        bounds.append(off)
        off += size
        bounds.append(off)
    return bounds, OK
