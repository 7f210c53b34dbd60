"""The end of a run, for the supervisor (launch/supervisor.py): which trace files
each consumer wrote, and the summary printed on stderr.

collect_traces finds a consumer's traces: the files a script runner reported in
its JSON result file, else the topology's output if it was written during this
run. run_summary lists every actor's state, exit status and restarts, and per
consumer its traces with packets, bytes and losses (packets marked
previous_packet_dropped, chunks overwritten or discarded), counted from the
files with Perfetto's own schema (trace_figures).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from launch import control
from launch.children import Actor
from launch.topology import Topology


def collect_traces(actor: Actor, output: Path | None, since_wall: float) -> None:
    """The trace files a consumer wrote: what a script runner reported, else the
    topology's output if it was written during this run (since since_wall)."""
    actor.traces = []
    if actor.result_file is not None:
        try:
            actor.traces = list(json.loads(actor.result_file.read_text())["traces"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if not actor.traces and output is not None and output.exists():
        if output.stat().st_mtime >= since_wall:
            actor.traces = [str(output)]


def run_summary(
    topology: Topology, stop_reason: str | None, seconds: float, actors: Sequence[Actor]
) -> str:
    lines = [f"tracebus: {topology.source}: {stop_reason} after {seconds:.1f} s"]
    lines.append(control.format_actors([a.describe() for a in actors], "  "))
    rows: list[tuple] = [("trace", "consumer", "packets", "bytes", "losses")]
    for actor in actors:
        for path in actor.traces:
            rows.append((path, actor.name, *trace_figures(path)))
    for spec in topology.consumers:
        ran = next((a for a in actors if a.name == spec.name), None)
        if ran is None or not ran.traces:
            rows.append(("(no trace)", spec.name, "-", "-", "-"))
    if len(rows) > 1:
        lines.append(control.format_table(rows, "  "))
    return "\n".join(lines)


def trace_figures(path: str) -> tuple[object, object, str]:
    """(packets, bytes, losses) of a trace file, parsed with Perfetto's schema: packets
    marked previous_packet_dropped, and chunks the buffers overwrote or discarded."""
    try:
        data = Path(path).read_bytes()
        trace = pb.Trace.FromString(data)
    except (OSError, ValueError) as e:
        return "?", "?", f"unreadable: {e}"
    marks = sum(1 for p in trace.packet if p.previous_packet_dropped)
    chunks = 0
    for packet in trace.packet:
        if packet.HasField("trace_stats"):
            stats = packet.trace_stats.buffer_stats
            chunks = sum(b.chunks_overwritten + b.chunks_discarded for b in stats)
    return len(trace.packet), _size(len(data)), f"{marks} marks, {chunks} chunks"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / 2**20:.1f} MiB"
