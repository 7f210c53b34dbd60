"""How the system probes are started and cleaned up after: `python -m actors.probes`
(registering as perfetto.traced_probes with Perfetto's probe data sources),
`builtin: [probes]` in a topology, `tracebus run` (one probes process unless
--no-probes or the service has one), and the ftrace cleanup the service and the
supervisor run when a probes process dies.

The data sources themselves (actors/probes_ftrace.py, actors/probes_procfs.py) are
tested beside their modules."""

from __future__ import annotations

import os
import re
import signal
import textwrap
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors import probe_cleanup, probes
from actors.loop import Loop
from launch.topology import TopologyError
from launch.topology_parser import parse_topology
from protos import tracebus_ipc_pb2 as ipc
from tests import ftrace_helpers as helpers
from tests.processes import PYTHON, Proc, Runtime
from tests.waiting import wait_for
from tracebus import run_probes, runner
from tracebus.trace_summary import TraceContents, format_contents

pytestmark = pytest.mark.timeout(120)

PROBE_NAMES = {"linux.ftrace", "linux.process_stats", "linux.sys_stats"}
SCHEDULING_CFG = Path(__file__).parent / "perfetto_configs" / "scheduling.cfg"
CLEANUP_LINE = re.compile(r"checking for stale ftrace instances: (.*)$", re.MULTILINE)


# -- one process ------------------------------------------------------------------------------


def test_the_probes_host_perfetto_s_three_data_sources_ftrace_optional() -> None:
    assert [cls.name for cls in probes.data_source_classes()] == [
        "linux.ftrace",
        "linux.process_stats",
        "linux.sys_stats",
    ]
    without = probes.data_source_classes(ftrace=False)
    assert [cls.name for cls in without] == ["linux.process_stats", "linux.sys_stats"]


def test_the_probes_command_line_defaults_to_perfetto_s_name_and_smb() -> None:
    args = probes._parser().parse_args([])
    assert args.name == "perfetto.traced_probes"
    assert (args.smb_size_kb, args.page_size_kb) == (2048, 32)  # traced_probes' hints
    assert not args.no_ftrace and not args.cleanup


def test_a_probes_group_runs_actors_probes(tmp_path: Path) -> None:
    text = "stop_when: never\nproducers:\n  - name: perfetto.traced_probes\n    builtin: [probes]\n"
    group = parse_topology(text, tmp_path / "t.yaml").producers[0]
    assert group.probes
    argv = group.argv("PY", "ipc://x/p")
    assert argv[:5] == ["PY", "-m", "actors.probes", "--name", "perfetto.traced_probes"]
    assert "--data-source" not in argv and argv[-2:] == ["--producer-endpoint", "ipc://x/p"]
    assert probes._parser().parse_args(argv[3:])  # every option is one actors.probes takes
    plain = parse_topology(
        "stop_when: never\nproducers:\n  - name: a\n    builtin: [x]\n", tmp_path / "t.yaml"
    )
    assert not plain.producers[0].probes


@pytest.mark.parametrize(
    ("group", "problem"),
    [
        ("builtin: [probes, tracebus.synthetic]", "hosts no other data source"),
        ("builtin: [probes]\n    count: 2", "runs one process"),
    ],
)
def test_a_probes_group_with_other_names_or_two_processes_is_refused(
    tmp_path: Path, group: str, problem: str
) -> None:
    text = f"stop_when: never\nproducers:\n  - name: p\n    {group}\n"
    with pytest.raises(TopologyError, match=problem) as info:
        parse_topology(text, tmp_path / "t.yaml")
    assert "t.yaml:" in str(info.value)  # where: the file and the line


def test_tracebus_run_s_default_config_names_the_processes_once() -> None:
    config = runner.default_config()
    process_stats = [
        ds.config for ds in config.data_sources if ds.config.name == "linux.process_stats"
    ]
    assert len(process_stats) == 1
    ps = process_stats[0].process_stats_config
    assert ps.scan_all_processes_on_start and not ps.proc_stats_poll_ms  # small: no polling
    assert runner.records_track_events(config)


def test_the_summary_lists_the_processes_that_wrote_before_those_a_process_tree_named() -> None:
    """tracebus run's default config names every process of the machine: the app's
    must not scroll out of `tracebus summary`'s table."""
    contents = TraceContents()
    for pid in range(1, 200):  # what scan_all_processes_on_start adds
        contents.process(pid).name = f"daemon{pid}"
    contents.process(5000).packets = 3
    contents.process(5000).name = "app"
    table = format_contents(contents, top=5)
    assert re.search(r"^  5000 +app +3$", table, re.M), table


def test_a_service_s_probes_are_found_by_name_or_by_data_source() -> None:
    state = ipc.QueryServiceStateResponse()
    state.producers.add(id=1, name="app", pid=10)
    assert run_probes.probes_connected(state) is None
    state.producers.add(id=2, name="my-probes", pid=11)
    state.data_sources.add(producer_id=2).descriptor.name = "linux.sys_stats"
    assert run_probes.probes_connected(state).pid == 11
    state = ipc.QueryServiceStateResponse()
    state.producers.add(id=3, name="perfetto.traced_probes", pid=12)
    assert run_probes.probes_connected(state).pid == 12


def test_cleanup_runs_one_at_a_time_and_once_more_if_asked_meanwhile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A crash loop costs one run at a time: a request during a run asks for one
    more after it, not for a second process now. A failing run is said."""
    runs = tmp_path / "runs"
    script = f"import sys; open({str(runs)!r}, 'a').write('x'); sys.exit(3)"
    monkeypatch.setattr(probe_cleanup, "cleanup_argv", lambda: [PYTHON, "-c", script])
    loop = Loop()
    said: list[str] = []
    cleanup = probe_cleanup.ProbeCleanup(loop, said.append)
    try:
        for why in ("first", "second", "third"):
            cleanup.request(why)
        assert cleanup.runs == 1  # the others wait for it
        assert loop.run(until=lambda: cleanup.runs == 2 and cleanup.proc is None, timeout=60)
    finally:
        cleanup.close()
        loop.close()
    assert runs.read_text() == "xx"
    assert cleanup.failures == 2
    assert said.count("the ftrace cleanup exited with 3") == 2
    assert said[0] == "checking for stale ftrace instances: first"


def test_cleanup_without_tracefs_support_does_nothing_and_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(probes, "open_tracefs", lambda: "no tracefs here")
    assert probes.main(["--cleanup"]) == 0


# -- real processes ---------------------------------------------------------------------------


def start_probes(rt: Runtime, *args: str) -> Proc:
    argv = ["-m", "actors.probes", "--producer-endpoint", rt.producer_endpoint, *args]
    return rt.spawn("probes", argv)


def test_the_probes_register_as_traced_probes_with_their_data_sources(rt: Runtime) -> None:
    rt.start_service()
    proc = start_probes(rt)
    rt.wait_registered(proc, *PROBE_NAMES, name="perfetto.traced_probes")
    without = start_probes(rt, "--no-ftrace", "--name", "no-ftrace")
    producer = rt.wait_registered(without, "linux.process_stats", "linux.sys_stats")
    _, state = rt.producer_state(without.pid)
    names = {d.descriptor.name for d in state.data_sources if d.producer_id == producer.id}
    assert names == PROBE_NAMES - {"linux.ftrace"}
    assert rt.stop(proc) == 0 and rt.stop(without) == 0  # SIGTERM: a clean stop


def service_log(rt: Runtime) -> str:
    return (rt.dir / "service.log").read_text(errors="replace")


def test_the_service_cleans_up_after_a_killed_ftrace_producer_only(rt: Runtime) -> None:
    """A producer that hosted linux.ftrace and died may have left the kernel tracing:
    the service runs the cleanup; another producer's death costs nothing."""
    rt.start_service()
    plain = rt.start_producer("plain")
    ftrace = rt.start_producer(
        "fake-probes", "--data-source", "linux.ftrace", data_sources=["linux.ftrace"]
    )
    plain.kill()
    plain.wait()
    wait_for(lambda: not rt.producer_state(plain.pid)[0], 30, "the service to notice")
    ftrace.kill()
    ftrace.wait()
    lines = wait_for(lambda: CLEANUP_LINE.findall(service_log(rt)), 30, "the cleanup")
    assert lines == [f"producer 'fake-probes' (pid {ftrace.pid}) is gone"]
    assert rt.stop(rt.service) == 0  # it waits for the cleanup; the harness checks no leftover


def test_a_stopped_ftrace_producer_is_cleaned_up_after_once_it_dies_not_before(
    rt: Runtime,
) -> None:
    """The service gives up on a SIGSTOPped producer, but the process lives and owns
    its ftrace instance: the cleanup waits for its death."""
    rt.start_service("--peer-send-timeout-s", "1")
    victim = rt.start_producer(
        "fake-probes", "--data-source", "linux.ftrace", data_sources=["linux.ftrace"]
    )
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        given_up = lambda: rt.control.query_state().peers_given_up.producers == 1  # noqa: E731
        wait_for(given_up, 20, "the service to give up on the stopped producer")
        assert not CLEANUP_LINE.search(service_log(rt))  # logged by then if it were asked
    finally:
        victim.kill()  # a stopped process dies of SIGKILL too
        victim.wait()
    lines = wait_for(lambda: CLEANUP_LINE.findall(service_log(rt)), 30, "the cleanup")
    assert lines == [f"producer 'fake-probes' (pid {victim.pid}) is gone"]


def test_a_probes_topology_group_killed_mid_session_leaves_no_ftrace_instance(
    rt: Runtime,
) -> None:
    """`builtin: [probes]` records Perfetto's scheduling.cfg; its process is SIGKILLed
    while its ftrace instance records: the supervisor (and the service) clean up, the
    kernel's settings are as before, and the topology goes on to its end."""
    topology = rt.write_file(
        "topology.yaml",
        textwrap.dedent(
            f"""\
            stop_when: never
            producers:
              - name: perfetto.traced_probes
                builtin: [probes]
            consumers:
              - name: recorder
                config: {SCHEDULING_CFG}
                output: {rt.dir / "sched.pftrace"}
            """
        ),
    )
    with helpers.held_tracefs() as tfs:
        before = helpers.settings(tfs)
        sup = rt.start_supervisor(topology)
        match = rt.wait_output(sup, r"started perfetto.traced_probes#1 \(pid (\d+)\)")
        mine = [int(match.group(1))]
        try:
            wait_for(lambda: helpers.instances_of(tfs, mine), 30, "the probes' ftrace instance")
            os.kill(mine[0], signal.SIGKILL)
            why = "perfetto.traced_probes#1 exited: killed by SIGKILL"
            rt.wait_output(sup, rf"checking for stale ftrace instances: {why}")
            wait_for(lambda: not helpers.instances_of(tfs, mine), 30, "the cleanup")
            assert helpers.settings(tfs) == before
            sup.send_signal(signal.SIGTERM)
            rt.finish(sup)
        finally:
            helpers.remove_instances_of(tfs, mine)
    output = rt.output(sup)
    assert f"removed the ftrace instance tracebus-{mine[0]}" in output
    assert "the ftrace cleanup exited" not in output  # every run succeeded


# -- tracebus run ----------------------------------------------------------------------------

LIST_PRODUCERS = """
import os
from actors.consumer import Consumer
c = Consumer.connect(os.environ["TRACEBUS_CONSUMER_SOCK"])
print("producers:", sorted(p.name for p in c.query_state().producers), flush=True)
c.close()
"""
PROCESS_STATS_CONFIG = (
    'buffers { size_kb: 1024 }\ndata_sources { config { name: "linux.process_stats" } }\n'
)


def run_listing(rt: Runtime, *args: str) -> str:
    """`tracebus run ARGS -- python app.py` on the harness's service; the app prints the
    producers the service has while it runs."""
    rt.write_file("ps.pbtxt", PROCESS_STATS_CONFIG)
    app = rt.write_file("app.py", LIST_PRODUCERS)
    env = {"TRACEBUS_CONSUMER_SOCK": rt.consumer_endpoint}
    env["TRACEBUS_PRODUCER_SOCK"] = rt.producer_endpoint
    argv = ["-m", "tracebus", "run", "-c", "ps.pbtxt", *args, "--", PYTHON, str(app)]
    run = rt.spawn("run", argv, env, lines=True, stderr="stdout", cwd=rt.dir)
    assert rt.finish(run) == 0, rt.output(run)
    return rt.output(run)


def probes_gone(rt: Runtime) -> bool:
    return not any(p.name == "perfetto.traced_probes" for p in rt.control.query_state().producers)


def test_tracebus_run_starts_the_probes_for_the_command_and_stops_them(rt: Runtime) -> None:
    rt.start_service()
    output = run_listing(rt)
    assert "'perfetto.traced_probes'" in re.search(r"^producers: .*$", output, re.M).group(0)  # type: ignore[union-attr]
    wait_for(lambda: probes_gone(rt), 30, "the runner's probes to stop")
    assert "system probes exited" not in output


def test_tracebus_run_no_probes_starts_none(rt: Runtime) -> None:
    rt.start_service()
    output = run_listing(rt, "--no-probes")
    assert "perfetto.traced_probes" not in output


def test_tracebus_run_uses_the_probes_a_service_has_already(rt: Runtime) -> None:
    rt.start_service()
    existing = start_probes(rt)
    rt.wait_registered(existing, *PROBE_NAMES, name="perfetto.traced_probes")
    output = run_listing(rt)
    assert f"using the system probes connected already (pid {existing.pid})" in output
    line = re.search(r"^producers: .*$", output, re.M).group(0)  # type: ignore[union-attr]
    assert line.count("perfetto.traced_probes") == 1
    rt.assert_running(existing, "the service's own probes")  # not stopped by the runner


# -- the kernel's ftrace state ------------------------------------------------------------------


def test_a_sigkilled_probes_process_leaves_the_kernel_s_ftrace_state_as_it_was(
    rt: Runtime,
) -> None:
    """Perfetto's scheduling.cfg records while the probes process is SIGKILLed: the
    service's cleanup removes the instance it left, and the top-level settings
    never changed. (Other tests' live instances are not ours to check.)"""
    with helpers.held_tracefs() as tfs:
        before = helpers.settings(tfs)
        rt.start_service()
        probes_proc = start_probes(rt)
        try:
            rt.wait_registered(probes_proc, *PROBE_NAMES, name="perfetto.traced_probes")
            out = rt.dir / "sched.pftrace"
            record = rt.start_consumer_cli(
                "-c", str(SCHEDULING_CFG), "--txt", "-o", str(out),
                "--consumer-endpoint", rt.consumer_endpoint,
            )  # fmt: skip
            mine = [probes_proc.pid]
            wait_for(lambda: helpers.instances_of(tfs, mine), 30, "the probes' ftrace instance")
            probes_proc.kill()
            probes_proc.wait()
            wait_for(lambda: not helpers.instances_of(tfs, mine), 30, "the service's cleanup")
            assert CLEANUP_LINE.search(service_log(rt))
            assert helpers.settings(tfs) == before
            record.send_signal(signal.SIGINT)  # the session went on without the probes
            _, err = rt.communicate(record)
            assert record.returncode == 128 + signal.SIGINT, err  # stopped, read back, saved
            assert pb.Trace.FromString(out.read_bytes()).packet
        finally:
            helpers.remove_instances_of(tfs, [probes_proc.pid])


SYS_STATS_CFG = Path(__file__).parent / "perfetto_configs" / "sys_stats.cfg"


def test_tracebus_run_records_perfetto_s_sys_stats_config_with_its_own_probes(
    rt: Runtime,
) -> None:
    """Perfetto's sys_stats.cfg (2 s) under `tracebus run` on the runner's own service:
    its probes record the system counters and name the processes, the runner first
    (it runs from before the session to after it)."""
    (rt.dir / "xdg").mkdir(mode=0o700)
    command = [PYTHON, "-c", "import time; time.sleep(2.5)"]  # outlives the 2 s session
    argv = ["-m", "tracebus", "run", "-c", str(SYS_STATS_CFG), "-o", "out.pftrace", "--"]
    run = rt.spawn("run", [*argv, *command], {"XDG_RUNTIME_DIR": str(rt.dir / "xdg")},
                   lines=True, stderr="stdout", cwd=rt.dir)  # fmt: skip
    assert rt.finish(run) == 0, rt.output(run)
    trace = pb.Trace.FromString((rt.dir / "out.pftrace").read_bytes())
    cmdlines = {p.pid: p.cmdline for t in trace.packet for p in t.process_tree.processes}
    assert "tracebus" in cmdlines[run.pid] and "run" in cmdlines[run.pid]
    rss = {p.pid for t in trace.packet for p in t.process_stats.processes if p.vm_rss_kb}
    assert run.pid in rss
    sys_stats = [t.sys_stats for t in trace.packet if t.HasField("sys_stats")]
    meminfo = {m.key for s in sys_stats for m in s.meminfo}
    assert pb.MeminfoCounters.MEMINFO_MEM_AVAILABLE in meminfo
    assert any(s.cpu_stat for s in sys_stats) and any(s.num_forks for s in sys_stats)
