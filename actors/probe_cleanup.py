"""Removing what a dead probes process left in the kernel, without waiting for it.

A probes process removes its ftrace instance (`instances/tracebus-<pid>`) when
its sessions stop; one that is SIGKILLed cannot, and its instance would go on
tracing into a kernel buffer nobody reads. The service (when a producer that
registered linux.ftrace goes away) and the supervisor (when a probes child it
started dies) therefore run `python -m actors.probes --cleanup`, which removes
the instances of processes that are gone, and never one of a live process.

ProbeCleanup runs it in the background on the caller's poll loop: request()
starts one run (a pidfd on the loop reaps it when it exits) or, while one runs,
asks for one more after it, so that a crash loop costs one run at a time.
after_exit(pidfd) requests one once that process has exited: a producer the
service gave up on while it was stopped (SIGSTOP) still owns its instance, and
leaves it behind only if it dies later. The
run's own output (one line per instance removed) goes to the caller's stderr,
which is its log. close() waits a bounded time for a run in progress and kills
it past that bound.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from actors.loop import Loop

FTRACE_DATA_SOURCE = "linux.ftrace"  # a producer hosting it may leave an instance behind
CLOSE_TIMEOUT_S = 5.0  # a run mounts tracefs and removes a few directories: well under this


def cleanup_argv() -> list[str]:
    return [sys.executable, "-m", "actors.probes", "--cleanup"]


class ProbeCleanup:
    """At most one `actors.probes --cleanup` at a time, started from a poll loop."""

    def __init__(self, loop: Loop, say: Callable[[str], object]) -> None:
        self.loop = loop
        self.say = say
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd = -1
        self.again = False  # asked for while a run was going on
        self.watched: set[int] = set()  # pidfds of processes to clean up after
        self.runs = 0
        self.failures = 0

    def request(self, why: str) -> None:
        """Remove stale instances soon (`why` is logged with the start)."""
        if self.proc is not None:
            self.again = True
            return
        try:
            self.proc = subprocess.Popen(cleanup_argv(), stdin=subprocess.DEVNULL)
            self.pidfd = os.pidfd_open(self.proc.pid)
        except OSError as e:
            self.failures += 1
            self.say(f"cannot run the ftrace cleanup ({why}): {e}")
            self._forget()
            return
        self.runs += 1
        self.say(f"checking for stale ftrace instances: {why}")
        self.loop.add_fd(self.pidfd, self._on_exit)

    def after_exit(self, pidfd: int, why: str) -> None:
        """request(why) once the process of `pidfd` has exited (at once if it has);
        the pidfd is ours from now on."""

        def exited() -> None:
            self.watched.discard(pidfd)
            self.loop.remove(pidfd)
            os.close(pidfd)
            self.request(why)

        self.watched.add(pidfd)
        self.loop.add_fd(pidfd, exited)

    def _on_exit(self) -> None:
        assert self.proc is not None, "the pidfd is watched only while a run goes on"
        code = self.proc.wait()
        if code != 0:
            self.failures += 1
            self.say(f"the ftrace cleanup exited with {code}")
        self._forget()
        if self.again:
            self.again = False
            self.request("asked for again while it ran")

    def _forget(self) -> None:
        if self.pidfd >= 0:
            self.loop.remove(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        self.proc = None

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Wait for a run in progress (at most `timeout` seconds, then kill it), then
        do the run asked for meanwhile, if any, before returning (a probes process
        killed in a teardown is cleaned up after); a run for a process still
        running is dropped: the next probes start does it."""
        for pidfd in self.watched:
            self.loop.remove(pidfd)
            os.close(pidfd)
        self.watched.clear()
        proc = self.proc
        if proc is None:
            return
        self._wait(proc, timeout)
        self._forget()
        if self.again:
            self.again = False
            try:
                self._wait(subprocess.Popen(cleanup_argv(), stdin=subprocess.DEVNULL), timeout)
            except OSError as e:
                self.say(f"cannot run the ftrace cleanup: {e}")

    def _wait(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.say("the ftrace cleanup did not end in time: killing it")
            proc.kill()
            proc.wait()
