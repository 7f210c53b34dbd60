"""The pure parts of linux.process_stats and linux.sys_stats (actors/core/procfs.py,
actors/core/sys_stats.py): /proc text captured on this machine
(tests/data/probes/proc/README.md) in, Perfetto's packets out, decoded with
Perfetto's own schema; field numbers and key tables checked against that schema;
every parser fed random text and never raising."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import procfs, sys_stats
from actors.core.sys_stats_keys import MEMINFO_KEYS, VMSTAT_KEYS

DATA = Path(__file__).parent / "data" / "probes" / "proc"
NS_PER_TICK = 10_000_000  # CLK_TCK 100 where the files were captured


def text(name: str) -> str:
    return (DATA / name).read_text()


def number(message: type, name: str) -> int:
    return message.DESCRIPTOR.fields_by_name[name].number


# -- field numbers and key tables ------------------------------------------------------


def test_field_numbers_are_perfettos():
    assert procfs.TRACE_PACKET_TIMESTAMP == number(pb.TracePacket, "timestamp")
    assert procfs.TRACE_PACKET_PROCESS_TREE == number(pb.TracePacket, "process_tree")
    assert procfs.TRACE_PACKET_PROCESS_STATS == number(pb.TracePacket, "process_stats")
    assert procfs.TRACE_PACKET_INCREMENTAL_STATE_CLEARED == number(
        pb.TracePacket, "incremental_state_cleared"
    )
    assert sys_stats.TRACE_PACKET_SYS_STATS == number(pb.TracePacket, "sys_stats")
    tree = {"processes": procfs.TREE_PROCESSES, "threads": procfs.TREE_THREADS}
    tree["collection_end_timestamp"] = procfs.TREE_COLLECTION_END
    for name, n in tree.items():
        assert number(pb.ProcessTree, name) == n
    proc = {"pid": procfs.PROC_PID, "ppid": procfs.PROC_PPID, "cmdline": procfs.PROC_CMDLINE}
    proc |= {"uid": procfs.PROC_UID, "nspid": procfs.PROC_NSPID}
    proc |= {"process_start_from_boot": procfs.PROC_START_FROM_BOOT}
    proc |= {"is_kthread": procfs.PROC_IS_KTHREAD, "cmdline_is_comm": procfs.PROC_CMDLINE_IS_COMM}
    for name, n in proc.items():
        assert number(pb.ProcessTree.Process, name) == n
    thread = {"tid": procfs.THREAD_TID, "tgid": procfs.THREAD_TGID}
    thread |= {"name": procfs.THREAD_NAME, "nstid": procfs.THREAD_NSTID}
    for name, n in thread.items():
        assert number(pb.ProcessTree.Thread, name) == n
    stats = pb.ProcessStats.Process
    assert number(stats, "oom_score_adj") == procfs.OOM_SCORE_ADJ
    assert number(stats, "runtime_user_mode") == procfs.RUNTIME_USER_MODE
    assert number(stats, "runtime_kernel_mode") == procfs.RUNTIME_KERNEL_MODE
    names = {"VmSize": "vm_size_kb", "VmRSS": "vm_rss_kb", "RssAnon": "rss_anon_kb"}
    names |= {"RssFile": "rss_file_kb", "RssShmem": "rss_shmem_kb", "VmSwap": "vm_swap_kb"}
    names |= {"VmLck": "vm_locked_kb", "VmHWM": "vm_hwm_kb", "Rss": "smr_rss_kb"}
    names |= {"Pss": "smr_pss_kb", "Pss_Anon": "smr_pss_anon_kb", "Pss_File": "smr_pss_file_kb"}
    names |= {"Pss_Shmem": "smr_pss_shmem_kb", "SwapPss": "smr_swap_pss_kb"}
    assert {k: number(stats, v) for k, v in names.items()} == procfs.MEM_COUNTER_FIELDS
    s = pb.SysStats
    assert [
        number(s, n)
        for n in ("meminfo", "vmstat", "cpu_stat", "num_forks", "num_irq_total", "num_irq")
    ] == [sys_stats.MEMINFO, sys_stats.VMSTAT, sys_stats.CPU_STAT, sys_stats.NUM_FORKS,
          sys_stats.NUM_IRQ_TOTAL, sys_stats.NUM_IRQ]  # fmt: skip
    assert [
        number(s, n)
        for n in (
            "num_softirq_total",
            "num_softirq",
            "collection_end_timestamp",
            "cpufreq_khz",
            "buddy_info",
            "disk_stat",
            "psi",
        )
    ] == [
        sys_stats.NUM_SOFTIRQ_TOTAL,
        sys_stats.NUM_SOFTIRQ,
        sys_stats.COLLECTION_END,
        sys_stats.CPUFREQ_KHZ,
        sys_stats.BUDDY_INFO,
        sys_stats.DISK_STAT,
        sys_stats.PSI,
    ]
    assert number(s, "thermal_zone") == sys_stats.THERMAL_ZONE
    assert number(s, "cpuidle_state") == sys_stats.CPUIDLE_STATE
    cfg = pb.SysStatsConfig
    assert sys_stats.ALL_STAT_COUNTERS == {
        cfg.STAT_CPU_TIMES,
        cfg.STAT_IRQ_COUNTS,
        cfg.STAT_SOFTIRQ_COUNTS,
        cfg.STAT_FORK_COUNT,
    }
    assert [f"{n}_period_ms" for n in sys_stats.PERIOD_FIELDS] == [
        f.name for f in cfg.DESCRIPTOR.fields if f.name.endswith("_period_ms")
    ]
    psi = pb.SysStats.PsiSample
    assert sys_stats.PSI_FILES == (
        ("cpu", psi.PSI_RESOURCE_CPU_SOME, psi.PSI_RESOURCE_CPU_FULL),
        ("io", psi.PSI_RESOURCE_IO_SOME, psi.PSI_RESOURCE_IO_FULL),
        ("memory", psi.PSI_RESOURCE_MEMORY_SOME, psi.PSI_RESOURCE_MEMORY_FULL),
    )


def test_the_key_tables_name_every_counter_of_perfettos_enums_by_its_number():
    for key, enum_name, n in MEMINFO_KEYS:
        assert pb.MeminfoCounters.Name(n) == enum_name, key
    assert {n for _, _, n in MEMINFO_KEYS} == set(pb.MeminfoCounters.values()) - {0}
    for key, n in VMSTAT_KEYS:
        assert pb.VmstatCounters.Name(n) == "VMSTAT_" + key.upper()
    assert {n for _, n in VMSTAT_KEYS} == set(pb.VmstatCounters.values()) - {0}


# -- /proc/PID ---------------------------------------------------------------------------


def test_status_of_a_process_a_thread_and_a_kernel_thread():
    p = procfs.parse_status(text("python.status"))
    assert p == procfs.ProcStatus("python3", 13292, 13292, 13289, 0, (), False)
    t = procfs.parse_status(text("python-thread.status"))
    assert t is not None and (t.tgid, t.pid, t.name) == (13292, 13334, "python3")
    k = procfs.parse_status(text("kthreadd.status"))
    assert k is not None and (k.pid, k.ppid, k.name, k.kthread) == (2, 0, "kthreadd", True)


def test_nested_pid_namespace_ids_and_a_kernel_without_kthread():
    status = "Name:\tsh\nTgid:\t900\nPid:\t900\nPPid:\t1\nUid:\t1000\t1000\t1000\t1000\n"
    status += "NSpid:\t900\t12\t1\n"
    p = procfs.parse_status(status)
    assert p == procfs.ProcStatus("sh", 900, 900, 1, 1000, (12, 1), None)


@pytest.mark.parametrize("bad", ["", "Name:\tx\n", "Tgid:\t0\nPid:\t5\n", "Tgid:\tx\nPid:\t5\n"])
def test_status_without_a_valid_tgid_and_pid_is_none(bad):
    assert procfs.parse_status(bad) is None


def test_memory_counters_of_status_and_smaps_rollup():
    mem = procfs.mem_counters(text("python.status"))
    f = procfs.MEM_COUNTER_FIELDS
    assert mem == {
        f["VmSize"]: 90328,
        f["VmLck"]: 0,
        f["VmHWM"]: 13580,
        f["VmRSS"]: 13580,
        f["RssAnon"]: 6884,
        f["RssFile"]: 6696,
        f["RssShmem"]: 0,
        f["VmSwap"]: 0,
    }
    both = procfs.mem_counters(text("python.status") + text("python.smaps_rollup"))
    assert both is not None
    expected = {"Rss": 13580, "Pss": 8033, "Pss_Anon": 6884, "Pss_File": 1149}
    expected |= {"Pss_Shmem": 0, "SwapPss": 0}
    assert {k: both[f[k]] for k in expected} == expected


def test_a_kernel_thread_has_no_memory_counters():
    assert procfs.mem_counters(text("kthreadd.status")) is None


def test_cmdline_splits_on_nul_and_survives_bytes_that_are_not_utf8():
    argv = procfs.parse_cmdline((DATA / "python.cmdline").read_bytes())
    assert argv[0].endswith("/python3") and argv[1] == "-c" and len(argv) == 3
    assert procfs.parse_cmdline(b"") == []
    assert procfs.parse_cmdline(b"a\0\0b") == ["a", "b"]  # no NUL at the end (a kernel bug)
    assert procfs.parse_cmdline(b"\xff\0") == ["\ufffd"]


def test_stat_times_in_ns_even_with_a_comm_holding_spaces_and_parens():
    times = procfs.parse_stat_times(text("python.stat"), NS_PER_TICK)
    assert times == procfs.ProcTimes(4 * NS_PER_TICK, 2 * NS_PER_TICK, 4778922 * NS_PER_TICK)
    odd = text("python.stat").replace("(python3)", "(a ) b (c)")
    assert procfs.parse_stat_times(odd, NS_PER_TICK) == times
    assert procfs.parse_stat_times("12 (x) S 1 2", NS_PER_TICK) is None


def test_oom_score_adj_in_its_range_only():
    assert procfs.parse_oom_score_adj(text("python.oom_score_adj")) == 0
    assert procfs.parse_oom_score_adj("-1000\n") == -1000
    assert procfs.parse_oom_score_adj("1001\n") is None
    assert procfs.parse_oom_score_adj("") is None


# -- ProcessTree / ProcessStats packets --------------------------------------------------


def test_process_tree_packet_decodes_with_perfettos_schema():
    entries = [
        procfs.tree_process(
            13292, 13289, 0, ["python3", "-c", "é"], ns_ids=(12,), start_from_boot_ns=5,
            kthread=False,
        ),
        procfs.tree_thread(13292, 13292, "python3"),
        procfs.tree_thread(13334, 13292),
        procfs.tree_process(2, 0, 0, ["kthreadd"], cmdline_is_comm=True, kthread=True),
    ]  # fmt: skip
    packet = pb.TracePacket.FromString(
        procfs.process_tree_packet(1000, entries, 2000, incremental_state_cleared=True)
    )
    assert packet.timestamp == 1000 and packet.incremental_state_cleared
    tree = packet.process_tree
    assert tree.collection_end_timestamp == 2000
    p, k = tree.processes
    assert (p.pid, p.ppid, p.uid, list(p.cmdline), list(p.nspid)) == (
        13292, 13289, 0, ["python3", "-c", "é"], [12]
    )  # fmt: skip
    assert p.process_start_from_boot == 5 and p.HasField("is_kthread") and not p.is_kthread
    assert not p.cmdline_is_comm
    assert (k.pid, list(k.cmdline), k.cmdline_is_comm, k.is_kthread) == (
        2,
        ["kthreadd"],
        True,
        True,
    )
    main, worker = tree.threads
    assert (main.tid, main.tgid, main.name) == (13292, 13292, "python3")
    assert (worker.tid, worker.tgid, worker.HasField("name")) == (13334, 13292, False)


def test_process_stats_packet_with_a_negative_oom_score_adj():
    f = procfs.MEM_COUNTER_FIELDS
    entry = procfs.stats_process(7, [(f["VmRSS"], 123), (procfs.OOM_SCORE_ADJ, -900)])
    packet = pb.TracePacket.FromString(procfs.process_stats_packet(10, [entry], 20))
    (p,) = packet.process_stats.processes
    assert (p.pid, p.vm_rss_kb, p.oom_score_adj, p.HasField("vm_size_kb")) == (7, 123, -900, False)
    assert packet.process_stats.collection_end_timestamp == 20
    assert not packet.incremental_state_cleared


def test_the_cache_writes_a_counter_again_only_when_it_changed_or_was_dropped():
    cache = procfs.ProcessStatsCache()
    assert cache.changed(1, {2: 10, 3: 5}) == [(2, 10), (3, 5)]
    assert cache.changed(1, {2: 10, 3: 6}) == [(3, 6)]
    assert cache.changed(1, {2: 10, 3: 6}) == []
    cache.forget_except([2])
    assert cache.changed(1, {2: 10}) == [(2, 10)]
    cache.clear()
    assert cache.changed(1, {2: 10}) == [(2, 10)]


def test_poll_period_floor_and_cache_ttl_as_perfetto():
    assert [procfs.poll_period_ms(ms) for ms in (0, 10, 99, 100, 1000)] == [0, 100, 100, 100, 1000]
    assert procfs.cache_ttl_ticks(1000, 0) == 1  # default: every counter at every poll
    assert procfs.cache_ttl_ticks(1000, 60_000) == 60
    assert procfs.cache_ttl_ticks(1000, 500) == 1


# -- sys_stats ---------------------------------------------------------------------------


def test_schedule_raises_short_periods_and_runs_each_source_at_its_multiple():
    s = sys_stats.schedule({"meminfo": 5, "vmstat": 20, "stat": 30, "devfreq": 10})
    assert s.tick_ms == 10 and s.every == {"meminfo": 1, "vmstat": 2, "stat": 3}
    assert s.notes == ["meminfo_period_ms 5 is below 10 ms: raised"] and not s.error
    assert s.due(0) == ["meminfo", "vmstat", "stat"] and s.due(3) == ["meminfo", "stat"]
    assert sys_stats.schedule({}).tick_ms == 0
    assert sys_stats.schedule({"devfreq": 100, "slab": 200}).tick_ms == 0  # none read here
    s = sys_stats.schedule({"meminfo": 1000, "gpufreq": 100})  # the tick of all, as traced
    assert s.tick_ms == 100 and s.every == {"meminfo": 10} and s.due(1) == []


def test_periods_that_are_not_multiples_poll_nothing_as_perfetto():
    s = sys_stats.schedule({"meminfo": 100, "vmstat": 150})
    assert s.tick_ms == 0 and not s.every and "not integer multiples" in s.error


def test_meminfo_and_vmstat_values_of_the_selected_counters_or_all():
    some = sys_stats.key_values(
        text("meminfo"), sys_stats.meminfo_keys([pb.MEMINFO_MEM_TOTAL, pb.MEMINFO_ACTIVE_ANON])
    )
    assert some == [(pb.MEMINFO_MEM_TOTAL, 24684092), (pb.MEMINFO_ACTIVE_ANON, 1572)]
    every = dict(sys_stats.key_values(text("meminfo"), sys_stats.meminfo_keys([])))
    assert every[pb.MEMINFO_MEM_FREE] == 23210172 and len(every) >= 30
    vm = dict(sys_stats.key_values(text("vmstat"), sys_stats.vmstat_keys([])))
    assert vm[pb.VMSTAT_NR_FREE_PAGES] == 1882792 and len(vm) > 50
    only = sys_stats.key_values(text("vmstat"), sys_stats.vmstat_keys([pb.VMSTAT_NR_FREE_PAGES]))
    assert only == [(pb.VMSTAT_NR_FREE_PAGES, 1882792)]


def test_stat_cpu_times_per_cpu_irqs_softirqs_and_forks():
    sample = sys_stats.parse_stat(text("stat"), [], NS_PER_TICK)
    assert [c for c, _ in sample.cpu_times] == [0, 1]  # the "cpu" total is not a CPU
    assert sample.cpu_times[0][1][:4] == tuple(
        t * NS_PER_TICK for t in (1513806, 0, 252255, 2959100)
    )
    assert sample.irq_total == 74919952 and all(n > 0 for _, n in sample.irqs)
    assert (25, 2) in sample.irqs  # the 26th number after the total
    assert sample.softirq_total == 14032318 and len(sample.softirqs) == 10
    assert sample.forks == 630050
    only = sys_stats.parse_stat(text("stat"), [pb.SysStatsConfig.STAT_FORK_COUNT], NS_PER_TICK)
    assert only == sys_stats.StatSample(forks=630050)


def test_psi_buddyinfo_diskstats_cpufreq():
    assert sys_stats.parse_psi(text("pressure-io"), 3, 4) == [
        (3, 112808513000), (4, 68218989000)
    ]  # fmt: skip
    buddy = sys_stats.parse_buddyinfo(text("buddyinfo"))
    assert [(n, z) for n, z, _ in buddy] == [("0", "DMA"), ("0", "DMA32"), ("0", "Normal")]
    assert buddy[0][2] == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 3]
    disks = sys_stats.parse_diskstats(text("diskstats"))
    assert disks[0] == ("loop0", [(f, 0) for f in range(2, 10)])
    assert sys_stats.parse_cpufreq("1800000\n") == 1800000 and sys_stats.parse_cpufreq("") == 0


def test_sys_stats_packet_decodes_with_perfettos_schema():
    sample = sys_stats.parse_stat(text("stat"), [], NS_PER_TICK)
    parts = [
        sys_stats.encode_meminfo([(pb.MEMINFO_MEM_TOTAL, 5)]),
        sys_stats.encode_vmstat([(pb.VMSTAT_NR_FREE_PAGES, 6)]),
        sys_stats.encode_stat(sample),
        sys_stats.encode_psi(sys_stats.parse_psi(text("pressure-cpu"), 1, 2)),
        sys_stats.encode_buddyinfo(sys_stats.parse_buddyinfo(text("buddyinfo"))),
        sys_stats.encode_diskstats(sys_stats.parse_diskstats(text("diskstats"))),
        sys_stats.encode_cpufreq([0, 1800000]),
    ]
    packet = pb.TracePacket.FromString(sys_stats.sys_stats_packet(100, parts, 200))
    s = packet.sys_stats
    assert packet.timestamp == 100 and s.collection_end_timestamp == 200
    assert (s.meminfo[0].key, s.meminfo[0].value) == (pb.MEMINFO_MEM_TOTAL, 5)
    assert (s.vmstat[0].key, s.vmstat[0].value) == (pb.VMSTAT_NR_FREE_PAGES, 6)
    assert [c.cpu_id for c in s.cpu_stat] == [0, 1]
    assert s.cpu_stat[1].idle_ns == 2410517 * NS_PER_TICK
    assert s.cpu_stat[1].steal_ns == 591 * NS_PER_TICK
    assert s.num_forks == 630050 and s.num_irq_total == 74919952
    assert [(i.irq, i.count) for i in s.num_irq] == sample.irqs
    assert [(i.irq, i.count) for i in s.num_softirq] == sample.softirqs
    assert [p.resource for p in s.psi] == [1, 2] and s.buddy_info[2].zone == "Normal"
    assert s.disk_stat[0].device_name == "loop0" and list(s.cpufreq_khz) == [0, 1800000]


def test_thermal_and_cpuidle_decode_with_perfettos_schema():
    parts = [
        sys_stats.encode_thermal([("thermal_zone0", 45500, "x86_pkg_temp"), ("tz1", None, None)]),
        sys_stats.encode_cpuidle([(0, [("POLL", 0), ("haltpoll idle", 30196249629)]), (1, [])]),
    ]
    s = pb.TracePacket.FromString(sys_stats.sys_stats_packet(1, parts, 2)).sys_stats
    z0, z1 = s.thermal_zone
    assert (z0.name, z0.temp, z0.type) == ("thermal_zone0", 45, "x86_pkg_temp")
    assert z1.name == "tz1" and not z1.HasField("temp") and not z1.HasField("type")
    c0, c1 = s.cpuidle_state
    assert [(e.state, e.duration_us) for e in c0.cpuidle_state_entry] == [
        ("POLL", 0), ("haltpoll idle", 30196249629)
    ]  # fmt: skip
    assert c1.cpu_id == 1 and not c1.cpuidle_state_entry
    assert sys_stats.parse_uint("42\n") == 42 and sys_stats.parse_uint("-1") is None


# -- random input never raises -----------------------------------------------------------

KERNELISH = st.text(alphabet=st.sampled_from("0123456789 \t\n:-+()abcNSpidTgVmRSkBxyz\x00é"))


@given(KERNELISH)
def test_parsers_never_raise_on_any_text(s):
    procfs.parse_status(s)
    procfs.mem_counters(s)
    procfs.parse_stat_times(s, NS_PER_TICK)
    procfs.parse_oom_score_adj(s)
    keys = sys_stats.meminfo_keys([])
    sys_stats.key_values(s, keys)
    sys_stats.parse_stat(s, [], NS_PER_TICK)
    sys_stats.parse_psi(s, 1, 2)
    sys_stats.parse_buddyinfo(s)
    sys_stats.parse_diskstats(s)
    sys_stats.parse_cpufreq(s)


@given(st.text(), st.binary())
def test_parsers_never_raise_on_mutated_real_files(noise, raw):
    for name in ("python.status", "kthreadd.status", "python.stat", "stat", "diskstats"):
        original = text(name)
        cut = len(noise) % (len(original) + 1)
        mutated = original[:cut] + noise + original[cut:]
        procfs.parse_status(mutated)
        procfs.mem_counters(mutated)
        procfs.parse_stat_times(mutated, NS_PER_TICK)
        sys_stats.parse_stat(mutated, [], NS_PER_TICK)
        sys_stats.parse_diskstats(mutated)
        sys_stats.parse_buddyinfo(mutated)
    procfs.parse_cmdline(raw)


@given(
    st.integers(1, 2**31 - 1), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1),
    st.lists(st.text(max_size=20), max_size=5), st.integers(-1000, 1000),
    st.lists(st.integers(0, 2**63 - 1), max_size=4),
)  # fmt: skip
def test_encoded_entries_round_trip_through_perfettos_schema(pid, ppid, uid, argv, oom, kbs):
    entries = [procfs.tree_process(pid, ppid, uid, argv), procfs.tree_thread(pid, pid, "t")]
    tree = pb.TracePacket.FromString(procfs.process_tree_packet(1, entries, 2)).process_tree
    got = tree.processes[0]
    assert (got.pid, got.ppid, got.uid, list(got.cmdline)) == (pid, ppid, uid, argv)
    counters = [(procfs.OOM_SCORE_ADJ, oom)] + [(2 + i, kb) for i, kb in enumerate(kbs)]
    stats = pb.TracePacket.FromString(
        procfs.process_stats_packet(1, [procfs.stats_process(pid, counters)], 2)
    ).process_stats.processes[0]
    assert stats.oom_score_adj == oom
    assert [getattr(stats, f) for f in ("vm_size_kb", "vm_rss_kb", "rss_anon_kb", "rss_file_kb")][
        : len(kbs)
    ] == kbs
