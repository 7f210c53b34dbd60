"""TraceBuffer.clone_read_only and empty_like: Perfetto's CloneReadOnly (the
copies behind CloneSession, transfer_on_clone and clear_before_clone)."""

from __future__ import annotations

import dataclasses

from shm.abi import FIRST_PACKET_CONTINUES as FIRST
from shm.abi import LAST_PACKET_CONTINUES as LAST
from shm.trace_buffer import LOSS_PRESENT, LOSS_READ_GAP, BufferStats, FillPolicy, TraceBuffer
from tests.test_trace_buffer import KB_PACKET, blob, commit, data_of, f4, loss_of, read_all


def filled(size=64 * 1024, policy=FillPolicy.RING_BUFFER) -> TraceBuffer:
    tb = TraceBuffer(size, policy)
    for i in range(5):
        commit(tb, 1, i, f4(blob(f"a{i}", KB_PACKET)))
        commit(tb, 2, i, f4(blob(f"b{i}", KB_PACKET)))
    return tb


def test_a_clone_reads_the_same_packets_and_leaves_the_source_as_it_was():
    source = filled()
    clone = source.clone_read_only()
    expected = data_of(read_all(filled()))
    assert data_of(read_all(clone)) == expected
    assert data_of(read_all(source)) == expected  # the clone's read took nothing from it
    assert read_all(clone) == []  # reads of the clone are destructive too


def test_a_clone_has_the_sources_stats_with_the_read_counters_reset():
    source = filled()
    commit(source, 3, 0, f4(blob("x", 10)))
    read_all(source)
    commit(source, 1, 5, f4(blob("late", KB_PACKET)))
    clone = source.clone_read_only()
    want = dataclasses.replace(
        source.stats, bytes_read=0, chunks_read=0, readaheads_succeeded=0, readaheads_failed=0
    )
    assert clone.stats == want
    assert source.stats.chunks_read == 11  # the source's own counters stay
    assert data_of(read_all(clone)) == [blob("late", KB_PACKET)]  # what was read is gone


def test_a_clone_is_read_only_and_the_source_goes_on():
    source = filled()
    clone = source.clone_read_only()
    assert clone.read_only and not source.read_only
    commit(clone, 1, 5, f4(b"ignored"))
    assert not clone.try_patch_chunk(7, 1, 4, [(0, b"\0\0\0\0")], False)
    commit(source, 1, 5, f4(b"kept"))
    assert clone.stats.chunks_discarded == 1 and clone.stats.patches_failed == 1
    assert b"ignored" not in data_of(read_all(clone))
    assert data_of(read_all(source))[-1] == b"kept"


def test_a_clone_keeps_pending_loss_and_split_packets_and_the_sequence_continues():
    source = TraceBuffer(64 * 1024)
    commit(source, 1, 0, f4(b"first"))
    commit(source, 1, 2, f4(b"after a gap"))  # chunk 1 never came: READ_GAP
    commit(source, 2, 0, f4(b"begin"), flags=LAST)
    clone = source.clone_read_only()
    commit(source, 2, 1, f4(b"-end"), flags=FIRST)  # the source only
    packets = read_all(clone)
    assert data_of(packets) == [b"first", b"after a gap"]  # writer 2's packet is incomplete
    assert loss_of(packets)[1] == LOSS_PRESENT | LOSS_READ_GAP
    assert b"begin-end" in data_of(read_all(source))


def test_a_clone_of_a_wrapped_ring_reads_oldest_first():
    source = TraceBuffer(16 * 1024)
    for i in range(40):
        commit(source, 1, i, f4(blob(f"p{i:02}", KB_PACKET)))
    assert source.stats.write_wrap_count > 0
    assert data_of(read_all(source.clone_read_only())) == data_of(read_all(source))


def test_a_discard_buffer_that_latched_stays_latched_in_its_clone():
    source = TraceBuffer(8 * 1024, FillPolicy.DISCARD)
    for i in range(12):
        commit(source, 1, i, f4(blob(f"p{i:02}", KB_PACKET)))
    clone = source.clone_read_only()
    assert clone.fill_policy is FillPolicy.DISCARD
    assert clone.stats.chunks_discarded == source.stats.chunks_discarded > 0
    assert data_of(read_all(clone)) == data_of(read_all(source))


def test_empty_like_has_the_size_and_policy_and_nothing_else():
    source = filled(policy=FillPolicy.DISCARD)
    fresh = source.empty_like()
    assert source.has_data and not fresh.has_data and not fresh.read_only
    assert fresh.fill_policy is FillPolicy.DISCARD
    assert fresh.stats == BufferStats(buffer_size=source.stats.buffer_size)
    assert read_all(fresh) == []


def test_an_empty_buffer_clones_to_an_empty_buffer():
    clone = TraceBuffer(4096).clone_read_only()
    assert read_all(clone) == [] and not clone.has_data
