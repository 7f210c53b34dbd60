"""A producer embedded in an application (actors/producer.py): start_thread(),
stop() from any thread at any time, call_soon(), and what it costs and logs
while no service is there.

The races run in this process against an endpoint nobody binds (no service is
needed to start, connect lazily and stop); the end-to-end test runs an app as a
real process against a real service (tests/processes.py, fixture `rt`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.protobuf import text_format
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import producer_core as core
from actors.producer import THREAD_NAME, DataSource, Producer
from protos import tracebus_ipc_pb2 as ipc
from shm.commits import ChunkToPatch
from tests.processes import Runtime
from tests.test_producer_core import LoopWriter, Rig, ds_config
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


class Records(logging.Handler):
    """Every record of one logger, and a wait for a condition on them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def wait(self, what: Callable[[list[logging.LogRecord]], bool], timeout: float) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: what(self.records), timeout), [
                r.getMessage() for r in self.records
            ]

    def at(self, level: int, text: str = "") -> list[str]:
        msgs = [r.getMessage() for r in self.records if r.levelno == level]
        return [m for m in msgs if text in m]


@pytest.fixture
def records() -> Iterator[tuple[logging.Logger, Records]]:
    logger = logging.getLogger("test.producer_embedding")
    handler = Records()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Exceptions that escaped any thread (the producer's included)."""
    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    return errors


def test_the_host_keeps_instance_state_in_a_record_of_its_own() -> None:
    """The user's object gets the documented attributes and one link; the writers
    (one per thread) live in the host's InstanceRecord."""
    rig = Rig([LoopWriter])
    rig.connect()
    rig.setup_tracing()
    ds = rig.start(1, ds_config(LoopWriter.name, message_count=3))
    public = {"instance_id", "config", "target_buffer", "producer_name"}
    assert set(vars(ds)) == public | {"_tb_record"}
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(ds.writer()))
    thread.start()
    thread.join()
    rec = rig.host._instances[1]
    assert ds.writer() is ds.writer() is not other[0]
    assert [(t.ident, w) for t, w in rec.writers()] == [
        (threading.get_ident(), ds.writer()),
        (thread.ident, other[0]),
    ]
    rig.push(stop_data_source=ipc.StopDataSource(instance_id=1))
    assert rec.writers() == []  # closed and retired by the host
    late: list[BaseException] = []

    def write_late() -> None:
        try:
            ds.writer()
        except RuntimeError as e:
            late.append(e)

    thread = threading.Thread(target=write_late)
    thread.start()
    thread.join()
    assert "stopped" in str(late[0])


def test_commits_of_an_smb_let_go_are_dropped_not_queued() -> None:
    """A thread that writes past its instance's stop (or a reconnect) must not pile
    commits up in the host, nor send chunks of an old SMB on a new connection."""
    rig = Rig([LoopWriter])
    rig.connect()
    rig.setup_tracing()
    old = rig.host.arbiter
    assert old is not None
    rig.host.teardown()
    n = len(rig.sent)
    old.add_patches([ChunkToPatch(1, 1, 0, [(0, b"\0\0\0\0")], False)])
    old.commit()  # a commit through the arbiter the host let go
    assert len(rig.host._inbox) == 0
    rig.host.deliver()
    assert len(rig.sent) == n


def test_writer_of_an_object_no_producer_hosts_says_so() -> None:
    with pytest.raises(RuntimeError, match="not an instance a producer hosts"):
        LoopWriter().writer()


def nowhere(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/nobody"


def test_call_soon_runs_on_the_daemon_producer_thread(tmp_path: Path) -> None:
    producer = Producer("embedded", endpoint=nowhere(tmp_path))
    assert producer.call_soon(lambda: None) is False  # not started
    producer.start_thread()
    producer.start_thread()  # a second call does nothing
    ran = threading.Event()
    where: list[threading.Thread] = []
    assert producer.call_soon(lambda: (where.append(threading.current_thread()), ran.set()))
    assert ran.wait(10)
    assert where[0].name == THREAD_NAME and where[0].daemon
    producer.stop(timeout=10)
    assert not where[0].is_alive()
    assert producer.call_soon(lambda: None) is False  # stopped


def test_a_failing_call_is_logged_and_the_producer_keeps_serving(
    tmp_path: Path, records: tuple[logging.Logger, Records]
) -> None:
    logger, log = records
    producer = Producer("embedded", endpoint=nowhere(tmp_path), log=logger)
    producer.start_thread()
    ran = threading.Event()
    assert producer.call_soon(lambda: 1 / 0)
    assert producer.call_soon(ran.set)
    assert ran.wait(10)
    producer.stop(timeout=10)
    assert log.at(logging.ERROR, "a call on the producer's thread failed")


def test_an_error_on_the_producer_thread_is_logged_not_raised(
    records: tuple[logging.Logger, Records], thread_errors: list[BaseException]
) -> None:
    logger, log = records
    producer = Producer("embedded", endpoint="nonsense://here", log=logger)
    producer.start_thread()
    log.wait(lambda _: bool(log.at(logging.ERROR, "the producer stopped on an error")), 10)
    producer.stop(timeout=10)
    assert producer.call_soon(lambda: None) is False
    assert thread_errors == []


def test_stop_before_start_makes_the_producer_stay_stopped(tmp_path: Path) -> None:
    producer = Producer("embedded", endpoint=nowhere(tmp_path))
    producer.stop()
    producer.stop()
    producer.start_thread()
    assert producer.call_soon(lambda: None) is False
    assert [t for t in threading.enumerate() if t.name == THREAD_NAME] == []
    assert producer.run() == 0  # returns at once


def test_stop_racing_start_and_calls_from_many_threads_never_raises_nor_hangs(
    tmp_path: Path, thread_errors: list[BaseException]
) -> None:
    """The EBADF of issue 9: a stop (or a wake-up from a writer thread) that wrote to
    the loop's pipe after the run had closed it. Here stops, calls and the start
    race from threads released together, in every order the scheduler picks."""
    for _ in range(40):
        producer = Producer("race", endpoint=nowhere(tmp_path))
        go = threading.Barrier(5)

        def start(p: Producer = producer, go: threading.Barrier = go) -> None:
            go.wait()
            p.start_thread()

        def stop(p: Producer = producer, go: threading.Barrier = go) -> None:
            go.wait()
            p.stop(timeout=20)

        def call(p: Producer = producer, go: threading.Barrier = go) -> None:
            go.wait()
            for _ in range(100):
                p.call_soon(lambda: None)

        threads = [threading.Thread(target=f) for f in (start, stop, stop, call, call)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        producer.stop(timeout=20)
        assert [t for t in threading.enumerate() if t.name == THREAD_NAME] == []
    assert thread_errors == []


def test_stop_from_inside_the_producer_thread_returns(tmp_path: Path) -> None:
    producer = Producer("embedded", endpoint=nowhere(tmp_path))
    producer.start_thread()
    returned = threading.Event()
    producer.call_soon(lambda: (producer.stop(), returned.set()))
    assert returned.wait(10)
    producer.stop(timeout=10)  # and from here: joins the thread
    assert [t for t in threading.enumerate() if t.name == THREAD_NAME] == []


def test_a_forked_child_leaves_the_parents_producer_alone(tmp_path: Path) -> None:
    producer = Producer("parent", endpoint=nowhere(tmp_path))
    producer.start_thread()
    try:
        pid = os.fork()
        if pid == 0:  # the child: nothing of this may reach the parent's loop
            try:
                producer.stop()
                os._exit(0 if producer.call_soon(lambda: None) is False else 1)
            finally:
                os._exit(2)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        ran = threading.Event()
        assert producer.call_soon(ran.set)
        assert ran.wait(10)
    finally:
        producer.stop(timeout=10)


def test_without_a_service_it_idles_logs_once_then_connects_when_one_appears(
    rt: Runtime, records: tuple[logging.Logger, Records], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, log = records
    # Fast attempts for the part without a service (the core reads these per tick).
    monkeypatch.setattr(core, "HANDSHAKE_TIMEOUT_NS", 200_000_000)
    monkeypatch.setattr(core, "RECONNECT_BACKOFF_S", (0.05,))
    producer = Producer("patient", endpoint=rt.producer_endpoint, log=logger)
    wall0, cpu0 = time.monotonic(), time.process_time()
    producer.start_thread()
    try:
        log.wait(lambda _: len(log.at(logging.DEBUG, "retrying in")) >= 4, 30)
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        # Waiting for a service is no busy loop (a spinning thread would be ~1).
        assert cpu < 0.3 * wall, (cpu, wall)
        (warning,) = log.at(logging.WARNING)
        assert "no tracing service at" in warning and rt.producer_endpoint in warning

        monkeypatch.undo()  # real timeouts against a real service on a loaded machine
        rt.start_service()
        log.wait(lambda _: bool(log.at(logging.INFO, "connected to the service")), 30)
        assert len(log.at(logging.WARNING)) == 1
    finally:
        producer.stop(timeout=10)


def test_a_lost_service_is_logged_once_and_the_producer_reconnects(
    rt: Runtime, records: tuple[logging.Logger, Records]
) -> None:
    logger, log = records
    rt.start_service()
    producer = Producer("loyal", endpoint=rt.producer_endpoint, log=logger)
    producer.start_thread()
    try:
        log.wait(lambda _: len(log.at(logging.INFO, "connected to the service")) == 1, 30)
        assert rt.stop(rt.service) == 0
        rt.start_service()  # the first heartbeat it gets tells the producer to reconnect
        log.wait(lambda _: len(log.at(logging.INFO, "connected to the service")) == 2, 30)
        (warning,) = log.at(logging.WARNING)  # and no failed heartbeats in between
        assert "lost the tracing service" in warning
    finally:
        producer.stop(timeout=10)


class Busy(DataSource):
    """Writes on a thread of its own until on_stop, which joins it."""

    name = "test.busy"
    started = threading.Event()

    def on_start(self, config: object) -> None:
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._write)
        self._thread.start()

    def _write(self) -> None:
        w = self.writer()
        Busy.started.set()
        while not self._halt.is_set():
            w.write_packet(b"\xc8\x01\x01")

    def on_stop(self) -> None:
        self._halt.set()
        self._thread.join()


def test_stopping_from_another_thread_while_writers_commit_is_clean(
    rt: Runtime, records: tuple[logging.Logger, Records], thread_errors: list[BaseException]
) -> None:
    logger, log = records
    rt.start_service()
    consumer = rt.consumer()
    config = 'buffers { size_kb: 256 } data_sources { config { name: "test.busy" } }'
    consumer.enable(text_format.Parse(config, pb.TraceConfig()))
    for _ in range(8):
        Busy.started.clear()
        producer = Producer("busy", endpoint=rt.producer_endpoint, log=logger)
        producer.register(Busy)
        producer.start_thread()
        assert Busy.started.wait(30)
        stopper = threading.Thread(target=producer.stop, kwargs={"timeout": 20})
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive()
        assert [t for t in threading.enumerate() if t.name == THREAD_NAME] == []
    assert thread_errors == []
    assert log.at(logging.ERROR) == []
    assert len(log.at(logging.INFO, "stopped test.busy")) == 8


APP = """\
import os, sys, threading
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from actors.producer import DataSource, Producer

started = threading.Event()
instances = []

class Embedded(DataSource):
    name = "test.embedded"

    def on_start(self, config):
        instances.append(self)
        started.set()

producer = Producer("app", endpoint=sys.argv[1])
producer.register(Embedded)
producer.start_thread()
if not started.wait(30):
    sys.exit(3)
writer = instances[0].writer()  # the app's main thread writes
for i in range(1, int(sys.argv[2]) + 1):
    writer.write_packet(pb.TracePacket(for_testing=pb.TestEvent(counter=i)).SerializeToString())
producer.stop()
os._exit(0)  # right away: no atexit, no interpreter teardown
"""

CONFIG = """\
buffers { size_kb: 1024 fill_policy: DISCARD }
data_sources { config { name: "test.embedded" target_buffer: 0 } }
"""


def test_an_app_that_stops_its_producer_and_exits_at_once_loses_nothing(rt: Runtime) -> None:
    n = 3000
    rt.start_service()
    consumer = rt.consumer()
    consumer.enable(text_format.Parse(CONFIG, pb.TraceConfig()))
    app = rt.write_module("embed_app", APP)
    proc = rt.spawn("app", [str(app), rt.producer_endpoint, str(n)])
    assert proc.wait(timeout=60) == 0, rt.logs()
    wait_for(lambda: not rt.producer_state(proc.pid)[0], 30, "the app to leave the service")
    consumer.disable()
    out = rt.dir / "embedded.pftrace"
    consumer.save(out)
    trace = pb.Trace()
    trace.ParseFromString(out.read_bytes())
    counters = [p.for_testing.counter for p in trace.packet if p.HasField("for_testing")]
    assert counters == list(range(1, n + 1))
