"""The trace files of write_into_file sessions, in the service's shell: the
service opens the path a consumer names (consumers run as the service's user),
and appends and closes as the core says (actors/core/file_sink.py).

Only a regular file is taken: the path is opened without blocking (a FIFO with
no reader would otherwise block the whole service) and anything else is
refused with "not a regular file". A file is named by an id of its own, never
its fd: a closed fd number is soon reused, and a late append must not land in
another session's file. A write or close that fails closes the file and
returns the error: the shell hands it to ServiceCore.file_failed, which ends
the session with it.

A Perfetto consumer (the `perfetto` command line) passes the file itself: an
fd with its EnableTracing (SCM_RIGHTS). `adopt(fd)` takes it and returns a
token path for it, which the translator (actors/core/perfetto_consumer.py)
puts in the request's output_path; `open(token)` then takes the adopted fd
instead of opening a path. A token starts with "/" (the core accepts only
absolute paths) and ends in a NUL byte, so no path a consumer names is a file
(the kernel's paths hold no NUL) and a token is readable in a message up to the
NUL. An adoption lives for one core call: the shell calls `discard_adopted()`
after it, which closes what the core did not open (a refused session's fd). An
adopted fd is checked as an opened path is: only a regular file is written to
(a pipe or socket the peer left blocking would stall the service).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import sys
from collections.abc import Callable

NOT_REGULAR = "not a regular file"

# os.write's shape: tests inject one that fails.
Writer = Callable[[int, memoryview], int]


def log(text: str) -> None:
    print(f"[service] {text}", file=sys.stderr, flush=True)


class TraceFiles:
    def __init__(self, write: Writer = os.write) -> None:
        self._write = write
        self._ids = itertools.count(1)
        self.fds: dict[int, int] = {}  # file id -> fd
        self.paths: dict[int, str] = {}
        self._adoptions = itertools.count(1)
        self._adopted: dict[str, int] = {}  # token -> fd, until opened or discarded

    def adopt(self, fd: int) -> str:
        """Take `fd` (a consumer's output file): the token path `open` takes it by."""
        token = f"/<the output fd the consumer passed, #{next(self._adoptions)}>\0"
        self._adopted[token] = fd
        return token

    def discard_adopted(self) -> None:
        """Close the adopted fds no session opened (after each core call)."""
        adopted, self._adopted = self._adopted, {}
        for fd in adopted.values():
            try:
                os.close(fd)
            except OSError:
                pass  # closed is what we want

    def open(self, path: str) -> int:
        """The new file's id. Raises OSError (the core refuses the session with it)."""
        fd = self._adopted.pop(path, None)
        if fd is not None:
            return self._add(fd, path.rstrip("\0"))
        if "\0" in path:  # os.open would raise ValueError: not a path, nor a token now
            raise OSError(errno.ENOENT, "no such file (the path holds a NUL byte)")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            if e.errno == errno.ENXIO:  # a FIFO without a reader, a socket
                raise OSError(e.errno, NOT_REGULAR) from None
            raise
        return self._add(fd, path)

    def _add(self, fd: int, path: str) -> int:
        """Keep `fd` as a new file if it is a regular file; else close it, OSError."""
        try:
            os.set_inheritable(fd, False)  # an adopted fd may come without CLOEXEC
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            os.close(fd)
            raise
        if not regular:
            os.close(fd)
            raise OSError(errno.EINVAL, NOT_REGULAR)
        file_id = next(self._ids)
        self.fds[file_id] = fd
        self.paths[file_id] = path
        return file_id

    def append(self, file_id: int, data: bytes) -> str:
        """The empty string, or why the write failed (the file is closed then;
        later appends to it are dropped)."""
        fd = self.fds.get(file_id)
        if fd is None:
            return ""
        try:
            view = memoryview(data)
            while view:
                view = view[self._write(fd, view) :]
        except OSError as e:
            log(f"writing {self.paths[file_id]} failed: {e.strerror}; no more is written to it")
            self.close(file_id)
            return e.strerror or str(e)
        return ""

    def close(self, file_id: int) -> str:
        """The empty string, or why closing failed (a write-back error can show only here)."""
        fd = self.fds.pop(file_id, None)
        path = self.paths.pop(file_id, None)
        if fd is None:
            return ""
        try:
            os.close(fd)
        except OSError as e:
            log(f"closing {path} failed: {e.strerror}")
            return e.strerror or str(e)
        return ""

    def close_all(self) -> None:
        for file_id in list(self.fds):
            self.close(file_id)
        self.discard_adopted()
