"""The fast path of TraceWriter.write_packet, in pure Python: the readable twin
of shm/_writer.c (the package uses the C type when it was built, see
shm/native.py; tests/test_writer_twins.py proves both write the same bytes).

`WriterCore` holds the state the fast path needs, under the attribute names
the slow path in shm/writer.py reads and writes:

    _buf         the buffer written into: the SMB, or the scratch chunk while dropping
    _wptr        where the next byte goes (an offset into _buf)
    _end         the end of the current chunk
    _fast_limit  _end - 1 while the fast path may append, else -1 (no chunk, a
                 packet open, bytes to prepend, dropping, a flush asked, the
                 chunk full of packets): the slow path sets it, request_flush()
                 clears it from any thread
    _finished    complete packets in the current chunk
    _hdr_word    offset of the chunk header's packets word; _hdr_hi its low half
                 (writer id) and flags
    incremental_state_invalid   see shm/writer.py

The fast path takes a whole packet that fits in the current chunk with one
byte to spare: a 1-byte length for a packet under 128 bytes, else the same
redundant 4-byte varint the slow path backfills. It then publishes the packet
count inflated (finished + 1: the next slot is already counted, see
shm/writer.py) with one release store of the header's packets word.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shm._atomics import store32
from shm.abi import MAX_PACKETS_PER_CHUNK
from shm.packets import write_size4


class WriterCore:
    """The fast-path state of a TraceWriter and write_packet's fast path."""

    _buf: Any
    _wptr: int
    _end: int
    _fast_limit: int
    _finished: int
    _hdr_word: int
    _hdr_hi: int
    incremental_state_invalid: bool
    _write_packet_slow: Callable[[bytes], None]  # shm.writer.TraceWriter's, for the rest
    # shm.writer.TraceWriter's, read by _write_chunks (see there)
    _dropping: bool
    _closed: bool
    _open_sizes: list
    _patches: list
    _pos: int
    _turn_over: Callable[[], bool]

    def write_packet(self, data: bytes) -> None:
        """Append one serialized TracePacket."""
        n = len(data)
        w = self._wptr
        buf = self._buf
        if n < 128 and w + n < self._fast_limit:
            buf[w] = n
            start = w + 1
        elif n >= 128 and w + n + 3 < self._fast_limit:
            write_size4(buf, w, n)
            start = w + 4
        else:
            self._write_packet_slow(data)
            return
        buf[start : start + n] = data
        self._wptr = start + n
        c = self._finished + 1
        self._finished = c
        store32(buf, self._hdr_word, self._hdr_hi | ((c + 1) << 16))  # inflated
        if c >= MAX_PACKETS_PER_CHUNK:
            self._fast_limit = -1

    def _write_chunks(self, data: bytes | memoryview) -> int:
        """TraceWriter.write()'s loop for the bytes of a packet that run past the
        current chunk, while its usual case holds (not dropping, not closed,
        nothing to patch, a chunk free for each turn-over): fill the chunk, turn
        it over (TraceWriter._turn_over: one arbiter call), go on. Returns how
        many bytes of `data` it wrote; write() does the rest the general way.
        The C twin does the turn-over itself, calling only the arbiter."""
        mv = memoryview(data)
        n = len(mv)
        off = 0
        while not (self._dropping or self._closed or self._open_sizes or self._patches):
            w = self._wptr
            take = self._end - w
            if take >= n - off:
                self._buf[w : w + n - off] = mv[off:]
                self._wptr = w + n - off
                self._pos += n - off
                return n
            if take > 0:
                self._buf[w : self._end] = mv[off : off + take]
                self._wptr = self._end
                self._pos += take
                off += take
            if not self._turn_over():
                break
        return off
