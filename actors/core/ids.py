"""Id allocation for the service: producer ids and global buffer ids are u16
pools (0 is never used and ids are reused only after release, lowest free
first after the counter wraps); session, instance and flush ids only grow."""

from __future__ import annotations


class IdPool:
    """Ids in [1, limit], handed out round-robin so a released id is not reused
    at once (a late message naming the old id then finds nothing)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used: set[int] = set()
        self._last = 0

    def allocate(self) -> int | None:
        for step in range(1, self._limit + 1):
            candidate = (self._last + step - 1) % self._limit + 1
            if candidate not in self._used:
                self._used.add(candidate)
                self._last = candidate
                return candidate
        return None

    def release(self, value: int) -> None:
        self._used.discard(value)

    def __len__(self) -> int:
        return len(self._used)


class Counter:
    """Ever-growing ids starting at 1."""

    def __init__(self) -> None:
        self._next = 1

    def next(self) -> int:
        value = self._next
        self._next += 1
        return value
