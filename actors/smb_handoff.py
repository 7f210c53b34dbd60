"""The SMB handed over by fd passing: the service gives each producer its sealed
memfd over a UNIX socket (SCM_RIGHTS), and only to the process it made it for.

    producer (pid P, uid U)                       service
    ── ZeroMQ producer port ──────────────────────────────────────────────────────
    initialize_connection  ───────────────────►  kernel says: pid P, uid U
                           ◄───────────────────  setup_tracing(size, page size,
                                                   shm_socket, shm_token)
    ── the handoff socket (shm_socket, SOCK_SEQPACKET) ───────────────────────────
    connect                ───────────────────►  SO_PEERCRED: pid, uid
    token                  ───────────────────►  the token's offer is for (P, U)?
                           ◄───────────────────  "ok" + the memfd (SCM_RIGHTS)
                                                 or "error: why", no fd
    map it: size and seals checked (shm/region.py MemfdRegion.attach_fd)

Contract:

- A token is 16 random bytes, issued per SMB and bound to the pid and uid the
  kernel gave for the ZeroMQ connection that asked; it is good once (consumed by
  the first claim, right or wrong) and for OFFER_TTL_S; the SMB's close
  withdraws it. A claim from another pid or uid gets no fd: the token may have
  leaked, so it is spent, and the refusal is logged and counted.
- No path to an SMB exists anywhere: the memfd has no name and the service is
  non-dumpable (actors/service.py), so /proc/<service pid>/fd/<n> stays closed
  to other processes of its user (root's CAP_SYS_PTRACE aside).
- The service side never blocks its loop: the listening socket and every
  accepted connection are non-blocking and polled by the loop. A token that
  came with the connection is answered at once; otherwise the connection waits
  for it PENDING_TIMEOUT_S at most (a peer that connects and says nothing is
  closed), and at most MAX_PENDING wait in all, MAX_PENDING_PER_UID per uid and
  MAX_PENDING_PER_PROCESS per process: one past a bound is closed at once, so a
  flooding peer keeps the slots of nobody else. The reply fits a fresh socket's
  send buffer, so it is sent with MSG_DONTWAIT and a failure only closes that
  connection. Out of fds, accepting pauses ACCEPT_PAUSE_S instead of spinning.
- The producer side (receive_smb) blocks its caller for CLIENT_TIMEOUT_S at
  most, retrying a connection closed unanswered, and returns a mapped region or
  raises RegionError saying why.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from actors.endpoints import listen_unix
from actors.loop import Loop, Timer
from shm.region import MemfdRegion, RegionError

TOKEN_BYTES = 16
OFFER_TTL_S = 10.0  # from setup_tracing to the claim: a loaded machine's margin
MAX_PENDING = 64  # accepted connections waiting for their token, in all
MAX_PENDING_PER_UID = 16
MAX_PENDING_PER_PROCESS = 2  # a producer needs one at a time
ACCEPT_PAUSE_S = 0.1  # after a failed accept (out of fds): let the loop breathe
PENDING_TIMEOUT_S = 2.0
LISTEN_BACKLOG = 16
ACCEPTS_PER_TURN = 64  # bounded, so the loop's other sockets get their turn
CLIENT_TIMEOUT_S = 5.0
CONNECT_RETRY_S = 0.005
MAX_REPLY = 256
REPLY_OK = b"ok"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
NS_PER_S = 1_000_000_000


@dataclass(slots=True)
class Offer:
    fd: int  # the memfd, owned by the SMB (not by the offer)
    pid: int  # from the kernel, for the ZeroMQ connection the SMB is for
    uid: int
    deadline_ns: int


@dataclass(slots=True)
class Pending:
    conn: socket.socket
    pid: int  # SO_PEERCRED at accept
    uid: int
    deadline_ns: int


@dataclass
class HandoffCounters:
    handed: int = 0  # fds sent
    refused: int = 0  # claims answered with an error (wrong process, unknown token)
    dropped: int = 0  # connections closed unanswered: over the bound, silent, send failed


class SmbHandoff:
    """The service side: a listening SOCK_SEQPACKET socket at `path`, polled by `loop`."""

    def __init__(
        self, loop: Loop, path: Path, log: Callable[[str], None], *, others_may_connect: bool
    ) -> None:
        self.loop = loop
        self.path = path
        self.log = log
        self.offers: dict[bytes, Offer] = {}
        self.pending: dict[int, Pending] = {}  # by the connection's fd
        self.counters = HandoffCounters()
        self._timer: Timer | None = None
        self.listener = listen_unix(
            path, 0o666 if others_may_connect else 0o600, socket.SOCK_SEQPACKET, LISTEN_BACKLOG
        )
        loop.add_fd(self.listener.fileno(), self._on_accept)

    # -- offers (the SMB's lifetime) ---------------------------------------------------

    def offer(self, fd: int, pid: int, uid: int) -> bytes:
        """A one-time token for which the process (pid, uid) gets `fd`."""
        # What secrets.token_bytes uses; importing secrets would load hashlib here.
        token = os.urandom(TOKEN_BYTES)
        deadline = self.loop.now() + int(OFFER_TTL_S * NS_PER_S)
        self.offers[token] = Offer(fd, pid, uid, deadline)
        self._arm(deadline)
        return token

    def withdraw(self, token: bytes) -> None:
        """The SMB is going away: its fd must not be sent any more."""
        self.offers.pop(token, None)

    def _claim(self, token_untrusted: bytes, pid: int, uid: int) -> tuple[bytes, int | None]:
        """The reply and the fd to send for a token presented by (pid, uid)."""
        offer = self.offers.pop(token_untrusted, None)
        if offer is None or offer.deadline_ns <= self.loop.now():
            return b"error: unknown, used or expired SMB token", None
        if offer.pid <= 0 or (offer.pid, offer.uid) != (pid, uid):
            self.log(
                f"refused an SMB to pid {pid} uid {uid}: its token was issued to pid "
                f"{offer.pid} uid {offer.uid} (the token is spent)"
            )
            return b"error: this SMB token was issued to another process", None
        return REPLY_OK, offer.fd

    # -- connections ---------------------------------------------------------------------

    def _on_accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                conn, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: the backlog waits a moment
                self._pause_accepting(e)
                return
            pid, uid, _gid = _UCRED.unpack(
                conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            conn.setblocking(False)
            p = Pending(conn, pid, uid, self.loop.now() + int(PENDING_TIMEOUT_S * NS_PER_S))
            token_untrusted = _read_token(conn)
            if token_untrusted is not None:  # it came with the connection: no slot taken
                self._answer(p, token_untrusted)
                continue
            if not self._room_for(p):
                self.counters.dropped += 1
                conn.close()
                continue
            fd = conn.fileno()
            self.pending[fd] = p
            self.loop.add_fd(fd, lambda fd=fd: self._on_token(fd))  # type: ignore[misc]
            self._arm(p.deadline_ns)

    def _room_for(self, p: Pending) -> bool:
        """Whether another connection may wait for its token: bounded in all, per
        uid and per process, so that one peer cannot take every slot."""
        if len(self.pending) >= MAX_PENDING:
            return False
        same_uid = [q for q in self.pending.values() if q.uid == p.uid]
        same_pid = [q for q in same_uid if q.pid == p.pid]
        return len(same_uid) < MAX_PENDING_PER_UID and len(same_pid) < MAX_PENDING_PER_PROCESS

    def _pause_accepting(self, error: OSError) -> None:
        self.log(f"SMB handoff: accept failed ({error}); pausing {ACCEPT_PAUSE_S:g} s")
        self.loop.remove(self.listener.fileno())
        self.loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if self.listener.fileno() >= 0:  # not closed meanwhile
            self.loop.add_fd(self.listener.fileno(), self._on_accept)

    def _on_token(self, fd: int) -> None:
        p = self.pending.get(fd)
        if p is None:
            return
        token_untrusted = _read_token(p.conn)
        if token_untrusted is not None:
            self._forget(fd)
            self._answer(p, token_untrusted)

    def _answer(self, p: Pending, token_untrusted: bytes) -> None:
        """Reply to a token presented by p's process, then close the connection."""
        try:
            if len(token_untrusted) != TOKEN_BYTES:
                reply, smb_fd = b"error: an SMB token is 16 bytes", None
            else:
                reply, smb_fd = self._claim(token_untrusted, p.pid, p.uid)
            self._reply(p.conn, reply, smb_fd)
        finally:
            p.conn.close()

    def _reply(self, conn: socket.socket, reply: bytes, fd: int | None) -> None:
        ancillary = []
        if fd is not None:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        try:
            conn.sendmsg([reply], ancillary, socket.MSG_DONTWAIT)
        except OSError:
            self.counters.dropped += 1
            return
        if fd is None:
            self.counters.refused += 1
        else:
            self.counters.handed += 1

    def _forget(self, fd: int) -> None:
        self.pending.pop(fd, None)
        self.loop.remove(fd)

    # -- deadlines -------------------------------------------------------------------------

    def _arm(self, deadline_ns: int) -> None:
        if self._timer is None or self._timer.deadline > deadline_ns:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline_ns, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.loop.now()
        for token in [t for t, o in self.offers.items() if o.deadline_ns <= now]:
            del self.offers[token]
        for fd in [fd for fd, p in self.pending.items() if p.deadline_ns <= now]:
            conn = self.pending[fd].conn
            self._forget(fd)
            conn.close()
            self.counters.dropped += 1
        deadlines = [o.deadline_ns for o in self.offers.values()]
        deadlines += [p.deadline_ns for p in self.pending.values()]
        if deadlines:
            self._arm(min(deadlines))

    def close(self) -> None:
        for fd in list(self.pending):
            conn = self.pending[fd].conn
            self._forget(fd)
            conn.close()
        self.offers.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.loop.remove(self.listener.fileno())
        self.listener.close()
        self.path.unlink(missing_ok=True)


def _read_token(conn: socket.socket) -> bytes | None:
    """What the peer sent (b"" if it closed or failed), or None if nothing yet."""
    try:
        return conn.recv(TOKEN_BYTES + 1)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def handoff_path(producer_socket: Path) -> Path:
    """Where the handoff socket of a producer port at `producer_socket` lives:
    beside it (same directory, so the same people reach both)."""
    return producer_socket.with_name(producer_socket.name + ".smb")


# -- the producer side -------------------------------------------------------------------


def receive_smb(
    socket_path: str, token: bytes, size: int, timeout_s: float = CLIENT_TIMEOUT_S
) -> MemfdRegion:
    """Claim the SMB offered under `token` and map it (its size and seals checked).
    A connection the service closed unanswered (its bounds were full: someone is
    flooding it) is retried until the timeout."""
    if not socket_path or not token:
        raise RegionError("the service sent no SMB handoff socket or token")
    deadline = time.monotonic() + timeout_s
    error: OSError | None = None
    while True:
        try:
            reply, fds, flags = _ask(socket_path, token, deadline)
        except (BlockingIOError, ConnectionResetError, BrokenPipeError) as e:
            reply, fds, flags, error = b"", [], 0, e
        except OSError as e:
            raise RegionError(f"cannot receive the SMB from {socket_path}: {e}") from e
        if reply or time.monotonic() >= deadline:
            break
        time.sleep(CONNECT_RETRY_S)
    if reply != REPLY_OK or len(fds) != 1 or flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        why = reply.decode("utf-8", "replace") or f"no answer ({error or 'closed'})"
        raise RegionError(f"the service did not hand over the SMB: {why}")
    return MemfdRegion.attach_fd(fds[0], expected_size=size)


def _ask(socket_path: str, token: bytes, deadline: float) -> tuple[bytes, list[int], int]:
    """One attempt: connect (waiting while the backlog is full), send the token,
    receive the reply and at most one fd."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)
        while True:
            try:
                sock.connect(socket_path)
                break
            except BlockingIOError:  # EAGAIN: the listen backlog is full
                if time.monotonic() >= deadline:
                    raise
                time.sleep(CONNECT_RETRY_S)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(token)
        reply, fds, flags, _addr = socket.recv_fds(sock, MAX_REPLY, 1)
    return reply, fds, flags
