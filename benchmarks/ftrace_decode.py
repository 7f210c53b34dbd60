"""What decoding kernel ftrace pages into FtraceEventBundles costs (issue 13, item 4).

    python -m benchmarks.ftrace_decode [--rounds N] [--json FILE]

FtraceTranslator.bundle (actors/core/ftrace_encode.py) on pages as
trace_pipe_raw returns them, with the format files captured on this machine
(tests/data/probes/ftrace/). The cases:

  sched_switch_full     pages full of sched_switch records (60 a page; 50 tasks
                        switching to 37 others), each written as an FtraceEvent
  sched_switch_compact  the same pages with compact_sched (Perfetto's default
                        whenever sched_switch is on)
  print                 pages of ftrace/print records ("marker NNNN")
  captured_mix          the captured pages (sched_switch, sched_waking,
                        task_newtask, task_rename, print), full encoding

Each case: ns_per_event (best of --rounds runs of 100 pages), bytes_per_event
of the packet, and cpu_pct_per_10k_events_s = the share of one core that
decoding 10,000 events a second takes (ns_per_event / 1000). Reading the pages
(one read() per 4 KiB page) and writing the packet into the SMB come on top;
the probes producer's own figure is in part FTRACE-SHELL's tests.
calibration_ns: benchmarks/calibration.py, measured in this run.
"""

from __future__ import annotations

import argparse
import struct
import time
from pathlib import Path

from actors.core.ftrace_encode import FtraceTranslator
from actors.core.ftrace_format import EventFormat, PageHeader, parse_format, parse_header_page
from benchmarks.calibration import calibration_ns, save_json

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "probes" / "ftrace"
PAGE = 4096
PAGES = 100


def load() -> tuple[PageHeader, list[EventFormat]]:
    header = parse_header_page((DATA / "header_page").read_text())
    formats = [parse_format(p.read_text(), p.parent.name) for p in sorted(DATA.glob("format/*/*"))]
    return header, formats


def fill_page(records: list[bytes]) -> bytes:
    body = b""
    for r in records:
        if len(body) + len(r) > PAGE - 16:
            break
        body += r
    return (struct.pack("<QQ", 10**12, len(body)) + body).ljust(PAGE, b"\0")


def record(payload: bytes, delta: int = 1000) -> bytes:
    payload += b"\0" * (-len(payload) % 4)
    return struct.pack("<I", (delta << 5) | (len(payload) // 4)) + payload


def switch_pages(formats: list[EventFormat]) -> list[bytes]:
    sw = next(f for f in formats if f.name == "sched_switch")
    recs = []
    for i in range(200):
        prev, nxt = 1000 + i % 50, 2000 + i % 37
        prev_comm, next_comm = b"worker-%d" % (i % 50), b"other-%d" % (i % 37)
        fields = (sw.id, 0, 0, prev, prev_comm, prev, 120, 1, next_comm, nxt, 120)
        recs.append(record(struct.pack("<HBBi16siiq16sii", *fields)))
    return [fill_page(recs)] * PAGES


def print_pages(formats: list[EventFormat]) -> list[bytes]:
    pr = next(f for f in formats if f.name == "print")
    recs = [
        record(struct.pack("<HBBiQ", pr.id, 0, 0, 4242, 0) + b"marker %04d\n\0" % i)
        for i in range(200)
    ]
    return [fill_page(recs)] * PAGES


def captured_pages() -> list[bytes]:
    raw = (DATA / "pages_cpu0.raw").read_bytes() + (DATA / "pages_cpu1.raw").read_bytes()
    pages = [raw[i : i + PAGE] for i in range(0, len(raw), PAGE)]
    return (pages * (PAGES // len(pages) + 1))[:PAGES]


def measure(translator: FtraceTranslator, pages: list[bytes], rounds: int) -> dict:
    best, events, size = float("inf"), 0, 0
    for _ in range(rounds):
        start = time.perf_counter_ns()
        b = translator.bundle(0, pages)
        best = min(best, time.perf_counter_ns() - start)
        events, size = b.events, len(b.packet)
    ns = best / events
    return {
        "events": events,
        "ns_per_event": round(ns),
        "bytes_per_event": round(size / events, 1),
        "cpu_pct_per_10k_events_s": round(ns / 1000, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    header, formats = load()

    def translator(compact: bool) -> FtraceTranslator:
        return FtraceTranslator(header, formats, compact_sched=compact)

    results: dict = {"calibration_ns": round(calibration_ns(), 1)}
    results["sched_switch_full"] = measure(translator(False), switch_pages(formats), args.rounds)
    results["sched_switch_compact"] = measure(translator(True), switch_pages(formats), args.rounds)
    results["print"] = measure(translator(False), print_pages(formats), args.rounds)
    results["captured_mix"] = measure(translator(False), captured_pages(), args.rounds)
    for name, row in results.items():
        print(f"{name:22} {row}")
    save_json(args.json, results)


if __name__ == "__main__":
    main()
