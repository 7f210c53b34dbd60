"""A deliberately simple service stand-in for producer-side tests.

It trusts the SMB (only our own writer writes there), moves committed chunks
out exactly as the service will (COMPLETE -> BEING_READ -> FREE), applies
patches, and reassembles each writer's packets in commit order. It shares no
code with shm/trace_buffer.py, so writer tests do not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shm.abi import (
    CHUNK_HEADER,
    CHUNK_HEADER_SIZE,
    FIRST_PACKET_CONTINUES,
    LAST_PACKET_CONTINUES,
    NEEDS_PATCHING,
    SharedMemoryABI,
    unpack_packets,
)
from shm.commits import CommitBatch
from shm.packets import OK, WRITER_DROPPED, parse_fragments_untrusted


@dataclass
class OracleChunk:
    writer_id: int
    chunk_id: int
    count: int
    flags: int
    payload: bytearray
    target_buffer: int


@dataclass
class Oracle:
    abi: SharedMemoryABI
    chunks: list[OracleChunk] = field(default_factory=list)
    flush_ids: list[int] = field(default_factory=list)
    batches: int = 0

    def on_commit(self, batch: CommitBatch) -> None:
        self.batches += 1
        for move in batch.chunks_to_move:
            ref = self.abi.try_acquire_for_reading(move.page, move.chunk)
            assert ref is not None, f"committed chunk {move} is not COMPLETE"
            chunk_id, writer_id, packets = CHUNK_HEADER.unpack_from(self.abi.buf, ref.offset)
            count, flags = unpack_packets(packets)
            start = ref.offset + CHUNK_HEADER_SIZE
            payload = bytearray(self.abi.buf[start : ref.offset + ref.size])
            assert self.abi.release_as_free(ref)
            self.chunks.append(
                OracleChunk(writer_id, chunk_id, count, flags, payload, move.target_buffer)
            )
        for entry in batch.chunks_to_patch:
            chunk = self._find(entry.writer_id, entry.chunk_id)
            for offset, data in entry.patches:
                chunk.payload[offset : offset + 4] = data
            if not entry.has_more_patches:
                chunk.flags &= ~NEEDS_PATCHING
        if batch.flush_request_id:
            self.flush_ids.append(batch.flush_request_id)

    def _find(self, writer_id: int, chunk_id: int) -> OracleChunk:
        for chunk in reversed(self.chunks):
            if chunk.writer_id == writer_id and chunk.chunk_id == chunk_id:
                return chunk
        raise AssertionError(f"patch for unknown chunk {writer_id}/{chunk_id}")

    def packets(self, writer_id: int) -> tuple[list[bytes], int]:
        """(packets in order, number of packets the writer abandoned)."""
        out: list[bytes] = []
        aborted = 0
        pending: bytearray | None = None
        expected_id = None
        for chunk in (c for c in self.chunks if c.writer_id == writer_id):
            if expected_id is not None:
                assert chunk.chunk_id == expected_id, "chunk ids must be consecutive"
            expected_id = (chunk.chunk_id + 1) & 0xFFFFFFFF
            assert not chunk.flags & NEEDS_PATCHING, "a chunk was never patched"
            bounds, status = parse_fragments_untrusted(
                chunk.payload, 0, len(chunk.payload), chunk.count
            )
            frags = [
                bytes(chunk.payload[bounds[i] : bounds[i + 1]]) for i in range(0, len(bounds), 2)
            ]
            if status == WRITER_DROPPED:
                aborted += 1
                if pending is not None and len(frags) == 0:
                    pending = None  # the continuation was voided
            else:
                assert status == OK, f"chunk {chunk.chunk_id} is malformed"
            for i, frag in enumerate(frags):
                first, last = i == 0, i == len(frags) - 1
                if first and chunk.flags & FIRST_PACKET_CONTINUES:
                    assert pending is not None, "continuation without a beginning"
                    pending += frag
                    if last and chunk.flags & LAST_PACKET_CONTINUES:
                        continue
                    out.append(bytes(pending))
                    pending = None
                elif last and chunk.flags & LAST_PACKET_CONTINUES:
                    pending = bytearray(frag)
                elif frag:
                    out.append(frag)
            if status == WRITER_DROPPED:
                pending = None
        return out, aborted


def _fragments(chunk: OracleChunk) -> tuple[list[bytes], int]:
    data = chunk.payload
    bounds, status = parse_fragments_untrusted(data, 0, len(data), chunk.count)
    return [bytes(data[bounds[i] : bounds[i + 1]]) for i in range(0, len(bounds), 2)], status
