"""The SDK surface of a producer: the DataSource base class, and how a module's
data sources are found.

Writing a data source (the contract `--module pkg.mod` relies on)::

    from actors.producer import DataSource

    class Counter(DataSource):
        name = "my.counter"               # what TraceConfig data_sources name
        will_notify_on_start = True       # optional descriptor flags

        def on_start(self, config):       # config: DataSourceConfig (see below)
            self.thread = threading.Thread(target=self.run); self.thread.start()

        def run(self):
            w = self.writer()             # this thread's TraceWriter, lazily created
            w.write_packet(b"...")        # a serialized TracePacket, or w.new_packet()

        def on_stop(self):                # return only once your threads stopped writing
            ...; self.thread.join()

`python -m actors.producer --name X --module pkg.mod` imports pkg.mod and hosts
every DataSource subclass *defined* in it (not imported into it) whose `name` is
not empty (data_sources_in), besides the built-in ones (actors/data_sources.py).
One object is created per data source instance (one per session that asks for
it), with no arguments; before `on_setup` it has `instance_id`, `config`,
`target_buffer` (the service's buffer id) and `producer_name`.

The config is decoded with the producer's own small schema
(protos/data_source_config.proto: Perfetto's field numbers for the fields
producers read: name, target_buffer, buffer_exhausted_policy, stop_timeout_ms,
track_event_config, for_testing, ...), so that an application's process never
loads Perfetto's whole schema. A data source that needs another field calls
`perfetto_config(config)`: Perfetto's DataSourceConfig from the same bytes
(unknown fields are kept), at the cost of that import.

Callbacks run on the producer's loop thread, one at a time, and should return
quickly: the classmethod on_registered(), on_setup(config), on_start(config), on_stop(), on_flush(),
on_clear_incremental_state(). After on_stop returns the SDK owns the instance's
writers: it flushes and closes them, commits, and only then acknowledges the
stop (`will_notify_on_stop` is True unless a data source says otherwise).

On a flush, the SDK flushes the writers used on the loop thread or by threads
that have ended itself; a writer of a running thread belongs to that thread (a
TraceWriter is not thread-safe), so the SDK asks it to flush at its next write
(TraceWriter.request_flush: a flag the writer's slow path checks, free on the
fast path) and acknowledges the flush once every such writer has flushed, or
after a grace (producer_host.WRITER_FLUSH_GRACE_S, at most half the flush's
timeout) for threads that do not write again (the service
scrapes their chunks after the ack). on_flush runs after the writers were
asked: a thread that waits for work should wake up and call its writer's
flush() (or write).
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, ClassVar, Protocol

from protos import tracebus_ipc_pb2 as ipc
from shm.writer import TraceWriter


class InstanceLink(Protocol):
    """What a data source object needs of the host's record of its instance
    (actors/producer_host.py's InstanceRecord)."""

    def writer(self) -> TraceWriter: ...
    def release_writer(self, w: TraceWriter) -> None: ...


class DataSource:
    """Base class of data sources; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    will_notify_on_start: ClassVar[bool] = False
    # True as in Perfetto's SDK: the service waits for the stop ack, which the SDK
    # sends only once the instance's writers are flushed and committed, so that
    # the session's final scrape and read see every chunk.
    will_notify_on_stop: ClassVar[bool] = True
    handles_incremental_state_clear: ClassVar[bool] = False
    no_flush: ClassVar[bool] = False

    instance_id: int = 0
    config: Any = None  # protos.data_source_config_pb2.DataSourceConfig
    target_buffer: int = 0
    producer_name: str = ""
    # The one private attribute the host sets: the link to its record of the instance.
    _tb_record: InstanceLink | None = None

    @classmethod
    def on_registered(cls) -> None:
        """The service accepted this data source (once per connection), on the loop
        thread: the instances of sessions already recording that want it arrive
        right after. Return quickly."""

    def on_setup(self, config: Any) -> None:
        """The instance is created and configured; nothing is written yet."""

    def on_start(self, config: Any) -> None:
        """Start writing (usually on a thread of your own)."""

    def on_stop(self) -> None:
        """Stop writing; return once no thread of this instance writes any more."""

    def on_flush(self) -> None:
        """The service wants what was written so far; ask your threads to flush."""

    def on_clear_incremental_state(self) -> None:
        """Re-emit interned data and descriptors before relying on them again. The
        SDK has already set `incremental_state_invalid` on the instance's writers
        (actors/track_event.py's TrackEvents re-emits on it by itself)."""

    def writer(self) -> TraceWriter:
        """The calling thread's TraceWriter into this instance's target buffer.
        RuntimeError once the instance is stopped, or for an object the host did
        not create."""
        if self._tb_record is None:
            raise RuntimeError(f"{type(self).__qualname__} is not an instance a producer hosts")
        return self._tb_record.writer()

    def release_writer(self, w: TraceWriter) -> None:
        """The calling thread, which owns `w` (from writer()), is done with it, for
        instance because it is about to end: `w` is flushed, committed and closed and
        the host forgets it, so that its writer id serves another thread and its
        memory goes. A later writer() on this thread makes a new writer. Without
        this, a thread's writer lives as long as the instance."""
        if self._tb_record is not None:
            self._tb_record.release_writer(w)

    @classmethod
    def descriptor(cls) -> ipc.DataSourceDescriptor:
        return ipc.DataSourceDescriptor(
            name=cls.name,
            will_notify_on_start=cls.will_notify_on_start,
            will_notify_on_stop=cls.will_notify_on_stop,
            handles_incremental_state_clear=cls.handles_incremental_state_clear,
            no_flush=cls.no_flush,
        )

    def _tb_attach(
        self, record: InstanceLink, producer_name: str, instance_id: int, config: Any
    ) -> None:
        """Called by the host before on_setup: the public attributes, and the link."""
        self.instance_id = instance_id
        self.config = config
        self.target_buffer = config.target_buffer
        self.producer_name = producer_name
        self._tb_record = record


class ThreadedDataSource(DataSource):
    """A data source that writes on one thread of its own: on_start runs `_run` on
    it; on_stop sets `_stopping`, wakes it (`_wakeup`) and joins it, also for an
    instance set up but never started (a session stopped first); on_flush sets a
    flag the thread serves with `_serve_flush(w)` wherever it waits."""

    _thread: threading.Thread | None = None

    def __init__(self) -> None:
        self._stopping = False
        self._flush_wanted = False
        self._wakeup = threading.Event()

    def on_start(self, config: Any) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"{self.name}#{self.instance_id}", daemon=True
        )
        self._thread.start()

    def on_stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join()

    def on_flush(self) -> None:
        self._flush_wanted = True
        self._wakeup.set()

    def _serve_flush(self, w: TraceWriter) -> None:
        if self._flush_wanted:
            self._flush_wanted = False
            w.flush()

    def _run(self) -> None:
        raise NotImplementedError


def perfetto_config(config: Any) -> Any:
    """Perfetto's DataSourceConfig (perfetto_trace_pb2) with every field of `config`
    (a DataSourceConfig the host passed), including those the producer's own schema
    does not name. Imports Perfetto's schema: call it only when you need it."""
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    return pb.DataSourceConfig.FromString(config.SerializeToString())


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
