"""What a producer tells the service it committed: a CommitDataRequest in the
making, as plain values (the shell turns it into the protocol message)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class ChunkToMove(NamedTuple):
    page: int
    chunk: int
    target_buffer: int


@dataclass(slots=True)
class ChunkToPatch:
    target_buffer: int
    writer_id: int
    chunk_id: int
    patches: list[tuple[int, bytes]]  # (offset from the payload start, 4 bytes)
    has_more_patches: bool


@dataclass(slots=True)
class CommitBatch:
    """A CommitDataRequest in the making: what the shell sends to the service."""

    chunks_to_move: list[ChunkToMove] = field(default_factory=list)
    chunks_to_patch: list[ChunkToPatch] = field(default_factory=list)
    flush_request_id: int = 0
    # (writer id, ticket): writers whose flush() ended with this batch; their
    # chunks are in it or in an earlier one (shm/writer.py, request_flush).
    writers_flushed: list[tuple[int, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.chunks_to_move
            or self.chunks_to_patch
            or self.flush_request_id
            or self.writers_flushed
        )
