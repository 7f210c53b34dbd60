"""Self-checks of the process harness (tests/processes.py): its cleanup can fail.

A harness whose "nothing left behind" check never fires would prove nothing, so
each leftover it promises to catch is made here on purpose, and close() must
clean it up and then fail naming it. None of these start the service but three:
one checks that a child exiting during a readiness wait fails the wait at once
with its log instead of waiting out the deadline; two run a supervisor, whose
actors carry the marker: stopped by close(), its topology leaves nothing; killed,
it leaves its actors and its runtime directory, which close() removes and names.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shm.region import MemfdRegion
from tests.processes import READY_TIMEOUT, Runtime, marked_pids, smb_memfds

# Starts a grandchild (inheriting the marker) that outlives its parent.
ORPHAN = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print("ORPHAN", child.pid, flush=True)
"""

IGNORES_SIGTERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("READY", flush=True)
time.sleep(120)
"""


# Writes on both streams, in an order a merged reader must keep.
BOTH_STREAMS = """
import sys
print("one", flush=True)
print("two", file=sys.stderr, flush=True)
print("three", flush=True)
"""

# A topology of the service and one producer that runs until it is stopped, in a
# runtime directory of the supervisor's own making (outside the harness's).
RUNS_UNTIL_STOPPED = textwrap.dedent("""
    stop_when: never
    producers:
      - name: alpha
        builtin: []
    """)

# Writes to stderr the way a producer logs: every line prefixed with its name.
LOGS_ON_STDERR = """
import sys
print("printer: connecting", file=sys.stderr, flush=True)
print("printer: stopping", file=sys.stderr, flush=True)
print("not on stderr", flush=True)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def test_a_clean_runtime_closes_quietly_and_removes_its_directory():
    rt = Runtime()
    proc = rt.spawn("quiet", ["-c", "print('hello')"])
    assert proc.wait(timeout=30) == 0
    rt.close()
    assert not rt.dir.exists()


def test_an_orphaned_grandchild_is_killed_and_fails_the_test():
    rt = Runtime()
    parent = rt.spawn("parent", ["-c", ORPHAN], lines=True)
    orphan = int(rt.wait_line(parent, "ORPHAN").split()[1])
    assert parent.wait(timeout=30) == 0
    assert orphan in marked_pids(str(rt.dir))
    left = rf"processes still running after cleanup: \[{orphan}\]"
    with pytest.raises(AssertionError, match=left):
        rt.close()
    assert not alive(orphan)
    assert not rt.dir.exists()


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period():
    rt = Runtime()
    rt.stop_grace = 0.2
    stubborn = rt.spawn("stubborn", ["-c", IGNORES_SIGTERM], lines=True)
    rt.wait_line(stubborn, "READY")
    rt.close()  # nothing left: the harness killed it itself
    assert stubborn.returncode == -signal.SIGKILL


def test_an_smb_left_open_in_the_test_process_fails_the_test():
    rt = Runtime()
    region = MemfdRegion.create(4096)
    try:
        assert smb_memfds(os.getpid())
        with pytest.raises(AssertionError, match="SMB memfds still open or mapped"):
            rt.close()
    finally:
        region.close()
    assert not rt.dir.exists()


def test_a_service_that_exits_fails_the_readiness_wait_at_once_with_its_log():
    rt = Runtime()
    try:
        started = time.monotonic()
        with pytest.raises(AssertionError, match=r"the service exited with 2:\n(.|\n)*--bogus"):
            rt.start_service("--bogus")
        assert time.monotonic() - started < READY_TIMEOUT
    finally:
        rt.close()


def test_stderr_read_as_lines_is_waited_for_and_copied_to_the_log():
    rt = Runtime()
    try:
        printer = rt.spawn("printer", ["-c", LOGS_ON_STDERR], stderr="lines")
        line = rt.wait_line(printer, contains="stopping")
        assert line == "printer: stopping"  # the "connecting" line before it was skipped
        assert printer.wait(timeout=30) == 0
        with pytest.raises(AssertionError, match="no line starting with 'printer: '"):
            rt.wait_line(printer, "printer: ", timeout=0.2)  # stdout is not read as lines
        log = (rt.dir / "printer.log").read_text()  # each line is logged before it is queued
        assert "printer: connecting\nprinter: stopping\n" in log and "not on stderr" in log
    finally:
        rt.close()


def test_children_inherit_no_tracebus_variable_but_the_ones_given(monkeypatch):
    monkeypatch.setenv("TRACEBUS_CONSUMER_SOCK", "ipc:///nowhere")
    rt = Runtime()
    try:
        show = "import os; print(sorted(k for k in os.environ if k.startswith('TRACEBUS_')))"
        result = rt.run([sys.executable, "-c", show], env={"TRACEBUS_CONNECT_TIMEOUT": "1"})
        assert result.stdout.strip() == str(["TRACEBUS_CONNECT_TIMEOUT", "TRACEBUS_TEST_RUNTIME"])
    finally:
        rt.close()


def test_a_dev_shm_entry_left_behind_fails_the_test():
    rt = Runtime()
    entry = Path("/dev/shm") / f"tb-leftover-{os.getpid()}"
    entry.write_bytes(b"")
    try:
        assert rt.new_dev_shm_entries() == {entry.name}
        with pytest.raises(AssertionError, match=f"/dev/shm entries .*{entry.name}"):
            rt.close()
    finally:
        entry.unlink()
    assert not rt.dir.exists()


def test_output_keeps_every_line_of_both_streams_in_order():
    rt = Runtime()
    try:
        proc = rt.spawn("both", ["-c", BOTH_STREAMS], lines=True, stderr="stdout")
        assert rt.wait_output(proc, r"^t(\w+)$").group(1) == "wo"  # nothing consumed:
        assert rt.wait_line(proc, "t") == "two"  # wait_line still sees every line
        assert rt.finish(proc, timeout=30) == 0
        assert rt.output(proc) == "one\ntwo\nthree"
        ended, started = r"'four' not in the output of pid \d+, which ended", time.monotonic()
        with pytest.raises(AssertionError, match=ended):
            rt.wait_output(proc, "four", timeout=READY_TIMEOUT)
        assert time.monotonic() - started < READY_TIMEOUT
    finally:
        rt.close()


def test_a_running_supervisor_is_stopped_with_its_whole_topology():
    rt = Runtime()
    supervisor = rt.start_supervisor(rt.write_file("topology.yaml", RUNS_UNTIL_STOPPED))
    rt.wait_output(supervisor, r"alpha#1 registered")
    runtime = Path(rt.wait_output(supervisor, r"runtime dir (\S+)").group(1))
    actors = set(marked_pids(str(rt.dir))) - {supervisor.pid}
    assert len(actors) == 2  # the service and alpha#1 inherited the marker
    rt.close()  # SIGTERM: the supervisor stops its topology and removes its directory
    assert supervisor.returncode == 128 + signal.SIGTERM
    assert not any(alive(pid) for pid in actors)
    assert not runtime.exists() and not rt.dir.exists()


def test_a_killed_supervisor_leaves_its_actors_and_directory_which_fail_the_test():
    rt = Runtime()
    supervisor = rt.start_supervisor(rt.write_file("topology.yaml", RUNS_UNTIL_STOPPED))
    rt.wait_output(supervisor, r"alpha#1 registered")
    runtime = Path(rt.wait_output(supervisor, r"runtime dir (\S+)").group(1))
    assert not runtime.is_relative_to(rt.dir)
    supervisor.kill()
    supervisor.wait(timeout=30)
    actors = marked_pids(str(rt.dir))
    assert len(actors) == 2  # the service and alpha#1, in sessions of their own
    left = rf"processes still running after cleanup: {actors}(.|\n)*runtime directory .*{runtime}"
    with pytest.raises(AssertionError, match=left.replace("[", r"\[")):
        rt.close()
    assert not any(alive(pid) for pid in actors)
    assert not runtime.exists() and not rt.dir.exists()
