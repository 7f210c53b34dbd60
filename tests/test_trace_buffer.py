"""shm.trace_buffer: Perfetto TraceBuffer V2 semantics, rule by rule.

Each test builds chunk payloads by hand (fragments framed with
shm.packets.encode_size4, or a 1-byte length), copies them in, reads back, and
checks the exact packet bytes, loss bits and every BufferStats counter.
"""

from __future__ import annotations

import dataclasses
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shm.abi import FIRST_PACKET_CONTINUES as FIRST
from shm.abi import LAST_PACKET_CONTINUES as LAST
from shm.abi import NEEDS_PATCHING, PACKET_DROPPED_SIZE
from shm.packets import (
    OK,
    encode_size4,
    fragment_at,
    measure_fragments_untrusted,
    parse_fragments_untrusted,
    slice_fragments_untrusted,
)
from shm.trace_buffer import (
    LOSS_BROKEN_CHAIN,
    LOSS_CORRUPTED,
    LOSS_ORPHAN,
    LOSS_OVERWRITE,
    LOSS_PRESENT,
    LOSS_READ_GAP,
    LOSS_REASSEMBLY_GAP,
    LOSS_WRITER_ABORT,
    BufferStats,
    FillPolicy,
    ReadPacket,
    TraceBuffer,
)

PRODUCER, UID, PID = 7, 1000, 4242
BOTH = FIRST | LAST


def f4(data: bytes) -> bytes:
    """A fragment with the writers' redundant 4-byte length."""
    return encode_size4(len(data)) + data


def f1(data: bytes) -> bytes:
    """A fragment with a 1-byte length (short whole packets)."""
    assert len(data) < 0x80
    return bytes([len(data)]) + data


def commit(tb, writer, chunk_id, *frags, flags=0, count=None, complete=True, pad=0, **who):
    """Copy a chunk made of `frags` (and `pad` trailing zero bytes) in."""
    payload = b"".join(frags) + bytes(pad)
    tb.copy_chunk_untrusted(
        who.get("producer", PRODUCER),
        who.get("uid", UID),
        who.get("pid", PID),
        writer,
        chunk_id,
        len(frags) if count is None else count,
        flags,
        complete,
        memoryview(payload),
    )


def read_all(tb) -> list[ReadPacket]:
    tb.begin_read()
    out = []
    while (packet := tb.read_next_packet()) is not None:
        out.append(packet)
    return out


def data_of(packets):
    return [p.data for p in packets]


def loss_of(packets):
    return [p.loss_flags for p in packets]


def expect_stats(tb, **nonzero):
    """Every counter: the given values, and 0 for all the others."""
    assert tb.stats == BufferStats(buffer_size=tb.stats.buffer_size, **nonzero)


def blob(tag: str, size: int) -> bytes:
    return (tag.encode() * size)[:size]


KB_PACKET = 1000  # f4(blob) = 1004 payload bytes -> a 1024-byte record


# -- one copy on ingest -----------------------------------------------------------------------


def test_a_chunk_is_copied_once_straight_from_shared_memory():
    """No intermediate copy of the payload: copying a 60 KiB chunk allocates
    next to nothing (bytes(payload) alone would be 60 KiB), and what is read
    back is the copy, not the producer's memory."""
    smb = bytearray(f4(blob("A", 60_000)) + f4(blob("B", 100)))
    tb = TraceBuffer(256 * 1024)
    commit(tb, 1, 0, b"")  # the sequence and its first record exist: only the copy is left
    read_all(tb)
    tracemalloc.start()
    try:
        tb.copy_chunk_untrusted(PRODUCER, UID, PID, 1, 1, 2, 0, True, memoryview(smb))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4096, peak
    smb[:] = bytes(len(smb))  # the producer reuses its chunk
    assert data_of(read_all(tb)) == [blob("A", 60_000), blob("B", 100)]


def test_a_producer_rewriting_its_chunk_during_the_copy_garbles_only_its_own_sequence(
    monkeypatch,
):
    """The one copy reads shared memory after measuring it: a hostile producer
    that changes its bytes in between (simulated right after the measurement)
    must not crash the buffer nor touch another producer's packets, through
    recommits, patches, partial reads and the final read."""
    import random

    import shm.trace_buffer as trace_buffer

    rnd = random.Random(7)
    shared: list[bytearray] = []  # the hostile chunk being copied, if any
    measure = trace_buffer.measure_fragments_untrusted

    def measure_then_race(data, count):
        measured = measure(data, count)
        for smb in shared:
            for _ in range(rnd.randrange(1, 8)):
                smb[rnd.randrange(len(smb))] = rnd.choice([0, 0x7F, 0x80, 0xFF, rnd.randrange(256)])
        return measured

    monkeypatch.setattr(trace_buffer, "measure_fragments_untrusted", measure_then_race)
    hostile = {"producer": PRODUCER + 1}
    for _trial in range(300):
        tb = TraceBuffer(1 << 20)  # no wrap: every honest packet must come back
        sent, got = [], []
        for i in range(rnd.randrange(5, 40)):
            pieces = [bytes([rnd.randrange(256)]) * rnd.randrange(1, 300) for _ in range(3)]
            payload = b"".join(f4(p) for p in pieces)
            if rnd.random() < 0.5:
                smb = bytearray(payload + bytes(rnd.randrange(64)))
                shared[:] = [smb]
                flags = rnd.choice([0, FIRST, LAST, BOTH, NEEDS_PATCHING])
                complete = rnd.random() < 0.8
                tb.copy_chunk_untrusted(
                    hostile["producer"], UID, PID, 7, i, 3, flags, complete, memoryview(smb)
                )
                if rnd.random() < 0.3:
                    patch = [(rnd.randrange(400), b"\x80\x80\x80\x00")]
                    tb.try_patch_chunk(hostile["producer"], 7, rnd.randrange(i + 1), patch, False)
            else:
                shared.clear()
                commit(tb, 1, len(sent) // 3, *(f4(p) for p in pieces))
                sent.extend(pieces)
            if rnd.random() < 0.3:
                tb.begin_read()
                got += [p.data for p in tb.read_packets(rnd.randrange(1, 3000))
                        if p.producer_id == PRODUCER]  # fmt: skip
        got += [p.data for p in read_all(tb) if p.producer_id == PRODUCER]
        assert got == sent


# -- construction and the stats snapshot -----------------------------------------------------


def test_size_rounds_up_to_4k_and_is_bounded():
    assert TraceBuffer(1).stats.buffer_size == 4096
    assert TraceBuffer(4097).stats.buffer_size == 8192
    assert TraceBuffer(8192).stats.buffer_size == 8192
    for bad in (0, -1, 1 << 32, (1 << 32) - 1):
        with pytest.raises(ValueError):
            TraceBuffer(bad)
    with pytest.raises(ValueError):
        TraceBuffer(4096, 3)


def test_stats_has_every_perfetto_buffer_stats_field_and_is_a_copy():
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    names = {f.name for f in pb.TraceStats.BufferStats.DESCRIPTOR.fields}
    assert {f.name for f in dataclasses.fields(BufferStats)} == names
    tb = TraceBuffer(4096)
    snapshot = tb.stats
    snapshot.abi_violations = 99
    expect_stats(tb)


def test_empty_buffer_reads_nothing():
    tb = TraceBuffer(4096)
    assert read_all(tb) == []
    assert tb.read_packets(1 << 20) == []
    expect_stats(tb)


# -- framing ------------------------------------------------------------------------------


def test_length_encodings_empty_fragments_and_the_inflation_byte():
    tb = TraceBuffer(4096)
    frags = (
        f1(b"one-byte length"),
        f4(b"four-byte length"),
        b"\x00",  # empty, 1-byte length
        encode_size4(0),  # empty, 4-byte length
        b"\x83\x00abc",  # a 2-byte varint is valid framing too
        b"\x82\x80\x00xy",  # and a 3-byte one
        f4(b""),
        b"\x00",  # the writer's inflation byte
    )
    commit(tb, 1, 0, *frags)
    packets = read_all(tb)
    assert data_of(packets) == [b"one-byte length", b"four-byte length", b"abc", b"xy"]
    assert loss_of(packets) == [0, 0, 0, 0]
    payload = sum(map(len, frags))
    record = (16 + payload + 15) & ~15
    expect_stats(tb, bytes_written=record, chunks_written=1, chunks_read=1, bytes_read=record)


def test_trailing_bytes_after_the_declared_fragments_are_not_copied():
    tb = TraceBuffer(4096)
    commit(tb, 1, 0, f4(b"abc"), pad=500)  # 7 bytes of fragments in a 507-byte payload
    assert data_of(read_all(tb)) == [b"abc"]
    expect_stats(tb, bytes_written=32, chunks_written=1, chunks_read=1, bytes_read=32)


def test_identities_are_per_sequence_and_trusted():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, f4(b"p1w1"), producer=1, uid=10, pid=100)
    commit(tb, 1, 0, f4(b"p2w1"), producer=2, uid=20, pid=200)
    commit(tb, 2, 0, f4(b"p1w2"), producer=1, uid=10, pid=101)
    # Later chunks keep the identity the sequence was created with.
    commit(tb, 1, 1, f4(b"p1w1 again"), producer=1, uid=99, pid=999)
    got = [(p.data, p.producer_id, p.writer_id, p.uid, p.pid) for p in read_all(tb)]
    assert got == [
        (b"p1w1", 1, 1, 10, 100),
        (b"p2w1", 2, 1, 20, 200),
        (b"p1w2", 1, 2, 10, 101),
        (b"p1w1 again", 1, 1, 10, 100),
    ]


def test_read_packets_stops_once_max_bytes_are_reached():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, *(f4(bytes([65 + i]) * 10) for i in range(6)))
    tb.begin_read()
    assert data_of(tb.read_packets(25)) == [b"A" * 10, b"B" * 10, b"C" * 10]
    assert data_of(tb.read_packets(0)) == [b"D" * 10]  # at least one
    assert data_of(tb.read_packets(1 << 20)) == [b"E" * 10, b"F" * 10]
    assert tb.read_packets(1 << 20) == []
    expect_stats(tb, bytes_written=112, chunks_written=1, chunks_read=1, bytes_read=112)


# -- header validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "writer, chunk_id, count, flags",
    [
        (0, 0, 1, 0),
        (32768, 0, 1, 0),
        (-1, 0, 1, 0),
        (1, -1, 1, 0),
        (1, 1 << 32, 1, 0),
        (1, 0, -1, 0),
        (1, 0, 1024, 0),
        (1, 0, 1, 64),
        (1, 0, 1, -1),
    ],
)
def test_bad_header_fields_are_abi_violations(writer, chunk_id, count, flags):
    tb = TraceBuffer(4096)
    tb.copy_chunk_untrusted(PRODUCER, UID, PID, writer, chunk_id, count, flags, True, f4(b"x"))
    assert read_all(tb) == []
    expect_stats(tb, abi_violations=1)


def test_oversized_payload_and_record_larger_than_the_buffer_are_rejected():
    tb = TraceBuffer(4096)
    tb.copy_chunk_untrusted(PRODUCER, UID, PID, 1, 0, 0, 0, True, bytes(0x10000))
    commit(tb, 1, 0, f4(bytes(4080)))  # 4084 + 16 bytes > 4096
    commit(tb, 1, 1, count=0, complete=False, pad=4081)  # a scrape reserves it all
    assert read_all(tb) == []
    expect_stats(tb, abi_violations=3)


def test_trusted_producer_id_must_be_valid():
    tb = TraceBuffer(4096)
    with pytest.raises(ValueError):
        tb.copy_chunk_untrusted(0, UID, PID, 1, 0, 1, 0, True, f4(b"x"))
    with pytest.raises(ValueError):
        tb.try_patch_chunk(1 << 16, 1, 0, [], False)


# -- malformed fragments, writer abort, corruption -------------------------------------------


def test_count_beyond_the_fragments_keeps_the_valid_ones_and_flags_corruption():
    tb = TraceBuffer(4096)
    commit(tb, 1, 0, f4(b"good"), f4(b"also good"), count=3)
    commit(tb, 1, 1, f4(b"next"), b"\x90")  # a length running past the payload
    commit(tb, 1, 2, f4(b"last"), b"\xff\xff\xff\xff\x01")  # a length longer than 4 bytes
    packets = read_all(tb)
    corrupt = LOSS_PRESENT | LOSS_CORRUPTED
    assert data_of(packets) == [b"good", b"also good", b"next", b"last"]
    assert loss_of(packets) == [corrupt, 0, 0, 0]  # pending until the next packet is read
    expect_stats(
        tb, abi_violations=3, chunks_written=3, bytes_written=112, chunks_read=3, bytes_read=112
    )


def test_writer_abort_sentinel_counts_loss_without_an_abi_violation():
    tb = TraceBuffer(4096)
    # The writer voids the length of the packet it abandons and returns the chunk.
    commit(tb, 1, 0, f4(b"kept"), encode_size4(PACKET_DROPPED_SIZE) + b"gone")
    commit(tb, 1, 1, f4(b"after"))
    packets = read_all(tb)
    assert data_of(packets) == [b"kept", b"after"]
    # As V2: the loss is pending on the sequence from the copy on, so the next
    # packet read carries it.
    assert loss_of(packets) == [LOSS_PRESENT | LOSS_WRITER_ABORT, 0]
    expect_stats(
        tb,
        trace_writer_packet_loss=1,
        chunks_written=2,
        bytes_written=64,
        chunks_read=2,
        bytes_read=64,
    )


def test_a_patch_that_breaks_a_length_is_reported_as_corruption():
    tb = TraceBuffer(4096)
    commit(tb, 1, 0, f4(b"first"), f4(b"second"), f4(b"third"))
    assert tb.try_patch_chunk(PRODUCER, 1, 0, [(9, b"\xff\xff\xff\xff")], False)
    packets = read_all(tb)
    assert data_of(packets) == [b"first"]  # the rest of the chunk is void
    commit(tb, 1, 1, f4(b"next chunk"))
    packets = read_all(tb)
    assert data_of(packets) == [b"next chunk"]
    assert loss_of(packets) == [LOSS_PRESENT | LOSS_CORRUPTED]
    # A corrupted chunk is never fully consumed, so it does not count as read.
    expect_stats(
        tb, patches_succeeded=1, chunks_written=2, bytes_written=80, chunks_read=1, bytes_read=32
    )


# -- ring buffer and discard -------------------------------------------------------------------


def test_ring_overwrites_the_oldest_and_reports_it():
    tb = TraceBuffer(4096)
    for i in range(5):
        commit(tb, 1, i, f4(blob(f"c{i}", KB_PACKET)))
    packets = read_all(tb)
    assert data_of(packets) == [blob(f"c{i}", KB_PACKET) for i in (1, 2, 3, 4)]
    assert loss_of(packets) == [LOSS_PRESENT | LOSS_OVERWRITE, 0, 0, 0]
    expect_stats(
        tb,
        bytes_written=5 * 1024,
        chunks_written=5,
        write_wrap_count=1,
        chunks_overwritten=1,
        bytes_overwritten=1024,
        chunks_read=4,
        bytes_read=4096,
    )


def test_eviction_takes_older_chunks_of_the_same_sequence_first():
    tb = TraceBuffer(4096)
    commit(tb, 1, 1, f4(blob("w1c1", KB_PACKET)))  # at 0
    commit(tb, 1, 0, f4(blob("w1c0", KB_PACKET)))  # at 1024, older: out of order
    commit(tb, 2, 0, f4(blob("w2c0", KB_PACKET)))
    commit(tb, 2, 1, f4(blob("w2c1", KB_PACKET)))
    commit(tb, 3, 0, f4(blob("w3c0", KB_PACKET)))  # evicts w1c1, so w1c0 before it
    commit(tb, 3, 1, f4(blob("w3c1", KB_PACKET)))  # lands on w1c0's padding
    packets = read_all(tb)
    assert [(p.writer_id, p.data[:4]) for p in packets] == [
        (2, b"w2c0"),
        (2, b"w2c1"),
        (3, b"w3c0"),
        (3, b"w3c1"),
    ]
    assert loss_of(packets) == [0, 0, 0, 0]
    expect_stats(
        tb,
        bytes_written=6 * 1024,
        chunks_written=6,
        chunks_committed_out_of_order=1,
        write_wrap_count=1,
        chunks_overwritten=2,
        bytes_overwritten=2048,
        padding_bytes_cleared=1024,
        chunks_read=4,
        bytes_read=4096,
    )
    commit(tb, 1, 2, f4(b"w1 again"))  # the loss waited for w1's next packet
    assert [(p.data, p.loss_flags) for p in read_all(tb)] == [
        (b"w1 again", LOSS_PRESENT | LOSS_OVERWRITE)
    ]


def test_partial_overwrite_leaves_padding_that_is_counted_when_cleared():
    tb = TraceBuffer(4096)
    for i in range(4):
        commit(tb, 1, i, f4(blob(f"c{i}", KB_PACKET)))
    commit(tb, 2, 0, f4(blob("big", 1516)))  # a 1536-byte record over two 1024 ones
    commit(tb, 2, 1, f4(blob("small", 492)))  # a 512-byte record over the padding
    packets = read_all(tb)
    assert data_of(packets) == [
        blob("c2", KB_PACKET),
        blob("c3", KB_PACKET),
        blob("big", 1516),
        blob("small", 492),
    ]
    assert loss_of(packets) == [LOSS_PRESENT | LOSS_OVERWRITE, 0, 0, 0]
    expect_stats(
        tb,
        bytes_written=4 * 1024 + 1536 + 512,
        chunks_written=6,
        write_wrap_count=1,
        chunks_overwritten=2,
        bytes_overwritten=2048,
        padding_bytes_written=512,
        padding_bytes_cleared=512,
        chunks_read=4,
        bytes_read=2048 + 1536 + 512,
    )


def test_wrap_clears_the_tail_and_records_are_never_split():
    tb = TraceBuffer(4096)
    for i in range(3):
        commit(tb, 1, i, f4(blob(f"c{i}", KB_PACKET)))  # wr = 3072
    assert data_of(read_all(tb)) == [blob(f"c{i}", KB_PACKET) for i in range(3)]
    commit(tb, 1, 3, f4(blob("c3", 1516)))  # 1536 > 1024 left: wrap
    assert data_of(read_all(tb)) == [blob("c3", 1516)]
    expect_stats(
        tb,
        bytes_written=3 * 1024 + 1536,
        chunks_written=4,
        write_wrap_count=1,
        padding_bytes_cleared=2048,  # records read are padding when overwritten
        padding_bytes_written=512,  # what is left of the second one
        chunks_read=4,
        bytes_read=3 * 1024 + 1536,
    )


def test_discard_latches_at_the_first_wrap_for_good():
    tb = TraceBuffer(4096, FillPolicy.DISCARD)
    for i in range(5):
        commit(tb, 1, i, f4(blob(f"c{i}", KB_PACKET)))
    assert data_of(read_all(tb)) == [blob(f"c{i}", KB_PACKET) for i in range(4)]
    commit(tb, 1, 5, f4(b"small"))  # everything was read, still discarded (V2)
    commit(tb, 2, 0, f4(b"other writer"))
    assert read_all(tb) == []
    expect_stats(
        tb, bytes_written=4096, chunks_written=4, chunks_discarded=3, chunks_read=4, bytes_read=4096
    )


# -- order, ids, gaps --------------------------------------------------------------------------


def test_out_of_order_commits_read_back_in_chunk_id_order():
    tb = TraceBuffer(8192)
    commit(tb, 1, 2, f4(b"w1 c2"))
    commit(tb, 2, 0, f4(b"w2 c0"))
    commit(tb, 1, 0, f4(b"w1 c0"))
    commit(tb, 1, 1, f4(b"w1 c1"))
    packets = read_all(tb)
    assert data_of(packets) == [b"w1 c0", b"w1 c1", b"w1 c2", b"w2 c0"]
    assert loss_of(packets) == [0, 0, 0, 0]
    expect_stats(
        tb,
        bytes_written=4 * 32,
        chunks_written=4,
        chunks_committed_out_of_order=2,
        chunks_read=4,
        bytes_read=4 * 32,
    )


def test_chunk_ids_wrap_around_zero():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, f4(b"X3"), f4(b"B"), flags=FIRST)  # committed before its predecessors
    commit(tb, 1, 0xFFFFFFFE, f4(b"A"), f4(b"X1"), flags=LAST)
    commit(tb, 1, 0xFFFFFFFF, f4(b"X2"), flags=BOTH)
    commit(tb, 1, 1, f4(b"C"))
    packets = read_all(tb)
    assert data_of(packets) == [b"A", b"X1X2X3", b"B", b"C"]
    assert loss_of(packets) == [0, 0, 0, 0]
    commit(tb, 1, 0xFFFFFFFF, f4(b"stale"))  # before the last one read, modulo 2**32
    commit(tb, 1, 2, f4(b"D"))
    assert data_of(read_all(tb)) == [b"D"]
    expect_stats(
        tb,
        bytes_written=5 * 32,
        chunks_written=5,
        chunks_committed_out_of_order=2,
        chunks_discarded=1,
        readaheads_succeeded=1,
        chunks_read=5,
        bytes_read=5 * 32,
    )


def test_read_gap_within_and_across_reads():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, f4(b"c0"))
    commit(tb, 1, 2, f4(b"c2"))  # chunk 1 never arrives
    packets = read_all(tb)
    assert data_of(packets) == [b"c0", b"c2"]
    assert loss_of(packets) == [0, LOSS_PRESENT | LOSS_READ_GAP]
    commit(tb, 1, 5, f4(b"c5"))
    commit(tb, 1, 6, f4(b"c6"))
    packets = read_all(tb)
    assert loss_of(packets) == [LOSS_PRESENT | LOSS_READ_GAP, 0]
    commit(tb, 1, 1, f4(b"late c1"))  # after chunk 6 was read: stale
    assert read_all(tb) == []
    expect_stats(
        tb,
        bytes_written=4 * 32,
        chunks_written=4,
        chunks_discarded=1,
        chunks_read=4,
        bytes_read=128,
    )


# -- reassembly ------------------------------------------------------------------------------


def test_reassembly_across_four_chunks():
    tb = TraceBuffer(8192)
    commit(tb, 1, 10, f4(b"A"), f4(b"P1-"), flags=LAST)
    commit(tb, 1, 11, f4(b"P2-"), flags=BOTH)
    commit(tb, 2, 0, f4(b"other"))
    commit(tb, 1, 12, f4(b"P3-"), flags=BOTH)
    commit(tb, 1, 13, f4(b"P4"), f4(b"B"), flags=FIRST)
    packets = read_all(tb)
    # Buffer order between sequences: B is in the last chunk, after "other".
    assert data_of(packets) == [b"A", b"P1-P2-P3-P4", b"other", b"B"]
    assert loss_of(packets) == [0, 0, 0, 0]
    expect_stats(
        tb,
        bytes_written=5 * 32,
        chunks_written=5,
        readaheads_succeeded=1,
        chunks_read=5,
        bytes_read=5 * 32,
    )


def test_missing_next_piece_stalls_only_its_sequence_until_it_arrives():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, f4(b"A"), f4(b"X1-"), flags=LAST)
    commit(tb, 1, 1, f4(b"X2-"), flags=BOTH)
    commit(tb, 2, 0, f4(b"other 1"))
    packets = read_all(tb)
    assert data_of(packets) == [b"A", b"other 1"]  # X waits for chunk 2
    commit(tb, 2, 1, f4(b"other 2"))
    assert data_of(read_all(tb)) == [b"other 2"]
    commit(tb, 1, 2, f4(b"X3"), f4(b"B"), flags=FIRST)
    packets = read_all(tb)
    assert data_of(packets) == [b"X1-X2-X3", b"B"]
    assert loss_of(packets) == [0, 0]
    expect_stats(
        tb,
        bytes_written=5 * 32,
        chunks_written=5,
        readaheads_failed=2,  # one per read generation that stalled
        readaheads_succeeded=1,
        chunks_read=5,
        bytes_read=5 * 32,
    )


def test_a_gap_in_the_middle_of_a_packet_drops_it():
    # V2 sorts chunks by id and treats any gap left as a loss (out-of-order
    # commits come in one batch, from one scrape, never across a read).
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, f4(b"A"), f4(b"X1-"), flags=LAST)
    commit(tb, 1, 2, f4(b"X3"), f4(b"B"), flags=FIRST)
    packets = read_all(tb)
    assert data_of(packets) == [b"A", b"B"]
    assert loss_of(packets) == [
        0,
        LOSS_PRESENT | LOSS_REASSEMBLY_GAP | LOSS_READ_GAP | LOSS_ORPHAN,
    ]
    commit(tb, 1, 1, f4(b"X2-"), flags=BOTH)  # too late
    assert read_all(tb) == []
    expect_stats(
        tb,
        bytes_written=64,
        chunks_written=2,
        chunks_discarded=1,
        readaheads_failed=1,
        chunks_read=2,
        bytes_read=64,
    )


def test_broken_chain_and_orphan_continuation():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, f4(b"A"), f4(b"X1-"), flags=LAST)
    commit(tb, 1, 1, f4(b"B"))  # does not continue X
    commit(tb, 2, 7, f4(b"tail of a lost packet"), f4(b"C"), flags=FIRST)
    packets = read_all(tb)
    assert data_of(packets) == [b"A", b"B", b"C"]
    assert loss_of(packets) == [0, LOSS_PRESENT | LOSS_BROKEN_CHAIN, LOSS_PRESENT | LOSS_ORPHAN]
    expect_stats(
        tb, bytes_written=112, chunks_written=3, readaheads_failed=1, chunks_read=3, bytes_read=112
    )


def test_an_empty_chunk_inside_a_packet_is_skipped():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, f4(b"X1-"), flags=LAST)
    commit(tb, 1, 1, flags=BOTH)  # no fragment at all
    commit(tb, 1, 2, f4(b"X3"), flags=FIRST)
    assert data_of(read_all(tb)) == [b"X1-X3"]
    # The empty chunk is erased without being "read": nothing in it was consumed.
    expect_stats(
        tb,
        bytes_written=3 * 32 - 16,
        chunks_written=3,
        readaheads_succeeded=1,
        chunks_read=2,
        bytes_read=64,
    )


# -- patches ------------------------------------------------------------------------------------


def patched_chunks(tb):
    """Chunk 0 ends with a packet whose 4 zero bytes at payload offset 13 wait
    for a patch; chunk 1 has the rest of it."""
    commit(tb, 1, 0, f4(b"A"), f4(b"X1" + bytes(4)), flags=LAST | NEEDS_PATCHING)
    commit(tb, 1, 1, f4(b"X2"), f4(b"B"), flags=FIRST)
    commit(tb, 2, 0, f4(b"other"))


def test_needs_patching_stalls_until_the_last_patch_arrives():
    tb = TraceBuffer(8192)
    patched_chunks(tb)
    assert data_of(read_all(tb)) == [b"A", b"other"]
    assert tb.try_patch_chunk(PRODUCER, 1, 0, [(11, b"\x81\x80")], True) is False
    assert tb.try_patch_chunk(PRODUCER, 1, 0, [(11, b"\x81\x80\x80\x00")], True)
    assert read_all(tb) == []  # more patches are coming
    assert tb.try_patch_chunk(PRODUCER, 1, 0, [], False)
    packets = read_all(tb)
    assert data_of(packets) == [b"X1\x81\x80\x80\x00X2", b"B"]
    assert loss_of(packets) == [0, 0]
    expect_stats(
        tb,
        bytes_written=96,
        chunks_written=3,
        patches_succeeded=1,
        patches_failed=1,
        readaheads_failed=2,
        readaheads_succeeded=1,
        chunks_read=3,
        bytes_read=96,
    )


def test_bad_patch_fails_the_rest_of_its_batch_and_keeps_earlier_ones():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, f4(b"a" * 20))  # payload 24 bytes
    ok = tb.try_patch_chunk(
        PRODUCER, 1, 0, [(4, b"PQRS"), (21, b"WXYZ"), (8, b"1234")], has_more_patches=False
    )
    assert ok is False
    for bad in ([(-1, b"wxyz")], [(0, b"abc")], [(0, b"abcde")]):
        assert tb.try_patch_chunk(PRODUCER, 1, 0, bad, False) is False
    assert tb.try_patch_chunk(PRODUCER, 1, 0, [(20, b"LAST")], False)  # the last 4 bytes
    assert data_of(read_all(tb)) == [b"PQRS" + b"a" * 12 + b"LAST"]
    # As V2, a failed batch counts one failure and none of its patches as succeeded.
    expect_stats(
        tb,
        bytes_written=48,
        chunks_written=1,
        patches_failed=4,
        patches_succeeded=1,
        chunks_read=1,
        bytes_read=48,
    )


def test_patch_for_a_chunk_that_is_gone_or_never_was():
    tb = TraceBuffer(4096)
    commit(tb, 1, 0, f4(b"x"))
    assert data_of(read_all(tb)) == [b"x"]
    assert not tb.try_patch_chunk(PRODUCER, 1, 0, [(0, b"abcd")], False)  # read: gone
    assert not tb.try_patch_chunk(PRODUCER, 1, 5, [(0, b"abcd")], False)  # unknown chunk
    assert not tb.try_patch_chunk(PRODUCER, 9, 0, [(0, b"abcd")], False)  # unknown writer
    assert not tb.try_patch_chunk(PRODUCER + 1, 1, 0, [(0, b"abcd")], False)  # other producer
    assert not tb.try_patch_chunk(PRODUCER, 0, 0, [(0, b"abcd")], False)  # invalid writer
    assert not tb.try_patch_chunk(PRODUCER, 1 << 16 | 1, 0, [(0, b"abcd")], False)
    assert not tb.try_patch_chunk(PRODUCER, 1, 1 << 32, [(0, b"abcd")], False)
    expect_stats(
        tb, bytes_written=32, chunks_written=1, patches_failed=7, chunks_read=1, bytes_read=32
    )


def test_evicting_a_chunk_that_waits_for_patches_reports_the_overwrite():
    tb = TraceBuffer(4096)
    commit(tb, 1, 0, f4(b"A"), f4(blob("X1", 995)), flags=LAST | NEEDS_PATCHING)  # 1024 bytes
    for i in range(3):
        commit(tb, 2, i, f4(blob(f"c{i}", KB_PACKET)))
    commit(tb, 1, 1, f4(b"X2"), f4(b"B"), flags=FIRST)  # wraps over chunk 0: no stall there
    packets = read_all(tb)
    assert [(p.data[:2], p.loss_flags) for p in packets] == [
        (b"c0", 0),
        (b"c1", 0),
        (b"c2", 0),
        (b"B", LOSS_PRESENT | LOSS_OVERWRITE | LOSS_ORPHAN),
    ]
    assert not tb.try_patch_chunk(PRODUCER, 1, 0, [(0, b"abcd")], False)
    expect_stats(
        tb,
        bytes_written=4 * 1024 + 32,
        chunks_written=5,
        write_wrap_count=1,
        chunks_overwritten=1,
        bytes_overwritten=1024,
        readaheads_failed=1,
        padding_bytes_written=992,
        patches_failed=1,
        chunks_read=4,
        bytes_read=3 * 1024 + 32,
    )


# -- scraping and recommits ----------------------------------------------------------------------


SCRAPED = (f4(b"A"), f4(b"B"), f4(b"C being written"))


def test_scraped_chunk_ignores_its_last_fragment_and_is_never_read_past():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, *SCRAPED, complete=False, flags=LAST | NEEDS_PATCHING, pad=100)
    commit(tb, 1, 1, f4(b"next chunk"))
    packets = read_all(tb)
    assert data_of(packets) == [b"A", b"B"]
    # The record reserves the whole scraped payload, so a commit can grow it;
    # what it holds was all read (V2 counts it), but it is not erased.
    reserved = (16 + sum(map(len, SCRAPED)) + 100 + 15) & ~15
    expect_stats(
        tb, bytes_written=reserved + 32, chunks_written=2, chunks_read=1, bytes_read=reserved
    )


def test_scrape_then_commit_rewrites_in_place():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, *SCRAPED, complete=False, pad=100)
    tb.begin_read()
    assert data_of(tb.read_packets(1)) == [b"A"]  # then stop reading
    commit(tb, 1, 0, *SCRAPED, pad=100)
    commit(tb, 1, 1, f4(b"D"))
    packets = read_all(tb)
    assert data_of(packets) == [b"B", b"C being written", b"D"]
    assert loss_of(packets) == [0, 0, 0]
    reserved = (16 + sum(map(len, SCRAPED)) + 100 + 15) & ~15
    expect_stats(
        tb,
        bytes_written=reserved + 32,
        chunks_written=2,
        chunks_rewritten=1,
        chunks_read=2,
        bytes_read=reserved + 32,
    )


def test_scrape_read_fully_then_commit_relocates_to_the_write_cursor():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, *SCRAPED, complete=False, pad=100)
    assert data_of(read_all(tb)) == [b"A", b"B"]
    commit(tb, 1, 0, *SCRAPED, pad=100)
    packets = read_all(tb)
    assert data_of(packets) == [b"C being written"]
    assert loss_of(packets) == [0]
    reserved = (16 + sum(map(len, SCRAPED)) + 100 + 15) & ~15
    moved = (16 + sum(map(len, SCRAPED)) + 15) & ~15
    expect_stats(
        tb,
        bytes_written=reserved + moved,
        chunks_written=2,
        chunks_relocated=1,
        chunks_read=2,
        bytes_read=reserved + moved,
    )


def test_recommit_with_equal_payload_is_skipped_and_completes_the_chunk():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, *SCRAPED, complete=False)
    commit(tb, 1, 0, *SCRAPED, complete=False)  # scraped again, nothing new
    commit(tb, 1, 0, *SCRAPED[:2])  # the writer had nothing more
    commit(tb, 1, 1, f4(b"D"))
    assert data_of(read_all(tb)) == [b"A", b"B", b"D"]
    reserved = (16 + sum(map(len, SCRAPED)) + 15) & ~15
    expect_stats(
        tb,
        bytes_written=reserved + 32,
        chunks_written=2,
        chunks_read=2,
        bytes_read=reserved + 32,
    )


@pytest.mark.parametrize(
    "frags, flags",
    [
        ((f4(b"A"),), 0),  # the payload shrinks
        (SCRAPED, 0),  # flags removed: the scrape said the first packet continues
        (SCRAPED + (f4(b"x" * 200),), FIRST),  # more than the reserved size
    ],
)
def test_recommits_that_shrink_drop_flags_or_outgrow_are_abi_violations(frags, flags):
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, *SCRAPED, complete=False, flags=FIRST, pad=100)
    commit(tb, 1, 0, *frags, flags=flags)
    packets = read_all(tb)
    assert data_of(packets) == [b"B"]  # A is an orphan; the scrape still stalls
    reserved = (16 + sum(map(len, SCRAPED)) + 100 + 15) & ~15
    expect_stats(
        tb,
        abi_violations=1,
        bytes_written=reserved,
        chunks_written=1,
        chunks_read=1,
        bytes_read=reserved,
    )


def test_a_complete_chunk_cannot_be_grown():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, f4(b"A"))
    commit(tb, 1, 0, f4(b"A"), f4(b"more"))
    assert data_of(read_all(tb)) == [b"A"]
    expect_stats(
        tb, abi_violations=1, bytes_written=32, chunks_written=1, chunks_read=1, bytes_read=32
    )


def test_an_evicted_scrape_is_readmitted_past_what_was_read():
    tb = TraceBuffer(4096)
    commit(tb, 1, 0, *SCRAPED, complete=False, pad=979)  # a 1024-byte record at 0
    assert data_of(read_all(tb)) == [b"A", b"B"]
    for i in range(3):
        commit(tb, 2, i, f4(blob(f"c{i}", KB_PACKET)))
    commit(tb, 2, 3, f4(b"c3"))  # wraps: the scrape, all read, is evicted
    commit(tb, 1, 0, *SCRAPED)  # the real commit finally arrives: C is new
    packets = read_all(tb)
    assert [(p.writer_id, p.data[:2], p.loss_flags) for p in packets] == [
        (2, b"c0", 0),
        (2, b"c1", 0),
        (2, b"c2", 0),
        (2, b"c3", 0),
        (1, b"C ", 0),
    ]
    commit(tb, 1, 0, *SCRAPED)  # once more, all of it read: skipped, nothing lost
    assert read_all(tb) == []
    expect_stats(
        tb,
        bytes_written=4 * 1024 + 32 + 48,
        chunks_written=6,
        write_wrap_count=1,
        padding_bytes_written=992 + 944,  # behind c3, then behind the re-admitted chunk
        padding_bytes_cleared=992,
        chunks_read=6,
        bytes_read=4 * 1024 + 32 + 48,
    )


def test_a_complete_chunk_scraped_read_then_committed_is_neither_lost_nor_doubled():
    """A flush that times out scrapes a chunk the producer completed but has not
    committed yet; a read takes it; then the producer's commit of it arrives. That
    is the same chunk again: skipped (Perfetto skips an identical recommit), not
    counted as discarded, and its packets are not read twice."""
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, f4(b"a"), f4(b"b"))  # the scrape of a COMPLETE chunk
    assert data_of(read_all(tb)) == [b"a", b"b"]
    commit(tb, 1, 0, f4(b"a"), f4(b"b"))  # its commit
    commit(tb, 1, 1, f4(b"c"))
    assert data_of(read_all(tb)) == [b"c"]
    assert tb.stats.chunks_discarded == 0
    commit(tb, 1, 0, f4(b"a"), f4(b"b"))  # older than the last one erased: stale
    assert tb.stats.chunks_discarded == 1


# -- reading semantics ---------------------------------------------------------------------------


def test_a_copy_during_a_read_ends_the_read_generation():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, f4(b"a"), f4(b"b"))
    tb.begin_read()
    assert data_of(tb.read_packets(1)) == [b"a"]
    commit(tb, 1, 1, f4(b"c"))
    assert tb.read_packets(1 << 20) == []
    assert data_of(read_all(tb)) == [b"b", b"c"]


def test_packets_read_ahead_by_read_next_packet_come_out_first():
    tb = TraceBuffer(8192)
    commit(tb, 1, 0, f4(b"a"), f4(b"b"))
    commit(tb, 2, 0, f4(b"c"))
    tb.begin_read()
    assert tb.read_next_packet().data == b"a"
    assert tb.stats.chunks_read == 2  # all read ahead
    commit(tb, 1, 1, f4(b"d"))  # ends the generation, not the packets read ahead
    assert tb.read_next_packet().data == b"b"
    tb.begin_read()
    assert data_of(tb.read_packets(1)) == [b"c"]
    assert data_of(tb.read_packets(1)) == [b"d"]
    assert tb.read_next_packet() is None


def test_packets_read_one_by_one_or_in_batches_are_the_same():
    def fill(tb):
        commit(tb, 1, 0, f4(b"A"), f4(b"X1-"), flags=LAST)
        commit(tb, 2, 0, *(f4(bytes([48 + i]) * i) for i in range(10)))
        commit(tb, 1, 1, f4(b"X2"), f4(b"B"), flags=FIRST)

    one, batch = TraceBuffer(8192), TraceBuffer(8192)
    fill(one)
    fill(batch)
    batch.begin_read()
    got = []
    while packets := batch.read_packets(7):
        got += packets
    assert got == read_all(one)
    assert one.stats == batch.stats


def test_empty_sequences_are_forgotten_oldest_first_beyond_1024():
    tb = TraceBuffer(1 << 20)
    for writer in range(1, 1201):
        commit(tb, writer, 0, f4(b"x"))
    assert len(read_all(tb)) == 1200
    commit(tb, 1, 1, f4(b"trigger"))  # 1199 empty sequences > 1152: collect
    assert len(tb._ring.seqs) == 1024 + 1
    commit(tb, 2, 0, f4(b"writer 2 was forgotten: chunk 0 is new again"))
    commit(tb, 1200, 0, f4(b"writer 1200 is remembered: stale"))
    assert data_of(read_all(tb)) == [b"trigger", b"writer 2 was forgotten: chunk 0 is new again"]
    assert tb.stats.chunks_discarded == 1


# -- the fast fragment parsers (shm.packets) agree with the reference parser -------------------


def _one_at_a_time(data, start):
    """Every fragment of data[start:], via the reference parser, one call each."""
    bounds, off = [], start
    while off < len(data):
        one, status = parse_fragments_untrusted(data, off, len(data), 1)
        if status != OK:
            return bounds, status
        bounds += one
        off = one[1]
    return bounds, OK


LENGTH_SHAPES = st.sampled_from(("short", "size4", "varint2", "varint3", "huge", "dropped"))


@st.composite
def payloads(draw):
    """Fragments framed every way a producer can frame them, then perhaps damaged."""
    out = bytearray()
    for body, shape in draw(st.lists(st.tuples(st.binary(max_size=140), LENGTH_SHAPES))):
        n = len(body)
        if shape == "short" and n < 0x80:
            out += bytes([n])
        elif shape == "varint2" and n < 1 << 14:
            out += bytes([n & 0x7F | 0x80, n >> 7])
        elif shape == "varint3":
            out += bytes([n & 0x7F | 0x80, (n >> 7) | 0x80, 0])
        elif shape == "huge":
            out += encode_size4(draw(st.integers(n, (1 << 28) - 2)))
        elif shape == "dropped":
            out += encode_size4(PACKET_DROPPED_SIZE)
        else:
            out += encode_size4(n)
        out += body
    for _ in range(draw(st.integers(0, 3))):  # damage
        if out:
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    return bytes(out[: draw(st.integers(0, len(out)))])


@settings(max_examples=500)
@given(payloads(), st.integers(0, 50), st.integers(0, 8))
def test_fast_parsers_agree_with_parse_fragments_untrusted(data, count, start):
    start = min(start, len(data))
    bounds, status = parse_fragments_untrusted(data, 0, len(data), count)
    assert measure_fragments_untrusted(data, count) == ((bounds[-1] if bounds else 0), status)

    bounds, status = _one_at_a_time(data, start)
    pieces, stop, last_hdr, got_status = slice_fragments_untrusted(data, start)
    assert got_status == status
    assert pieces == [data[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]
    assert stop == (bounds[-1] if bounds else start)
    assert last_hdr == (bounds[-3] if len(bounds) > 2 else start)

    for off in range(start, min(len(data), start + 12)):
        one, status = parse_fragments_untrusted(data, off, len(data), 1)
        want = (status, one[0], one[1]) if status == OK else (status, 0, 0)
        assert fragment_at(data, off, len(data)) == want
        # ... and nothing past `end` is looked at
        assert fragment_at(data + b"\x01" * 8, off, len(data)) == want
