"""The service process itself: a second service refuses a live endpoint; the
shell (in this process) ends a consumer whose connection's end it learns late."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import zmq
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.connections import PERFETTO, Connection
from actors.core.consumer_core import ConsumerError
from actors.endpoints import PerfettoSockets
from actors.perfetto_port import close_fds
from actors.service import ServiceShell
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from tests.processes import PYTHON, Runtime
from tests.waiting import wait_for


def test_a_second_service_does_not_take_over_live_sockets(rt: Runtime):
    rt.start_service()
    endpoints = ["--producer-endpoint", rt.producer_endpoint]
    endpoints += ["--consumer-endpoint", rt.consumer_endpoint]
    second = rt.run([PYTHON, "-m", "actors.service", *endpoints], timeout=30)
    assert second.returncode == 1
    assert "is in use: is another service running?" in second.stderr
    try:  # the first one still serves, on its own sockets
        rt.consumer(timeout=5).query_state()
    except ConsumerError as e:
        raise AssertionError(f"the first service stopped answering: {e}") from None
    assert rt.stop(rt.service, timeout=15) == 0
    assert not Path(rt.dir, "p").exists() and not Path(rt.dir, "c").exists()


def test_a_consumer_whose_closed_connection_lost_its_number_to_a_perfetto_one_is_freed(
    tmp_path: Path,
):
    """A ZeroMQ consumer closes its socket and stays alive; a Perfetto connection gets
    the number of the service's closed fd before the DISCONNECTED is read: that late
    event names the Perfetto connection, and the consumer's session is freed all the same."""
    sockets = PerfettoSockets(tmp_path / "pp", tmp_path / "pc")
    shell = ServiceShell(f"ipc://{tmp_path}/p", f"ipc://{tmp_path}/c", perfetto=sockets)
    assert shell.perfetto is not None
    ctx = zmq.Context()
    perfetto_client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # its fd: not the one
    held: list[int] = []
    key = ("c", b"leaving-consumer")
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.ROUTING_ID, key[1])
        dealer.connect(f"ipc://{tmp_path}/c")
        config = pb.TraceConfig(buffers=[pb.TraceConfig.BufferConfig(size_kb=64)])
        enable = ipc.EnableTracingRequest(trace_config=config.SerializeToString())
        dealer.send_multipart(framing.encode(ipc.ConsumerToService(enable_tracing=enable)))
        assert shell.loop.run(
            until=lambda: key in shell.conn_of and shell.core.sessions, timeout=10
        )
        conn = shell.conn_of[key]
        dealer.close(linger=0)  # the service's libzmq closes its fd: the loop does not run
        wait_for(lambda: not same_socket(conn), 10, "the service's libzmq to close the fd")
        # The accept gets the lowest free number: the numbers under the closed one are held.
        while (spare := os.open(os.devnull, os.O_RDONLY)) != conn.fd:
            held.append(spare)
            assert spare < conn.fd, "the closed fd's number was taken meanwhile"
        os.close(spare)
        perfetto_client.connect(str(sockets.consumer))
        shell.perfetto._on_accept("c")
        assert shell.connections.by_fd[conn.fd].front == PERFETTO  # it took the number
        assert shell.loop.run(until=lambda: not shell.core.sessions, timeout=10), "never freed"
        assert key not in shell.pids
    finally:
        close_fds(held)
        perfetto_client.close()
        ctx.destroy(linger=0)
        shell.close()


def same_socket(conn: Connection) -> bool:
    try:
        return os.fstat(conn.fd).st_ino == conn.inode
    except OSError:
        return False
