"""The producer: an SDK for data sources, and the process that hosts them.

Writing a data source (the contract `--module pkg.mod` relies on)::

    from actors.producer import DataSource

    class Counter(DataSource):
        name = "my.counter"               # what TraceConfig data_sources name
        will_notify_on_stop = True        # optional descriptor flags

        def on_start(self, config):       # config: perfetto DataSourceConfig
            self.thread = threading.Thread(target=self.run); self.thread.start()

        def run(self):
            w = self.writer()             # this thread's TraceWriter, lazily created
            w.write_packet(b"...")        # a serialized TracePacket, or w.new_packet()

        def on_stop(self):                # return only once your threads stopped writing
            ...; self.thread.join()

`python -m actors.producer --name X --module pkg.mod` imports pkg.mod and hosts
every DataSource subclass *defined* in it (not imported into it) whose `name` is
not empty, besides the built-in ones (actors/data_sources.py). One object is
created per data source instance (one per session that asks for it), with no
arguments; before `on_setup` it has `instance_id`, `config`, `target_buffer`
(the service's buffer id) and `producer_name`.

Callbacks run on the producer's loop thread, one at a time, and should return
quickly: on_setup(config), on_start(config), on_stop(), on_flush(),
on_clear_incremental_state(). After on_stop returns the SDK owns the instance's
writers: it flushes and closes them, commits, and only then acknowledges the
stop. On a flush, the SDK flushes the writers used on the loop thread or by
threads that have ended; writers of the data source's running threads belong to
those threads (a TraceWriter is not thread-safe), so on_flush should ask them to
flush; the service scrapes the rest of the SMB after the flush anyway.

Embedding instead of the CLI: `Producer(name).register(Counter).run()`.

Underneath, `ProducerHost` wires a ProducerCore (the protocol) to the SMB
arbiter and the data source objects, with no socket of its own, and `_Shell`
runs it over a ZeroMQ DEALER on the shared poll loop. Commits may come from any
thread; they are queued and sent from the loop thread, merged into one
CommitDataRequest per wake-up, and pending chunks are committed every
COMMIT_PERIOD_S.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import zmq

from actors.core import producer_core as core
from actors.endpoints import default_producer_endpoint
from actors.loop import Loop
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import MAX_SMB_SIZE, PAGE_SIZES, Geometry, SharedMemoryABI
from shm.arbiter import SharedMemoryArbiter
from shm.commits import CommitBatch
from shm.region import MemfdRegion, Region, RegionError
from shm.writer import BufferExhaustedPolicy, TraceWriter

COMMIT_PERIOD_S = 0.02
SEND_HWM = 100_000  # control messages queued for the service before sends fail (and are counted)
POLICIES = {
    "drop": BufferExhaustedPolicy.DROP,
    "stall": BufferExhaustedPolicy.STALL,
    "stall_then_drop": BufferExhaustedPolicy.STALL_THEN_DROP,
}


class DataSource:
    """Base class of data sources; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    will_notify_on_start: ClassVar[bool] = False
    will_notify_on_stop: ClassVar[bool] = False
    handles_incremental_state_clear: ClassVar[bool] = False
    no_flush: ClassVar[bool] = False

    instance_id: int = 0
    config: Any = None  # perfetto.protos.DataSourceConfig
    target_buffer: int = 0
    producer_name: str = ""

    def on_setup(self, config: Any) -> None:
        """The instance is created and configured; nothing is written yet."""

    def on_start(self, config: Any) -> None:
        """Start writing (usually on a thread of your own)."""

    def on_stop(self) -> None:
        """Stop writing; return once no thread of this instance writes any more."""

    def on_flush(self) -> None:
        """The service wants what was written so far; ask your threads to flush."""

    def on_clear_incremental_state(self) -> None:
        """Re-emit interned data and descriptors before relying on them again."""

    def writer(self) -> TraceWriter:
        """The calling thread's TraceWriter into this instance's target buffer."""
        w = getattr(self._tb_local, "writer", None)
        if w is None:
            w = self._tb_host.create_writer(self)
            self._tb_local.writer = w
        return w

    @classmethod
    def descriptor(cls) -> ipc.DataSourceDescriptor:
        return ipc.DataSourceDescriptor(
            name=cls.name,
            will_notify_on_start=cls.will_notify_on_start,
            will_notify_on_stop=cls.will_notify_on_stop,
            handles_incremental_state_clear=cls.handles_incremental_state_clear,
            no_flush=cls.no_flush,
        )

    def _tb_bind(self, host: ProducerHost, instance_id: int, config: Any) -> None:
        self.instance_id = instance_id
        self.config = config
        self.target_buffer = config.target_buffer
        self.producer_name = host.core.name
        self._tb_host = host
        self._tb_local = threading.local()
        self._tb_lock = threading.Lock()
        self._tb_writers: list[tuple[threading.Thread, TraceWriter]] = []  # (owner, writer)
        self._tb_stopped = False


def data_sources_in(module_name: str) -> list[type[DataSource]]:
    """The DataSource subclasses a module defines (with a name), in definition order."""
    mod = importlib.import_module(module_name)
    return [
        obj
        for obj in vars(mod).values()
        if isinstance(obj, type)
        and issubclass(obj, DataSource)
        and obj.__module__ == mod.__name__
        and obj.name
    ]


class ProducerHost:
    """Runs one producer's data sources around its ProducerCore. No sockets: messages
    leave through `send`; `wake` asks the loop thread (the one that created the host)
    to call `deliver()` because another thread queued something."""

    def __init__(
        self,
        producer_core: core.ProducerCore,
        data_sources: dict[str, type[DataSource]],
        *,
        send: Callable[[ipc.ProducerToService], None],
        wake: Callable[[], None],
        attach_region: Callable[[str, int], Region],
        log: logging.LoggerAdapter | logging.Logger,
        on_connection_event: Callable[[core.Output], None] = lambda _out: None,
    ) -> None:
        self.core = producer_core
        self.data_sources = data_sources
        self.policy = BufferExhaustedPolicy(producer_core.policy)
        self._send = send
        self._wake = wake
        self._attach_region = attach_region
        self._log = log
        self._halt = threading.Event()  # set while tearing down: stalling writers stop waiting
        self._on_connection_event = on_connection_event
        self._loop_thread = threading.get_ident()
        self._inbox: deque[TraceWriter | CommitBatch] = deque()
        self._instances: dict[int, DataSource] = {}
        self._retired: list[TraceWriter] = []  # closed writers whose drops are not reported yet
        self.region: Region | None = None
        self.arbiter: SharedMemoryArbiter | None = None

    # -- the core's inputs --------------------------------------------------------------

    def connect(self, now: int) -> None:
        self.perform(self.core.connect(now))

    def on_message(self, msg: ipc.ServiceToProducer, now: int) -> None:
        self.perform(self.core.handle(msg, now))

    def tick(self, now: int) -> None:
        """Periodic: commit what writers returned, report drops, the core's deadlines."""
        if self.arbiter is not None:
            self.arbiter.commit()
        self.deliver()
        self.perform(self.core.tick(now))

    def deliver(self) -> None:
        """Send what other threads queued: writer registrations, then one commit."""
        writers: list[TraceWriter] = []
        batches: list[CommitBatch] = []
        while self._inbox:
            item = self._inbox.popleft()
            (writers if isinstance(item, TraceWriter) else batches).append(item)
        for w in writers:
            self.perform(self.core.writer_created(w.writer_id, w.target_buffer))
        self.perform(self.core.commit(batches, self._writer_stats()))
        self._retired.clear()

    def _writer_stats(self) -> list[core.WriterStats]:
        writers = [w for ds in self._instances.values() for _, w in ds._tb_writers]
        return [
            core.WriterStats(w.writer_id, w.target_buffer, w.dropped_packets, w.dropped_bytes)
            for w in writers + self._retired
            if w.dropped_packets
        ]

    def _post(self, item: TraceWriter | CommitBatch) -> None:
        """Queue for the loop thread, in order; deliver at once if we are on it."""
        self._inbox.append(item)
        if threading.get_ident() == self._loop_thread:
            self.deliver()
        else:
            self._wake()

    # -- writers (any thread) -------------------------------------------------------------

    def create_writer(self, ds: DataSource) -> TraceWriter:
        if ds._tb_stopped:
            raise RuntimeError(f"data source {ds.name!r} instance {ds.instance_id} is stopped")
        if self.arbiter is None:
            raise RuntimeError("no SMB is mapped")
        policy = ds.config.buffer_exhausted_policy or self.policy
        w = self.arbiter.create_trace_writer(ds.target_buffer, BufferExhaustedPolicy(policy))
        with ds._tb_lock:
            ds._tb_writers.append((threading.current_thread(), w))
        self._post(w)
        return w

    # -- the core's outputs -----------------------------------------------------------------

    def perform(self, outputs: list[core.Output]) -> None:
        for out in outputs:
            match out:
                case core.Send(message=m):
                    self._send(m)
                case core.Log(level=level, text=text):
                    self._log.log(level, text)
                case core.MapSmb():
                    self.perform(self.core.smb_mapped(out.path, self._map(out)))
                case core.SetupInstance():
                    self._setup(out)
                case core.StartInstance(instance_id=iid):
                    self._log.info(
                        "starting %s (instance %d, buffer %d)",
                        out.name,
                        iid,
                        out.config.target_buffer,
                    )
                    self._call(self._instances.get(iid), "on_start", out.config)
                    self.perform(self.core.instance_started(iid))
                case core.StopInstance(instance_id=iid):
                    self._stop(iid)
                    self.perform(self.core.instance_stopped(iid))
                case core.FlushInstances():
                    self._flush(out.instance_ids)
                    self.perform(self.core.flush_done(out.flush_request_id))
                case core.ClearIncrementalState(instance_ids=ids):
                    for iid in ids:
                        self._call(self._instances.get(iid), "on_clear_incremental_state")
                case core.Connected(producer_id=pid):
                    self._log.info("connected to the service as producer %d", pid)
                    self._on_connection_event(out)
                case core.Reconnect() | core.Fatal():
                    self.teardown()
                    self._on_connection_event(out)

    def _map(self, cmd: core.MapSmb) -> str:
        """Map the SMB the service created; returns "" or why not."""
        size, page = cmd.size, cmd.page_size
        if page not in PAGE_SIZES or not 0 < size <= MAX_SMB_SIZE or size % page:
            return f"invalid SMB geometry: {size} bytes in pages of {page}"
        try:
            region = self._attach_region(cmd.path, size)
        except (RegionError, OSError) as e:
            return str(e)
        self.region = region
        abi = SharedMemoryABI(region.buf, Geometry(size, page))
        self._halt.clear()
        self.arbiter = SharedMemoryArbiter(abi, self._on_commit, sleep=self._halt.wait)
        self._log.info("mapped the SMB: %d KiB in %d KiB pages", size // 1024, page // 1024)
        return ""

    def _on_commit(self, batch: CommitBatch) -> None:
        self._post(batch)

    def _call(self, ds: DataSource | None, callback: str, *args: Any) -> None:
        """Run a data source callback; a failing data source must not take the producer down."""
        if ds is None:
            return
        try:
            getattr(ds, callback)(*args)
        except Exception:
            self._log.exception("%s.%s of instance %d failed", ds.name, callback, ds.instance_id)

    def _setup(self, cmd: core.SetupInstance) -> None:
        ds = self.data_sources[cmd.name]()
        ds._tb_bind(self, cmd.instance_id, cmd.config)
        self._instances[cmd.instance_id] = ds
        self._call(ds, "on_setup", cmd.config)

    def _stop(self, instance_id: int) -> None:
        ds = self._instances.get(instance_id)
        if ds is None:
            return
        self._call(ds, "on_stop")
        ds._tb_stopped = True
        with ds._tb_lock:
            writers, ds._tb_writers = ds._tb_writers, []
        for _, w in writers:
            try:
                w.close()  # flush + commit; its thread is done with it (the on_stop contract)
            except Exception:
                self._log.exception("closing writer %d failed", w.writer_id)
        self._retired += [w for _, w in writers]
        self.deliver()  # what its threads committed, before any stop ack
        del self._instances[instance_id]
        self._log.info("stopped %s (instance %d)", ds.name, instance_id)

    def _flush(self, instance_ids: tuple[int, ...]) -> None:
        """on_flush, then flush the writers no other thread can be using: the loop
        thread's, and those of threads that have ended."""
        me = threading.current_thread()
        for iid in instance_ids:
            ds = self._instances.get(iid)
            if ds is None:
                continue
            if not ds.no_flush:
                self._call(ds, "on_flush")
            for owner, w in list(ds._tb_writers):
                if owner is me or not owner.is_alive():
                    w.flush()
        if self.arbiter is not None:
            self.arbiter.commit()
        self.deliver()

    # -- ending ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every instance (acknowledged to the service), then release the SMB.
        Writers that stall for room give up at once: the service may be gone."""
        self._halt.set()
        for iid in list(self._instances):
            self._stop(iid)
            self.perform(self.core.instance_stopped(iid))
        self.teardown()

    def teardown(self) -> None:
        """Stop every instance without telling anyone, and unmap the SMB."""
        self._halt.set()
        for iid in list(self._instances):
            self._stop(iid)
        self._inbox.clear()
        self.arbiter = None
        if self.region is not None:
            try:
                self.region.close()
            except BufferError:  # a view is still alive somewhere; the mapping goes at exit
                self._log.warning("the SMB is still in use; leaving it mapped")
            self.region = None


class _Prefix(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['name']}: {msg}", kwargs


class Producer:
    """A producer process: its data sources, its SMB hints, its connection."""

    def __init__(
        self,
        name: str,
        *,
        endpoint: str | None = None,
        smb_size_kb: int = 0,
        page_size_kb: int = 0,
        policy: BufferExhaustedPolicy = BufferExhaustedPolicy.DROP,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.smb_size_hint = smb_size_kb * 1024
        self.page_size_hint = page_size_kb * 1024
        self.policy = BufferExhaustedPolicy(policy)
        self.data_sources: dict[str, type[DataSource]] = {}
        self.log = _Prefix(logging.getLogger("tracebus.producer"), {"name": name})
        self._shell: _Shell | None = None

    def register(self, cls: type[DataSource]) -> type[DataSource]:
        """Host `cls` (usable as a class decorator)."""
        if not cls.name:
            raise ValueError(f"{cls.__qualname__} has no name")
        if cls.name in self.data_sources and self.data_sources[cls.name] is not cls:
            raise ValueError(f"two data sources are named {cls.name!r}")
        self.data_sources[cls.name] = cls
        return cls

    def run(self) -> int:
        """Connect and serve until SIGINT/SIGTERM or stop(); returns an exit code
        (0, or 1 if the service refused the connection)."""
        self._shell = _Shell(self, self.endpoint or default_producer_endpoint())
        return self._shell.run()

    def stop(self) -> None:
        """Make run() return after stopping the data sources; safe from any thread."""
        if self._shell is not None:
            self._shell.loop.stop()


class _Shell:
    """The I/O: a DEALER on the shared loop, the wake pipe, timers, signals."""

    def __init__(self, producer: Producer, endpoint: str) -> None:
        self.producer = producer
        self.endpoint = endpoint
        self.log = producer.log
        self.loop = Loop()
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.exit_code = 0
        self.send_failures = 0
        self._unsent_init: ipc.ProducerToService | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        pcore = core.ProducerCore(
            producer.name,
            [cls.descriptor() for cls in producer.data_sources.values()],
            smb_size_hint=producer.smb_size_hint,
            page_size_hint=producer.page_size_hint,
            policy=int(producer.policy),
            pid=os.getpid(),
            uid=os.getuid(),
        )
        self.host = ProducerHost(
            pcore,
            producer.data_sources,
            send=self._send,
            wake=self._wake,
            attach_region=lambda path, size: MemfdRegion.attach_path(path, expected_size=size),
            log=self.log,
            on_connection_event=self._on_connection_event,
        )

    def run(self) -> int:
        self.loop.add_fd(self._wake_r, self._on_wake)
        if threading.current_thread() is threading.main_thread():
            self.loop.stop_on_signals()
        self.log.info("connecting to %s", self.endpoint)
        try:
            self._open()
            self.loop.call_later(COMMIT_PERIOD_S, self._tick)
            self.loop.run()
            self.log.info("stopping")
            self.host.shutdown()
        finally:
            self._close(linger_ms=1000)
            self.loop.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.ctx.term()
        return self.exit_code

    # -- the socket ------------------------------------------------------------------------

    def _open(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a service that is not there
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.connect(self.endpoint)
        self.sock = sock
        self.loop.add_socket(sock, self._on_readable)
        self.host.connect(self.loop.now())

    def _close(self, linger_ms: int) -> None:
        if self.sock is not None:
            self.loop.remove(self.sock)
            self.sock.close(linger=linger_ms)
            self.sock = None
        self._unsent_init = None

    def _send(self, msg: ipc.ProducerToService) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send_multipart(framing.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            if msg.WhichOneof("msg") == "initialize_connection":
                self._unsent_init = msg  # not connected yet: retried on the next tick
                return
            self.send_failures += 1
            if self.send_failures in (1, 10, 100) or self.send_failures % 1000 == 0:
                self.log.warning("%d messages to the service could not be sent", self.send_failures)

    def _on_readable(self) -> None:
        while self.sock is not None:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = framing.decode_to_producer(frames)
            except framing.FramingError as e:
                self.log.warning("dropping an undecodable message from the service: %s", e)
                continue
            self.host.on_message(msg, self.loop.now())

    # -- wake-ups, timers, connection events ---------------------------------------------

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # already pending

    def _on_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self.host.deliver()

    def _tick(self) -> None:
        if self._unsent_init is not None and self.sock is not None:
            msg, self._unsent_init = self._unsent_init, None
            self._send(msg)
        self.host.tick(self.loop.now())
        self.loop.call_later(COMMIT_PERIOD_S, self._tick)

    def _on_connection_event(self, out: core.Output) -> None:
        if isinstance(out, core.Reconnect):
            self.log.warning(
                "service at %s: %s; retrying in %g s", self.endpoint, out.reason, out.delay_s
            )
            self._close(linger_ms=0)
            self.loop.call_later(out.delay_s, self._open)
        elif isinstance(out, core.Fatal):
            self.log.error("%s", out.reason)
            self.exit_code = 1
            self.loop.stop()


def main(argv: list[str] | None = None) -> int:
    from actors.data_sources import SyntheticDataSource, TrackEventDataSource, synthetic_named

    parser = argparse.ArgumentParser(prog="python -m actors.producer", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--name", required=True, help="producer name (filters match it)")
    parser.add_argument("--smb-size-kb", type=int, default=0, help="SMB size hint")
    parser.add_argument("--page-size-kb", type=int, default=0, help="SMB page size hint")
    parser.add_argument("--policy", choices=sorted(POLICIES), default="drop")
    parser.add_argument(
        "--data-source",
        action="append",
        default=[],
        metavar="DSNAME",
        help="also host the synthetic data source under this name (repeatable)",
    )
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="PKG.MOD",
        help="host the DataSource subclasses this module defines (repeatable)",
    )
    parser.add_argument(
        "--producer-endpoint",
        help="the service's producer port (default: $TRACEBUS_PRODUCER_SOCK "
        "or ipc://<runtime dir>/producer.sock)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    producer = Producer(
        args.name,
        endpoint=args.producer_endpoint,
        smb_size_kb=args.smb_size_kb,
        page_size_kb=args.page_size_kb,
        policy=POLICIES[args.policy],
    )
    try:
        for cls in (SyntheticDataSource, TrackEventDataSource):
            producer.register(cls)
        for name in args.data_source:
            producer.register(synthetic_named(name))
        for module in args.module:
            found = data_sources_in(module)
            if not found:
                producer.log.warning("module %s defines no DataSource subclass", module)
            for cls in found:
                producer.register(cls)
    except (ImportError, ValueError) as e:
        parser.error(str(e))
    return producer.run()


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: user modules and
    # actors.data_sources subclass actors.producer.DataSource.
    from actors.producer import main as _main

    sys.exit(_main())
