"""What a trace says about the system, read with the official schema: the probes'
packets gathered the way trace_processor reads them (process tree, per-process
memory counters, system counters, scheduling per CPU, ftrace prints and stats).
Used by the probes' end-to-end tests and benchmarks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb


@dataclass
class SystemView:
    cmdlines: dict[int, list[str]] = field(default_factory=dict)  # pid -> cmdline
    ppids: dict[int, int] = field(default_factory=dict)
    threads: dict[int, tuple[int, str]] = field(default_factory=dict)  # tid -> (tgid, name)
    rss_kb: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    # meminfo/vmstat key -> values; cpu -> user_ns
    meminfo: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    vmstat: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    cpu_times: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    # cpu -> [(ts, prev_pid, next_pid, next_comm)]
    switches: dict[int, list[tuple[int, int, int, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    prints: list[str] = field(default_factory=list)
    lost_bundles: int = 0
    ftrace_stats: list[pb.FtraceStats] = field(default_factory=list)
    producers: set[int] = field(default_factory=set)  # trusted_pid of the probes' packets

    def names_of(self, pid: int) -> set[str]:
        """Every name the trace gives a pid: its threads' names and its cmdline."""
        names = {name for tid, (tgid, name) in self.threads.items() if tgid == pid}
        names |= {name for tid, (_, name) in self.threads.items() if tid == pid}
        return names

    def tgid_of(self, tid: int) -> int:
        return self.threads.get(tid, (tid, ""))[0]

    def scheduled_tgids(self) -> dict[int, set[int]]:
        """cpu -> the processes (tgids) a sched_switch switched to on that cpu."""
        return {
            cpu: {self.tgid_of(next_pid) for _, _, next_pid, _ in events if next_pid}
            for cpu, events in self.switches.items()
        }


def system_view(packets: Iterable[pb.TracePacket]) -> SystemView:
    view = SystemView()
    for packet in packets:
        if packet.HasField("process_tree"):
            view.producers.add(packet.trusted_pid)
            for proc in packet.process_tree.processes:
                view.cmdlines[proc.pid] = list(proc.cmdline)
                view.ppids[proc.pid] = proc.ppid
            for thread in packet.process_tree.threads:
                view.threads[thread.tid] = (thread.tgid, thread.name)
        if packet.HasField("process_stats"):
            for proc in packet.process_stats.processes:
                if proc.HasField("vm_rss_kb"):
                    view.rss_kb[proc.pid].append(proc.vm_rss_kb)
        if packet.HasField("sys_stats"):
            for m in packet.sys_stats.meminfo:
                view.meminfo[m.key].append(m.value)
            for v in packet.sys_stats.vmstat:
                view.vmstat[v.key].append(v.value)
            for c in packet.sys_stats.cpu_stat:
                view.cpu_times[c.cpu_id].append(c.user_ns)
        if packet.HasField("ftrace_events"):
            _bundle(view, packet.ftrace_events)
        if packet.HasField("ftrace_stats"):
            view.ftrace_stats.append(packet.ftrace_stats)
    return view


def _bundle(view: SystemView, bundle: pb.FtraceEventBundle) -> None:
    view.lost_bundles += bundle.lost_events
    out = view.switches[bundle.cpu]
    for event in bundle.event:
        if event.HasField("sched_switch"):
            s = event.sched_switch
            out.append((event.timestamp, s.prev_pid, s.next_pid, s.next_comm))
        elif event.HasField("print"):
            view.prints.append(event.print.buf)
    compact = bundle.compact_sched
    ts = 0
    for i, delta in enumerate(compact.switch_timestamp):
        ts += delta
        comm = compact.intern_table[compact.switch_next_comm_index[i]]
        out.append((ts, -1, compact.switch_next_pid[i], comm))
