"""shm.abi: SMB geometry and chunk state transitions, byte-compatible with
Perfetto's SharedMemoryABI (see /work/shared/reference/perfetto-smb-abi.md).

What users rely on: the geometry both sides agree on follows Perfetto's
EnsureValidShmSizes (src/tracing/service/tracing_service_impl.cc); chunk
offsets/sizes and the header packing are Perfetto's bytes; every transition
leaves the other chunks of the page alone; and nothing a hostile producer can put
in a page header or a CommitData index makes the service side raise.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from shm._atomics import cas32, store32

from shm import abi
from shm.abi import (
    ALL_CHUNKS_MASK,
    BEING_READ,
    BEING_WRITTEN,
    CHUNK_HEADER,
    COMPLETE,
    FREE,
    LAYOUT_SHIFT,
    RESERVED_BIT,
    ChunkRef,
    Geometry,
    SharedMemoryABI,
    chunk_size_for,
    chunk_state,
    layout_of,
    resolve_geometry,
    unpack_packets,
    with_chunk_state,
)
from shm.region import InProcessRegion

KiB = 1024
MiB = 1024 * KiB
DEFAULT = Geometry(256 * KiB, 4 * KiB)


def packets_word(count: int, flags: int) -> int:
    """The u16 `packets` field of a chunk header, as the writer's header word holds it."""
    return (count & abi.COUNT_MASK) | (flags << abi.FLAGS_SHIFT)


# -- constants that are Perfetto's ABI ----------------------------------------------------


def test_abi_constants_match_perfetto():
    assert abi.PAGE_SIZES == (4096, 8192, 16384, 32768)
    assert (abi.DEFAULT_PAGE_SIZE, abi.DEFAULT_SMB_SIZE, abi.MAX_SMB_SIZE) == (
        4096,
        256 * KiB,
        32 * MiB,
    )
    assert (abi.PAGE_HEADER_SIZE, abi.CHUNK_HEADER_SIZE) == (8, 8)
    assert (abi.LAYOUT_MASK, ALL_CHUNKS_MASK, RESERVED_BIT) == (0x70000000, 0x0FFFFFFF, 1 << 31)
    assert LAYOUT_SHIFT == 28
    assert abi.LAYOUT_CHUNKS == (0, 1, 2, 4, 7, 14, 0, 0)
    assert (FREE, BEING_WRITTEN, BEING_READ, COMPLETE) == (0, 1, 2, 3)
    assert (abi.FIRST_PACKET_CONTINUES, abi.LAST_PACKET_CONTINUES, abi.NEEDS_PATCHING) == (1, 2, 4)
    assert abi.MAX_WRITER_ID == 32767
    assert abi.MAX_PACKETS_PER_CHUNK == 1022
    assert abi.PACKET_DROPPED_SIZE == 0x0FFFFFFF


# -- geometry -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size_hint, page_hint, expected",
    [
        # 0 means "use the default", independently for each
        (0, 0, DEFAULT),
        (0, 8 * KiB, Geometry(256 * KiB, 8 * KiB)),
        (1 * MiB, 0, Geometry(1 * MiB, 4 * KiB)),
        # every page size the service accepts
        (1 * MiB, 4 * KiB, Geometry(1 * MiB, 4 * KiB)),
        (1 * MiB, 8 * KiB, Geometry(1 * MiB, 8 * KiB)),
        (1 * MiB, 16 * KiB, Geometry(1 * MiB, 16 * KiB)),
        (1 * MiB, 32 * KiB, Geometry(1 * MiB, 32 * KiB)),
        # one page is enough; the maximum is accepted as is
        (4 * KiB, 4 * KiB, Geometry(4 * KiB, 4 * KiB)),
        (32 * KiB, 32 * KiB, Geometry(32 * KiB, 32 * KiB)),
        (32 * MiB, 32 * KiB, Geometry(32 * MiB, 32 * KiB)),
        # above the maximum SMB size: clamped to 32 MiB (before the multiple check)
        (32 * MiB + 4 * KiB, 4 * KiB, Geometry(32 * MiB, 4 * KiB)),
        (64 * MiB, 0, Geometry(32 * MiB, 4 * KiB)),
        (32 * MiB + 1, 4 * KiB, Geometry(32 * MiB, 4 * KiB)),
        (1 << 40, 16 * KiB, Geometry(32 * MiB, 16 * KiB)),
        # page above 32 KiB: clamped to 32 KiB (the ABI allows 64 KiB, the service not)
        (1 * MiB, 64 * KiB, Geometry(1 * MiB, 32 * KiB)),
        (1 * MiB, 40 * KiB, Geometry(1 * MiB, 32 * KiB)),  # clamped first, then valid
        (1 * MiB, 1 << 30, Geometry(1 * MiB, 32 * KiB)),
        (64 * MiB, 64 * KiB, Geometry(32 * MiB, 32 * KiB)),
        # invalid page size: both fall back to the defaults
        (1 * MiB, 2 * KiB, DEFAULT),
        (1 * MiB, 4097, DEFAULT),
        (1 * MiB, 12 * KiB, DEFAULT),  # a multiple of 4 KiB but 3 pages: not a power of two
        (1 * MiB, 24 * KiB, DEFAULT),
        (1 * MiB, 1, DEFAULT),
        # invalid SMB size for the page: both fall back to the defaults
        (4 * KiB, 8 * KiB, DEFAULT),  # smaller than one page
        (100_000, 4 * KiB, DEFAULT),  # not a multiple of the page
        (40 * KiB, 32 * KiB, DEFAULT),
        (3 * KiB, 0, DEFAULT),
        (1, 0, DEFAULT),
        (12 * KiB, 8 * KiB, DEFAULT),
        # a valid size hint does not survive an invalid page hint, and vice versa
        (512 * KiB, 6 * KiB, DEFAULT),
        (300 * KiB, 16 * KiB, DEFAULT),
        # negative hints cannot reach Perfetto (size_t) but must not break us
        (-1, 0, DEFAULT),
        (0, -4096, DEFAULT),
    ],
)
def test_resolve_geometry(size_hint, page_hint, expected):
    g = resolve_geometry(size_hint, page_hint)
    assert g == expected
    assert g.num_pages == expected.size // expected.page_size


def test_resolve_geometry_defaults_without_arguments():
    assert resolve_geometry() == DEFAULT
    assert DEFAULT.num_pages == 64


def _perfetto_ensure_valid_shm_sizes(shm_size: int, page_size: int) -> tuple[int, int]:
    """A transcription of Perfetto's EnsureValidShmSizes, as the oracle."""
    page_size = page_size or 4096
    shm_size = shm_size or 256 * KiB
    page_size = min(page_size, 32 * KiB)
    shm_size = min(shm_size, 32 * MiB)
    valid = page_size >= 4096 and page_size % 4096 == 0
    num_pages = page_size // 4096
    valid = valid and (num_pages & (num_pages - 1)) == 0
    if not valid or shm_size < page_size or shm_size % page_size:
        return 256 * KiB, 4096
    return shm_size, page_size


@given(
    size=st.one_of(
        st.integers(0, 64 * MiB),
        st.integers(0, 8 * 1024).map(lambda k: k * 4096),
        st.sampled_from([0, 4096, 8192, 16384, 32768, 32 * MiB, 32 * MiB + 4096]),
    ),
    page=st.one_of(
        st.integers(0, 128 * KiB),
        st.integers(0, 32).map(lambda k: k * 4096),
        st.sampled_from([0, 4096, 8192, 16384, 32768, 65536]),
    ),
)
def test_resolve_geometry_matches_perfetto(size, page):
    g = resolve_geometry(size, page)
    assert (g.size, g.page_size) == _perfetto_ensure_valid_shm_sizes(size, page)
    assert g.page_size in abi.PAGE_SIZES
    assert g.size % g.page_size == 0 and 0 < g.size <= 32 * MiB


# -- chunk sizes and header packing --------------------------------------------------------

# perfetto-smb-abi.md section 1, "Chunk sizes": page -> (Div1, Div2, Div4, Div7, Div14)
CHUNK_SIZE_TABLE = {
    4096: (4088, 2044, 1020, 584, 292),
    8192: (8184, 4092, 2044, 1168, 584),
    16384: (16376, 8188, 4092, 2336, 1168),
    32768: (32760, 16380, 8188, 4680, 2340),
    65536: (65528, 32764, 16380, 9360, 4680),
}


@pytest.mark.parametrize("page_size", sorted(CHUNK_SIZE_TABLE))
def test_chunk_size_table(page_size):
    for layout, expected in zip(range(1, 6), CHUNK_SIZE_TABLE[page_size], strict=True):
        assert chunk_size_for(page_size, layout) == expected, (page_size, layout)
    for layout in (0, 6, 7):
        assert chunk_size_for(page_size, layout) == 0
    # every chunk of every layout fits in the page after its header, 4-byte aligned
    for layout in range(1, 6):
        n = abi.LAYOUT_CHUNKS[layout]
        size = chunk_size_for(page_size, layout)
        assert size % 4 == 0
        assert 8 + n * size <= page_size


def test_chunk_header_packing_matches_the_c_bitfields():
    packets = packets_word(5, 5)
    raw = CHUNK_HEADER.pack(0x11223344, 0x0102, packets)
    assert raw[6:8] == b"\x05\x14"
    assert raw == b"\x44\x33\x22\x11\x02\x01\x05\x14"
    assert unpack_packets(packets) == (5, 5)
    assert CHUNK_HEADER.unpack(raw) == (0x11223344, 0x0102, packets)
    # the aligned word at offset 4 is writer_id | packets << 16 (published with one store)
    assert struct.unpack_from("<I", raw, abi.CHUNK_PACKETS_WORD)[0] == 0x0102 | (packets << 16)


@pytest.mark.parametrize("count, flags", [(0, 0), (1023, 0), (0, 63), (1022, 7), (1, 3)])
def test_pack_unpack_packets_round_trip(count, flags):
    packets = packets_word(count, flags)
    assert 0 <= packets <= 0xFFFF
    assert unpack_packets(packets) == (count, flags)


def test_bitmap_helpers():
    bitmap = (5 << LAYOUT_SHIFT) | (COMPLETE << 26) | (BEING_READ << 2) | BEING_WRITTEN
    assert layout_of(bitmap) == 5
    assert layout_of(bitmap | RESERVED_BIT) == 5
    assert chunk_state(bitmap, 0) == BEING_WRITTEN
    assert chunk_state(bitmap, 1) == BEING_READ
    assert chunk_state(bitmap, 13) == COMPLETE
    assert chunk_state(bitmap, 5) == FREE
    moved = with_chunk_state(bitmap, 1, FREE)
    assert chunk_state(moved, 1) == FREE
    assert moved == bitmap & ~(3 << 2)
    assert with_chunk_state(moved, 1, BEING_READ) == bitmap


# -- transitions on an in-process region ---------------------------------------------------


def partition(smb: SharedMemoryABI, page: int, layout: int) -> bool:
    """Free page -> partitioned with `layout`, all chunks FREE (the product does
    this and acquires chunk 0 in one CAS: try_acquire_free_page)."""
    return cas32(smb.buf, page * smb.page_size, 0, layout << LAYOUT_SHIFT) == 0


def make_abi(size: int = 64 * KiB, page_size: int = 4 * KiB):
    region = InProcessRegion(size)
    return region, SharedMemoryABI(region.buf, Geometry(size, page_size))


def header_at(smb: SharedMemoryABI, ref: ChunkRef) -> tuple[int, int, int]:
    return CHUNK_HEADER.unpack_from(smb.buf, ref.offset)


def test_constructor_refuses_a_buffer_smaller_than_the_geometry():
    region = InProcessRegion(8 * KiB)
    with pytest.raises(ValueError):
        SharedMemoryABI(region.buf, Geometry(16 * KiB, 4 * KiB))


def test_full_cycle_single_chunk_page():
    region, smb = make_abi()
    assert smb.num_pages == 16
    page = 3
    # garbage left in the chunk header by a previous user must not survive acquire
    struct.pack_into("<II", smb.buf, page * 4096 + 8, 0xFFFFFFFF, 0xFFFFFFFF)

    assert smb.bitmap(page) == 0
    assert partition(smb, page, 1)
    assert smb.bitmap(page) == 1 << LAYOUT_SHIFT
    assert not partition(smb, page, 1), "a partitioned page cannot be re-partitioned"

    ref = smb.try_acquire_for_writing(page, 0, writer_id=7, chunk_id=42)
    assert ref == ChunkRef(page=page, chunk=0, offset=page * 4096 + 8, size=4088)
    assert smb.bitmap(page) == (1 << LAYOUT_SHIFT) | BEING_WRITTEN
    assert header_at(smb, ref) == (42, 7, 0), "header published: chunk id, writer, count 0"
    assert smb.try_acquire_for_writing(page, 0, 8, 43) is None, "already being written"
    assert smb.try_acquire_for_reading(page, 0) is None, "not complete yet"

    # the writer fills the payload and publishes count/flags
    smb.buf[ref.offset + 8 : ref.offset + 12] = b"\x02hi\x00"
    struct.pack_into("<H", smb.buf, ref.offset + 6, packets_word(2, 0))
    assert smb.release_as_complete(ref)
    assert smb.bitmap(page) == (1 << LAYOUT_SHIFT) | COMPLETE
    assert not smb.release_as_complete(ref), "already complete"

    got = smb.try_acquire_for_reading(page, 0)
    assert got == ref
    assert smb.bitmap(page) == (1 << LAYOUT_SHIFT) | BEING_READ
    assert header_at(smb, got) == (42, 7, packets_word(2, 0))
    assert smb.try_acquire_for_reading(page, 0) is None, "already being read"

    assert smb.release_as_free(got)
    assert smb.bitmap(page) == 0, "last chunk freed: page back to unpartitioned"
    assert header_at(smb, got) == (0, 0, 0), "header zeroed on free"
    # and the page can be partitioned again, with another layout
    assert partition(smb, page, 3)
    # other pages never moved
    assert all(smb.bitmap(p) == 0 for p in range(smb.num_pages) if p != page)
    region.close()


def test_chunk_id_is_stored_as_u32():
    _, smb = make_abi()
    partition(smb, 0, 1)
    ref = smb.try_acquire_for_writing(0, 0, writer_id=1, chunk_id=(1 << 32) + 5)
    assert header_at(smb, ref)[0] == 5


@pytest.mark.parametrize("page_size", [4096, 8192, 16384, 32768])
@pytest.mark.parametrize("layout", [1, 2, 3, 4, 5])
def test_chunk_refs_follow_the_layout(page_size, layout):
    _, smb = make_abi(size=4 * page_size, page_size=page_size)
    n = abi.LAYOUT_CHUNKS[layout]
    size = chunk_size_for(page_size, layout)
    page = 2
    assert partition(smb, page, layout)
    refs = [smb.try_acquire_for_writing(page, k, writer_id=k + 1, chunk_id=k) for k in range(n)]
    for k, ref in enumerate(refs):
        assert ref == ChunkRef(page, k, page * page_size + 8 + k * size, size)
        assert header_at(smb, ref) == (k, k + 1, 0)
    assert smb.try_acquire_for_writing(page, n, writer_id=1, chunk_id=0) is None
    assert smb.chunk_ref(page, n, layout) is None
    assert smb.bitmap(page) == (layout << LAYOUT_SHIFT) | int("1" * n, 4)  # all BEING_WRITTEN


def test_multi_chunk_page_keeps_other_chunks_states():
    _, smb = make_abi()
    page, layout = 1, 5  # 14 chunks
    assert partition(smb, page, layout)
    written = [smb.try_acquire_for_writing(page, k, writer_id=1, chunk_id=k) for k in range(14)]
    assert None not in written
    # chunks 0..6 complete, 7..13 still being written
    for k in range(7):
        assert smb.release_as_complete(written[k])
    # the service reads 2 and 5
    r2 = smb.try_acquire_for_reading(page, 2)
    r5 = smb.try_acquire_for_reading(page, 5)
    assert r2 is not None and r5 is not None

    def states():
        b = smb.bitmap(page)
        return [chunk_state(b, k) for k in range(14)]

    expected = [COMPLETE] * 7 + [BEING_WRITTEN] * 7
    expected[2] = expected[5] = BEING_READ
    assert states() == expected
    assert smb.release_as_free(r2)
    expected[2] = FREE
    assert states() == expected
    assert layout_of(smb.bitmap(page)) == layout, "layout kept while chunks are in use"
    # the producer may reuse the freed chunk under the same layout
    written[2] = smb.try_acquire_for_writing(page, 2, writer_id=2, chunk_id=99)
    assert written[2] == r2
    expected[2] = BEING_WRITTEN
    assert states() == expected
    assert smb.release_as_free(r5)
    expected[5] = FREE
    assert states() == expected

    # drain everything: the page returns to 0 only when the last chunk is freed
    for k in range(14):
        if expected[k] == BEING_WRITTEN:
            assert smb.release_as_complete(written[k])
    for k in range(14):
        if k in (5,):
            continue
        ref = smb.try_acquire_for_reading(page, k)
        assert ref is not None, k
        assert smb.release_as_free(ref)
        if smb.bitmap(page) != 0:
            assert layout_of(smb.bitmap(page)) == layout
    assert smb.bitmap(page) == 0


@pytest.mark.parametrize("layout", [1, 2, 3, 4, 5])
def test_try_acquire_free_page_partitions_and_acquires_chunk_0_in_one_cas(layout):
    _, smb = make_abi()
    page = 2
    struct.pack_into("<II", smb.buf, page * 4096 + 8, 0xFFFFFFFF, 0xFFFFFFFF)
    ref = smb.try_acquire_free_page(page, layout, writer_id=3, chunk_id=11)
    assert ref == ChunkRef(page, 0, page * 4096 + 8, chunk_size_for(4096, layout))
    assert smb.bitmap(page) == (layout << LAYOUT_SHIFT) | BEING_WRITTEN
    assert header_at(smb, ref) == (11, 3, 0)
    # a page that is not free is left alone, header included
    assert smb.try_acquire_free_page(page, layout, writer_id=4, chunk_id=12) is None
    assert header_at(smb, ref) == (11, 3, 0)
    assert smb.bitmap(page) == (layout << LAYOUT_SHIFT) | BEING_WRITTEN
    # and the chunk goes through the usual cycle
    assert smb.release_as_complete(ref)
    got = smb.try_acquire_for_reading(page, 0)
    assert got == ref
    assert smb.release_as_free(got)
    assert smb.bitmap(page) == 0


def test_release_as_complete_refuses_a_chunk_not_being_written():
    _, smb = make_abi()
    assert partition(smb, 0, 2)
    ref = smb.try_acquire_for_writing(0, 1, writer_id=1, chunk_id=0)
    other = smb.chunk_ref(0, 0, 2)
    assert not smb.release_as_complete(other), "chunk 0 is FREE"
    assert smb.bitmap(0) == (2 << LAYOUT_SHIFT) | (BEING_WRITTEN << 2)
    assert smb.release_as_complete(ref)
    assert smb.bitmap(0) == (2 << LAYOUT_SHIFT) | (COMPLETE << 2)


def test_two_chunk_page_returns_to_zero_only_after_both():
    _, smb = make_abi()
    assert partition(smb, 0, 2)
    for k in (0, 1):
        assert smb.release_as_complete(smb.try_acquire_for_writing(0, k, writer_id=1, chunk_id=k))
    a = smb.try_acquire_for_reading(0, 0)
    b = smb.try_acquire_for_reading(0, 1)
    assert smb.release_as_free(a)
    assert smb.bitmap(0) == (2 << LAYOUT_SHIFT) | (BEING_READ << 2)
    assert smb.release_as_free(b)
    assert smb.bitmap(0) == 0


# -- hostile input on the service side --------------------------------------------------


def _publish(smb: SharedMemoryABI, page: int, bitmap: int) -> None:
    """What a hostile producer can do: write any bitmap into its page header."""
    store32(smb.buf, page * smb.page_size, bitmap)


@pytest.mark.parametrize("page", [-1, -(2**40), 16, 17, 2**31, 2**64])
def test_reading_rejects_page_out_of_range(page):
    _, smb = make_abi()
    for p in range(smb.num_pages):
        _publish(smb, p, (1 << LAYOUT_SHIFT) | COMPLETE)
    assert smb.try_acquire_for_reading(page, 0) is None
    assert all(smb.bitmap(p) == (1 << LAYOUT_SHIFT) | COMPLETE for p in range(smb.num_pages))


@pytest.mark.parametrize(
    "layout, chunk",
    [(1, 1), (1, 13), (2, 2), (3, 4), (4, 7), (5, 14), (5, 15), (5, -1), (1, 2**40)],
)
def test_reading_rejects_chunk_out_of_range_for_the_layout(layout, chunk):
    _, smb = make_abi()
    bitmap = (layout << LAYOUT_SHIFT) | ALL_CHUNKS_MASK  # every state bit "complete"
    _publish(smb, 0, bitmap)
    assert smb.try_acquire_for_reading(0, chunk) is None
    assert smb.bitmap(0) == bitmap


@pytest.mark.parametrize("layout", [0, 6, 7])
def test_reading_rejects_invalid_layouts(layout):
    _, smb = make_abi()
    bitmap = (layout << LAYOUT_SHIFT) | ALL_CHUNKS_MASK
    _publish(smb, 0, bitmap)
    for chunk in range(14):
        assert smb.try_acquire_for_reading(0, chunk) is None
    assert smb.bitmap(0) == bitmap


def test_reading_rejects_reserved_bit():
    _, smb = make_abi()
    bitmap = RESERVED_BIT | (1 << LAYOUT_SHIFT) | COMPLETE
    _publish(smb, 0, bitmap)
    assert smb.try_acquire_for_reading(0, 0) is None
    assert smb.bitmap(0) == bitmap


@pytest.mark.parametrize("state", [FREE, BEING_WRITTEN, BEING_READ])
def test_reading_rejects_chunk_not_complete(state):
    _, smb = make_abi()
    bitmap = (3 << LAYOUT_SHIFT) | (COMPLETE << 2) | state  # chunk 1 complete, chunk 0 not
    _publish(smb, 0, bitmap)
    assert smb.try_acquire_for_reading(0, 0) is None
    assert smb.bitmap(0) == bitmap
    assert smb.try_acquire_for_reading(0, 1) is not None  # the complete neighbour is fine


def _read_one(smb: SharedMemoryABI, layout: int, chunk: int) -> ChunkRef:
    _publish(smb, 0, (layout << LAYOUT_SHIFT) | (COMPLETE << (2 * chunk)))
    ref = smb.try_acquire_for_reading(0, chunk)
    assert ref is not None
    return ref


@pytest.mark.parametrize("new_layout", [0, 1, 3, 4, 5, 6, 7])
def test_release_as_free_gives_up_when_the_layout_changed(new_layout):
    _, smb = make_abi()
    ref = _read_one(smb, 2, 0)
    # the producer re-partitions the page under the service, keeping chunk 0's bits
    hostile = (new_layout << LAYOUT_SHIFT) | (BEING_READ << 0) | (COMPLETE << 2)
    _publish(smb, 0, hostile)
    assert smb.release_as_free(ref) is False
    assert smb.bitmap(0) == hostile


@pytest.mark.parametrize("state", [FREE, BEING_WRITTEN, COMPLETE])
def test_release_as_free_gives_up_when_the_state_changed(state):
    _, smb = make_abi()
    ref = _read_one(smb, 3, 2)
    hostile = (3 << LAYOUT_SHIFT) | (state << 4)
    _publish(smb, 0, hostile)
    assert smb.release_as_free(ref) is False
    assert smb.bitmap(0) == hostile


u32 = st.integers(0, 0xFFFFFFFF)
index = st.one_of(st.integers(-3, 20), st.integers(-(2**70), 2**70))


@st.composite
def bitmaps(draw) -> int:
    """Any u32, half of the time built from fields so valid pages are common too."""
    if draw(st.booleans()):
        return draw(u32)
    layout = draw(st.integers(0, 7))
    states = draw(st.lists(st.integers(0, 3), min_size=14, max_size=14))
    reserved = draw(st.integers(0, 7)) == 0
    value = (layout << LAYOUT_SHIFT) | (RESERVED_BIT if reserved else 0)
    for k, state in enumerate(states):
        value |= state << (2 * k)
    return value


def _valid_for_reading(bitmap: int, page: int, chunk: int, num_pages: int) -> bool:
    n = abi.LAYOUT_CHUNKS[(bitmap >> 28) & 7]
    return (
        0 <= page < num_pages
        and 0 <= chunk < n
        and not bitmap & RESERVED_BIT
        and chunk_state(bitmap, chunk) == COMPLETE
    )


@given(
    bitmap=bitmaps(),
    page=st.one_of(st.integers(0, 3), st.integers(0, 3), index),
    chunk=st.one_of(st.integers(0, 1), st.integers(0, 3), st.integers(0, 13), index),
    page_size=st.sampled_from(abi.PAGE_SIZES),
    plausible=st.booleans(),
)
def test_try_acquire_for_reading_never_raises(bitmap, page, chunk, page_size, plausible):
    if plausible:  # a well-formed header with this chunk complete, so both outcomes occur
        layout = 1 + (bitmap >> LAYOUT_SHIFT) % 5
        bitmap = (bitmap & ALL_CHUNKS_MASK) | (layout << LAYOUT_SHIFT)
        if 0 <= chunk < 14:
            bitmap = with_chunk_state(bitmap, chunk, COMPLETE)
    _, smb = make_abi(size=4 * page_size, page_size=page_size)
    target = page if 0 <= page < smb.num_pages else 1
    _publish(smb, target, bitmap)
    before = bytes(smb.buf)
    ref = smb.try_acquire_for_reading(page, chunk)
    if _valid_for_reading(bitmap, page, chunk, smb.num_pages):
        event("acquired")
        assert ref is not None
        layout = layout_of(bitmap)
        size = chunk_size_for(page_size, layout)
        assert ref == ChunkRef(page, chunk, page * page_size + 8 + chunk * size, size)
        assert page * page_size + 8 <= ref.offset
        assert ref.offset + ref.size <= (page + 1) * page_size
        assert smb.bitmap(page) == with_chunk_state(bitmap, chunk, BEING_READ)
    else:
        assert ref is None
        assert bytes(smb.buf) == before, "a refused acquire must not write anything"


@given(
    layout=st.integers(1, 5),
    chunk=st.integers(0, 13),
    hostile=bitmaps(),
    keep_layout=st.booleans(),
    keep_state=st.booleans(),
    page_size=st.sampled_from(abi.PAGE_SIZES),
)
def test_release_as_free_never_raises_for_any_bitmap(
    layout, chunk, hostile, keep_layout, keep_state, page_size
):
    chunk %= abi.LAYOUT_CHUNKS[layout]
    if keep_layout:  # other chunks changed, the layout did not
        hostile = (hostile & ~abi.LAYOUT_MASK) | (layout << LAYOUT_SHIFT)
    if keep_state:
        hostile = with_chunk_state(hostile, chunk, BEING_READ)
    _, smb = make_abi(size=2 * page_size, page_size=page_size)
    ref = _read_one(smb, layout, chunk)
    _publish(smb, 0, hostile)  # whatever the producer wrote meanwhile
    ok = smb.release_as_free(ref)
    consistent = (
        chunk_size_for(page_size, layout_of(hostile)) == ref.size
        and chunk_state(hostile, chunk) == BEING_READ
    )
    assert ok is consistent
    event(f"freed={ok}")
    if ok:
        new = with_chunk_state(hostile, chunk, FREE)
        assert smb.bitmap(0) == (0 if new & ALL_CHUNKS_MASK == 0 else new)
    else:
        assert smb.bitmap(0) == hostile
    # the zeroed header is inside the chunk the service owned, never elsewhere
    assert not any(smb.buf[page_size:]), "the other page was touched"


@given(pages=st.lists(bitmaps(), min_size=4, max_size=4), chunks=st.lists(index, max_size=8))
def test_service_scan_over_hostile_pages_never_raises(pages, chunks):
    _, smb = make_abi(size=16 * KiB, page_size=4 * KiB)
    for p, b in enumerate(pages):
        _publish(smb, p, b)
    for p in range(-1, 5):
        for c in chunks:
            ref = smb.try_acquire_for_reading(p, c)
            if ref is not None:
                assert smb.release_as_free(ref) in (True, False)
