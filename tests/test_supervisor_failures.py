"""The supervisor fails honestly: a producer group none of whose processes ever
registered with the service (a module with a syntax error, a command that cannot
run) makes the topology exit 1, naming the group and why (the last line its
instance printed), while the rest of the topology runs and records as usual.
Real processes throughout (tests/processes.py).
"""

from __future__ import annotations

import re
import signal
import textwrap
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tests.processes import Runtime

pytestmark = pytest.mark.timeout(120)

CONFIG = """
buffers { size_kb: 1024 }
data_sources { config { name: "tracebus.synthetic" for_testing { message_count: 20 } } }
duration_ms: 300
"""


def run(rt: Runtime, topology: str) -> tuple[int, str]:
    rt.write_file("rec.pbtxt", CONFIG)
    path = rt.write_file("topology.yaml", textwrap.dedent(topology).lstrip())
    supervisor = rt.start_supervisor(path)
    return rt.finish(supervisor), rt.output(supervisor)


def test_a_module_with_a_syntax_error_fails_the_topology_naming_the_group(rt: Runtime) -> None:
    (rt.dir / "srcs").mkdir()
    (rt.dir / "srcs" / "broken_sources.py").write_text("def oops(:\n    pass\n")
    code, out = run(
        rt,
        f"""
        runtime_dir: {rt.dir}/run
        producers:
          - name: good
            builtin: [tracebus.synthetic]
          - name: broken
            module: broken_sources
            pythonpath: {rt.dir}/srcs
        consumers:
          - name: rec
            config: {rt.dir}/rec.pbtxt
            output: {rt.dir}/out/rec.pftrace
        """,
    )
    assert code == 1, out
    assert "supervisor | good#1 registered" in out
    found = re.search(r"^supervisor \| error: producer group (\S+) never came up: (.*)$", out, re.M)
    assert found is not None, out
    assert found.group(1) == "broken", out
    assert found.group(2).startswith("broken#1 exited (code "), out
    assert "SyntaxError" in found.group(2), out
    assert len(re.findall(r"never came up", out)) == 1  # the good group came up
    assert re.search(r"^\s+rec\s+consumer\s+\d+\s+exited\s+0\s+0$", out, re.M), out
    trace = pb.Trace.FromString((rt.dir / "out" / "rec.pftrace").read_bytes())
    assert sum(p.HasField("for_testing") for p in trace.packet) == 20


def test_a_command_that_cannot_start_fails_the_topology(rt: Runtime) -> None:
    code, out = run(
        rt,
        f"""
        runtime_dir: {rt.dir}/run
        producers:
          - name: ghost
            command: [{rt.dir}/no-such-program]
        consumers:
          - name: rec
            config: {rt.dir}/rec.pbtxt
            output: {rt.dir}/rec.pftrace
        """,
    )
    assert code == 1, out
    expected = "error: producer group ghost never came up: ghost#1 exited (code 127) before"
    assert f"supervisor | {expected} registering: cannot start: " in out, out


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident memory (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_an_actor_printing_without_newlines_does_not_grow_the_supervisor(rt: Runtime) -> None:
    """An actor's output waits for the end of its line in the supervisor: 20 MB without a
    newline go out in bounded pieces instead of piling up there."""
    chatter = "import sys; sys.stdout.write('x' * 20_000_000); print(); print('done', flush=True)"
    path = rt.write_file(
        "topology.yaml",
        textwrap.dedent(
            f"""
            runtime_dir: {rt.dir}/run
            stop_when: never
            producers:
              - name: chatty
                command: [python, -c, "{chatter}; import time; time.sleep(60)"]
            """
        ).lstrip(),
    )
    supervisor = rt.start_supervisor(path)
    rt.wait_output(supervisor, r"supervisor \| started chatty#1")
    before = vm_hwm_kib(supervisor.pid)
    rt.wait_output(supervisor, r"chatty#1 +\| done$", timeout=60)
    grown = vm_hwm_kib(supervisor.pid) - before
    assert grown < 8 * 1024, f"the supervisor's peak memory grew by {grown} KiB"
    supervisor.send_signal(signal.SIGINT)
    assert rt.finish(supervisor) == 128 + signal.SIGINT
