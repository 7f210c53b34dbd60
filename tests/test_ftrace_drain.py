"""The linux.ftrace drain in one process: a fake instance serving pages captured on
this machine (tests/data/probes/ftrace/, see tests/ftrace_capture.py), the real
translator, a writer that keeps packets. No kernel, no threads, no sleeps."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from pathlib import Path
from typing import Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.ftrace_encode import FtraceTranslator
from actors.core.ftrace_format import parse_format, parse_header_page
from actors.probes_bus import PIDS
from actors.probes_ftrace import MAX_PAGES_PER_CPU_PER_PASS, _Drain

DATA = Path(__file__).parent / "data" / "probes" / "ftrace"
PAGE = 4096


def pages(name: str) -> list[bytes]:
    raw = (DATA / name).read_bytes()
    return [raw[i : i + PAGE] for i in range(0, len(raw), PAGE)]


def translator() -> FtraceTranslator:
    formats = [
        parse_format(p.read_text(), p.parent.name) for p in sorted((DATA / "format").glob("*/*"))
    ]
    return FtraceTranslator(
        parse_header_page((DATA / "header_page").read_text()), formats, compact_sched=False
    )


class FakeInstance:
    """What _Drain uses of an FtraceInstance: per-CPU queues of pages, and stats."""

    name = "tracebus-fake"
    read_errors = 0

    def __init__(self, per_cpu: dict[int, list[bytes]]) -> None:
        self.queues = {cpu: deque(p) for cpu, p in per_cpu.items()}
        self.reads: list[tuple[int, int]] = []

    def cpus(self) -> list[int]:
        return sorted(self.queues)

    def read_cpu(self, cpu: int, max_pages: int) -> list[bytes]:
        q = self.queues[cpu]
        out = [q.popleft() for _ in range(min(max_pages, len(q)))]
        self.reads.append((cpu, len(out)))
        return out

    def cpu_stats_text(self, cpu: int) -> str:
        return (DATA / f"stats_cpu{cpu}").read_text()


class KeptPackets:
    def __init__(self) -> None:
        self.packets: list[pb.TracePacket] = []

    def write_packet(self, data: bytes) -> None:
        self.packets.append(pb.TracePacket.FromString(data))


def drain(per_cpu: dict[int, list[bytes]], session: int = 0) -> tuple[_Drain, KeptPackets]:
    inst, w = FakeInstance(per_cpu), KeptPackets()
    d = _Drain(inst, translator(), session)  # type: ignore[arg-type]
    d.drain(w)  # type: ignore[arg-type]
    assert all(not q for q in inst.queues.values()), "a drain empties every CPU"
    return d, w


def test_each_cpu_is_written_as_its_own_bundles_with_every_event() -> None:
    cpu0, cpu1 = pages("pages_cpu0.raw"), pages("pages_cpu1.raw")
    expected = {0: translator().bundle(0, cpu0).events, 1: translator().bundle(1, cpu1).events}
    d, w = drain({0: cpu0, 1: cpu1})
    got = {0: 0, 1: 0}
    for p in w.packets:
        got[p.ftrace_events.cpu] += len(p.ftrace_events.event)
    assert got == expected and d.events == sum(expected.values()) > 0
    assert d.errors == 0 and d.lost_bundles == 0


def test_a_backlog_is_read_in_bounded_passes_within_one_drain() -> None:
    one = pages("pages_cpu0.raw")
    backlog = (one * (2 * MAX_PAGES_PER_CPU_PER_PASS + 10))[: 2 * MAX_PAGES_PER_CPU_PER_PASS + 10]
    inst, w = FakeInstance({0: backlog}), KeptPackets()
    _Drain(inst, translator(), 0).drain(w)  # type: ignore[arg-type]
    sizes = [n for _, n in inst.reads]
    assert sizes == [MAX_PAGES_PER_CPU_PER_PASS, MAX_PAGES_PER_CPU_PER_PASS, 10]
    assert len(w.packets) == len([n for n in sizes if n])


def test_pids_and_renames_go_to_the_sessions_process_stats() -> None:
    seen: list[tuple[set[int], set[int]]] = []

    def on_pids(pids: Collection[int], renamed: Collection[int]) -> None:
        seen.append((set(pids), set(renamed)))

    other: list[Any] = []

    def on_other_session(pids: Collection[int], renamed: Collection[int]) -> None:
        other.append(pids)

    PIDS.subscribe(7, on_pids)
    PIDS.subscribe(8, on_other_session)
    try:
        drain({0: pages("pages_cpu0.raw"), 1: pages("pages_cpu1.raw")}, session=7)
    finally:
        PIDS.unsubscribe(7, on_pids)
        PIDS.unsubscribe(8, on_other_session)
    assert len(seen) == 1 and other == []
    pids, renamed = seen[0]
    direct = translator()
    b0, b1 = direct.bundle(0, pages("pages_cpu0.raw")), direct.bundle(1, pages("pages_cpu1.raw"))
    assert pids == b0.pids | b1.pids and renamed == b0.renamed | b1.renamed
    assert renamed, "the capture renamed children"


def test_losses_the_kernel_marked_are_counted() -> None:
    d, w = drain({0: pages("pages_lost_cpu0.raw")})
    direct = translator().bundle(0, pages("pages_lost_cpu0.raw"))
    assert d.lost_bundles == 1 and d.lost_events == direct.lost_count > 0
    assert [p.ftrace_events.lost_events for p in w.packets] == [True]
