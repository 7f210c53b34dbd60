"""What `tracebus run` does with the helper processes it starts itself (its own
service, the system probes): say things on stderr, show the tail of a child's
log when it failed, and end a child: SIGTERM, then SIGKILL if it hangs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LOG_TAIL_CHARS = 2000


def say(message: str) -> None:
    print(f"tracebus: {message}", file=sys.stderr, flush=True)


def log_tail(path: Path | None) -> str:
    """The end of a child's log, or "(no output)"."""
    try:
        text = path.read_text(errors="replace") if path is not None else ""
    except OSError:
        text = ""
    return text[-LOG_TAIL_CHARS:].strip() or "(no output)"


def terminate(proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """SIGTERM `proc` if it runs, and SIGKILL it (saying so) if it has not exited
    within `timeout` seconds; it is reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        say(f"{what} did not stop in time: killed")
        proc.kill()
        proc.wait()
