"""The service's view of one connected producer, and its commit path.

Everything a producer sends is untrusted. A CommitData may name any page,
chunk, buffer, writer or patch: each is checked before use, a bad one costs
that producer its data (counted), never the service or another producer.
The producer can change its shared memory at any time, even while a chunk is
copied: the trace buffer measures a payload where it lies, copies it once, and
parses every record it holds again within its bounds (shm/trace_buffer.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from protos import tracebus_ipc_pb2 as ipc
from shm.abi import (
    BEING_WRITTEN,
    CHUNK_HEADER,
    CHUNK_HEADER_SIZE,
    COMPLETE,
    LAYOUT_CHUNKS,
    MAX_CHUNKS_PER_PAGE,
    MAX_WRITER_ID,
    PAGE_SIZES,
    ChunkRef,
    Geometry,
    SharedMemoryABI,
    chunk_state,
    is_valid_writer_id,
    layout_of,
    unpack_packets,
)
from shm.trace_buffer import TraceBuffer

MAX_PATCHES_PER_CHUNK = 1024
# A relayed commit (chunks inline, ChunkToMove.data): at most this many moves or
# patch entries per request (the rest discarded and counted), each chunk at most
# the largest page.
MAX_INLINE_MOVES = 4096
MAX_INLINE_CHUNK_BYTES = PAGE_SIZES[-1]
PATCH_SIZE = 4
U64_MAX = (1 << 64) - 1  # what a TraceStats counter holds


def saturating_add(total: int, grown: int) -> int:
    """`total + grown`, stopping at U64_MAX: a counter fed by producers' numbers
    stays what a uint64 field of TraceStats can hold, however many report."""
    return min(total + grown, U64_MAX)


class SmbHandle(Protocol):
    """What the shell's SMB factory returns: the mapped buffer and how its
    producer claims it (actors/smb_handoff.py): the handoff socket's path and a
    one-time token bound to that producer's pid and uid. No path to the memory."""

    buf: memoryview
    token: bytes
    socket: str

    def close(self) -> None: ...


# (geometry, producer pid, producer uid) -> the SMB; both ids from the kernel.
SmbFactory = Callable[[Geometry, int, int], SmbHandle]


@dataclass
class ServiceCounters:
    """Service-level TraceStats fields."""

    chunks_discarded: int = 0
    patches_discarded: int = 0
    # Messages answered with an error because no handler takes them (unknown,
    # empty or not supported kinds); not a TraceStats field, logged by the shell.
    messages_not_handled: int = 0
    # Peers the shell gave up on (stopped, or not draining their queue within the
    # peer send timeout), the messages dropped with them, and the messages they
    # sent afterwards (answered "reconnect"); reported in the service state.
    producers_given_up: int = 0
    consumers_given_up: int = 0
    given_up_messages_dropped: int = 0
    given_up_messages_refused: int = 0
    # Requests refused because of a limit, by the limit's name (actors/core/limits.py).
    refusals: dict[str, int] = field(default_factory=dict)


@dataclass
class WriterDrops:
    target_buffer: int
    packets: int = 0
    bytes: int = 0


@dataclass
class ProducerEntry:
    """A connected producer; its data sources, SMB, writers and the buffers it
    may write to. Entries are made and indexed by producer_table.ProducerTable."""

    id: int  # producer id, from the service's pool (never from the producer)
    peer: bytes  # the ROUTER identity of its connection
    name: str
    pid: int  # its process id, from the kernel
    uid: int
    shm_size_hint: int = 0
    shm_page_hint: int = 0
    data_sources: dict[str, ipc.DataSourceDescriptor] = field(default_factory=dict)
    smb: SmbHandle | None = None
    abi: SharedMemoryABI | None = None
    writers: dict[int, int] = field(default_factory=dict)  # writer id -> buffer id
    allowed_buffers: dict[int, int] = field(default_factory=dict)  # buffer id -> instances
    drops: dict[int, WriterDrops] = field(default_factory=dict)  # writer id -> drops
    # A producer behind a relay (actors/core/relays.py): its machine (0: this one),
    # and the SMB geometry the service told its relay (it has no SMB here).
    machine_id: int = 0
    machine_name: str = ""
    remote_geometry: Geometry | None = None

    def register_writer(self, writer_id: int, buffer_id: int) -> None:
        """A writer id (re)registered: a new writer, whose cumulative drop count
        starts at zero (the old writer's drops stay in its buffer's total)."""
        self.writers[writer_id] = buffer_id
        self.drops.pop(writer_id, None)

    def unregister_writer(self, writer_id: int) -> None:
        self.writers.pop(writer_id, None)
        self.drops.pop(writer_id, None)

    def allow(self, buffer_id: int) -> None:
        self.allowed_buffers[buffer_id] = self.allowed_buffers.get(buffer_id, 0) + 1

    def disallow(self, buffer_id: int) -> None:
        left = self.allowed_buffers.get(buffer_id, 0) - 1
        if left > 0:
            self.allowed_buffers[buffer_id] = left
        else:
            self.allowed_buffers.pop(buffer_id, None)

    def release_smb(self) -> None:
        if self.smb is not None:
            self.abi = None
            self.smb.close()
            self.smb = None


class CommitPath:
    """Moves committed chunks from producers' SMBs into the service's buffers.

    Each check on a commit has one owner. This class owns the SMB and the
    request: page and chunk indices and the chunk's state (SharedMemoryABI's
    CAS: only a COMPLETE chunk is moved, and it is freed whatever happens), the
    header read once, the target buffer (a u16 this producer may write to, and
    the one its writer registered: else chunks_discarded; at most as many
    chunks per request as the SMB has); for patches, the request entry (a
    buffer it may write to, a valid writer id, at most MAX_PATCHES_PER_CHUNK
    patches of PATCH_SIZE bytes, as many entries as the SMB has chunks: else
    patches_discarded); writer stats (saturating sums, U64_MAX). The
    TraceBuffer owns the chunk itself: header fields, payload size, fragments,
    chunk-id order, recommits, and whether a patch's chunk and offsets exist
    (see shm/trace_buffer.py). It copies the payload once, from the SMB
    straight into its ring.
    """

    def __init__(self, buffers: dict[int, TraceBuffer], counters: ServiceCounters) -> None:
        self._buffers = buffers
        self._counters = counters

    def commit(self, producer: ProducerEntry, req_untrusted: ipc.CommitDataRequest) -> None:
        abi = producer.abi
        if abi is None:
            return  # no SMB yet: Perfetto ignores the whole request
        # One request names at most as many chunks as the SMB holds: a frame could
        # list hundreds of thousands, each a turn of the service's loop spent.
        chunks = abi.num_pages * MAX_CHUNKS_PER_PAGE
        moves, patches = req_untrusted.chunks_to_move, req_untrusted.chunks_to_patch
        self._counters.chunks_discarded += max(0, len(moves) - chunks)
        self._counters.patches_discarded += max(0, len(patches) - chunks)
        for move in moves[:chunks]:
            self._move(producer, abi, move.page, move.chunk, move.target_buffer)
        for patch in patches[:chunks]:
            self._patch(producer, patch)
        for stats in req_untrusted.writer_stats[:MAX_WRITER_ID]:
            self._writer_stats(producer, stats)

    def commit_inline(self, producer: ProducerEntry, req_untrusted: ipc.CommitDataRequest) -> None:
        """A relayed producer's commit: each move carries its chunk (header and
        payload, as it lay in the relay's SMB); checked as an SMB chunk would be."""
        moves, patches = req_untrusted.chunks_to_move, req_untrusted.chunks_to_patch
        self._counters.chunks_discarded += max(0, len(moves) - MAX_INLINE_MOVES)
        self._counters.patches_discarded += max(0, len(patches) - MAX_INLINE_MOVES)
        for move in moves[:MAX_INLINE_MOVES]:
            self._move_inline(producer, move.data, move.target_buffer)
        for patch in patches[:MAX_INLINE_MOVES]:
            self._patch(producer, patch)
        for stats in req_untrusted.writer_stats[:MAX_WRITER_ID]:
            self._writer_stats(producer, stats)

    def _move_inline(
        self, producer: ProducerEntry, chunk_untrusted: bytes, buffer_untrusted: int
    ) -> None:
        if not CHUNK_HEADER_SIZE <= len(chunk_untrusted) <= MAX_INLINE_CHUNK_BYTES:
            self._counters.chunks_discarded += 1
            return
        chunk_id, writer_id, packets = CHUNK_HEADER.unpack_from(chunk_untrusted, 0)
        buffer = self._authorized_buffer(producer, writer_id, buffer_untrusted)
        if buffer is None:
            self._counters.chunks_discarded += 1
            return
        count, flags = unpack_packets(packets)
        with memoryview(chunk_untrusted) as view:
            buffer.copy_chunk_untrusted(
                producer.id, producer.uid, producer.pid, writer_id, chunk_id, count, flags,
                True, view[CHUNK_HEADER_SIZE:],
            )  # fmt: skip

    def _move(
        self,
        producer: ProducerEntry,
        abi: SharedMemoryABI,
        page_untrusted: int,
        chunk_untrusted: int,
        buffer_untrusted: int,
    ) -> None:
        ref = abi.try_acquire_for_reading(page_untrusted, chunk_untrusted)
        if ref is None:
            return  # not a COMPLETE chunk of this SMB: nothing to free either
        try:
            # Read the header once: the producer may rewrite it while we look.
            header_untrusted = CHUNK_HEADER.unpack_from(abi.buf, ref.offset)
            buffer = self._authorized_buffer(producer, header_untrusted[1], buffer_untrusted)
            if buffer is None:
                self._counters.chunks_discarded += 1
            else:
                self._copy(producer, abi, buffer, ref, header_untrusted, complete=True)
        finally:
            abi.release_as_free(ref)  # freed either way

    def _authorized_buffer(
        self, producer: ProducerEntry, writer_id: int, buffer_untrusted: int
    ) -> TraceBuffer | None:
        if buffer_untrusted > 0xFFFF or buffer_untrusted not in producer.allowed_buffers:
            return None
        registered = producer.writers.get(writer_id)
        if registered is not None and registered != buffer_untrusted:
            return None
        return self._buffers.get(buffer_untrusted)

    def _copy(
        self,
        producer: ProducerEntry,
        abi: SharedMemoryABI,
        buffer: TraceBuffer,
        ref: ChunkRef,
        header_untrusted: tuple[int, int, int],
        complete: bool,
    ) -> None:
        """Hand the chunk to the buffer as a view of the SMB: the buffer copies it once."""
        chunk_id, writer_id, packets = header_untrusted
        count, flags = unpack_packets(packets)
        payload = abi.buf[ref.offset + CHUNK_HEADER_SIZE : ref.offset + ref.size]
        try:
            buffer.copy_chunk_untrusted(
                producer.id, producer.uid, producer.pid, writer_id, chunk_id, count, flags,
                complete, payload,
            )  # fmt: skip
        finally:
            payload.release()

    def _patch(self, producer: ProducerEntry, entry_untrusted: ipc.CommitDataRequest.ChunkToPatch):
        target = entry_untrusted.target_buffer
        writer_id = entry_untrusted.writer_id
        buffer = self._buffers.get(target) if target in producer.allowed_buffers else None
        if (
            buffer is None
            or not is_valid_writer_id(writer_id)
            or len(entry_untrusted.patches) > MAX_PATCHES_PER_CHUNK
        ):
            self._counters.patches_discarded += 1
            return
        patches = [(p.offset, p.data) for p in entry_untrusted.patches if len(p.data) == PATCH_SIZE]
        self._counters.patches_discarded += len(entry_untrusted.patches) - len(patches)
        buffer.try_patch_chunk(
            producer.id,
            writer_id,
            entry_untrusted.chunk_id,
            patches,
            entry_untrusted.has_more_patches,
        )

    def _writer_stats(
        self, producer: ProducerEntry, stats_untrusted: ipc.CommitDataRequest.WriterStats
    ) -> None:
        if not is_valid_writer_id(stats_untrusted.writer_id):
            return
        target = producer.writers.get(stats_untrusted.writer_id, stats_untrusted.target_buffer)
        if target not in producer.allowed_buffers:
            return
        drops = producer.drops.setdefault(stats_untrusted.writer_id, WriterDrops(target))
        # Cumulative counters: a producer may only make its own numbers grow. The
        # wire gives at most U64_MAX each; the buffer's sum over writers saturates.
        grown = max(0, stats_untrusted.dropped_packets - drops.packets)
        drops.packets += grown
        drops.bytes = max(drops.bytes, stats_untrusted.dropped_bytes)
        buffer = self._buffers.get(drops.target_buffer)
        if buffer is not None:  # the buffer's total outlives the producer
            buffer.writer_packets_dropped = saturating_add(buffer.writer_packets_dropped, grown)

    def scrape(self, producer: ProducerEntry, buffer_ids: set[int]) -> int:
        """Copy chunks still in the SMB (complete or being written) of writers
        registered to `buffer_ids`, without changing their state."""
        abi = producer.abi
        if abi is None:
            return 0
        copied = 0
        for page in range(abi.num_pages):
            bitmap = abi.bitmap(page)
            layout = layout_of(bitmap)
            for chunk in range(LAYOUT_CHUNKS[layout]):
                if self._scrape_chunk(producer, abi, page, chunk, bitmap, buffer_ids):
                    copied += 1
        return copied

    def _scrape_chunk(
        self,
        producer: ProducerEntry,
        abi: SharedMemoryABI,
        page: int,
        chunk: int,
        bitmap: int,
        buffer_ids: set[int],
    ) -> bool:
        state = chunk_state(bitmap, chunk)
        if state not in (BEING_WRITTEN, COMPLETE):
            return False
        ref = abi.chunk_ref(page, chunk, layout_of(bitmap))
        if ref is None:
            return False  # not reached: the caller walks the chunks of this layout
        header_untrusted = CHUNK_HEADER.unpack_from(abi.buf, ref.offset)
        if state == BEING_WRITTEN and unpack_packets(header_untrusted[2])[0] < 2:
            return False  # its header may still be being written
        target = producer.writers.get(header_untrusted[1])
        # register_trace_writer names any buffer it likes: scrape only into
        # buffers this producer may write to, as a commit would be checked.
        if target is None or target not in producer.allowed_buffers or target not in buffer_ids:
            return False
        if target not in self._buffers:
            return False
        self._copy(producer, abi, self._buffers[target], ref, header_untrusted, state == COMPLETE)
        return True
