"""Replies stay within a frame whatever peers registered (reports.py, from values):
counts saturate at 2^64-1, the service state is cut to its budget with
`truncated` set and each producer's data sources represented, lists of names end
with "... and N more". The same bounds against real processes are in
tests/test_hostile_limits.py."""

from __future__ import annotations

from actors.core import reports
from actors.core.producers import U64_MAX, ProducerEntry, saturating_add
from protos import tracebus_ipc_pb2 as ipc
from shm.trace_buffer import BufferStats


def producer(pid: int, sources: int, name_length: int = 200) -> ProducerEntry:
    entry = ProducerEntry(pid, b"id%d" % pid, f"p{pid}", pid, 1000)
    for i in range(sources):
        name = f"{pid}.{i}.".ljust(name_length, "n")
        entry.data_sources[name] = ipc.DataSourceDescriptor(name=name)
    return entry


def test_saturating_add_stops_at_u64_max() -> None:
    assert saturating_add(U64_MAX - 1, 1) == U64_MAX
    assert saturating_add(U64_MAX, U64_MAX) == U64_MAX
    assert saturating_add(2, 3) == 5


def test_trace_stats_holds_counts_past_u64() -> None:
    report = reports.BufferReport(BufferStats(chunks_written=U64_MAX + 5), 2 * U64_MAX)
    stats = reports.trace_stats(
        reports.ServiceTotals(0, 0, 0, 0, 0, 0, U64_MAX + 1, 0), [report], None
    )
    assert stats.chunks_discarded == U64_MAX
    assert stats.buffer_stats[0].chunks_written == U64_MAX
    assert stats.buffer_stats[0].trace_writer_packet_loss == U64_MAX


def test_a_state_within_budget_is_whole() -> None:
    producers = [producer(1, 3), producer(2, 2)]
    state = reports.service_state(producers, [], 0)
    assert not state.truncated
    assert [(d.producer_id, d.descriptor.name[:4]) for d in state.data_sources] == [
        (1, "1.0."), (2, "2.0."), (1, "1.1."), (2, "2.1."), (1, "1.2."),
    ]  # fmt: skip


def test_a_state_past_its_budget_is_cut_fairly() -> None:
    hog, small = producer(1, 5000), producer(2, 3)
    budget = 100_000
    state = reports.service_state([hog, small], [], 0, budget=budget)
    assert state.truncated
    assert state.ByteSize() <= budget
    assert {p.id for p in state.producers} == {1, 2}
    assert sum(d.producer_id == 2 for d in state.data_sources) == 3
    assert 400 < len(state.data_sources) < 500


def test_name_lists_end_with_how_many_more() -> None:
    names = [f"{i:05d}".ljust(100, "x") for i in range(1000)]
    kept = reports.bounded_names(names, budget=10_000)
    assert kept[:-1] == names[: len(kept) - 1]
    assert kept[-1] == f"... and {1000 - len(kept) + 1} more"
    assert reports.bounded_names(names[:3], budget=10_000) == names[:3]
    reply = ipc.EnableTracingResponse(stop_timed_out=names * 10)
    reports.bound_name_lists(reply)
    assert reply.ByteSize() <= reports.NAME_LIST_BUDGET + 100
    assert reply.stop_timed_out[-1].startswith("... and ")
