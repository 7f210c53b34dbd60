"""The tracebus API over a fake producer and fake track_event instances: what a
call writes, when it costs nothing, that it never raises, the startup wait,
shutdown from anywhere, and what `import tracebus` loads."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import tracebus
from tests.waiting import wait_for
from tracebus import _api, _runtime
from tracebus._logging import log_priority

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


class FakeInstance:
    """Records what the API asks of a track_event instance."""

    def __init__(self, categories: set[str] | None = None, fail: bool = False) -> None:
        self.live = False
        self.categories = categories  # None: every category
        self.fail = fail
        self.calls: list[tuple[Any, ...]] = []

    def wants(self, category: str, tags: tuple[str, ...]) -> bool:
        return (self.categories is None or category in self.categories) and "slow" not in tags

    def _record(self, *call: Any) -> None:
        if self.fail:
            raise RuntimeError("broken writer")
        self.calls.append(call)

    def begin(self, name: str, category: str, args: Any, flow: Any, end_flow: Any) -> Any:
        self._record("begin", name, category, args, flow, end_flow)
        return name

    def end(self, token: Any) -> None:
        self._record("end", token)

    def instant(self, name: str, category: str, args: Any, flow: Any, end_flow: Any) -> None:
        self._record("instant", name, category, args, flow, end_flow)

    def counter(self, name: str, value: float, category: str, unit: str) -> None:
        self._record("counter", name, value, category, unit)

    def log(self, body: str, prio: int, file: str, function: str, line: int, cat: str) -> None:
        self._record("log", body, prio, file, function, line)

    def dropped_packets(self) -> int:
        return 0

    def abandon_own_write(self) -> bool:
        self.calls.append(("abandon_own_write",))
        return False


class FakeProducer:
    """start_thread() and stop() as the runtime uses them; `starts` are the
    instances it starts (from its own thread) once `go` is set."""

    def __init__(self, runtime: _runtime.Runtime, starts: list[FakeInstance]) -> None:
        self.runtime = runtime
        self.starts = starts
        self.go = threading.Event()
        self.stops = 0
        self.triggers: list[tuple[tuple[str, ...], float]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start_thread(self) -> None:
        self.thread.start()

    def _serve(self) -> None:
        if self.go.wait(10):
            for instance in self.starts:
                self.runtime.add_instance(instance)

    def stop(self, timeout: float | None = None) -> None:
        self.stops += 1
        for instance in self.starts:
            self.runtime.remove_instance(instance)

    def activate_triggers(self, *names: str, ttl_s: float = 60.0) -> bool:
        self.triggers.append((names, ttl_s))
        return self.stops == 0


class Rig:
    """A Runtime installed as the process's, with a fake producer factory."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> None:
        self.instances: list[FakeInstance] = [FakeInstance()]
        self.producers: list[FakeProducer] = []
        self.names: list[str] = []
        self.endpoints: list[str | None] = []
        self.auto_start = True
        self.service_there = threading.Event()
        self.service_there.set()
        self.runtime = _runtime.Runtime(
            _runtime.WANTED, factory=self._factory, environ=environ,
            service_appeared=lambda endpoint: self.service_there.is_set(),
        )  # fmt: skip
        monkeypatch.setattr(_runtime, "current", self.runtime)

    def _factory(self, name: str, endpoint: str | None, rt: _runtime.Runtime) -> FakeProducer:
        self.names.append(name)
        self.endpoints.append(endpoint)
        producer = FakeProducer(rt, self.instances)
        if self.auto_start:
            producer.go.set()
        self.producers.append(producer)
        return producer

    def started(self) -> None:
        """Wait until every instance is live (the fake producer's thread added them)."""
        deadline = time.monotonic() + 10
        tracebus.init()
        while not all(i.live for i in self.instances):
            assert time.monotonic() < deadline, "instances did not start"
            self.runtime.instance_started.wait(0.05)


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch):
    _runtime.WANTED.clear()
    r = Rig(monkeypatch, {})
    yield r
    r.runtime.shutdown(timeout=1)
    _runtime.WANTED.clear()


def test_nothing_wanted_costs_a_lookup_and_returns_the_shared_no_op(rig):
    rig.instances[0].categories = {"io"}
    rig.started()
    first = tracebus.slice("a", category="db")
    assert first is tracebus.slice("b", category="db")  # one shared object, nothing built
    with first:
        tracebus.instant("i", category="db")
        tracebus.counter("c", 1, category="db")
    assert rig.instances[0].calls == []
    assert _runtime.WANTED["db"] == ()


def test_a_wanted_category_reaches_the_instance_with_everything_given(rig):
    rig.instances[0].categories = {"io"}
    rig.started()
    with tracebus.slice("decode", category="io", args={"n": 3}, flow="job-1", terminate_flow=7):
        tracebus.instant("hit", category="io", args={"k": "v"}, flow=[1, 2])
    tracebus.counter("depth", 2.5, category="io", unit="bytes")
    assert rig.instances[0].calls == [
        ("begin", "decode", "io", {"n": 3}, "job-1", 7),
        ("instant", "hit", "io", {"k": "v"}, [1, 2], None),
        ("end", "decode"),
        ("counter", "depth", 2.5, "io", "bytes"),
    ]


def test_instances_starting_and_stopping_change_what_is_wanted(rig):
    rig.started()
    late = FakeInstance({"io"})
    with tracebus.slice("before", category="io"):
        pass
    rig.runtime.add_instance(late)
    with tracebus.slice("after", category="io"):
        pass
    rig.runtime.remove_instance(late)
    with tracebus.slice("gone", category="io"):
        pass
    assert [c[1] for c in late.calls] == ["after", "after"]
    assert [c[1] for c in rig.instances[0].calls if c[0] == "begin"] == ["before", "after", "gone"]


def test_a_slice_ends_only_on_the_instances_it_began_on(rig):
    rig.started()
    late = FakeInstance()
    with tracebus.slice("s"):
        rig.runtime.add_instance(late)
    assert late.calls == []


def test_define_category_tags_reach_the_filters(rig):
    rig.started()
    tracebus.define_category("heavy", tags=("slow",), description="off by default")
    tracebus.instant("x", category="heavy")
    tracebus.instant("y", category="light")
    assert [c[1] for c in rig.instances[0].calls] == ["y"]


class Unprintable:
    def __str__(self) -> str:
        raise ValueError("no")

    __repr__ = __str__


@pytest.mark.parametrize("broken", [False, True])
def test_no_call_raises_whatever_it_is_given(rig, caplog, broken):
    rig.instances[0].fail = broken
    rig.started()
    with caplog.at_level(logging.WARNING, logger="tracebus"):
        for _ in range(3):
            with tracebus.slice(Unprintable(), category=Unprintable(), args=Unprintable()):
                pass
            with tracebus.slice(None, category=["unhashable"], flow=object()):
                pass
            tracebus.instant(b"\xff", category=None, args={1: Unprintable()})
            tracebus.counter("c", "not a number")
            tracebus.counter("c", object(), unit=Unprintable())
            tracebus.counter(Unprintable(), 1 << 70)
            tracebus.define_category(Unprintable(), tags=5)
            tracebus.init(name=Unprintable(), wait_for_start="soon")
            assert tracebus.trace(42) == 42
    errors = tracebus.stats()["errors_by_kind"]
    assert errors["counter"] >= 3 and errors["define_category"] == 3
    if broken:
        assert errors["slice"] >= 3 and errors["instant"] == 3
    # One log line per kind of error, however often it happened.
    kinds = [r.getMessage().split(" failed")[0] for r in caplog.records]
    assert len(kinds) == len(set(kinds)) == len(errors)


def test_trace_decorates_functions_and_keeps_their_behaviour(rig):
    rig.started()

    @tracebus.trace
    def add(a: int, b: int) -> int:
        """adds"""
        return a + b

    @tracebus.trace(name="custom", category="io")
    def fail() -> None:
        raise KeyError("x")

    @tracebus.trace("positional")
    def named() -> str:
        return "ok"

    assert add(2, 3) == 5 and add.__doc__ == "adds" and add.__name__ == "add"
    with pytest.raises(KeyError):
        fail()
    assert named() == "ok"
    calls = [c[:3] for c in rig.instances[0].calls]
    assert calls == [
        ("begin", f"{add.__qualname__}", "default"),
        ("end", add.__qualname__),
        ("begin", "custom", "io"),
        ("end", "custom"),
        ("begin", "positional", "default"),
        ("end", "positional"),
    ]


def test_trace_on_an_async_def_spans_its_awaits(rig):
    rig.started()
    seen: list[str] = []

    @tracebus.trace
    async def job() -> int:
        seen.append(rig.instances[0].calls[-1][0])  # the slice began before the body
        await asyncio.sleep(0)
        return 7

    assert asyncio.run(job()) == 7
    assert seen == ["begin"] and rig.instances[0].calls[-1][0] == "end"


def test_the_first_call_waits_for_an_instance_when_asked(monkeypatch):
    _runtime.WANTED.clear()
    rig = Rig(monkeypatch, {"TRACEBUS_STARTUP_WAIT_S": "30"})
    rig.auto_start = False
    try:
        threading.Thread(target=lambda: _go_when_made(rig), daemon=True).start()
        tracebus.instant("first")  # blocks until the fake producer starts its instance
        assert rig.instances[0].calls == [("instant", "first", "default", None, None, None)]
    finally:
        rig.runtime.shutdown(timeout=1)
        _runtime.WANTED.clear()


def test_other_threads_first_events_wait_to_the_same_deadline(monkeypatch):
    """A pool whose threads all start tracing at once: each one's first event waits
    for the instance too, not only the thread that made the first call."""
    _runtime.WANTED.clear()
    rig = Rig(monkeypatch, {"TRACEBUS_STARTUP_WAIT_S": "30"})
    rig.auto_start = False
    try:
        first = threading.Thread(target=tracebus.instant, args=("first",))
        first.start()
        wait_for(lambda: rig.producers, 10, "the first call's producer")
        others = [threading.Thread(target=tracebus.instant, args=(f"t{i}",)) for i in range(4)]
        for t in others:
            t.start()
        rig.producers[0].go.set()
        for t in [first, *others]:
            t.join(10)
        names = sorted(call[1] for call in rig.instances[0].calls)
        assert names == ["first", "t0", "t1", "t2", "t3"]
    finally:
        rig.runtime.shutdown(timeout=1)
        _runtime.WANTED.clear()


def _go_when_made(rig: Rig) -> None:
    """Let the fake producer start its instance once the first call has made it."""
    wait_for(lambda: rig.producers, 10, "the producer the first call creates")
    rig.producers[0].go.set()


def test_the_startup_wait_is_bounded_and_happens_once(monkeypatch):
    _runtime.WANTED.clear()
    rig = Rig(monkeypatch, {})
    rig.auto_start = False  # no instance ever starts
    try:
        t0 = time.monotonic()
        tracebus.init(wait_for_start=0.3)
        waited = time.monotonic() - t0
        t1 = time.monotonic()
        tracebus.instant("later")
        assert 0.3 <= waited < 10 and time.monotonic() - t1 < 0.2
    finally:
        rig.runtime.shutdown(timeout=1)
        _runtime.WANTED.clear()


def test_with_the_wait_turned_off_the_first_call_returns_at_once(monkeypatch):
    """(Without any setting, the default wait: tests/test_startup_wait.py.)"""
    _runtime.WANTED.clear()
    rig = Rig(monkeypatch, {"TRACEBUS_STARTUP_WAIT_S": "0"})
    rig.auto_start = False
    try:
        t0 = time.monotonic()
        tracebus.instant("first")
        assert time.monotonic() - t0 < 0.5 and rig.instances[0].calls == []
    finally:
        rig.runtime.shutdown(timeout=1)
        _runtime.WANTED.clear()


def test_disabled_by_the_environment_starts_nothing(monkeypatch):
    _runtime.WANTED.clear()
    rig = Rig(monkeypatch, {"TRACEBUS_DISABLE": "1"})
    try:
        tracebus.init()
        with tracebus.slice("x"):
            pass
        assert rig.producers == [] and tracebus.stats()["state"] == "disabled"
    finally:
        rig.runtime.shutdown(timeout=1)
        _runtime.WANTED.clear()


def test_shutdown_from_many_threads_at_once_and_again(rig):
    rig.started()
    barrier = threading.Barrier(16)
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait(10)
            for _ in range(20):
                tracebus.instant("x")
                tracebus.shutdown()
        except BaseException as e:  # noqa: BLE001
            failures.append(e)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures and not any(t.is_alive() for t in threads)
    assert rig.producers[0].stops == 1
    before = len(rig.instances[0].calls)
    tracebus.instant("after shutdown")
    tracebus.init()
    assert len(rig.instances[0].calls) == before and tracebus.stats()["state"] == "stopped"


def test_shutdown_before_any_use_and_during_the_start(monkeypatch):
    _runtime.WANTED.clear()
    rig = Rig(monkeypatch, {})
    tracebus.shutdown()
    tracebus.shutdown()
    tracebus.instant("x")
    assert rig.producers == []
    _runtime.WANTED.clear()


def test_producer_names(monkeypatch):
    assert _runtime.producer_name("app", {"TRACEBUS_PRODUCER_NAME": "env"}) == "app"
    assert _runtime.producer_name(None, {"TRACEBUS_PRODUCER_NAME": "env"}) == "env"
    monkeypatch.setattr(sys.modules["__main__"], "__file__", "/x/my_app.py", raising=False)
    assert _runtime.producer_name(None, {}) == "my_app"


def test_log_priorities_follow_android_levels():
    levels = [5, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]
    assert [log_priority(level) for level in levels] == [2, 3, 4, 5, 6, 7]


def test_logging_handler_puts_records_on_the_timeline_but_not_its_own(rig):
    rig.started()
    logger = logging.getLogger("app.test_sdk")
    handler = tracebus.LoggingHandler()
    logger.addHandler(handler)
    logging.getLogger("tracebus.producer").addHandler(handler)
    try:
        logger.warning("disk %d%% full", 93)
        line = sys._getframe().f_lineno - 1
        logging.getLogger("tracebus.producer").warning("ours: skipped")
        on_our_thread = threading.Thread(
            target=lambda: logger.warning("on the producer's thread: skipped"),
            name="tracebus-producer",
        )
        on_our_thread.start()
        on_our_thread.join(10)
    finally:
        logger.removeHandler(handler)
        logging.getLogger("tracebus.producer").removeHandler(handler)
    fn = "test_logging_handler_puts_records_on_the_timeline_but_not_its_own"
    assert rig.instances[0].calls == [("log", "disk 93% full", 5, __file__, fn, line)]


def test_a_broken_instance_under_the_logging_handler_is_counted_not_printed(rig, capsys):
    rig.instances[0].fail = True
    rig.started()
    logger = logging.getLogger("app.broken")
    logger.propagate = False
    logger.addHandler(tracebus.LoggingHandler())
    try:
        for _ in range(3):
            logger.error("x")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    assert tracebus.stats()["errors_by_kind"]["logging handler"] == 3
    assert "Traceback" not in capsys.readouterr().err


HEAVY = ("zmq", "google.protobuf", "perfetto", "protos", "actors.producer", "asyncio", "shm")
# The switch of the compiled twins and the compiled writer the SDK's C path calls.
LIGHT = {"shm", "shm.native", "shm._writer"}


def test_import_tracebus_loads_nothing_heavy():
    code = (
        "import sys, json, tracebus; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))"
    )  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert set(json.loads(out.stdout)) <= LIGHT


def test_the_api_is_the_documented_one():
    assert set(tracebus.__all__) == {
        "LoggingHandler", "counter", "define_category", "flow_id", "init", "instant",
        "shutdown", "slice", "stats", "trace", "trigger",
    }  # fmt: skip
    assert _api.slice is tracebus.slice


def test_without_a_service_socket_nothing_heavy_starts_until_it_appears(monkeypatch, caplog):
    _runtime.WANTED.clear()
    monkeypatch.setattr(_runtime, "SERVICE_POLL_S", 0.01)
    rig = Rig(monkeypatch, {})
    rig.service_there.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="tracebus"):
            tracebus.init(endpoint="ipc:///nowhere/p")
            wait_for_condition(lambda: caplog.records, "the log line")
            assert rig.producers == []
            rig.service_there.set()
            wait_for_condition(lambda: rig.producers, "the producer")
        assert rig.endpoints == ["ipc:///nowhere/p"]
        (record,) = caplog.records
        assert "no tracing service at ipc:///nowhere/p yet" in record.getMessage()
    finally:
        rig.runtime.shutdown(timeout=1)
        _runtime.WANTED.clear()


def test_shutdown_while_waiting_for_the_service_returns_at_once(monkeypatch):
    _runtime.WANTED.clear()
    rig = Rig(monkeypatch, {})
    rig.service_there.clear()
    tracebus.init()
    t0 = time.monotonic()
    tracebus.shutdown()
    rig.service_there.set()
    assert time.monotonic() - t0 < 1 and rig.producers == []
    _runtime.WANTED.clear()


def wait_for_condition(condition: Any, what: str) -> Any:
    from tests.waiting import wait_for

    return wait_for(condition, 10, what)


def test_service_socket_exists(tmp_path):
    assert _runtime.service_socket_exists("tcp://127.0.0.1:1")
    assert not _runtime.service_socket_exists(f"ipc://{tmp_path}/p")
    (tmp_path / "p").touch()
    assert _runtime.service_socket_exists(f"ipc://{tmp_path}/p")


def test_the_sdk_threads_are_named_as_the_logging_handler_expects():
    from actors.producer import THREAD_NAME

    assert THREAD_NAME.startswith("tracebus-")


def test_the_first_call_re_entered_by_a_signal_handler_starts_once(monkeypatch):
    """A signal handler that traces, run in the middle of the first call's start:
    no import happens there (a module half loaded would fail), and one producer
    starts, not two."""
    _runtime.WANTED.clear()
    rig = Rig(monkeypatch, {})
    real = rig.runtime._startup_wait
    inner: list[Any] = []

    def interrupted_here() -> float:  # as if a handler ran at this point of the start
        tracebus.instant("from the handler")
        inner.append(rig.runtime.state)
        return real()

    monkeypatch.setattr(rig.runtime, "_startup_wait", interrupted_here)
    try:
        tracebus.instant("first")
        wait_for(lambda: rig.producers, 10, "the producer")
        assert inner == [_runtime.IDLE] and len(rig.producers) == 1
        assert tracebus.stats()["errors"] == 0
    finally:
        rig.runtime.shutdown(timeout=1)
        _runtime.WANTED.clear()


def test_the_sdk_uses_the_environment_names_of_actors_endpoints():
    from actors import endpoints

    assert _runtime.STARTUP_WAIT_ENV == endpoints.STARTUP_WAIT_ENV
    assert _runtime.PRODUCER_NAME_ENV == endpoints.PRODUCER_NAME_ENV


def test_a_slice_is_a_plain_context_manager_for_every_caller(rig):
    """Exceptions pass through unchanged, and the protocol works when called by
    hand or through contextlib.ExitStack (the compiled slice binds __enter__ and
    __exit__ to itself), whether the slice is wanted or not."""
    import contextlib

    rig.instances[0].categories = {"io"}
    rig.started()
    for category in ("io", "db"):
        with pytest.raises(KeyError, match="boom"):
            with tracebus.slice("a", category=category):
                raise KeyError("boom")
        with contextlib.ExitStack() as stack:
            stack.enter_context(tracebus.slice("b", category=category))
        assert tracebus.slice("never entered", category=category).__exit__(None, None, None) is None
        s = tracebus.slice("c", category=category)
        assert s.__enter__() is s
        assert s.__exit__(None, None, None) is None
    calls = [c[:2] for c in rig.instances[0].calls]
    assert calls == [("begin", "a"), ("end", "a"), ("begin", "b"), ("end", "b"),
                     ("begin", "c"), ("end", "c")]  # fmt: skip
