"""The service's central trace buffer, with Perfetto's TraceBuffer V2 semantics.

One TraceBuffer per `buffers` entry of a TraceConfig. Producers' chunks are
copied in (`copy_chunk_untrusted`), nested size fields are fixed later
(`try_patch_chunk`), and packets are read back destructively (`begin_read`, then
`read_packets` or `read_next_packet`). All a producer supplies is untrusted: no
input makes a method raise or read outside a chunk, it moves a counter instead.

Three modules, by what they hold:

    shm/buffer_records.py  the ring's memory and record layout (ChunkRecord), the
                           sequences, and the steps reading and eviction share
    shm/buffer_reader.py   BufferReader: read generations, walks, reassembly, packets
    shm/trace_buffer.py    TraceBuffer (this module): what goes in (copy, recommit,
                           patch), what makes room (eviction), the public API,
                           read-only copies (clone_read_only)

Who validates what. The chunk reaches the buffer through the service's
CommitPath (actors/core/producers.py); each check has one owner:

    CommitPath     the SMB and the request: page and chunk indices and the chunk's
                   state (SharedMemoryABI's CAS: only a COMPLETE chunk is moved,
                   and it is freed whatever happens), the header read once, the
                   target buffer (a u16 this producer may write to, and the one its
                   writer registered); for patches the request entry: a buffer it
                   may write to, a valid writer id, at most 1024 patches, 4-byte
                   data (else patches_discarded); writer stats.
    TraceBuffer    the chunk itself: header fields (writer id, chunk id, count,
                   flags: abi_violations), payload size, fragments (abi_violations,
                   loss CORRUPTED / WRITER_ABORT), chunk-id order (stale ids:
                   chunks_discarded), recommits; for patches, that the chunk is in
                   this producer's sequence and each 4-byte slot lies within its
                   payload (patches_failed).

Write. One copy: the payload's fragments are measured where they lie (shared
memory, say) and the measured bytes are copied straight into the ring. A bad
header or a record larger than the buffer is an abi_violation. A scrape drops
its last fragment and that one's "continues"/"needs patching" flags. A malformed
fragment ends the chunk (abi_violations, loss CORRUPTED), so does the writer's
drop sentinel (trace_writer_packet_loss, loss WRITER_ABORT). The measurement
sizes the record and counts the loss; it is not trusted afterwards: every read
of a record parses it again within its bounds (shm/buffer_records.py), so a
producer that changes its bytes while they are copied garbles only its own
sequence. An id at or before the last one erased is stale (chunks_discarded),
unless an evicted scrape comes back with more; the last one erased coming back
with no more than was erased (a chunk scraped, read, then committed) is
skipped, as Perfetto skips an identical recommit: nothing was lost. An id still present is a
recommit: it may only grow within its reservation and add flags (else
abi_violations); equal is skipped, more is rewritten (chunks_rewritten) or, for
a scrape read to the end, moved to wr (chunks_relocated). Then DISCARD latches
for good at the first wrap (chunks_discarded); RING_BUFFER wraps
(write_wrap_count), evicts what is in the way and writes the record
(chunks_committed_out_of_order unless it goes at its sequence's tail). A copy
ends the read generation (records move).

Evict. The reader's walk, forced, for the record's sequence up to it: no stalls,
no output, a dropped packet is loss OVERWRITE.

Clone. `clone_read_only` is Perfetto's CloneReadOnly: a new buffer of the same
size and policy holding a copy of the ring's bytes (only [0, used): one memcpy
into fresh zeroed pages), its sequences and its stats, with the read counters
(bytes_read, chunks_read, readaheads_*) reset and a fresh reader; what the
source had read already is gone from it, as from the source. A read-only
buffer takes no chunk and no patch (each counted as discarded/failed): a
clone is a frozen snapshot. `empty_like` is a new empty buffer of the same
size and policy (transfer_on_clone, clear_before_clone).

Loss bits are OR-ed into the sequence and reported, with LOSS_PRESENT, on its
next packet read: READ_GAP (ids not consecutive), CORRUPTED, ORPHAN,
REASSEMBLY_GAP, BROKEN_CHAIN, OVERWRITE, WRITER_ABORT. Stats: Perfetto's
TraceStats.BufferStats, kept as V2 keeps them (bytes_* count whole records),
and each writer's histogram of chunk payload sizes (shm/writer_stats.py).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

from shm.abi import (
    COUNT_MASK,
    FIRST_PACKET_CONTINUES,
    LAST_PACKET_CONTINUES,
    NEEDS_PATCHING,
    is_valid_writer_id,
)
from shm.buffer_reader import READ_AHEAD_BYTES, BufferReader, ReadPacket
from shm.buffer_records import (
    CHUNK_INCOMPLETE,
    CHUNK_UNCHECKED,
    EMPTY_SEQUENCES_GC_THRESHOLD,
    JOIN_DATA_LOSS,
    JOIN_SUCCESS,
    LOSS_BROKEN_CHAIN,
    LOSS_CORRUPTED,
    LOSS_ORPHAN,
    LOSS_OVERWRITE,
    LOSS_PRESENT,
    LOSS_READ_GAP,
    LOSS_REASSEMBLY_GAP,
    LOSS_WRITER_ABORT,
    MAX_CHUNK_ID,
    MAX_RECORD_PAYLOAD,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    Piece,
    RecordRing,
    SequenceState,
    id_cmp,
    outer_size,
    whole_range,
)
from shm.packets import MALFORMED, OK, WRITER_DROPPED, fragment_at, measure_fragments_untrusted
from shm.writer_stats import WriterStats

__all__ = [
    "LOSS_BROKEN_CHAIN",
    "LOSS_CORRUPTED",
    "LOSS_ORPHAN",
    "LOSS_OVERWRITE",
    "LOSS_PRESENT",
    "LOSS_READ_GAP",
    "LOSS_REASSEMBLY_GAP",
    "LOSS_WRITER_ABORT",
    "READ_AHEAD_BYTES",
    "RECORD_HEADER",
    "BufferStats",
    "FillPolicy",
    "ReadPacket",
    "TraceBuffer",
    "buffer_memory",
]

BUFFER_GRANULE = 4096
MAX_BUFFER_SIZE = 1 << 32  # exclusive: Perfetto's offsets are u32
ABI_FLAGS = 0x3F  # the six flag bits of a chunk header
RECOMMIT_KEPT_FLAGS = FIRST_PACKET_CONTINUES | LAST_PACKET_CONTINUES | NEEDS_PATCHING
ALREADY_HAD = -2  # _admit: the last chunk erased, again, with nothing new
_new_tuple = tuple.__new__  # builds a NamedTuple without the cost of its __new__


class FillPolicy(enum.IntEnum):
    """TraceConfig.BufferConfig.FillPolicy (same numbers)."""

    RING_BUFFER = 1
    DISCARD = 2


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


def buffer_memory(size_bytes: int) -> int:
    """The memory a TraceBuffer of `size_bytes` maps: the size rounded up to 4 KiB
    (what a service's buffer memory budget counts)."""
    return -(-size_bytes // BUFFER_GRANULE) * BUFFER_GRANULE


def _check_producer_id(producer_id: int) -> None:
    if not 0 < producer_id <= 0xFFFF:
        raise ValueError(f"producer ids are 1..65535 (assigned by the service), got {producer_id}")


class TraceBuffer:
    """A ring of chunk records with per-sequence order, reassembly and loss
    reporting; see the module docstring. Not thread-safe: the service owns it.

    Its memory is mapped, not filled (shm/buffer_records.py), and unmapped when
    the buffer is dropped; a mapping the host refuses raises OSError."""

    def __init__(self, size_bytes: int, fill_policy: FillPolicy = FillPolicy.RING_BUFFER) -> None:
        if not isinstance(size_bytes, int):
            raise TypeError("size_bytes must be an int")
        size = buffer_memory(size_bytes)
        if size_bytes <= 0 or size >= MAX_BUFFER_SIZE:
            raise ValueError(f"buffer size must be > 0 and < 4 GiB, got {size_bytes}")
        self._policy = FillPolicy(fill_policy)
        self._discarding = False  # DISCARD latched
        self._stats = BufferStats(buffer_size=size)
        self._ring = RecordRing(size, self._stats)
        self._reader = BufferReader(self._ring)
        # Packets this buffer's writers say they dropped before a chunk (SMB full),
        # from the writer stats of commits and acks (actors/core/producers.py): kept
        # here so that they outlive the producer that reported them.
        self.writer_packets_dropped = 0
        # Chunk payload sizes per writer (TraceStats.writer_stats), counted on copy.
        self.writer_stats = WriterStats()
        self._read_only = False

    @property
    def stats(self) -> BufferStats:
        """A snapshot copy of the counters."""
        return replace(self._stats)

    def sequences(self) -> list[tuple[int, int]]:
        """(producer id, writer id) of each sequence that wrote to the buffer, in
        the order they first did (those long empty may have been forgotten)."""
        return [(seq.producer_id, seq.writer_id) for seq in self._ring.seqs.values()]

    @property
    def fill_policy(self) -> FillPolicy:
        return self._policy

    @property
    def read_only(self) -> bool:
        """True for a clone (clone_read_only): it takes no more chunks or patches."""
        return self._read_only

    @property
    def has_data(self) -> bool:
        """Whether anything was ever written (what clear_before_clone looks at)."""
        return self._ring.used > 0

    # -- copies ----------------------------------------------------------------------------

    def empty_like(self) -> TraceBuffer:
        """A new, empty buffer of the same size and fill policy (OSError if the host
        refuses the memory)."""
        return TraceBuffer(self._ring.size, self._policy)

    def clone_read_only(self) -> TraceBuffer:
        """A read-only copy: bytes, sequences and stats, read counters reset (see
        the module docstring). OSError if the host refuses the memory."""
        clone = self.empty_like()
        src, dst = self._ring, clone._ring
        dst.mv[: src.used] = src.mv[: src.used]
        dst.used, dst.wr = src.used, src.wr
        dst.empty_seqs, dst.seq_age = src.empty_seqs, src.seq_age
        dst.seqs = {key: _copy_sequence(seq) for key, seq in src.seqs.items()}
        for f in fields(BufferStats):  # in place: the ring holds the same object
            setattr(clone._stats, f.name, getattr(self._stats, f.name))
        for name in ("bytes_read", "chunks_read", "readaheads_succeeded", "readaheads_failed"):
            setattr(clone._stats, name, 0)
        clone._discarding = self._discarding
        clone.writer_packets_dropped = self.writer_packets_dropped
        clone.make_read_only()
        return clone

    def make_read_only(self) -> None:
        """From now on no chunk or patch is taken (a buffer moved to a clone)."""
        self._read_only = True

    # -- read (BufferReader) ---------------------------------------------------------------

    def begin_read(self) -> None:
        """Start a read generation at the oldest data; stalls of the last one end."""
        self._reader.begin_read()

    @property
    def read_interrupted(self) -> bool:
        """True when a copy ended the read generation before everything readable
        was read (a read in slices then begins another to read the rest)."""
        return self._reader.interrupted

    def read_packets(self, max_bytes: int) -> list[ReadPacket]:
        """Packets until their data adds up to max_bytes (at least one if any is
        readable); [] when nothing more is readable in this generation."""
        return self._reader.read_packets(max_bytes)

    def read_next_packet(self) -> ReadPacket | None:
        """The next packet, or None when nothing more is readable in this
        generation. Reads ahead READ_AHEAD_BYTES at a time (a call costs more
        than a packet): those packets are gone from the buffer and counted as
        read, and come first from any later read, in this generation or the next."""
        return self._reader.read_next_packet()

    # -- write -----------------------------------------------------------------------------

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
        any buffer (a memoryview of shared memory, say), copied once, straight
        into the ring. producer_id, uid and pid come from the service. A copy
        ends the read generation: records move."""
        _check_producer_id(producer_id)
        self._reader.end_generation()
        stats = self._stats
        if self._discarding or self._read_only:
            stats.chunks_discarded += 1
            return
        if not (
            is_valid_writer_id(writer_id_untrusted)
            and 0 <= chunk_id_untrusted <= MAX_CHUNK_ID
            and 0 <= num_fragments_untrusted <= COUNT_MASK
            and 0 <= chunk_flags_untrusted <= ABI_FLAGS
            and len(payload_untrusted) <= MAX_RECORD_PAYLOAD
        ):
            stats.abi_violations += 1
            return
        chunk_id, count, flags = chunk_id_untrusted, num_fragments_untrusted, chunk_flags_untrusted
        if not chunk_complete:
            flags |= CHUNK_INCOMPLETE
            if count:  # the producer may still be writing the last fragment
                count -= 1
                flags &= ~(LAST_PACKET_CONTINUES | NEEDS_PATCHING)
        # Measured where it lies; trusted only to size the record and count loss.
        payload, status = measure_fragments_untrusted(payload_untrusted, count)
        if status == MALFORMED:
            stats.abi_violations += 1
        reserved = payload if chunk_complete else len(payload_untrusted)
        if outer_size(reserved) > self._ring.size:
            stats.abi_violations += 1
            return
        self.writer_stats.add(producer_id << 16 | writer_id_untrusted, payload)
        seq = self._ring.sequence(producer_id, writer_id_untrusted, uid, pid)
        if status == WRITER_DROPPED:
            stats.trace_writer_packet_loss += 1
            seq.loss |= LOSS_PRESENT | LOSS_WRITER_ABORT
        elif status == MALFORMED:
            seq.loss |= LOSS_PRESENT | LOSS_CORRUPTED  # V2 only counts it: we report the hole
        view = memoryview(payload_untrusted)  # no copy: the one copy goes into the ring
        self._store(seq, chunk_id, reserved, payload, flags, chunk_complete, view)

    def _store(
        self,
        seq: SequenceState,
        chunk_id: int,
        reserved: int,
        payload: int,
        flags: int,
        complete: bool,
        payload_untrusted: memoryview,
    ) -> None:
        """Place a measured chunk: skip it if stale, recommit it if present, else
        make room and write a new record."""
        consumed = self._admit(seq, chunk_id, payload)
        if consumed == ALREADY_HAD:
            return
        if consumed < 0:
            self._stats.chunks_discarded += 1
            return
        n_before = len(seq.chunks)
        pos, existing = self._insert_position(seq, chunk_id)
        if existing >= 0:
            consumed = self._recommit(seq, existing, payload_untrusted, payload, flags, complete)
            if consumed < 0:
                return
        if not self._make_room(outer_size(reserved)):
            return
        if len(seq.chunks) != n_before:  # an eviction or the relocation changed the list
            pos = self._insert_position(seq, chunk_id)[0]
        self._write_record(
            seq, pos, chunk_id, reserved, payload, consumed, flags, payload_untrusted
        )

    def _admit(self, seq: SequenceState, chunk_id: int, payload: int) -> int:
        """-1 for a chunk at or before the last one erased (stale), ALREADY_HAD for
        the last one erased again with no more payload (a scrape, read, then its
        commit: Perfetto skips such an identical recommit, and nothing is lost),
        else how many payload bytes were consumed already (an evicted scrape
        returning with more payload is re-admitted past what was read of it)."""
        last = seq.last
        if last is None:
            return 0
        order = id_cmp(chunk_id, last.chunk_id)
        if order == 0 and payload <= last.payload:
            return ALREADY_HAD
        if order == 0 and last.scraped:
            return last.payload
        return -1 if order <= 0 else 0

    def _insert_position(self, seq: SequenceState, chunk_id: int) -> tuple[int, int]:
        """(index where chunk_id belongs in the sequence, offset of the record
        that already holds it or -1), searching from the tail: commits are in
        order but for scrapes."""
        chunks, buf = seq.chunks, self._ring.buf
        pos = len(chunks)
        while pos:
            off = chunks[pos - 1]
            order = id_cmp(chunk_id, RECORD_HEADER.unpack_from(buf, off)[0])
            if order > 0:
                break
            if order == 0:
                return pos - 1, off
            pos -= 1
        return pos, -1

    def _recommit(
        self,
        seq: SequenceState,
        off: int,
        payload_untrusted: memoryview,
        payload: int,
        flags: int,
        complete: bool,
    ) -> int:
        """A commit of a chunk id still in the buffer (a scrape, then the real
        commit). Returns -1 when handled here, else the bytes already consumed
        of a copy erased to be written again at wr."""
        ring, stats = self._ring, self._stats
        cid, key, size, old_payload, unread, old_flags = ring.record(off)
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
            ring.erase_head(seq, off)
            return old_payload
        if complete:
            old_flags &= ~CHUNK_INCOMPLETE
        consumed = old_payload - unread
        if payload > old_payload:
            # The new bytes were measured from 0, not from the read offset.
            old_flags = old_flags & ~CHUNK_UNCHECKED | flags | (CHUNK_UNCHECKED if consumed else 0)
            start = off + RECORD_HEADER_SIZE
            ring.mv[start : start + payload] = payload_untrusted[:payload]
            stats.chunks_rewritten += 1
        RECORD_HEADER.pack_into(
            ring.buf, off, cid, key, size, payload, payload - consumed, old_flags
        )
        return -1

    def _make_room(self, outer: int) -> bool:
        """Evict what lies in [wr, wr + outer), wrapping first if needed; False
        if the DISCARD policy latches instead."""
        ring = self._ring
        if outer > ring.size - ring.wr:
            if self._policy == FillPolicy.DISCARD:
                self._discarding = True
                self._stats.chunks_discarded += 1
                return False
            if ring.wr < ring.size:
                self._clear(ring.size - ring.wr)
            ring.wr = 0
            self._stats.write_wrap_count += 1
        self._clear(outer)
        return True

    def _write_record(
        self,
        seq: SequenceState,
        pos: int,
        chunk_id: int,
        reserved: int,
        payload: int,
        consumed: int,
        flags: int,
        payload_untrusted: memoryview,
    ) -> None:
        """Write the record at wr (room is made; `reserved` >= `payload` bytes, of
        which `consumed` were read already) and list it at index `pos` of its
        sequence: the one copy of the payload, from where it lies into the ring."""
        ring, stats = self._ring, self._stats
        wr = ring.wr
        key = seq.producer_id << 16 | seq.writer_id
        if consumed:  # re-admitted: the bytes were measured from 0, not from there
            flags |= CHUNK_UNCHECKED
        RECORD_HEADER.pack_into(
            ring.buf, wr, chunk_id, key, reserved, payload, payload - consumed, flags
        )
        start = wr + RECORD_HEADER_SIZE
        # Through the memoryview: bytearray slice assignment would first copy any
        # other buffer into a temporary bytearray.
        ring.mv[start : start + payload] = payload_untrusted[:payload]
        chunks = seq.chunks
        if not chunks and seq.last is not None:
            ring.empty_seqs -= 1  # it was counted when it became empty
        if pos == len(chunks):
            chunks.append(wr)
        else:
            chunks.insert(pos, wr)
            stats.chunks_committed_out_of_order += 1
        outer = outer_size(reserved)
        ring.wr = wr + outer
        ring.used = max(ring.used, ring.wr)
        stats.chunks_written += 1
        stats.bytes_written += outer
        if ring.empty_seqs > EMPTY_SEQUENCES_GC_THRESHOLD:
            ring.forget_old_empty_sequences()

    # -- eviction --------------------------------------------------------------------------

    def _clear(self, nbytes: int) -> None:
        """Evict every record overlapping [wr, wr + nbytes); what is left of the
        last one becomes a padding record."""
        ring, stats = self._ring, self._stats
        buf = ring.buf
        end = off = ring.wr
        end += nbytes
        while off < end and off < ring.used:
            _, key, size, _, _, _ = RECORD_HEADER.unpack_from(buf, off)
            if key:
                self._evict(off, key)
            else:
                stats.padding_bytes_cleared += outer_size(size)
            off += outer_size(size)
        if off > end:
            RECORD_HEADER.pack_into(buf, end, 0, 0, off - end - RECORD_HEADER_SIZE, 0, 0, 0)
            stats.padding_bytes_written += off - end

    def _evict(self, off: int, key: int) -> None:
        """A forced read of the record's sequence up to it: older chunks of the
        sequence go first, nothing stalls, a dropped packet is loss OVERWRITE."""
        ring = self._ring
        seq = ring.seqs.get(key)
        dropped = False
        while seq is not None and seq.chunks:
            head = seq.chunks[0]
            dropped |= self._evict_head(seq, head)
            ring.erase_head(seq, head)
            if head == off:
                break
        if seq is not None and dropped:
            seq.loss |= LOSS_PRESENT | LOSS_OVERWRITE

    def _evict_head(self, seq: SequenceState, off: int) -> bool:
        """Consume what is left of the head chunk, without output; True if a
        packet went with it."""
        ring = self._ring
        cid, _, _, payload, unread, flags = ring.record(off)
        ring.check_gap(seq, cid)
        if not unread:
            return False
        pos = payload - unread
        if not flags & CHUNK_UNCHECKED:
            dropped = self._evict_measured_head(seq, off, cid, flags, payload, pos)
            if dropped is not None:
                return dropped
        pieces, stop, _, status = ring.slice_record(off, payload, pos)
        first, last = whole_range(seq, len(pieces), status, pos, flags)
        dropped = any(pieces[first:last])
        if last < len(pieces):
            dropped |= self._evict_split_packet(seq, cid, flags)
        if pieces:
            ring.consume_evicted(off, stop)
        if status == MALFORMED:
            seq.loss |= LOSS_PRESENT | LOSS_CORRUPTED
        return dropped

    def _evict_measured_head(
        self, seq: SequenceState, off: int, cid: int, flags: int, payload: int, pos: int
    ) -> bool | None:
        """_evict_head for a chunk not flagged CHUNK_UNCHECKED: look only at the
        fragments that tell whether a packet is dropped (usually the first),
        bounded like every parse (the producer may have changed its bytes during
        the copy); None if they disagree with the measurement (then they are
        tokenized)."""
        ring = self._ring
        buf = ring.buf
        start = off + RECORD_HEADER_SIZE
        p, end = start + pos, start + payload
        if not pos and flags & FIRST_PACKET_CONTINUES:
            status, _, p = fragment_at(buf, p, end)
            if status != OK:
                return None
            seq.loss |= LOSS_PRESENT | LOSS_ORPHAN
        dropped = ends_with_begin = False
        while p < end:
            status, begin, p = fragment_at(buf, p, end)
            if status != OK:
                return None
            if p >= end or p > begin:  # the last fragment, or a packet before it
                ends_with_begin = bool(flags & LAST_PACKET_CONTINUES)
                dropped = p > begin and not (p >= end and ends_with_begin)
                break
        if ends_with_begin:
            dropped |= self._evict_split_packet(seq, cid, flags)
        ring.consume_evicted(off, payload)
        return dropped

    def _evict_split_packet(self, seq: SequenceState, cid: int, flags: int) -> bool:
        """The pieces of the packet the head chunk begins go with it: consume
        them; True if the whole packet was there (so a packet is dropped)."""
        ring, stats = self._ring, self._stats
        pieces: list[Piece] = []
        result, reason = ring.join_pieces(seq, cid, flags, pieces)
        for offset, end, _, record in pieces:
            ring.consume_evicted(offset, end, record)
        if result == JOIN_SUCCESS:
            stats.readaheads_succeeded += 1
            return True
        stats.readaheads_failed += 1
        seq.loss |= LOSS_PRESENT | (reason if result == JOIN_DATA_LOSS else LOSS_OVERWRITE)
        return False

    # -- patches ---------------------------------------------------------------------------

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
        if all applied; then, unless more are coming, it no longer needs patching.
        The writer id's range is the caller's rule (CommitPath); here it only
        has to name a sequence of this producer's."""
        _check_producer_id(producer_id)
        self._reader.forget_tokens()  # the bytes may change under kept tokens
        off = self._find_chunk(producer_id, writer_id_untrusted, chunk_id_untrusted)
        if off < 0 or self._read_only:
            self._stats.patches_failed += 1
            return False
        ring = self._ring
        cid, key, size, payload, unread, flags = ring.record(off)
        ok, applied = True, 0
        for offset, data_untrusted in patches_untrusted:
            patch = bytes(data_untrusted)
            if len(patch) != 4 or not 0 <= offset <= payload - 4:
                ok = False
                break
            start = off + RECORD_HEADER_SIZE + offset
            ring.buf[start : start + 4] = patch
            applied += 1
            flags |= CHUNK_UNCHECKED
        if ok:  # as V2, a failed batch counts one failure and no success
            self._stats.patches_succeeded += applied
            if not has_more_patches:
                flags &= ~NEEDS_PATCHING
        else:
            self._stats.patches_failed += 1
        RECORD_HEADER.pack_into(ring.buf, off, cid, key, size, payload, unread, flags)
        return ok

    def _find_chunk(self, producer_id: int, writer_id_untrusted: int, chunk_id_untrusted) -> int:
        """The offset of the record of this producer's writer and chunk id, or -1."""
        seq = self._ring.seqs.get(producer_id << 16 | (writer_id_untrusted & 0xFFFF))
        if seq is None or seq.writer_id != writer_id_untrusted:
            return -1  # an id beyond 16 bits could name another producer's key
        if not 0 <= chunk_id_untrusted <= MAX_CHUNK_ID:
            return -1
        buf = self._ring.buf
        for off in reversed(seq.chunks):  # usually a recent chunk
            if RECORD_HEADER.unpack_from(buf, off)[0] == chunk_id_untrusted:
                return off
        return -1


def _copy_sequence(seq: SequenceState) -> SequenceState:
    """A sequence's state for a clone; its stall belongs to the source's reader."""
    copy = SequenceState(seq.producer_id, seq.writer_id, seq.uid, seq.pid)
    copy.chunks = deque(seq.chunks)
    copy.last, copy.loss, copy.age = seq.last, seq.loss, seq.age
    return copy
