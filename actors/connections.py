"""The connections of the service's two ports, as the kernel sees them.

ZeroMQ hides connections behind routing ids; a hostile peer can open hundreds
of them, or present a routing id of its choice. This table gives the service
what the kernel knows instead:

    ROUTER monitor   EVENT_ACCEPTED(fd)      -> accepted(): SO_PEERCRED pid/uid on a dup
                     EVENT_DISCONNECTED(fd)  -> disconnected(): the entry, and the
                                                routing ids bound to it, end
    ZAP request      "localhost:UID:GID:PID"  -> admit(): "" or the limit it is over
    each message     ZMQ_SRCFD + Peer-Address -> of_message(): its connection (or
                                                accepted(pid=) if its event was lost)

- The Perfetto sockets' connections (actors/perfetto_port.py) are entries too,
  tagged front=PERFETTO: the limits count both front ends; a ZeroMQ monitor
  event or message never acts on a Perfetto entry (nor on another port's).
- Limits: live connections per process (`max_connections_per_process`) and per
  uid (`max_connections_per_uid`), over both ports, the asking one included.
  libzmq asks the service's ZAP handler during each connection's handshake
  (after its accept event): a connection over a limit fails its handshake with
  status 400 and the limit named, and the peer's ZeroMQ does not reconnect it
  (an authentication failure), so a flood costs one handshake per connection.
- An fd number is reused at once once libzmq closes it, so an entry also holds
  the socket's inode from accept time, and a connection is only acted on (cut)
  through a dup whose inode still matches. Monitor events arrive in order, so
  the table follows the connections; a message is matched to its entry only if
  the pid of the message (the kernel's, per message) is the entry's. A monitor
  drops events when its queue is full: a message whose connection has no entry
  creates it then, if the fd's peer is the message's pid. An entry whose fd no
  longer holds its socket (a close libzmq did not report) is dropped when a
  limit is checked (at most once per SWEEP_NS), so a stale entry does not
  refuse a live peer for long.
- An entry dropped without its DISCONNECTED (a new connection of either front
  end accepted on its fd number before the event was read, or found stale) has
  ended all the same: if routing ids are bound to it, it is kept in `displaced`
  until the shell takes it (take_displaced()) and ends them as for a DISCONNECTED.
- A connection that delivers no message within SILENT_NS is cut with
  shutdown(SHUT_RDWR) on a dup of its fd (libzmq notices and closes it), and
  counted under SILENT: libzmq parks a second connection presenting a routing
  id in use without reading it, and an idle one holds an fd of the service.

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

SILENT_NS = 10_000_000_000  # a connection that delivered no message by then is cut
SILENT = "silent_connection"  # its count in the service state's refusals
SWEEP_NS = 1_000_000_000  # stale entries are looked for at most this often
CLOSED_KEPT_NS = 60_000_000_000  # how long a routing id stays its last process's
CLOSED_REMEMBERED = 8192
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
ZMQ, PERFETTO = "zmq", "perfetto"  # the front ends whose connections the table holds


@dataclass
class Connection:
    fd: int  # the connection's fd in this process (libzmq's; reused once it closes)
    inode: int  # the socket's inode at accept: tells this socket from a later one on fd
    pid: int  # SO_PEERCRED at accept: the peer process, as the kernel says
    uid: int
    side: str  # "p" or "c": the port
    front: str = ZMQ  # ZMQ or PERFETTO: whose fd it is (its events are only that front's)
    cut_at: int = 0  # when it is cut if it is still silent (monotonic ns)
    spoke: bool = False  # a message of it was handled
    identities: set[bytes] = field(default_factory=set)  # routing ids first seen on it


class Connections:
    def __init__(self) -> None:
        self.by_fd: dict[int, Connection] = {}
        self.silent: dict[int, Connection] = {}  # no message yet
        self.per_pid: Counter[int] = Counter()
        self.per_uid: Counter[int] = Counter()
        # Connections denied at their handshake, per process, until one of its
        # connections drops: not counted while they close (a burst is not refused
        # for the connections refused before it).
        self.denied: Counter[int] = Counter()
        # Entries with routing ids, dropped without their DISCONNECTED (see the module
        # docstring): the shell ends their routing ids.
        self.displaced: list[Connection] = []
        self._sweep_at = 0  # when stale entries may be looked for again

    def __len__(self) -> int:
        return len(self.by_fd)

    # -- monitor events ------------------------------------------------------------------

    def accepted(
        self, side: str, fd: int, now: int, pid: int = 0, front: str = ZMQ
    ) -> Connection | None:
        """A new connection of `front` on `fd` (of process `pid`, if given: met through
        its message); None if it is gone or already known."""
        creds = _credentials(fd)
        if creds is None or (pid and creds[1] != pid):
            return None
        inode, peer_pid, uid = creds
        known = self.by_fd.get(fd)
        if known is not None and known.inode == inode:
            return None  # met through a message before its event
        self._drop_unreported(fd)  # an entry on this fd is of a socket closed unreported
        conn = Connection(fd, inode, peer_pid, uid, side, front, spoke=pid > 0)
        self.by_fd[fd] = conn
        self.per_pid[peer_pid] += 1
        self.per_uid[uid] += 1
        if not conn.spoke:
            conn.cut_at = now + SILENT_NS
            self.silent[fd] = conn
        return conn

    def disconnected(
        self, fd: int, front: str | None = None, side: str | None = None
    ) -> Connection | None:
        """The entry on `fd` ends; when `front` (and `side`) are given, only if it is
        theirs: libzmq reports a close after the fact, and by then the number may
        hold another port's or a Perfetto socket's connection."""
        conn = self.by_fd.get(fd)
        if conn is None or front not in (None, conn.front) or side not in (None, conn.side):
            return None
        del self.by_fd[fd]
        self.silent.pop(fd, None)
        counters = [(self.per_pid, conn.pid), (self.per_uid, conn.uid)]
        if self.denied[conn.pid] > 0:
            counters.append((self.denied, conn.pid))
        for counter, key in counters:
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        return conn

    def take_displaced(self) -> list[Connection]:
        """The entries with routing ids dropped without their DISCONNECTED since the
        last call: their connections ended (their routing ids end too)."""
        displaced, self.displaced = self.displaced, []
        return displaced

    def _drop_unreported(self, fd: int) -> None:
        conn = self.disconnected(fd)
        if conn is not None and conn.identities:
            self.displaced.append(conn)

    # -- admission (ZAP) and messages ------------------------------------------------------

    def admit(self, pid: int, uid: int, limits: Limits, now: int) -> str:
        """ "" if a connection of this process may complete its handshake, else the
        name of the limit it is over (its own accept is counted already)."""
        checks = self._checks(pid, uid, limits)
        if any(count > limit for _name, count, limit in checks) and now >= self._sweep_at:
            # Recount without entries of sockets closed unreported; not on every
            # connection of a flood (a stat per entry).
            self._sweep_at = now + SWEEP_NS
            self._drop_stale()
            checks = self._checks(pid, uid, limits)
        refused = next((name for name, count, limit in checks if count > limit), "")
        if refused:
            self.denied[pid] += 1
        return refused

    def of_message(self, fd: int, pid: int, front: str = ZMQ) -> Connection | None:
        """The connection a message came from: its source fd's entry, if the pid
        and front end match (otherwise the message outlived its connection and the
        fd is reused, or the accept event was lost: see accepted(pid=))."""
        conn = self.by_fd.get(fd)
        if conn is None or conn.pid != pid or pid <= 0 or conn.front != front:
            return None
        if not conn.spoke:
            conn.spoke = True
            self.silent.pop(fd, None)
        return conn

    # -- cutting silent connections -----------------------------------------------------------

    def next_cut(self) -> int | None:
        return min((c.cut_at for c in self.silent.values()), default=None)

    def cut_due(self, now: int) -> int:
        """Cut every silent connection whose time came; how many were cut."""
        due = [c for c in self.silent.values() if c.cut_at <= now]
        for conn in due:
            self.disconnected(conn.fd)  # its disconnect event finds nothing
        return sum(map(_shutdown, due))

    # -- limits -------------------------------------------------------------------------------

    def _checks(self, pid: int, uid: int, limits: Limits) -> list[tuple[str, int, int]]:
        denied = self.denied[pid]  # of this uid too
        return [
            ("max_connections_per_process", self.per_pid[pid] - denied,
             limits.max_connections_per_process),
            ("max_connections_per_uid", self.per_uid[uid] - denied, limits.max_connections_per_uid),
        ]  # fmt: skip

    def _drop_stale(self) -> None:
        for conn in list(self.by_fd.values()):
            if not _same_socket(conn) and self.by_fd.get(conn.fd) is conn:
                self._drop_unreported(conn.fd)


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
