"""The one poll loop every shell runs: ZeroMQ sockets, plain file descriptors
(pidfds of watched processes), deadlines, calls handed over by other threads,
and a stop.

Cores never see this: a shell registers its sockets and timers here and feeds
what arrives to its core as (peer, message, now).

Threads. Everything runs on the thread calling run(), one callback at a time.
Two entry points are safe from any thread (and from a signal handler): stop()
and call_soon(fn), which queues fn for the loop thread and wakes it through the
loop's self-pipe. After close() both are no-ops (call_soon returns False): the
pipe is closed under the same lock they write under, so a late caller never
writes to a closed (or, worse, reused) descriptor.
"""

from __future__ import annotations

import heapq
import itertools
import os
import signal
import threading
import time
from collections import deque
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
    """Callbacks run one at a time, in the thread calling run(); stop() and
    call_soon() may come from any thread."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.now = clock
        self._poller = zmq.Poller()
        self._handlers: dict[object, Callback] = {}
        self._timers: list[tuple[int, int, Timer]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._calls: deque[Callback] = deque()  # from call_soon, in order
        # Guards the wake pipe against close(). Reentrant: a signal handler that
        # calls stop() may interrupt this thread inside call_soon().
        self._wake_lock = threading.RLock()
        self._wake_pending = False  # a byte is in the pipe; no need for another
        self._closed = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.add_fd(self._wake_r, self._on_wake)

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

    def rearm(self, timer: Timer | None, deadline_ns: int | None, fn: Callback) -> Timer | None:
        """The timer to hold for `deadline_ns` (None: none): `timer` itself if it is
        set for that deadline already, else it is cancelled and a new one set."""
        if timer is not None:
            if timer.deadline == deadline_ns:
                return timer
            timer.cancel()
        return self.call_at(deadline_ns, fn) if deadline_ns is not None else None

    def call_later(self, seconds: float, fn: Callback) -> Timer:
        return self.call_at(self.now() + int(seconds * 1e9), fn)

    # -- running --------------------------------------------------------------------

    def call_soon(self, fn: Callback) -> bool:
        """Run fn on the loop thread, after the callbacks already queued; safe from
        any thread. False (and fn dropped) once the loop is closed."""
        with self._wake_lock:
            if self._closed:
                return False
            self._calls.append(fn)
            self._wake_locked()
        return True

    def stop(self) -> None:
        """Ask run() to return; safe from a signal handler or another thread, and
        a no-op once the loop is closed."""
        with self._wake_lock:
            self._stopping = True
            self._wake_locked()

    def _wake_locked(self) -> None:
        if self._closed or self._wake_pending:
            return
        self._wake_pending = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the loop is woken anyway

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
            self._dispatch(self._poller.poll(self._poll_timeout_ms(self.now(), end)))
        return True

    def _dispatch(self, events: list[tuple[object, int]]) -> None:
        """Run the handlers of one poll's events. A handler removed or replaced by
        an earlier one of the round is not run: its event is stale (say, a closed
        pidfd whose number an accept just reused for a new connection's)."""
        handlers = [(item, self._handlers.get(item)) for item, _event in events]
        for item, handler in handlers:
            if handler is not None and self._handlers.get(item) is handler:
                handler()

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

    def _on_wake(self) -> None:
        with self._wake_lock:
            # Cleared before draining: a call queued from now on writes again.
            self._wake_pending = False
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        # Only the calls queued so far: one that queues itself again runs on the
        # next turn, after the sockets and timers had theirs.
        for _ in range(len(self._calls)):
            self._calls.popleft()()

    def run_queued_calls(self) -> None:
        """Run the call_soon() calls still queued (after run() returned: a stop() may
        have overtaken them), on the loop thread."""
        for _ in range(len(self._calls)):
            self._calls.popleft()()

    def close(self) -> None:
        """Release the wake pipe; stop() and call_soon() do nothing afterwards, and
        calls still queued are dropped. Idempotent."""
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
            self._calls.clear()
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
