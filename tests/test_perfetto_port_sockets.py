"""The Perfetto sockets' shell (actors/perfetto_port.py) in one process: a real
PerfettoPort on real sockets in a temporary directory, its loop run by the
test, a stand-in translator (tests/perfetto_standin.py) and a fake core. What
is checked here needs control over when the service reads: which frame an fd
belongs to when frames arrive glued in one read, the per-turn bound, queues
and give-ups on a client that reads nothing."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.connections import PERFETTO, ZMQ, Connections
from actors.core.perfetto_wire import MAX_FRAME_BYTES, PERFETTO_PREFIX, encode
from actors.core.producers import ServiceCounters
from actors.endpoints import PerfettoSockets, claim_socket_path, socket_answers
from actors.loop import Loop
from actors.peer_limits import open_files_note, raise_open_files_limit
from actors.perfetto_port import (
    EXITED_READ_BYTES,
    FRAMES_PER_TURN,
    PERFETTO_CLOSED,
    PERFETTO_REJECTED,
    PERFETTO_UNDECODABLE,
    READ_BYTES,
    SO_PEERPIDFD,
    Hooks,
    PerfettoPort,
    close_fds,
)
from protos import perfetto_ipc_pb2 as pf
from tests.perfetto_standin import (
    CLOSE,
    CLOSE_LATER,
    ECHO,
    FLOOD,
    FLOOD_ARGS,
    RAISE,
    REJECT,
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
        self.smb_fd: Callable[[bytes], int | None] = lambda identity: self.smb
        self.adopted: list[int] = []  # fds a translator adopted: closed after the frame
        self.after_core: Callable[[], None] = self.discard_adopted
        hooks = Hooks(
            producer=self._translator,
            consumer=self._translator,
            send_all=lambda outputs: None,
            admit=lambda side, fd: self.connections.accepted(
                side, fd, self.loop.now(), front=PERFETTO
            ),
            smb_fd=lambda identity: self.smb_fd(identity),
            after_core=lambda: self.after_core(),
            drained=lambda: None,
            log=self.log.append,
        )
        self.sockets = PerfettoSockets(directory / "p.sock", directory / "c.sock")
        try:
            self.port = PerfettoPort(
                self.loop, self.core, self.sockets, hooks, self.connections,  # type: ignore[arg-type]
                peer_send_timeout_s=timeout_s,
            )  # fmt: skip
        except BaseException:  # nothing of ours outlives a refused start
            self.loop.close()
            os.close(self.smb)
            raise

    def discard_adopted(self) -> None:
        close_fds(self.adopted)
        self.adopted.clear()

    def _translator(self, identity: bytes) -> StandInConn:
        conn = StandInConn(identity, adopt=self.adopted.append)
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
    (conn,) = h.port.conns.values()
    h.run_until(conn.decoder.fd_waiting, "the start of the frame to be read")
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
    h.run_until(lambda: h.translators[0].frames_seen, "the first frames to be handled")
    assert h.translators[0].frames_seen == FRAMES_PER_TURN  # the rest waits for later turns
    assert conn.decoder.complete()
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
        before = open_fds()
        with pytest.raises(RuntimeError, match="in use"):
            Harness(tmp_path)
        assert open_fds() == before  # the refused port's loop and memfd are closed
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


def test_the_smb_is_handed_over_without_a_new_fd_even_when_none_is_left(h: Harness) -> None:
    """No fd is made to hand the SMB over: with the fd table full (EMFILE), the
    frame still goes out with the SMB's own fd, and the port goes on."""
    client = h.client()
    (conn,) = h.port.conns.values()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # not one fd left
    try:
        with pytest.raises(OSError):
            os.dup(0)
        client.invoke(SMB)
        h.run_until(lambda: conn.spoke and not conn.out and not conn.decoder.buffered, "the send")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    frame, fd = h.frames(client, 1)[0]
    assert frame.msg_invoke_method_reply.reply_proto == b"smb"
    assert fd is not None and os.fstat(fd).st_size == 12345
    os.close(fd)
    assert h.port.conns


def test_an_smb_gone_before_its_frame_is_sent_ends_that_connection(h: Harness) -> None:
    client = h.client()
    h.smb_fd = lambda identity: None
    client.invoke(SMB)
    h.run_until(lambda: not h.port.conns, "the connection to end")
    assert "SMB is gone" in h.log[-1]
    assert h.core.counters.refusals[PERFETTO_CLOSED] == 1


def test_an_os_error_on_one_connection_ends_it_and_no_other(h: Harness) -> None:
    first, second = h.client(), RawClient(h.sockets.producer)
    h.run_until(lambda: len(h.port.conns) == 2, "both accepts")

    def failing(identity: bytes) -> int | None:
        raise OSError(24, "Too many open files")

    h.smb_fd = failing
    first.invoke(SMB)
    h.run_until(lambda: len(h.port.conns) == 1, "the first connection to end")
    assert "Too many open files" in h.log[-1]
    second.invoke(ECHO, b"still")
    assert h.reply(second) == (b"still", None)


def test_an_fd_whose_frame_never_completes_is_closed_after_the_timeout(tmp_path: Path) -> None:
    h = Harness(tmp_path, timeout_s=0.3)
    try:
        client = h.client()
        (conn,) = h.port.conns.values()
        fd = memfd(5)
        client.send_raw(encode(invoke_frame(1, TAKE_FD))[:3], fds=[fd])
        os.close(fd)
        h.run_until(conn.decoder.fd_waiting, "the fd to wait")
        before = open_fds()
        h.run_until(lambda: not h.port.conns, "the connection to end")
        assert open_fds() == before - 3  # the fd, the socket, the pidfd
        assert "stayed incomplete" in h.log[-1]
        assert client.closed_by_service()
    finally:
        h.close()


def test_a_connection_ends_when_its_process_exits_though_its_socket_lives_on(
    h: Harness,
) -> None:
    """SO_PEERCRED names the process that connected: once it exited, the socket a
    child inherited would pass packets off as a dead (or reused) pid's."""
    child = subprocess.Popen(
        [sys.executable, "-c", HANDED_ON, str(h.sockets.producer)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        h.run_until(lambda: len(h.port.conns) == 1, "the accept")
        (conn,) = h.port.conns.values()
        assert conn.peer.pid == child.pid != grandchild
        child.wait(timeout=TIMEOUT_S)  # the grandchild holds the socket
        h.run_until(lambda: not h.port.conns, "the connection to end")
        assert h.core.gone == [("p", conn.peer.identity)]
    finally:
        assert child.stdin is not None
        child.stdin.close()  # the grandchild reads EOF and exits
        child.wait(timeout=TIMEOUT_S)


HANDED_ON = """
import os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
pid = os.fork()
if pid == 0:
    sys.stdin.read()
    os._exit(0)
print(pid, flush=True)
sys.stdin.close()
os._exit(0)
"""


def test_a_connection_whose_process_is_gone_at_accept_is_refused(h: Harness) -> None:
    code = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(h.sockets.producer)], check=True)
    # Reaped: pidfd_open finds no process (refused at accept), or the kernel's
    # SO_PEERPIDFD (Linux 6.15 on) names the exited one: its pidfd fires at once.
    h.run_until(lambda: h.port.closed == 1 or h.core.gone, "the end")
    h.run_until(lambda: not h.port.conns, "no connection")
    assert not h.connections.by_fd
    assert h.port.closed == 0 or "no pidfd" in h.log[-1]


def test_closing_set_by_on_frame_ends_the_connection_after_the_batch_replies(
    h: Harness,
) -> None:
    """Both ways a translator ends a connection (Step.close, `closing`) are acted
    on after a frame, and the replies queued before in the batch go out first."""
    for method, why in ((CLOSE_LATER, "asked, later"), (CLOSE, "the client asked")):
        client = h.client()
        client.send_raw(encode(invoke_frame(1, ECHO, b"a")) + encode(invoke_frame(2, method)))
        h.run_until(lambda: not h.port.conns, "the connection to end")
        client.sock.setblocking(True)
        assert client.recv()[0].msg_invoke_method_reply.reply_proto == b"a"
        if method == CLOSE_LATER:
            assert client.recv()[0].msg_invoke_method_reply.reply_proto == b"bye"
        assert client.closed_by_service()
        assert why in h.log[-1]
    assert h.core.counters.refusals[PERFETTO_CLOSED] == 2


def test_a_translator_bug_after_adopting_the_fd_closes_it_once(h: Harness) -> None:
    """The adopted fd is closed by after_core alone: the number, reused at once
    (here by the test), is not closed a second time by the port."""
    reused: list[int] = []

    def after_core() -> None:
        adopted = bool(h.adopted)
        h.discard_adopted()
        if adopted:
            reused.append(os.memfd_create("reuses-the-number"))

    h.after_core = after_core
    client = h.client()
    fd = memfd(9)
    client.invoke(RAISE, fds=[fd])
    os.close(fd)
    h.run_until(lambda: not h.port.conns, "the connection to end")
    assert "met a bug" in h.log[-1]
    (sentinel,) = reused
    os.fstat(sentinel)  # still open
    os.close(sentinel)
    client.close()
    before = open_fds()  # without adopting: the port closes the fd itself
    h.after_core = lambda: None
    client = h.client()
    fd = memfd(9)
    client.invoke(RAISE, fds=[fd])
    os.close(fd)
    client.close()
    h.run_until(lambda: not h.port.conns, "the connection to end")
    assert open_fds() == before


def test_rejections_and_undecodable_frames_are_counted_and_logged(h: Harness) -> None:
    client = h.client()
    for _ in range(3):
        client.invoke(REJECT)
    assert [h.reply(client)[0] for _ in range(3)] == [None] * 3
    client.send_raw(b"\x03\x00\x00\x00\xff\xff\xff")  # a frame of 3 bytes that do not parse
    client.invoke(ECHO, b"after")
    assert h.reply(client) == (b"after", None)
    refusals = h.core.counters.refusals
    assert refusals[PERFETTO_REJECTED] == 3 and refusals[PERFETTO_UNDECODABLE] == 1
    rejected = [line for line in h.log if "rejected requests" in line]
    assert rejected and all("'asked to'" in line for line in rejected)
    assert "last: the stand-in was asked to" in rejected[0]  # the service's reason, told
    assert any("did not parse" in line for line in h.log)


def test_a_late_zeromq_disconnect_never_removes_a_perfetto_entry(h: Harness) -> None:
    """libzmq reports a close after the fact: by then its fd number may hold a
    Perfetto connection, whose entry (and count against the limits) must stay."""
    h.client()
    (conn,) = h.port.conns.values()
    pid = conn.peer.pid
    assert h.connections.disconnected(conn.fd, ZMQ, "p") is None  # a stale monitor event
    assert h.connections.by_fd[conn.fd].front == PERFETTO
    assert h.connections.per_pid[pid] == 1
    assert h.connections.of_message(conn.fd, pid) is None  # a ZeroMQ message's source fd
    assert h.connections.disconnected(conn.fd, PERFETTO) is not None
    assert h.connections.per_pid[pid] == 0


def test_socket_answers_never_blocks_on_a_full_backlog(tmp_path: Path) -> None:
    """A listener someone planted with its backlog full answers (EAGAIN) at once."""
    path = tmp_path / "full.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    waiting = []
    try:
        while True:  # fill the backlog
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            waiting.append(sock)
            try:
                sock.connect(str(path))
            except BlockingIOError:
                break
        assert socket_answers(path)
        with pytest.raises(RuntimeError, match="in use"):
            claim_socket_path(path)
    finally:
        for sock in waiting:
            sock.close()
        listener.close()
    assert not socket_answers(path)  # stale now
    claim_socket_path(path)
    assert not path.exists()


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 256:
        pytest.skip("no room to lower the soft limit first")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert raise_open_files_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


MINIMAL_FRAME = b"\x02\x00\x00\x00\x10\x01"  # IPCFrame{request_id: 1}: 6 bytes, no reply


def test_many_tiny_frames_cost_raw_bytes_not_parsed_frames(h: Harness) -> None:
    """A 64 KiB read of 6-byte frames parsed at once would be ~10,900 IPCFrames
    (~6 MB) per connection; cut lazily, each turn parses FRAMES_PER_TURN and the
    rest of what was sent waits in the socket."""
    per_client = READ_BYTES * 3 // len(MINIMAL_FRAME)
    clients = [h.client() for _ in range(8)]
    h.run_until(lambda: len(h.port.conns) == 8, "the accepts")
    for client in clients:
        client.send_raw(MINIMAL_FRAME * per_client)
    tracemalloc.start()
    try:
        h.run_until(lambda: all(t.frames_seen for t in h.translators), "a turn for each")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * (READ_BYTES + MAX_FRAME_BYTES)  # parsed at once: ~8 x 1 MB traced
    for conn in h.port.conns.values():
        assert conn.decoder.buffered <= READ_BYTES + MAX_FRAME_BYTES
    h.run_until(lambda: all(t.frames_seen == per_client for t in h.translators), "every frame")


PRODUCE_AND_EXIT = """
import os, sys
from actors.core.perfetto_wire import encode
from tests.perfetto_standin import ECHO, RawClient, invoke_frame
client = RawClient(sys.argv[1])
sys.stdin.readline()  # accepted
client.send_raw(b"".join(encode(invoke_frame(i + 1, ECHO, b"x" * 80)) for i in range(1000)))
os._exit(0)
"""


def test_what_a_peer_sent_before_its_process_exited_is_all_handled(h: Harness) -> None:
    """An SDK app that flushes and exits at once: its last frames (past a read and
    past a turn's bound) are handled before its pidfd ends the connection, and
    the replies it cannot read any more cost nothing."""
    child = subprocess.Popen(
        [sys.executable, "-c", PRODUCE_AND_EXIT, str(h.sockets.producer)],
        stdin=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        h.run_until(lambda: len(h.port.conns) == 1, "the accept")
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(timeout=TIMEOUT_S) == 0  # exited before the service read a byte
        h.run_until(lambda: not h.port.conns, "the connection to end")
        assert h.translators[0].frames_seen == 1000
        assert h.port.closed == 0
    finally:
        child.kill()
        child.wait()


def test_a_peer_that_exits_with_a_child_writing_on_is_cut_off(h: Harness) -> None:
    """What is read after the process exited is bounded: a child that inherited
    the socket and writes without end does not keep the connection."""
    child = subprocess.Popen(
        [sys.executable, "-c", WRITES_ON, str(h.sockets.producer)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        int(child.stdout.readline())  # the grandchild writing
        h.run_until(lambda: len(h.port.conns) == 1, "the accept")
        child.wait(timeout=TIMEOUT_S)
        h.run_until(lambda: not h.port.conns, "the connection to end")
        frames = h.translators[0].frames_seen
        # A read before the pidfd is seen, and the last read past the bound.
        assert 0 < frames <= (EXITED_READ_BYTES + 2 * READ_BYTES) // len(MINIMAL_FRAME)
    finally:
        assert child.stdin is not None
        child.stdin.close()  # the grandchild's writes fail once the service closed
        child.wait(timeout=TIMEOUT_S)


WRITES_ON = """
import os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
pid = os.fork()
if pid == 0:
    try:
        while True:
            sock.sendall(b"\\x02\\x00\\x00\\x00\\x10\\x01" * 10000)
    except OSError:
        os._exit(0)
print(pid, flush=True)
os._exit(0)
"""


def test_the_pidfd_is_the_kernels_where_it_has_one(h: Harness, monkeypatch) -> None:
    """SO_PEERPIDFD names the process that connected even if its pid was reused
    since; pidfd_open of the pid is the fallback of older kernels."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(h.sockets.producer))
        h.run_until(lambda: len(h.port.conns) == 1, "the accept")
        (conn,) = h.port.conns.values()
        pid_line = Path(f"/proc/self/fdinfo/{conn.pidfd}").read_text().split("Pid:")[1]
        assert int(pid_line.split()[0]) == os.getpid() == conn.peer.pid
        try:
            kernel = probe.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError:
            pytest.skip("no SO_PEERPIDFD on this kernel (before 6.5)")
        os.close(kernel)

        def no_pidfd_open(pid: int, flags: int = 0) -> int:
            raise AssertionError("pidfd_open used though SO_PEERPIDFD answers")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd_open)
        second = RawClient(h.sockets.producer)
        h.run_until(lambda: len(h.port.conns) == 2, "the second accept")
        second.close()
    finally:
        probe.close()


def test_a_pending_fd_arms_one_timer_not_a_scan(h: Harness, monkeypatch) -> None:
    """Each read leaving an fd waiting used to scan every connection; the timer
    is armed once, and re-armed from the earliest when it fires."""
    clients = [h.client() for _ in range(3)]
    h.run_until(lambda: len(h.port.conns) == 3, "the accepts")
    armed: list[int] = []
    call_at = h.loop.call_at

    def counting(deadline: int, fn):
        if getattr(fn, "__name__", "") == "_on_pending":
            armed.append(deadline)
        return call_at(deadline, fn)

    monkeypatch.setattr(h.loop, "call_at", counting)
    for client in clients:
        fd = memfd(3)
        client.send_raw(encode(invoke_frame(1, TAKE_FD))[:3], fds=[fd])
        os.close(fd)
    h.run_until(lambda: all(c.decoder.fd_waiting() for c in h.port.conns.values()), "the fds")
    assert len(armed) == 1


def test_the_open_files_note_warns_below_what_one_uid_may_hold() -> None:
    assert open_files_note(1 << 20, 1024) == f"open-files limit: {1 << 20}"
    note = open_files_note(4096, 1024)
    assert note.startswith("warning") and "4096" in note and "5120" in note


def test_a_stale_socket_that_cannot_be_removed_is_a_clear_refusal(
    tmp_path: Path, monkeypatch
) -> None:
    """Another user's stale socket in sticky /tmp: unlink fails (PermissionError,
    simulated here: the tests run as any user, root included); the service says
    why it cannot start instead of a traceback."""
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()

    def refused(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(1, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "unlink", refused)
    with pytest.raises(RuntimeError, match="stale socket of uid .* may not remove"):
        claim_socket_path(path)
