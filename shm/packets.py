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

from shm import native
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


# -- fast parsers for the service's hot paths ------------------------------------------------
#
# The same results as parse_fragments_untrusted, at a few operations per fragment
# (tokenizing is the service's main per-byte cost in Python): only 1-byte lengths
# and the writers' 4-byte shape are decoded, any other shape decodes as _TOO_LONG,
# and an overrun shows as an offset past the end or an exception; then
# parse_fragments_untrusted decides. Below PACKET_DROPPED_SIZE bytes of data, the
# sentinel cannot pass for a fragment that fits.

_TOO_LONG = 1 << 40


def _length_tables() -> tuple[list[int], list[int]]:
    """A 4-byte length (bytes 0-2 continue, byte 3 ends) from its little-endian
    u16 halves: low[half0] + high[half1]; other shapes give _TOO_LONG or more."""
    low, high = [_TOO_LONG] * 0x10000, [_TOO_LONG] * 0x10000
    for b1 in range(0x80, 0x100):
        for b0 in range(0x80, 0x100):
            low[b0 | b1 << 8] = (b0 & 0x7F) | (b1 & 0x7F) << 7
    for b3 in range(0x80):
        for b2 in range(0x80, 0x100):
            high[b2 | b3 << 8] = (b2 & 0x7F) << 14 | b3 << 21
    return low, high


_LOW, _HIGH = _length_tables()
_READ_U32 = _U32.unpack_from


def fragment_at(data, off: int, end: int) -> tuple[int, int, int]:
    """(status, begin, end) of the one fragment whose length is at data[off],
    reading nothing at or past `end`."""
    if off < end and data[off] < 0x80:
        return (OK, off + 1, off + 1 + data[off]) if off + data[off] < end else (MALFORMED, 0, 0)
    if off + 4 <= end:
        w = _READ_U32(data, off)[0]
        size = _LOW[w & 0xFFFF] + _HIGH[w >> 16]
        if size <= end - off - 4:
            return OK, off + 4, off + 4 + size
    bounds, status = parse_fragments_untrusted(data, off, end, 1)
    return (status, 0, 0) if status != OK else (OK, bounds[0], bounds[1])


def measure_fragments_untrusted(data: bytes | memoryview, count: int) -> tuple[int, int]:
    """How many leading bytes of `data` its first `count` fragments take, as far
    as they are whole and in bounds, and the status of parse_fragments_untrusted."""
    end = len(data)
    if end < PACKET_DROPPED_SIZE:
        low, high, u32 = _LOW, _HIGH, _READ_U32
        off = 0
        try:
            for _ in range(count):
                b = data[off]
                if b < 0x80:
                    off += b + 1
                else:
                    w = u32(data, off)[0]
                    off += 4 + low[w & 0xFFFF] + high[w >> 16]
        except (IndexError, struct.error):
            off = end + 1
        if off <= end:
            return off, OK
    bounds, status = parse_fragments_untrusted(data, 0, end, count)
    return (bounds[-1] if bounds else 0), status


def slice_fragments_fast(data: bytes, start: int) -> tuple[list[bytes], int, int, int] | None:
    """The common case of slice_fragments_untrusted: every fragment of
    data[start:] well-formed and ending exactly at the end of `data`; None
    otherwise (the caller then parses). The twin of shm/_fragments.c."""
    end = len(data)
    if not 0 <= start <= end < PACKET_DROPPED_SIZE:
        return None
    pieces: list[bytes] = []
    push = pieces.append
    low, high, u32 = _LOW, _HIGH, _READ_U32
    off = hdr = start
    try:
        while off < end:
            hdr = off
            b = data[off]
            if b < 0x80:
                off += 1 + b
                push(data[hdr + 1 : off])
            else:
                w = u32(data, off)[0]
                off += 4 + low[w & 0xFFFF] + high[w >> 16]
                push(data[hdr + 4 : off])
    except (IndexError, struct.error):
        return None
    return (pieces, end, hdr, OK) if off == end else None


_compiled = native.compiled("shm._fragments")
_slice_fast = slice_fragments_fast if _compiled is None else _compiled.slice_fragments_fast


def slice_fragments_untrusted(data: bytes, start: int) -> tuple[list[bytes], int, int, int]:
    """Every fragment of data[start:]: (their bytes, the offset parsing stopped
    at, the offset of the last fragment's length, status)."""
    fast = _slice_fast(data, start)
    if fast is not None:
        return fast
    end = len(data)
    bounds, status = parse_fragments_untrusted(data, start, end, end - start)
    stop = bounds[-1] if bounds else start
    if status == MALFORMED and stop == end:
        status = OK  # it ran out of bytes exactly at the end: no fragment is missing
    pieces = [data[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]
    return pieces, stop, (bounds[-3] if len(bounds) > 2 else start), status
