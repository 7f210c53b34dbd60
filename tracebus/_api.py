"""The public calls of `import tracebus` (re-exported by tracebus/__init__.py).

Every call is safe to make anywhere: it never raises into the application
(errors are counted in stats() and logged once per kind) and never blocks, but
for each thread's bounded startup wait (tracebus/_runtime.py: by default only
while the producer connects to a running service; up to the bound asked for
with init(wait_for_start=) or TRACEBUS_STARTUP_WAIT_S). When no session wants
an event's category, the call costs one dict lookup (tracebus/_runtime.py's
WANTED) and slice() returns a shared no-op context manager. The first call
starts the producer in the background; nothing heavy is imported here.

slice(), instant() and counter() below are the readable reference. When the
compiled twin was built (tracebus/_speedups.c; shm/native.py), the module's
public names are its functions instead: they do the common case (str name and
category, no args or flows, an event seen before on this thread) in C and hand
everything else to the functions below, which they were built over.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

from shm.native import compiled
from tracebus import _runtime

F = TypeVar("F", bound=Callable[..., Any])

_wanted = _runtime.WANTED  # the same dict for the life of the process (forks clear it)
_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect


def _error(kind: str, error: BaseException) -> None:
    _runtime.current.count_error(kind, error)


def _text(value: object) -> str:
    """A name or category as text, whatever the caller passed."""
    if type(value) is str:
        return value
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a __str__ that raises
        return "<unprintable>"


class _NoSlice:
    """What slice() returns when nobody wants the event: one shared object."""

    __slots__ = ()

    def __enter__(self) -> _NoSlice:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SLICE = _NoSlice()


class _Slice:
    """A slice on every instance that wanted its category when it was created.
    Built by slice() without an __init__ frame (the enabled path's cost)."""

    __slots__ = ("_wanted", "_event", "_opened")

    _wanted: tuple[Any, ...]
    _event: tuple[str, str, Any, Any, Any]  # name, category, args, flow, terminate_flow
    _opened: tuple[tuple[Any, Any], ...]  # (instance, what its end() needs)

    def __enter__(self) -> _Slice:
        opened = []
        for instance in self._wanted:
            try:
                token = instance.begin(*self._event)
            except Exception as e:
                _error("slice", e)
                continue
            if token is not None:
                opened.append((instance, token))
        self._opened = tuple(opened)
        return self

    def __exit__(self, *exc: object) -> None:
        for instance, token in self._opened:
            try:
                instance.end(token)
            except Exception as e:
                _error("slice end", e)
        self._opened = ()


_new_slice = object.__new__


def slice(
    name: str, category: str = "default", args: Mapping[str, Any] | None = None,
    flow: Any = None, terminate_flow: Any = None,
) -> _Slice | _NoSlice:  # fmt: skip
    """A context manager: a slice on this thread's track (the current asyncio task's
    track inside a task). `args` become debug annotations; `flow` (a key, or a list
    of keys: ints or strings, the same in every process) connects this slice to the
    other slices of those keys, `terminate_flow` ends such a flow here."""
    try:
        wanted = _wanted.get(category)
        if wanted is None:
            wanted = _runtime.current.resolve(_text(category))
        if wanted:
            new = _new_slice(_Slice)
            new._wanted = wanted
            new._event = (_text(name), _text(category), args, flow, terminate_flow)
            new._opened = ()  # an __exit__ without __enter__ ends nothing
            return new
    except Exception as e:
        _error("slice", e)
    return _NO_SLICE


def instant(
    name: str, category: str = "default", args: Mapping[str, Any] | None = None,
    flow: Any = None, terminate_flow: Any = None,
) -> None:  # fmt: skip
    """An instant event on this thread's (or the current asyncio task's) track."""
    try:
        wanted = _wanted.get(category)
        if wanted is None:
            wanted = _runtime.current.resolve(_text(category))
        for instance in wanted:
            instance.instant(_text(name), _text(category), args, flow, terminate_flow)
    except Exception as e:
        _error("instant", e)


def counter(name: str, value: float, category: str = "default", unit: str = "") -> None:
    """A counter track per name under the process: int or float values. `unit`:
    "ns", "count", "bytes", or any name of your own."""
    try:
        wanted = _wanted.get(category)
        if wanted is None:
            wanted = _runtime.current.resolve(_text(category))
        if wanted:
            number = _number(value)
            for instance in wanted:
                instance.counter(_text(name), number, _text(category), _text(unit))
    except Exception as e:
        _error("counter", e)


py_slice, py_instant, py_counter = slice, instant, counter  # the pure-Python twins
_speedups = compiled("tracebus._speedups")
if _speedups is not None:
    _compiled = _speedups.Api(_wanted, py_slice, py_instant, py_counter, _error)
    _NO_SLICE = _speedups.NO_SLICE  # one shared no-op, whichever twin returns it
    slice, instant, counter = _compiled.slice, _compiled.instant, _compiled.counter


def _number(value: object) -> int | float:
    if type(value) is int or type(value) is float:
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    return float(value)  # type: ignore[arg-type]  # ValueError/TypeError: counted


@overload
def trace(fn: F, *, name: str | None = None, category: str = "default") -> F: ...
@overload
def trace(
    fn: str | None = None, *, name: str | None = None, category: str = "default"
) -> Callable[[F], F]: ...
def trace(
    fn: F | str | None = None, *, name: str | None = None, category: str = "default"
) -> F | Callable[[F], F]:
    """Decorate a function (or an async def) so that each call is a slice named
    after it (its __qualname__, or `name`; `@trace("name")` works too). An async
    def's slice spans its awaits and lives on its task's track. A generator's (or
    an async generator's) slice covers only its creation."""
    if isinstance(fn, str):
        name, fn = fn, None

    def decorate(f: F) -> F:
        if not callable(f):
            return f  # not ours to judge: the call fails where the app makes it
        try:
            return _traced(f, _text(name or getattr(f, "__qualname__", None) or f), category)
        except Exception as e:
            _error("trace", e)
            return f

    return decorate if fn is None else decorate(fn)


def _traced(f: F, name: str, category: str) -> F:
    code = getattr(f, "__code__", None)
    if code is not None and code.co_flags & _CO_COROUTINE:

        @functools.wraps(f)
        async def traced_async(*args: Any, **kwargs: Any) -> Any:
            with slice(name, category):
                return await f(*args, **kwargs)

        return traced_async  # type: ignore[return-value]

    @functools.wraps(f)
    def traced(*args: Any, **kwargs: Any) -> Any:
        with slice(name, category):
            return f(*args, **kwargs)

    return traced  # type: ignore[return-value]


def init(
    name: str | None = None, *, endpoint: str | None = None, wait_for_start: float | None = None
) -> None:
    """Optional: start tracing now, as `name` (default: $TRACEBUS_PRODUCER_NAME, else
    the script's name), at `endpoint` (default: $TRACEBUS_PRODUCER_SOCK, else the
    default service). With `wait_for_start`, this call waits up to that many seconds
    for a session to start recording this process. Settings given after the first
    event are ignored; a `name` is also exported as $TRACEBUS_PRODUCER_NAME, so the
    processes this one starts (multiprocessing children included) carry it. Never
    raises."""
    try:
        _runtime.current.configure(name, endpoint, wait_for_start)
        _runtime.current.ensure_started()
    except Exception as e:
        _error("init", e)


def shutdown() -> None:
    """Flush what was written and detach from the service; later calls record
    nothing. Also runs at exit. Safe from any thread, any number of times."""
    _runtime.shutdown()


def define_category(name: str, tags: Iterable[str] = (), description: str = "") -> None:
    """Declare a category's tags ("slow" and "debug" ones are off unless a session
    enables them), which the sessions' category filters match."""
    try:
        _runtime.current.define_category(_text(name), tuple(_text(t) for t in tags))
    except Exception as e:
        _error("define_category", e)


def flow_id(key: object) -> int:
    """The 64-bit flow id that `flow=key` uses (the same in every process)."""
    from actors.track_event import flow_id as encode

    return encode(key)


def trigger(*names: str, ttl_s: float = 60.0) -> None:
    """Fire named triggers: every tracing session whose trigger_config names one
    starts, stops or takes a snapshot, as its trigger_mode says (Perfetto's
    Tracing::ActivateTriggers). Sent by this process's producer, which the
    service names and identifies (producer_name_regex matches that name). Never
    blocks: before the producer is connected the names wait for it, at most
    `ttl_s` seconds (then they are dropped, counted in stats()["triggers_dropped"])."""
    try:
        _runtime.current.trigger(tuple(_text(n) for n in names), float(ttl_s))
    except Exception as e:
        _error("trigger", e)


def stats() -> dict[str, Any]:
    """The SDK's own counters: state, instances, packets dropped, internal errors."""
    try:
        return _runtime.current.stats()
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)}
