"""actors/peer_queues.py against a fake ROUTER whose per-peer pipes have a
capacity the test sets, and against a real ROUTER/DEALER pair over ipc://."""

from __future__ import annotations

import errno
import tempfile
import time
from collections.abc import Sequence

import zmq

from actors.peer_queues import Outcome, PeerQueues

MS = 1_000_000


class FakeRouter:
    """Pipes by identity; a pipe takes `room[identity]` more messages (unlimited
    if unset); an identity in `gone` is unknown (EHOSTUNREACH)."""

    def __init__(self) -> None:
        self.room: dict[bytes, int] = {}
        self.gone: set[bytes] = set()
        self.sent: list[tuple[bytes, ...]] = []

    def send_multipart(self, msg_parts: Sequence[bytes], flags: int = 0) -> None:
        assert flags & zmq.NOBLOCK, "a send that may block"
        identity = msg_parts[0]
        if identity in self.gone:
            raise zmq.ZMQError(errno.EHOSTUNREACH)
        if self.room.get(identity, 1) <= 0:
            raise zmq.Again()
        if identity in self.room:
            self.room[identity] -= 1
        self.sent.append(tuple(msg_parts))


def msg(identity: bytes, n: int, size: int = 10) -> list[bytes]:
    return [identity, bytes([n]) * size]


def test_a_peer_with_room_is_sent_at_once_and_gets_no_queue():
    sock = FakeRouter()
    queues = PeerQueues(sock, timeout_ns=1000 * MS)
    assert queues.send(b"a", msg(b"a", 1), now=0) is Outcome.SENT
    assert sock.sent == [tuple(msg(b"a", 1))]
    assert not queues
    assert queues.backlog(b"a") == (0, 0)


def test_a_full_pipe_queues_in_order_and_retry_delivers_in_order():
    sock = FakeRouter()
    sock.room[b"a"] = 1
    queues = PeerQueues(sock, timeout_ns=1000 * MS)
    outcomes = [queues.send(b"a", msg(b"a", i), now=0) for i in range(1, 5)]
    assert outcomes == [Outcome.SENT] + [Outcome.QUEUED] * 3
    assert queues.backlog(b"a") == (3, 3 * 11)
    # Another peer is not held up by a's queue.
    assert queues.send(b"b", msg(b"b", 9), now=0) is Outcome.SENT
    sock.room[b"a"] = 2
    assert queues.retry(now=5 * MS) == []
    assert queues.backlog(b"a") == (1, 11)
    sock.room[b"a"] = 10
    assert queues.retry(now=6 * MS) == []
    assert not queues
    a_sent = [m[1][0] for m in sock.sent if m[0] == b"a"]
    assert a_sent == [1, 2, 3, 4]


def test_a_queue_that_takes_nothing_for_the_timeout_is_stalled():
    sock = FakeRouter()
    sock.room[b"a"] = 0
    queues = PeerQueues(sock, timeout_ns=100 * MS)
    assert queues.send(b"a", msg(b"a", 1), now=0) is Outcome.QUEUED
    assert queues.retry(now=99 * MS) == []
    # Progress restarts the clock: a slow reader is not a stalled one.
    sock.room[b"a"] = 1
    assert queues.send(b"a", msg(b"a", 2), now=50 * MS) is Outcome.QUEUED
    assert queues.retry(now=99 * MS) == []
    assert queues.backlog(b"a") == (1, 11)
    assert queues.retry(now=198 * MS) == []
    assert queues.retry(now=199 * MS) == [(b"a", Outcome.STALLED)]
    assert queues.drop(b"a") == 1
    assert not queues
    assert queues.drop(b"a") == 0


def test_bounds_in_messages_and_bytes_overflow_without_queueing():
    sock = FakeRouter()
    sock.room[b"a"] = 0
    queues = PeerQueues(sock, timeout_ns=100 * MS, max_messages=2, max_bytes=1000)
    assert queues.send(b"a", msg(b"a", 1), now=0) is Outcome.QUEUED
    assert queues.send(b"a", msg(b"a", 2), now=0) is Outcome.QUEUED
    assert queues.send(b"a", msg(b"a", 3), now=0) is Outcome.OVERFLOW
    assert queues.backlog(b"a") == (2, 22)
    sock.room[b"b"] = 0
    assert queues.send(b"b", msg(b"b", 1, size=900), now=0) is Outcome.QUEUED
    assert queues.send(b"b", msg(b"b", 2, size=100), now=0) is Outcome.OVERFLOW
    assert queues.backlog(b"b") == (1, 901)


def test_an_unknown_peer_is_gone_on_send_and_on_retry():
    sock = FakeRouter()
    queues = PeerQueues(sock, timeout_ns=100 * MS)
    sock.gone.add(b"x")
    assert queues.send(b"x", msg(b"x", 1), now=0) is Outcome.GONE
    assert not queues
    sock.room[b"a"] = 0
    queues.send(b"a", msg(b"a", 1), now=0)
    sock.gone.add(b"a")
    assert queues.retry(now=1) == [(b"a", Outcome.GONE)]


def test_a_real_router_queues_for_a_dealer_that_does_not_read():
    """The real socket: sends to a peer that never reads never block, the
    backlog stays in the queue, and once the peer reads it all arrives in order."""
    with tempfile.TemporaryDirectory(prefix="tbq-", dir="/tmp") as d:
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.SNDHWM, 10)
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.RCVHWM, 10)
        try:
            router.bind(f"ipc://{d}/s")
            dealer.connect(f"ipc://{d}/s")
            dealer.send(b"hello")
            assert router.poll(5000)
            identity = router.recv_multipart()[0]
            queues = PeerQueues(router, timeout_ns=10_000 * MS)
            n = 2000
            payload = b"x" * 1000
            for i in range(n):
                queues.send(identity, [identity, i.to_bytes(4, "big"), payload], now=0)
            assert queues, "2000 KB to a peer that reads nothing must queue"
            received: list[int] = []
            deadline = time.monotonic() + 30
            while len(received) < n and time.monotonic() < deadline:
                queues.retry(now=0)  # as the service's retry timer does
                if dealer.poll(10):
                    received.append(int.from_bytes(dealer.recv_multipart()[0], "big"))
            assert received == list(range(n))
            assert queues.retry(now=0) == []
            assert not queues
        finally:
            router.close(linger=0)
            dealer.close(linger=0)
            ctx.term()
