"""The service's central trace buffer, with Perfetto's TraceBuffer V2 semantics.

One TraceBuffer per `buffers` entry of a TraceConfig. Producers' chunks are
copied in (`copy_chunk_untrusted`), nested size fields are fixed later
(`try_patch_chunk`), and packets are read back destructively (`begin_read`, then
`read_packets` or `read_next_packet`). All a producer supplies is untrusted: no
input makes a method raise or read outside a chunk, it moves a counter instead.

Memory: one bytearray of the configured size rounded up to 4 KiB, a ring of
records aligned to 16 bytes that tile [0, used); wr is where the next one goes,
so the oldest data starts at wr (at 0 before the first wrap)::

    0                                  wr                           used   size
    +--------+--------+-- ... --+------+--------+---------+-- ... --+----+------+
    | newest records (this lap)        | oldest | padding |         |    |unused|
    +--------+--------+-- ... --+------+--------+---------+-- ... --+----+------+

A record: RECORD_HEADER (16 bytes), the payload, slack up to 16::

    0          4          8      10       12       14     15   16
    +----------+----------+------+--------+--------+------+----+--------------+
    | chunk_id | seq_key  | size | payload| unread | flags| 0  | payload ...  |
    +----------+----------+------+--------+--------+------+----+--------------+
    u32 chunk_id; u32 seq_key = producer_id << 16 | writer_id, 0 for padding (a
    record read, evicted or left over); u16 size: payload bytes reserved (a
    scrape reserves its whole SMB payload, so the commit can grow it); u16
    payload: bytes of valid fragments; u16 unread: the next fragment is at
    payload - unread; u8 flags: the chunk's (1 first packet continues, 2 last
    packet continues, 4 needs patching, 8-32 kept) | 0x40 UNCHECKED (bytes changed
    after validation) | 0x80 INCOMPLETE (scraped: its last fragment left out).

Per {producer, writer} sequence: the offsets of its records in chunk-id order
(u32 ids, compared modulo 2**32), the last chunk erased, a pending loss mask.

Write: copy the payload out of shared memory first and look only at the copy.
A bad header or a record larger than the buffer is an abi_violation. A scrape
drops its last fragment and that one's "continues"/"needs patching" flags.
Fragments are tokenized: a malformed one ends the chunk (abi_violations, loss
CORRUPTED), so does the writer's drop sentinel (trace_writer_packet_loss, loss
WRITER_ABORT). An id at or before the last one erased is stale
(chunks_discarded), unless an evicted scrape comes back with more. An id still
present is a recommit: it may only grow within its reservation and add flags
(else abi_violations); equal is skipped, more is rewritten (chunks_rewritten)
or, for a scrape read to the end, moved to wr (chunks_relocated). Then DISCARD
latches for good at the first wrap (chunks_discarded); RING_BUFFER wraps
(write_wrap_count), evicts what is in the way and writes the record
(chunks_committed_out_of_order unless it goes at its sequence's tail).

Read: the outer walk goes through the records in buffer order; at a live one,
the inner walk reads that record's sequence from its first chunk up to it, so a
sequence comes out in chunk-id order however it was committed. A whole fragment
is a packet (an empty one is skipped: the 0x00 inflation byte is never one); a
first fragment continuing a packet whose start is gone is an orphan; a last one
that continues is joined with the first fragment of each following chunk
(readaheads_*). If the next piece is missing or waits for a patch, the sequence
stalls, untouched, until the next begin_read; others go on. A gap in the ids or
a broken chain drops the pieces. A chunk read to the end becomes padding; a
scraped one is never read past. Eviction is the same walk, forced: no stalls,
no output, a dropped packet is loss OVERWRITE. read_packets stops once max_bytes
of packets are out; read_next_packet reads ahead READ_AHEAD_BYTES (those packets
are consumed, and come first later). A copy ends the generation (records move).

Loss bits are OR-ed into the sequence and reported, with LOSS_PRESENT, on its
next packet read: READ_GAP (ids not consecutive), CORRUPTED, ORPHAN,
REASSEMBLY_GAP, BROKEN_CHAIN, OVERWRITE, WRITER_ABORT. Stats: Perfetto's
TraceStats.BufferStats, kept as V2 keeps them (bytes_* count whole records).
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from typing import NamedTuple

from shm.abi import (
    COUNT_MASK,
    FIRST_PACKET_CONTINUES,
    LAST_PACKET_CONTINUES,
    NEEDS_PATCHING,
    is_valid_writer_id,
)
from shm.packets import (
    MALFORMED,
    OK,
    WRITER_DROPPED,
    fragment_at,
    measure_fragments_untrusted,
    slice_fragments_untrusted,
)


class FillPolicy(enum.IntEnum):
    """TraceConfig.BufferConfig.FillPolicy (same numbers)."""

    RING_BUFFER = 1
    DISCARD = 2


# previous_packet_dropped bits (TracePacket field 42); 256 SMB_FULL is set by producers.
LOSS_PRESENT = 1
LOSS_READ_GAP = 2
LOSS_CORRUPTED = 4
LOSS_ORPHAN = 8
LOSS_REASSEMBLY_GAP = 16
LOSS_BROKEN_CHAIN = 32
LOSS_OVERWRITE = 64
LOSS_WRITER_ABORT = 128

RECORD_HEADER = struct.Struct("<IIHHHBx")  # chunk_id, seq_key, size, payload, unread, flags
RECORD_HEADER_SIZE = RECORD_HEADER.size
RECORD_ALIGNMENT = 16
MAX_RECORD_PAYLOAD = 0xFFFF  # the u16 size field; chunks over IPC are at most 64 KiB too
BUFFER_GRANULE = 4096
MAX_BUFFER_SIZE = 1 << 32  # exclusive: Perfetto's offsets are u32
MAX_CHUNK_ID = 0xFFFFFFFF
ABI_FLAGS = 0x3F  # the six flag bits of a chunk header
RECOMMIT_KEPT_FLAGS = FIRST_PACKET_CONTINUES | LAST_PACKET_CONTINUES | NEEDS_PATCHING
CHUNK_UNCHECKED = 0x40
CHUNK_INCOMPLETE = 0x80
READ_AHEAD_BYTES = 64 * 1024  # what read_next_packet reads at a time
# Empty sequences are kept so gaps are still seen across periodic reads (V2's numbers).
KEEP_EMPTY_SEQUENCES = 1024
EMPTY_SEQUENCES_GC_THRESHOLD = KEEP_EMPTY_SEQUENCES + 128


@dataclass(slots=True)
class BufferStats:
    """Perfetto's TraceStats.BufferStats, field for field."""

    buffer_size: int = 0
    bytes_written: int = 0
    bytes_overwritten: int = 0
    bytes_read: int = 0
    padding_bytes_written: int = 0
    padding_bytes_cleared: int = 0
    chunks_written: int = 0
    chunks_rewritten: int = 0
    chunks_relocated: int = 0
    chunks_overwritten: int = 0
    chunks_discarded: int = 0
    chunks_read: int = 0
    chunks_committed_out_of_order: int = 0
    write_wrap_count: int = 0
    # Perfetto counts these for an opt-in compaction at BeginRead() that packs
    # live records to the front and gives whole pages back to the OS. This buffer
    # is one bytearray with nothing to give back, so it never compacts: both 0.
    compactions: int = 0
    compactions_skipped: int = 0
    patches_succeeded: int = 0
    patches_failed: int = 0
    readaheads_succeeded: int = 0
    readaheads_failed: int = 0
    abi_violations: int = 0
    trace_writer_packet_loss: int = 0
    # Packets dropped for their size. Nothing here drops a packet for that: a
    # record's size is bounded when it is copied in (else it is an abi_violation)
    # and a packet is bounded by the ring, so this stays 0.
    oversized_packets_dropped: int = 0


class ReadPacket(NamedTuple):
    """One whole TracePacket read back, with its sequence's trusted identity.
    A NamedTuple: read-back is bound by building these, and a tuple is built
    in a third of the time of a slotted dataclass."""

    data: bytes  # exactly the bytes the producer wrote, pieces joined
    producer_id: int
    writer_id: int
    uid: int
    pid: int
    loss_flags: int  # 0, or LOSS_PRESENT | causes of loss before this packet


def _outer_size(payload_size: int) -> int:
    return (RECORD_HEADER_SIZE + payload_size + RECORD_ALIGNMENT - 1) & -RECORD_ALIGNMENT


def _id_cmp(a: int, b: int) -> int:
    """-1, 0 or 1 as chunk id a comes before, is, or comes after b (mod 2**32)."""
    if a == b:
        return 0
    return -1 if (a - b) & MAX_CHUNK_ID >= 0x80000000 else 1


def _check_producer_id(producer_id: int) -> None:
    if not 0 < producer_id <= 0xFFFF:
        raise ValueError(f"producer ids are 1..65535 (assigned by the service), got {producer_id}")


class _Sequence:
    """State of one {producer, writer} sequence."""

    __slots__ = (
        "producer_id", "writer_id", "uid", "pid", "chunks",
        "last", "loss", "stalled_in", "gap_checked", "age",
    )  # fmt: skip

    def __init__(self, producer_id: int, writer_id: int, uid: int, pid: int) -> None:
        self.producer_id, self.writer_id, self.uid, self.pid = producer_id, writer_id, uid, pid
        self.chunks: deque[int] = deque()  # record offsets, in chunk-id order
        self.last: tuple[int, int, bool] | None = None  # last erased: id, payload, scraped
        self.loss = 0  # pending loss bits
        self.stalled_in = 0  # the read generation it stalled in
        self.gap_checked = -1  # the head chunk id already checked for a read gap
        self.age = 0  # when it last became empty, to forget the oldest


_new_tuple = tuple.__new__


def _make_packets(datas: list[bytes], *columns: list[int]) -> list[ReadPacket]:
    """ReadPackets from columns of field values, all at once."""
    rows = zip(datas, *columns, strict=True)
    return list(map(_new_tuple, repeat(ReadPacket, len(datas)), rows))


# Outcomes of reading a chunk, and of joining a split packet.
_DONE, _BUDGET, _STALL = range(3)
_SUCCESS, _NOT_ENOUGH, _DATA_LOSS = range(3)


class TraceBuffer:
    """A ring of chunk records with per-sequence order, reassembly and loss
    reporting; see the module docstring. Not thread-safe: the service owns it."""

    def __init__(self, size_bytes: int, fill_policy: FillPolicy = FillPolicy.RING_BUFFER) -> None:
        if not isinstance(size_bytes, int):
            raise TypeError("size_bytes must be an int")
        size = -(-size_bytes // BUFFER_GRANULE) * BUFFER_GRANULE
        if size_bytes <= 0 or size >= MAX_BUFFER_SIZE:
            raise ValueError(f"buffer size must be > 0 and < 4 GiB, got {size_bytes}")
        self._policy = FillPolicy(fill_policy)
        self._size = size
        self._buf = bytearray(size)
        self._mv = memoryview(self._buf)
        self._used = self._wr = 0  # records tile [0, used)
        self._discarding = False  # DISCARD latched
        self._seqs: dict[int, _Sequence] = {}
        self._empty_seqs = self._seq_age = 0
        self._stats = BufferStats(buffer_size=size)
        # Reading: the generation, the outer walk's cursor and the inner walk it is
        # in (sequence, target record, next record), the head chunk tokenized (kept
        # across calls), and what a call collects: packet bytes, their (first index,
        # sequence) runs and (index, loss) marks; then what read_next_packet read ahead.
        self._generation = self._rd = self._budget = 0
        self._reading = self._wrapped = False
        self._reader: tuple[_Sequence, int, int] | None = None
        self._head: tuple | None = None
        self._batch: list[bytes] = []
        self._owners: list[tuple[int, _Sequence]] = []
        self._batch_owner: _Sequence | None = None
        self._marks: list[tuple[int, int]] = []
        self._ready: deque[ReadPacket] = deque()
        self._next_ready = self._ready.popleft

    @property
    def stats(self) -> BufferStats:
        """A snapshot copy of the counters."""
        return replace(self._stats)

    # -- write ---------------------------------------------------------------------------

    def copy_chunk_untrusted(
        self,
        producer_id: int,
        uid: int,
        pid: int,
        writer_id_untrusted: int,
        chunk_id_untrusted: int,
        num_fragments_untrusted: int,
        chunk_flags_untrusted: int,
        chunk_complete: bool,
        payload_untrusted,
    ) -> None:
        """Copy one chunk in: its payload is the chunk minus its 8-byte header,
        any buffer (a memoryview of shared memory, say). producer_id, uid and
        pid come from the service. A copy ends the read generation: records move."""
        _check_producer_id(producer_id)
        self._reading, self._head = False, None
        stats = self._stats
        if self._discarding:
            stats.chunks_discarded += 1
            return
        data = bytes(payload_untrusted)  # the only read of shared memory
        if not (
            is_valid_writer_id(writer_id_untrusted)
            and 0 <= chunk_id_untrusted <= MAX_CHUNK_ID
            and 0 <= num_fragments_untrusted <= COUNT_MASK
            and 0 <= chunk_flags_untrusted <= ABI_FLAGS
            and len(data) <= MAX_RECORD_PAYLOAD
        ):
            stats.abi_violations += 1
            return
        chunk_id, count, flags = chunk_id_untrusted, num_fragments_untrusted, chunk_flags_untrusted
        if not chunk_complete:
            flags |= CHUNK_INCOMPLETE
            if count:  # the producer may still be writing the last fragment
                count -= 1
                flags &= ~(LAST_PACKET_CONTINUES | NEEDS_PATCHING)
        payload, status = measure_fragments_untrusted(data, count)
        if status == MALFORMED:
            stats.abi_violations += 1
        reserved = payload if chunk_complete else len(data)
        if _outer_size(reserved) > self._size:
            stats.abi_violations += 1
            return
        seq = self._sequence(producer_id, writer_id_untrusted, uid, pid)
        if status == WRITER_DROPPED:
            stats.trace_writer_packet_loss += 1
            seq.loss |= LOSS_PRESENT | LOSS_WRITER_ABORT
        elif status == MALFORMED:
            seq.loss |= LOSS_PRESENT | LOSS_CORRUPTED  # V2 only counts it: we report the hole
        consumed = self._admit(seq, chunk_id, payload)
        if consumed < 0:
            stats.chunks_discarded += 1
            return
        n_before = len(seq.chunks)
        pos, existing = self._insert_position(seq, chunk_id)
        if existing >= 0:
            consumed = self._recommit(seq, existing, data, payload, flags, chunk_complete)
            if consumed < 0:
                return
        if not self._make_room(_outer_size(reserved)):
            return
        if len(seq.chunks) != n_before:  # an eviction or the relocation changed the list
            pos = self._insert_position(seq, chunk_id)[0]
        self._write_record(seq, pos, (chunk_id, reserved, payload, consumed, flags), data)

    def _sequence(self, producer_id: int, writer_id: int, uid: int, pid: int) -> _Sequence:
        key = producer_id << 16 | writer_id
        seq = self._seqs.get(key)
        if seq is None:
            seq = self._seqs[key] = _Sequence(producer_id, writer_id, uid, pid)
        return seq

    def _admit(self, seq: _Sequence, chunk_id: int, payload: int) -> int:
        """-1 for a chunk at or before the last one erased (stale), else how many
        payload bytes were consumed already (an evicted scrape returning with
        more payload is re-admitted past what was read of it)."""
        last = seq.last
        if last is None:
            return 0
        order = _id_cmp(chunk_id, last[0])
        if order == 0 and last[2] and last[1] < payload:
            return last[1]
        return -1 if order <= 0 else 0

    def _insert_position(self, seq: _Sequence, chunk_id: int) -> tuple[int, int]:
        """(index where chunk_id belongs in the sequence, offset of the record
        that already holds it or -1), searching from the tail: commits are in
        order but for scrapes."""
        chunks = seq.chunks
        pos = len(chunks)
        while pos:
            off = chunks[pos - 1]
            order = _id_cmp(chunk_id, RECORD_HEADER.unpack_from(self._buf, off)[0])
            if order > 0:
                break
            if order == 0:
                return pos - 1, off
            pos -= 1
        return pos, -1

    def _recommit(
        self, seq: _Sequence, off: int, data: bytes, payload: int, flags: int, complete: bool
    ) -> int:
        """A commit of a chunk id still in the buffer (a scrape, then the real
        commit). Returns -1 when handled here, else the bytes already consumed
        of a copy erased to be written again at wr."""
        stats = self._stats
        cid, key, size, old_payload, unread, old_flags = RECORD_HEADER.unpack_from(self._buf, off)
        kept = old_flags & RECOMMIT_KEPT_FLAGS
        if payload < old_payload or payload > size or flags & kept != kept:
            stats.abi_violations += 1
            return -1
        if (  # a scrape read to the end may sit just before wr: write it anew there
            old_flags & CHUNK_INCOMPLETE
            and not unread
            and complete
            and payload > old_payload
            and seq.chunks[0] == off
            and self._policy == FillPolicy.RING_BUFFER
        ):
            stats.chunks_relocated += 1
            self._erase_head(seq, off)
            return old_payload
        if complete:
            old_flags &= ~CHUNK_INCOMPLETE
        consumed = old_payload - unread
        if payload > old_payload:
            # The new bytes were validated from 0, not from the read offset.
            old_flags = old_flags & ~CHUNK_UNCHECKED | flags | (CHUNK_UNCHECKED if consumed else 0)
            start = off + RECORD_HEADER_SIZE
            self._buf[start : start + payload] = memoryview(data)[:payload]
            stats.chunks_rewritten += 1
        RECORD_HEADER.pack_into(
            self._buf, off, cid, key, size, payload, payload - consumed, old_flags
        )
        return -1

    def _make_room(self, outer: int) -> bool:
        """Evict what lies in [wr, wr + outer), wrapping first if needed; False
        if the DISCARD policy latches instead."""
        if outer > self._size - self._wr:
            if self._policy == FillPolicy.DISCARD:
                self._discarding = True
                self._stats.chunks_discarded += 1
                return False
            if self._wr < self._size:
                self._clear(self._size - self._wr)
            self._wr = 0
            self._stats.write_wrap_count += 1
        self._clear(outer)
        return True

    def _write_record(self, seq: _Sequence, pos: int, record: tuple, data: bytes) -> None:
        chunk_id, reserved, payload, consumed, flags = record
        wr = self._wr
        key = seq.producer_id << 16 | seq.writer_id
        if consumed:  # re-admitted: the bytes were validated from 0, not from there
            flags |= CHUNK_UNCHECKED
        RECORD_HEADER.pack_into(
            self._buf, wr, chunk_id, key, reserved, payload, payload - consumed, flags
        )
        start = wr + RECORD_HEADER_SIZE
        self._buf[start : start + payload] = memoryview(data)[:payload]
        chunks = seq.chunks
        if not chunks and seq.last is not None:
            self._empty_seqs -= 1  # it was counted when it became empty
        if pos == len(chunks):
            chunks.append(wr)
        else:
            chunks.insert(pos, wr)
            self._stats.chunks_committed_out_of_order += 1
        outer = _outer_size(reserved)
        self._wr = wr + outer
        self._used = max(self._used, self._wr)
        self._stats.chunks_written += 1
        self._stats.bytes_written += outer
        if self._empty_seqs > EMPTY_SEQUENCES_GC_THRESHOLD:
            self._forget_old_empty_sequences()

    def _forget_old_empty_sequences(self) -> None:
        empty = [key for key, seq in self._seqs.items() if not seq.chunks]
        self._empty_seqs = len(empty)
        if len(empty) >= EMPTY_SEQUENCES_GC_THRESHOLD:
            empty.sort(key=lambda key: self._seqs[key].age)
            for key in empty[: len(empty) - KEEP_EMPTY_SEQUENCES]:
                del self._seqs[key]
            self._empty_seqs = KEEP_EMPTY_SEQUENCES

    # -- eviction ------------------------------------------------------------------------

    def _clear(self, nbytes: int) -> None:
        """Evict every record overlapping [wr, wr + nbytes); what is left of the
        last one becomes a padding record."""
        buf, stats = self._buf, self._stats
        end = off = self._wr
        end += nbytes
        while off < end and off < self._used:
            _, key, size, _, _, _ = RECORD_HEADER.unpack_from(buf, off)
            if key:
                self._evict(off, key)
            else:
                stats.padding_bytes_cleared += _outer_size(size)
            off += _outer_size(size)
        if off > end:
            RECORD_HEADER.pack_into(buf, end, 0, 0, off - end - RECORD_HEADER_SIZE, 0, 0, 0)
            stats.padding_bytes_written += off - end

    def _evict(self, off: int, key: int) -> None:
        """A forced read of the record's sequence up to it: older chunks of the
        sequence go first, nothing stalls, a dropped packet is loss OVERWRITE."""
        seq = self._seqs.get(key)
        dropped = False
        while seq is not None and seq.chunks:
            head = seq.chunks[0]
            dropped |= self._drain_erase(seq, head)
            self._erase_head(seq, head)
            if head == off:
                break
        if dropped:
            seq.loss |= LOSS_PRESENT | LOSS_OVERWRITE

    def _drain_erase(self, seq: _Sequence, off: int) -> bool:
        """Consume what is left of the head chunk, without output; True if a
        packet went with it."""
        cid, _, _, payload, unread, flags = RECORD_HEADER.unpack_from(self._buf, off)
        self._check_gap(seq, cid)
        if not unread:
            return False
        if not flags & CHUNK_UNCHECKED:
            dropped = self._erase_checked(seq, off, cid, flags, payload, payload - unread)
            if dropped is not None:
                return dropped
        pieces, stop, _, status, first, last = self._tokenize_head(
            seq, off, payload, payload - unread, flags
        )
        dropped = any(pieces[first:last])
        if last < len(pieces):
            dropped |= self._reassemble(seq, cid, flags, b"", False) == _SUCCESS
        if pieces:
            self._consume(off, stop, True)
        if status == MALFORMED:
            seq.loss |= LOSS_PRESENT | LOSS_CORRUPTED
        return dropped

    def _erase_checked(
        self, seq: _Sequence, off: int, cid: int, flags: int, payload: int, pos: int
    ) -> bool | None:
        """_drain_erase for a chunk still as validated at copy time: look only at
        the fragments that tell whether a packet is dropped (usually the first);
        None if the bytes disagree (then they are tokenized)."""
        start = off + RECORD_HEADER_SIZE
        p, end = start + pos, start + payload
        if not pos and flags & FIRST_PACKET_CONTINUES:
            status, _, p = fragment_at(self._buf, p, end)
            if status != OK:
                return None
            seq.loss |= LOSS_PRESENT | LOSS_ORPHAN
        dropped = ends_with_begin = False
        while p < end:
            status, begin, p = fragment_at(self._buf, p, end)
            if status != OK:
                return None
            if p >= end or p > begin:  # the last fragment, or a packet before it
                ends_with_begin = bool(flags & LAST_PACKET_CONTINUES)
                dropped = p > begin and not (p >= end and ends_with_begin)
                break
        if ends_with_begin:
            dropped |= self._reassemble(seq, cid, flags, b"", False) == _SUCCESS
        self._consume(off, payload, True)
        return dropped

    # -- shared by reads and evictions ----------------------------------------------------

    def _check_gap(self, seq: _Sequence, cid: int) -> None:
        """Loss READ_GAP if the head chunk does not follow the last one erased,
        judged once per head (V2 judges, and reports, again on each walk)."""
        if seq.gap_checked == cid:
            return
        seq.gap_checked = cid
        last = seq.last
        if last is not None and cid != (last[0] + 1) & MAX_CHUNK_ID:
            if not (last[2] and cid == last[0]):  # a re-admitted scrape continues itself
                seq.loss |= LOSS_PRESENT | LOSS_READ_GAP

    def _tokenize_head(self, seq: _Sequence, off: int, payload: int, pos: int, flags: int):
        """The head chunk's fragments from payload offset `pos`: (pieces, stop,
        last_hdr, status) as slice_fragments_untrusted, then (first, last): [first, last)
        are whole, an orphan at 0 is reported here, a begin fragment is at last.
        The tokenization kept from a call that stopped in this chunk is reused."""
        cached = self._head
        if cached is not None and cached[0] == off and cached[1] == pos:
            pieces, stop, last_hdr, status = cached[2:]
        else:
            start = off + RECORD_HEADER_SIZE
            pieces, stop, last_hdr, status = slice_fragments_untrusted(
                bytes(self._mv[start : start + payload]), pos
            )
        n = len(pieces)
        first = 0
        if not pos and flags & FIRST_PACKET_CONTINUES and n:
            seq.loss |= LOSS_PRESENT | LOSS_ORPHAN
            first = 1
        last = n - 1 if status == OK and flags & LAST_PACKET_CONTINUES and n > first else n
        return pieces, stop, last_hdr, status, first, last

    def _consume(self, off: int, to: int, evicting: bool, header: tuple | None = None) -> None:
        """Mark the record consumed up to payload offset `to` (`header`: its
        fields, if the caller has them)."""
        cid, key, size, payload, unread, flags = header or RECORD_HEADER.unpack_from(self._buf, off)
        if payload - to >= unread:
            return
        RECORD_HEADER.pack_into(self._buf, off, cid, key, size, payload, payload - to, flags)
        if to == payload:
            stats = self._stats
            if evicting:
                stats.chunks_overwritten += 1
                stats.bytes_overwritten += _outer_size(size)
            else:
                stats.chunks_read += 1
                stats.bytes_read += _outer_size(size)

    def _erase_head(self, seq: _Sequence, off: int, header: tuple | None = None) -> None:
        """Remove the sequence's first chunk; its record becomes padding."""
        cid, _, size, payload, _, flags = header or RECORD_HEADER.unpack_from(self._buf, off)
        seq.chunks.popleft()
        seq.last = (cid, payload, bool(flags & CHUNK_INCOMPLETE))
        seq.gap_checked = -1
        if not seq.chunks:
            self._seq_age += 1
            seq.age = self._seq_age
            self._empty_seqs += 1
        RECORD_HEADER.pack_into(self._buf, off, 0, 0, size, payload, 0, 0)

    def _reassemble(self, seq: _Sequence, cid: int, flags: int, piece: bytes, reading: bool) -> int:
        """Join the head chunk's begin fragment `piece` with the first fragment
        of each following chunk. Those are consumed unless reading stalls (the
        caller consumes the head's); evicting, nothing is output."""
        result, reason, pieces = _NOT_ENOUGH, 0, []
        if not flags & NEEDS_PATCHING:
            result, reason = self._collect_pieces(seq, cid, pieces)
        if result != _NOT_ENOUGH or not reading:
            for off, to, _, header in pieces:
                self._consume(off, to, not reading, header)
        if result == _SUCCESS:
            self._stats.readaheads_succeeded += 1
            data = piece + b"".join([data for _, _, data, _ in pieces]) if reading else b""
            if data:  # all-empty pieces make no packet, as an empty fragment makes none
                if seq is self._batch_owner and not seq.loss:
                    self._batch.append(data)  # the common case, without a call
                else:
                    self._add_packets(seq, (data,))
                self._budget -= len(data)
            return result
        self._stats.readaheads_failed += 1
        if result == _DATA_LOSS:
            seq.loss |= LOSS_PRESENT | reason
        elif not reading:
            seq.loss |= LOSS_PRESENT | LOSS_OVERWRITE
        return result

    def _collect_pieces(self, seq: _Sequence, prev_id: int, pieces: list) -> tuple[int, int]:
        """Append (record, end offset, bytes, header) of each piece continuing
        the packet; returns (outcome, loss reason)."""
        for i in range(1, len(seq.chunks)):
            off = seq.chunks[i]
            header = RECORD_HEADER.unpack_from(self._buf, off)
            cid, _, _, payload, unread, flags = header
            if flags & NEEDS_PATCHING:
                return _NOT_ENOUGH, 0
            if cid != (prev_id + 1) & MAX_CHUNK_ID:
                return _DATA_LOSS, LOSS_REASSEMBLY_GAP
            prev_id, pos = cid, payload - unread
            if pos >= payload:
                continue  # an empty chunk in the middle of a packet
            start = off + RECORD_HEADER_SIZE
            status, begin, end = fragment_at(self._buf, start + pos, start + payload)
            if status == MALFORMED:
                return _DATA_LOSS, LOSS_CORRUPTED
            if status == WRITER_DROPPED:
                continue  # as V2: the chunk offers no fragment
            if pos or not flags & FIRST_PACKET_CONTINUES:  # a whole or a begin fragment
                return _DATA_LOSS, LOSS_BROKEN_CHAIN
            pieces.append((off, end - start, self._mv[begin:end], header))
            if end < start + payload or not flags & LAST_PACKET_CONTINUES:
                return _SUCCESS, 0  # an end fragment; else a continue fragment
        return _NOT_ENOUGH, 0

    # -- patches -------------------------------------------------------------------------

    def try_patch_chunk(
        self,
        producer_id: int,
        writer_id_untrusted: int,
        chunk_id_untrusted: int,
        patches_untrusted: Sequence[tuple[int, bytes]],
        has_more_patches: bool,
    ) -> bool:
        """Write 4-byte patches at payload offsets of a chunk still in the buffer.
        A bad one fails the batch there (patches_failed); earlier ones stay. True
        if all applied; then, unless more are coming, it no longer needs patching."""
        _check_producer_id(producer_id)
        self._head = None  # the bytes may change under a kept tokenization
        off = -1
        if is_valid_writer_id(writer_id_untrusted) and 0 <= chunk_id_untrusted <= MAX_CHUNK_ID:
            seq = self._seqs.get(producer_id << 16 | writer_id_untrusted)
            for rec in reversed(seq.chunks if seq else ()):  # usually a recent chunk
                if RECORD_HEADER.unpack_from(self._buf, rec)[0] == chunk_id_untrusted:
                    off = rec
                    break
        if off < 0:
            self._stats.patches_failed += 1
            return False
        cid, key, size, payload, unread, flags = RECORD_HEADER.unpack_from(self._buf, off)
        ok, applied = True, 0
        for offset, data_untrusted in patches_untrusted:
            patch = bytes(data_untrusted)
            if len(patch) != 4 or not 0 <= offset <= payload - 4:
                ok = False
                break
            start = off + RECORD_HEADER_SIZE + offset
            self._buf[start : start + 4] = patch
            applied += 1
            flags |= CHUNK_UNCHECKED
        if ok:  # as V2, a failed batch counts one failure and no success
            self._stats.patches_succeeded += applied
            if not has_more_patches:
                flags &= ~NEEDS_PATCHING
        else:
            self._stats.patches_failed += 1
        RECORD_HEADER.pack_into(self._buf, off, cid, key, size, payload, unread, flags)
        return ok

    # -- read ----------------------------------------------------------------------------

    def begin_read(self) -> None:
        """Start a read generation at the oldest data; stalls of the last one end."""
        self._generation += 1
        self._rd = 0 if self._wr == self._used else self._wr
        self._wrapped = False
        self._reader = None
        self._head = None
        self._reading = True

    def read_packets(self, max_bytes: int) -> list[ReadPacket]:
        """Packets until their data adds up to max_bytes (at least one if any is
        readable); [] when nothing more is readable in this generation."""
        out = list(self._ready)
        if out:
            self._ready.clear()
            max_bytes -= sum(len(packet.data) for packet in out)
            if max_bytes <= 0:
                return out
        if self._reading:
            self._budget = max(max_bytes, 1)
            self._walk()
            self._flush(out)
        return out

    def read_next_packet(self) -> ReadPacket | None:
        """The next packet, or None when nothing more is readable in this
        generation. Reads ahead READ_AHEAD_BYTES at a time (a call costs more
        than a packet): those packets are gone from the buffer and counted as
        read, and come first from any later read, in this generation or the next."""
        try:
            return self._next_ready()
        except IndexError:
            self._ready.extend(self.read_packets(READ_AHEAD_BYTES))
            return self._next_ready() if self._ready else None

    def _walk(self) -> None:
        """The outer walk, in buffer order from rd, until the budget is spent
        (the next call resumes there) or wr is reached."""
        while True:
            if self._reader is None:
                rd = self._rd
                _, key, size, _, _, _ = RECORD_HEADER.unpack_from(self._buf, rd)
                next_rd = rd + _outer_size(size)
                seq = self._seqs.get(key) if key else None
                if seq is not None and seq.chunks and self._read_sequence(seq, rd):
                    self._reader = (seq, rd, next_rd)
                    return
            else:
                seq, end, next_rd = self._reader
                if self._read_sequence(seq, end):
                    return
                self._reader = None
            wrap = next_rd >= self._used
            if next_rd == self._wr or (wrap and (self._wr == 0 or self._wrapped)):
                self._reading = False
                return
            self._wrapped |= wrap
            self._rd = 0 if wrap else next_rd

    def _read_sequence(self, seq: _Sequence, end: int) -> bool:
        """The inner walk: the sequence's chunks in id order, up to record `end`.
        True if it stopped because the budget is spent."""
        if seq.stalled_in == self._generation:
            return False
        chunks = seq.chunks
        while chunks:
            head = chunks[0]
            outcome = self._drain_read(seq, head)
            if outcome != _DONE:
                return outcome == _BUDGET
            if head == end:
                break
        return False

    def _drain_read(self, seq: _Sequence, off: int) -> int:
        """Read packets from the head chunk into the batch: _BUDGET (stopped
        after a packet), _STALL (the sequence waits) or _DONE (it is erased)."""
        header = RECORD_HEADER.unpack_from(self._buf, off)
        cid, _, _, payload, unread, flags = header
        if seq.last is not None and cid != (seq.last[0] + 1) & MAX_CHUNK_ID:
            self._check_gap(seq, cid)  # the usual next chunk needs no more checks
        pos = payload - unread
        pieces, stop, last_hdr, status, first, last = self._tokenize_head(
            seq, off, payload, pos, flags
        )
        n = len(pieces)
        done = self._take_whole(seq, pieces, first, last)
        stalled = False
        if last < n and self._budget > 0:  # then every whole fragment was taken
            stalled = self._reassemble(seq, cid, flags, pieces[last], True) == _NOT_ENOUGH
            done = last if stalled else n
        if done == n:
            to = stop
            if status == MALFORMED:
                seq.loss |= LOSS_PRESENT | LOSS_CORRUPTED
        elif done == n - 1:
            to = last_hdr
        else:  # stopped early in the chunk: step over what was taken (parsed already)
            start = to = off + RECORD_HEADER_SIZE
            to += pos
            for _ in range(done):
                to = fragment_at(self._buf, to, start + payload)[2]
            to -= start
        self._consume(off, to, False, header)
        if self._budget > 0 and not stalled and not flags & CHUNK_INCOMPLETE:
            self._erase_head(seq, off, header)
            return _DONE
        if self._budget <= 0:  # the next call resumes here, without tokenizing again
            self._head = (off, to, pieces[done:], stop, last_hdr, status)
            return _BUDGET
        seq.stalled_in = self._generation  # a piece is missing; or never past a scrape
        return _STALL

    def _take_whole(self, seq: _Sequence, pieces: list[bytes], first: int, last: int) -> int:
        """Packets from whole fragments [first, last) within the budget (empty
        ones skipped); returns how many fragments, from 0, are consumed."""
        if last <= first:
            return first
        run = pieces if first == 0 and last == len(pieces) else pieces[first:last]
        budget = self._budget
        total = sum(map(len, run))
        done = last
        if total >= budget:  # stop at the packet that spends the budget
            total = 0
            for i, piece in enumerate(run):
                total += len(piece)
                if total >= budget:
                    run, done = run[: i + 1], first + i + 1
                    break
        self._budget = budget - total
        self._add_packets(seq, filter(None, run))
        return done

    def _add_packets(self, seq: _Sequence, datas) -> None:
        batch = self._batch
        begin = len(batch)
        batch.extend(datas)
        if len(batch) > begin:
            if seq is not self._batch_owner:
                self._owners.append((begin, seq))
                self._batch_owner = seq
            if seq.loss:  # reported on the first packet after the loss
                self._marks.append((begin, seq.loss))
                seq.loss = 0

    def _flush(self, out: list[ReadPacket]) -> None:
        """Turn the batch into ReadPackets, all at once (see _make_packets)."""
        batch, owners = self._batch, self._owners
        n = len(batch)
        if not n:
            return
        producers: list[int] = []
        writers: list[int] = []
        uids: list[int] = []
        pids: list[int] = []
        ends = [begin for begin, _ in owners[1:]] + [n]
        for (begin, seq), end in zip(owners, ends, strict=True):
            producers += [seq.producer_id] * (end - begin)
            writers += [seq.writer_id] * (end - begin)
            uids += [seq.uid] * (end - begin)
            pids += [seq.pid] * (end - begin)
        losses = [0] * n
        for i, loss in self._marks:
            losses[i] = loss
        out.extend(_make_packets(batch, producers, writers, uids, pids, losses))
        self._batch = []
        owners.clear()
        self._marks.clear()
        self._batch_owner = None
