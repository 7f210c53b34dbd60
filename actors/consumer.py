"""The consumer: a blocking script API over ConsumerCore; run as a module, the record
command line (actors/consumer_cli.py).

    python -m actors.consumer -c CONFIG [--txt] -o OUT [--consumer-endpoint EP]

works like Perfetto's `perfetto -c CONFIG --txt -o OUT`: it runs one session to
its duration_ms (the service stops it) or until Ctrl-C (then it flushes and
disables), streams the trace back into a temp file next to OUT as it arrives,
renames it into place, prints a summary on stderr and frees the session. Exit
codes: 0 done, 1 session or service error, 2 bad config or usage, 130
interrupted (after writing what was read). Nothing read is thrown away: if the
service dies or stops answering mid-read, every complete packet received is
written to OUT (a valid, incomplete trace) and the exit code is 1. With
write_into_file in the config, the service writes OUT itself as the session
runs (enable(..., output_path=OUT)); the CLI then only waits for the end and
summarizes the file (trace_file_batches reads its packets back).

Scripts use the same pieces::

    with Consumer.connect(timeout=5) as c:
        c.enable(Path("examples/configs/synthetic.pbtxt"))
        c.wait_disabled(timeout=10)
        c.save("trace.pftrace")
        c.free()

Every blocking call has a timeout and raises a ConsumerError subclass
(actors.core.consumer_core) that says what went wrong. A read's timeout bounds
the wait for each reply, not the whole read: a read is alive as long as data
flows. Memory stays bounded during a read: packets go to the file (or the
caller) as each reply arrives, and at most RECEIVE_HWM replies wait in the
socket (the rest is back-pressure on the service's side).
"""

from __future__ import annotations

import builtins
import errno
import logging
import os
import secrets
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Self, TypeAlias, TypedDict

import zmq
from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from zmq.utils.monitor import recv_monitor_message

from actors.core.configs import (
    TEXT_SUFFIXES,
    TextprotoError,
    looks_like_textproto,
    parse_textproto,
)
from actors.core.consumer_core import (
    AttachResult,
    CloneResult,
    Completed,
    ConfigError,
    ConsumerCore,
    ConsumerError,
    EnableResult,
    Event,
    EventsObserved,
    Failed,
    Interrupted,
    Notice,
    PacketsRead,
    ReadResult,
    RequestTimeout,
    ServiceError,
    ServiceUnreachable,
    SessionEnded,
    SessionError,
    SessionView,
    UsageError,
    frame_packet,
)
from actors.endpoints import default_consumer_endpoint
from actors.loop import Loop
from actors.output_paths import STDOUT, not_regular, written_path
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from shm.protozero import read_varint

log = logging.getLogger("tracebus.consumer")

CONNECT_TIMEOUT_ENV = "TRACEBUS_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 10.0  # replies the service gives at once (ack, stats, state)
DISABLE_TIMEOUT = 15.0  # the service waits up to data_source_stop_timeout_ms (5 s by default)
CLONE_TIMEOUT = 30.0  # the service flushes the source first (flush_timeout_ms, 5 s by default)
READ_IDLE_TIMEOUT = 30.0  # longest wait for the next ReadBuffers reply
CLOSE_FREE_TIMEOUT = 1.0  # close() frees a session still held, but does not hang on it
# Replies may be ~1 MiB each: a read keeps at most MESSAGES_PER_WAKEUP of them decoded
# and RECEIVE_HWM queued in libzmq, which then stops reading the socket (back-pressure,
# nothing is dropped). That bounds the consumer's memory during a read.
MESSAGES_PER_WAKEUP = 4  # then let the caller consume what arrived
RECEIVE_HWM = 4
OBSERVE_ALL = ("data_sources_instances", "all_data_sources_started")
MAX_CONFIG_BYTES = framing.MAX_FRAME_BYTES  # the EnableTracingRequest carries it whole

ConfigLike: TypeAlias = "pb.TraceConfig | bytes | str | os.PathLike[str]"


# -- configs -----------------------------------------------------------------------------------


def parse_config(
    data: bytes | bytearray | str, *, text: bool, source: str = "<config>"
) -> pb.TraceConfig:
    """A TraceConfig from textproto or binary bytes; ConfigError says where it went wrong."""
    if text:
        return _parse_text(data, source)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        config = pb.TraceConfig.FromString(raw)
    except DecodeError as e:
        hint = "; it looks like a textproto: pass --txt" if looks_like_textproto(raw) else ""
        raise ConfigError(f"{source}: not a binary TraceConfig ({e}){hint}") from None
    if looks_like_textproto(raw):
        raise ConfigError(f"{source}: this is a textproto, not a binary TraceConfig: pass --txt")
    return config


def _parse_text(data: bytes | bytearray | str, source: str) -> pb.TraceConfig:
    try:
        text = data.decode() if isinstance(data, bytes | bytearray) else data
        return parse_textproto(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text ({e})") from None
    except TextprotoError as e:
        where = f"{e.line}:{e.column}: " if e.line is not None else ""
        raise ConfigError(f"{source}:{where}{e.message}") from None


def load_config(config: ConfigLike, *, text: bool | None = None) -> pb.TraceConfig:
    """A TraceConfig message, binary bytes, a textproto str, or a file (a .pbtxt, .txt,
    .textproto or .cfg file is text unless `text` says otherwise)."""
    if isinstance(config, pb.TraceConfig):
        return config
    if isinstance(config, str):
        return parse_config(config, text=True if text is None else text)
    if isinstance(config, bytes | bytearray):
        return parse_config(config, text=bool(text))
    path = Path(config)
    try:
        with open(path, "rb") as f:
            data = read_config_bytes(f, str(path))
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    is_text = path.suffix in TEXT_SUFFIXES if text is None else text
    return parse_config(data, text=is_text, source=str(path))


def read_config_bytes(stream: BinaryIO, source: str) -> bytes:
    """A config's bytes, at most what one request can carry: a config that could never
    reach the service (or a -c /dev/zero) is refused without reading on."""
    data = stream.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES >> 20} MiB, not a config")
    return data


# -- the trace file ----------------------------------------------------------------------------


class FramedPackets:
    """Packets written as a Trace's framed `packet` fields, counted as they go."""

    _file: BinaryIO
    packets: int
    bytes: int  # shadows the builtin in this class body (hence builtins.bytes below)

    def write_all(self, packets: Iterable[builtins.bytes]) -> None:
        frames = [frame_packet(p) for p in packets]
        self._file.write(b"".join(frames))
        self.packets += len(frames)
        self.bytes += sum(map(len, frames))

    def flush(self) -> None:
        self._file.flush()


class TraceFile(FramedPackets):
    """A Perfetto trace file written through a temp file in the same directory.

    Packets stream into the temp file as they arrive; commit() renames it into
    place, so an existing file is replaced only then and never half-written;
    discard() (or leaving a with-block without commit) removes the temp file.
    Only a regular file is ever replaced (actors/output_paths.py): a directory,
    device, FIFO or socket at the path raises OSError when the file is created,
    and at commit (then the temp file is kept, and the error names it). A
    symlink's target is written, not the link.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.target = written_path(path)
        problem = not_regular(self.target)
        if problem:
            raise OSError(errno.EEXIST, problem)
        self.temp_path = self.target.with_name(f".{self.target.name}.{secrets.token_hex(4)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(self.temp_path, flags, 0o666)
        self._file = os.fdopen(fd, "wb", buffering=1 << 16)
        self.packets = 0
        self.bytes = 0
        self.committed = False
        self.kept = False  # commit found no regular file to replace: the temp file stays

    def commit(self) -> Path:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        problem = not_regular(self.target)  # something else may stand there by now
        if problem:
            self.kept = True
            raise OSError(errno.EEXIST, f"{problem}; the trace is kept in {self.temp_path}")
        os.replace(self.temp_path, self.target)
        self.committed = True
        return self.path

    def discard(self) -> None:
        if self.committed or self.kept:
            return
        try:
            self._file.close()
        finally:
            self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> TraceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class StdoutTrace(FramedPackets):
    """TraceFile's interface over standard output (`-o -`): packets go out as they
    arrive; commit() flushes. What was written cannot be taken back: discard()
    only flushes too (a failed read still leaves whole packets, a valid trace)."""

    def __init__(self) -> None:
        self.path = Path(STDOUT)
        self._file = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=1 << 16)
        self.packets = 0
        self.bytes = 0
        self.committed = False

    def commit(self) -> Path:
        self.discard()
        self.committed = True
        return self.path

    def discard(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()  # flushes
            except BrokenPipeError:
                pass  # the reader left: nothing more to say to it

    def __enter__(self) -> StdoutTrace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def open_trace(path: str | os.PathLike) -> TraceFile | StdoutTrace:
    """Where a trace read back goes: `-` is standard output, else a TraceFile."""
    return StdoutTrace() if os.fspath(path) == STDOUT else TraceFile(path)


def trace_file_batches(path: str | os.PathLike, read_bytes: int = 1 << 20) -> Iterator[list[bytes]]:
    """The packets of a Perfetto trace file, a batch per read of about
    read_bytes; a torn end (a packet cut short) is left out."""
    with open(path, "rb") as f:
        pending = b""
        while data := f.read(read_bytes):
            buffered = pending + data
            batch, used = split_trace(buffered)
            pending = buffered[used:]
            if batch:
                yield batch


def split_trace(data: bytes) -> tuple[list[bytes], int]:
    """(the whole Trace.packet fields at the start of `data`, bytes they take)."""
    packets: list[bytes] = []
    i, end = 0, len(data)
    while i < end and data[i] == 0x0A:  # Trace.packet (1), length-delimited
        size, start = read_varint(data, i + 1, end)
        if start < 0 or start + size > end:
            break
        packets.append(data[start : start + size])
        i = start + size
    return packets, i


# -- the blocking API ------------------------------------------------------------------------


class UnmatchedWatch:
    """The config's data sources that no connected producer offered when the session
    was enabled (EnableResult.unmatched_data_sources), watched until its end: a
    producer offering one may connect meanwhile (`tracebus run` starts the command
    after the session; a script may attach producers). It subscribes to instance
    events only when there is something to watch; `remaining()` names those that
    never got an instance, so recorded nothing."""

    def __init__(self, consumer: Consumer, names: Iterable[str]) -> None:
        self.consumer = consumer
        self.names = tuple(names)
        if self.names:
            consumer.observe("data_sources_instances")

    def remaining(self) -> tuple[str, ...]:
        self.note(self.consumer.take_events())
        return self.names

    def note(self, events: Iterable[ipc.ObservableEvents]) -> None:
        """Events someone else took from the consumer's queue (a snapshot loop)."""
        seen = {c.data_source_name for e in events for c in e.instance_state_changes}
        self.names = tuple(n for n in self.names if n not in seen)


class _Timing(TypedDict):
    """The now/timeout_ns arguments of a ConsumerCore request."""

    now: int
    timeout_ns: int | None


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1e9)


def _observe_type(name: str | int) -> int:
    if isinstance(name, int):
        return name
    return ipc.ObserveEventsRequest.Type.Value("TYPE_" + name.upper())


class Consumer:
    """One connection to the service's consumer port, holding at most one session.

    Not thread-safe: one thread drives it. interrupt() is the exception: a signal
    handler may call it to make wait_disabled() raise Interrupted.
    """

    def __init__(self, endpoint: str | None = None, *, name: str = "tracebus-consumer") -> None:
        self.endpoint = endpoint or default_consumer_endpoint()
        self.features = 0
        self.config: pb.TraceConfig | None = None
        self.last_read: ReadResult | None = None
        self.last_saved: Path | None = None  # the file the last save() wrote, whole or not
        self.notices: list[str] = []
        self._core = ConsumerCore(client_name=name)
        self._results: dict[int, Completed | Failed] = {}
        self._streams: dict[int, deque[tuple[bytes, ...]]] = {}
        self._abandoned: set[int] = set()
        self._observed: deque[ipc.ObservableEvents] = deque()
        self._ended: SessionEnded | None = None
        self._interrupt = False
        self._was_connected = False
        self._loop = Loop()
        self._sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        self._monitor: zmq.Socket[bytes] = self._sock.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
        )
        try:
            self._sock.connect(self.endpoint)
        except zmq.ZMQError as e:
            self.close()
            raise UsageError(f"bad consumer endpoint {self.endpoint!r}: {e}") from None
        self._loop.add_socket(self._sock, self._on_readable)
        self._loop.add_socket(self._monitor, self._on_monitor)

    @classmethod
    def connect(
        cls,
        endpoint: str | None = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        *,
        name: str = "tracebus-consumer",
    ) -> Self:
        """Connect and shake hands; ServiceUnreachable names the endpoint on timeout."""
        consumer = cls(endpoint, name=name)
        try:
            consumer.features = consumer._call(consumer._core.hello(**consumer._t(timeout)))
        except RequestTimeout:
            consumer.close()
            raise ServiceUnreachable(
                f"no tracing service answered at {consumer.endpoint} within {timeout:g} s"
                " (is `python -m actors.service` running?)"
            ) from None
        except BaseException:
            consumer.close()
            raise
        return consumer

    # -- session ------------------------------------------------------------------------------

    @property
    def session_id(self) -> int:
        return self._core.session_id

    @property
    def session_ended(self) -> bool:
        return self._ended is not None

    @property
    def session_error(self) -> str:
        return self._ended.error if self._ended else ""

    @property
    def stop_timed_out(self) -> tuple[str, ...]:
        """The data sources whose stop ack did not come in time (see SessionEnded)."""
        return self._ended.stop_timed_out if self._ended else ()

    def enable(
        self,
        config: ConfigLike,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        output_path: str | os.PathLike | None = None,
    ) -> EnableResult:
        """Set up a session (and start it unless deferred_start). The result names the
        config fields the service does not implement (also logged as a warning) and
        the data sources no connected producer offers (see UnmatchedWatch). With
        write_into_file in the config, the service writes the trace to `output_path`
        (made absolute here; None: the config's output_path) and the session cannot
        be read back."""
        self.config = load_config(config)
        self._ended = None
        data = self.config.SerializeToString()
        request = self._core.enable_tracing(data, **self._t(timeout))
        if output_path is not None:
            request.enable_tracing.output_path = os.path.abspath(output_path)
        result = self._call(request)
        if result.unsupported_fields:
            fields = ", ".join(result.unsupported_fields)
            log.warning("warning: the service does not implement these config fields: %s", fields)
        return result

    def start(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Start a deferred_start session."""
        self._call(self._core.start_tracing(**self._t(timeout)))

    def flush(self, timeout: float = 5.0) -> bool:
        """Ask every data source to commit; False if they did not all ack within timeout."""
        request = self._core.flush(int(timeout * 1000), now=self._loop.now())
        return self._call(request)

    def disable(self, *, timeout: float = DISABLE_TIMEOUT) -> None:
        """Stop the data sources (no flush: call flush() first). Buffers stay readable."""
        self._call(self._core.disable_tracing(**self._t(timeout)))

    def wait_disabled(self, timeout: float | None = None) -> None:
        """Wait for the service to end the session (duration_ms, disable(), an error).
        Raises SessionError if it failed, RequestTimeout, or Interrupted."""
        if self._ended is None and self._core.session is SessionView.NONE:
            raise UsageError("wait_disabled: no session on this connection")
        if not self._wait(lambda: self._ended is not None, timeout, interruptible=True):
            raise RequestTimeout(f"the session did not end within {timeout:g} s")
        ended = self._ended
        assert ended is not None  # what _wait waited for
        if ended.error:
            raise SessionError(ended.error)

    def free(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Destroy the session and its buffers (disabling it first if needed)."""
        self._call(self._core.free_buffers(**self._t(timeout)))

    # -- triggers, detach and attach, clone ------------------------------------------------------

    def trigger(self, *names: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Fire named triggers: every session whose trigger_config names one acts
        on it (start, stop, snapshot), as when a producer fires it."""
        self._call(self._core.activate_triggers(names, **self._t(timeout)))

    def detach(self, key: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Leave the session running without this connection, kept under `key` (unique
        per uid); attach(key) from any connection of the same uid takes it back.
        With write_into_file the service goes on writing the file."""
        self._call(self._core.detach(key, **self._t(timeout)))
        self._ended = None

    def attach(self, key: str, *, timeout: float = DEFAULT_TIMEOUT) -> AttachResult:
        """Take back the session detached under `key`: this connection then holds it
        (read it, disable it, wait_disabled, free it) as if it had enabled it."""
        result: AttachResult = self._call(self._core.attach(key, **self._t(timeout)))
        self.config = result.config
        self._ended = None
        self._send(self._core.await_end(now=self._loop.now()))  # the end reply comes here now
        return result

    def clone(
        self,
        session_id: int = 0,
        *,
        unique_session_name: str = "",
        trigger: ipc.ObservableEvents.CloneTriggerHit | None = None,
        timeout: float = CLONE_TIMEOUT,
    ) -> CloneResult:
        """Copy a running session of this uid (by id, or by unique_session_name) into a
        read-only session this connection holds: read it (save()), then free() it. The
        source is flushed first and goes on recording."""
        request = self._core.clone_session(
            session_id=session_id,
            unique_session_name=unique_session_name,
            trigger=trigger,
            **self._t(timeout),
        )
        return self._call(request)

    def snapshot(self, path: str | os.PathLike, *, timeout: float = CLONE_TIMEOUT) -> ReadResult:
        """Write a copy of this connection's session, as it is now, to `path`: a clone
        taken and read over a second connection (this one holds the session, which
        goes on recording)."""
        if self._core.session is SessionView.NONE:
            raise UsageError("snapshot: no session on this connection")
        with Consumer.connect(self.endpoint, timeout, name="tracebus-snapshot") as other:
            other.clone(self.session_id, timeout=timeout)
            result = other.save(path)
            other.free()
        return result

    # -- reading -------------------------------------------------------------------------------

    def read_batches(self, *, timeout: float = READ_IDLE_TIMEOUT) -> Iterator[tuple[bytes, ...]]:
        """The packets of each ReadBuffers reply; timeout bounds the wait for each reply."""
        request = self._core.read_buffers(now=self._loop.now(), idle_timeout_ns=_ns(timeout))
        self._streams[request.request_id] = deque()
        self._send(request)
        return self._stream(request.request_id)

    def _stream(self, request_id: int) -> Iterator[tuple[bytes, ...]]:
        queue = self._streams[request_id]
        finished = False
        try:
            while not finished:
                self._wait(lambda: bool(queue) or request_id in self._results)
                while queue:
                    yield queue.popleft()
                if request_id in self._results:
                    finished = True
                    self.last_read = self._take(request_id)
        finally:
            del self._streams[request_id]
            if not finished:  # the caller stopped early: drop the rest of the stream
                self._abandoned.add(request_id)

    def read_buffers(self, *, timeout: float = READ_IDLE_TIMEOUT) -> Iterator[bytes]:
        """Every packet of the trace (serialized TracePackets), as they arrive."""
        for batch in self.read_batches(timeout=timeout):
            yield from batch

    def read_packets(self, *, timeout: float = READ_IDLE_TIMEOUT) -> Iterator[pb.TracePacket]:
        for data in self.read_buffers(timeout=timeout):
            yield pb.TracePacket.FromString(data)

    def save(self, path: str | os.PathLike, *, timeout: float = READ_IDLE_TIMEOUT) -> ReadResult:
        """Stream the trace into a Perfetto trace file (replaced once all is read; only a
        regular file is replaced, `-` is standard output). If the
        read fails after some packets arrived, the file gets those (whole packets only)
        before the error is raised again, with a note saying so."""
        self.last_saved = None
        with open_trace(path) as out:
            try:
                for batch in self.read_batches(timeout=timeout):
                    out.write_all(batch)
            except (ConsumerError, KeyboardInterrupt) as e:
                if out.packets:
                    self.last_saved = out.commit()
                    e.add_note(f"the {out.packets} packets read before were saved to {path}")
                raise
            self.last_saved = out.commit()
        result = self.last_read
        assert result is not None  # set as the stream finished
        return result

    def stats(self, *, timeout: float = DEFAULT_TIMEOUT) -> pb.TraceStats:
        return self._call(self._core.get_trace_stats(**self._t(timeout)))

    def query_state(self, *, timeout: float = DEFAULT_TIMEOUT) -> ipc.QueryServiceStateResponse:
        """Producers (with pid/uid), data sources and sessions the service knows."""
        return self._call(self._core.query_service_state(**self._t(timeout)))

    def observe(self, *types: str | int, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Subscribe to events: "data_sources_instances", "all_data_sources_started"
        (both by default); then read them with next_event()."""
        chosen = [_observe_type(t) for t in types or OBSERVE_ALL]
        self._call(self._core.observe_events(chosen, **self._t(timeout)))

    def take_events(self) -> list[ipc.ObservableEvents]:
        """The events received so far (next_event's queue, emptied), without waiting."""
        events = list(self._observed)
        self._observed.clear()
        return events

    def wait_end_or_event(self, timeout: float | None = None) -> bool:
        """Wait until the session ends or an observable event is queued (take_events);
        False on timeout. Raises Interrupted like wait_disabled()."""
        done = lambda: self._ended is not None or bool(self._observed)  # noqa: E731
        return self._wait(done, timeout, interruptible=True)

    def next_event(self, timeout: float = DEFAULT_TIMEOUT) -> ipc.ObservableEvents:
        if not self._wait(lambda: bool(self._observed), timeout):
            raise RequestTimeout(f"no observable event within {timeout:g} s")
        return self._observed.popleft()

    # -- lifetime ------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Make the current or next wait_disabled() raise Interrupted (signal-safe)."""
        self._interrupt = True
        self._loop.stop()

    def close(self) -> None:
        """Free a session still held (as the service would when this process exits), then
        close the connection."""
        if self._sock.closed:
            return
        if self._core.session is not SessionView.NONE and self._core.lost is None:
            try:
                self.free(timeout=CLOSE_FREE_TIMEOUT)
            except ConsumerError as e:
                log.debug("free_buffers on close: %s", e)
        self._loop.remove(self._sock)
        self._loop.remove(self._monitor)
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)
        self._loop.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _t(self, timeout: float | None) -> _Timing:
        return {"now": self._loop.now(), "timeout_ns": _ns(timeout)}

    def _call(self, request: ipc.ConsumerToService) -> Any:
        self._send(request)
        self._wait(lambda: request.request_id in self._results)
        return self._take(request.request_id)

    def _take(self, request_id: int) -> Any:
        event = self._results.pop(request_id)
        if isinstance(event, Failed):
            raise event.error
        return event.value

    def _send(self, request: ipc.ConsumerToService) -> None:
        try:
            self._sock.send_multipart(framing.encode(request), zmq.NOBLOCK)
        except zmq.Again:
            self._abandoned.add(request.request_id)
            raise ServiceError(f"cannot send to {self.endpoint}: its queue is full") from None

    def _wait(
        self, done: Callable[[], bool], timeout: float | None = None, interruptible: bool = False
    ) -> bool:
        """Run the loop until done(), the timeout (False), or an interrupt; requests that
        pass their deadline on the way complete or fail through the core."""
        end = None if timeout is None else self._loop.now() + int(timeout * 1e9)
        stop = (lambda: done() or self._interrupt) if interruptible else done
        while not done():
            if interruptible and self._interrupt:
                self._interrupt = False
                raise Interrupted("interrupted")
            now = self._loop.now()
            self._dispatch(self._core.expire(now))
            if done():
                break
            if end is not None and now >= end:
                return False
            deadlines = [d for d in (end, self._core.next_deadline()) if d is not None]
            wait = None if not deadlines else max(0, min(deadlines) - now) / 1e9
            self._loop.run(until=stop, timeout=wait)
        return True

    def _dispatch(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, Notice):
                self.notices.append(event.message)
                log.warning("%s", event.message)
                continue
            request_id = event.request_id
            if request_id in self._abandoned:
                if isinstance(event, Completed | Failed):
                    self._abandoned.discard(request_id)
            elif isinstance(event, PacketsRead):
                if request_id in self._streams:  # else a read nobody iterates: drop it
                    self._streams[request_id].append(event.packets)
            elif isinstance(event, Completed | Failed):
                self._results[request_id] = event
            elif isinstance(event, SessionEnded):
                self._ended = event
            elif isinstance(event, EventsObserved):
                self._observed.append(event.events)

    def _on_readable(self, limit: int | None = MESSAGES_PER_WAKEUP) -> None:
        received = 0
        while limit is None or received < limit:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            received += 1
            try:
                message = framing.decode_to_consumer(frames)
            except framing.FramingError as e:
                self._dispatch([Notice(f"dropped a message from {self.endpoint}: {e}")])
                continue
            self._dispatch(self._core.handle(self.endpoint, message, self._loop.now()))

    def _on_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_CONNECTED:
                self._was_connected = True
            elif event == zmq.EVENT_DISCONNECTED and self._was_connected:
                self._on_readable(limit=None)  # what it sent before leaving comes first
                if self._core.lost is None:
                    reason = f"the tracing service at {self.endpoint} went away"
                    self._dispatch(self._core.connection_lost(reason))


if __name__ == "__main__":
    from actors.record_cli import main

    sys.exit(main())
