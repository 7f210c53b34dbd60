"""What a TraceBuffer holds: its chunk records, its sequences, and the steps on
them that reading (shm/buffer_reader.py) and eviction (shm/trace_buffer.py)
share.

Memory: one private anonymous mapping (mmap) of the configured size
rounded up to 4 KiB. The kernel hands out its pages zeroed on first touch, so
allocating even a 4 GiB buffer costs the service's loop nothing and its memory
grows only as far as records are written (a bytearray would be zero-filled on
the spot: ~1 s per GiB, every client waiting). The ring is records aligned to
16 bytes that tile [0, used); wr is where the next one goes, so the oldest data
starts at wr (at 0 before the first wrap)::

    0                                  wr                           used   size
    +--------+--------+-- ... --+------+--------+---------+-- ... --+----+------+
    | newest records (this lap)        | oldest | padding |         |    |unused|
    +--------+--------+-- ... --+------+--------+---------+-- ... --+----+------+

A record: RECORD_HEADER (16 bytes, the fields of `ChunkRecord`), the payload,
slack up to 16::

    0          4          8      10       12       14     15   16
    +----------+----------+------+--------+--------+------+----+--------------+
    | chunk_id | seq_key  | size | payload| unread | flags| 0  | payload ...  |
    +----------+----------+------+--------+--------+------+----+--------------+

The bytes of a record came from a producer: nothing here trusts them beyond
bounds. Every parse of a record's payload (`slice_record`, `collect_pieces`,
shm/packets.py) is bounded by the record's `payload` and never raises, so bytes
that changed after they were measured (patched, or rewritten by a producer
while they were copied) can only garble their own sequence.

Per {producer, writer} sequence (`SequenceState`): the offsets of its records in
chunk-id order (u32 ids, compared modulo 2**32), the last chunk erased, a
pending loss mask.
"""

from __future__ import annotations

import mmap
import struct
from collections import deque
from typing import NamedTuple

from shm.abi import FIRST_PACKET_CONTINUES, LAST_PACKET_CONTINUES, NEEDS_PATCHING
from shm.packets import MALFORMED, OK, WRITER_DROPPED, fragment_at, slice_fragments_untrusted

# previous_packet_dropped bits (TracePacket field 42); 256 SMB_FULL is set by producers.
LOSS_PRESENT = 1
LOSS_READ_GAP = 2
LOSS_CORRUPTED = 4
LOSS_ORPHAN = 8
LOSS_REASSEMBLY_GAP = 16
LOSS_BROKEN_CHAIN = 32
LOSS_OVERWRITE = 64
LOSS_WRITER_ABORT = 128

RECORD_HEADER = struct.Struct("<IIHHHBx")  # the fields of ChunkRecord, in order
RECORD_HEADER_SIZE = RECORD_HEADER.size
RECORD_ALIGNMENT = 16
MAX_RECORD_PAYLOAD = 0xFFFF  # the u16 size field; chunks over IPC are at most 64 KiB too
MAX_CHUNK_ID = 0xFFFFFFFF
CHUNK_UNCHECKED = 0x40
CHUNK_INCOMPLETE = 0x80
# Empty sequences are kept so gaps are still seen across periodic reads (V2's numbers).
KEEP_EMPTY_SEQUENCES = 1024
EMPTY_SEQUENCES_GC_THRESHOLD = KEEP_EMPTY_SEQUENCES + 128

# Outcomes of joining a split packet's pieces (join_pieces).
JOIN_SUCCESS, JOIN_NOT_ENOUGH, JOIN_DATA_LOSS = range(3)


class ChunkRecord(NamedTuple):
    """The header of one record in the ring (RECORD_HEADER unpacks into these
    fields; hot loops unpack them into locals of the same names)."""

    chunk_id: int  # u32, the producer's; meaningless in padding
    seq_key: int  # producer_id << 16 | writer_id; 0 for padding (read, evicted or left over)
    size: int  # payload bytes reserved; >= payload (a scrape reserves its whole SMB
    #            payload, so the real commit can grow it in place)
    payload: int  # bytes of valid fragments as measured before the copy; <= size (the
    #               copied bytes may differ from what was measured: parse them bounded)
    unread: int  # <= payload; the next fragment to read is at payload - unread
    flags: int  # the chunk's flags (1 first packet continues, 2 last packet continues,
    #             4 needs patching, 8-32 kept) | CHUNK_UNCHECKED (bytes changed after
    #             they were measured) | CHUNK_INCOMPLETE (scraped: its last fragment left out)


# RECORD_HEADER's fields unpacked, in ChunkRecord's order: what hot paths pass
# around instead of building a ChunkRecord.
RecordFields = tuple[int, int, int, int, int, int]


class ErasedChunk(NamedTuple):
    """The last chunk a sequence erased: what the next one must follow."""

    chunk_id: int
    payload: int  # how much of it was erased (an evicted scrape may come back with more)
    scraped: bool  # it was an incomplete copy (CHUNK_INCOMPLETE)


# One chunk's share of a packet split across chunks (see join_pieces): the offset
# of the record holding it, the payload offset just past it (the record is
# consumed up to there), its bytes (a view of the ring), the record's fields. A
# plain tuple: reassembly builds one per piece, and its users unpack it.
Piece = tuple[int, int, memoryview, RecordFields]


class Tokens(NamedTuple):
    """A record's fragments from a payload offset on (slice_record)."""

    pieces: list[bytes]  # each fragment's bytes, in order
    stop: int  # payload offset where parsing stopped
    last_hdr: int  # payload offset of the last fragment's length
    status: int  # OK, MALFORMED or WRITER_DROPPED (shm.packets)


def outer_size(payload_size: int) -> int:
    """Bytes a record with `payload_size` bytes reserved takes in the ring."""
    return (RECORD_HEADER_SIZE + payload_size + RECORD_ALIGNMENT - 1) & -RECORD_ALIGNMENT


def id_cmp(a: int, b: int) -> int:
    """-1, 0 or 1 as chunk id a comes before, is, or comes after b (mod 2**32)."""
    if a == b:
        return 0
    return -1 if (a - b) & MAX_CHUNK_ID >= 0x80000000 else 1


_new_tuple = tuple.__new__


class SequenceState:
    """State of one {producer, writer} sequence."""

    __slots__ = (
        "producer_id", "writer_id", "uid", "pid", "chunks",
        "last", "loss", "stalled_in", "gap_checked", "age",
    )  # fmt: skip

    def __init__(self, producer_id: int, writer_id: int, uid: int, pid: int) -> None:
        self.producer_id, self.writer_id, self.uid, self.pid = producer_id, writer_id, uid, pid
        self.chunks: deque[int] = deque()  # record offsets, in chunk-id order
        self.last: ErasedChunk | None = None  # the last chunk erased
        self.loss = 0  # pending loss bits
        self.stalled_in = 0  # the read generation it stalled in
        self.gap_checked = -1  # the head chunk id already checked for a read gap
        self.age = 0  # when it last became empty, to forget the oldest


def whole_range(seq: SequenceState, n: int, status: int, pos: int, flags: int) -> tuple[int, int]:
    """(first, last) of the `n` fragments a record's payload gave from `pos`:
    [first, last) are whole packets' fragments; an orphan at 0 (its start is
    gone) is reported here; a begin fragment is at last."""
    first = 0
    if not pos and flags & FIRST_PACKET_CONTINUES and n:
        seq.loss |= LOSS_PRESENT | LOSS_ORPHAN
        first = 1
    ends_in_begin = status == OK and flags & LAST_PACKET_CONTINUES and n > first
    return first, n - 1 if ends_in_begin else n


class RecordRing:
    """The ring's memory, its sequences and its counters, with the steps that
    reading and eviction share. Not a ring policy: TraceBuffer decides what is
    written and evicted, BufferReader what is read."""

    def __init__(self, size: int, stats) -> None:
        """Raises OSError (ENOMEM) when the memory cannot be mapped."""
        self.size = size
        # Unmapped when the ring is dropped (mmap's dealloc; closing it explicitly
        # would fail while a memoryview of it is still alive).
        self.buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.mv = memoryview(self.buf)
        self.used = self.wr = 0  # records tile [0, used); the next one goes at wr
        self.seqs: dict[int, SequenceState] = {}
        self.empty_seqs = self.seq_age = 0
        self.stats = stats  # a BufferStats

    def record(self, off: int) -> ChunkRecord:
        return _new_tuple(ChunkRecord, RECORD_HEADER.unpack_from(self.buf, off))

    def sequence(self, producer_id: int, writer_id: int, uid: int, pid: int) -> SequenceState:
        key = producer_id << 16 | writer_id
        seq = self.seqs.get(key)
        if seq is None:
            seq = self.seqs[key] = SequenceState(producer_id, writer_id, uid, pid)
        return seq

    # -- consuming and erasing -------------------------------------------------------------

    def consume_read(self, off: int, to: int, rec: RecordFields | None = None) -> None:
        """Mark the record read up to payload offset `to` (`rec`: its header, if
        the caller has it); count it read once it is read to the end."""
        cid, key, size, payload, unread, flags = rec or RECORD_HEADER.unpack_from(self.buf, off)
        if payload - to < unread:  # it moves forward
            RECORD_HEADER.pack_into(self.buf, off, cid, key, size, payload, payload - to, flags)
            if to == payload:
                self.stats.chunks_read += 1
                self.stats.bytes_read += outer_size(size)

    def consume_evicted(self, off: int, to: int, rec: RecordFields | None = None) -> None:
        """consume_read for an eviction: counted as overwritten."""
        cid, key, size, payload, unread, flags = rec or RECORD_HEADER.unpack_from(self.buf, off)
        if payload - to < unread:
            RECORD_HEADER.pack_into(self.buf, off, cid, key, size, payload, payload - to, flags)
            if to == payload:
                self.stats.chunks_overwritten += 1
                self.stats.bytes_overwritten += outer_size(size)

    def erase_read_head(self, seq: SequenceState, off: int, to: int, rec: RecordFields) -> None:
        """consume_read(off, to, rec), then erase_head: the common end of reading
        a chunk, with one header write instead of two."""
        _, _, size, payload, unread, _ = rec
        if to == payload and unread:  # read to the end by this call
            self.stats.chunks_read += 1
            self.stats.bytes_read += outer_size(size)
        self.erase_head(seq, off, rec)

    def erase_head(self, seq: SequenceState, off: int, rec: RecordFields | None = None) -> None:
        """Remove the sequence's first chunk; its record becomes padding."""
        cid, _, size, payload, _, flags = rec or RECORD_HEADER.unpack_from(self.buf, off)
        seq.chunks.popleft()
        seq.last = _new_tuple(ErasedChunk, (cid, payload, bool(flags & CHUNK_INCOMPLETE)))
        seq.gap_checked = -1
        if not seq.chunks:
            self.seq_age += 1
            seq.age = self.seq_age
            self.empty_seqs += 1
        RECORD_HEADER.pack_into(self.buf, off, 0, 0, size, payload, 0, 0)

    def check_gap(self, seq: SequenceState, cid: int) -> None:
        """Loss READ_GAP if the head chunk does not follow the last one erased,
        judged once per head (V2 judges, and reports, again on each walk)."""
        if seq.gap_checked == cid:
            return
        seq.gap_checked = cid
        last = seq.last
        if last is not None and cid != (last.chunk_id + 1) & MAX_CHUNK_ID:
            if not (last.scraped and cid == last.chunk_id):  # a re-admitted scrape continues
                seq.loss |= LOSS_PRESENT | LOSS_READ_GAP

    # -- parsing a record --------------------------------------------------------------------

    def slice_record(self, off: int, payload: int, pos: int) -> tuple[list[bytes], int, int, int]:
        """The record's fragments from payload offset `pos`, the fields of Tokens
        (a snapshot: bytes; a tuple, because reading does this once per chunk)."""
        start = off + RECORD_HEADER_SIZE
        return slice_fragments_untrusted(bytes(self.mv[start : start + payload]), pos)

    def join_pieces(
        self, seq: SequenceState, prev_id: int, head_flags: int, pieces: list[Piece]
    ) -> tuple[int, int]:
        """Append the pieces continuing the packet that the head chunk (id
        `prev_id`) begins, one per following chunk; returns (JOIN_* outcome,
        loss reason). Nothing is consumed here."""
        if head_flags & NEEDS_PATCHING:
            return JOIN_NOT_ENOUGH, 0
        chunks, buf = seq.chunks, self.buf
        for i in range(1, len(chunks)):
            off = chunks[i]
            rec = RECORD_HEADER.unpack_from(buf, off)
            cid, _, _, payload, unread, flags = rec
            if flags & NEEDS_PATCHING:
                return JOIN_NOT_ENOUGH, 0
            if cid != (prev_id + 1) & MAX_CHUNK_ID:
                return JOIN_DATA_LOSS, LOSS_REASSEMBLY_GAP
            prev_id, pos = cid, payload - unread
            if pos >= payload:
                continue  # an empty chunk in the middle of a packet
            start = off + RECORD_HEADER_SIZE
            status, begin, end = fragment_at(buf, start + pos, start + payload)
            if status == MALFORMED:
                return JOIN_DATA_LOSS, LOSS_CORRUPTED
            if status == WRITER_DROPPED:
                continue  # as V2: the chunk offers no fragment
            if pos or not flags & FIRST_PACKET_CONTINUES:  # a whole or a begin fragment
                return JOIN_DATA_LOSS, LOSS_BROKEN_CHAIN
            pieces.append((off, end - start, self.mv[begin:end], rec))
            if end < start + payload or not flags & LAST_PACKET_CONTINUES:
                return JOIN_SUCCESS, 0  # an end fragment; else a continue fragment
        return JOIN_NOT_ENOUGH, 0

    # -- forgetting ----------------------------------------------------------------------------

    def forget_old_empty_sequences(self) -> None:
        empty = [key for key, seq in self.seqs.items() if not seq.chunks]
        self.empty_seqs = len(empty)
        if len(empty) >= EMPTY_SEQUENCES_GC_THRESHOLD:
            empty.sort(key=lambda key: self.seqs[key].age)
            for key in empty[: len(empty) - KEEP_EMPTY_SEQUENCES]:
                del self.seqs[key]
            self.empty_seqs = KEEP_EMPTY_SEQUENCES
