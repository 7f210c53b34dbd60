"""Id allocation: the one allocator of reusable small ids.

Writer ids (the producer's arbiter, 1..32767), producer ids and global buffer
ids (the service, 1..65535) come from an `IdPool`. 0 is never handed out, and a
released id is not reused at once: allocation goes round-robin from the last id
handed out, so a late message naming an old id finds nothing rather than its
successor. Pure and not thread-safe: a caller shared by threads (the arbiter)
holds its own lock around it.
"""

from __future__ import annotations


class IdPool:
    """Ids in [1, limit], handed out round-robin, lowest free after a wrap."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used: set[int] = set()
        self._last = 0

    def allocate(self) -> int | None:
        """A free id, or None when all `limit` are in use."""
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
