"""What a trace holds per trusted pid: packets, track_event slices begun, slices
whose "pid" annotation is that pid, sequence ids, loss marks; then the losses
its TraceStats counts (from TRACE.stats, as consumer_app writes it, else the
trace's last trace_stats packet).

    python examples/perfetto_sdk/trace_counts.py TRACE
"""

import sys
from collections import Counter, defaultdict
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.consumer_summary import BUFFER_LOSSES, SERVICE_LOSSES

SLICE_BEGIN = pb.TrackEvent.TYPE_SLICE_BEGIN


def per_pid(trace: pb.Trace) -> None:
    packets: Counter[int] = Counter()
    begins: Counter[int] = Counter()
    own_pid: Counter[int] = Counter()
    marks: Counter[int] = Counter()
    seqs: defaultdict[int, set[int]] = defaultdict(set)
    for p in trace.packet:
        pid = p.trusted_pid
        packets[pid] += 1
        seqs[pid].add(p.trusted_packet_sequence_id)
        marks[pid] += bool(p.previous_packet_dropped)
        if p.HasField("track_event") and p.track_event.type == SLICE_BEGIN:
            begins[pid] += 1
            own_pid[pid] += any(a.int_value == pid for a in p.track_event.debug_annotations)
    print(f"{len(trace.packet)} packets")
    for pid in packets:
        print(
            f"  trusted_pid {pid}: {packets[pid]} packets, {begins[pid]} slices begun "
            f"({own_pid[pid]} annotated with this pid), sequences {sorted(seqs[pid])}, "
            f"loss marks {marks[pid]}"
        )


def losses(stats: pb.TraceStats) -> dict[str, int]:
    found = {k: getattr(stats, k) for k in SERVICE_LOSSES if getattr(stats, k)}
    for i, buf in enumerate(stats.buffer_stats):
        found |= {f"buffer {i} {k}": getattr(buf, k) for k in BUFFER_LOSSES if getattr(buf, k)}
    return found


def main(path: Path) -> None:
    trace = pb.Trace.FromString(path.read_bytes())
    per_pid(trace)
    stats_file = path.with_name(path.name + ".stats")
    if stats_file.exists():
        stats: pb.TraceStats | None = pb.TraceStats.FromString(stats_file.read_bytes())
    else:
        found = [p.trace_stats for p in trace.packet if p.HasField("trace_stats")]
        stats = found[-1] if found else None
    print("losses:", "unknown (no TraceStats)" if stats is None else losses(stats) or "none")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
