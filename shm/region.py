"""Memory regions that hold an SMB: a sealed memfd shared between two processes,
or a bytearray for tests in one process. Both expose `buf` (a writable
memoryview of exactly `size` bytes) and `close()`.

A memfd has no name in /dev/shm, so a crash cannot leak one; the seals
(F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) stop the other side from resizing
the file, which would otherwise crash the service with SIGBUS on its next
access. The service creates the region; the producer attaches the file
descriptor the service passed it (attach_fd: size and seals checked; see
actors/smb_handoff.py). attach_path (a /proc/<pid>/fd/<n> path) serves tests
and benchmarks between processes of one user; the service publishes no path.
"""

from __future__ import annotations

import fcntl
import mmap
import os

REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class RegionError(Exception):
    """A region could not be created or attached, or is not safe to map."""


class Region:
    """Base: a writable memoryview over `size` bytes."""

    fd: int | None = None

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.size = len(buf)

    def close(self) -> None:
        self.buf.release()

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessRegion(Region):
    """A region over a bytearray: the same interface, for tests in one process."""

    def __init__(self, size: int) -> None:
        super().__init__(memoryview(bytearray(size)))


class MemfdRegion(Region):
    """A sealed memfd mapped shared. Owns its fd and mapping until close()."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        try:
            self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError) as e:
            os.close(fd)
            raise RegionError(f"cannot map memfd of {size} bytes: {e}") from e
        super().__init__(memoryview(self._mmap))

    @classmethod
    def create(cls, size: int, name: str = "tracebus-smb") -> MemfdRegion:
        """A new zero-filled region of `size` bytes, sealed against resizing."""
        if size <= 0:
            raise RegionError(f"region size must be positive, got {size}")
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, REQUIRED_SEALS)
        except OSError as e:
            os.close(fd)
            raise RegionError(f"cannot create sealed memfd: {e}") from e
        return cls(fd, size)

    @classmethod
    def attach_fd(cls, fd: int, expected_size: int | None = None) -> MemfdRegion:
        """Map a memfd received from the other side; takes ownership of `fd`.

        Refuses a file that is not sealed against resizing or whose size is not
        the one agreed on, so the peer cannot make our accesses fault later."""
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            size = os.fstat(fd).st_size
        except OSError as e:
            os.close(fd)
            raise RegionError(f"fd {fd} is not a sealable memfd: {e}") from e
        problem = None
        if seals & REQUIRED_SEALS != REQUIRED_SEALS:
            problem = f"memfd is missing seals (has {seals:#x}, needs {REQUIRED_SEALS:#x})"
        elif expected_size is not None and size != expected_size:
            problem = f"memfd has {size} bytes, expected {expected_size}"
        elif size <= 0:
            problem = "memfd is empty"
        if problem:
            os.close(fd)
            raise RegionError(problem)
        return cls(fd, size)

    @classmethod
    def attach_path(cls, path: str, expected_size: int | None = None) -> MemfdRegion:
        """Attach through a path such as /proc/<pid>/fd/<n> (same uid only)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise RegionError(f"cannot open {path}: {e}") from e
        return cls.attach_fd(fd, expected_size)

    def close(self) -> None:
        """Unmap and close. Raises BufferError while a slice of `buf` is still
        alive (memory cannot be unmapped under a view); release it and retry."""
        self.buf.release()
        if not self._mmap.closed:
            self._mmap.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
