"""The system probes end to end, with Perfetto's own configs: a topology with a
probes group records what its processes are, what memory they hold, what the
system counters say and, where tracefs works (as root here), who ran on each CPU;
the kernel's ftrace state is the same afterwards, also when the probes process
was SIGKILLed in the middle of a session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.consumer import Consumer
from launch.control import SupervisorClient
from tests.probe_traces import SystemView, system_view
from tests.processes import REPO, Runtime
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

CONFIGS = Path(__file__).parent / "perfetto_configs"
PYTHON = sys.executable

WORKER = """\
import signal, threading, time
import tracebus

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
while not stop.is_set():
    with tracebus.slice("work"):
        end = time.monotonic() + 0.002
        while time.monotonic() < end:  # on a CPU for a while, then off it
            pass
    stop.wait(0.003)
"""

TOPOLOGY = """\
runtime_dir: run
stop_when: never
producers:
  - name: probes
    builtin: [probes]
  - name: sensors
    builtin: []
    count: 2
  - name: worker
    command: python worker.py
"""


def kernel_ftrace_state() -> dict[str, Any] | None:
    """`python -m actors.tracefs --state`, or None where tracefs cannot be had."""
    done = subprocess.run(
        [PYTHON, "-m", "actors.tracefs", "--state"], cwd=REPO, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    if done.returncode != 0:
        return None
    return json.loads(done.stdout)


def without_others(state: dict[str, Any], ours: set[int]) -> dict[str, Any]:
    """The state less the instances of tracebus processes other than ours that still
    run (other tests on this machine)."""

    def other(name: str) -> bool:
        pid = name.removeprefix("tracebus-")
        return pid.isdigit() and int(pid) not in ours and Path(f"/proc/{pid}").exists()

    return {**state, "instances": [i for i in state["instances"] if not other(i)]}


@pytest.fixture
def topology() -> Iterator[tuple[Runtime, Any, SupervisorClient]]:
    with Runtime() as rt:
        rt.write_file("worker.py", WORKER)
        supervisor = rt.start_supervisor(rt.write_file("topology.yaml", TOPOLOGY), cwd=rt.dir)
        for name in ("probes#1", "sensors#2", "worker#1"):
            rt.wait_output(supervisor, rf"{name} registered")
        client = SupervisorClient(f"ipc://{rt.dir}/run/control.sock")
        try:
            yield rt, supervisor, client
        finally:
            client.close()


def record(rt: Runtime, config: str, timeout: float = 60) -> SystemView:
    consumer = Consumer.connect(f"ipc://{rt.dir}/run/consumer.sock", timeout=10)
    try:
        consumer.enable((CONFIGS / config).read_text())
        consumer.wait_disabled(timeout)
        packets = list(consumer.read_packets())
        consumer.free()
    finally:
        consumer.close()
    return system_view(packets)


def topology_pids(client: SupervisorClient, supervisor: Any) -> dict[str, int]:
    actors = {a["name"]: a["pid"] for a in client.list() if a["state"] == "running"}
    return {**actors, "supervisor": supervisor.pid}


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")


def test_sys_stats_cfg_records_every_topology_process_and_the_system(topology):
    rt, supervisor, client = topology
    before = kernel_ftrace_state()
    view = record(rt, "sys_stats.cfg")  # Perfetto's own, 2 s
    pids = topology_pids(client, supervisor)
    assert set(pids) >= {"service", "probes#1", "sensors#1", "sensors#2", "worker#1"}
    for name, pid in pids.items():
        assert view.cmdlines.get(pid) == cmdline(pid), name  # the process and its command line
        assert view.rss_kb[pid] and min(view.rss_kb[pid]) > 0, name  # its memory counters
    # The system counters the config names: meminfo every 100 ms, CPU times per CPU.
    assert len(view.meminfo) >= 10 and all(v for v in view.meminfo.values())
    assert set(view.cpu_times) == set(range(os.cpu_count() or 1))
    if before is None:
        pytest.skip("tracefs is not available here (not root?): no sched_switch to check")
    scheduled = view.scheduled_tgids()
    assert {cpu for cpu, tgids in scheduled.items() if tgids} == set(range(os.cpu_count() or 1))
    ran = set().union(*scheduled.values())
    for name in ("service", "probes#1", "worker#1"):
        assert pids[name] in ran, name  # they ran in those 2 s, and the trace says where
    for events in view.switches.values():
        for _, _, next_pid, next_comm in events:
            name = view.threads.get(next_pid, (0, ""))[1]
            if name:  # named (record_thread_names): the kernel's name is the tree's
                assert next_comm == name[:15], next_pid
    ours = set(pids.values())
    assert without_others(kernel_ftrace_state() or {}, ours) == without_others(before, ours)


def test_scheduling_cfg_names_the_processes_that_ran(topology):
    """Perfetto's scheduling.cfg has no process scan: the tree comes from the pids its
    ftrace events named (traced's OnPids)."""
    rt, supervisor, client = topology
    if kernel_ftrace_state() is None:
        pytest.skip("tracefs is not available here (not root?)")
    consumer = Consumer.connect(f"ipc://{rt.dir}/run/consumer.sock", timeout=10)
    try:
        consumer.enable((CONFIGS / "scheduling.cfg").read_text().replace("10000", "1500"))
        consumer.wait_disabled(60)
        view = system_view(consumer.read_packets())
        consumer.free()
    finally:
        consumer.close()
    pids = topology_pids(client, supervisor)
    ran = set().union(*view.scheduled_tgids().values())
    assert pids["worker#1"] in ran
    for pid in ran & set(pids.values()):
        assert view.cmdlines.get(pid) == cmdline(pid)


def test_a_sigkilled_probes_process_leaves_the_kernel_as_it_was(topology):
    rt, supervisor, client = topology
    before = kernel_ftrace_state()
    if before is None:
        pytest.skip("tracefs is not available here (not root?)")
    probes = topology_pids(client, supervisor)["probes#1"]
    consumer = Consumer.connect(f"ipc://{rt.dir}/run/consumer.sock", timeout=10)
    try:
        consumer.enable((CONFIGS / "scheduling.cfg").read_text())
        wait_for(
            lambda: f"tracebus-{probes}" in (kernel_ftrace_state() or {}).get("instances", []),
            timeout=30, what="the probes' ftrace instance",
        )  # fmt: skip
        assert consumer.flush(timeout=15)  # something drained and committed, then the kill
        os.kill(probes, signal.SIGKILL)
        ours = {probes}
        wait_for(
            lambda: without_others(kernel_ftrace_state() or {}, ours)
            == without_others(before, ours),
            timeout=30, what="the killed probes' instance removed",
        )  # fmt: skip
        consumer.disable()
        packets = list(consumer.read_packets())
        consumer.free()
    finally:
        consumer.close()
    assert any(p.HasField("ftrace_events") for p in packets)  # what it drained is kept
