"""The service's side of one producer's SMB, in one process, for data-path tests.

It drives the service's real commit path (`actors.core.producers.CommitPath`)
with the real protocol message (`commit_request`, as the producer core builds
it): moves go COMPLETE -> BEING_READ -> copy -> FREE, patches are applied after
the moves, and scrapes copy whatever is in flight without touching the SMB's
state, as the service does after a flush or when a producer dies. What the
harness adds is only the network's freedom: it may hold batches and deliver
their moves in any order. Our own writer never breaks the ABI, so every move
must name a COMPLETE chunk and nothing may be discarded; the harness asserts it.
"""

from __future__ import annotations

import random

from actors.core.producer_core import commit_request
from actors.core.producers import CommitPath, ProducerEntry, ServiceCounters
from shm.abi import COMPLETE, FREE, SharedMemoryABI, chunk_state
from shm.commits import CommitBatch
from shm.trace_buffer import TraceBuffer

PRODUCER_ID = 1
UID = 1000
PID = 4242
BUFFER_ID = 1


class ServiceHarness:
    """Receives CommitBatches; may hold them and deliver moves out of order."""

    def __init__(self, abi: SharedMemoryABI, buffer: TraceBuffer, rnd: random.Random) -> None:
        self.abi = abi
        self.buffer = buffer
        self.rnd = rnd
        self.hold = False
        self.pending: list[CommitBatch] = []
        self.counters = ServiceCounters()
        self.commit_path = CommitPath({BUFFER_ID: buffer}, self.counters)
        self.producer = ProducerEntry(PRODUCER_ID, b"harness", "harness", PID, UID, abi=abi)
        self.producer.allow(BUFFER_ID)

    def register_writer(self, writer_id: int) -> None:
        """As RegisterTraceWriter: scrapes only copy chunks of registered writers."""
        self.producer.writers[writer_id] = BUFFER_ID

    def on_commit(self, batch: CommitBatch) -> None:
        self.pending.append(batch)
        if not self.hold:
            self.deliver()

    def deliver(self, shuffle: bool = False) -> None:
        """Move every pending chunk (in a random order if asked), then patch."""
        batches, self.pending = self.pending, []
        merged = CommitBatch()
        for batch in batches:
            merged.chunks_to_move += batch.chunks_to_move
            merged.chunks_to_patch += batch.chunks_to_patch
        if shuffle:
            self.rnd.shuffle(merged.chunks_to_move)
        for move in merged.chunks_to_move:
            assert self._state(move.page, move.chunk) == COMPLETE, "a committed chunk"
        self.commit_path.commit(self.producer, commit_request([merged]))
        for move in merged.chunks_to_move:
            assert self._state(move.page, move.chunk) == FREE, "moved and freed"
        assert self.counters == ServiceCounters(), "nothing of ours is discarded"

    def _state(self, page: int, chunk: int) -> int:
        return chunk_state(self.abi.bitmap(page), chunk)

    def scrape(self) -> int:
        """Copy every chunk being written or complete-but-uncommitted; returns how many."""
        return self.commit_path.scrape(self.producer, {BUFFER_ID})
