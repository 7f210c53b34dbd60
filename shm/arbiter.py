"""The producer's side of one SMB: the arbiter that hands chunks to TraceWriters.

A `SharedMemoryArbiter` owns one SMB on the producer side. It hands free
chunks to TraceWriters (round-robin page scan, partitioning free pages, CAS
acquire; thread-safe), collects the chunks they return and the patches they
fill into one pending `CommitBatch`, and passes that batch to `on_commit`, a
callback the shell connects to its socket. It never sends anything itself and
never reads a clock: the shell passes in `sleep` for the stall policy.

A batch is handed over when the chunks in it reach `commit_threshold` bytes
(half the SMB, as Perfetto does), whenever a writer stalls, and whenever the
shell calls `commit()` (its batching timer, or a flush). A writer's flush
goes through `commit_flush`, which adds the writer to the batch's
`writers_flushed` so the shell knows which flush requests are served.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from shm._atomics import store32
from shm.abi import (
    BEING_WRITTEN,
    CHUNK_HEADER,
    CHUNK_PACKETS_WORD,
    LAYOUT_CHUNKS,
    MAX_WRITER_ID,
    ChunkRef,
    SharedMemoryABI,
    chunk_state,
    layout_of,
)
from shm.commits import ChunkToMove, ChunkToPatch, CommitBatch
from shm.ids import IdPool
from shm.writer import BufferExhaustedPolicy, TraceWriter, TraceWriterMethods

_new_tuple = tuple.__new__


class SharedMemoryArbiter:
    """Producer-side owner of one SMB: chunk allocation and commit batching."""

    def __init__(
        self,
        abi: SharedMemoryABI,
        on_commit: Callable[[CommitBatch], None],
        *,
        sleep: Callable[[float], None],
        layout: int = 1,
        commit_threshold: int | None = None,
    ) -> None:
        if not 1 <= layout <= 5:
            raise ValueError(f"page layout must be 1..5, got {layout}")
        self.abi = abi
        self.sleep = sleep
        self._on_commit = on_commit
        self._layout = layout
        self._threshold = commit_threshold or abi.geometry.size // 2
        self._lock = threading.Lock()  # pages, writer ids, the pending batch
        self._deliver_lock = threading.Lock()  # keeps batches in order
        self._pending = CommitBatch()
        self._pending_bytes = 0
        self._next_page = 0
        self._writer_ids = IdPool(MAX_WRITER_ID)

    # -- writers ------------------------------------------------------------------

    def create_trace_writer(
        self,
        target_buffer: int,
        policy: BufferExhaustedPolicy = BufferExhaustedPolicy.DROP,
        writer_type: type[TraceWriterMethods] = TraceWriter,
    ) -> TraceWriter:
        """A writer with a fresh id; `writer_type` PyTraceWriter gives the pure twin."""
        return writer_type(self, self._allocate_writer_id(), target_buffer, policy)  # type: ignore[return-value]

    def _allocate_writer_id(self) -> int:
        with self._lock:
            writer_id = self._writer_ids.allocate()
        if writer_id is None:
            raise RuntimeError(f"all {MAX_WRITER_ID} writer ids are in use")
        return writer_id

    def release_writer_id(self, writer_id: int) -> None:
        with self._lock:
            self._writer_ids.release(writer_id)

    # -- chunks -------------------------------------------------------------------

    def acquire_chunk(self, writer_id: int, chunk_id: int) -> ChunkRef | None:
        """A free chunk, now BEING_WRITTEN with a fresh header; None if none is free."""
        with self._lock:
            return self._acquire_locked(writer_id, chunk_id)

    def _acquire_locked(self, writer_id: int, chunk_id: int) -> ChunkRef | None:
        n = self.abi.num_pages
        start = self._next_page
        # The usual case first, in one call: the next page is free (a CAS that
        # fails on a partitioned page changes nothing; the scan sees it again).
        ref = self.abi.try_acquire_free_page(start, self._layout, writer_id, chunk_id)
        if ref is not None:
            self._next_page = start + 1 if start + 1 < n else 0
            return ref
        for i in range(n):
            page = start + i
            if page >= n:
                page -= n
            ref = self._acquire_in_page(page, writer_id, chunk_id)
            if ref is not None:
                self._next_page = page + 1 if page + 1 < n else 0
                return ref
        return None

    def _acquire_in_page(self, page: int, writer_id: int, chunk_id: int) -> ChunkRef | None:
        abi = self.abi
        bitmap = abi.bitmap(page)
        if bitmap == 0:
            ref = abi.try_acquire_free_page(page, self._layout, writer_id, chunk_id)
            if ref is not None:
                return ref
            bitmap = abi.bitmap(page)
        for chunk in range(LAYOUT_CHUNKS[layout_of(bitmap)]):
            if (bitmap >> (chunk * 2)) & 3 == 0:
                ref = abi.try_acquire_for_writing(page, chunk, writer_id, chunk_id)
                if ref is not None:
                    return ref
        return None

    def return_chunk(self, ref: ChunkRef, target_buffer: int) -> bool:
        """A writer is done with `ref`: mark it COMPLETE and queue it for the service.
        False if `ref` was no longer BEING_WRITTEN: someone else wrote the bitmap
        (the SMB is the producer's own memory, any of its code may scribble on
        it), so the chunk is lost and its writer counts it (never an exception
        on the app thread)."""
        if not self.abi.release_as_complete(ref):
            return False
        move = _new_tuple(ChunkToMove, (ref.page, ref.chunk, target_buffer))  # no __new__ call
        with self._lock:
            self._pending.chunks_to_move.append(move)
            self._pending_bytes += ref.size
            full = self._pending_bytes >= self._threshold
        if full:
            self.commit()
        return True

    def turn_over(
        self, ref: ChunkRef, packets_word: int, target_buffer: int, writer_id: int, chunk_id: int
    ) -> ChunkRef | None:
        """A packet continues past `ref`: a fresh chunk for (writer_id, chunk_id)
        first, as Perfetto does; only then `ref` gets its final packets word
        (released after the payload) and goes back as return_chunk would. None,
        with nothing changed, if no chunk is free or `ref` is no longer
        BEING_WRITTEN (lost, see return_chunk): the writer's general path then
        finds out which. One lock for both: this is the per-chunk cost of a
        large packet."""
        page, chunk, offset, size = ref
        abi = self.abi
        with self._lock:
            new = self._acquire_locked(writer_id, chunk_id)
            if new is None:
                return None
            store32(abi.buf, offset + CHUNK_PACKETS_WORD, packets_word)
            if not abi.release_as_complete(ref):
                abi.release_unused(new)  # ref was lost: the new chunk goes back unused
                return None
            move = _new_tuple(ChunkToMove, (page, chunk, target_buffer))
            self._pending.chunks_to_move.append(move)
            self._pending_bytes += size
            full = self._pending_bytes >= self._threshold
        if full:
            self.commit()
        return new

    def reclaim_chunk(
        self, ref: ChunkRef, writer_id: int, chunk_id: int, target_buffer: int
    ) -> bool:
        """A writer gave `ref` up mid-change (TraceWriter.abandon), so it may or may
        not have been returned already: return it now only if it is still this
        writer's (BEING_WRITTEN with its writer and chunk id: under the lock,
        which acquire_chunk holds while it writes a fresh header, and the writer
        id is not reused before this). Its packets are validated by the service
        like any others. True if it went back."""
        with self._lock:
            if chunk_state(self.abi.bitmap(ref.page), ref.chunk) != BEING_WRITTEN:
                return False
            header_chunk_id, header_writer_id, _ = CHUNK_HEADER.unpack_from(
                self.abi.buf, ref.offset
            )
            if (header_writer_id, header_chunk_id) != (writer_id, chunk_id):
                return False
        return self.return_chunk(ref, target_buffer)

    def give_back_unused(self, ref: ChunkRef) -> None:
        """A chunk a writer took but will not use (the one it was to follow was
        lost): FREE again, under the lock that acquire_chunk holds."""
        with self._lock:
            self.abi.release_unused(ref)

    def add_patches(self, patches: list[ChunkToPatch]) -> None:
        with self._lock:
            self._pending.chunks_to_patch.extend(patches)

    # -- commits ------------------------------------------------------------------

    def commit_flush(self, writer_id: int, ticket: int) -> None:
        """A writer flushed (serving flush request `ticket`): commit, saying so."""
        with self._lock:
            self._pending.writers_flushed.append((writer_id, ticket))
        self.commit()

    def commit(self) -> None:
        """Hand the pending batch (if any) to on_commit, in order across threads."""
        with self._deliver_lock:
            with self._lock:
                batch, self._pending = self._pending, CommitBatch()
                self._pending_bytes = 0
            if batch:
                self._on_commit(batch)
