"""Perfetto's IPC wire format: the frames on traced's producer and consumer
sockets, and the method tables tracebus's Perfetto-socket front end serves.

The stream (AF_UNIX, SOCK_STREAM) is a sequence of frames:

    +----------------+------------------------------------------+
    | u32 LE length  | IPCFrame (protos/perfetto_ipc.proto)     |
    +----------------+------------------------------------------+
      4 bytes          `length` bytes; 4 + length <= 128 KiB

A length of 0 is skipped. A frame whose 4 + length passes 128 KiB
(MAX_FRAME_BYTES, Perfetto's kIPCBufferSize) makes the receiver disconnect:
what we send must stay under it (Perfetto clients drop the connection
otherwise), and a peer that announces more is cut off. A frame whose bytes do
not parse is dropped, as Perfetto drops it.

A client binds a service by name (BindService: "ProducerPort" or
"ConsumerPort") and gets back a service id and a table of (method id, name);
it then invokes methods by id (InvokeMethod, with the request id of the frame).
A reply echoes the request id; a streaming reply sets has_more until its last
frame. A client maps methods by name and never sends a method the table does
not list (it rejects the call itself), so the table is the feature switch:
tracebus lists only the methods it implements. Ids are ours to choose; we
number them as Perfetto does (1.. in its declaration order), so frame logs
read the same.

What both translators share is here too: the rule for a peer's strings that
are not UTF-8 (`text`), and DataSourceDescriptor in either numbering
(`tracebus_descriptor`, `perfetto_descriptor`).

Pure: bytes in, frames out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from protos import perfetto_ipc_pb2 as pf
from protos import tracebus_ipc_pb2 as ipc

FRAME_HEADER = struct.Struct("<I")  # the payload's length
MAX_FRAME_BYTES = 128 * 1024  # kIPCBufferSize: header and payload together
MAX_PAYLOAD_BYTES = MAX_FRAME_BYTES - FRAME_HEADER.size

PRODUCER_SERVICE = "ProducerPort"
CONSUMER_SERVICE = "ConsumerPort"
PRODUCER_SERVICE_ID = 1
CONSUMER_SERVICE_ID = 2

# A Perfetto-socket connection's identity in ServiceCore: this prefix and the
# connection's number (u32 BE). ZeroMQ peers presenting a routing id with it are
# refused, so none can pass for a Perfetto connection.
PERFETTO_PREFIX = b"\x00perfetto\x00"

# Perfetto's method ids (its declaration order); the ones not served are left out
# of the table a client gets, so it never sends them.
PRODUCER_METHODS: dict[str, int] = {
    "InitializeConnection": 1,
    "RegisterDataSource": 2,
    "UnregisterDataSource": 3,
    "CommitData": 4,
    "GetAsyncCommand": 5,
    "RegisterTraceWriter": 6,
    "UnregisterTraceWriter": 7,
    "NotifyDataSourceStarted": 8,
    "NotifyDataSourceStopped": 9,
    "ActivateTriggers": 10,
    "Sync": 11,
}
CONSUMER_METHODS: dict[str, int] = {
    "EnableTracing": 1,
    "DisableTracing": 2,
    "ReadBuffers": 3,
    "FreeBuffers": 4,
    "Flush": 5,
    "StartTracing": 6,
    "ChangeTraceConfig": 7,
    "Detach": 8,
    "Attach": 9,
    "GetTraceStats": 10,
    "ObserveEvents": 11,
    "QueryServiceState": 12,
    "QueryCapabilities": 13,
    "SaveTraceForBugreport": 14,
    "CloneSession": 15,
}


class FrameError(Exception):
    """The stream cannot go on (a frame announced over MAX_FRAME_BYTES): disconnect."""


@dataclass
class OutFrame:
    """A frame to send: its bytes (header included), and whether the producer's SMB
    fd travels with it (SCM_RIGHTS on its first sendmsg)."""

    data: bytes
    smb_fd: bool = False


class FrameDecoder:
    """Cuts a byte stream into IPCFrames, lazily: `keep` stores a read's raw
    bytes and `next_frame` parses one frame when asked. A reader that cuts a
    bounded number of frames a turn and reads again only once `complete()` is
    false holds at most one read and one incomplete frame of raw bytes per
    connection (parsed eagerly, one 64 KiB read of 6-byte frames would be
    10,922 IPCFrame objects, about 6 MB).

    File descriptors ride along: the fd that came with a read belongs to the
    frame holding that read's last byte (the kernel ends a read after the bytes
    an fd came with), and next_frame hands it out with that frame. One fd per
    frame: `keep` hands back the older one for the caller to close. `feed`
    cuts every frame at once, for our own (trusted) side and tests."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._start = 0  # the first byte not cut yet
        self._fds: list[tuple[int, int]] = []  # (index of the byte it came with, fd), ascending
        self.undecodable = 0  # frames dropped because their bytes did not parse

    @property
    def buffered(self) -> int:
        """Bytes kept and not cut yet (0 between frames, once all are cut)."""
        return len(self._buf) - self._start

    def keep(self, data_untrusted: bytes, fd: int | None = None) -> int | None:
        """Store a read's bytes and the fd that came with it; the fd it displaced
        (one of the same frame), which the caller closes."""
        if self._start:
            del self._buf[: self._start]
            self._fds = [(at - self._start, held) for at, held in self._fds]
            self._start = 0
        self._buf += data_untrusted
        if fd is None or not data_untrusted:
            return fd
        at = len(self._buf) - 1
        displaced = None
        if self._fds and self._end_of_frame_holding(self._fds[-1][0]) > at:
            displaced = self._fds.pop()[1]
        self._fds.append((at, fd))
        return displaced

    def complete(self) -> bool:
        """Whether a whole frame (or a header announcing too much) waits to be cut."""
        end = self._frame_end(self._start)
        return end is not None and (end <= len(self._buf) or end - self._start > MAX_FRAME_BYTES)

    def fd_waiting(self) -> bool:
        """Whether an fd waits for a frame still incomplete."""
        return bool(self._fds) and self._end_of_frame_holding(self._fds[-1][0]) > len(self._buf)

    def next_frame(self) -> tuple[pf.IPCFrame | None, int | None] | None:
        """The next complete frame and its fd, or None (none is complete). The
        frame is None for an empty one or one that did not parse (counted in
        `undecodable`): its fd is still handed out, to be closed. Raises
        FrameError when a frame announces more than MAX_FRAME_BYTES."""
        start = self._start
        end = self._frame_end(start)
        if end is not None and end - start > MAX_FRAME_BYTES:
            raise FrameError(f"a frame of {end - start - FRAME_HEADER.size} bytes "
                             f"(at most {MAX_PAYLOAD_BYTES})")  # fmt: skip
        if end is None or end > len(self._buf):
            return None
        self._start = end
        fd = None
        while self._fds and self._fds[0][0] < end:  # one at most (keep displaces the others)
            fd = self._fds.pop(0)[1]
        frame = self._parse(start + FRAME_HEADER.size, end)
        if self._start == len(self._buf):
            self._buf.clear()
            self._start = 0
        return frame, fd

    def take_fds(self) -> list[int]:
        """The fds still held (the connection ends): the caller closes them."""
        fds, self._fds = [fd for _, fd in self._fds], []
        return fds

    def feed(self, data_untrusted: bytes) -> list[pf.IPCFrame]:
        """Every frame `data_untrusted` completes, in order (fds aside). Raises
        FrameError when a frame announces more than MAX_FRAME_BYTES."""
        self.keep(data_untrusted)
        frames: list[pf.IPCFrame] = []
        while (cut := self.next_frame()) is not None:
            if cut[0] is not None:
                frames.append(cut[0])
        return frames

    def _frame_end(self, start: int) -> int | None:
        """Where the frame beginning at `start` ends (None: its header is not all in)."""
        if len(self._buf) - start < FRAME_HEADER.size:
            return None
        (length,) = FRAME_HEADER.unpack_from(self._buf, start)
        return start + FRAME_HEADER.size + length

    def _end_of_frame_holding(self, at: int) -> int:
        """Where the frame holding byte `at` ends (past the buffer: not all in)."""
        start = self._start
        while (end := self._frame_end(start)) is not None and end <= at:
            start = end
        return end if end is not None else len(self._buf) + 1

    def _parse(self, start: int, end: int) -> pf.IPCFrame | None:
        if start == end:  # a length of 0 is skipped
            return None
        frame = pf.IPCFrame()
        try:
            frame.ParseFromString(bytes(self._buf[start:end]))
        except DecodeError:
            self.undecodable += 1
            return None
        return frame


def encode(frame: pf.IPCFrame) -> bytes:
    """The frame's bytes, header included. A frame over MAX_FRAME_BYTES is a bug of
    ours (every reply is cut to fit): ValueError."""
    payload = frame.SerializeToString()
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"an IPC frame of {len(payload)} bytes (at most {MAX_PAYLOAD_BYTES})")
    return FRAME_HEADER.pack(len(payload)) + payload


def bind_reply(request_id: int, service_id: int, methods: dict[str, int]) -> bytes:
    """A successful BindServiceReply listing `methods` (0: refused, methods ignored)."""
    frame = pf.IPCFrame(request_id=request_id)
    reply = frame.msg_bind_service_reply
    reply.success = service_id != 0
    if service_id:
        reply.service_id = service_id
        for name, method_id in methods.items():
            reply.methods.add(id=method_id, name=name)
    return encode(frame)


def method_reply(
    request_id: int, reply_proto: bytes | None, has_more: bool = False, success: bool = True
) -> bytes:
    """An InvokeMethodReply: `reply_proto` the serialized response (None: a rejection,
    which the client turns into a failed call; a rejection ends a stream)."""
    frame = pf.IPCFrame(request_id=request_id)
    reply = frame.msg_invoke_method_reply
    reply.success = success and reply_proto is not None
    reply.has_more = has_more
    if reply_proto is not None:
        reply.reply_proto = reply_proto
    return encode(frame)


def request_error(request_id: int, error: str) -> bytes:
    """The answer to a frame that is neither BindService nor InvokeMethod."""
    frame = pf.IPCFrame(request_id=request_id)
    frame.msg_request_error.error = error
    return encode(frame)


@dataclass
class Step:
    """What a connection's translator (perfetto_producer.py, perfetto_consumer.py)
    makes of one frame from its client: envelopes for ServiceCore (in order, with
    request ids of the translator's own), frames to send the client at once
    (before anything the core answers), whether the fd that came with the frame
    was taken (else the shell closes it), and `close`: non-empty when the client
    broke the protocol so that the connection must end (why, for the log)."""

    to_core: list = field(default_factory=list)
    frames: list[OutFrame] = field(default_factory=list)
    fd_taken: bool = False
    close: str = ""


# -- what both translators share -------------------------------------------------------


def text(value_untrusted: str | bytes) -> str:
    """A peer's proto2 string field as str; upb hands back bytes when they are not
    UTF-8, and those are decoded with U+FFFD in place of the bad bytes, in both
    translators (names, keys, triggers). Not a refusal: traced takes any bytes
    (its strings are bytes), so a call it would serve is served; and a peer gains
    nothing by it, since it could send the replaced string itself. Two strings
    that differ only in their bad bytes become one, which the core meets as any
    duplicate."""
    if isinstance(value_untrusted, bytes):
        return value_untrusted.decode("utf-8", "replace")
    return value_untrusted


# DataSourceDescriptor's fields, the same names in both schemas but not the same
# numbers (Perfetto / tracebus): name 1 / 1, will_notify_on_stop 2 / 3,
# will_notify_on_start 3 / 2, handles_incremental_state_clear 4 / 4, no_flush 9 / 5.
# What tracebus does not keep (track_event_descriptor, gpu counters, ftrace) is dropped.
DESCRIPTOR_FLAGS = (
    "will_notify_on_start",
    "will_notify_on_stop",
    "handles_incremental_state_clear",
    "no_flush",
)


def tracebus_descriptor(desc_untrusted: pb.DataSourceDescriptor) -> ipc.DataSourceDescriptor:
    """A Perfetto producer's descriptor in tracebus's numbering."""
    out = ipc.DataSourceDescriptor(name=text(desc_untrusted.name))
    for flag in DESCRIPTOR_FLAGS:
        setattr(out, flag, getattr(desc_untrusted, flag))
    return out


def perfetto_descriptor(desc: ipc.DataSourceDescriptor) -> pb.DataSourceDescriptor:
    """A descriptor the core keeps, in Perfetto's numbering (flags set only when true,
    as traced leaves the others unset)."""
    out = pb.DataSourceDescriptor(name=desc.name)
    for flag in DESCRIPTOR_FLAGS:
        if getattr(desc, flag):
            setattr(out, flag, True)
    return out
