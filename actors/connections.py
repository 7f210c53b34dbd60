"""The connections of the service's two ports, as the kernel sees them.

ZeroMQ hides connections behind routing ids; a hostile peer can open hundreds
of them, or present a routing id of its choice. This table gives the service
what the kernel knows instead:

    ROUTER monitor   EVENT_ACCEPTED(fd)      -> accepted(): SO_PEERCRED pid/uid on a dup
                     EVENT_DISCONNECTED(fd)  -> disconnected(): the entry, and the
                                                routing ids bound to it, end
    each message     ZMQ_SRCFD + Peer-Address -> of_message(): its connection (or
                                                accepted(pid=) if its event was lost)

- An fd number is reused at once once libzmq closes it, so an entry also holds
  the socket's inode from accept time, and a connection is only acted on (cut)
  through a dup whose inode still matches. Monitor events arrive in order, so
  the table follows the connections; a message is matched to its entry only if
  the pid of the message (the kernel's, per message) is the entry's. A monitor
  drops events when its queue is full (a flood of connections): a message whose
  connection has no entry creates it then, if the fd's peer is the message's pid.
- Limits: live connections per process (`max_connections_per_process`) and per
  uid (`max_connections_per_uid`), counted over both ports. A connection over
  one is refused: its first message within REFUSE_GRACE_NS is answered with an
  error naming the limit (the shell does), then it is cut with
  shutdown(SHUT_RDWR) on a dup of its fd (libzmq notices and closes it). At
  most MAX_AWAITING_CUT wait for their cut; beyond, one is cut at once.
- Refused connections do not count towards the limits; an entry whose fd no
  longer holds its socket (a close libzmq did not report) is dropped when a
  limit is checked, so a stale entry never refuses a live peer.

Only this module touches the connections' fds; it never reads from or writes
to them.
"""

from __future__ import annotations

import os
import socket
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from actors.core.limits import Limits

REFUSE_GRACE_NS = 500_000_000  # time for a refused peer's first message to get its error
ANSWERED_GRACE_NS = 100_000_000  # time for that error to leave before the cut
MAX_AWAITING_CUT = 32
CLOSED_KEPT_NS = 60_000_000_000  # how long a routing id stays its last process's
CLOSED_REMEMBERED = 8192
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass
class Connection:
    fd: int  # the connection's fd in this process (libzmq's; reused once it closes)
    inode: int  # the socket's inode at accept: tells this socket from a later one on fd
    pid: int  # SO_PEERCRED at accept: the peer process, as the kernel says
    uid: int
    side: str  # "p" or "c": the port
    refused: str = ""  # the limit this connection is over ("" = admitted)
    cut_at: int = 0  # when a refused connection is cut (monotonic ns)
    identities: set[bytes] = field(default_factory=set)  # routing ids first seen on it


class Connections:
    def __init__(self) -> None:
        self.by_fd: dict[int, Connection] = {}
        self.refused: dict[int, Connection] = {}  # those of by_fd awaiting their cut
        self.per_pid: Counter[int] = Counter()  # admitted connections only
        self.per_uid: Counter[int] = Counter()
        self.cuts = 0  # connections cut for a limit

    def __len__(self) -> int:
        return len(self.by_fd)

    # -- monitor events ------------------------------------------------------------------

    def accepted(
        self, side: str, fd: int, limits: Limits, now: int, pid: int = 0
    ) -> Connection | None:
        """A new connection on `fd` (of process `pid`, if given); None if it is gone
        or already known. One over a limit comes back with `refused` set (the
        caller counts it)."""
        creds = _credentials(fd)
        if creds is None or (pid and creds[1] != pid):
            return None
        inode, peer_pid, uid = creds
        known = self.by_fd.get(fd)
        if known is not None and known.inode == inode:
            return None  # met through a message before its event
        self.disconnected(fd)  # an entry on this fd is from a socket closed unreported
        conn = Connection(fd, inode, peer_pid, uid, side)
        self.by_fd[fd] = conn
        conn.refused = self._over_limit(peer_pid, uid, limits)
        if conn.refused:
            conn.cut_at = now + REFUSE_GRACE_NS
            if len(self.refused) >= MAX_AWAITING_CUT:
                conn.cut_at = now
            self.refused[fd] = conn
        else:
            self.per_pid[peer_pid] += 1
            self.per_uid[uid] += 1
        return conn

    def disconnected(self, fd: int) -> Connection | None:
        conn = self.by_fd.pop(fd, None)
        if conn is not None and self.refused.pop(fd, None) is None:
            self._uncount(conn)
        return conn

    # -- messages ---------------------------------------------------------------------------

    def of_message(self, fd: int, pid: int) -> Connection | None:
        """The connection a message came from: its source fd's entry, if the pid
        matches (otherwise the message outlived its connection and the fd is reused,
        or the accept event was lost: see accepted(pid=))."""
        conn = self.by_fd.get(fd)
        return conn if conn is not None and conn.pid == pid and pid > 0 else None

    def answered(self, conn: Connection, now: int) -> None:
        """The refused connection got its error: cut it once the error had time to leave."""
        conn.cut_at = max(conn.cut_at, now + ANSWERED_GRACE_NS)

    # -- cutting ----------------------------------------------------------------------------

    def next_cut(self) -> int | None:
        return min((c.cut_at for c in self.refused.values()), default=None)

    def cut_due(self, now: int) -> int:
        """Cut every refused connection whose time came; how many."""
        due = [c for c in self.refused.values() if c.cut_at <= now]
        for conn in due:
            del self.by_fd[conn.fd]  # its disconnect event finds nothing
            del self.refused[conn.fd]
            if _shutdown(conn):
                self.cuts += 1
        return len(due)

    # -- limits -------------------------------------------------------------------------------

    def _over_limit(self, pid: int, uid: int, limits: Limits) -> str:
        if any(count >= limit for _name, count, limit in self._checks(pid, uid, limits)):
            self._drop_stale()  # recount without entries of sockets closed unreported
        for name, count, limit in self._checks(pid, uid, limits):
            if count >= limit:
                return name
        return ""

    def _checks(self, pid: int, uid: int, limits: Limits) -> list[tuple[str, int, int]]:
        return [
            ("max_connections_per_process", self.per_pid[pid], limits.max_connections_per_process),
            ("max_connections_per_uid", self.per_uid[uid], limits.max_connections_per_uid),
        ]

    def _drop_stale(self) -> None:
        for conn in list(self.by_fd.values()):
            if not _same_socket(conn) and self.by_fd.get(conn.fd) is conn:
                self.disconnected(conn.fd)

    def _uncount(self, conn: Connection) -> None:
        for counter, key in ((self.per_pid, conn.pid), (self.per_uid, conn.uid)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]


class ClosedIdentities:
    """Routing ids whose connection ended, with the pid that held each, for
    CLOSED_KEPT_NS (at most CLOSED_REMEMBERED, oldest forgotten): another process
    presenting one of them is refused, so it cannot pass for the peer that left."""

    def __init__(self, keep_ns: int = CLOSED_KEPT_NS, most: int = CLOSED_REMEMBERED) -> None:
        self.keep_ns = keep_ns
        self.most = most
        self._pids: OrderedDict[tuple[str, bytes], tuple[int, int]] = OrderedDict()

    def closed(self, key: tuple[str, bytes], pid: int, now: int) -> None:
        self._pids.pop(key, None)
        self._pids[key] = (pid, now + self.keep_ns)
        while len(self._pids) > self.most:
            self._pids.popitem(last=False)

    def held_by_other(self, key: tuple[str, bytes], pid: int, now: int) -> bool:
        """Whether `key` recently belonged to another process than `pid`."""
        held = self._pids.get(key)
        if held is None:
            return False
        if held[1] <= now:
            del self._pids[key]
            return False
        return held[0] != pid


def limit_value(limits: Limits, name: str) -> int:
    value: int = getattr(limits, name)
    return value


# -- the kernel's view of an fd --------------------------------------------------------------


def _credentials(fd: int) -> tuple[int, int, int] | None:
    """(inode, pid, uid) of the UNIX socket on `fd`, or None if fd holds none."""
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        inode = os.fstat(dup).st_ino
        with socket.socket(fileno=dup) as sock:
            dup = -1  # the socket object owns it now
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    finally:
        if dup >= 0:
            os.close(dup)
    pid, uid, _gid = _UCRED.unpack(raw)
    return inode, pid, uid


def _same_socket(conn: Connection) -> bool:
    try:
        return os.fstat(conn.fd).st_ino == conn.inode
    except OSError:
        return False


def _shutdown(conn: Connection) -> bool:
    """Cut the connection (both directions) if `fd` still holds its socket. A dup
    is checked then shut down: the check and the cut are on the same socket."""
    try:
        dup = os.dup(conn.fd)
    except OSError:
        return False
    try:
        if os.fstat(dup).st_ino != conn.inode:
            return False
        with socket.socket(fileno=dup) as sock:
            dup = -1
            sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        if dup >= 0:
            os.close(dup)
