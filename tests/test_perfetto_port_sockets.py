"""The Perfetto sockets' shell (actors/perfetto_port.py) in one process: a real
PerfettoPort on real sockets in a temporary directory, its loop run by the
test, a stand-in translator (tests/perfetto_standin.py) and a fake core. What
is checked here needs control over when the service reads: which frame an fd
belongs to when frames arrive glued in one read, the per-turn bound, queues
and give-ups on a client that reads nothing."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.connections import Connections
from actors.core.perfetto_wire import MAX_FRAME_BYTES, PERFETTO_PREFIX, encode
from actors.core.producers import ServiceCounters
from actors.endpoints import PerfettoSockets
from actors.loop import Loop
from actors.perfetto_port import FRAMES_PER_TURN, Hooks, PerfettoPort
from protos import perfetto_ipc_pb2 as pf
from tests.perfetto_standin import (
    ECHO,
    FLOOD,
    FLOOD_ARGS,
    SMB,
    TAKE_FD,
    RawClient,
    StandInConn,
    invoke_frame,
)

TIMEOUT_S = 10.0


class FakeCore:
    def __init__(self) -> None:
        self.counters = ServiceCounters()
        self.gone: list[tuple[str, bytes]] = []

    def handle_producer(self, peer, msg, now):
        return []

    def handle_consumer(self, peer, msg, now):
        return []

    def producer_gone(self, identity, now):
        self.gone.append(("p", identity))
        return []

    def consumer_gone(self, identity, now):
        self.gone.append(("c", identity))
        return []


class Harness:
    def __init__(self, directory: Path, timeout_s: float = 5.0) -> None:
        self.loop = Loop()
        self.core = FakeCore()
        self.connections = Connections()
        self.translators: list[StandInConn] = []
        self.smb = os.memfd_create("test-smb")
        os.ftruncate(self.smb, 12345)
        self.log: list[str] = []
        hooks = Hooks(
            producer=self._translator,
            consumer=self._translator,
            send_all=lambda outputs: None,
            admit=lambda side, fd: self.connections.accepted(side, fd, self.loop.now()),
            smb_fd=lambda identity: self.smb,
            after_core=lambda: None,
            drained=lambda: None,
            log=self.log.append,
        )
        self.sockets = PerfettoSockets(directory / "p.sock", directory / "c.sock")
        self.port = PerfettoPort(
            self.loop, self.core, self.sockets, hooks, self.connections,  # type: ignore[arg-type]
            peer_send_timeout_s=timeout_s,
        )  # fmt: skip

    def _translator(self, identity: bytes) -> StandInConn:
        conn = StandInConn(identity)
        self.translators.append(conn)
        return conn

    def client(self) -> RawClient:
        client = RawClient(self.sockets.producer)
        self.run_until(lambda: len(self.port.conns) >= 1, "the accept")
        return client

    def run_until(self, condition, what: str) -> None:
        if not self.loop.run(until=condition, timeout=TIMEOUT_S):
            raise AssertionError(f"timed out waiting for {what}")

    def frames(self, client: RawClient, count: int) -> list[tuple[pf.IPCFrame, int | None]]:
        """Run the loop until the client received `count` frames (with their fds)."""
        client.sock.setblocking(False)
        got: list[tuple[pf.IPCFrame, int | None]] = []

        def arrived() -> bool:
            try:
                while len(got) < count:
                    got.append(client.recv())
            except BlockingIOError:
                return False
            return True

        self.run_until(arrived, f"{count} frames")
        client.sock.setblocking(True)
        return got

    def reply(self, client: RawClient) -> tuple[bytes, int | None]:
        """Run the loop until the client has a frame; its reply bytes (None: rejected)."""
        ((frame, fd),) = self.frames(client, 1)
        reply = frame.msg_invoke_method_reply
        return (reply.reply_proto if reply.success else None), fd  # type: ignore[return-value]

    def close(self) -> None:
        self.port.close()
        self.loop.close()
        os.close(self.smb)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def memfd(size: int) -> int:
    fd = os.memfd_create("test-fd")
    os.ftruncate(fd, size)
    return fd


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_sockets_are_owner_only_and_identities_carry_the_prefix(h: Harness) -> None:
    assert (h.sockets.producer.stat().st_mode & 0o777) == 0o600
    assert (h.sockets.consumer.stat().st_mode & 0o777) == 0o600
    h.client()
    (identity,) = h.port.conns
    assert identity.startswith(PERFETTO_PREFIX) and len(identity) == len(PERFETTO_PREFIX) + 4


def test_an_fd_glued_behind_another_frame_goes_to_its_own_frame(h: Harness) -> None:
    """The kernel delivers the fd with the read that ends with its frame's first
    bytes; the frames before it in that read must not get it."""
    client = h.client()
    fd = memfd(4321)
    client.send(invoke_frame(1, ECHO, b"first"))  # both before the service reads
    client.send(invoke_frame(2, TAKE_FD), fds=[fd])
    os.close(fd)
    assert h.reply(client) == (b"first", None)
    assert h.reply(client) == (b"4321", None)


def test_an_fd_on_an_incomplete_frame_waits_for_it(h: Harness) -> None:
    client = h.client()
    fd = memfd(77)
    data = encode(invoke_frame(1, TAKE_FD))
    client.send_raw(data[:3], fds=[fd])
    os.close(fd)
    h.loop.run(timeout=0.05)  # the service reads the start of the frame
    assert h.port.conns[next(iter(h.port.conns))].pending_fd is not None
    client.send_raw(data[3:])
    assert h.reply(client) == (b"77", None)


def test_fds_on_wrong_frames_and_extra_fds_are_closed(h: Harness) -> None:
    client = h.client()
    before = open_fds()
    for _ in range(5):  # an fd on a frame that takes none
        fd = memfd(1)
        client.send(invoke_frame(client.next_id(), ECHO, b"x"), fds=[fd])
        os.close(fd)
        assert h.reply(client) == (b"x", None)
    fds = [memfd(1), memfd(2)]  # two fds on one frame: neither is taken
    client.send(invoke_frame(client.next_id(), TAKE_FD), fds=fds)
    for fd in fds:
        os.close(fd)
    assert h.reply(client) == (None, None)
    fd = memfd(1)  # an fd with a frame left incomplete, then the client leaves
    client.send_raw(encode(invoke_frame(client.next_id(), TAKE_FD))[:5], fds=[fd])
    os.close(fd)
    client.close()
    h.run_until(lambda: not h.port.conns, "the connection to end")
    assert open_fds() == before - 3  # both ends of the connection, its pidfd, nothing else
    assert h.core.gone == [("p", h.translators[0].identity)]


def test_one_turn_handles_a_bounded_number_of_frames(h: Harness) -> None:
    client = h.client()
    frames = b"".join(encode(invoke_frame(i + 1, ECHO)) for i in range(FRAMES_PER_TURN * 3))
    client.send_raw(frames)
    (conn,) = h.port.conns.values()
    h.run_until(lambda: conn.backlog, "the frames to be read")
    assert len(conn.backlog) > FRAMES_PER_TURN  # read, but not all handled in that turn
    replies = [frame.request_id for frame, _ in h.frames(client, FRAMES_PER_TURN * 3)]
    assert replies == list(range(1, FRAMES_PER_TURN * 3 + 1))


def test_a_frame_over_the_limit_ends_the_connection(h: Harness) -> None:
    client = h.client()
    client.send_raw((MAX_FRAME_BYTES).to_bytes(4, "little") + b"\0" * 100)
    h.run_until(lambda: not h.port.conns, "the connection to end")
    assert client.closed_by_service()
    assert "a frame of" in h.log[-1]


def test_the_smb_fd_travels_with_its_frame_even_behind_a_queue(h: Harness) -> None:
    client = h.client()
    client.invoke(FLOOD, FLOOD_ARGS.pack(40, 100_000))  # 4 MB: most of it waits in the queue
    client.invoke(SMB)
    (conn,) = h.port.conns.values()
    h.run_until(lambda: conn.out, "a queue")
    frames = h.frames(client, 41)
    assert all(fd is None for _, fd in frames[:40])
    frame, fd = frames[40]
    assert frame.msg_invoke_method_reply.reply_proto == b"smb"
    assert fd is not None and os.fstat(fd).st_size == 12345
    os.close(fd)


def test_a_client_that_reads_nothing_is_given_up_on(tmp_path: Path) -> None:
    h = Harness(tmp_path, timeout_s=0.3)
    try:
        client = h.client()
        client.invoke(FLOOD, FLOOD_ARGS.pack(100, 100_000))  # 10 MB: within the bounds
        h.run_until(lambda: not h.port.conns, "the give-up")
        assert h.core.counters.producers_given_up == 1
        assert h.core.counters.given_up_messages_dropped > 0
        assert "took nothing for 0.3 s" in h.log[-1]
        assert h.core.gone == [("p", h.translators[0].identity)]
        assert client.closed_by_service()
    finally:
        h.close()


def test_a_queue_past_its_bounds_is_given_up_on_at_once(h: Harness) -> None:
    client = h.client()
    client.invoke(FLOOD, FLOOD_ARGS.pack(5000, 100_000))  # 500 MB
    h.run_until(lambda: not h.port.conns, "the give-up")
    assert h.core.counters.producers_given_up == 1
    assert "passed its bounds" in h.log[-1]


def test_a_live_socket_is_refused_and_a_stale_one_replaced(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="in use"):
            Harness(tmp_path)
    finally:
        h.close()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "p.sock"))
    stale.close()  # the file stays, nobody listens
    (tmp_path / "c.sock").write_text("not a socket")
    with pytest.raises(RuntimeError, match="not a socket"):
        Harness(tmp_path)
    (tmp_path / "c.sock").unlink()
    Harness(tmp_path).close()
    assert not (tmp_path / "p.sock").exists()
