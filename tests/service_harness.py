"""The service's side of one producer's SMB, in one process, for data-path tests:
commits move chunks into a TraceBuffer (COMPLETE -> BEING_READ -> copy -> FREE),
patches are applied after the moves, and scrapes copy whatever is in flight
without touching the SMB's state, as the service does after a flush or when a
producer dies.
"""

from __future__ import annotations

import random

from shm.abi import (
    BEING_WRITTEN,
    CHUNK_HEADER,
    CHUNK_HEADER_SIZE,
    COMPLETE,
    LAYOUT_CHUNKS,
    SharedMemoryABI,
    chunk_state,
    layout_of,
    unpack_packets,
)
from shm.commits import CommitBatch
from shm.trace_buffer import TraceBuffer

PRODUCER_ID = 1
UID = 1000
PID = 4242


class ServiceHarness:
    """Receives CommitBatches; may hold them and deliver moves out of order."""

    def __init__(self, abi: SharedMemoryABI, buffer: TraceBuffer, rnd: random.Random) -> None:
        self.abi = abi
        self.buffer = buffer
        self.rnd = rnd
        self.hold = False
        self.pending: list[CommitBatch] = []
        self.flush_ids: list[int] = []

    def on_commit(self, batch: CommitBatch) -> None:
        self.pending.append(batch)
        if not self.hold:
            self.deliver()

    def deliver(self, shuffle: bool = False) -> None:
        """Move every pending chunk (in a random order if asked), then patch."""
        batches, self.pending = self.pending, []
        moves = [m for b in batches for m in b.chunks_to_move]
        if shuffle:
            self.rnd.shuffle(moves)
        for move in moves:
            self._move(move.page, move.chunk)
        for batch in batches:
            for p in batch.chunks_to_patch:
                self.buffer.try_patch_chunk(
                    PRODUCER_ID, p.writer_id, p.chunk_id, p.patches, p.has_more_patches
                )
            if batch.flush_request_id:
                self.flush_ids.append(batch.flush_request_id)

    def _move(self, page: int, chunk: int) -> None:
        ref = self.abi.try_acquire_for_reading(page, chunk)
        assert ref is not None, "a committed chunk must be COMPLETE"
        self._copy(ref.offset, ref.size, complete=True)
        assert self.abi.release_as_free(ref)

    def _copy(self, offset: int, size: int, complete: bool) -> None:
        chunk_id, writer_id, packets = CHUNK_HEADER.unpack_from(self.abi.buf, offset)
        count, flags = unpack_packets(packets)
        payload = self.abi.buf[offset + CHUNK_HEADER_SIZE : offset + size]
        self.buffer.copy_chunk_untrusted(
            PRODUCER_ID, UID, PID, writer_id, chunk_id, count, flags, complete, payload
        )
        payload.release()

    def scrape(self) -> int:
        """Copy every chunk being written or complete-but-uncommitted; returns how many."""
        copied = 0
        for page in range(self.abi.num_pages):
            bitmap = self.abi.bitmap(page)
            for chunk in range(LAYOUT_CHUNKS[layout_of(bitmap)]):
                state = chunk_state(bitmap, chunk)
                if state not in (BEING_WRITTEN, COMPLETE):
                    continue
                ref = self.abi.chunk_ref(page, chunk, layout_of(bitmap))
                count, _ = unpack_packets(CHUNK_HEADER.unpack_from(self.abi.buf, ref.offset)[2])
                if state == BEING_WRITTEN and count < 2:
                    continue  # its header may still be being written
                self._copy(ref.offset, ref.size, complete=state == COMPLETE)
                copied += 1
        return copied
