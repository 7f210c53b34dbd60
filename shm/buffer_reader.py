"""Destructive read-back of a TraceBuffer: Perfetto's ChunkSeqIterator and
ChunkSeqReader in one class.

A read generation starts at `begin_read` and ends at the next copy into the
buffer (records move) or when everything readable was read. Within it:

- the outer walk goes through the records in buffer order, from the oldest;
- at a live record, the inner walk reads that record's sequence from its first
  chunk up to it, so a sequence comes out in chunk-id order however it was
  committed;
- a whole fragment is a packet (an empty one is skipped: the 0x00 inflation
  byte is never one); a first fragment continuing a packet whose start is gone
  is an orphan; a last one that continues is joined with the first fragment of
  each following chunk (readaheads_*);
- if the next piece is missing or waits for a patch, the sequence stalls,
  untouched, until the next begin_read; others go on. A gap in the ids or a
  broken chain drops the pieces. A chunk read to the end becomes padding; a
  scraped one is never read past.

read_packets stops once max_bytes of packets are out (the next call resumes
where it stopped, without tokenizing the chunk again); read_next_packet reads
ahead READ_AHEAD_BYTES (those packets are consumed, and come first later).
Packets are collected as bytes with (index, sequence) runs and (index, loss)
marks, and turned into ReadPackets at the end of a call, all at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import repeat
from typing import NamedTuple

from shm.buffer_records import (
    CHUNK_INCOMPLETE,
    JOIN_DATA_LOSS,
    JOIN_NOT_ENOUGH,
    JOIN_SUCCESS,
    LOSS_CORRUPTED,
    LOSS_PRESENT,
    MAX_CHUNK_ID,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    Piece,
    RecordRing,
    SequenceState,
    Tokens,
    outer_size,
    whole_range,
)
from shm.packets import MALFORMED, fragment_at, slice_fragments_untrusted

READ_AHEAD_BYTES = 64 * 1024  # what read_next_packet reads at a time


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


class InnerWalk(NamedTuple):
    """Where the outer walk left a sequence whose inner walk ran out of budget."""

    seq: SequenceState
    target: int  # the record the outer walk reached: read the sequence up to it
    next_rd: int  # where the outer walk goes on after it


class KeptTokens(NamedTuple):
    """A head chunk tokenized by a call that ran out of budget in it."""

    offset: int  # of the record
    pos: int  # payload offset the pieces start at
    tokens: Tokens


_new_tuple = tuple.__new__

# Outcomes of reading a head chunk.
_DONE, _BUDGET, _STALL = range(3)


def _make_packets(datas: list[bytes], *columns: list[int]) -> list[ReadPacket]:
    """ReadPackets from columns of field values, all at once."""
    rows = zip(datas, *columns, strict=True)
    return list(map(_new_tuple, repeat(ReadPacket, len(datas)), rows))


class BufferReader:
    """Reads one RecordRing's sequences back, destructively."""

    def __init__(self, ring: RecordRing) -> None:
        self._ring = ring
        self._generation = self._rd = self._budget = 0
        self._reading = self._wrapped = False
        self._interrupted = False  # a copy ended the generation before its walk did
        self._inner: InnerWalk | None = None
        self._kept: KeptTokens | None = None
        # What a call collects: packet bytes, their (first index, sequence) runs and
        # (index, loss) marks; then what read_next_packet read ahead.
        self._batch: list[bytes] = []
        self._owners: list[tuple[int, SequenceState]] = []
        self._batch_owner: SequenceState | None = None
        self._marks: list[tuple[int, int]] = []
        self._ready: deque[ReadPacket] = deque()
        self._next_ready = self._ready.popleft

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def interrupted(self) -> bool:
        """True when a copy ended this generation before everything readable was read."""
        return self._interrupted

    def end_generation(self) -> None:
        """Records are about to move (a copy): nothing more is read until begin_read."""
        self._interrupted |= self._reading
        self._reading, self._kept = False, None

    def forget_tokens(self) -> None:
        """A record's bytes are about to change (a patch): tokenize again."""
        self._kept = None

    def begin_read(self) -> None:
        """Start a read generation at the oldest data; stalls of the last one end."""
        ring = self._ring
        self._generation += 1
        self._rd = 0 if ring.wr == ring.used else ring.wr
        self._wrapped = False
        self._inner = None
        self._kept = None
        self._reading = True
        self._interrupted = False

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
            self._emit_batch(out)
        return out

    def read_next_packet(self) -> ReadPacket | None:
        """The next packet, or None when nothing more is readable in this
        generation (see TraceBuffer.read_next_packet)."""
        try:
            return self._next_ready()
        except IndexError:
            self._ready.extend(self.read_packets(READ_AHEAD_BYTES))
            return self._next_ready() if self._ready else None

    # -- the walks -----------------------------------------------------------------------

    def _walk(self) -> None:
        """The outer walk, in buffer order from rd, until the budget is spent
        (the next call resumes there) or wr is reached."""
        ring = self._ring
        buf, seqs = ring.buf, ring.seqs
        used, wr = ring.used, ring.wr  # reading never moves them
        while True:
            if self._inner is None:
                rd = self._rd
                _, key, size, _, _, _ = RECORD_HEADER.unpack_from(buf, rd)
                next_rd = rd + outer_size(size)
                seq = seqs.get(key) if key else None
                if seq is not None and seq.chunks and self._read_sequence(seq, rd):
                    self._inner = _new_tuple(InnerWalk, (seq, rd, next_rd))
                    return
            else:
                seq, target, next_rd = self._inner
                if self._read_sequence(seq, target):
                    return
                self._inner = None
            wrap = next_rd >= used
            if next_rd == wr or (wrap and (wr == 0 or self._wrapped)):
                self._reading = False
                return
            self._wrapped |= wrap
            self._rd = 0 if wrap else next_rd

    def _read_sequence(self, seq: SequenceState, target: int) -> bool:
        """The inner walk: the sequence's chunks in id order, up to record
        `target`. True if it stopped because the budget is spent."""
        if seq.stalled_in == self._generation:
            return False
        chunks = seq.chunks
        while chunks:
            head = chunks[0]
            outcome = self._read_head(seq, head)
            if outcome != _DONE:
                return outcome == _BUDGET
            if head == target:
                break
        return False

    def _read_head(self, seq: SequenceState, off: int) -> int:
        """Read packets from the head chunk into the batch: _BUDGET (stopped
        after a packet), _STALL (the sequence waits) or _DONE (it is erased)."""
        ring = self._ring
        rec = RECORD_HEADER.unpack_from(ring.buf, off)  # a ChunkRecord's fields
        cid, _, _, payload, unread, flags = rec
        last = seq.last
        if last is not None and cid != (last.chunk_id + 1) & MAX_CHUNK_ID:
            ring.check_gap(seq, cid)  # the usual next chunk needs no more checks
        pos = payload - unread
        kept = self._kept  # a call that ran out of budget in this chunk kept its tokens
        if kept is not None and kept.offset == off and kept.pos == pos:
            pieces, stop, last_hdr, status = kept.tokens
        else:  # as RecordRing.slice_record, without a call: this is once per chunk
            start = off + RECORD_HEADER_SIZE
            pieces, stop, last_hdr, status = slice_fragments_untrusted(
                bytes(ring.mv[start : start + payload]), pos
            )
        n = len(pieces)
        first, begin = whole_range(seq, n, status, pos, flags)
        done = self._take_whole(seq, pieces, first, begin)
        stalled = False
        if begin < n and self._budget > 0:  # then every whole fragment was taken
            stalled = self._join_split_packet(seq, cid, flags, pieces[begin]) == JOIN_NOT_ENOUGH
            done = begin if stalled else n
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
                to = fragment_at(ring.buf, to, start + payload)[2]
            to -= start
        if self._budget > 0 and not stalled and not flags & CHUNK_INCOMPLETE:
            ring.erase_read_head(seq, off, to, rec)
            return _DONE
        ring.consume_read(off, to, rec)
        if self._budget <= 0:  # the next call resumes here, without tokenizing again
            self._kept = KeptTokens(off, to, Tokens(pieces[done:], stop, last_hdr, status))
            return _BUDGET
        seq.stalled_in = self._generation  # a piece is missing; or never past a scrape
        return _STALL

    def _join_split_packet(self, seq: SequenceState, cid: int, flags: int, piece: bytes) -> int:
        """Join the head chunk's begin fragment `piece` with the first fragment
        of each following chunk, which are consumed unless the sequence stalls
        (the caller consumes the head's). Returns the JOIN_* outcome."""
        ring, stats = self._ring, self._ring.stats
        pieces: list[Piece] = []
        result, reason = ring.join_pieces(seq, cid, flags, pieces)
        if result != JOIN_NOT_ENOUGH:
            for offset, end, _, record in pieces:
                ring.consume_read(offset, end, record)
        if result == JOIN_SUCCESS:
            stats.readaheads_succeeded += 1
            data = piece + b"".join([data for _, _, data, _ in pieces])
            if data:  # all-empty pieces make no packet, as an empty fragment makes none
                if seq is self._batch_owner and not seq.loss:
                    self._batch.append(data)  # the common case, without a call
                else:
                    self._add_packets(seq, (data,))
                self._budget -= len(data)
            return result
        stats.readaheads_failed += 1
        if result == JOIN_DATA_LOSS:
            seq.loss |= LOSS_PRESENT | reason
        return result

    # -- collecting packets --------------------------------------------------------------

    def _take_whole(self, seq: SequenceState, pieces: list[bytes], first: int, last: int) -> int:
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

    def _add_packets(self, seq: SequenceState, datas: Iterable[bytes]) -> None:
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

    def _emit_batch(self, out: list[ReadPacket]) -> None:
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
