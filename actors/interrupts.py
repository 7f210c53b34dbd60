"""Interrupts: how a consumer process (the record CLI, a script runner) takes
SIGINT and SIGTERM.

The first signal, once there is a target, only asks it to stop waiting
(`target.interrupt()`: it sets a flag, so nothing here can re-enter a write),
and the process then finishes in order (flush, disable, read back, save). A
signal before there is a target, or a second one, aborts: KeyboardInterrupt.
`exit_code` is 128 + the first signal's number (130 for SIGINT), the shell
convention. A shell module: it installs signal handlers.
"""

from __future__ import annotations

import signal
from typing import Any, Protocol

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interruptible(Protocol):
    def interrupt(self) -> None: ...


class Interrupts:
    """SIGINT/SIGTERM handlers around one target; install(), then restore()."""

    def __init__(self) -> None:
        self.signum = 0  # the first signal received, 0 before any
        self.target: Interruptible | None = None
        self._saved: dict[int, Any] = {}

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            self._saved[signum] = signal.signal(signum, self._on_signal)

    def restore(self) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()

    def _on_signal(self, signum: int, _frame: object) -> None:
        first, self.signum = not self.signum, self.signum or signum
        if first and self.target is not None:
            self.target.interrupt()
        else:
            raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        """128 + signum; 130 (SIGINT's) if the interrupt came another way."""
        return 128 + (self.signum or signal.SIGINT)
