"""The one poll loop every shell runs: ZeroMQ sockets, plain file descriptors
(pidfds of watched processes, a signal wake-up pipe), deadlines, and a stop.

Cores never see this: a shell registers its sockets and timers here and feeds
what arrives to its core as (peer, message, now).
"""

from __future__ import annotations

import heapq
import itertools
import os
import signal
import time
from collections.abc import Callable

import zmq

Callback = Callable[[], None]


class Timer:
    __slots__ = ("deadline", "fn", "cancelled")

    def __init__(self, deadline: int, fn: Callback) -> None:
        self.deadline = deadline
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """Single-threaded: callbacks run one at a time, in the thread calling run()."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.now = clock
        self._poller = zmq.Poller()
        self._handlers: dict[object, Callback] = {}
        self._timers: list[tuple[int, int, Timer]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.add_fd(self._wake_r, self._drain_wake)

    # -- registration -------------------------------------------------------------

    def add_socket(self, sock: zmq.Socket, on_readable: Callback) -> None:
        self._poller.register(sock, zmq.POLLIN)
        self._handlers[sock] = on_readable

    def add_fd(self, fd: int, on_readable: Callback) -> None:
        self._poller.register(fd, zmq.POLLIN)
        self._handlers[fd] = on_readable

    def remove(self, sock_or_fd: zmq.Socket | int) -> None:
        if sock_or_fd in self._handlers:
            self._poller.unregister(sock_or_fd)
            del self._handlers[sock_or_fd]

    def call_at(self, deadline_ns: int, fn: Callback) -> Timer:
        timer = Timer(deadline_ns, fn)
        heapq.heappush(self._timers, (deadline_ns, next(self._seq), timer))
        return timer

    def call_later(self, seconds: float, fn: Callback) -> Timer:
        return self.call_at(self.now() + int(seconds * 1e9), fn)

    # -- running --------------------------------------------------------------------

    def stop(self) -> None:
        """Ask run() to return; safe from a signal handler or another thread."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # already woken

    def stop_on_signals(self, *signums: int, on_signal: Callable[[int], None] | None = None):
        """Install handlers for SIGINT/SIGTERM (by default) that stop the loop."""

        def handler(signum, _frame):
            if on_signal is not None:
                on_signal(signum)
            self.stop()

        for signum in signums or (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, handler)

    def run(self, until: Callable[[], bool] | None = None, timeout: float | None = None) -> bool:
        """Run until stop(), `until()` is true, or `timeout` seconds pass.
        Returns True if it ended for stop() or `until`, False on timeout."""
        self._stopping = False
        end = None if timeout is None else self.now() + int(timeout * 1e9)
        while not self._stopping:
            if until is not None and until():
                return True
            now = self.now()
            if end is not None and now >= end:
                return False
            self._run_due_timers(now)
            if self._stopping or (until is not None and until()):
                return True
            wait_ms = self._poll_timeout_ms(self.now(), end)
            for item, _event in self._poller.poll(wait_ms):
                handler = self._handlers.get(item)
                if handler is not None:
                    handler()
        return True

    def _run_due_timers(self, now: int) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.fn()

    def _poll_timeout_ms(self, now: int, end: int | None) -> int:
        deadlines = [t[0] for t in self._timers[:1]]
        if end is not None:
            deadlines.append(end)
        if not deadlines:
            return 1000  # wake up now and then even when idle
        return max(0, min(1000, -(-(min(deadlines) - now) // 1_000_000)))

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
