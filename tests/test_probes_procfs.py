"""linux.process_stats and linux.sys_stats on the real /proc (actors/probes_procfs.py).

First each data source alone in this process, its packets caught by a fake host
record (so a test waits on the packets it expects, with a deadline); then end to
end: a service, the probes producer (`actors.producer --name
perfetto.traced_probes --module actors.probes_procfs`, the two classes the probes
process hosts) and the record CLI with Perfetto's own configs
(tests/perfetto_configs/, origin on their first line), the trace read with
Perfetto's schema.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors import probes_procfs
from actors.probes_bus import PIDS
from actors.probes_procfs import ProcessStatsDataSource, SysStatsDataSource
from protos import data_source_config_pb2 as dsc
from tests.processes import Runtime

CONFIGS = Path(__file__).parent / "perfetto_configs"
PROBES = "perfetto.traced_probes"
SOURCES = ("linux.process_stats", "linux.sys_stats")
SESSION = 4242
DEADLINE = 20.0  # a loaded 2-core CI machine


# -- one data source in this process ------------------------------------------------------


class FakeWriter:
    """Collects packets (decoded) and wakes waiters."""

    def __init__(self) -> None:
        self.packets: list[pb.TracePacket] = []
        self.cond = threading.Condition()
        self.flushes = 0

    def write_packet(self, data: bytes) -> None:
        with self.cond:
            self.packets.append(pb.TracePacket.FromString(data))
            self.cond.notify_all()

    def flush(self) -> None:
        with self.cond:
            self.flushes += 1
            self.cond.notify_all()

    def wait(self, found: Callable[[list[pb.TracePacket]], Any], what: str) -> Any:
        with self.cond:
            result = self.cond.wait_for(lambda: found(self.packets), DEADLINE)
        assert result, f"timed out waiting for {what}; got {len(self.packets)} packets"
        return result


class FakeRecord:
    def __init__(self) -> None:
        self.w = FakeWriter()
        self.released = False

    def writer(self) -> FakeWriter:
        return self.w

    def release_writer(self, w: Any) -> None:
        self.released = True


def config(text: str) -> Any:
    c = text_format.Parse(text, pb.DataSourceConfig())
    c.tracing_session_id = SESSION
    return dsc.DataSourceConfig.FromString(c.SerializeToString())


@pytest.fixture
def started() -> Iterator[Callable[[type, str], tuple[Any, FakeWriter]]]:
    """start(cls, config text) -> (instance, its writer); every instance is stopped."""
    running: list[tuple[Any, FakeRecord]] = []

    def start(cls: type, text: str) -> tuple[Any, FakeWriter]:
        ds, rec, cfg = cls(), FakeRecord(), config(text)
        ds._tb_attach(rec, PROBES, len(running) + 1, cfg)
        ds.on_setup(cfg)
        ds.on_start(cfg)
        running.append((ds, rec))
        return ds, rec.w

    yield start
    for ds, rec in running:
        ds.on_stop()
        assert rec.released  # the thread gave its writer back


CHILD = """
import sys
held = []
print("ready", flush=True)
for line in sys.stdin:  # each line: hold 32 MiB more, touched, so RSS grows
    held.append(bytearray(32 << 20))
    print("grown", flush=True)
"""


@pytest.fixture
def child() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """child(*argv) -> a waiting python child with that argv, once it is up (a line on
    its stdin makes it grow); killed at the end."""
    children: list[subprocess.Popen[str]] = []

    def spawn(*extra: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-c", CHILD, *extra]
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        children.append(p)
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        return p

    yield spawn
    for p in children:
        p.kill()
        p.wait()


def grow(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.stdout.readline() == "grown\n"


def tree_processes(packets: list[pb.TracePacket]) -> dict[int, pb.ProcessTree.Process]:
    return {
        p.pid: p for pk in packets if pk.HasField("process_tree") for p in pk.process_tree.processes
    }


def tree_threads(packets: list[pb.TracePacket]) -> dict[int, pb.ProcessTree.Thread]:
    return {
        t.tid: t for pk in packets if pk.HasField("process_tree") for t in pk.process_tree.threads
    }


def stats_of(packets: list[pb.TracePacket], pid: int) -> list[pb.ProcessStats.Process]:
    return [
        p
        for pk in packets
        if pk.HasField("process_stats")
        for p in pk.process_stats.processes
        if p.pid == pid
    ]


def test_scan_on_start_names_every_process_and_thread(started, child):
    kid = child("--marker", "scan-on-start")
    before = {int(n) for n in os.listdir("/proc") if n.isdigit()}
    ds, w = started(
        ProcessStatsDataSource,
        "process_stats_config { scan_all_processes_on_start: true record_thread_names: true }",
    )
    procs = w.wait(tree_processes, "the first ProcessTree")
    alive = {pid for pid in before if os.path.exists(f"/proc/{pid}")}
    assert alive <= set(procs)  # every process that lived through the scan
    p = procs[kid.pid]
    assert list(p.cmdline)[-2:] == ["--marker", "scan-on-start"]
    assert (p.ppid, p.uid, p.is_kthread) == (os.getpid(), os.getuid(), False)
    assert procs[2].cmdline_is_comm and list(procs[2].cmdline) == ["kthreadd"]
    threads = tree_threads(w.packets)
    mine = threading.get_native_id()
    assert threads[mine].tgid == os.getpid() and threads[mine].name
    assert threads[kid.pid].tgid == kid.pid  # the main thread too (Perfetto v58+)
    assert all(pk.timestamp > 0 for pk in w.packets)
    assert not stats_of(w.packets, kid.pid)  # no poll configured


def test_polls_write_memory_counters_and_name_processes_that_appear(started, child):
    ds, w = started(
        ProcessStatsDataSource, "process_stats_config { proc_stats_poll_ms: 100 }"
    )  # fmt: skip
    w.wait(lambda ps: stats_of(ps, os.getpid()), "this process's counters")
    late = child("--marker", "late")
    stats = w.wait(lambda ps: stats_of(ps, late.pid), "the late child's counters")
    first = stats[0]
    assert first.vm_rss_kb > 0 and first.vm_size_kb >= first.vm_rss_kb
    assert first.HasField("oom_score_adj") and first.HasField("vm_swap_kb")
    procs = w.wait(lambda ps: late.pid in tree_processes(ps) and tree_processes(ps), "its name")
    assert list(procs[late.pid].cmdline)[-1] == "late"
    # The default cache TTL (0) writes every counter at every poll, as Perfetto.
    again = w.wait(lambda ps: len(stats_of(ps, late.pid)) >= 2 and stats_of(ps, late.pid), "poll 2")
    assert again[1].HasField("vm_size_kb") and again[1].HasField("rss_anon_kb")


def test_a_cache_ttl_writes_only_counters_that_changed(started, child):
    kid = child()
    ds, w = started(
        ProcessStatsDataSource,
        "process_stats_config { proc_stats_poll_ms: 100 proc_stats_cache_ttl_ms: 600000 }",
    )
    (first,) = w.wait(lambda ps: stats_of(ps, kid.pid), "the child's counters")
    assert first.HasField("oom_score_adj") and first.HasField("vm_swap_kb")
    grow(kid)
    second = w.wait(
        lambda ps: [p for p in stats_of(ps, kid.pid) if p.vm_rss_kb >= first.vm_rss_kb + 30_000],
        "the grown RSS",
    )[0]
    # Within the TTL, what did not change is not written again.
    assert not second.HasField("oom_score_adj") and not second.HasField("vm_swap_kb")
    assert not second.HasField("vm_locked_kb")


def test_pids_published_by_ftrace_are_written_once_and_renamed_ones_again(started, child):
    ds, w = started(ProcessStatsDataSource, "process_stats_config { }")
    kid = child("--marker", "on-demand")
    PIDS.publish(SESSION, [kid.pid, 0, -5], ())
    procs = w.wait(lambda ps: kid.pid in tree_processes(ps) and tree_processes(ps), "the pid")
    assert list(procs[kid.pid].cmdline)[-1] == "on-demand"
    PIDS.publish(SESSION, [kid.pid], [kid.pid])
    w.wait(
        lambda ps: sum(p.pid == kid.pid for pk in ps for p in pk.process_tree.processes) == 2,
        "the renamed pid written again",
    )
    PIDS.publish(SESSION + 1, [os.getppid()], ())  # another session's: not ours
    mine = threading.get_native_id()  # a thread id: its process and the thread are written
    PIDS.publish(SESSION, [mine], ())
    threads = w.wait(lambda ps: mine in tree_threads(ps) and tree_threads(ps), "the thread")
    assert threads[mine].tgid == os.getpid() and os.getpid() in tree_processes(w.packets)
    assert os.getppid() not in tree_processes(w.packets)


def test_clear_incremental_state_forgets_what_was_written(started):
    ds, w = started(ProcessStatsDataSource, "process_stats_config { proc_stats_poll_ms: 100 }")
    w.wait(lambda ps: os.getpid() in tree_processes(ps), "the first tree")
    ds.on_clear_incremental_state()

    def after_clear(ps: list[pb.TracePacket]) -> list[pb.TracePacket]:
        marks = [i for i, p in enumerate(ps) if p.incremental_state_cleared]
        return ps[marks[0] :] if marks else []

    # The next poll writes every process again, this one included.
    w.wait(lambda ps: os.getpid() in tree_processes(after_clear(ps)), "the tree again")
    assert len([p for p in w.packets if p.incremental_state_cleared]) == 1


def test_a_machine_with_many_processes_gets_several_packets_per_scan_and_poll(started, monkeypatch):
    # About two processes a packet: any machine has more with memory (init, pytest).
    monkeypatch.setattr(probes_procfs, "PACKET_BYTES", 60)
    ds, w = started(
        ProcessStatsDataSource,
        "process_stats_config { scan_all_processes_on_start: true proc_stats_poll_ms: 100 }",
    )

    def two_polls(ps):  # the first complete: the second one started after it
        stats = [p for p in ps if p.HasField("process_stats")]
        return stats if stats_of(ps, os.getpid()) and len({p.timestamp for p in stats}) > 1 else []

    stats = w.wait(two_polls, "a poll that reached this process, then another")
    trees = [p for p in w.packets if p.HasField("process_tree")]
    scan = [p for p in trees if p.timestamp == trees[0].timestamp]
    assert len(scan) > 1
    for packet in scan:  # cut at the first entry past the budget: one entry may be large
        tree = packet.process_tree  # (a CI runner's own command line can be kilobytes)
        sizes = [e.ByteSize() for e in (*tree.processes, *tree.threads)]
        assert sum(sizes) - max(sizes) < 60
    first_poll = [p for p in stats if p.timestamp == stats[0].timestamp]
    assert len(first_poll) > 1
    pids = [q.pid for p in first_poll for q in p.process_stats.processes]
    assert len(pids) == len(set(pids))  # each process once per poll


def status_text(name: str, tgid: int, pid: int, ppid: int, memory: bool) -> str:
    text = f"Name:\t{name}\nTgid:\t{tgid}\nPid:\t{pid}\nPPid:\t{ppid}\nUid:\t7\t7\t7\t7\n"
    return text + ("VmSize:\t  100 kB\nVmRSS:\t   40 kB\n" if memory else "")


def test_a_proc_with_vanished_garbled_and_odd_entries_costs_only_those(
    started, monkeypatch, tmp_path
):
    """A fake /proc: what a process that vanished mid-scan, a garbled status, a
    kernel thread and a command line that is not UTF-8 look like."""
    files = {
        "1/status": status_text("init", 1, 1, 0, True), "1/cmdline": b"/sbin/init\0",
        "1/oom_score_adj": "-1000\n",
        "50/status": "nonsense\n",  # garbled
        "70/status": status_text("app", 70, 70, 1, True), "70/cmdline": b"app\0\xff\xfe\0",
        "70/task/71/status": status_text("worker", 70, 71, 1, True),
        "80/status": status_text("kworker/0:1", 80, 80, 2, False), "80/cmdline": b"",
        "sys/status": "x",
    }  # fmt: skip
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    (tmp_path / "60").mkdir()  # vanished: its directory listed, its files gone
    (tmp_path / "70/task/70").mkdir(parents=True)
    monkeypatch.setattr(probes_procfs, "PROC", str(tmp_path))
    ds, w = started(
        ProcessStatsDataSource,
        "process_stats_config { scan_all_processes_on_start: true proc_stats_poll_ms: 100 }",
    )
    w.wait(lambda ps: stats_of(ps, 70), "a poll")
    procs = tree_processes(w.packets)
    assert set(procs) == {1, 70, 80}
    assert list(procs[70].cmdline) == ["app", "\ufffd\ufffd"]
    assert procs[80].cmdline_is_comm and list(procs[80].cmdline) == ["kworker/0:1"]
    assert tree_threads(w.packets)[71].tgid == 70
    assert stats_of(w.packets, 1)[0].oom_score_adj == -1000
    assert stats_of(w.packets, 70)[0].vm_rss_kb == 40
    assert not stats_of(w.packets, 80) and not stats_of(w.packets, 50)


@pytest.mark.parametrize("cls", [ProcessStatsDataSource, SysStatsDataSource])
def test_an_instance_stopped_before_it_started_stops_quietly(cls, caplog):
    ds, rec, cfg = cls(), FakeRecord(), config("sys_stats_config { meminfo_period_ms: 100 }")
    ds._tb_attach(rec, PROBES, 1, cfg)
    ds.on_setup(cfg)
    ds.on_stop()
    assert rec.w.packets == [] and not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_flush_reaches_the_writer(started):
    ds, w = started(ProcessStatsDataSource, "process_stats_config { }")
    ds.on_flush()
    w.wait(lambda ps: w.flushes >= 1, "a flush")


def test_unimplemented_fields_are_named_once(started, caplog):
    caplog.set_level(logging.INFO, "tracebus.probes")
    started(
        ProcessStatsDataSource,
        "process_stats_config { resolve_process_fds: true proc_stats_poll_ms: 10 }",
    )
    started(SysStatsDataSource, "sys_stats_config { devfreq_period_ms: 100 slab_period_ms: 100 }")
    lines = [r.getMessage() for r in caplog.records]
    assert "linux.process_stats: ignored: resolve_process_fds" in lines
    assert "linux.process_stats: proc_stats_poll_ms 10 raised to 100" in lines
    assert "linux.sys_stats: ignored: devfreq_period_ms, slab_period_ms" in lines


def test_sys_stats_selected_counters_at_their_periods(started):
    ds, w = started(
        SysStatsDataSource,
        """sys_stats_config {
             meminfo_period_ms: 50 meminfo_counters: MEMINFO_MEM_TOTAL
             meminfo_counters: MEMINFO_MEM_FREE
             vmstat_period_ms: 100 vmstat_counters: VMSTAT_NR_FREE_PAGES
             stat_period_ms: 100 stat_counters: STAT_CPU_TIMES stat_counters: STAT_FORK_COUNT
             psi_period_ms: 100 buddyinfo_period_ms: 100 diskstat_period_ms: 100 }""",
    )
    packets = w.wait(lambda ps: len(ps) >= 4 and ps, "four ticks")
    s = [p.sys_stats for p in packets[:4]]
    assert all(pk.HasField("sys_stats") and pk.timestamp for pk in packets[:4])
    assert [{m.key for m in x.meminfo} for x in s] == [
        {pb.MEMINFO_MEM_TOTAL, pb.MEMINFO_MEM_FREE}
    ] * 4
    # 100 ms sources every second tick of 50 ms, starting with the first.
    assert [len(x.vmstat) for x in s] == [1, 0, 1, 0]
    assert [len(x.cpu_stat) for x in s] == [os.cpu_count(), 0, os.cpu_count(), 0]
    assert s[0].num_forks > 0 and not s[0].num_irq and not s[0].num_softirq_total
    assert s[0].vmstat[0].key == pb.VMSTAT_NR_FREE_PAGES
    if os.path.exists("/proc/pressure/cpu"):
        assert {p.resource for p in s[0].psi} >= {1, 3, 5}
    assert (
        s[0].buddy_info and s[0].disk_stat and s[0].collection_end_timestamp >= packets[0].timestamp
    )


def test_sys_stats_thermal_zones_and_cpuidle_states(started, monkeypatch, tmp_path):
    zone = tmp_path / "thermal_zone0"  # this VM has none: a fake sysfs class
    zone.mkdir()
    (zone / "temp").write_text("45500\n")
    (zone / "type").write_text("acpitz\n")
    (tmp_path / "cooling_device0").mkdir()
    monkeypatch.setattr(probes_procfs, "SYS_THERMAL", str(tmp_path))
    ds, w = started(
        SysStatsDataSource, "sys_stats_config { thermal_period_ms: 100 cpuidle_period_ms: 100 }"
    )
    (packet,) = w.wait(lambda ps: ps[:1], "a tick")
    (z,) = packet.sys_stats.thermal_zone
    assert (z.name, z.temp, z.type) == ("thermal_zone0", 45, "acpitz")
    idle = packet.sys_stats.cpuidle_state
    assert [c.cpu_id for c in idle] == list(range(os.cpu_count() or 1))
    cpu0 = Path("/sys/devices/system/cpu/cpu0/cpuidle")
    states = sorted(p.name for p in cpu0.glob("state*"))  # none on a machine without cpuidle
    names = [(cpu0 / s / "name").read_text().strip() for s in states]
    assert [e.state for e in idle[0].cpuidle_state_entry] == names


@pytest.mark.parametrize(
    "periods, log",
    [
        ("meminfo_period_ms: 100 vmstat_period_ms: 150", "not integer multiples"),
        ("devfreq_period_ms: 100 gpufreq_period_ms: 100", "ignored: devfreq_period_ms"),
    ],
)
def test_sys_stats_with_nothing_it_can_poll_writes_nothing(started, caplog, periods, log):
    ds, w = started(SysStatsDataSource, f"sys_stats_config {{ {periods} }}")
    assert any(log in r.getMessage() for r in caplog.records)
    for n in (1, 2):  # two flushes: a whole turn of the thread ran in between
        ds.on_flush()
        w.wait(lambda ps, n=n: w.flushes >= n, f"flush {n}")
    assert w.packets == []


# -- end to end ----------------------------------------------------------------------------


@pytest.fixture
def probes(rt: Runtime) -> Runtime:
    rt.start_service()
    rt.start_producer(PROBES, "--module", "actors.probes_procfs", data_sources=SOURCES)
    return rt


def perfetto_config(name: str, **replace: str) -> str:
    text = (CONFIGS / name).read_text()
    assert text.startswith("# From google/perfetto ")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


def record(rt: Runtime, config: str, name: str) -> list[pb.TracePacket]:
    result, out = rt.record(config, name)
    assert result.returncode == 0, result.stderr
    return list(pb.Trace.FromString(out.read_bytes()).packet)


def topology_pids(rt: Runtime) -> dict[int, str]:
    """pid -> producer name of every producer the service lists, and the service."""
    state = rt.control.query_state(timeout=5)
    pids = {p.pid: p.name for p in state.producers}
    pids[rt.service.pid] = "service"
    return pids


@pytest.mark.timeout(120)
def test_perfettos_sys_stats_config_end_to_end(probes):
    """test/configs/sys_stats.cfg: counters in buffer 1, process stats in buffer 0."""
    alpha = probes.start_producer("alpha")
    topology = topology_pids(probes)
    packets = record(probes, perfetto_config("sys_stats.cfg"), "sys_stats")
    sys_packets = [p.sys_stats for p in packets if p.HasField("sys_stats")]
    assert len(sys_packets) >= 5  # 2 s at 100 ms, on a loaded machine
    wanted_mem = {pb.MEMINFO_MEM_AVAILABLE, pb.MEMINFO_BUFFERS, pb.MEMINFO_CACHED}
    assert wanted_mem <= {m.key for m in sys_packets[0].meminfo}
    assert pb.MEMINFO_MEM_TOTAL not in {m.key for s in sys_packets for m in s.meminfo}
    assert pb.VMSTAT_NR_FREE_PAGES in {v.key for v in sys_packets[0].vmstat}
    assert {c.cpu_id for c in sys_packets[0].cpu_stat} == set(range(os.cpu_count() or 1))
    assert sys_packets[0].num_forks > 0 and sys_packets[0].num_irq_total > 0
    assert not sys_packets[0].num_softirq  # STAT_SOFTIRQ_COUNTS is not selected
    # Every topology process: named with its command line, and its memory counters.
    procs = tree_processes(packets)
    for pid, name in topology.items():
        assert pid in procs, (pid, name)
        assert stats_of(packets, pid)[0].vm_rss_kb > 0, name
    assert "--name" in procs[alpha.pid].cmdline and "alpha" in procs[alpha.pid].cmdline


@pytest.mark.timeout(120)
def test_perfettos_memory_docs_config_names_every_process_at_start(probes):
    """docs/data-sources/memory-counters.md's config (scan_all_processes_on_start
    into buffer 1), its 30 s shortened to 1 s."""
    probes.start_producer("beta")
    topology = topology_pids(probes)
    config = perfetto_config("docs-memory-2.cfg", **{"duration_ms: 30000": "duration_ms: 1000"})
    packets = record(probes, config, "memory")
    trees = [p for p in packets if p.HasField("process_tree")]
    assert trees and all(p.timestamp for p in trees)
    procs = tree_processes(packets)
    assert set(topology) <= set(procs)
    for pid in topology:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0") if a]
        assert list(procs[pid].cmdline) == argv
    assert procs[1].ppid == 0 and 1 in tree_threads(packets)


LATE_SPINNER = """
import sys, time
t = time.time()
while time.time() - t < 1.0:
    pass
"""


@pytest.mark.timeout(120)
def test_processes_ftrace_sees_run_are_named_on_demand(rt: Runtime) -> None:
    """Perfetto's Linux cookbook config (sched_switch + process_stats; 10 s shortened
    to 3 s, and its scan_all_processes_on_start turned off, so that nothing but
    linux.ftrace's pids can name a process) under `python -m actors.probes`: a
    process that ftrace saw run is named, with its command line (traced's OnPids,
    through actors.probes_bus)."""
    from tests.ftrace_helpers import held_tracefs, remove_instances_of
    from tests.test_probes_ftrace import recording_instance

    replace = {"duration_ms: 10000": "duration_ms: 3000"}
    replace["scan_all_processes_on_start: true"] = "scan_all_processes_on_start: false"
    config = perfetto_config("docs-linux-cookbook-6.cfg", **replace)
    with held_tracefs() as tfs:
        rt.start_service()
        argv = ["-m", "actors.probes", "--producer-endpoint", rt.producer_endpoint]
        probes = rt.spawn("probes", argv)
        rt.wait_registered(probes, "linux.ftrace", *SOURCES, name=PROBES)
        spinner = None
        try:
            record, out = rt.start_record(config, "cookbook")
            recording_instance(tfs, probes.pid)
            spinner = subprocess.Popen([sys.executable, "-c", LATE_SPINNER, "late-spinner"])
            spinner.wait(timeout=30)
            _, err = rt.communicate(record, 60)
            assert record.returncode == 0, err
            packets = list(pb.Trace.FromString(out.read_bytes()).packet)
        finally:
            if spinner is not None and spinner.poll() is None:
                spinner.kill()
                spinner.wait()
            rt.stop(probes)
            remove_instances_of(tfs, [probes.pid])
    switched_in: set[int] = set()
    for p in packets:
        if p.HasField("ftrace_events"):
            bundle = p.ftrace_events
            switched_in.update(bundle.compact_sched.switch_next_pid)
            switched_in.update(
                e.sched_switch.next_pid for e in bundle.event if e.HasField("sched_switch")
            )
    assert spinner.pid in switched_in
    procs = tree_processes(packets)
    assert list(procs[spinner.pid].cmdline)[-1] == "late-spinner"
