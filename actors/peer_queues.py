"""Per-peer outgoing queues of one ROUTER socket: sends that never block.

    send(identity, frames, now)
      no queue for the peer ── NOBLOCK send ── ok ──────────────> SENT
                                      └─ pipe full (EAGAIN) ──> QUEUED (a queue is made)
      a queue exists ───────── appended behind it (order kept) ─> QUEUED, or
                                                                  OVERFLOW past its bounds
    retry(now)   sends what each queue can take; a queue emptied is removed;
                 a queue that took nothing for `timeout_ns` is STALLED
    either       a peer ZeroMQ no longer knows (EHOSTUNREACH) is GONE

The common case, a peer whose pipe has room, costs one dict lookup more than a
bare send. The owner decides what a STALLED, OVERFLOW or GONE peer means (the
service gives up on it) and calls drop(); this module only keeps the bytes and
the times.

Why retry() runs on a timer and not on POLLOUT: with ROUTER_MANDATORY a ROUTER
reports POLLOUT while *any* of its pipes has room (measured with libzmq 4.3.5),
so one stalled peer beside a healthy one would make a POLLOUT poll spin.
"""

from __future__ import annotations

import enum
import errno
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import zmq

MAX_QUEUED_MESSAGES = 10_000
MAX_QUEUED_BYTES = 256 << 20


class Sender(Protocol):
    """What a queue needs of its socket (a zmq ROUTER with ROUTER_MANDATORY)."""

    def send_multipart(self, msg_parts: Sequence[bytes], flags: int = ...) -> object: ...


class Outcome(enum.Enum):
    SENT = "sent"
    QUEUED = "queued"
    OVERFLOW = "overflow"  # the queue would pass its bounds; nothing was queued
    STALLED = "stalled"  # nothing of the queue was taken for the timeout
    GONE = "gone"  # ZeroMQ has no connection with this identity


@dataclass
class PeerQueue:
    messages: deque[Sequence[bytes]] = field(default_factory=deque)
    bytes: int = 0  # the payload bytes of `messages`
    progress_at: int = 0  # ns: when the queue was made or last had a message taken


class PeerQueues:
    def __init__(
        self,
        sock: Sender,
        timeout_ns: int,
        max_messages: int = MAX_QUEUED_MESSAGES,
        max_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self._sock = sock
        self.timeout_ns = timeout_ns
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._queues: dict[bytes, PeerQueue] = {}

    def __bool__(self) -> bool:
        """True while some peer has messages waiting."""
        return bool(self._queues)

    def backlog(self, identity: bytes) -> tuple[int, int]:
        """(messages, bytes) waiting for `identity`."""
        queue = self._queues.get(identity)
        return (len(queue.messages), queue.bytes) if queue is not None else (0, 0)

    def send(self, identity: bytes, frames: Sequence[bytes], now: int) -> Outcome:
        """Send `frames` (the identity frame first) now, or queue them behind the
        messages already waiting for the peer."""
        queue = self._queues.get(identity)
        if queue is None:
            outcome = self._try_send(frames)
            if outcome is not Outcome.QUEUED:
                return outcome
            queue = self._queues[identity] = PeerQueue(progress_at=now)
        size = sum(len(f) for f in frames)
        if len(queue.messages) >= self.max_messages or queue.bytes + size > self.max_bytes:
            return Outcome.OVERFLOW
        queue.messages.append(frames)
        queue.bytes += size
        return Outcome.QUEUED

    def retry(self, now: int) -> list[tuple[bytes, Outcome]]:
        """Send what each queue can take; the peers now STALLED or GONE (their
        queues are kept until drop())."""
        trouble: list[tuple[bytes, Outcome]] = []
        for identity, queue in list(self._queues.items()):
            outcome = self._flush(queue, now)
            if outcome is Outcome.SENT:
                del self._queues[identity]
            elif outcome is Outcome.GONE:
                trouble.append((identity, outcome))
            elif now - queue.progress_at >= self.timeout_ns:
                trouble.append((identity, Outcome.STALLED))
        return trouble

    def drop(self, identity: bytes) -> int:
        """Forget the peer's queue; how many messages it held."""
        queue = self._queues.pop(identity, None)
        return len(queue.messages) if queue is not None else 0

    def _flush(self, queue: PeerQueue, now: int) -> Outcome:
        """SENT once the queue is empty, QUEUED while the pipe is full, or GONE."""
        messages = queue.messages
        while messages:
            outcome = self._try_send(messages[0])
            if outcome is not Outcome.SENT:
                return outcome
            queue.bytes -= sum(len(f) for f in messages.popleft())
            queue.progress_at = now
        return Outcome.SENT

    def _try_send(self, frames: Sequence[bytes]) -> Outcome:
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return Outcome.QUEUED
        except zmq.ZMQError as e:
            if e.errno == errno.EHOSTUNREACH:
                return Outcome.GONE
            raise
        return Outcome.SENT
