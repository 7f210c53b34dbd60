"""A zero-copy protobuf writer (Perfetto's "protozero", the parts we need).

Messages are written front to back straight into their destination (a chunk
of the SMB, or a bytearray), never built as objects first. A nested message's
length is not known when it starts, so 4 bytes are reserved for it and filled
in when it ends, as a *redundant* varint (`encode_size4`: 7 -> 87 80 80 00),
which every protobuf parser accepts::

    tag | len (4 bytes, reserved) | body ...............  -> backfilled on end()

A `Stream` is where bytes go. It also decides what "fill in the size" means:
if the reserved bytes are still writable it writes them; if they lie in a chunk
the writer has already handed to the service, it records a *patch* instead
(see shm/writer.py). Messages only see the Stream protocol below.

The hot path of a producer usually avoids Message objects altogether and
concatenates precomputed tags with `varint()`; both produce the same bytes.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

from shm.packets import encode_size4

# Wire types.
VARINT = 0
FIXED64 = 1
LEN = 2
FIXED32 = 5

_U64 = (1 << 64) - 1
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")

# varint() tables: every value below 2**14 pre-encoded, and the same 14 bits with
# the continuation bit on both bytes, for the low groups of larger values. Built by
# joining one-byte pieces (a third of the import cost of encoding each value).
_BYTE = [bytes((b,)) for b in range(0x100)]
_V14 = _BYTE[:0x80] + [lo + hi for hi in _BYTE[1:0x80] for lo in _BYTE[0x80:]]
_V14C = [lo + hi for hi in _BYTE[0x80:] for lo in _BYTE[0x80:]]


def varint(v: int) -> bytes:
    """Protobuf varint of an int64/uint64 (negative values take 10 bytes)."""
    if 0 <= v < 0x4000:
        return _V14[v]
    if 0 <= v < 0x10000000:
        return _V14C[v & 0x3FFF] + _V14[v >> 14]
    if 0 <= v < 0x40000000000:
        return _V14C[v & 0x3FFF] + _V14C[(v >> 14) & 0x3FFF] + _V14[v >> 28]
    if 0 <= v < 0x100000000000000:  # nanosecond timestamps: 2**42 ns is only 73 minutes
        low = _V14C[v & 0x3FFF] + _V14C[(v >> 14) & 0x3FFF]
        return low + _V14C[(v >> 28) & 0x3FFF] + _V14[v >> 42]
    return _varint_slow(v)


def _varint_slow(v: int) -> bytes:
    v &= _U64
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def zigzag(v: int) -> int:
    return ((v << 1) ^ (v >> 63)) & _U64


MAX_TAG_BYTES = 5


def read_varint(data, i: int, end: int) -> tuple[int, int]:
    """(value, index after it) of the varint at data[i]; index -1 if it does not
    end within 10 bytes or before `end`."""
    value = shift = 0
    for j in range(i, min(i + 10, end)):
        b = data[j]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, j + 1
        shift += 7
    return 0, -1


def scan_fields(data) -> list[tuple[int, int, int]] | None:
    """The top-level fields of an untrusted message as (field number, wire type,
    value): the value of a varint, or the offset where a fixed or length-delimited
    payload starts. None if the bytes are not well-formed protobuf (a tag
    longer than 5 bytes or 32 bits, field number 0, a truncated varint or
    field, a length past the end; groups included: nothing we read uses
    them)."""
    fields: list[tuple[int, int, int]] = []
    i, n = 0, len(data)
    while i < n:
        start = i
        tag, i = read_varint(data, i, n)
        # The wire format's tags: at most 5 bytes and 32 bits, so field numbers
        # are 1..2**29-1 (upb, the official parser, rejects any other tag).
        if i < 0 or i - start > MAX_TAG_BYTES or tag > 0xFFFFFFFF or tag >> 3 == 0:
            return None
        wire = tag & 7
        if wire == VARINT:
            value, i = read_varint(data, i, n)
        elif wire == LEN:
            size, value = read_varint(data, i, n)
            i = -1 if value < 0 else value + size
        elif wire == FIXED64 or wire == FIXED32:
            value, i = i, i + (8 if wire == FIXED64 else 4)
        else:
            return None
        if i < 0 or i > n:
            return None
        fields.append((tag >> 3, wire, value))
    return fields


class Stream(Protocol):
    """Where a Message's bytes go."""

    def write(self, data: bytes) -> None: ...

    def reserve_size(self) -> Any:
        """Reserve 4 bytes for a size field; returns a handle for fill_size
        (opaque to the Message: each stream picks its own type)."""
        ...

    def fill_size(self, handle: Any, size: int) -> None: ...

    @property
    def position(self) -> int:
        """Bytes written so far by the current packet (fragment headers excluded)."""
        ...


class Message:
    """A protobuf message being written into a Stream.

    Append fields in any order; `begin_nested()` returns a child that must be
    ended (or used as a context manager) before the parent continues."""

    __slots__ = ("_stream", "_size_handle", "_start", "_child", "finished")

    def __init__(self, stream: Stream, size_handle: object = None) -> None:
        self._stream = stream
        self._size_handle = size_handle
        self._start = stream.position
        self._child: Message | None = None
        self.finished = False

    def _emit(self, data: bytes) -> None:
        if self._child is not None:
            self._child.end()
        self._stream.write(data)

    def varint(self, field: int, value: int) -> Message:
        self._emit(varint(field << 3) + varint(value))
        return self

    def sint(self, field: int, value: int) -> Message:
        return self.varint(field, zigzag(value))

    def boolean(self, field: int, value: bool) -> Message:
        return self.varint(field, 1 if value else 0)

    def fixed64(self, field: int, value: int) -> Message:
        self._emit(varint((field << 3) | FIXED64) + _FIXED64.pack(value & _U64))
        return self

    def fixed32(self, field: int, value: int) -> Message:
        self._emit(varint((field << 3) | FIXED32) + _FIXED32.pack(value & 0xFFFFFFFF))
        return self

    def double(self, field: int, value: float) -> Message:
        self._emit(varint((field << 3) | FIXED64) + _DOUBLE.pack(value))
        return self

    def float32(self, field: int, value: float) -> Message:
        self._emit(varint((field << 3) | FIXED32) + _FLOAT.pack(value))
        return self

    def bytes_field(self, field: int, data: bytes) -> Message:
        self._emit(varint((field << 3) | LEN) + varint(len(data)))
        self._stream.write(data)
        return self

    def string(self, field: int, text: str) -> Message:
        return self.bytes_field(field, text.encode())

    def raw(self, data: bytes) -> Message:
        """Append pre-encoded fields verbatim."""
        self._emit(data)
        return self

    def begin_nested(self, field: int) -> Message:
        self._emit(varint((field << 3) | LEN))
        child = Message(self._stream, self._stream.reserve_size())
        self._child = child
        return child

    def end(self) -> int:
        """Finish this message (and any open child); returns its body size."""
        if self.finished:
            return self._stream.position - self._start
        if self._child is not None:
            self._child.end()
            self._child = None
        self.finished = True
        size = self._stream.position - self._start
        if self._size_handle is not None:
            self._stream.fill_size(self._size_handle, size)
        return size

    def __enter__(self) -> Message:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


class BytesStream:
    """A Stream into a growable bytearray: build a message in memory."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def reserve_size(self) -> int:
        off = len(self.data)
        self.data += b"\0\0\0\0"
        return off

    def fill_size(self, handle: int, size: int) -> None:
        self.data[handle : handle + 4] = encode_size4(size)

    @property
    def position(self) -> int:
        return len(self.data)


def build(fill) -> bytes:
    """Encode one message in memory: `fill(msg)` appends its fields."""
    stream = BytesStream()
    msg = Message(stream)
    fill(msg)
    msg.end()
    return bytes(stream.data)
