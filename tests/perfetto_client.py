"""A Perfetto IPC client double: what an app built with the Perfetto SDK
(system backend) and a Perfetto consumer say on traced's sockets, in Python,
for tests of tracebus's Perfetto-socket front end.

It speaks only Perfetto's IPC (actors/core/perfetto_wire.py frames,
protos/perfetto_ipc_pb2 messages, Perfetto's schema from the `perfetto`
package); nothing of tracebus's own protocol. Its shared memory writing is
tracebus's SMB writer (shm/arbiter.py, shm/writer.py), which is
byte-compatible with Perfetto's ABI, so the service reads the double's chunks
exactly as it reads the SDK's.

    producer = PerfettoProducer(path, "double").connect()   # bind, init, stream, register
    producer.wait_until(lambda: producer.started, 10, "a session")
    iid = next(iter(producer.started))
    producer.write_packets(iid, [double_packet("double", 0)])
    producer.flush_writers()                                 # chunks go out in CommitData
    ...
    consumer = PerfettoConsumer(path).connect()
    consumer.observe_events()
    consumer.enable_tracing(config)                          # answered when the session ends
    consumer.disable_tracing(); consumer.wait_tracing_disabled()
    packets = consumer.read_buffers()

Both follow the sequences the SDK was seen to send
(/work/shared/reference/perfetto-ipc-transcripts/, copied to
tests/data/perfetto_ipc_transcripts/): one request id counter per connection
starting at 1 with BindService; RegisterTraceWriter, NotifyDataSource*,
CommitData sent with drop_reply (never answered); a method the bound table
does not list is refused locally (MethodNotServed), never sent.

Single-threaded and blocking: every call takes a deadline (a socket timeout,
never a sleep) and, while it waits, handles whatever else arrives: the
producer's async commands (setup_tracing maps the memfd that came with it,
start_data_source creates a writer, flush is acked when `auto_ack_flush`,
stop is acked), the consumer's ObserveEvents stream. A test that needs the
producer to answer while it blocks elsewhere runs `serve` in a thread; the
object is then that thread's alone.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import perfetto_wire as wire
from protos import perfetto_ipc_pb2 as pf
from shm.abi import Geometry, SharedMemoryABI
from shm.arbiter import SharedMemoryArbiter
from shm.commits import CommitBatch
from shm.region import MemfdRegion
from shm.writer import TraceWriter

DEFAULT_TIMEOUT = 10.0
RECV_BYTES = 256 * 1024
FD_SPACE = socket.CMSG_SPACE(4 * 4)  # room for a few fds: extra ones are closed
# Perfetto's enum values for InitializeConnectionRequest (uint32 in our proto).
SMB_SCRAPING_ENABLED = 1
BUILD_FLAGS_DCHECKS_ON = 1
ObservableType = pf.ObservableEvents.Type


class PerfettoIpcError(Exception):
    """The connection failed: EOF, a timeout, a frame that cannot be."""


class MethodNotServed(PerfettoIpcError):
    """The bound service's table does not list the method (the SDK refuses it locally)."""


class CallRejected(PerfettoIpcError):
    """The host answered a call with success=false (or no reply_proto)."""


# -- frames (pure) ------------------------------------------------------------------


def bind_frame(request_id: int, service_name: str) -> bytes:
    frame = pf.IPCFrame(request_id=request_id)
    frame.msg_bind_service.service_name = service_name
    return wire.encode(frame)


def invoke_frame(
    request_id: int, service_id: int, method_id: int, args: bytes, drop_reply: bool = False
) -> bytes:
    frame = pf.IPCFrame(request_id=request_id)
    invoke = frame.msg_invoke_method
    invoke.service_id = service_id
    invoke.method_id = method_id
    invoke.args_proto = args
    invoke.drop_reply = drop_reply
    return wire.encode(frame)


def initialize_connection_args(name: str, size_hint: int = 0, page_hint: int = 0) -> bytes:
    """InitializeConnection as the v14 SDK sends it (scraping on, a debug build)."""
    return pf.InitializeConnectionRequest(
        shared_memory_page_size_hint_bytes=page_hint,
        shared_memory_size_hint_bytes=size_hint,
        producer_name=name,
        smb_scraping_mode=SMB_SCRAPING_ENABLED,
        build_flags=BUILD_FLAGS_DCHECKS_ON,
    ).SerializeToString()


def track_event_descriptor(categories: Iterable[str]) -> pb.DataSourceDescriptor:
    """The SDK's track_event registration: start/stop notified, incremental state clears."""
    desc = pb.DataSourceDescriptor(
        name="track_event",
        will_notify_on_stop=True,
        will_notify_on_start=True,
        handles_incremental_state_clear=True,
    )
    for name in categories:
        desc.track_event_descriptor.available_categories.add(name=name)
    return desc


def commit_data_args(batch: CommitBatch, flush_request_id: int = 0) -> bytes:
    """A CommitDataRequest for one of the arbiter's batches."""
    req = pf.CommitDataRequest()
    for move in batch.chunks_to_move:
        req.chunks_to_move.add(page=move.page, chunk=move.chunk, target_buffer=move.target_buffer)
    for p in batch.chunks_to_patch:
        entry = req.chunks_to_patch.add(
            target_buffer=p.target_buffer,
            writer_id=p.writer_id,
            chunk_id=p.chunk_id,
            has_more_patches=p.has_more_patches,
        )
        for offset, data in p.patches:
            entry.patches.add(offset=offset, data=bytes(data))
    if flush_request_id:
        req.flush_request_id = flush_request_id
    return req.SerializeToString()


def double_packet(label: str, seq: int, filler: int = 0) -> bytes:
    """A TracePacket the double writes: for_testing.str = "LABEL #SEQ" (+ filler)."""
    event = pb.TestEvent(str=f"{label} #{seq}" + "." * filler, seq_value=seq)
    return pb.TracePacket(timestamp=seq + 1, for_testing=event).SerializeToString()


class SliceAssembler:
    """Packets from ReadBuffers replies: a packet's slices are concatenated up to
    the one with last_slice_for_packet."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.replies = 0
        self._partial = bytearray()

    def feed(self, reply: pf.ReadBuffersResponse) -> None:
        self.replies += 1
        for piece in reply.slices:
            self._partial += piece.data
            if piece.last_slice_for_packet:
                self.packets.append(bytes(self._partial))
                self._partial.clear()

    @property
    def pending(self) -> int:
        """Bytes of a packet whose last slice has not come (0 after a whole read)."""
        return len(self._partial)


# -- the connection ---------------------------------------------------------------------


class Channel:
    """One stream socket: frames out (an fd on a frame's sendmsg), frames in, and
    at most one received fd pending (a newer one closes it), as Perfetto keeps it."""

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sock = sock
        self.send_timeout = timeout  # a host that takes nothing for this long: an error
        self.decoder = wire.FrameDecoder()
        self.frames: deque[pf.IPCFrame] = deque()
        self.pending_fd: int | None = None
        self.fds_received = 0
        self.eof = False
        self.eof_error = ""
        self._last_request_id = 0

    @classmethod
    def connect(cls, path: str, timeout: float) -> Channel:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return cls(sock, timeout)

    def next_request_id(self) -> int:
        self._last_request_id += 1
        return self._last_request_id

    def send(self, data: bytes, fd: int | None = None) -> None:
        """Send a frame (`fd` on its first sendmsg). PerfettoIpcError if the host
        is gone or takes nothing for send_timeout."""
        self.sock.settimeout(self.send_timeout)
        try:
            sent = 0
            if fd is not None:
                fds = array.array("i", [fd])
                sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            self.sock.sendall(data[sent:])
        except OSError as e:  # a timeout too
            self.eof = not isinstance(e, TimeoutError)
            raise PerfettoIpcError(f"sending to the host: {e!r}") from e

    def receive(self, deadline: float) -> pf.IPCFrame | None:
        """The next frame, or None once the deadline passes. Raises at EOF."""
        while not self.frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data, ancdata, _, _ = self.sock.recvmsg(RECV_BYTES, FD_SPACE)
            except TimeoutError:
                return None
            except OSError as e:  # ECONNRESET: as EOF
                data, ancdata = b"", []
                self.eof_error = repr(e)
            self._keep_fds(ancdata)
            if not data:
                self.eof = True
                raise PerfettoIpcError(f"the host closed the connection {self.eof_error}")
            try:
                self.frames.extend(self.decoder.feed(data))
            except wire.FrameError as e:
                raise PerfettoIpcError(f"the host sent a frame too large: {e}") from e
        return self.frames.popleft()

    def _keep_fds(self, ancdata: list[tuple[int, int, bytes]]) -> None:
        for level, kind, payload in ancdata:
            if level != socket.SOL_SOCKET or kind != socket.SCM_RIGHTS:
                continue
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            for fd in fds:
                self.fds_received += 1
                if self.pending_fd is not None:
                    os.close(self.pending_fd)
                self.pending_fd = fd

    def take_fd(self) -> int | None:
        fd, self.pending_fd = self.pending_fd, None
        return fd

    def close(self) -> None:
        if self.pending_fd is not None:
            os.close(self.pending_fd)
            self.pending_fd = None
        self.sock.close()


class PortClient:
    """A client of one bound service: invoke by name, await replies by request id;
    the replies of a call opened with open_stream go to its callback."""

    def __init__(self, channel: Channel, timeout: float) -> None:
        self.channel = channel
        self.timeout = timeout
        self.service_id = 0
        self.methods: dict[str, int] = {}
        self.unexpected = 0  # frames answering no request of ours
        self._waiting: dict[int, deque[pf.IPCFrame]] = {}
        self._streams: dict[int, Callable[[pf.IPCFrame.InvokeMethodReply], None]] = {}

    def bind(self, service_name: str) -> None:
        rid = self.channel.next_request_id()
        self._waiting[rid] = deque()
        self.channel.send(bind_frame(rid, service_name))
        reply = self._await(rid).msg_bind_service_reply
        if not reply.success:
            raise CallRejected(f"BindService({service_name!r}) refused")
        self.service_id = reply.service_id
        self.methods = {m.name: m.id for m in reply.methods}

    def invoke(
        self, method: str, args: bytes = b"", *, drop_reply: bool = False, fd: int | None = None
    ) -> int:
        """Send the call; its request id. An unlisted method never leaves."""
        method_id = self.methods.get(method)
        if method_id is None:
            raise MethodNotServed(method)
        rid = self.channel.next_request_id()
        if not drop_reply:
            self._waiting[rid] = deque()
        self.channel.send(invoke_frame(rid, self.service_id, method_id, args, drop_reply), fd)
        return rid

    def call(self, method: str, args: bytes = b"", fd: int | None = None) -> bytes:
        """Invoke and await the one reply; its reply_proto. CallRejected if refused."""
        reply = self.await_reply(self.invoke(method, args, fd=fd), method)
        return reply.reply_proto

    def await_reply(self, rid: int, what: str) -> pf.IPCFrame.InvokeMethodReply:
        reply = self._await(rid).msg_invoke_method_reply
        if not reply.has_more:
            del self._waiting[rid]
        if not reply.success:
            raise CallRejected(f"{what} rejected")
        return reply

    def open_stream(
        self,
        method: str,
        args: bytes,
        on_reply: Callable[[pf.IPCFrame.InvokeMethodReply], None],
        fd: int | None = None,
    ) -> int:
        """Invoke a call whose replies (one or a stream) go to `on_reply` as they come."""
        rid = self.invoke(method, args, fd=fd)
        del self._waiting[rid]
        self._streams[rid] = on_reply
        return rid

    def pump(self, timeout: float) -> bool:
        """Handle one incoming frame, waiting up to `timeout`; False if none came."""
        frame = self.channel.receive(time.monotonic() + timeout)
        if frame is None:
            return False
        self._dispatch(frame)
        return True

    def wait_until(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """Handle frames until `condition()` holds; PerfettoIpcError after `timeout`."""
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            frame = self.channel.receive(deadline)
            if frame is None:
                raise PerfettoIpcError(f"timed out after {timeout:g} s waiting for {what}")
            self._dispatch(frame)
        return result

    def _await(self, rid: int) -> pf.IPCFrame:
        queue = self._waiting[rid]
        self.wait_until(lambda: queue, self.timeout, f"the reply to request {rid}")
        return queue.popleft()

    def _dispatch(self, frame: pf.IPCFrame) -> None:
        rid = frame.request_id
        if rid in self._waiting:
            self._waiting[rid].append(frame)
        elif rid in self._streams and frame.HasField("msg_invoke_method_reply"):
            reply = frame.msg_invoke_method_reply
            on_reply = self._streams[rid]
            if not (reply.has_more and reply.success):
                del self._streams[rid]  # the stream ended (a rejection ends it too)
            on_reply(reply)
        else:
            self.unexpected += 1

    def close(self) -> None:
        self.channel.close()


# -- the producer -----------------------------------------------------------------------


class Instance:
    """A data source instance the host set up: its config, its writer once started."""

    def __init__(self, instance_id: int, config: pb.DataSourceConfig) -> None:
        self.instance_id = instance_id
        self.config = config
        self.writer: TraceWriter | None = None
        self.stopped = False


class PerfettoProducer(PortClient):
    """An SDK-like producer of track_event: see the module docstring.

    What the host sent is kept for tests: `commands` (the async commands' names,
    in order), `instances`, `flushes` (request ids received) and `flushes_acked`,
    `smb_seals` (the memfd's seals, read when it was mapped)."""

    def __init__(
        self,
        channel: Channel | str,
        name: str = "perfetto-double",
        *,
        categories: Iterable[str] = ("app", "app.debug"),
        size_hint: int = 0,
        page_hint: int = 0,
        auto_ack_flush: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if isinstance(channel, str):
            channel = Channel.connect(channel, timeout)
        super().__init__(channel, timeout)
        self.name = name
        self.categories = tuple(categories)
        self.hints = (size_hint, page_hint)
        self.auto_ack_flush = auto_ack_flush
        self.commands: list[str] = []
        self.instances: dict[int, Instance] = {}
        self.flushes: list[int] = []
        self.flushes_acked: list[int] = []
        self.clears: list[list[int]] = []
        self.smb_seals = -1
        self.region: MemfdRegion | None = None
        self.arbiter: SharedMemoryArbiter | None = None
        self._flush_ack = 0  # the flush id the next CommitData carries
        self._on_command = {
            "setup_tracing": self._on_setup_tracing,
            "setup_data_source": self._on_setup_data_source,
            "start_data_source": self._on_start_data_source,
            "stop_data_source": self._on_stop_data_source,
            "flush": self._on_flush,
            "clear_incremental_state": self._on_clear_incremental_state,
        }

    def connect(self) -> PerfettoProducer:
        """The SDK's opening: bind, InitializeConnection, the GetAsyncCommand
        stream, RegisterDataSource(track_event). CallRejected if refused."""
        self.bind(wire.PRODUCER_SERVICE)
        self.initialize_response = pf.InitializeConnectionResponse.FromString(
            self.call("InitializeConnection", initialize_connection_args(self.name, *self.hints))
        )
        self.open_stream("GetAsyncCommand", b"", self._on_async_command)
        self.register_data_source(track_event_descriptor(self.categories))
        return self

    def register_data_source(self, desc: pb.DataSourceDescriptor) -> str:
        """The host's error ('' when registered)."""
        args = pf.RegisterDataSourceRequest(data_source_descriptor=desc.SerializeToString())
        reply = self.call("RegisterDataSource", args.SerializeToString())
        return pf.RegisterDataSourceResponse.FromString(reply).error

    def unregister_data_source(self, name: str) -> None:
        args = pf.UnregisterDataSourceRequest(data_source_name=name)
        self.invoke("UnregisterDataSource", args.SerializeToString(), drop_reply=True)

    def activate_triggers(self, names: Iterable[str]) -> None:
        args = pf.ActivateTriggersRequest(trigger_names=list(names))
        self.invoke("ActivateTriggers", args.SerializeToString(), drop_reply=True)

    def sync(self) -> None:
        """Sync: answered by the host once it handled everything before it."""
        self.call("Sync")

    @property
    def started(self) -> dict[int, Instance]:
        """Instances started and not stopped."""
        return {i: r for i, r in self.instances.items() if r.writer is not None and not r.stopped}

    # -- writing ---------------------------------------------------------------------------

    def write_packets(self, instance_id: int, packets: Iterable[bytes]) -> None:
        writer = self._writer(instance_id)
        for packet in packets:
            writer.write_packet(packet)

    def write_spanning_packet(self, instance_id: int, label: str, size: int) -> bytes:
        """A packet whose nested for_testing message runs over several chunks, so
        its size field travels as a patch (the host is told in CommitData). Its
        bytes as a plain protobuf would encode them, for comparison."""
        text = label + "." * size
        with self._writer(instance_id).new_packet() as packet:
            packet.varint(8, 1)  # timestamp
            with packet.begin_nested(900) as event:  # for_testing: its size gets patched
                event.string(1, text)
        return pb.TracePacket(timestamp=1, for_testing=pb.TestEvent(str=text)).SerializeToString()

    def flush_writers(self) -> None:
        """Return every writer's current chunk and commit (one CommitData or more)."""
        for inst in self.started.values():
            assert inst.writer is not None
            inst.writer.flush()
        if self.arbiter is not None:
            self.arbiter.commit()

    def ack_flush(self, flush_request_id: int) -> None:
        """What the SDK does for a flush: its writers' chunks, then a CommitData
        carrying flush_request_id (alone if there was nothing to commit)."""
        self._flush_ack = flush_request_id
        self.flush_writers()
        if self._flush_ack:
            self._flush_ack = 0
            args = commit_data_args(CommitBatch(), flush_request_id)
            self.invoke("CommitData", args, drop_reply=True)
        self.flushes_acked.append(flush_request_id)

    def serve(self, until: Callable[[], bool], timeout: float) -> None:
        """Answer the host (commands, flushes) until `until()` or EOF or `timeout`."""
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            try:
                self.pump(min(0.05, max(0.0, deadline - time.monotonic())))
            except PerfettoIpcError:
                if self.channel.eof:
                    return
                raise

    def _writer(self, instance_id: int) -> TraceWriter:
        writer = self.instances[instance_id].writer
        if writer is None:
            raise PerfettoIpcError(f"instance {instance_id} has not started")
        return writer

    def _on_commit(self, batch: CommitBatch) -> None:
        flush_id, self._flush_ack = self._flush_ack, 0
        if not (batch.chunks_to_move or batch.chunks_to_patch or flush_id):
            return  # only a writer's flush news: nothing for the host
        self.invoke("CommitData", commit_data_args(batch, flush_id), drop_reply=True)

    # -- async commands --------------------------------------------------------------------

    def _on_async_command(self, reply: pf.IPCFrame.InvokeMethodReply) -> None:
        if not reply.success:
            self.commands.append("<stream rejected>")
            return
        cmd = pf.GetAsyncCommandResponse.FromString(reply.reply_proto)
        kind = cmd.WhichOneof("cmd") or "<empty>"
        self.commands.append(kind)
        handler = self._on_command.get(kind)
        if handler is not None:
            handler(cmd)

    def _on_setup_tracing(self, cmd: pf.GetAsyncCommandResponse) -> None:
        fd = self.channel.take_fd()
        if fd is None:
            raise PerfettoIpcError("setup_tracing came without the SMB's fd")
        page_size = cmd.setup_tracing.shared_buffer_page_size_kb * 1024
        self.smb_seals = _seals(fd)
        self.region = MemfdRegion(fd, os.fstat(fd).st_size)  # no seal check, as the SDK
        abi = SharedMemoryABI(self.region.buf, Geometry(self.region.size, page_size))
        self.arbiter = SharedMemoryArbiter(abi, self._on_commit, sleep=time.sleep)

    def _on_setup_data_source(self, cmd: pf.GetAsyncCommandResponse) -> None:
        setup = cmd.setup_data_source
        config = pb.DataSourceConfig.FromString(setup.config)
        self.instances[setup.new_instance_id] = Instance(setup.new_instance_id, config)

    def _on_start_data_source(self, cmd: pf.GetAsyncCommandResponse) -> None:
        start = cmd.start_data_source
        inst = self.instances.get(start.new_instance_id)
        if inst is None:  # a start without a setup: the SDK sets it up then
            inst = Instance(start.new_instance_id, pb.DataSourceConfig.FromString(start.config))
            self.instances[inst.instance_id] = inst
        if self.arbiter is None:
            raise PerfettoIpcError("start_data_source before setup_tracing")
        target = inst.config.target_buffer
        inst.writer = self.arbiter.create_trace_writer(target)
        notify = pf.NotifyDataSourceStartedRequest(data_source_id=inst.instance_id)
        self.invoke("NotifyDataSourceStarted", notify.SerializeToString(), drop_reply=True)
        register = pf.RegisterTraceWriterRequest(
            trace_writer_id=inst.writer.writer_id, target_buffer=target
        )
        self.invoke("RegisterTraceWriter", register.SerializeToString(), drop_reply=True)

    def _on_stop_data_source(self, cmd: pf.GetAsyncCommandResponse) -> None:
        inst = self.instances.get(cmd.stop_data_source.instance_id)
        if inst is None:
            return
        if inst.writer is not None and not inst.stopped:
            inst.writer.close()  # returns its chunk and commits
        inst.stopped = True
        notify = pf.NotifyDataSourceStoppedRequest(data_source_id=inst.instance_id)
        self.invoke("NotifyDataSourceStopped", notify.SerializeToString(), drop_reply=True)

    def _on_flush(self, cmd: pf.GetAsyncCommandResponse) -> None:
        self.flushes.append(cmd.flush.request_id)
        if self.auto_ack_flush:
            self.ack_flush(cmd.flush.request_id)

    def _on_clear_incremental_state(self, cmd: pf.GetAsyncCommandResponse) -> None:
        self.clears.append(list(cmd.clear_incremental_state.data_source_ids))

    def close(self) -> None:
        """Close the socket (the host sees EOF) and unmap the SMB."""
        for inst in self.instances.values():
            if inst.writer is not None and not inst.writer.closed:
                inst.writer.abandon()  # off the SMB, nothing more committed
        self.arbiter = None
        self.instances.clear()
        if self.region is not None:
            self.region.close()
            self.region = None
        super().close()


def _seals(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return -1


# -- the consumer -----------------------------------------------------------------------


class PerfettoConsumer(PortClient):
    """A consumer as the SDK's NewTrace(kSystemBackend) and the perfetto CLI are.

    `events` keeps every ObservableEvents the ObserveEvents stream brought;
    `enable_reply` the EnableTracingResponse once the session ended."""

    def __init__(self, channel: Channel | str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if isinstance(channel, str):
            channel = Channel.connect(channel, timeout)
        super().__init__(channel, timeout)
        self.events: list[pf.ObservableEvents] = []
        self.enable_reply: pf.EnableTracingResponse | None = None
        self.enable_rejected = False
        self._enable_rid = 0

    def connect(self) -> PerfettoConsumer:
        self.bind(wire.CONSUMER_SERVICE)
        return self

    def observe_events(
        self,
        types: Iterable[pf.ObservableEvents.Type] = (
            ObservableType.TYPE_DATA_SOURCES_INSTANCES,
            ObservableType.TYPE_ALL_DATA_SOURCES_STARTED,
        ),
    ) -> None:
        args = pf.ObserveEventsRequest(events_to_observe=list(types)).SerializeToString()
        self.open_stream("ObserveEvents", args, self._on_events)

    def enable_tracing(self, config: pb.TraceConfig, fd: int | None = None) -> None:
        """EnableTracing, its reply awaited later (wait_tracing_disabled): traced
        answers it when the session ends. `fd` (write_into_file) goes with the frame."""
        args = pf.EnableTracingRequest(trace_config=config.SerializeToString())
        self._enable_rid = self.open_stream(
            "EnableTracing", args.SerializeToString(), self._on_enable_reply, fd
        )

    def wait_tracing_disabled(self, timeout: float | None = None) -> pf.EnableTracingResponse:
        """The EnableTracing reply (disabled, error). CallRejected if it was rejected."""
        self.wait_until(
            lambda: self.enable_reply is not None or self.enable_rejected,
            self.timeout if timeout is None else timeout,
            "the end of the session (EnableTracing's reply)",
        )
        if self.enable_reply is None:
            raise CallRejected("EnableTracing rejected")
        return self.enable_reply

    def start_tracing(self) -> None:
        self.call("StartTracing")

    def disable_tracing(self) -> None:
        self.call("DisableTracing")

    def free_buffers(self) -> None:
        self.call("FreeBuffers", pf.FreeBuffersRequest().SerializeToString())

    def flush(self, timeout_ms: int = 5000) -> bool:
        """Flush; False if the host rejected it (a failed flush)."""
        args = pf.FlushRequest(timeout_ms=timeout_ms).SerializeToString()
        try:
            self.call("Flush", args)
        except CallRejected:
            return False
        return True

    def read_buffers(self) -> SliceAssembler:
        """ReadBuffers to its last reply: the packets and how many replies carried them."""
        rid = self.invoke("ReadBuffers")
        assembler = SliceAssembler()
        while True:
            reply = self.await_reply(rid, "ReadBuffers")
            assembler.feed(pf.ReadBuffersResponse.FromString(reply.reply_proto))
            if not reply.has_more:
                return assembler

    def get_trace_stats(self) -> pb.TraceStats:
        reply = pf.GetTraceStatsResponse.FromString(self.call("GetTraceStats"))
        return pb.TraceStats.FromString(reply.trace_stats)

    def query_service_state(self) -> pb.TracingServiceState:
        """QueryServiceState: several replies are merged (their bytes concatenated,
        as the SDK's client does)."""
        rid = self.invoke("QueryServiceState", pf.QueryServiceStateRequest().SerializeToString())
        merged = bytearray()
        while True:
            reply = self.await_reply(rid, "QueryServiceState")
            merged += pf.QueryServiceStateResponse.FromString(reply.reply_proto).service_state
            if not reply.has_more:
                return pb.TracingServiceState.FromString(bytes(merged))

    def query_capabilities(self) -> pf.TracingServiceCapabilities:
        reply = pf.QueryCapabilitiesResponse.FromString(self.call("QueryCapabilities"))
        return reply.capabilities

    def _on_events(self, reply: pf.IPCFrame.InvokeMethodReply) -> None:
        if reply.success:
            self.events.append(pf.ObserveEventsResponse.FromString(reply.reply_proto).events)

    def _on_enable_reply(self, reply: pf.IPCFrame.InvokeMethodReply) -> None:
        if not reply.success:
            self.enable_rejected = True
            return
        self.enable_reply = pf.EnableTracingResponse.FromString(reply.reply_proto)

    def instance_states(self) -> list[tuple[str, str, int]]:
        """(producer, data source, state) of every instance change observed, in order."""
        return [
            (c.producer_name, c.data_source_name, c.state)
            for events in self.events
            for c in events.instance_state_changes
        ]

    @property
    def all_started(self) -> bool:
        return any(events.all_data_sources_started for events in self.events)


# -- as a process -----------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """python -m tests.perfetto_client producer SOCKET LABEL COUNT [FILLER]

    A producer process: connects as LABEL, waits up to 60 s for an instance to
    start, writes COUNT packets double_packet(LABEL, i, FILLER) and flushes,
    prints "wrote COUNT", then answers the host until every instance stopped
    ("stopped") or the host closed the socket ("closed")."""
    if len(argv) not in (4, 5) or argv[0] != "producer":
        print(main.__doc__, file=sys.stderr)
        return 2
    path, label, count = argv[1], argv[2], int(argv[3])
    filler = int(argv[4]) if len(argv) == 5 else 0
    producer = PerfettoProducer(path, label, timeout=60.0).connect()
    producer.wait_until(lambda: producer.started, 60.0, "an instance to start")
    iid = next(iter(producer.started))
    producer.write_packets(iid, (double_packet(label, i, filler) for i in range(count)))
    producer.flush_writers()
    print(f"wrote {count}", flush=True)
    producer.serve(lambda: not producer.started, 3600.0)
    print("closed" if producer.channel.eof else "stopped", flush=True)
    producer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
