"""Id allocation for the service: producer ids and global buffer ids are u16
pools (`IdPool`, the one allocator, lives in shm/ids.py and is re-exported
here); session, instance and flush ids only grow (`Counter`)."""

from __future__ import annotations

from shm.ids import IdPool

__all__ = ["Counter", "IdPool"]


class Counter:
    """Ever-growing ids starting at 1."""

    def __init__(self) -> None:
        self._next = 1

    def next(self) -> int:
        value = self._next
        self._next += 1
        return value
