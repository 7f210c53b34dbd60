"""What the service core says: envelopes addressed to a peer, in order.

The shell gives the core each message with the sender's trusted identity
(`Peer`: the ROUTER identity, and the process id and uid the kernel reports),
and sends what `Outbox.drain()` returns after the call, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protos import tracebus_ipc_pb2 as ipc


@dataclass(frozen=True)
class Peer:
    identity: bytes  # the ROUTER identity of the connection
    pid: int  # process id, from the kernel
    uid: int
    machine_id: int = 0  # a relay's machine (pid and uid are that machine's); 0 this one


@dataclass(frozen=True)
class ToProducer:
    identity: bytes
    msg: ipc.ServiceToProducer


@dataclass(frozen=True)
class ToConsumer:
    identity: bytes
    msg: ipc.ServiceToConsumer


@dataclass(frozen=True)
class AppendToFile:
    """Append `data` to the trace file the shell opened as `file_id` (file_sink.py)."""

    file_id: int
    data: bytes


@dataclass(frozen=True)
class CloseFile:
    file_id: int


@dataclass(frozen=True)
class ToRelay:
    """A message on a relay's link: channel 0 its control (ServiceToRelay), channel
    n its producer n (ServiceToProducer). The shell sends [relay, channel, envelope]."""

    relay: bytes  # the relay connection's routing id
    channel: int
    msg: ipc.ServiceToRelay | ipc.ServiceToProducer


Output = ToProducer | ToConsumer | AppendToFile | CloseFile | ToRelay


def version_error(version: int) -> str:
    return f"protocol version {version} is not supported (service speaks {ipc.PROTOCOL_VERSION})"


class Outbox:
    """Envelopes queued during one call into the core."""

    def __init__(self) -> None:
        self._out: list[Output] = []
        # Producers behind a relay: their internal identity -> (relay, channel).
        self.relayed: dict[bytes, tuple[bytes, int]] = {}

    def drain(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    def to_producer(
        self, identity: bytes, request_id: int = 0, error: str = "", **fields: Any
    ) -> None:
        """`fields`: the oneof field to set and its message, e.g. flush=FlushRequest(...)."""
        msg = ipc.ServiceToProducer(request_id=request_id)
        if error:
            msg.error.message = error
        for name, value in fields.items():
            getattr(msg, name).CopyFrom(value)
        route = self.relayed.get(identity)
        self._out.append(ToProducer(identity, msg) if route is None else ToRelay(*route, msg))

    def to_relay(self, relay: bytes, request_id: int = 0, error: str = "", **fields: Any) -> None:
        """On the relay's control channel (0); `fields` as to_producer's."""
        msg = ipc.ServiceToRelay(request_id=request_id)
        if error:
            msg.error.message = error
        for name, value in fields.items():
            getattr(msg, name).CopyFrom(value)
        self._out.append(ToRelay(relay, 0, msg))

    def to_consumer(self, identity: bytes, request_id: int, **fields: Any) -> None:
        msg = ipc.ServiceToConsumer(request_id=request_id)
        for name, value in fields.items():
            getattr(msg, name).CopyFrom(value)
        self._out.append(ToConsumer(identity, msg))

    def append_to_file(self, file_id: int, data: bytes) -> None:
        if data:
            self._out.append(AppendToFile(file_id, data))

    def close_file(self, file_id: int) -> None:
        self._out.append(CloseFile(file_id))

    def consumer_error(self, identity: bytes, request_id: int, error: str) -> None:
        msg = ipc.ServiceToConsumer(request_id=request_id)
        msg.error.message = error
        self._out.append(ToConsumer(identity, msg))

    def ack(self, identity: bytes, request_id: int, error: str = "") -> None:
        self.to_consumer(identity, request_id, ack=ipc.Ack(error=error))
