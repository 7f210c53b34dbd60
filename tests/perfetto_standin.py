"""A stand-in translator for the socket layer's tests (actors/perfetto_port.py),
and a service that speaks it on its Perfetto sockets:
`python -m tests.perfetto_standin [actors.service flags]`.

The stand-in binds any service name and serves four methods, so a test drives
framing, fds, queues and give-ups without the real translators' protocol:

    1 Echo      reply with the args
    2 TakeFd    the frame's fd: reply with its size (fstat), the fd taken and closed;
                no fd: a rejection
    3 Flood     args = u32 LE count, u32 LE size: `count` streamed replies of `size`
                bytes each (has_more), all at once
    4 Close     Step.close: the port ends the connection
    5 Core      one ipc heartbeat envelope to the core (a producer's needs no
                initialization to be answered with an error: the core's reply is
                routed back, and on_core answers it as an Echo of b"core")
    6 Smb       a reply of b"smb" that carries the producer's SMB fd (OutFrame.smb_fd)
    7 CloseLater  a reply, and `closing` set (the port's other way to end it)
    8 Raise     a translator bug: the frame's fd, if any, handed to `adopt` first
                (as the consumer translator adopts a write_into_file fd), then raise
    9 Reject    a rejection, counted in `refused` (as the translators count theirs)

Nothing here raises on peer bytes, as the real translators must not.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from actors.core.perfetto_wire import (
    FrameDecoder,
    OutFrame,
    Step,
    bind_reply,
    encode,
    method_reply,
)
from protos import perfetto_ipc_pb2 as pf
from protos import tracebus_ipc_pb2 as ipc

ECHO, TAKE_FD, FLOOD, CLOSE, CORE, SMB, CLOSE_LATER, RAISE, REJECT = range(1, 10)
METHODS = {
    "Echo": ECHO,
    "TakeFd": TAKE_FD,
    "Flood": FLOOD,
    "Close": CLOSE,
    "Core": CORE,
    "Smb": SMB,
    "CloseLater": CLOSE_LATER,
    "Raise": RAISE,
    "Reject": REJECT,
}
FLOOD_ARGS = struct.Struct("<II")


class StandInConn:
    def __init__(
        self, identity: bytes, side: str = "p", adopt: Callable[[int], object] = os.close
    ) -> None:
        self.identity = identity
        self.adopt = adopt
        self.side = side
        self.core_request: int | None = None  # the request a Core call waits on
        self.closing = ""  # set by CloseLater: after the reply, through the port's check
        self.last_refusal = ""
        self.refused: dict[str, int] = {}  # counted by the port as the translators' are
        self.frames_seen = 0

    def rejections(self) -> Mapping[str, int]:
        return self.refused

    def on_frame(self, frame_untrusted: pf.IPCFrame, fd: int | None) -> Step:
        self.frames_seen += 1
        rid = frame_untrusted.request_id
        kind = frame_untrusted.WhichOneof("msg")
        if kind == "msg_bind_service":
            return Step(frames=[OutFrame(bind_reply(rid, 1, METHODS))])
        if kind != "msg_invoke_method":
            return Step()
        invoke = frame_untrusted.msg_invoke_method
        if invoke.method_id == ECHO:
            return Step(frames=[OutFrame(method_reply(rid, invoke.args_proto))])
        if invoke.method_id == TAKE_FD:
            return self._take_fd(rid, fd)
        if invoke.method_id == FLOOD and len(invoke.args_proto) == FLOOD_ARGS.size:
            count, size = FLOOD_ARGS.unpack(invoke.args_proto)
            size = min(size, 120_000)
            frames = [OutFrame(method_reply(rid, b"x" * size, has_more=True))] * min(count, 5000)
            return Step(frames=frames)
        if invoke.method_id == CLOSE:
            return Step(close="the client asked")
        if invoke.method_id == CORE:
            self.core_request = rid
            envelope: Any = ipc.ProducerToService(request_id=1) if self.side == "p" else None
            if envelope is None:
                envelope = ipc.ConsumerToService(request_id=1)
            envelope.heartbeat.SetInParent()
            return Step(to_core=[envelope])
        if invoke.method_id == SMB:
            return Step(frames=[OutFrame(method_reply(rid, b"smb"), smb_fd=True)])
        if invoke.method_id == CLOSE_LATER:
            self.closing = "the client asked, later"
            return Step(frames=[OutFrame(method_reply(rid, b"bye"))])
        if invoke.method_id == RAISE:
            if fd is not None:
                self.adopt(fd)
            raise RuntimeError("a bug of the stand-in")
        if invoke.method_id == REJECT:
            self.refused["asked to"] = self.refused.get("asked to", 0) + 1
            self.last_refusal = "the stand-in was asked to"
            return Step(frames=[OutFrame(method_reply(rid, None))])
        return Step(frames=[OutFrame(method_reply(rid, None))])

    def _take_fd(self, rid: int, fd: int | None) -> Step:
        if fd is None:
            return Step(frames=[OutFrame(method_reply(rid, None))])
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        return Step(frames=[OutFrame(method_reply(rid, str(size).encode()))], fd_taken=True)

    def on_core(self, msg: Any) -> list[OutFrame]:
        if self.core_request is None:
            return []
        rid, self.core_request = self.core_request, None
        return [OutFrame(method_reply(rid, b"core"))]


# -- a raw client, as hostile as a test wants ----------------------------------------------


class RawClient:
    """A blocking AF_UNIX client speaking frames (or anything) to a Perfetto socket."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(os.fspath(path))
        self.decoder = FrameDecoder()
        self.frames: deque[tuple[pf.IPCFrame, int | None]] = deque()
        self.request_id = 0

    def send_raw(self, data: bytes, fds: list[int] | None = None) -> None:
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        sent = self.sock.sendmsg([data], ancillary)
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def send(self, frame: pf.IPCFrame, fds: list[int] | None = None) -> int:
        self.send_raw(encode(frame), fds)
        return frame.request_id

    def bind(self, name: str = "ConsumerPort") -> pf.IPCFrame:
        frame = pf.IPCFrame(request_id=self.next_id())
        frame.msg_bind_service.service_name = name
        self.send(frame)
        return self.recv()[0]

    def invoke(self, method: int, args: bytes = b"", fds: list[int] | None = None) -> int:
        return self.send(invoke_frame(self.next_id(), method, args), fds)

    def next_id(self) -> int:
        self.request_id += 1
        return self.request_id

    def recv(self) -> tuple[pf.IPCFrame, int | None]:
        """The next frame and the fd that came with it (socket.timeout: none in time;
        EOFError: the service closed the connection)."""
        while not self.frames:
            data, fds, flags, _ = socket.recv_fds(self.sock, 256 * 1024, 1)
            if not data:
                raise EOFError("the service closed the connection")
            frames = self.decoder.feed(data)
            attached: list[int | None] = [None] * len(frames)
            if fds and frames and not self.decoder.buffered:
                attached[-1] = fds[0]
            self.frames.extend(zip(frames, attached, strict=True))
        return self.frames.popleft()

    def closed_by_service(self) -> bool:
        """Whether the service closed the connection (what it sent before is skipped)."""
        try:
            while True:
                if not self.sock.recv(1 << 20):
                    return True
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def invoke_frame(request_id: int, method: int, args: bytes = b"", service: int = 1) -> pf.IPCFrame:
    frame = pf.IPCFrame(request_id=request_id)
    call = frame.msg_invoke_method
    call.service_id, call.method_id, call.args_proto = service, method, args
    return frame


def stand_in_translators(_files: object) -> tuple[Any, Any]:
    return (lambda i: StandInConn(i, "p")), (lambda i: StandInConn(i, "c"))


def main() -> int:
    from actors import perfetto_front, service

    perfetto_front.perfetto_translators = stand_in_translators  # type: ignore[assignment]
    return service.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
