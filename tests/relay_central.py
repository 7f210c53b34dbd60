"""An in-test stand-in for the central service's relay endpoint: a ZeroMQ ROUTER
with CURVE (zmq.auth, only the listed relay keys) on tcp://127.0.0.1, driven from
the test's own thread (no background thread: every wait pumps it).

It answers what a relay needs to keep its link up (InitRelay with a machine id,
heartbeats, SyncClock PINGs) and the relay's own requests for its producers
(InitializeConnection, RegisterDataSource), records everything that arrives, and
lets the test send anything on any channel. `mute` stops the answers (a service
that stopped answering); `refused` counts the CURVE keys turned away.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from actors.relay_keys import generate, load_directory, load_pair
from protos import framing
from protos import tracebus_ipc_pb2 as ipc

MACHINE_ID = 7


@dataclass
class Keys:
    """A service pair, a relay pair listed in `clients`, and an unlisted pair."""

    dir: Path
    service_public: Path = field(init=False)
    service_secret: Path = field(init=False)
    relay_secret: Path = field(init=False)
    stranger_secret: Path = field(init=False)
    clients: Path = field(init=False)

    def __post_init__(self) -> None:
        self.service_public, self.service_secret = generate(self.dir, "service")
        relay_public, self.relay_secret = generate(self.dir, "relay")
        _, self.stranger_secret = generate(self.dir, "stranger")
        self.clients = self.dir / "clients"
        self.clients.mkdir()
        (self.clients / "relay.key").write_bytes(relay_public.read_bytes())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Arrival:
    relay: bytes
    channel: int
    msg: Any  # RelayToService on channel 0, else ProducerToService


class _Keyring:
    def __init__(self, accepted: set[bytes]) -> None:
        self.accepted = accepted
        self.refused = 0

    def callback(self, domain: str, key: bytes) -> bool:  # runs on the authenticator's thread
        if key in self.accepted:
            return True
        self.refused += 1
        return False


class FakeCentral:
    def __init__(self, keys: Keys | None) -> None:
        self.ctx = zmq.Context()
        self.auth: ThreadAuthenticator | None = None
        self.keyring = _Keyring(set())
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # ZeroMQ's pings, as the service's
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10_000)
        if keys is not None:
            self.keyring.accepted = load_directory(keys.clients)
            self.auth = ThreadAuthenticator(self.ctx)
            self.auth.start()
            self.auth.configure_curve_callback("*", self.keyring)
            public, secret = load_pair(keys.service_secret)
            self.sock.curve_server = True
            self.sock.curve_publickey = public
            self.sock.curve_secretkey = secret
        self.port = self._bind()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.arrivals: list[Arrival] = []
        self.mute = False
        self.forget = False  # answer everything with "unknown relay" (a restarted service)

    def _bind(self) -> int:
        for _ in range(20):  # another process may take the port between probe and bind
            port = free_port()
            try:
                self.sock.bind(f"tcp://127.0.0.1:{port}")
                return port
            except zmq.ZMQError as e:
                if e.errno != zmq.EADDRINUSE:
                    raise
        raise AssertionError("no free port")

    @property
    def refused(self) -> int:
        return self.keyring.refused

    # -- pumping ----------------------------------------------------------------------

    def pump(self, timeout_ms: int = 20) -> None:
        if not self.sock.poll(timeout_ms):
            return
        for _ in range(1000):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._receive(frames)

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            self.pump()

    def _receive(self, frames: list[bytes]) -> None:
        relay, rest = frames[0], frames[1:]
        channel, envelope = framing.split_channel(rest)
        if channel == 0:
            msg: Any = framing.decode_from_relay(envelope)
        else:
            msg = framing.decode_relayed_producer(envelope)
        self.arrivals.append(Arrival(relay, channel, msg))
        if self.forget:
            reply = ipc.ServiceToRelay(request_id=msg.request_id)
            reply.error.message = "unknown relay: send InitRelay"
            self.send(relay, 0, reply)
        elif not self.mute:
            self._answer(relay, channel, msg)

    def _answer(self, relay: bytes, channel: int, msg: Any) -> None:
        kind = msg.WhichOneof("msg")
        if channel == 0:
            reply = ipc.ServiceToRelay(request_id=msg.request_id)
            if kind == "init_relay":
                reply.init_relay.hello.protocol_version = ipc.PROTOCOL_VERSION
                reply.init_relay.machine_id = MACHINE_ID
            elif kind == "heartbeat":
                reply.heartbeat.SetInParent()
            elif kind == "sync_clock" and msg.sync_clock.phase == ipc.SyncClock.PING:
                reply.sync_clock.round = msg.sync_clock.round
            else:
                return
            self.send(relay, 0, reply)
            return
        answer = ipc.ServiceToProducer(request_id=msg.request_id)
        if kind == "initialize_connection":
            answer.initialize_connection.hello.protocol_version = ipc.PROTOCOL_VERSION
            answer.initialize_connection.producer_id = 100 + channel
        elif kind == "register_data_source":
            answer.register_data_source.error = ""
        else:
            return
        self.send(relay, channel, answer)

    def send(self, relay: bytes, channel: int, msg: Any) -> None:
        self.sock.send_multipart([relay, *framing.encode_channel(channel, msg)])

    # -- what arrived ----------------------------------------------------------------------

    def of_kind(self, kind: str, channel: int | None = None) -> list[Arrival]:
        return [
            a
            for a in self.arrivals
            if a.msg.WhichOneof("msg") == kind and (channel is None or a.channel == channel)
        ]

    def close(self) -> None:
        self.sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()
