"""The compiled fast path of TraceWriter.write_packet (shm/_writer.c) against its
pure-Python twin (shm/writer_core.py): the same packet stream written through
each, into two fresh in-process SMBs served the same way, gives byte-identical
SMBs, identical commit batches (chunks, patches, flushes) and identical writer
counters. Also the C API the SDK's C code calls (try_write, state_invalid).
"""

from __future__ import annotations

import ctypes
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shm import native
from shm.abi import MAX_PACKETS_PER_CHUNK, SharedMemoryABI, resolve_geometry
from shm.arbiter import SharedMemoryArbiter
from shm.commits import CommitBatch
from shm.region import InProcessRegion, MemfdRegion
from shm.writer import BufferExhaustedPolicy, PyTraceWriter, TraceWriter, TraceWriterMethods

PAGE = 4096
_compiled = native.compiled("shm._writer")
needs_c = pytest.mark.skipif(_compiled is None, reason="shm._writer not built or pure forced")


class Twin:
    """One writer on its own SMB, with a service that frees committed chunks only
    when told to (so that the SMB fills and the writer drops) or when it stalls."""

    def __init__(self, writer_type: type[TraceWriterMethods], pages: int, layout: int, policy):
        geometry = resolve_geometry(pages * PAGE, PAGE)
        self.region = InProcessRegion(geometry.size)
        self.abi = SharedMemoryABI(self.region.buf, geometry)
        self.batches: list[tuple] = []
        self.committed: list[tuple[int, int]] = []
        self.arbiter = SharedMemoryArbiter(
            self.abi, self.on_commit, sleep=lambda _s: self.free(), layout=layout
        )
        self.writer = self.arbiter.create_trace_writer(1, policy, writer_type)

    def on_commit(self, batch: CommitBatch) -> None:
        self.batches.append(
            (
                list(batch.chunks_to_move),
                [
                    (p.target_buffer, p.writer_id, p.chunk_id, list(p.patches), p.has_more_patches)
                    for p in batch.chunks_to_patch
                ],
                batch.flush_request_id,
                list(batch.writers_flushed),
            )
        )
        self.committed += [(m.page, m.chunk) for m in batch.chunks_to_move]

    def free(self) -> None:
        for page, chunk in self.committed:
            ref = self.abi.try_acquire_for_reading(page, chunk)
            assert ref is not None and self.abi.release_as_free(ref)
        self.committed.clear()

    def state(self) -> tuple:
        w = self.writer
        return (
            bytes(self.region.buf),
            self.batches,
            w.dropped_packets,
            w.dropped_bytes,
            w.incremental_state_invalid,
            (w._wptr, w._end, w._fast_limit, w._finished, w._hdr_word, w._hdr_hi),
            # what _write_chunks' turn-overs change on the Python side
            (w._chunk, w._chunk_id, w._next_chunk_id, w._flags, w._pos, w._in_packet),
            (w._frag_size_off, w._frag_start, w._dropping, w.closed),
        )


def nested_packet(writer, rnd: random.Random, size: int) -> None:
    """A packet streamed with protozero: its size fields may become patches."""
    packet = writer.new_packet()
    packet.varint(8, size)
    with packet.begin_nested(900) as outer:
        outer.bytes_field(1, rnd.randbytes(size))
    packet.end()


def apply(twin: Twin, op: tuple, room: int) -> None:
    w, kind = twin.writer, op[0]
    rnd = random.Random(op[-1])
    if kind == "write":
        w.write_packet(rnd.randbytes(op[1]))
    elif kind == "fit":  # exactly the room left, or a few bytes either side of it
        w.write_packet(rnd.randbytes(max(0, room + op[1])))
    elif kind == "many":  # enough to fill chunks to MAX_PACKETS_PER_CHUNK
        for i in range(op[1]):
            w.write_packet(bytes([i & 0xFF]) * (i % 2))
    elif kind == "nested":
        nested_packet(w, rnd, op[1])
    elif kind == "request_flush":
        w.request_flush()
    elif kind == "flush":
        w.flush()
    elif kind == "free":
        twin.free()
    elif kind == "invalidate":
        w.incremental_state_invalid = bool(op[1])


def ops(chunk: int):
    seed = st.integers(0, 2**32)
    return st.lists(
        st.one_of(
            st.tuples(st.just("write"), st.integers(0, 3 * chunk), seed),
            st.tuples(st.just("write"), st.integers(3 * chunk, 12 * chunk), seed),  # turn-overs
            st.tuples(st.just("write"), st.integers(0, 300), seed),
            st.tuples(st.just("fit"), st.integers(-6, 3), seed),
            st.tuples(st.just("many"), st.integers(1, 40), seed),
            st.tuples(st.just("many"), st.integers(1000, MAX_PACKETS_PER_CHUNK + 3), seed),
            st.tuples(st.just("nested"), st.integers(0, 2 * chunk), seed),
            st.tuples(st.sampled_from(["request_flush", "flush", "free"]), seed),
            st.tuples(st.just("invalidate"), st.booleans(), seed),
        ),
        max_size=40,
    )


@needs_c
@settings(max_examples=100, deadline=None)
@given(
    layout=st.integers(1, 5),
    policy=st.sampled_from([BufferExhaustedPolicy.DROP, BufferExhaustedPolicy.STALL_THEN_DROP]),
    stream=ops(PAGE // 2),
)
def test_c_and_pure_writers_leave_identical_smbs_and_commits(layout, policy, stream):
    c_twin = Twin(TraceWriter, 4, layout, policy)
    py_twin = Twin(PyTraceWriter, 4, layout, policy)
    assert type(c_twin.writer).__mro__[2] is _compiled.WriterCore
    for op in stream:
        room = c_twin.writer._end - c_twin.writer._wptr - 4
        apply(c_twin, op, room)
        apply(py_twin, op, room)
        assert c_twin.state() == py_twin.state(), op
    c_twin.writer.close()
    py_twin.writer.close()
    assert c_twin.state() == py_twin.state()


@needs_c
def test_a_packet_of_128_bytes_or_more_that_fits_takes_the_fast_path_as_the_slow_path_frames_it():
    twin = Twin(TraceWriter, 4, 1, BufferExhaustedPolicy.DROP)
    w = twin.writer
    w.write_packet(b"first")  # the slow path: the first-packet mark goes out
    data = bytes(range(256)) * 2
    before = w._wptr
    w.write_packet(data)
    assert w._wptr == before + 4 + len(data)
    assert bytes(twin.region.buf[before : before + 4]) == bytes(
        [0x80 | (len(data) & 0x7F), 0x80 | (len(data) >> 7), 0x80, 0]
    )
    assert w._finished == 2


def _api():
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    pointers = ctypes.cast(
        get(_compiled._C_API, b"shm._writer._C_API"), ctypes.POINTER(ctypes.c_void_p)
    )
    try_write = ctypes.PYFUNCTYPE(
        ctypes.c_int, ctypes.py_object, ctypes.c_char_p, ctypes.c_ssize_t
    )(pointers[0])
    state_invalid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object)(pointers[1])
    return try_write, state_invalid


@needs_c
def test_the_c_api_writes_what_write_packet_writes_and_declines_the_slow_cases():
    try_write, state_invalid = _api()
    c_twin = Twin(TraceWriter, 4, 1, BufferExhaustedPolicy.DROP)
    py_twin = Twin(PyTraceWriter, 4, 1, BufferExhaustedPolicy.DROP)
    assert try_write(c_twin.writer, b"x", 1) == 0  # no chunk yet
    for twin in (c_twin, py_twin):
        twin.writer.write_packet(b"first")
    for i, n in enumerate([0, 1, 127, 128, 300]):
        data = bytes([i]) * n
        assert try_write(c_twin.writer, data, n) == 1
        py_twin.writer.write_packet(data)
    assert c_twin.state() == py_twin.state()
    c_twin.writer.request_flush()
    assert try_write(c_twin.writer, b"x", 1) == 0  # the slow path serves the flush
    assert try_write(object(), b"x", 1) == 0
    assert state_invalid(c_twin.writer) == 1  # a new writer's state
    c_twin.writer.incremental_state_invalid = False
    assert state_invalid(c_twin.writer) == 0
    assert state_invalid(py_twin.writer) == -1


@needs_c
def test_a_closed_writer_lets_its_region_close_and_never_writes_into_the_smb():
    twin = Twin(TraceWriter, 4, 1, BufferExhaustedPolicy.DROP)
    w = twin.writer
    for i in range(50):
        w.write_packet(bytes([i]) * 40)
    w.close()
    backing = twin.region.buf.obj
    snapshot = bytes(backing)
    twin.region.close()  # no BufferError: the closed writer holds no view of it
    w.write_packet(b"late" * 40)
    try_write, _ = _api()
    assert try_write(w, b"late", 4) == 0
    assert w.dropped_packets == 1
    assert bytes(backing) == snapshot


@needs_c
def test_a_writer_that_outlives_its_unmapped_region_never_touches_the_memory():
    """A region closed (unmapped) under a writer nobody closed: the C fast path
    declines, the slow path fails in Python (ValueError), nothing crashes."""
    geometry = resolve_geometry(4 * PAGE, PAGE)
    region = MemfdRegion.create(geometry.size)
    abi = SharedMemoryABI(region.buf, geometry)
    arbiter = SharedMemoryArbiter(abi, lambda batch: None, sleep=lambda s: None)
    w = arbiter.create_trace_writer(1)
    w.write_packet(b"x" * 10)
    w.write_packet(b"y" * 10)  # on the fast path
    region.close()  # no BufferError: the writer holds no export of the SMB
    try_write, _ = _api()
    assert try_write(w, b"z" * 10, 10) == 0
    with pytest.raises(ValueError):
        w.write_packet(b"z" * 10)
    assert w.closed  # the slow path gave the writer up; later writes are dropped
    dropped = w.dropped_packets
    w.write_packet(b"z" * 10)
    assert w.dropped_packets == dropped + 1


@pytest.mark.parametrize("writer_type", [TraceWriter, PyTraceWriter])
def test_a_large_packet_turns_each_chunk_over_with_one_arbiter_call(writer_type):
    """The per-chunk cost of a large packet: one arbiter.turn_over per chunk it
    runs past, no acquire_chunk/return_chunk, in the C twin as in the pure one;
    and a turn-over the arbiter refuses (no free chunk) leaves the packet to
    the general path, which drops it and marks the next."""
    twin = Twin(writer_type, 8, 1, BufferExhaustedPolicy.DROP)
    calls: list[str] = []
    arbiter = twin.arbiter
    for name in ("turn_over", "acquire_chunk", "return_chunk"):
        real = getattr(arbiter, name)

        def counted(*args, _real=real, _name=name):
            calls.append(_name)
            return _real(*args)

        setattr(arbiter, name, counted)
    w = twin.writer
    w.write_packet(b"x" * 10)  # takes the first chunk
    calls.clear()
    chunk_payload = PAGE - 8 - 8  # page and chunk headers
    room = w._end - w._wptr - 4  # after the fragment's size field
    w.write_packet(bytes(range(256)) * ((room + 4 * (chunk_payload - 4)) // 256 + 1))
    assert calls == ["turn_over"] * 5  # it ends in the 5th chunk after the first
    twin.free()
    assert w.dropped_packets == 0
    w.write_packet(b"y" * (20 * chunk_payload))  # more than the SMB holds: dropped
    assert calls.count("turn_over") > 5 and w.dropped_packets == 1
    twin.free()
    w.write_packet(b"z" * 10)
    w.flush()
    assert w.dropped_packets == 1 and w.incremental_state_invalid


def test_a_writer_abandoned_during_a_turn_over_behaves_alike_in_c_and_pure():
    """A signal handler that shuts tracing down runs inside arbiter.turn_over (it
    is Python): the C turn-over, like _install, goes on in the SMB, never in the
    scratch chunk abandon() switched to, and both twins end in the same state."""
    states = []
    for writer_type in (TraceWriter, PyTraceWriter):
        twin = Twin(writer_type, 8, 1, BufferExhaustedPolicy.DROP)
        w, real = twin.writer, twin.arbiter.turn_over

        def abandoning(*args, _w=w, _real=real):
            ref = _real(*args)
            _w.abandon()
            return ref

        twin.arbiter.turn_over = abandoning
        w.write_packet(b"x" * 10)
        w.write_packet(b"y" * 3 * PAGE)
        w.write_packet(b"z" * 10)  # closed: dropped
        states.append(twin.state())
    assert states[0] == states[1]
    assert states[0][2] == 1  # the packet after the abandon was dropped
