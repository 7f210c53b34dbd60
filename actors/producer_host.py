"""ProducerHost: one producer's data sources and SMB around its ProducerCore, no socket.

It performs the core's outputs (actors/core/producer_core.py): maps the SMB the
service created and runs the SMB arbiter over it, creates one DataSource object
per instance and calls its callbacks, creates TraceWriters for it, and sends
messages through a `send` callable the shell provides. What the host knows of an
instance (its writers and their threads, the lock around them, whether it is
stopped) is an InstanceRecord of its own; the user's DataSource object carries
only the public attributes the SDK documents and a link to its record, through
which writer() asks for the calling thread's writer. Commits may come from any
thread; they are queued and sent from the loop thread (the one that created the
host; `wake` asks it to call `deliver()`), merged into one CommitDataRequest per
wake-up. The shell (actors/producer_shell.py) owns the socket and the timers.

Flush acks. A flush is acknowledged once every writer of the flushed instances
has flushed: the host flushes the writers of its own thread and of ended
threads itself, asks the others (TraceWriter.request_flush) and keeps a
`PendingFlush` until each has reported its ticket back through a commit batch
(`writers_flushed`), or until a grace passed (WRITER_FLUSH_GRACE_S, at most half
the flush's timeout_ms): a thread that does
not write again never serves its ticket, and the service scrapes the chunk its
writer holds after the ack. The ack follows the commits of those chunks on the
same socket. Stop: on_stop returns once the instance's threads stopped writing;
its writers are flushed and closed, their chunks and drop counts committed, and
only then is the stop acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from actors.core import producer_core as core
from actors.producer_sdk import DataSource
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import Geometry, SharedMemoryABI, is_valid_geometry
from shm.arbiter import SharedMemoryArbiter
from shm.commits import CommitBatch
from shm.region import Region, RegionError
from shm.writer import BufferExhaustedPolicy, TraceWriter

WRITER_FLUSH_GRACE_S = 0.5  # how long a flush ack waits for writers of running threads


def flush_grace_ns(timeout_ms: int) -> int:
    """The wait for writers of running threads: WRITER_FLUSH_GRACE_S, but at most
    half the service's timeout, so that the ack (and the scrape it lets the service
    do) still comes in time."""
    grace = int(WRITER_FLUSH_GRACE_S * 1e9)
    return min(grace, timeout_ms * 500_000) if timeout_ms else grace


class InstanceRecord:
    """The host's state of one data source instance. Threads of the data source
    create writers through it (writer()); the loop thread reads and retires them."""

    __slots__ = ("ds", "instance_id", "config", "stopped", "_host", "_lock", "_local", "_writers")

    def __init__(self, host: ProducerHost, ds: DataSource, instance_id: int, config: Any) -> None:
        self.ds = ds
        self.instance_id = instance_id
        self.config = config  # protos.data_source_config_pb2.DataSourceConfig
        self.stopped = False  # set once on_stop returned: no new writers
        self._host = host
        self._lock = threading.Lock()  # guards _writers: any thread may add one
        self._local = threading.local()  # the calling thread's writer
        self._writers: list[tuple[threading.Thread, TraceWriter]] = []  # (owner, writer)

    def writer(self) -> TraceWriter:
        """The calling thread's TraceWriter into the instance's target buffer."""
        w: TraceWriter | None = getattr(self._local, "writer", None)
        if w is None or w.closed:
            w = self._host.create_writer(self)
            self._local.writer = w
        return w

    def add_writer(self, w: TraceWriter) -> None:
        with self._lock:
            self._writers.append((threading.current_thread(), w))

    def writers(self) -> list[tuple[threading.Thread, TraceWriter]]:
        """(owner thread, writer) of each writer created so far."""
        with self._lock:
            return list(self._writers)

    def release_writer(self, w: TraceWriter) -> None:
        """DataSource.release_writer, on the thread that owns `w`. The host hears of
        the retirement before the writer id is free again, so that the old writer's
        last drop count reaches the service before a new writer registers the id."""
        with self._lock:
            mine = [(t, x) for t, x in self._writers if x is w]
            if not mine:
                return  # not ours, or taken by the host's stop already
            self._writers.remove(mine[0])
        # No touching self._local here: this may run while Python tears the ending
        # thread's locals down. writer() replaces a closed writer instead.
        w.flush()
        self._host.retire_writer(w)
        w.close()

    def take_writers(self) -> list[tuple[threading.Thread, TraceWriter]]:
        """The writers, forgotten by the record (the host retires them)."""
        with self._lock:
            writers, self._writers = self._writers, []
        return writers


@dataclass(frozen=True, slots=True)
class RetiredWriter:
    """Posted by a thread that released its writer (InstanceRecord.release_writer)."""

    writer: TraceWriter


@dataclass(slots=True)
class PendingFlush:
    """A flush request waiting for writers of running threads."""

    flush_request_id: int
    waiting: dict[int, int]  # writer id -> the ticket it must serve
    deadline_ns: int  # on ProducerHost.clock: ack anyway after it


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
        attach_region: Callable[[core.MapSmb], Region],
        log: logging.LoggerAdapter | logging.Logger,
        on_connection_event: Callable[[core.Output], None] = lambda _out: None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.core = producer_core
        self.clock = clock  # ns, for the flush acks' grace
        self.data_sources = data_sources
        self.policy = BufferExhaustedPolicy(producer_core.policy)
        self._send = send
        self._wake = wake
        self._attach_region = attach_region
        self._log = log
        self._halt = threading.Event()  # set while tearing down: stalling writers stop waiting
        self._on_connection_event = on_connection_event
        self._loop_thread = threading.get_ident()
        self._inbox: deque[TraceWriter | CommitBatch | RetiredWriter] = deque()
        self._instances: dict[int, InstanceRecord] = {}
        self._retired: list[TraceWriter] = []  # closed writers whose drops are not reported yet
        self._flushes: list[PendingFlush] = []  # in request order
        self.region: Region | None = None
        self.arbiter: SharedMemoryArbiter | None = None
        # Bumped when an SMB is mapped and when it is let go: a commit of an
        # arbiter that is gone (a thread that kept writing past its instance's
        # stop) is dropped instead of piling up or reaching the next connection.
        self._smb_generation = 0

    # -- the core's inputs --------------------------------------------------------------

    def connect(self, now: int) -> None:
        self.perform(self.core.connect(now))

    def on_message(self, msg: ipc.ServiceToProducer, now: int) -> None:
        self.perform(self.core.handle(msg, now))

    def tick(self, now: int) -> None:
        """Periodic: commit what writers returned, report drops, overdue flush acks,
        the core's deadlines."""
        if self.arbiter is not None:
            self.arbiter.commit()
        self.deliver()
        self._ack_flushes(self.clock())
        self.perform(self.core.tick(now))

    def activate_triggers(self, names: Sequence[str], now: int, ttl_ns: int) -> None:
        """On the loop thread: fire named triggers (queued until connected, see
        ProducerCore.activate_triggers)."""
        self.perform(self.core.activate_triggers(names, now, ttl_ns))

    def serving(self) -> bool:
        """True while instances exist (or flushes wait): writers may be committing."""
        return bool(self._instances or self._flushes)

    def deliver(self) -> None:
        """Send what other threads queued: writer registrations, then one commit,
        then the flush acks it completes."""
        writers: list[TraceWriter] = []
        batches: list[CommitBatch] = []
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, TraceWriter):
                writers.append(item)
            elif isinstance(item, RetiredWriter):
                self._retired.append(item.writer)
            else:
                batches.append(item)
        if writers and self._retired:
            # A new writer may reuse a closed one's id: the closed one's last drop
            # count must reach the service before the id is registered again.
            self.perform(self.core.commit([], _stats_of(self._retired)))
            self._retired.clear()
        for w in writers:
            self.perform(self.core.writer_created(w.writer_id, w.target_buffer))
        self.perform(self.core.commit(batches, self._writer_stats()))
        self._retired.clear()
        served = [done for batch in batches for done in batch.writers_flushed]
        if served and self._flushes:
            for flush in self._flushes:
                for writer_id, ticket in served:
                    if flush.waiting.get(writer_id, ticket + 1) <= ticket:
                        del flush.waiting[writer_id]
            self._ack_flushes(None)

    def _ack_flushes(self, now_ns: int | None) -> None:
        """Acknowledge, in order, the flushes no writer is awaited for (or, given
        `now_ns`, whose grace has passed)."""
        while self._flushes:
            flush = self._flushes[0]
            overdue = now_ns is not None and now_ns >= flush.deadline_ns
            if flush.waiting and not overdue:
                return
            if flush.waiting:
                self._log.debug(
                    "flush %d: writers %s did not flush in time; the service scrapes them",
                    flush.flush_request_id, sorted(flush.waiting),
                )  # fmt: skip
            self._flushes.pop(0)
            self.perform(self.core.flush_done(flush.flush_request_id))

    def _writer_stats(self) -> list[core.WriterStats]:
        writers = [w for rec in self._instances.values() for _, w in rec.writers()]
        return _stats_of(writers + self._retired)

    def retire_writer(self, w: TraceWriter) -> None:
        """Any thread: `w` was released (flushed, about to be closed); its last drop
        count is reported with the next commit."""
        self._post(RetiredWriter(w))

    def _post(self, item: TraceWriter | CommitBatch | RetiredWriter) -> None:
        """Queue for the loop thread, in order; deliver at once if we are on it."""
        self._inbox.append(item)
        if threading.get_ident() == self._loop_thread:
            self.deliver()
        else:
            self._wake()

    # -- writers (any thread) -------------------------------------------------------------

    def create_writer(self, rec: InstanceRecord) -> TraceWriter:
        """A new writer for the calling thread (InstanceRecord.writer() keeps it)."""
        if rec.stopped:
            name = rec.ds.name
            raise RuntimeError(f"data source {name!r} instance {rec.instance_id} is stopped")
        if self.arbiter is None:
            raise RuntimeError("no SMB is mapped")
        policy = BufferExhaustedPolicy(rec.config.buffer_exhausted_policy or self.policy)
        w = self.arbiter.create_trace_writer(rec.config.target_buffer, policy)
        rec.add_writer(w)
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
                    self.perform(self.core.smb_mapped(out.token, self._map(out)))
                case core.Registered(name=name):
                    self._registered(name)
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
                    self._flush(out.flush_request_id, out.instance_ids, out.timeout_ms)
                case core.ClearIncrementalState(instance_ids=ids):
                    for iid in ids:
                        self._clear_incremental_state(self._instances.get(iid))
                case core.Connected(producer_id=pid):
                    self._log.info("connected to the service as producer %d", pid)
                    self._on_connection_event(out)
                case core.Reconnect() | core.Fatal():
                    self.teardown()
                    self._on_connection_event(out)

    def _map(self, cmd: core.MapSmb) -> str:
        """Map the SMB the service created; returns "" or why not."""
        size, page = cmd.size, cmd.page_size
        if not is_valid_geometry(size, page):
            return f"invalid SMB geometry: {size} bytes in pages of {page}"
        try:
            region = self._attach_region(cmd)
        except (RegionError, OSError) as e:
            return str(e)
        self.region = region
        abi = SharedMemoryABI(region.buf, Geometry(size, page))
        self._halt.clear()
        self._smb_generation += 1
        generation = self._smb_generation
        self.arbiter = SharedMemoryArbiter(
            abi, lambda batch: self._on_commit(generation, batch), sleep=self._stall
        )
        self._log.info("mapped the SMB: %d KiB in %d KiB pages", size // 1024, page // 1024)
        return ""

    def _stall(self, seconds: float) -> None:
        """The arbiter's sleep for stalling writers: cut short by teardown."""
        self._halt.wait(seconds)

    def _on_commit(self, generation: int, batch: CommitBatch) -> None:
        if generation == self._smb_generation:
            self._post(batch)

    def _call(self, rec: InstanceRecord | None, callback: str, *args: Any) -> None:
        """Run a data source callback; a failing data source must not take the producer down."""
        if rec is None:
            return
        try:
            getattr(rec.ds, callback)(*args)
        except Exception:
            name, iid = rec.ds.name, rec.instance_id
            self._log.exception("%s.%s of instance %d failed", name, callback, iid)

    def _clear_incremental_state(self, rec: InstanceRecord | None) -> None:
        """Every writer of the instance re-emits its incremental state before its
        next packet (shm/writer.py: a flag its owner checks), then the callback."""
        if rec is None:
            return
        for _, w in rec.writers():
            w.incremental_state_invalid = True
        self._call(rec, "on_clear_incremental_state")

    def _registered(self, name: str) -> None:
        cls = self.data_sources.get(name)
        try:
            if cls is not None:
                cls.on_registered()
        except Exception:
            self._log.exception("%s.on_registered failed", name)

    def _setup(self, cmd: core.SetupInstance) -> None:
        ds = self.data_sources[cmd.name]()
        rec = InstanceRecord(self, ds, cmd.instance_id, cmd.config)
        ds._tb_attach(rec, self.core.name, cmd.instance_id, cmd.config)
        self._instances[cmd.instance_id] = rec
        self._call(rec, "on_setup", cmd.config)

    def _stop(self, instance_id: int) -> None:
        rec = self._instances.get(instance_id)
        if rec is None:
            return
        self._call(rec, "on_stop")
        rec.stopped = True
        writers = rec.take_writers()
        for _, w in writers:
            try:
                w.close()  # flush + commit; its thread is done with it (the on_stop contract)
            except Exception:
                self._log.exception("closing writer %d failed", w.writer_id)
        self._retired += [w for _, w in writers]
        for flush in self._flushes:  # closing flushed them
            for _, w in writers:
                flush.waiting.pop(w.writer_id, None)
        self.deliver()  # what its threads committed, before any stop ack
        self._ack_flushes(None)
        del self._instances[instance_id]
        dropped = sum(w.dropped_packets for _, w in writers)
        dropped_bytes = sum(w.dropped_bytes for _, w in writers)
        self._log.info(
            "stopped %s (instance %d): %d writers, %d packets (%d bytes) dropped",
            rec.ds.name, instance_id, len(writers), dropped, dropped_bytes,
        )  # fmt: skip

    def _flush(self, flush_request_id: int, instance_ids: tuple[int, ...], timeout_ms: int) -> None:
        """Ask the writers of running threads to flush, run on_flush, then flush the
        writers no other thread can be using (the loop thread's, so what on_flush
        wrote is in, and those of ended threads); the ack waits for the others (see
        the module docstring)."""
        waiting: dict[int, int] = {}
        for iid in instance_ids:
            rec = self._instances.get(iid)
            if rec is not None:
                waiting.update(self._ask_thread_writers(rec))
                if not rec.ds.no_flush:
                    self._call(rec, "on_flush")
                self._flush_own_writers(rec)
        deadline = self.clock() + flush_grace_ns(timeout_ms)
        self._flushes.append(PendingFlush(flush_request_id, waiting, deadline))
        if self.arbiter is not None:
            self.arbiter.commit()
        self.deliver()
        self._ack_flushes(None)

    def _ask_thread_writers(self, rec: InstanceRecord) -> dict[int, int]:
        """request_flush on the writers of other running threads: {writer id: ticket}."""
        me = threading.current_thread()
        return {
            w.writer_id: w.request_flush()
            for owner, w in rec.writers()
            if owner is not me and owner.is_alive()
        }

    def _flush_own_writers(self, rec: InstanceRecord) -> None:
        """Flush the loop thread's writers and those of threads that have ended (a
        writer asked before its thread ended serves its ticket here)."""
        me = threading.current_thread()
        for owner, w in rec.writers():
            if owner is me or not owner.is_alive():
                w.flush()

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
        self._flushes.clear()
        self.arbiter = None
        self._smb_generation += 1
        if self.region is not None:
            try:
                self.region.close()
            except BufferError:  # a view is still alive somewhere; the mapping goes at exit
                self._log.warning("the SMB is still in use; leaving it mapped")
            self.region = None


def _stats_of(writers: list[TraceWriter]) -> list[core.WriterStats]:
    """The drop counts of the writers that dropped anything."""
    return [
        core.WriterStats(w.writer_id, w.target_buffer, w.dropped_packets, w.dropped_bytes)
        for w in writers
        if w.dropped_packets
    ]
