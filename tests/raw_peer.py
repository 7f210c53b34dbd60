"""A raw peer the test drives line by line: `python -m tests.raw_peer ENDPOINT
[--as-user NAME]`, one command per stdin line, one answer per command on
stdout. It speaks the protocol with a DEALER of its own, a routing id of its choice
included, as a hostile process would.

    connect HEX|-        a new DEALER (the old one closed) with this routing id (- = ZeroMQ's)
    init NAME [nowait]   initialize_connection   -> "init ok ID" | "error TEXT" | "timeout"
    register DS          register_data_source    -> "register ok" | "register error TEXT" | ...
    unregister DS        unregister_data_source  -> "sent" (the service answers nothing)
    close                close the DEALER        -> "closed"
    big MIB              one frame of MIB MiB    -> "sent"
    handshake            one more connection: how its ZeroMQ handshake ended
                                                 -> "handshake ok" | "handshake refused CODE"
    flood N SECONDS      N more connections, each sending initialize_connection, then
                         their first replies for up to SECONDS (until each has one)
                                                 -> "flood ok A errors B unanswered C"
    hello                a consumer's hello (ENDPOINT a consumer port)
                                                 -> "hello ok" | "error TEXT" | "timeout"
    quit

With --as-user, the process drops to that user (after its imports, as root) first.
"""

from __future__ import annotations

import os
import pwd
import sys
import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from protos import framing
from protos import tracebus_ipc_pb2 as ipc

REPLY_TIMEOUT_MS = 10_000


class RawPeer:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.request_id = 0
        self.flooded: list[zmq.Socket] = []

    def connect(self, routing_id: str) -> str:
        self.close()
        self.sock = self._dealer(bytes.fromhex(routing_id) if routing_id != "-" else b"")
        return "connected"

    def _dealer(self, routing_id: bytes) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if routing_id:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.connect(self.endpoint)
        return sock

    def close(self) -> str:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        return "closed"

    def send(self, sock: zmq.Socket | None = None, **msg: object) -> None:
        self.request_id += 1
        envelope = ipc.ProducerToService(request_id=self.request_id, **msg)  # type: ignore[arg-type]
        (sock or self.sock).send_multipart(framing.encode(envelope))  # type: ignore[union-attr]

    def reply(self, kind: str) -> str:
        assert self.sock is not None
        while self.sock.poll(REPLY_TIMEOUT_MS):
            msg = framing.decode_to_producer(self.sock.recv_multipart())
            which = msg.WhichOneof("msg")
            if which == "error":
                return f"error {msg.error.message}"
            if which == kind:
                return self._describe(msg)
        return "timeout"

    @staticmethod
    def _describe(msg: ipc.ServiceToProducer) -> str:
        if msg.HasField("initialize_connection"):
            reply = msg.initialize_connection
            if reply.hello.error:
                return f"error {reply.hello.error}"
            return f"init ok {reply.producer_id}"
        error = msg.register_data_source.error
        return f"register error {error}" if error else "register ok"

    def init(self, name: str, nowait: bool = False) -> str:
        self.send(initialize_connection=init_request(name))
        return "sent" if nowait else self.reply("initialize_connection")

    def register(self, name: str) -> str:
        self.send(register_data_source=dict(descriptor=dict(name=name)))
        return self.reply("register_data_source")

    def hello(self) -> str:
        assert self.sock is not None
        self.request_id += 1
        hello = ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION)
        request = ipc.ConsumerToService(request_id=self.request_id, hello=hello)
        self.sock.send_multipart(framing.encode(request))
        if not self.sock.poll(REPLY_TIMEOUT_MS):
            return "timeout"
        reply = framing.decode_to_consumer(self.sock.recv_multipart())
        if reply.WhichOneof("msg") == "error":
            return f"error {reply.error.message}"
        return f"hello ok{' ' + reply.hello.error if reply.hello.error else ''}"

    def unregister(self, name: str) -> str:
        self.send(unregister_data_source=dict(name=name))
        return "sent"

    def big(self, mib: int) -> str:
        assert self.sock is not None
        self.sock.send(bytes(mib << 20))
        return "sent"

    def handshake(self) -> str:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        self.flooded.append(sock)
        events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        monitor = sock.get_monitor_socket(events)
        sock.connect(self.endpoint)
        try:
            if not monitor.poll(REPLY_TIMEOUT_MS):
                return "timeout"
            event = parse_monitor_message(monitor.recv_multipart())
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
        if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return "handshake ok"
        return f"handshake refused {event['value']}"

    def flood(self, count: int, seconds: float) -> str:
        socks = [self._dealer(b"") for _ in range(count)]
        self.flooded += socks
        for sock in socks:
            self.send(sock, initialize_connection=init_request("flood"))
        answered: dict[zmq.Socket, str] = {}
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + seconds
        while len(answered) < count and time.monotonic() < deadline:
            for sock, _ in poller.poll(100):
                msg = framing.decode_to_producer(sock.recv_multipart())
                if sock not in answered:
                    answered[sock] = msg.error.message if msg.HasField("error") else "ok"
        ok = sum(1 for text in answered.values() if text == "ok")
        return f"flood ok {ok} errors {len(answered) - ok} unanswered {count - len(answered)}"


def init_request(name: str) -> dict[str, object]:
    hello = dict(protocol_version=ipc.PROTOCOL_VERSION, client_name="raw-peer")
    return dict(hello=hello, producer_name=name)


def drop_to(user: str) -> None:
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def main() -> None:
    endpoint = sys.argv[1]
    if len(sys.argv) > 3 and sys.argv[2] == "--as-user":
        drop_to(sys.argv[3])
    peer = RawPeer(endpoint)
    commands: dict[str, Callable[[list[str]], str]] = {
        "connect": lambda args: peer.connect(args[0]),
        "init": lambda args: peer.init(args[0], nowait=args[1:] == ["nowait"]),
        "register": lambda args: peer.register(args[0]),
        "unregister": lambda args: peer.unregister(args[0]),
        "close": lambda args: peer.close(),
        "big": lambda args: peer.big(int(args[0])),
        "handshake": lambda args: peer.handshake(),
        "hello": lambda args: peer.hello(),
        "flood": lambda args: peer.flood(int(args[0]), float(args[1])),
    }
    for line in sys.stdin:
        command, *args = line.split()
        if command == "quit":
            break
        print(commands[command](args), flush=True)
    peer.close()
    for sock in peer.flooded:
        sock.close(linger=0)
    peer.ctx.term()


if __name__ == "__main__":
    main()
