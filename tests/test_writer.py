"""The producer side in one process: TraceWriter + arbiter against a simple oracle."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from shm.abi import (
    CHUNK_HEADER,
    FIRST_PACKET_CONTINUES,
    LAST_PACKET_CONTINUES,
    MAX_PACKETS_PER_CHUNK,
    NEEDS_PATCHING,
    SharedMemoryABI,
    chunk_state,
    resolve_geometry,
    unpack_packets,
)
from shm.arbiter import SharedMemoryArbiter
from shm.commits import CommitBatch
from shm.packets import OK, parse_fragments_untrusted
from shm.region import InProcessRegion
from shm.writer import MAX_STALLS, BufferExhaustedPolicy, SMBExhaustedError
from tests.smb_oracle import Oracle

FIRST_MARK = b"\xb8\x05\x01"  # first_packet_on_sequence = true
DROP_MARK = b"\xd0\x02\x81\x02"  # previous_packet_dropped = 257


class Rig:
    """An SMB, an arbiter and an oracle service that frees chunks on commit
    (or holds them, to simulate a slow service)."""

    def __init__(self, pages: int = 8, page_size: int = 4096, layout: int = 1, hold=False):
        self.geometry = resolve_geometry(pages * page_size, page_size)
        self.region = InProcessRegion(self.geometry.size)
        self.abi = SharedMemoryABI(self.region.buf, self.geometry)
        self.oracle = Oracle(self.abi)
        self.hold = hold
        self.held: list[CommitBatch] = []
        self.sleeps: list[float] = []
        self.arbiter = SharedMemoryArbiter(
            self.abi, self.on_commit, sleep=self.sleeps.append, layout=layout
        )

    def on_commit(self, batch: CommitBatch) -> None:
        if self.hold:
            self.held.append(batch)
        else:
            self.oracle.on_commit(batch)

    def release_held(self) -> None:
        self.hold = False
        for batch in self.held:
            self.oracle.on_commit(batch)
        self.held.clear()

    def packets(self, writer) -> tuple[list[bytes], int]:
        return self.oracle.packets(writer.writer_id)

    def all_free(self) -> bool:
        return all(self.abi.bitmap(p) == 0 for p in range(self.abi.num_pages))


def test_packet(i: int, size: int) -> bytes:
    p = pb.TracePacket()
    p.timestamp = 1000 + i
    p.for_testing.counter = i
    p.for_testing.str = "x" * size
    return p.SerializeToString()


test_packet.__test__ = False  # a helper, not a test


def strip_first(packets: list[bytes]) -> list[bytes]:
    assert packets[0].endswith(FIRST_MARK)
    return [packets[0][: -len(FIRST_MARK)], *packets[1:]]


def test_small_packets_round_trip_and_first_packet_mark():
    rig = Rig()
    w = rig.arbiter.create_trace_writer(7)
    sent = [test_packet(i, i % 40) for i in range(2000)]
    for data in sent:
        w.write_packet(data)
    w.flush()
    got, aborted = rig.packets(w)
    assert aborted == 0
    assert strip_first(got) == sent
    assert pb.TracePacket.FromString(got[0]).first_packet_on_sequence
    assert {c.target_buffer for c in rig.oracle.chunks} == {7}
    assert rig.all_free()


@pytest.mark.parametrize("layout", [1, 2, 3, 4, 5])
def test_every_page_layout_round_trips(layout):
    rig = Rig(pages=4, layout=layout)
    w = rig.arbiter.create_trace_writer(1, BufferExhaustedPolicy.STALL)
    sent = [test_packet(i, (i * 37) % 700) for i in range(400)]
    for data in sent:
        w.write_packet(data)
    w.flush()
    assert strip_first(rig.packets(w)[0]) == sent
    assert rig.all_free()


def test_packets_larger_than_the_smb_split_with_consecutive_ids():
    rig = Rig(pages=4)  # 16 KiB SMB
    w = rig.arbiter.create_trace_writer(1, BufferExhaustedPolicy.STALL)
    sent = [test_packet(i, 50_000 + i) for i in range(3)]
    for data in sent:
        w.write_packet(data)
    w.flush()
    got, _ = rig.packets(w)
    assert strip_first(got) == sent
    both = FIRST_PACKET_CONTINUES | LAST_PACKET_CONTINUES
    middle = [c.count for c in rig.oracle.chunks if c.flags == both]
    assert middle.count(1) >= 3 * 10  # each packet spans > 12 chunks
    assert set(middle) <= {1, 2}  # 2: one packet ends and the next begins
    ids = [c.chunk_id for c in rig.oracle.chunks]
    assert ids == list(range(len(ids)))


def test_nested_messages_across_chunks_are_patched():
    rig = Rig(pages=8)
    w = rig.arbiter.create_trace_writer(3, BufferExhaustedPolicy.STALL)
    expected = []
    for i in range(5):
        pkt = w.new_packet()
        pkt.varint(8, 99 + i)
        with pkt.begin_nested(900) as test_event:  # for_testing
            test_event.varint(3, i)
            with test_event.begin_nested(5) as payload:  # TestEvent.payload
                payload.string(1, "s" * (3000 * i + 10))  # repeated str
                payload.varint(3, i)  # remaining_nesting_depth
            test_event.string(1, "tail")
        pkt.end()
        ref = pb.TracePacket()
        ref.timestamp = 99 + i
        ref.for_testing.counter = i
        ref.for_testing.payload.str.append("s" * (3000 * i + 10))
        ref.for_testing.payload.remaining_nesting_depth = i
        ref.for_testing.str = "tail"
        expected.append(ref)
    w.flush()
    got, _ = rig.packets(w)
    parsed = [pb.TracePacket.FromString(b) for b in got]
    parsed[0].ClearField("first_packet_on_sequence")
    assert parsed == expected
    patched = [c for c in rig.oracle.chunks if c.flags & LAST_PACKET_CONTINUES]
    assert patched, "the test must cross chunk boundaries"


def test_patch_has_more_patches_while_an_outer_size_is_open():
    batches: list[CommitBatch] = []
    rig = Rig(pages=8)
    rig.arbiter._on_commit = lambda b: (batches.append(b), rig.oracle.on_commit(b))
    w = rig.arbiter.create_trace_writer(1, BufferExhaustedPolicy.STALL)
    pkt = w.new_packet()
    outer = pkt.begin_nested(900)
    inner = outer.begin_nested(5)
    inner.string(1, "a" * 5000)  # both size fields stay behind in chunk 0
    inner.end()  # the outer size is still open here
    rig.arbiter.commit()
    patches = [p for b in batches for p in b.chunks_to_patch]
    assert patches == []  # the outer (earlier) field is not filled yet: nothing sent
    outer.string(1, "b" * 10)
    pkt.end()
    w.flush()
    patches = [p for b in batches for p in b.chunks_to_patch]
    assert [(p.chunk_id, len(p.patches), p.has_more_patches) for p in patches] == [(0, 2, False)]
    assert rig.oracle.chunks[0].flags & NEEDS_PATCHING == 0  # the oracle cleared it
    got, _ = rig.packets(w)
    assert pb.TracePacket.FromString(got[0]).for_testing.payload.str == ["a" * 5000]


def test_inflated_count_keeps_finished_packets_scrapable():
    rig = Rig()
    w = rig.arbiter.create_trace_writer(1)
    sent = [test_packet(i, 10) for i in range(5)]
    for data in sent:
        w.write_packet(data)
    ref = w._chunk
    chunk_id, writer_id, packets = CHUNK_HEADER.unpack_from(rig.abi.buf, ref.offset)
    count, flags = unpack_packets(packets)
    assert (chunk_id, writer_id, count, flags) == (0, w.writer_id, 6, 0)
    assert chunk_state(rig.abi.bitmap(ref.page), ref.chunk) == 1  # still BEING_WRITTEN
    payload = rig.abi.buf[ref.offset + 8 : ref.offset + ref.size]
    bounds, status = parse_fragments_untrusted(payload, 0, len(payload), count - 1)
    assert status == OK
    frags = [bytes(payload[bounds[i] : bounds[i + 1]]) for i in range(0, len(bounds), 2)]
    assert strip_first(frags) == sent


def test_returned_inflated_chunk_ends_with_an_empty_fragment():
    rig = Rig()
    w = rig.arbiter.create_trace_writer(1)
    w.write_packet(b"\x08\x01")
    w.write_packet(b"\x08\x02")
    w.flush()
    (chunk,) = rig.oracle.chunks
    assert chunk.count == 3
    bounds, status = parse_fragments_untrusted(chunk.payload, 0, len(chunk.payload), 3)
    assert status == OK and bounds[-1] == bounds[-2]  # the last fragment is empty


def test_packet_exactly_filling_a_chunk_gets_no_inflation_byte():
    rig = Rig()
    w = rig.arbiter.create_trace_writer(1)
    w.write_packet(b"\x08\x01")  # first packet: 2 bytes + first-packet mark + 4-byte length
    used = 4 + 2 + len(FIRST_MARK)
    room = 4088 - 8 - used - 4  # chunk payload minus what is used minus the next length
    w.write_packet(b"\x0a" + bytes([0x80 | (room - 3) & 0x7F, (room - 3) >> 7]) + b"z" * (room - 3))
    assert w._wptr == w._end
    w.flush()
    (chunk,) = rig.oracle.chunks
    assert chunk.count == 2


def test_at_most_1022_packets_per_chunk():
    rig = Rig()
    w = rig.arbiter.create_trace_writer(1)
    for _ in range(MAX_PACKETS_PER_CHUNK + 5):
        w.write_packet(b"")
    w.flush()
    counts = [c.count for c in rig.oracle.chunks]
    assert counts[0] == MAX_PACKETS_PER_CHUNK + 1  # 1022 packets + the empty slot
    got, _ = rig.packets(w)
    assert len(got) == MAX_PACKETS_PER_CHUNK + 5 - (MAX_PACKETS_PER_CHUNK + 5 - 1)  # non-empty


def test_drop_policy_voids_the_split_packet_and_marks_the_next():
    rig = Rig(pages=4, hold=True)  # the service frees nothing for now
    w = rig.arbiter.create_trace_writer(1, BufferExhaustedPolicy.DROP)
    w.write_packet(test_packet(0, 10))
    w.write_packet(test_packet(1, 20_000))  # needs 5 chunks, 4 exist: abandoned
    assert (w.dropped_packets, w.dropped_bytes) == (1, len(test_packet(1, 20_000)))
    for i in range(2, 60):
        w.write_packet(test_packet(i, 30))  # into the scratch chunk
    assert w.dropped_packets == 59
    rig.release_held()
    i = 60
    while w._dropping and i < 200:  # recovery is tried each time the scratch chunk fills
        w.write_packet(test_packet(i, 5))
        i += 1
    assert not w._dropping
    w.write_packet(test_packet(i, 5))
    w.flush()
    got, aborted = rig.packets(w)
    assert aborted == 1
    assert got[0] == test_packet(0, 10) + FIRST_MARK
    assert got[1] == test_packet(i - 1, 5) + DROP_MARK
    assert pb.TracePacket.FromString(got[1]).previous_packet_dropped == 257
    assert got[2:] == [test_packet(i, 5)]
    assert w.dropped_packets == i - 2  # everything between packet 0 and packet i - 1
    assert rig.all_free()


def test_drop_policy_recovery_waits_for_the_scratch_chunk_to_fill():
    rig = Rig(pages=2, hold=True)
    w = rig.arbiter.create_trace_writer(1, BufferExhaustedPolicy.DROP)
    while w.dropped_packets == 0:
        w.write_packet(test_packet(1, 100))
    rig.release_held()
    w.write_packet(test_packet(2, 100))  # scratch has not wrapped yet: still dropped
    assert w.dropped_packets == 2


def test_stall_commits_and_sleeps_then_recovers():
    rig = Rig(pages=2)
    freed_on_sleep = []

    def sleep(seconds):
        freed_on_sleep.append(seconds)
        rig.release_held()

    rig.arbiter.sleep = sleep
    rig.hold = True
    w = rig.arbiter.create_trace_writer(1, BufferExhaustedPolicy.STALL)
    sent = [test_packet(i, 3000) for i in range(10)]
    for data in sent:
        w.write_packet(data)
        rig.hold = True
    w.flush()
    rig.release_held()
    assert strip_first(rig.packets(w)[0]) == sent
    assert freed_on_sleep and freed_on_sleep[0] == 0
    assert w.dropped_packets == 0


def test_stall_gives_up_after_max_stalls_and_raises():
    rig = Rig(pages=2, hold=True)
    w = rig.arbiter.create_trace_writer(1, BufferExhaustedPolicy.STALL)
    with pytest.raises(SMBExhaustedError):
        for i in range(100):
            w.write_packet(test_packet(i, 3000))
    assert len(rig.sleeps) == MAX_STALLS
    assert 25 < sum(rig.sleeps) < 35  # Perfetto's ~29 s schedule, on the fake clock
    assert w.dropped_packets == 1
    rig.release_held()
    w.write_packet(test_packet(999, 5))  # usable again, and says it lost data
    w.flush()
    got, _ = rig.packets(w)
    assert got[-1] == test_packet(999, 5) + DROP_MARK


def test_stall_then_drop_drops_after_max_stalls():
    rig = Rig(pages=2, hold=True)
    w = rig.arbiter.create_trace_writer(1, BufferExhaustedPolicy.STALL_THEN_DROP)
    for i in range(5):
        w.write_packet(test_packet(i, 3000))
    assert len(rig.sleeps) == MAX_STALLS  # once: a dropping writer never stalls
    assert w.dropped_packets >= 1


def test_chunk_id_wraps():
    rig = Rig(pages=4)
    w = rig.arbiter.create_trace_writer(1, BufferExhaustedPolicy.STALL)
    w._next_chunk_id = 0xFFFFFFFE
    sent = [test_packet(i, 6000) for i in range(2)]
    for data in sent:
        w.write_packet(data)
    w.flush()
    assert [c.chunk_id for c in rig.oracle.chunks] == [0xFFFFFFFE, 0xFFFFFFFF, 0]
    assert strip_first(rig.packets(w)[0]) == sent


def test_writer_ids_are_unique_and_reused_after_release():
    rig = Rig()
    writers = [rig.arbiter.create_trace_writer(1) for _ in range(5)]
    assert [w.writer_id for w in writers] == [1, 2, 3, 4, 5]
    writers[1].close()
    assert rig.arbiter.create_trace_writer(1).writer_id == 6  # round robin first


def test_threads_write_concurrently():
    rig = Rig(pages=16)
    lock = threading.Lock()
    inner = rig.oracle.on_commit

    def locked(batch):
        with lock:
            inner(batch)

    rig.arbiter._on_commit = locked
    writers = [
        rig.arbiter.create_trace_writer(t + 1, BufferExhaustedPolicy.STALL) for t in range(4)
    ]
    sent = {w.writer_id: [test_packet(i, (i * 13) % 900) for i in range(800)] for w in writers}

    def run(w):
        for data in sent[w.writer_id]:
            w.write_packet(data)
        w.flush()

    threads = [threading.Thread(target=run, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for w in writers:
        assert strip_first(rig.packets(w)[0]) == sent[w.writer_id]
    assert rig.all_free()


@given(
    sizes=st.lists(
        st.one_of(st.integers(0, 200), st.integers(3000, 5000), st.integers(10_000, 40_000)),
        min_size=1,
        max_size=30,
    ),
    page_size=st.sampled_from([4096, 8192]),
    flush_every=st.integers(1, 10),
)
def test_any_packet_sizes_round_trip(sizes, page_size, flush_every):
    rig = Rig(pages=4, page_size=page_size)
    w = rig.arbiter.create_trace_writer(1, BufferExhaustedPolicy.STALL)
    sent = [test_packet(i, n) for i, n in enumerate(sizes)]
    for i, data in enumerate(sent):
        w.write_packet(data)
        if i % flush_every == 0:
            w.flush()
    w.flush()
    assert strip_first(rig.packets(w)[0]) == sent
    assert rig.all_free()


def test_a_write_after_close_never_takes_a_chunk_under_the_released_id():
    """A thread that writes past its instance's stop must not write under a writer id
    that a new writer may hold by then: its packets are dropped and counted."""
    rig = Rig()
    old = rig.arbiter.create_trace_writer(1)
    old.write_packet(test_packet(0, 10))
    old.close()
    chunks = len(rig.oracle.chunks)
    for i in range(50):
        old.write_packet(test_packet(i, 300))  # big enough to need chunks
    old.flush()
    old.close()  # twice: harmless
    assert len(rig.oracle.chunks) == chunks  # no chunk taken, none committed
    got, aborted = rig.packets(old)
    assert (strip_first(got), aborted) == ([test_packet(0, 10)], 0)
    assert old.dropped_packets == 50
    assert rig.all_free()


def test_a_packet_interrupted_by_an_exception_gives_the_writer_up_but_not_the_smb():
    """KeyboardInterrupt inside a packet: the writer abandons its chunk (no later
    write can continue it) and drops from then on; what it completed before and
    other writers' packets are intact, and the exception reaches the caller."""
    rig = Rig()
    w, other = rig.arbiter.create_trace_writer(1), rig.arbiter.create_trace_writer(1)
    w.write_packet(test_packet(0, 10))
    w.flush()
    real_write = w.write
    calls = []

    def interrupted(data):
        calls.append(len(data))
        raise KeyboardInterrupt

    w.write = interrupted
    with pytest.raises(KeyboardInterrupt):
        w.write_packet(test_packet(1, 500))  # the slow path
    w.write = real_write
    assert calls and w.closed
    for i in range(20):
        w.write_packet(test_packet(i, 300))
        other.write_packet(test_packet(i, 300))
    w.flush()
    other.flush()
    assert w.dropped_packets == 20
    got, aborted = rig.packets(w)
    assert (strip_first(got), aborted) == ([test_packet(0, 10)], 0)
    got, aborted = rig.packets(other)
    assert (strip_first(got), aborted) == ([test_packet(i, 300) for i in range(20)], 0)


def test_an_interrupt_between_two_steps_of_a_chunk_change_gives_the_writer_up():
    """KeyboardInterrupt right after the chunk was returned, before the writer
    forgot it (no packet open): later writes must not return it again."""
    rig = Rig()
    w = rig.arbiter.create_trace_writer(1)
    w.write_packet(test_packet(0, 10))
    real = rig.arbiter.return_chunk

    def returned_then_interrupted(ref, target_buffer):
        real(ref, target_buffer)
        raise KeyboardInterrupt

    real_turn_over = rig.arbiter.turn_over

    def turned_over_then_interrupted(ref, *args):
        real_turn_over(ref, *args)  # ref went back, the new chunk is taken
        raise KeyboardInterrupt

    # A chunk goes back between packets (return_chunk) or inside a split packet (turn_over).
    rig.arbiter.return_chunk = returned_then_interrupted
    rig.arbiter.turn_over = turned_over_then_interrupted
    with pytest.raises(KeyboardInterrupt):
        for i in range(100):  # until the chunk is full and goes back
            w.write_packet(test_packet(i, 300))
    rig.arbiter.return_chunk = real
    rig.arbiter.turn_over = real_turn_over
    assert w.closed
    dropped = w.dropped_packets
    for i in range(20):
        w.write_packet(test_packet(i, 300))  # no "was not BEING_WRITTEN"
    w.flush()
    assert w.dropped_packets == dropped + 20


def test_salvage_gives_an_abandoned_writers_chunk_and_id_back():
    """Many interrupted writes (a Ctrl-C now and then in a long-lived app): each
    abandoned writer's chunk and id go back once its thread left the write, so the
    SMB never fills with them; the packets it completed reach the service."""
    rig = Rig(pages=4)
    for round_ in range(50):  # far more than the SMB's chunks
        w = rig.arbiter.create_trace_writer(1)
        w.write_packet(test_packet(round_, 10))
        real = w.write

        def interrupted(data):
            raise KeyboardInterrupt

        w.write = interrupted
        with pytest.raises(KeyboardInterrupt):
            w.write_packet(test_packet(1, 5000))  # larger than a chunk: the slow path
        w.write = real
        w.salvage()
        w.salvage()  # once is enough
        got, _ = rig.packets(w)
        assert strip_first(got) == [test_packet(round_, 10)]
    assert rig.all_free()
