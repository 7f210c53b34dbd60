"""Chunks out of a relay's SMB, into the commits it sends up (pure).

There is no shared memory across machines: the relay copies each chunk a local
producer commits (its header and payload, as it lies in the SMB) into
ChunkToMove.data and frees it in the SMB at once, so the producer can reuse it
while the copy travels. A producer names its chunks (page, chunk): untrusted,
so a chunk is taken only through the ABI's COMPLETE -> BEING_READ transition,
which checks the indices, the layout and the state; anything else is counted
as invalid and left alone. A chunk goes up only to a buffer the service set the
producer up for (`Targets`), and only to the one its writer registered, if it
registered one: any other is freed there and counted as invalid, never sent nor
counted as lost (a producer cannot make the relay count without bound, or
charge its losses to another session's buffers).

A commit goes up in pieces: each under PIECE_BYTES and at most
MAX_MOVES_PER_PIECE moves and patches (what the service takes in one relayed
commit); patches, writer stats and the flush ack ride in the last piece, after
every chunk they refer to.

    producer commit {moves: (page, chunk, buffer)..., patches, stats, flush id}
        -> piece 1 {moves with data}  piece 2 {...}  ...  last {..., patches, stats, flush id}
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from actors.core.relay_upstream import Loss
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import CHUNK_HEADER, COMPLETE, LAYOUT_CHUNKS, SharedMemoryABI, chunk_state, layout_of

# 256 KiB, well under the frame cap: ZeroMQ's own pipe (actors/relay.py UPSTREAM_HWM
# messages) then holds 2 MiB at most beside the relay's accounted queue, so what
# the relay sends now (a heartbeat) waits behind little on a slow link.
PIECE_BYTES = min(256 << 10, framing.MAX_RELAY_FRAME_BYTES - (64 << 10))
MOVE_OVERHEAD = 24  # a ChunkToMove's fields and tags around its data, at most
MAX_MOVES_PER_PIECE = 4096  # the service takes at most this many moves (and patches) per commit


@dataclass(frozen=True)
class Targets:
    """Where a producer's chunks may go: the target buffers of the instances the
    service set up for it, and its writers' registered buffers."""

    buffers: Collection[int]
    writers: Mapping[int, int]  # writer id -> the target buffer it registered

    def allow(self, chunk: bytes, buffer_untrusted: int) -> bool:
        """Whether `chunk` (its header read from our copy) may go to the buffer."""
        if buffer_untrusted not in self.buffers:
            return False
        if not self.writers:
            return True
        _chunk_id, writer_untrusted, _packets = CHUNK_HEADER.unpack_from(chunk)
        registered = self.writers.get(writer_untrusted)
        return registered is None or registered == buffer_untrusted


@dataclass
class Piece:
    request: ipc.CommitDataRequest = field(default_factory=ipc.CommitDataRequest)
    carried: Loss = field(default_factory=Loss)  # its chunks, lost if it is never sent
    invalid: int = 0  # moves that named no COMPLETE chunk
    budget: int = field(default_factory=lambda: PIECE_BYTES)  # bytes left

    def has_room(self, size: int, moves: bool) -> bool:
        request = self.request
        if not (request.chunks_to_move or request.chunks_to_patch):
            return True  # one entry always fits an empty piece
        entries = request.chunks_to_move if moves else request.chunks_to_patch
        return len(entries) < MAX_MOVES_PER_PIECE and size <= self.budget


def take_chunk(abi: SharedMemoryABI | None, page: int, chunk: int) -> bytes | None:
    """The chunk's bytes (header and payload), freed in the SMB; None if it is not
    a COMPLETE chunk there (or there is no SMB)."""
    ref = abi.try_acquire_for_reading(page, chunk) if abi is not None else None
    if abi is None or ref is None:
        return None
    data = bytes(abi.buf[ref.offset : ref.offset + ref.size])
    abi.release_as_free(ref)
    return data


def commit_pieces(
    abi: SharedMemoryABI | None, req_untrusted: ipc.CommitDataRequest, targets: Targets
) -> list[Piece]:
    """The commit as pieces to send, its chunks taken out of the SMB."""
    pieces = [Piece()]
    for move_untrusted in req_untrusted.chunks_to_move:
        data = take_chunk(abi, move_untrusted.page, move_untrusted.chunk)
        if data is None or not targets.allow(data, move_untrusted.target_buffer):
            pieces[-1].invalid += 1
            continue
        size = len(data) + MOVE_OVERHEAD
        if not pieces[-1].has_room(size, moves=True):
            pieces.append(Piece())
        piece = pieces[-1]
        piece.request.chunks_to_move.add(target_buffer=move_untrusted.target_buffer, data=data)
        piece.carried.add(move_untrusted.target_buffer, 1, len(data))
        piece.budget -= size
    for patch_untrusted in req_untrusted.chunks_to_patch:
        size = patch_untrusted.ByteSize() + MOVE_OVERHEAD
        if not pieces[-1].has_room(size, moves=False):
            pieces.append(Piece())
        pieces[-1].request.chunks_to_patch.append(patch_untrusted)
        pieces[-1].budget -= size
    last = pieces[-1].request
    last.writer_stats.extend(req_untrusted.writer_stats)
    last.flush_request_id = req_untrusted.flush_request_id
    return pieces


def free_commit(
    abi: SharedMemoryABI | None, req_untrusted: ipc.CommitDataRequest, targets: Targets
) -> tuple[Loss, int]:
    """No link: the commit's chunks freed in the SMB; (what they were, invalid moves)."""
    lost, invalid = Loss(), 0
    for move_untrusted in req_untrusted.chunks_to_move:
        data = take_chunk(abi, move_untrusted.page, move_untrusted.chunk)
        if data is None or not targets.allow(data, move_untrusted.target_buffer):
            invalid += 1
        else:
            lost.add(move_untrusted.target_buffer, 1, len(data))
    return lost, invalid


def leftovers(abi: SharedMemoryABI | None, writers: dict[int, int]) -> ipc.CommitDataRequest:
    """A commit of the COMPLETE chunks left in a gone producer's SMB whose writer
    it registered (writer id -> target buffer), as the service scrapes a local
    producer's. A chunk still being written is left out: it would go up as
    complete with a torn last fragment; its writer's sequence shows the gap."""
    req = ipc.CommitDataRequest()
    if abi is None:
        return req
    for page in range(abi.num_pages):
        bitmap = abi.bitmap(page)
        layout = layout_of(bitmap)
        for chunk in range(LAYOUT_CHUNKS[layout]):
            ref = abi.chunk_ref(page, chunk, layout)
            if ref is None or chunk_state(bitmap, chunk) != COMPLETE:
                continue
            _chunk_id, writer_untrusted, _packets = CHUNK_HEADER.unpack_from(abi.buf, ref.offset)
            target = writers.get(writer_untrusted)
            if target is not None:
                req.chunks_to_move.add(page=page, chunk=chunk, target_buffer=target)
    return req
