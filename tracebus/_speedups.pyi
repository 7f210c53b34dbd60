"""The compiled twin of the SDK's event path (tracebus/_speedups.c)."""

import threading
from collections.abc import Callable
from typing import Any

class SequenceCore:
    busy: bool
    abandoned: bool
    writer: Any
    begins: dict[int, dict[str, dict[str, bytes]]] | None
    instants: dict[int, dict[str, dict[str, bytes]]] | None
    ends: dict[Any, bytes] | None
    counters: dict[str, bytes] | None
    clock: Callable[[], int] | None

class InstanceCore:
    live: bool
    _local: threading.local
    def forget_thread(self) -> None: ...

class Api:
    def __init__(
        self,
        wanted: dict[str, tuple[Any, ...]],
        py_slice: Callable[..., Any],
        py_instant: Callable[..., None],
        py_counter: Callable[..., None],
        error: Callable[[str, BaseException], None],
    ) -> None: ...
    def slice(self, *args: Any, **kwargs: Any) -> Any: ...
    def instant(self, *args: Any, **kwargs: Any) -> None: ...
    def counter(self, *args: Any, **kwargs: Any) -> None: ...

NO_SLICE: Any

def has_writer() -> bool: ...
