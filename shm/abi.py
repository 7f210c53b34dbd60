"""The shared memory buffer (SMB) ABI, byte-compatible with Perfetto's.

An SMB is shared by exactly one producer and the service. It is cut into pages
of equal size; each page is partitioned into 1, 2, 4, 7 or 14 chunks by the
producer when it first uses the page. A chunk holds fragments of TracePackets
written by one TraceWriter. All integers are little-endian.

Glossary (each word means one thing, here and in the rest of the project)::

    chunk   a slice of a page that one TraceWriter fills with fragments of
            packets, behind an 8-byte header (chunk id, writer id, count, flags)
    commit  a producer tells the service which chunks it finished (COMPLETE)
            and which patches it has: one CommitData (a CommitBatch while it is
            being built); the service then copies each chunk into a trace
            buffer and frees it in the SMB
    flush   the tracing Flush: the service asks a session's producers to commit
            everything they hold (TraceWriter.flush returns the current chunk
            and commits), waits for their acks or a timeout, then scrapes
    scrape  the service copies chunks still in the SMB (COMPLETE, or
            BEING_WRITTEN with a published count) without changing their state:
            after a flush, or when a producer dies; a scraped copy leaves out its
            last fragment, which the real commit may still grow
    patch   4 bytes the service writes later at an offset of a chunk it already
            holds: the size field of a nested message still open when its chunk
            was returned (the chunk is NEEDS_PATCHING until the last patch)

SMB::

    +--------+--------+--------+-- ... --+--------+
    | page 0 | page 1 | page 2 |         | page N-1|    size = N * page_size
    +--------+--------+--------+-- ... --+--------+     page_size in {4,8,16,32} KiB

Page (PAGE_HEADER, 8 bytes, then the chunks)::

    0        4        8          8+cs        8+2cs
    +--------+--------+-----------+-----------+-- ... --+-- slack --+
    | bitmap | (rsvd) | chunk 0   | chunk 1   |         |           |
    +--------+--------+-----------+-----------+-- ... --+-----------+
    chunk k starts at 8 + k*cs, cs = ((page_size - 8) // n) & ~3

Page header bitmap (u32, only ever changed with an atomic CAS)::

     31 30  28 27 26        ...          3  2  1  0
    +--+------+-----+-----+-- ... --+-----+-----+
    |0 |layout|st 13|st 12|         |st 1 |st 0 |    st k = state of chunk k (2 bits)
    +--+------+-----+-----+-- ... --+-----+-----+
    LAYOUT_MASK 0x70000000, ALL_CHUNKS_MASK 0x0FFFFFFF, RESERVED_BIT 0x80000000

    layout code   0     1  2  3  4  5     6, 7
    chunks/page   free  1  2  4  7  14    invalid

    chunk states  0 FREE, 1 BEING_WRITTEN, 2 BEING_READ, 3 COMPLETE
    A bitmap of 0 is a free, unpartitioned page.

Chunk header (CHUNK_HEADER, 8 bytes, then the payload)::

    0            4            6                   8
    +------------+------------+---------+---------+-------- payload ...
    | chunk_id   | writer_id  | count   | flags   |
    | u32        | u16 1..32767 bits 0-9 bits 10-15|
    +------------+------------+---------+---------+

    flags: 1 FIRST_PACKET_CONTINUES_FROM_PREV_CHUNK, 2 LAST_PACKET_CONTINUES_ON_NEXT_CHUNK,
           4 CHUNK_NEEDS_PATCHING

The u16 pair (writer_id, packets) forms one aligned u32 at chunk offset 4: the
producer publishes a new packet count with one atomic release store of that word.

Transitions (each a CAS on the whole bitmap; see SharedMemoryABI)::

    producer: page 0 -> layout L          chunk FREE -> BEING_WRITTEN -> COMPLETE
    service:  chunk COMPLETE -> BEING_READ -> FREE; the last chunk freed resets
              the bitmap to 0

The service trusts nothing it reads here but the number of pages: layouts and
states are re-checked by its own CAS, headers are untrusted input, and a CAS it
keeps losing is given up (it never waits for a producer).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from shm._atomics import cas32, load32

# --- geometry -------------------------------------------------------------------

PAGE_SIZES = (4096, 8192, 16384, 32768)
DEFAULT_PAGE_SIZE = 4096
DEFAULT_SMB_SIZE = 256 * 1024
MAX_SMB_SIZE = 32 * 1024 * 1024

PAGE_HEADER = struct.Struct("<II")  # bitmap, reserved
CHUNK_HEADER = struct.Struct("<IHH")  # chunk_id, writer_id, packets (count:10 | flags:6)
PAGE_HEADER_SIZE = PAGE_HEADER.size
CHUNK_HEADER_SIZE = CHUNK_HEADER.size
_ZERO_HEADER = bytes(CHUNK_HEADER_SIZE)
CHUNK_PACKETS_WORD = 4  # offset in the chunk of the aligned u32 (writer_id | packets << 16)

# --- page header bitmap -----------------------------------------------------------

LAYOUT_SHIFT = 28
LAYOUT_MASK = 0x70000000
ALL_CHUNKS_MASK = 0x0FFFFFFF
RESERVED_BIT = 0x80000000
CHUNK_STATE_MASK = 0x3
LAYOUT_CHUNKS = (0, 1, 2, 4, 7, 14, 0, 0)  # indexed by layout code
MAX_CHUNKS_PER_PAGE = 14

FREE = 0
BEING_WRITTEN = 1
BEING_READ = 2
COMPLETE = 3

# --- chunk header -----------------------------------------------------------------

COUNT_MASK = 0x3FF
FLAGS_SHIFT = 10
FIRST_PACKET_CONTINUES = 1
LAST_PACKET_CONTINUES = 2
NEEDS_PATCHING = 4
MAX_COUNT = COUNT_MASK  # 1023: 1022 packets plus the writer's one "inflated" slot
MAX_PACKETS_PER_CHUNK = 1022
MAX_WRITER_ID = 32767

# --- packets inside a chunk (see shm/packets.py) ------------------------------------

PACKET_DROPPED_SIZE = 0x0FFFFFFF  # fragment length meaning "writer dropped this packet"
FRAGMENT_HEADER_SIZE = 4  # reserved by writers, backfilled as a redundant varint

# How many times the service retries a CAS it loses before giving up on the chunk.
SERVICE_CAS_ATTEMPTS = 8
# The producer's bound: the service legitimately changes other chunks of a page
# between its load and its CAS, but a bitmap that keeps changing under it longer
# is someone scribbling on the SMB, and the chunk is given up as lost.
WRITER_CAS_ATTEMPTS = 1000


def chunk_size_for(page_size: int, layout: int) -> int:
    """Bytes per chunk (header included) of `layout` on a page; 0 for invalid layouts."""
    n = LAYOUT_CHUNKS[layout & 7]
    if n == 0:
        return 0
    return ((page_size - PAGE_HEADER_SIZE) // n) & ~3


def chunk_state(bitmap: int, chunk: int) -> int:
    return (bitmap >> (chunk * 2)) & CHUNK_STATE_MASK


def layout_of(bitmap: int) -> int:
    return (bitmap & LAYOUT_MASK) >> LAYOUT_SHIFT


def with_chunk_state(bitmap: int, chunk: int, state: int) -> int:
    shift = chunk * 2
    return (bitmap & ~(CHUNK_STATE_MASK << shift)) | (state << shift)


def is_valid_writer_id(writer_id: int) -> bool:
    """Writer ids are 1..32767 (0 means "no writer"); the one range check of them."""
    return 0 < writer_id <= MAX_WRITER_ID


def unpack_packets(packets: int) -> tuple[int, int]:
    return packets & COUNT_MASK, packets >> FLAGS_SHIFT


@dataclass(frozen=True)
class Geometry:
    """The SMB size and page size both sides agree on."""

    size: int
    page_size: int

    @property
    def num_pages(self) -> int:
        return self.size // self.page_size


def is_valid_geometry(size: int, page_size: int) -> bool:
    """A geometry both sides may use: a known page size, whole pages, at most the maximum."""
    return page_size in PAGE_SIZES and 0 < size <= MAX_SMB_SIZE and size % page_size == 0


def resolve_geometry(size_hint: int = 0, page_size_hint: int = 0) -> Geometry:
    """Perfetto's rules for SMB hints: 0 means default; sizes above the maximum are
    clamped; any other invalid combination falls back to both defaults."""
    page = page_size_hint or DEFAULT_PAGE_SIZE
    size = size_hint or DEFAULT_SMB_SIZE
    page = min(page, PAGE_SIZES[-1])
    size = min(size, MAX_SMB_SIZE)
    if not is_valid_geometry(size, page):
        return Geometry(DEFAULT_SMB_SIZE, DEFAULT_PAGE_SIZE)
    return Geometry(size, page)


_new_tuple = tuple.__new__


class ChunkRef(NamedTuple):
    """A chunk the caller owns after a successful acquire."""

    page: int
    chunk: int
    offset: int  # of the chunk header within the SMB
    size: int  # of the whole chunk, header included


class SharedMemoryABI:
    """Atomic page/chunk state transitions over one SMB buffer.

    `buf` is any writable buffer (an mmap or a bytearray); both sides use this
    class, but only the service side must assume the other party is hostile.
    """

    def __init__(self, buf, geometry: Geometry) -> None:
        if len(buf) < geometry.size:
            raise ValueError(f"buffer of {len(buf)} bytes is smaller than the SMB {geometry}")
        self.buf = buf
        self.geometry = geometry
        self.page_size = geometry.page_size
        self.num_pages = geometry.num_pages
        self._chunk_sizes = [chunk_size_for(self.page_size, layout) for layout in range(8)]

    # -- reads -------------------------------------------------------------------

    def bitmap(self, page: int) -> int:
        return load32(self.buf, page * self.page_size)

    def chunk_ref(self, page: int, chunk: int, layout: int) -> ChunkRef | None:
        """Location of chunk `chunk` of `page` under `layout`, or None if invalid."""
        if not (0 <= page < self.num_pages and 0 <= chunk < LAYOUT_CHUNKS[layout & 7]):
            return None
        size = self._chunk_sizes[layout & 7]
        return ChunkRef(page, chunk, page * self.page_size + PAGE_HEADER_SIZE + chunk * size, size)

    # -- producer side --------------------------------------------------------------

    def try_acquire_free_page(
        self, page: int, layout: int, writer_id: int, chunk_id: int
    ) -> ChunkRef | None:
        """Free page -> partitioned with chunk 0 BEING_WRITTEN, in one CAS (the
        two transitions at once: the service sees either state, never a mix)."""
        new = (layout << LAYOUT_SHIFT) | BEING_WRITTEN
        page_off = page * self.page_size
        if cas32(self.buf, page_off, 0, new) != 0:
            return None
        offset = page_off + PAGE_HEADER_SIZE
        self._publish_header(offset, writer_id, chunk_id)
        return _new_tuple(ChunkRef, (page, 0, offset, self._chunk_sizes[layout]))  # no __new__ call

    def try_acquire_for_writing(
        self, page: int, chunk: int, writer_id: int, chunk_id: int
    ) -> ChunkRef | None:
        """FREE -> BEING_WRITTEN, then publish a fresh header for the writer."""
        bitmap = self.bitmap(page)
        ref = self.chunk_ref(page, chunk, layout_of(bitmap))
        if ref is None or bitmap & RESERVED_BIT or chunk_state(bitmap, chunk) != FREE:
            return None
        new = with_chunk_state(bitmap, chunk, BEING_WRITTEN)
        if cas32(self.buf, page * self.page_size, bitmap, new) != bitmap:
            return None
        self._publish_header(ref.offset, writer_id, chunk_id)
        return ref

    def _publish_header(self, offset: int, writer_id: int, chunk_id: int) -> None:
        # Plain stores are enough: the count stays 0 until the writer's first
        # release store of the packets word, which orders these before it.
        CHUNK_HEADER.pack_into(self.buf, offset, chunk_id & 0xFFFFFFFF, writer_id, 0)

    def release_as_complete(self, ref: ChunkRef) -> bool:
        """BEING_WRITTEN -> COMPLETE. Retries while the service changes other chunks
        of the page; False if the chunk was not BEING_WRITTEN (or the bitmap kept
        changing under it): its writer then counts it as lost."""
        buf = self.buf
        off = ref.page * self.page_size
        shift = ref.chunk * 2
        bits = COMPLETE << shift
        for _ in range(WRITER_CAS_ATTEMPTS):
            bitmap = load32(buf, off)
            if (bitmap >> shift) & CHUNK_STATE_MASK != BEING_WRITTEN:
                return False
            if cas32(buf, off, bitmap, bitmap | bits) == bitmap:
                return True
        return False

    def release_unused(self, ref: ChunkRef) -> bool:
        """BEING_WRITTEN -> FREE for a chunk its writer took but never used (the
        chunk it was to follow was lost, see SharedMemoryArbiter.turn_over); the
        page returns to unpartitioned when no chunk of it is left in use. False
        if the chunk was not BEING_WRITTEN (someone else wrote the bitmap)."""
        buf = self.buf
        buf[ref.offset : ref.offset + CHUNK_HEADER_SIZE] = _ZERO_HEADER
        off = ref.page * self.page_size
        shift = ref.chunk * 2
        for _ in range(WRITER_CAS_ATTEMPTS):
            bitmap = load32(buf, off)
            if (bitmap >> shift) & CHUNK_STATE_MASK != BEING_WRITTEN:
                return False
            new = bitmap & ~(CHUNK_STATE_MASK << shift)
            if new & ALL_CHUNKS_MASK == 0:
                new = 0
            if cas32(buf, off, bitmap, new) == bitmap:
                return True
        return False

    # -- service side ------------------------------------------------------------------

    def try_acquire_for_reading(self, page: int, chunk: int) -> ChunkRef | None:
        """COMPLETE -> BEING_READ on an untrusted page; None if the chunk is not
        complete, the indices or layout are invalid, or the CAS keeps losing."""
        if not 0 <= page < self.num_pages:
            return None
        buf = self.buf
        page_off = page * self.page_size
        shift = chunk * 2  # chunk is range-checked against the layout before any use
        # Once per chunk the service moves: the helpers (chunk_ref, chunk_state,
        # with_chunk_state) inlined, the same checks in the same order.
        for _ in range(SERVICE_CAS_ATTEMPTS):
            bitmap = load32(buf, page_off)
            layout = (bitmap & LAYOUT_MASK) >> LAYOUT_SHIFT
            if not 0 <= chunk < LAYOUT_CHUNKS[layout] or bitmap & RESERVED_BIT:
                return None
            if (bitmap >> shift) & CHUNK_STATE_MASK != COMPLETE:
                return None
            new = bitmap ^ ((COMPLETE ^ BEING_READ) << shift)
            if cas32(buf, page_off, bitmap, new) == bitmap:
                size = self._chunk_sizes[layout]
                offset = page_off + PAGE_HEADER_SIZE + chunk * size
                return _new_tuple(ChunkRef, (page, chunk, offset, size))
        return None

    def release_as_free(self, ref: ChunkRef) -> bool:
        """BEING_READ -> FREE, zeroing the header first; the last chunk freed
        returns the page to the unpartitioned state (bitmap 0)."""
        buf = self.buf
        page, chunk, offset, size = ref
        buf[offset : offset + CHUNK_HEADER_SIZE] = _ZERO_HEADER
        page_off = page * self.page_size
        shift = chunk * 2
        chunk_sizes = self._chunk_sizes
        for _ in range(SERVICE_CAS_ATTEMPTS):
            bitmap = load32(buf, page_off)
            if (
                chunk_sizes[(bitmap & LAYOUT_MASK) >> LAYOUT_SHIFT] != size
                or (bitmap >> shift) & CHUNK_STATE_MASK != BEING_READ
            ):
                return False  # the producer changed the layout under us: give up
            new = bitmap & ~(CHUNK_STATE_MASK << shift)  # -> FREE
            if new & ALL_CHUNKS_MASK == 0:
                new = 0
            if cas32(buf, page_off, bitmap, new) == bitmap:
                return True
        return False
