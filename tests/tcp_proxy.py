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
                _shut(s)
            self._open.clear()

    def stall(self) -> None:
        self._stalled.set()

    def restore(self) -> None:
        self._stalled.clear()
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self.cut()
        self._closed = True
        _shut(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut or self._closed:
                    _shut(client)
                    continue
                try:
                    server = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _shut(client)
                    continue
                self._open.update((client, server))
                self.connections += 1
            for a, b, rate in ((client, server, self.upstream_bytes_s), (server, client, 0)):
                threading.Thread(target=self._pipe, args=(a, b, rate), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: int) -> None:
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
                if s in self._open:
                    self._open.discard(s)
                _shut(s)

    def _wait_unstalled(self) -> bool:
        """Wait while stalled (a poll, as a black hole holds bytes); whether closed."""
        while self._stalled.is_set() and not self._closed:
            time.sleep(0.01)
        return self._closed


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
