"""A writer never dies of someone else's bytes: when the page bitmap of the
chunk it holds is changed under it (the SMB is the producer's own memory, any
code of the process may scribble on it), the chunk is given up as lost, its
packets are counted as dropped, the next packet that lands carries
previous_packet_dropped, and the app thread carries on: in the compiled and
the pure-Python writer alike, with byte-identical results.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shm._atomics import store32

from shm import native
from shm.abi import BEING_WRITTEN, COMPLETE, FREE, SharedMemoryABI, resolve_geometry
from shm.arbiter import SharedMemoryArbiter
from shm.commits import CommitBatch
from shm.region import InProcessRegion
from shm.writer import BufferExhaustedPolicy, PyTraceWriter, TraceWriter, TraceWriterMethods

PAGE = 4096
WRITERS = [TraceWriter, PyTraceWriter]
_compiled = native.compiled("shm._writer")
needs_c = pytest.mark.skipif(_compiled is None, reason="shm._writer not built or pure forced")
PREVIOUS_PACKET_DROPPED = b"\xd0\x02\x81\x02"  # field 42 as the writer appends it


class Rig:
    """One writer on a small SMB, a service stand-in that moves out whatever is
    COMPLETE (tolerating a scribbled bitmap, as the real service does), and a
    scribbler that overwrites page bitmaps."""

    def __init__(self, writer_type: type[TraceWriterMethods], pages: int = 4, layout: int = 1):
        geometry = resolve_geometry(pages * PAGE, PAGE)
        self.region = InProcessRegion(geometry.size)
        self.abi = SharedMemoryABI(self.region.buf, geometry)
        self.moved: list[bytes] = []  # payloads of chunks the service got
        self.batches: list[tuple] = []
        self.arbiter = SharedMemoryArbiter(
            self.abi, self.on_commit, sleep=lambda _s: None, layout=layout
        )
        self.writer = self.arbiter.create_trace_writer(1, BufferExhaustedPolicy.DROP, writer_type)

    def on_commit(self, batch: CommitBatch) -> None:
        self.batches.append((list(batch.chunks_to_move), len(batch.chunks_to_patch)))
        for move in batch.chunks_to_move:
            ref = self.abi.try_acquire_for_reading(move.page, move.chunk)
            if ref is None:
                continue  # scribbled since: the service skips it too
            self.moved.append(bytes(self.abi.buf[ref.offset : ref.offset + ref.size]))
            self.abi.release_as_free(ref)

    def scribble_own_chunk(self, state: int) -> None:
        """Set the state of the chunk the writer holds, keeping the rest of the bitmap."""
        chunk = self.writer._chunk
        if chunk is None:
            return
        off = chunk.page * PAGE
        bitmap = self.abi.bitmap(chunk.page)
        shift = chunk.chunk * 2
        store32(self.abi.buf, off, (bitmap & ~(3 << shift)) | (state << shift))

    def scribble_page(self, page: int, value: int) -> None:
        store32(self.abi.buf, (page % self.abi.num_pages) * PAGE, value)

    def state(self) -> tuple:
        w = self.writer
        return (
            bytes(self.region.buf),
            self.batches,
            self.moved,
            w.dropped_packets,
            w.dropped_bytes,
            w.incremental_state_invalid,
            (w._wptr, w._end, w._fast_limit, w._finished, w._chunk, w._next_chunk_id),
            (w._dropping, w._in_packet, w.closed),
        )


@pytest.mark.parametrize("writer_type", WRITERS)
@pytest.mark.parametrize("state", [FREE, COMPLETE])
def test_a_chunk_taken_away_between_packets_is_counted_and_the_next_packet_flagged(
    writer_type, state
):
    rig = Rig(writer_type)
    w = rig.writer
    for i in range(5):
        w.write_packet(b"a" * 20 + bytes([i]))
    rig.scribble_own_chunk(state)
    w.flush()  # returns the chunk: it is not BEING_WRITTEN any more
    assert w.dropped_packets == 5 and w.dropped_bytes >= 5 * 21
    w.write_packet(b"after")
    w.flush()
    assert w.incremental_state_invalid
    assert any(b"after" + PREVIOUS_PACKET_DROPPED in chunk for chunk in rig.moved)


@pytest.mark.parametrize("writer_type", WRITERS)
@pytest.mark.parametrize("state", [FREE, COMPLETE])
def test_a_chunk_taken_away_inside_a_large_packet_drops_that_packet_only(writer_type, state):
    rig = Rig(writer_type, pages=8)
    w = rig.writer
    w.write_packet(b"before")
    rig.scribble_own_chunk(state)
    w.write_packet(b"L" * (3 * PAGE))  # runs past the chunk: the turn-over finds it lost
    assert w.dropped_packets == 2  # "before" went with the chunk, the large one after it
    w.write_packet(b"next")
    w.flush()
    assert any(b"next" + PREVIOUS_PACKET_DROPPED in chunk for chunk in rig.moved)
    assert not any(b"L" * 100 in chunk for chunk in rig.moved)  # no torn continuation


@pytest.mark.parametrize("writer_type", WRITERS)
def test_a_chunk_taken_away_inside_a_nested_packet_drops_it_and_its_patches(writer_type):
    rig = Rig(writer_type, pages=8)
    w = rig.writer
    packet = w.new_packet()
    with packet.begin_nested(900) as outer:
        outer.bytes_field(1, b"n" * 100)
        rig.scribble_own_chunk(FREE)
        outer.bytes_field(2, b"m" * (2 * PAGE))  # a turn-over while a size is open
    packet.end()
    assert w.dropped_packets == 1
    w.write_packet(b"next")
    w.flush()
    # the sequence's first packet was the lost one: its flag comes too
    assert any(b"next\xb8\x05\x01" + PREVIOUS_PACKET_DROPPED in chunk for chunk in rig.moved)


def _apply(rig: Rig, op: tuple) -> None:
    kind, arg, seed = op
    w = rig.writer
    rnd = random.Random(seed)
    if kind == "write":
        w.write_packet(rnd.randbytes(arg))
    elif kind == "nested":
        packet = w.new_packet()
        with packet.begin_nested(900) as outer:
            outer.bytes_field(1, rnd.randbytes(arg))
        packet.end()
    elif kind == "own":
        rig.scribble_own_chunk(arg)
    elif kind == "page":
        rig.scribble_page(arg, rnd.getrandbits(32))
    elif kind == "flush":
        w.flush()


scribbled_ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 3 * PAGE), st.integers(0, 2**32)),
        st.tuples(st.just("write"), st.integers(0, 200), st.integers(0, 2**32)),
        st.tuples(st.just("nested"), st.integers(0, 2 * PAGE), st.integers(0, 2**32)),
        st.tuples(
            st.just("own"), st.sampled_from([FREE, BEING_WRITTEN, COMPLETE, 2]), st.integers(0, 0)
        ),  # fmt: skip
        st.tuples(st.just("page"), st.integers(0, 7), st.integers(0, 2**32)),
        st.tuples(st.just("flush"), st.integers(0, 0), st.integers(0, 0)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(layout=st.integers(1, 5), stream=scribbled_ops)
def test_property_no_scribble_makes_a_writer_raise_and_both_twins_agree(layout, stream):
    rigs = [Rig(t, pages=4, layout=layout) for t in (WRITERS if _compiled else WRITERS[1:])]
    for op in stream:
        for rig in rigs:
            _apply(rig, op)  # never raises
        if len(rigs) == 2:
            assert rigs[0].state() == rigs[1].state(), op
    for rig in rigs:
        rig.writer.close()
    if len(rigs) == 2:
        assert rigs[0].state() == rigs[1].state()
