"""A session that writes into a file (TraceConfig.write_into_file): what the
service keeps about the file, and the bytes that go into it, as values.

The core never touches the file. The shell opens it when the session is
enabled (a FileOpener the shell passes in: the path the consumer named, or the
config's output_path; O_CREAT|O_TRUNC, mode 0600, only a regular file;
OSError refuses the enable) and gets back a file id; from then on the core
says what to do with it by outputs (outbox.py): AppendToFile(file id, bytes)
and CloseFile(file id).
File ids are the shell's own (never reused, so never an fd number): a write
that fails closes the file in the shell, which tells the core
(ServiceCore.file_failed); the session then ends with that error in its end
reply, and nothing more is drained from it.

What goes into the file is a perfetto.protos.Trace, in the order of a
consumer's read (readback.py): every drain is one read of the session (the
service's packets first, then each buffer's), and the end of the session adds
trace_stats before the file is closed::

    drain 1: clock snapshot, trace_config, tracing_started, buffers ...
    drain 2: buffers ...                      (every file_write_period_ms)
    last:    ..., tracing_disabled, buffers ..., trace_stats   then CloseFile

max_file_size_bytes bounds the file: a drain writes the whole packets that
fit; the first that does not ends the writing (the file is closed at once,
nothing half-written) and the session is disabled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.readback import PendingRead

NS_PER_MS = 1_000_000
DEFAULT_WRITE_PERIOD_MS = 5000
MIN_WRITE_PERIOD_MS = 100  # a smaller period is raised to this (as Perfetto does)

# The shell's: opens `path` for a session's trace, returns the id outputs name
# it by; raises OSError when it cannot.
FileOpener = Callable[[str], int]


def no_files(path: str) -> int:
    """The FileOpener of a core given none: every write_into_file is refused."""
    raise OSError(0, "this service writes no trace files")


def write_period_ns(config: pb.TraceConfig) -> int:
    period_ms = config.file_write_period_ms or DEFAULT_WRITE_PERIOD_MS
    return max(period_ms, MIN_WRITE_PERIOD_MS) * NS_PER_MS


def output_path(requested: str, config: pb.TraceConfig) -> tuple[str, str]:
    """(path, error): the consumer's path, else the config's output_path; the
    service's working directory means nothing to the consumer, so it must be
    absolute."""
    path = requested or config.output_path
    if not path:
        return "", "write_into_file needs an output path (the consumer's, or output_path)"
    if not path.startswith("/"):
        return "", f"the output path must be absolute, got {path!r}"
    return path, ""


@dataclass
class EndOfSession:
    """The session is stopped: after the last drain, the file is closed and the
    consumer hears that the session ended, naming these timed-out instances."""

    stop_timed_out: list[str]


@dataclass
class SessionFile:
    """A session's open trace file, as the core sees it."""

    file_id: int  # the shell's name for it
    max_bytes: int  # 0: no limit
    period_ns: int
    next_drain: int | None  # None while a drain runs or once the file is closed
    written: int = 0  # bytes the core asked the shell to append
    read: PendingRead | None = None  # the drain under way
    ending: EndOfSession | None = None  # set when the session stopped
    final_read: bool = False  # the drain under way started after `ending`
    closed: bool = False
    error: str = ""  # why writing it failed: the session's end reply says it
    # The end reply waits for the next turn, after the shell has done the writes
    # and the close before it: a failure of those reaches the reply (as `error`).
    end_due: bool = False

    def start_read(self, session_id: int) -> None:
        """Begin a drain (a read whose sink is this file, so no consumer or request)."""
        self.read = PendingRead(b"", 0, session_id)
        self.final_read = self.ending is not None

    def end(self, session_id: int, stop_timed_out: list[str]) -> None:
        """The session stopped: one last drain, after the one under way if any;
        then trace_stats, the file closed, and the consumer told."""
        self.ending = EndOfSession(stop_timed_out)
        self.next_drain = None
        if self.closed:  # (max_file_size_bytes, a failed write): nothing to drain
            self.end_due = True
        elif self.read is None:
            self.start_read(session_id)


def trace_bytes(records: list[bytes], room: int | None) -> tuple[bytes, bool]:
    """Framed packets (readback.TRACE_FILE: one record per packet) as the bytes
    to append. With `room` (bytes left under max_file_size_bytes), only the whole
    packets that fit: the second value is False when one did not fit (it and
    what follows are left out)."""
    if room is None:
        return b"".join(records), True
    size = 0
    for i, record in enumerate(records):
        if size + len(record) > room:
            return b"".join(records[:i]), False
        size += len(record)
    return b"".join(records), True
