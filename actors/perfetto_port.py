"""The service's Perfetto-socket front end: traced's producer and consumer
sockets, served by the same ServiceCore as the ZeroMQ ports, so that apps built
with the Perfetto SDK (system backend) and Perfetto's consumers use tracebus.

    Perfetto client ──AF_UNIX SOCK_STREAM──► listening socket (producer | consumer)
      accept       SO_PEERCRED pid, uid; admitted and counted against the
                   connection limits as a ZeroMQ connection is (the shell's `admit`);
                   a pidfd of the connecting process (refused if it is gone): the
                   connection ends when its process exits, so a socket handed to
                   another process is not stamped with a dead (or reused) pid
      receive      recvmsg ≤ READ_BYTES + room for one SCM_RIGHTS fd, only once
                   the frames of the last read are all cut (the rest waits in the
                   socket: backpressure) → FrameDecoder keeps the raw bytes
                   → ≤ FRAMES_PER_TURN frames cut and parsed a turn
                   → translator.on_frame → Step: frames to the client first, then
                     its envelopes to ServiceCore as Peer(identity, pid, uid)
      send         core outputs for the identity (routed here by the shell)
                   → translator.on_core → frames, sendmsg MSG_DONTWAIT; what the
                     socket does not take waits in the connection's bounded queue
      end          EOF, ECONNRESET, its process exiting (after what it sent
                   before is read and handled: at most EXITED_READ_BYTES more), a
                   frame over 128 KiB,
                   Step.close or the translator's `closing` (after on_frame or
                   on_core; the replies queued before it are sent first), an fd
                   whose frame stays incomplete for the peer send timeout, a send
                   queue that overflows or takes nothing for that timeout (given
                   up on, counted as the shell counts it), an OSError on its
                   socket (it costs that connection, never the service)
                   → producer_gone / consumer_gone
      counted      in the service state's refusals: connections closed for a
                   protocol error (PERFETTO_CLOSED), requests the translators
                   rejected (PERFETTO_REJECTED), frames that did not parse
                   (PERFETTO_UNDECODABLE); logged a line per doubling

Identities: PERFETTO_PREFIX + the connection's number (u32 BE), unique among
live connections; the shell refuses ZeroMQ routing ids with the prefix.

File descriptors. A client attaches an fd (SCM_RIGHTS) to the first sendmsg
of the frame it belongs to; the kernel ends a read after the bytes that carry
an fd, so the fd belongs to the frame holding the read's last byte: the last
frame the read completes, or the frame still incomplete after it (the fd then
waits: one fd per frame, a new one closes the old; FrameDecoder keeps them with
the raw bytes). Memory per connection: at most one read and one incomplete
frame of raw bytes, about READ_BYTES + MAX_FRAME_BYTES. A read whose
control data was truncated (several fds) has its fds closed. An fd the frame's
Step does not take is closed. Our fds go the same way: a frame with smb_fd
carries the producer's SMB memfd on the sendmsg that starts it (and that
sendmsg carries no earlier frame's bytes). The fd is looked up then, not when
the frame is queued: nothing is dup'ed (no fd can run out there), and an SMB
gone meanwhile ends the connection instead of sending a reused number.

The service never waits on a client: every socket is non-blocking, reads and
accepts are bounded per loop turn (one client cannot starve the others), and
a full socket's frames are retried every RETRY_NS from a bounded queue.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.connections import PERFETTO, Connection, Connections
from actors.core.perfetto_wire import (
    PERFETTO_PREFIX,
    FrameDecoder,
    FrameError,
    OutFrame,
    Step,
)
from actors.core.service_core import Output, Peer, ServiceCore, ToConsumer, ToProducer
from actors.endpoints import PerfettoSockets, listen_unix
from actors.loop import Loop, Timer
from actors.peer_limits import RETRY_NS, count_give_up, count_refusals, worth_logging
from protos import perfetto_ipc_pb2 as pf

READ_BYTES = 64 * 1024  # one recvmsg per connection and turn
FRAMES_PER_TURN = 256  # frames handled per connection and turn (as the ZeroMQ ports)
# What is still read from a connection whose process exited (a socket buffer holds
# far less: wmem_max is 208 KiB by default); past it, a child that inherited the
# socket and writes on is cut off.
EXITED_READ_BYTES = 1 << 20
ACCEPTS_PER_TURN = 64
LISTEN_BACKLOG = 64
ACCEPT_PAUSE_NS = 100_000_000  # after a failed accept (out of fds): let the loop breathe
SEND_BYTES = 256 * 1024  # bytes offered to one sendmsg
MAX_QUEUED_BYTES = 32 << 20  # per connection: past it the client is given up on
MAX_QUEUED_FRAMES = 10_000
FD_ROOM = socket.CMSG_LEN(4)  # exactly one fd: CMSG_SPACE would leave room for two
SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
RECV_FLAGS = socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5; Python 3.13 names it
PRODUCER, CONSUMER = "p", "c"  # the sides, as the shell names its ports
# What the service state's refusals count of the Perfetto peers' misdeeds.
PERFETTO_CLOSED = "perfetto_connections_closed"  # by the service, and why logged
PERFETTO_REJECTED = "perfetto_requests_rejected"  # by a translator
PERFETTO_UNDECODABLE = "perfetto_frames_undecodable"


class Translator(Protocol):
    """A connection's translator (actors/core/perfetto_producer.py, perfetto_consumer.py).

    A translator that wants the connection ended says why in Step.close (for
    a frame) or in `closing` (checked after on_frame and after on_core)."""

    closing: str
    last_refusal: str  # the service's last reason to refuse it something ("": none), logged

    def on_frame(self, frame_untrusted: pf.IPCFrame, fd: int | None) -> Step: ...

    def on_core(self, msg: Any) -> list[OutFrame]: ...  # either side's message

    def rejections(self) -> Mapping[str, int]:
        """The requests it rejected so far, counted by why."""
        ...


@dataclass(frozen=True)
class Hooks:
    """What the port needs of the service around it."""

    producer: Callable[[bytes], Translator]  # a new producer connection's translator
    consumer: Callable[[bytes], Translator]
    send_all: Callable[[list[Output]], None]  # the shell's: routes, sends, arms timers
    # A new connection's entry in the shell's table, or None (refused, counted, logged).
    admit: Callable[[str, int], Connection | None]
    smb_fd: Callable[[bytes], int | None]  # the producer's SMB memfd (ours; not a dup)
    after_core: Callable[[], None]  # after each frame's core calls (unclaimed adopted fds closed)
    drained: Callable[[], None]  # a queue emptied: read-back may go on
    log: Callable[[str], None]


@dataclass(slots=True)
class Queued:
    data: memoryview
    carries_smb_fd: bool  # its first byte goes with the producer's SMB fd (looked up then)


@dataclass
class PerfettoConn:
    sock: socket.socket
    fd: int  # sock's number, the key of the shell's connection table
    side: str
    peer: Peer
    translator: Translator
    pidfd: int  # the peer process's: readable once it exited
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    fd_since: int = 0  # when the last fd came (monotonic ns): an fd may wait for its
    # frame for the peer send timeout (0: none waits)
    out: deque[Queued] = field(default_factory=deque)
    out_bytes: int = 0
    progress_at: int = 0  # when the queue was made or last had bytes taken
    spoke: bool = False
    draining: bool = False  # its peer is gone: what it sent is read, then it ends
    read_after_exit: int = 0  # bytes, while draining: bounded by EXITED_READ_BYTES
    ended: bool = False
    counted: dict[str, int] = field(default_factory=dict)  # its faults already counted


class PerfettoPort:
    def __init__(
        self,
        loop: Loop,
        core: ServiceCore,
        sockets: PerfettoSockets,
        hooks: Hooks,
        connections: Connections,
        *,
        peer_send_timeout_s: float,
        others_may_produce: bool = False,
    ) -> None:
        self._loop, self._core, self._hooks = loop, core, hooks
        self._connections = connections
        self._timeout_ns = int(peer_send_timeout_s * 1e9)
        self.paths = {PRODUCER: sockets.producer, CONSUMER: sockets.consumer}
        self.conns: dict[bytes, PerfettoConn] = {}
        self._next_number = 1
        self._retry: Timer | None = None
        self._continue: Timer | None = None
        self._pending_timer: Timer | None = None
        self.closed = 0  # connections the service closed, and why logged
        self.listeners: dict[str, socket.socket] = {}
        try:
            producer_mode = 0o666 if others_may_produce else 0o600
            for side, mode in ((PRODUCER, producer_mode), (CONSUMER, 0o600)):
                self.listeners[side] = listen_unix(
                    self.paths[side], mode, socket.SOCK_STREAM, LISTEN_BACKLOG
                )
        except BaseException:
            self.close()
            raise
        for side in self.listeners:
            self._watch_listener(side)

    # -- accepting ------------------------------------------------------------------------

    def _watch_listener(self, side: str) -> None:
        listener = self.listeners.get(side)
        if listener is not None and listener.fileno() >= 0:  # not closed meanwhile
            self._loop.add_fd(listener.fileno(), lambda: self._on_accept(side))

    def _on_accept(self, side: str) -> None:
        listener = self.listeners[side]
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: the backlog waits a moment
                self._pause_accepts(side, str(e))
                return
            try:
                sock.setblocking(False)
                entry = self._hooks.admit(side, sock.fileno())
            except OSError:
                entry = None
            if entry is None:
                sock.close()
                continue
            self._open(side, sock, entry)

    def _pause_accepts(self, side: str, why: str) -> None:
        self._hooks.log(f"Perfetto {side} socket: accept failed ({why}); pausing")
        self._loop.remove(self.listeners[side].fileno())
        self._loop.call_at(self._loop.now() + ACCEPT_PAUSE_NS, lambda: self._watch_listener(side))

    def _open(self, side: str, sock: socket.socket, entry: Connection) -> None:
        try:
            pidfd = peer_pidfd(sock, entry.pid)
        except OSError as e:  # it exited already (or no fd is left): nobody to serve
            self._connections.disconnected(entry.fd, PERFETTO)
            sock.close()
            self._count_close(f"pid {entry.pid}", f"no pidfd for its process ({e.strerror})")
            return
        identity = self._new_identity()
        make = self._hooks.producer if side == PRODUCER else self._hooks.consumer
        peer = Peer(identity, entry.pid, entry.uid)
        conn = PerfettoConn(sock, sock.fileno(), side, peer, make(identity), pidfd)
        self.conns[identity] = conn
        self._loop.add_fd(conn.fd, lambda: self._guarded(conn, self._on_readable))
        self._loop.add_fd(pidfd, lambda: self._guarded(conn, self._on_exit))

    def _new_identity(self) -> bytes:
        while True:  # a u32 wraps after 4 billion connections: skip the live ones
            number, self._next_number = self._next_number, (self._next_number + 1) % (1 << 32)
            identity = PERFETTO_PREFIX + number.to_bytes(4, "big")
            if identity not in self.conns:
                return identity

    def _guarded(self, conn: PerfettoConn, work: Callable[[PerfettoConn], None]) -> None:
        """Run one connection's work: an OSError in it ends that connection only."""
        try:
            work(conn)
        except OSError as e:
            self._end(conn, f"its connection failed: {e}")

    # -- receiving ------------------------------------------------------------------------

    def _on_readable(self, conn: PerfettoConn) -> None:
        if not conn.decoder.complete():  # else the rest waits in the socket: backpressure
            self._read(conn)
        self._handle_frames(conn)

    def _on_exit(self, conn: PerfettoConn) -> None:
        """Its process exited: what it sent before (say, a last CommitData with
        its flush ack) is still read and handled; the connection ends once the
        socket has nothing more (see _read)."""
        self._loop.remove(conn.pidfd)
        self._drain(conn)

    def _drain(self, conn: PerfettoConn) -> None:
        """The peer is gone (its process exited, or its socket refuses our bytes):
        nothing more is sent to it; what it sent is read and handled from the next
        turn on (not now: a frame may be half handled), then it ends."""
        conn.draining = True
        conn.out.clear()
        conn.out_bytes = 0
        self._arm_continue()

    def _read(self, conn: PerfettoConn) -> None:
        if conn.draining and conn.read_after_exit >= EXITED_READ_BYTES:
            self._end(conn, "")  # a child that inherited the socket writes on: not served
            return
        try:
            data, ancdata, flags, _addr = conn.sock.recvmsg(READ_BYTES, FD_ROOM, RECV_FLAGS)
        except (BlockingIOError, InterruptedError):
            if conn.draining:  # all it sent before it went is read
                self._end(conn, "")
            return
        except OSError:  # ECONNRESET: the client is gone
            self._end(conn, "")
            return
        fds = received_fds(ancdata)
        if flags & socket.MSG_CTRUNC or len(fds) > 1:  # more than one fd: none is taken
            close_fds(fds)
            fds = []
        if not data:
            close_fds(fds)
            self._end(conn, "")
            return
        if conn.draining:
            conn.read_after_exit += len(data)
        close_fds([conn.decoder.keep(data, fds[0] if fds else None)])
        if fds:
            conn.fd_since = time.monotonic_ns()
            self._arm_pending()

    def _arm_pending(self) -> None:
        if self._pending_timer is None:  # _on_pending re-arms from the earliest
            deadline = self._loop.now() + self._timeout_ns
            self._pending_timer = self._loop.call_at(deadline, self._on_pending)

    def _on_pending(self) -> None:
        """An fd whose frame never completes would pin an fd of ours for the life
        of its connection: past the peer send timeout the connection ends."""
        self._pending_timer = None
        end = time.monotonic_ns() - self._timeout_ns
        for conn in [c for c in self.conns.values() if c.fd_since and c.fd_since <= end]:
            if conn.decoder.fd_waiting():
                self._end(conn, "the frame its fd came with stayed incomplete")
            else:
                conn.fd_since = 0
        waiting = [c.fd_since for c in self.conns.values() if c.fd_since]
        if waiting:
            deadline = min(waiting) + self._timeout_ns
            self._pending_timer = self._loop.call_at(deadline, self._on_pending)

    def _handle_frames(self, conn: PerfettoConn) -> None:
        """Cut and handle the frames read, at most FRAMES_PER_TURN; the rest on the
        next turn."""
        for _ in range(FRAMES_PER_TURN):
            if conn.ended:
                return
            try:
                cut = conn.decoder.next_frame()
            except FrameError as e:
                self._end(conn, str(e))
                return
            if cut is None:
                break
            frame, fd = cut
            if frame is None:  # empty, or it did not parse (counted)
                close_fds([fd])
            else:
                self._handle(conn, frame, fd)
        self._count_faults(conn)
        self._flush(conn)  # the replies of the whole batch, gathered
        if not conn.ended and (conn.draining or conn.decoder.complete()):
            self._arm_continue()

    def _arm_continue(self) -> None:
        if self._continue is None:
            self._continue = self._loop.call_at(self._loop.now() + 1, self._on_continue)

    def _on_continue(self) -> None:
        self._continue = None
        for conn in [c for c in self.conns.values() if c.draining or c.decoder.complete()]:
            self._guarded(conn, self._on_readable)

    def _handle(self, conn: PerfettoConn, frame_untrusted: pf.IPCFrame, fd: int | None) -> None:
        if not conn.spoke:  # no longer cut as silent
            conn.spoke = True
            self._connections.of_message(conn.fd, conn.peer.pid, PERFETTO)
        step: Step | None = None
        file = file_identity(fd)
        try:
            try:
                step = conn.translator.on_frame(frame_untrusted, fd)
            except Exception:  # noqa: BLE001 - a translator bug must not end the service
                bug = traceback.format_exc()
            else:
                if fd is not None and not step.fd_taken:
                    os.close(fd)
                self._send_frames(conn, step.frames, flush=False)  # at the batch's end
                for envelope in step.to_core:
                    if conn.ended:
                        break
                    self._to_core(conn, envelope)
        finally:
            self._hooks.after_core()  # an fd adopted for the core and not claimed is closed
        self._count_faults(conn)
        if step is None:  # the fd: closed unless the translator (or an adoption) did
            if file is not None and file_identity(fd) == file:
                close_fds([fd])
            self._end(conn, f"its frame met a bug:\n{bug}")
        elif why := step.close or conn.translator.closing:
            self._close(conn, why)

    def _to_core(self, conn: PerfettoConn, envelope: Any) -> None:
        now = time.monotonic_ns()
        try:
            if conn.side == PRODUCER:
                outputs = self._core.handle_producer(conn.peer, envelope, now)
            else:
                outputs = self._core.handle_consumer(conn.peer, envelope, now)
        except Exception:  # noqa: BLE001 - as the shell: one message's bug, not the service's
            self._hooks.log(f"a message from pid {conn.peer.pid} failed (a bug):\n"
                            f"{traceback.format_exc()}")  # fmt: skip
            return
        self._hooks.send_all(outputs)

    # -- sending --------------------------------------------------------------------------

    def send(self, out: ToProducer | ToConsumer) -> None:
        """A core output for one of our connections (the shell routes them here by
        PERFETTO_PREFIX); dropped if the connection ended."""
        conn = self.conns.get(out.identity)
        if conn is None or conn.ended:
            return
        try:
            frames = conn.translator.on_core(out.msg)
        except Exception:  # noqa: BLE001 - a translator bug must not end the service
            self._end(conn, f"a service message met a bug:\n{traceback.format_exc()}")
            return
        self._guarded(conn, lambda c: self._send_frames(c, frames))
        self._count_faults(conn)
        if (why := conn.translator.closing) and not conn.ended:
            self._close(conn, why)

    def may_send(self, identity: bytes) -> bool:
        """Read-back pacing: a consumer gets its next slice once nothing of it waits."""
        conn = self.conns.get(identity)
        return conn is None or not conn.out

    def _send_frames(self, conn: PerfettoConn, frames: list[OutFrame], flush: bool = True) -> None:
        if not frames or conn.ended or conn.draining:
            return
        if not conn.out:
            conn.progress_at = time.monotonic_ns()
        for frame in frames:
            conn.out.append(Queued(memoryview(frame.data), frame.smb_fd))
            conn.out_bytes += len(frame.data)
        if len(conn.out) > MAX_QUEUED_FRAMES or conn.out_bytes > MAX_QUEUED_BYTES:
            self._give_up(conn, "its outgoing queue passed its bounds")
        elif flush:
            self._flush(conn)

    def _flush(self, conn: PerfettoConn) -> None:
        """Send what the socket takes; the rest is retried on a timer."""
        self._send_queued(conn)
        if conn.out and not conn.ended:
            self._arm_retry()

    def _send_queued(self, conn: PerfettoConn) -> None:
        """Send what the socket takes: gathered frames, an fd only on the sendmsg
        that starts its frame (which then carries no earlier frame's bytes)."""
        while conn.out and not conn.ended:
            buffers, smb = gather(conn.out)
            ancillary = []
            if smb:
                fd = self._hooks.smb_fd(conn.peer.identity)
                if fd is None:
                    self._end(conn, "its SMB is gone before it was handed over")
                    return
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            try:
                sent = conn.sock.sendmsg(buffers, ancillary, SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EPIPE, ECONNRESET: it is gone, what it sent may not be
                if not conn.draining:
                    self._drain(conn)
                return
            conn.progress_at = time.monotonic_ns()
            self._consume(conn, sent)

    def _consume(self, conn: PerfettoConn, sent: int) -> None:
        conn.out[0].carries_smb_fd = False  # the fd went with these bytes
        conn.out_bytes -= sent
        while sent:
            head = conn.out[0]
            if sent < len(head.data):
                head.data = head.data[sent:]
                return
            sent -= len(head.data)
            conn.out.popleft()

    def _arm_retry(self) -> None:
        if self._retry is None:
            self._retry = self._loop.call_at(self._loop.now() + RETRY_NS, self._on_retry)

    def _on_retry(self) -> None:
        self._retry = None
        now = time.monotonic_ns()
        drained = False
        for conn in [c for c in self.conns.values() if c.out]:
            self._guarded(conn, self._send_queued)
            if conn.ended:
                continue
            if not conn.out:
                drained = True
            elif now - conn.progress_at >= self._timeout_ns:
                self._give_up(conn, f"it took nothing for {self._timeout_ns / 1e9:g} s")
        if any(c.out for c in self.conns.values()):
            self._arm_retry()
        if drained:
            self._hooks.drained()

    # -- ending ---------------------------------------------------------------------------

    def _give_up(self, conn: PerfettoConn, why: str) -> None:
        """As the shell gives up on a ZeroMQ peer: counted, logged, ended."""
        what = "producer" if conn.side == PRODUCER else "consumer"
        peer = f"Perfetto {what} pid {conn.peer.pid}"
        self._hooks.log(count_give_up(self._core.counters, conn.side == PRODUCER, peer, why,
                                      len(conn.out)))  # fmt: skip
        self._end(conn, "")

    def _close(self, conn: PerfettoConn, why: str) -> None:
        """End a connection its translator closes: the replies already queued
        (say, the rejection that explains the close) are offered first."""
        self._guarded(conn, self._send_queued)
        self._end(conn, why)

    def _end(self, conn: PerfettoConn, why: str) -> None:
        """Close the connection and end its peer in the core; `why` (a protocol
        error) is counted and logged."""
        if conn.ended:
            return
        if why:
            self._count_close(f"pid {conn.peer.pid}", why)
        self._release(conn)
        now = time.monotonic_ns()
        if conn.side == PRODUCER:
            self._hooks.send_all(self._core.producer_gone(conn.peer.identity, now))
        else:
            self._hooks.send_all(self._core.consumer_gone(conn.peer.identity, now))

    def _count_close(self, peer: str, why: str) -> None:
        self.closed += 1
        if worth_logging(count_refusals(self._core.counters, PERFETTO_CLOSED)[1]):
            self._hooks.log(f"closed a Perfetto connection of {peer}: {why} "
                            f"({self.closed} so far)")  # fmt: skip

    def _count_faults(self, conn: PerfettoConn) -> None:
        """The translator's rejections and the frames that did not parse since the
        last look: into the service state's refusals, a log line per doubling."""
        reasons = conn.translator.rejections()
        faults = ((PERFETTO_REJECTED, sum(reasons.values())),
                  (PERFETTO_UNDECODABLE, conn.decoder.undecodable))  # fmt: skip
        for name, count in faults:
            seen = conn.counted.get(name, 0)
            if count <= seen:
                continue
            conn.counted[name] = count
            before, after = count_refusals(self._core.counters, name, count - seen)
            if worth_logging(after, before):
                last = conn.translator.last_refusal
                what = (f"rejected requests ({dict(reasons)}{'; last: ' + last if last else ''})"
                        if name == PERFETTO_REJECTED
                        else "dropped frames that did not parse")  # fmt: skip
                self._hooks.log(f"{what} of a Perfetto client of pid {conn.peer.pid} "
                                f"({after} so far in all)")  # fmt: skip

    def _release(self, conn: PerfettoConn) -> None:
        conn.ended = True
        self.conns.pop(conn.peer.identity, None)
        self._loop.remove(conn.fd)
        self._loop.remove(conn.pidfd)
        self._connections.disconnected(conn.fd, PERFETTO)  # before the number can be reused
        close_fds([conn.pidfd, *conn.decoder.take_fds()])
        conn.out.clear()
        conn.sock.close()

    def close(self) -> None:
        """Close every connection (after one last try to send what waits) and both
        listening sockets, and remove the socket files."""
        for conn in list(self.conns.values()):
            self._guarded(conn, self._send_queued)
            if not conn.ended:
                self._release(conn)
        for timer in (self._retry, self._continue, self._pending_timer):
            if timer is not None:
                timer.cancel()
        for side, listener in self.listeners.items():
            if listener.fileno() >= 0:
                self._loop.remove(listener.fileno())
                listener.close()
            self.paths[side].unlink(missing_ok=True)
        self.listeners.clear()


def gather(out: deque[Queued]) -> tuple[list[memoryview], bool]:
    """The buffers of one sendmsg from the head of `out`, and whether it carries
    the SMB fd: frames up to SEND_BYTES, stopping before a frame that carries one."""
    head = out[0]
    buffers, size = [head.data], len(head.data)
    for item in list(out)[1:64]:
        if item.carries_smb_fd or size >= SEND_BYTES:
            break
        buffers.append(item.data)
        size += len(item.data)
    return buffers, head.carries_smb_fd


def peer_pidfd(sock: socket.socket, pid: int) -> int:
    """A pidfd of the process that connected `sock`: the kernel's own where it
    has one (SO_PEERPIDFD, Linux >= 6.5), which names that process even if its
    pid was reused since; else pidfd_open of its SO_PEERCRED `pid`, which may
    name another process if the peer exited and its pid was reused between its
    connect() and now. Either way, once the pidfd is held the window left is its
    exit: the connection ends when the pidfd fires (after its data is handled).
    Raises OSError (ESRCH: it exited already)."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as e:
        if e.errno not in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
            raise  # ESRCH, EMFILE: as pidfd_open would fail
    return os.pidfd_open(pid)


def file_identity(fd: int | None) -> tuple[int, int] | None:
    """(device, inode) of an open fd: tells whether the number still holds it."""
    if fd is None:
        return None
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """Every fd the kernel put into this process for a recvmsg."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            whole = len(data) - len(data) % 4
            fds.extend(array.array("i", data[:whole]))
    return fds


def close_fds(fds: Iterable[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
