"""TraceWriters: how a producer thread writes packets into the SMB (the
chunks come from a SharedMemoryArbiter, shm/arbiter.py).

A `TraceWriter` belongs to one thread and one target buffer. Every packet is a
fragment in a chunk: a 4-byte reserved length, backfilled as a redundant
varint, then the bytes (a short packet that fits may use a 1-byte length).
The packet count in the chunk header is *inflated*: as soon as a packet is
complete and room is left, the count already includes the next slot, so a
service scraping an incomplete chunk (which ignores its last fragment) keeps
every finished packet. A chunk returned while inflated gets one 0x00 byte, an
empty fragment, so the count stays true. At most 1022 packets per chunk; a
packet starts in a new chunk when fewer than 12 bytes are free.

A packet that does not fit is split: the chunk is returned with
LAST_PACKET_CONTINUES, the next chunk (chunk id + 1) starts with
FIRST_PACKET_CONTINUES. Size fields of nested messages that stay behind in a
returned chunk become patches (chunk id, payload offset, 4 bytes), sent with
the next commit; the chunk is flagged NEEDS_PATCHING until then.

When no chunk is free the writer follows its BufferExhaustedPolicy:
DROP writes into a private scratch chunk until a chunk can be had again (the
abandoned fragment's length becomes PACKET_DROPPED_SIZE, the next packet that
lands carries previous_packet_dropped); STALL retries with a bounded backoff
and raises SMBExhaustedError when it runs out; STALL_THEN_DROP drops instead.
Each writer counts what it dropped (`dropped_packets`, `dropped_bytes`).

Incremental state (interned data, track descriptors) lives in whoever writes
the sequence (actors/track_event.py); the writer only keeps the flag that says
it must be emitted again: `incremental_state_invalid` is true on a new writer,
set again whenever a gap is marked (an importer drops a sequence's state at
previous_packet_dropped) and by the SDK when the service asks for a clear; the
owner of the state clears it when it re-emits. Setting it is off the
per-packet path.

write_packet's fast path (a whole packet appended to the current chunk) is
`WriterCore.write_packet`: compiled in shm/_writer.c when it was built, else
its pure-Python twin in shm/writer_core.py (`PyTraceWriter` always uses the
twin); so is `_write_chunks`, write()'s loop for the bytes of a large packet
that run past the current chunk (each turn-over one arbiter.turn_over call,
the steps of `_turn_over`); the rest (`_write_packet_slow` and everything
else) is Python here.

Flushes asked from another thread: a writer belongs to one thread, so another
thread cannot return its chunk. `request_flush()` (any thread) hands out a
ticket and forces the next write onto the slow path (`_fast_limit = -1`), which
calls `flush()` first; `flush()` serves every ticket handed out before it
started and tells the arbiter (`commit_flush(writer_id, ticket)`), whose batch
carries that news behind the writer's chunks. The fast path pays nothing for
it. A thread that never writes again never serves its ticket: its owner waits
a bounded time, and the service scrapes the chunk the writer still holds.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from shm import native
from shm._atomics import store32
from shm.abi import (
    CHUNK_HEADER_SIZE,
    CHUNK_PACKETS_WORD,
    FIRST_PACKET_CONTINUES,
    FLAGS_SHIFT,
    LAST_PACKET_CONTINUES,
    MAX_PACKETS_PER_CHUNK,
    NEEDS_PATCHING,
    PACKET_DROPPED_SIZE,
    ChunkRef,
    SharedMemoryABI,
)
from shm.commits import ChunkToPatch
from shm.packets import encode_size4, write_size4
from shm.protozero import Message
from shm.writer_core import WriterCore as PyWriterCore

_compiled = native.compiled("shm._writer")
if TYPE_CHECKING:
    _MethodsBase = PyWriterCore  # the attributes the methods share with the core
    _Core = PyWriterCore
else:
    _MethodsBase = object
    _Core = PyWriterCore if _compiled is None else _compiled.WriterCore


class ChunkSource(Protocol):
    """What a TraceWriter needs of its arbiter (shm/arbiter.py's SharedMemoryArbiter):
    the writer is created by the arbiter and must not import it back."""

    abi: SharedMemoryABI
    sleep: Callable[[float], None]

    def acquire_chunk(self, writer_id: int, chunk_id: int) -> ChunkRef | None: ...
    def return_chunk(self, ref: ChunkRef, target_buffer: int) -> bool: ...
    def give_back_unused(self, ref: ChunkRef) -> None: ...
    def turn_over(
        self, ref: ChunkRef, packets_word: int, target_buffer: int, writer_id: int, chunk_id: int
    ) -> ChunkRef | None: ...
    def reclaim_chunk(
        self, ref: ChunkRef, writer_id: int, chunk_id: int, target_buffer: int
    ) -> bool: ...
    def add_patches(self, patches: list[ChunkToPatch]) -> None: ...
    def commit(self) -> None: ...
    def commit_flush(self, writer_id: int, ticket: int) -> None: ...
    def release_writer_id(self, writer_id: int) -> None: ...


MIN_PACKET_START_ROOM = 12  # bytes free below which a packet starts in a new chunk
SCRATCH_CHUNK_SIZE = 1024
# Perfetto's stall backoff: these sleeps (µs), then 100 ms each, 300 stalls (~29 s).
STALL_BACKOFF_US = (0, 8, 72, 584, 4680, 37448)
STALL_LONG_SLEEP_S = 0.1
MAX_STALLS = 300

# TracePacket fields the writer itself adds (precomputed tag + value bytes).
_FIRST_PACKET_ON_SEQUENCE = b"\xb8\x05\x01"  # field 87, bool true
_PREVIOUS_PACKET_DROPPED = b"\xd0\x02\x81\x02"  # field 42 = 257: PRESENT | SMB_FULL
_FIRST_CONTINUES_HI = FIRST_PACKET_CONTINUES << (16 + FLAGS_SHIFT)  # in the header's high half


class BufferExhaustedPolicy(enum.IntEnum):
    DROP = 1
    STALL = 2  # stall, then raise SMBExhaustedError
    STALL_THEN_DROP = 3


class SMBExhaustedError(RuntimeError):
    """A stalling writer found no free chunk for MAX_STALLS attempts."""


class _Patch:
    """A size field left behind in a returned chunk."""

    __slots__ = ("chunk_id", "offset", "data")

    def __init__(self, chunk_id: int, offset: int) -> None:
        self.chunk_id = chunk_id
        self.offset = offset
        self.data: bytes | None = None


class TracePacket(Message):
    """A packet being streamed into a writer; end() (or `with`) finishes it."""

    __slots__ = ("_writer",)

    def __init__(self, writer: TraceWriterMethods) -> None:
        super().__init__(writer)
        self._writer = writer

    def end(self) -> int:
        if self.finished:
            return 0
        size = super().end()
        self._writer._end_packet()
        return size


class TraceWriterMethods(_MethodsBase):
    """Everything of a TraceWriter but write_packet's fast path, which comes from
    its WriterCore (see TraceWriter and PyTraceWriter at the end)."""

    def __init__(
        self,
        arbiter: ChunkSource,
        writer_id: int,
        target_buffer: int,
        policy: BufferExhaustedPolicy,
    ) -> None:
        self._arbiter = arbiter
        self.writer_id = writer_id
        self.target_buffer = target_buffer
        self.policy = BufferExhaustedPolicy(policy)
        self.dropped_packets = 0
        self.dropped_bytes = 0
        self._smb = arbiter.abi.buf
        self._buf = self._smb  # the SMB, or the scratch chunk while dropping
        self._scratch = memoryview(bytearray(SCRATCH_CHUNK_SIZE))
        self._chunk: ChunkRef | None = None
        self._chunk_id = 0  # of the current chunk
        self._next_chunk_id = 0
        self._wptr = 0
        self._end = 0
        self._fast_limit = -1  # see shm/writer_core.py
        self._finished = 0  # complete packets in the current chunk
        self._flags = 0
        self._hdr_word = 0
        self._hdr_hi = writer_id
        self._in_packet = False
        self._lost = False  # the packet in progress is being dropped
        self._dropping = False
        self._scratch_wrapped = False
        self._frag_size_off = 0
        self._frag_start = 0
        self._pos = 0  # bytes of the packet in progress
        self._open_sizes: list[list] = []  # [abs offset, _Patch | None] in the current chunk
        self._patches: list[_Patch] = []
        self._extra = _FIRST_PACKET_ON_SEQUENCE
        self._exhausted = False
        # Re-emit incremental state before relying on it (see the module docstring).
        self.incremental_state_invalid = True
        self._flushes_asked = 0  # tickets handed out by request_flush (any thread)
        self._flushes_served = 0  # the newest ticket a flush() covered
        # After close() the writer id may belong to a new writer: a late write must
        # never take a chunk under it (it is dropped and counted instead).
        self._closed = False
        self._abandoned: tuple[ChunkRef, int] | None = None  # (chunk, its id), see abandon()
        self._id_held_by_abandon = False  # abandon() kept the id; salvage() frees it

    # -- write_packet: the fast path is WriterCore's (shm/writer_core.py, shm/_writer.c) --

    def _write_packet_slow(self, data: bytes) -> None:
        """write_packet when the fast path cannot take the packet."""
        try:
            self._begin_packet()
            self.write(data)
            self._end_packet()
        except SMBExhaustedError:
            raise  # the STALL policy gave up on this packet; the writer is consistent
        except BaseException:
            # Anything else (a KeyboardInterrupt from a signal handler) may have
            # stopped the slow path between two steps of a chunk change: no later
            # write could trust the writer's state, so it gives up (abandon()).
            self.abandon()
            raise

    def new_packet(self) -> TracePacket:
        """Start a packet to fill with protozero calls; end it with end() or `with`."""
        self._begin_packet()
        return TracePacket(self)

    def flush(self) -> None:
        """Return the current chunk (if no packet is open) and commit everything,
        saying which flush requests this covers. Owning thread only."""
        if self._closed:
            return
        ticket = self._flushes_served = self._flushes_asked  # read before the chunk goes
        if not self._in_packet and self._chunk is not None:
            self._return_chunk(last_continues=False)
        self._arbiter.commit_flush(self.writer_id, ticket)

    def request_flush(self) -> int:
        """Any thread: ask the owning thread to flush at its next write. Returns
        the ticket the arbiter's commit_flush will report once served. Only one
        thread may ask (the producer's loop thread)."""
        ticket = self._flushes_asked + 1
        self._flushes_asked = ticket
        self._fast_limit = -1  # after the ticket: the slow path will see it
        return ticket

    @property
    def closed(self) -> bool:
        return self._closed

    def abandon(self) -> None:
        """Any thread: stop using this writer without touching its chunk, whose
        owner may be in the middle of a packet (an interrupted write, a signal
        handler that shuts tracing down). Later writes are dropped and counted.
        The chunk and the writer id stay taken, so that nobody reuses them under
        the owner, until the owner calls salvage() once it has left the write;
        without that the service scrapes the chunk's complete packets."""
        if not self._closed:
            self._id_held_by_abandon = True
        self._closed = True
        if self._chunk is not None:  # salvage() may give it back, on the owner's thread
            self._abandoned = (self._chunk, self._chunk_id)
        self._fast_limit = -1
        self._in_packet = False
        self._lost = False
        self._dropping = True
        self._buf = self._scratch
        self._wptr, self._end = 0, SCRATCH_CHUNK_SIZE
        self._chunk = None
        self._open_sizes.clear()
        self._patches.clear()

    def salvage(self) -> None:
        """Owner thread, once the write abandon() interrupted has unwound: give the
        abandoned chunk back if it is still this writer's (its packets go to the
        service, which validates them; a torn one is counted there), then the
        writer id. Without this an abandoned writer keeps its chunk and its id."""
        if not self._id_held_by_abandon:
            return
        self._id_held_by_abandon = False
        if self._abandoned is not None:
            (ref, chunk_id), self._abandoned = self._abandoned, None
            if self._arbiter.reclaim_chunk(ref, self.writer_id, chunk_id, self.target_buffer):
                self._arbiter.commit()
        self._arbiter.release_writer_id(self.writer_id)

    def close(self) -> None:
        """Flush and give the writer id back; later writes are dropped (counted)."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if not self._in_packet:
            # Off the SMB: a compiled core holds the buffer it writes into, which
            # would keep the region from closing while this object lives on.
            self._enter_drop_mode()
        self._arbiter.release_writer_id(self.writer_id)

    # -- the Stream protocol used by protozero Messages -------------------------------

    @property
    def position(self) -> int:
        return self._pos

    def write(self, data) -> None:
        n = len(data)
        w = self._wptr
        if w + n <= self._end:
            self._buf[w : w + n] = data
            self._wptr = w + n
            self._pos += n
            return
        off = self._write_chunks(data)  # the usual case of a large packet
        if off == n:
            return
        mv = memoryview(data)
        while True:  # fill the chunk, move to the next, until the data is out
            w = self._wptr
            take = self._end - w
            if take >= n - off:
                self._buf[w : w + n - off] = mv[off:]
                self._wptr = w + n - off
                self._pos += n - off
                return
            if take > 0:
                self._buf[w : self._end] = mv[off : off + take]
                self._wptr = self._end
                self._pos += take
                off += take
            self._next_chunk_for_split()

    def reserve_size(self) -> list:
        if self._end - self._wptr < 4:
            self._next_chunk_for_split()
        handle = [-1 if self._dropping else self._wptr, None]
        if not self._dropping:
            self._open_sizes.append(handle)
        self.write(b"\0\0\0\0")
        return handle

    def fill_size(self, handle: list, size: int) -> None:
        off, patch = handle
        if patch is not None:
            patch.data = encode_size4(size)
        elif off >= 0:
            write_size4(self._buf, off, size)
            sizes = self._open_sizes
            for i in range(len(sizes) - 1, -1, -1):  # usually the last: messages nest
                if sizes[i] is handle:
                    del sizes[i]
                    break
        handle[0] = -1

    # -- packets ----------------------------------------------------------------------

    def _begin_packet(self) -> None:
        if self._in_packet:
            raise RuntimeError("a packet is already open on this writer")
        if self._flushes_asked != self._flushes_served:
            self.flush()
        self._fast_limit = -1
        self._pos = 0
        if self._dropping and self._scratch_wrapped:
            self._try_recover()
        if not self._dropping and (
            self._chunk is None
            or self._end - self._wptr < MIN_PACKET_START_ROOM
            or self._finished >= MAX_PACKETS_PER_CHUNK
        ):
            if self._chunk is not None:
                self._return_chunk(last_continues=False)
            ref = self._next_chunk(may_stall=True)
            if ref is None:
                self._enter_drop_mode()
            else:
                self._install(ref, first_continues=False)
        self._in_packet = True
        if self._dropping:
            self._lost = True
            self._raise_if_exhausted()
            return
        if self._finished == 0:
            self._publish(1)
        self._start_fragment()

    def _end_packet(self) -> None:
        if not self._in_packet:
            return  # already given up (SMBExhaustedError)
        if not self._lost and self._extra:
            extra, self._extra = self._extra, b""
            self.write(extra)
        self._in_packet = False
        if self._lost:
            self._count_lost_packet()
            return
        write_size4(self._buf, self._frag_size_off, self._wptr - self._frag_start)
        self._finished += 1
        self._hand_over_patches()
        inflated = self._wptr < self._end
        self._publish(self._finished + (1 if inflated else 0))
        self._update_fast_limit()

    def _count_lost_packet(self) -> None:
        self.dropped_packets += 1
        self.dropped_bytes += self._pos
        self._lost = False

    def _start_fragment(self) -> None:
        self._frag_size_off = self._wptr
        self._buf[self._wptr : self._wptr + 4] = b"\0\0\0\0"
        self._wptr += 4
        self._frag_start = self._wptr

    def _mark_dropped(self) -> None:
        """The next packet that lands says that packets were lost before it, so
        the sequence's incremental state must be emitted again."""
        self.incremental_state_invalid = True
        if not self._extra.endswith(_PREVIOUS_PACKET_DROPPED):
            self._extra += _PREVIOUS_PACKET_DROPPED

    def _update_fast_limit(self) -> None:
        usable = not (self._in_packet or self._extra or self._dropping or self._chunk is None)
        if usable and self._finished < MAX_PACKETS_PER_CHUNK:
            self._fast_limit = self._end - 1
            # After the store: a request_flush racing with it either is seen here
            # or stores its -1 after ours (one GIL-ordered history either way).
            if self._flushes_asked != self._flushes_served:
                self._fast_limit = -1
        else:
            self._fast_limit = -1

    def _publish(self, count: int) -> None:
        store32(self._smb, self._hdr_word, self._hdr_hi | (count << 16))

    # -- chunks -----------------------------------------------------------------------

    def _next_chunk(self, may_stall: bool) -> ChunkRef | None:
        """A fresh chunk for this writer, stalling if the policy says so; None = drop."""
        if self._closed:
            return None
        ref = self._arbiter.acquire_chunk(self.writer_id, self._next_chunk_id)
        if ref is None and may_stall and self.policy != BufferExhaustedPolicy.DROP:
            ref = self._stall()
        return ref

    def _stall(self) -> ChunkRef | None:
        arbiter = self._arbiter
        for attempt in range(MAX_STALLS):
            arbiter.commit()  # let the service free what we returned
            if attempt < len(STALL_BACKOFF_US):
                arbiter.sleep(STALL_BACKOFF_US[attempt] / 1e6)
            else:
                arbiter.sleep(STALL_LONG_SLEEP_S)
            ref = arbiter.acquire_chunk(self.writer_id, self._next_chunk_id)
            if ref is not None:
                return ref
        self._exhausted = self.policy == BufferExhaustedPolicy.STALL
        return None

    def _raise_if_exhausted(self) -> None:
        """STALL policy: give up on this packet, raise, and try again next packet."""
        if not self._exhausted:
            return
        self._exhausted = False
        self._in_packet = False
        self._count_lost_packet()
        self._dropping = False
        self._buf = self._smb
        self._wptr = self._end = 0
        self._mark_dropped()
        raise SMBExhaustedError(
            f"writer {self.writer_id}: no free chunk in the SMB after {MAX_STALLS} stalls"
        )

    def _install(self, ref: ChunkRef, first_continues: bool) -> None:
        self._chunk = ref
        chunk_id = self._chunk_id = self._next_chunk_id
        self._next_chunk_id = (chunk_id + 1) & 0xFFFFFFFF
        smb = self._buf = self._smb
        offset = ref.offset
        self._end = offset + ref.size
        self._hdr_word = offset + CHUNK_PACKETS_WORD
        self._finished = 0
        if first_continues:  # once per chunk of a large packet: no calls here
            self._flags = FIRST_PACKET_CONTINUES
            hdr_hi = self._hdr_hi = self.writer_id | _FIRST_CONTINUES_HI
            store32(smb, offset + CHUNK_PACKETS_WORD, hdr_hi | 1 << 16)  # _publish(1)
            w = offset + CHUNK_HEADER_SIZE  # _start_fragment()
            smb[w : w + 4] = b"\0\0\0\0"
            self._frag_size_off = w
            self._wptr = self._frag_start = w + 4
        else:
            self._flags = 0
            self._hdr_hi = self.writer_id
            self._wptr = offset + CHUNK_HEADER_SIZE

    def _return_chunk(self, last_continues: bool) -> bool:
        count = self._finished
        if self._in_packet:
            count += 1  # the fragment in progress goes with the chunk
        elif self._finished and self._wptr < self._end:
            self._smb[self._wptr] = 0  # the inflated slot becomes an empty fragment
            self._wptr += 1
            count += 1
        flags = self._flags | (LAST_PACKET_CONTINUES if last_continues else 0)
        chunk = self._chunk
        assert chunk is not None, "only called while the writer holds a chunk"
        if self._open_sizes:
            flags |= NEEDS_PATCHING
            base = chunk.offset + CHUNK_HEADER_SIZE
            for handle in self._open_sizes:
                handle[1] = _Patch(self._chunk_id, handle[0] - base)
                self._patches.append(handle[1])
            self._open_sizes.clear()
        store32(self._smb, self._hdr_word, self.writer_id | ((count | flags << FLAGS_SHIFT) << 16))
        returned = self._arbiter.return_chunk(chunk, self.target_buffer)
        if not returned:
            self._lose_chunk(chunk)
        self._chunk = None
        self._fast_limit = -1
        return returned

    def _lose_chunk(self, chunk: ChunkRef) -> None:
        """`chunk` was found in a state this writer did not leave it in (someone
        else wrote the SMB): its finished packets are counted as dropped, a
        packet in progress is dropped to its end (its start is gone), and the
        next packet that lands says so. The app thread carries on."""
        end = self._frag_size_off if self._in_packet else self._wptr
        self.dropped_packets += self._finished
        self.dropped_bytes += max(0, end - chunk.offset - CHUNK_HEADER_SIZE)
        self._mark_dropped()
        if self._in_packet:
            self._void_open_packet()
            self._enter_drop_mode()
            self._lost = True

    def _next_chunk_for_split(self) -> None:
        """The packet in progress needs more room than the current chunk has."""
        if self._dropping:
            self._wptr = 0
            self._scratch_wrapped = True
            return
        ref = self._next_chunk(may_stall=True)  # before returning ours, as Perfetto does
        if ref is None:
            self._abandon_packet()
            self._raise_if_exhausted()
            return
        write_size4(self._smb, self._frag_size_off, self._wptr - self._frag_start)
        if not self._return_chunk(last_continues=True):
            self._arbiter.give_back_unused(ref)  # the packet is lost: drop its rest
            return
        if self._patches:
            self._hand_over_filled_patches()
        self._install(ref, first_continues=True)

    def _turn_over(self) -> bool:
        """_next_chunk_for_split's usual case (nothing to patch, a chunk free) in
        one arbiter call: the per-chunk cost of a large packet, in _write_chunks
        (shm/writer_core.py; shm/_writer.c does the same steps). False, with
        nothing changed but the fragment's backfilled size, if no chunk is free."""
        write_size4(self._smb, self._frag_size_off, self._wptr - self._frag_start)
        # _return_chunk's word for a chunk ending inside a packet (its fragment counts)
        word = self._hdr_hi | ((self._finished + 1 | LAST_PACKET_CONTINUES << FLAGS_SHIFT) << 16)
        chunk = self._chunk
        assert chunk is not None, "only called while the writer holds a chunk"
        ref = self._arbiter.turn_over(
            chunk, word, self.target_buffer, self.writer_id, self._next_chunk_id
        )
        if ref is None:
            return False
        self._install(ref, first_continues=True)
        return True

    # -- dropping ----------------------------------------------------------------------

    def _abandon_packet(self) -> None:
        """No chunk for the rest of the packet: void its fragment here, drop the rest."""
        write_size4(self._smb, self._frag_size_off, PACKET_DROPPED_SIZE)
        self._void_open_packet()
        self._return_chunk(last_continues=False)
        self._enter_drop_mode()
        self._lost = True

    def _void_open_packet(self) -> None:
        """The packet in progress will not land: its open sizes need no filling,
        its patches go to the service filled with zeros (they unblock the
        chunks waiting for them; the packet is void anyway)."""
        for handle in self._open_sizes:
            handle[0] = -1  # its bytes are void now
        self._open_sizes.clear()
        for patch in self._patches:
            if patch.data is None:
                patch.data = b"\0\0\0\0"
        self._hand_over_patches()

    def _enter_drop_mode(self) -> None:
        self._dropping = True
        self._scratch_wrapped = False
        self._buf = self._scratch
        self._wptr = 0
        self._end = SCRATCH_CHUNK_SIZE
        self._fast_limit = -1

    def _try_recover(self) -> None:
        """Back from the scratch chunk if the SMB has room again (never stalls)."""
        ref = self._next_chunk(may_stall=False)
        if ref is None:
            self._scratch_wrapped = False  # try again after another scratch-full
            return
        self._dropping = False
        self._install(ref, first_continues=False)
        self._mark_dropped()

    # -- patches -----------------------------------------------------------------------

    def _hand_over_patches(self) -> None:
        """Every size is filled (the packet ended, or was voided): hand all
        patches to the arbiter."""
        if self._patches:
            self._hand_over_leading(len(self._patches))

    def _hand_over_filled_patches(self) -> None:
        """A packet is still open: hand over the leading patches already filled."""
        patches = self._patches
        n = 0
        while n < len(patches) and patches[n].data is not None:
            n += 1
        if n:
            self._hand_over_leading(n)

    def _hand_over_leading(self, n: int) -> None:
        """The first n patches (all filled) to the arbiter, grouped per chunk, in order."""
        ready, self._patches = self._patches[:n], self._patches[n:]
        waiting = {p.chunk_id for p in self._patches}
        groups: dict[int, list[tuple[int, bytes]]] = {}
        for p in ready:
            assert p.data is not None, "only filled patches are handed over"
            groups.setdefault(p.chunk_id, []).append((p.offset, p.data))
        self._arbiter.add_patches(
            [
                ChunkToPatch(self.target_buffer, self.writer_id, cid, items, cid in waiting)
                for cid, items in groups.items()
            ]
        )


class TraceWriter(TraceWriterMethods, _Core):
    """Writes TracePackets of one sequence into chunks of the SMB. One thread only.
    write_packet's fast path is compiled (shm/_writer.c) when it was built."""


class PyTraceWriter(TraceWriterMethods, PyWriterCore):
    """The same writer on the pure-Python fast path (shm/writer_core.py): the
    reference the compiled one is tested against."""
