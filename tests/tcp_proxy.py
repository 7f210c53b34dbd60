"""A TCP link a test can cut: relay -> proxy -> service, on 127.0.0.1.

`TcpProxy(target_port)` listens on a port of its own and pipes each connection
to the target, both ways, on threads. `cut()` closes every connection and
refuses new ones (connections are accepted and closed at once), as a network
gone away would; `restore()` lets new ones through again. `close()` ends it.
`stall()` stops moving bytes either way on the connections, which stay open (a
network black hole; new connections are accepted and stalled too), until
`restore()`. `TcpProxy(port, upstream_bytes_s=N)` is a slow link: what the client sends goes
on at N bytes per second at most (the answers are not slowed), and the proxy's
receive buffer is small, so the bytes in flight wait in the client, as they
would on a slow network.

A socket is closed only by the last thread that uses it (cut and close only
shut connections down, which wakes their threads): closing a socket another
thread is in the middle of using would free its fd number for this process's
ZeroMQ to take, and that thread's next send would then write into ZeroMQ's.
"""

from __future__ import annotations

import socket
import threading
import time

SMALL_RCVBUF = 64 << 10


class TcpProxy:
    def __init__(self, target_port: int, upstream_bytes_s: int = 0) -> None:
        self.target = ("127.0.0.1", target_port)
        self.upstream_bytes_s = upstream_bytes_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        # Accepted sockets inherit it: what the proxy does not read waits in the client.
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._stalled = threading.Event()
        self._closed = False
        self.connections = 0  # accepted and piped, in all
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for s in self._open:
                _wake(s)
            self._open.clear()

    def stall(self) -> None:
        self._stalled.set()

    def restore(self) -> None:
        self._stalled.clear()
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        _wake(self._listener)  # its accept returns; the accepting thread closes it

    def _accept(self) -> None:
        try:
            self._accept_all()
        finally:
            self._listener.close()

    def _accept_all(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut or self._closed:
                    _wake(client)
                    client.close()  # no other thread has it
                    continue
                try:
                    server = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                self._open.update((client, server))
                self.connections += 1
            ends = [0]  # pipes of this connection that ended: the second closes both
            for a, b, rate in ((client, server, self.upstream_bytes_s), (server, client, 0)):
                args = (a, b, rate, ends)
                threading.Thread(target=self._pipe, args=args, daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: int, ends: list[int]) -> None:
        piece = min(1 << 16, max(1, rate // 20)) if rate else 1 << 16
        start, moved = time.monotonic(), 0
        try:
            while not self._wait_unstalled() and (data := src.recv(piece)):
                dst.sendall(data)
                moved += len(data)
                if rate:  # a paced link, not a synchronization
                    time.sleep(max(0.0, start + moved / rate - time.monotonic()))
        except OSError:
            pass
        with self._lock:
            for s in (src, dst):
                self._open.discard(s)
                _wake(s)  # the other direction's thread returns from its recv
            ends[0] += 1
            if ends[0] == 2:  # both threads are done with both sockets
                src.close()
                dst.close()

    def _wait_unstalled(self) -> bool:
        """Wait while stalled (a poll, as a black hole holds bytes); whether closed."""
        while self._stalled.is_set() and not self._closed:
            time.sleep(0.01)
        return self._closed


def _wake(s: socket.socket) -> None:
    """Shut the connection down (never close it): a thread in recv on it returns."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
