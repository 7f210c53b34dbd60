"""Self-checks of the process harness (tests/processes.py): its cleanup can fail.

A harness whose "nothing left behind" check never fires would prove nothing, so
each leftover it promises to catch is made here on purpose, and close() must
clean it up and then fail naming it. None of these start the service but one,
which checks that a child exiting during a readiness wait fails the wait at once
with its log instead of waiting out the deadline.
"""

from __future__ import annotations

import os
import signal
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
