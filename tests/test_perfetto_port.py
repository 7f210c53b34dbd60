"""Hostile peers on the Perfetto sockets of a real service process (started with
--perfetto-producer-socket/--perfetto-consumer-socket), speaking raw bytes and
frames (tests/perfetto_standin.py's RawClient) to the real translators: garbage,
a frame over 128 KiB, a truncated frame, fds on the wrong frames, methods
before BindService, unknown ids, methods out of order, a flood of connections,
a stopped client that reads nothing. After each, the service still answers a
ZeroMQ consumer and a new Perfetto client, and holds no fd more than before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from actors.core.perfetto_wire import (
    CONSUMER_METHODS,
    MAX_FRAME_BYTES,
    PERFETTO_PREFIX,
    PRODUCER_METHODS,
    encode,
)
from protos import perfetto_ipc_pb2 as pf
from tests.perfetto_standin import FLOOD, FLOOD_ARGS, RawClient, invoke_frame
from tests.processes import READY_TIMEOUT, Runtime
from tests.waiting import wait_for

ANSWER_S = 10.0


def sockets(rt: Runtime) -> tuple[Path, Path]:
    return rt.dir / "pf-p", rt.dir / "pf-c"


def flags(rt: Runtime) -> list[str]:
    producer, consumer = sockets(rt)
    return [
        "--perfetto-producer-socket",
        str(producer),
        "--perfetto-consumer-socket",
        str(consumer),
    ]


@pytest.fixture
def service(rt: Runtime) -> subprocess.Popen[str]:
    return rt.start_service(*flags(rt))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def still_serving(rt: Runtime) -> None:
    """The ZeroMQ consumer port and a new Perfetto consumer both answer."""
    rt.control.query_state(timeout=ANSWER_S)
    client = RawClient(sockets(rt)[1])
    try:
        reply = client.bind("ConsumerPort").msg_bind_service_reply
        assert reply.success and {m.name for m in reply.methods} >= {"EnableTracing"}
    finally:
        client.close()


def fds_back_to(rt: Runtime, before: int) -> None:
    wait_for(lambda: fd_count(rt.service.pid) <= before, ANSWER_S, "the service's fds to close")


def test_sockets_are_owner_only_and_removed_at_exit(rt: Runtime, service) -> None:
    for path in sockets(rt):
        assert path.stat().st_mode & 0o777 == 0o600
    still_serving(rt)
    assert rt.stop(service) == 0
    assert not any(path.exists() for path in sockets(rt))


def test_garbage_and_a_truncated_frame_cost_only_their_connection(rt: Runtime, service) -> None:
    before = fd_count(service.pid)
    for path in sockets(rt):
        client = RawClient(path)
        client.send_raw(os.urandom(3000))
        client.close()
        client = RawClient(path)
        client.send_raw(encode(invoke_frame(1, 1, b"x" * 500))[:200])  # then EOF
        client.close()
    fds_back_to(rt, before)
    still_serving(rt)


def test_a_frame_over_128_kib_is_disconnected(rt: Runtime, service) -> None:
    for path in sockets(rt):
        client = RawClient(path)
        client.send_raw((MAX_FRAME_BYTES).to_bytes(4, "little") + b"\0" * 64)
        assert client.closed_by_service()
        client.close()
    still_serving(rt)


def test_fds_on_the_wrong_frames_are_closed(rt: Runtime, service) -> None:
    before = fd_count(service.pid)
    producer, consumer = sockets(rt)
    for path, name in ((producer, "ProducerPort"), (consumer, "ConsumerPort")):
        client = RawClient(path)
        fd = os.memfd_create("stray")
        frame = pf.IPCFrame(request_id=client.next_id())
        frame.msg_bind_service.service_name = name
        client.send(frame, fds=[fd])  # an fd on BindService
        assert client.recv()[0].msg_bind_service_reply.success
        for method in (2, 4, 6, 10):  # an fd on each of a few methods, garbage args
            client.send(invoke_frame(client.next_id(), method, b"\xff\xff", service=99), [fd])
        client.send(invoke_frame(client.next_id(), 1, b""), [fd, fd, fd])  # three at once
        rid = client.send(invoke_frame(client.next_id(), 9999, service=99))  # a round trip
        frames = [client.recv()[0] for _ in range(6)]  # the five rejections, then this one
        assert frames[-1].request_id == rid
        # While the connection is open: its socket and pidfd, and no fd it was sent.
        assert fd_count(service.pid) <= before + 2
        client.send_raw(encode(invoke_frame(client.next_id(), 1))[:6], [fd])  # then EOF
        os.close(fd)
        client.close()
    fds_back_to(rt, before)
    still_serving(rt)


def test_methods_before_bind_unknown_and_out_of_order_are_rejected(rt: Runtime, service) -> None:
    producer, consumer = sockets(rt)
    clients, services = [], []
    for path, name in ((producer, "ProducerPort"), (consumer, "ConsumerPort")):
        client = RawClient(path)
        clients.append(client)
        rid = client.invoke(1, b"")  # before BindService
        frame = client.recv()[0]
        assert frame.request_id == rid and not frame.msg_invoke_method_reply.success
        bound = client.bind(name).msg_bind_service_reply
        assert bound.success
        services.append(bound.service_id)
        for method_id in (0, 77, 2**31):  # unknown ids
            rid = client.send(invoke_frame(client.next_id(), method_id, service=bound.service_id))
            frame = client.recv()[0]
            assert frame.request_id == rid and not frame.msg_invoke_method_reply.success
    # The producer: a data source before InitializeConnection is rejected; the
    # initialization (empty args: every field has a default) then succeeds.
    client = clients[0]
    early = client.invoke(PRODUCER_METHODS["RegisterDataSource"], b"")
    init = client.invoke(PRODUCER_METHODS["InitializeConnection"], b"")
    replies = replies_until(client, client.invoke(PRODUCER_METHODS["Sync"], b""))
    assert replies[early] == [False] and replies[init] == [True]
    # The consumer: every method out of order, empty args; the ones not served
    # are rejected at once, and the connection goes on.
    client, service_id = clients[1], services[1]

    def call(method: int) -> int:
        return client.send(invoke_frame(client.next_id(), method, service=service_id))

    sent = {call(method): name for name, method in CONSUMER_METHODS.items()}
    client.send(pf.IPCFrame(request_id=client.next_id()))  # neither bind nor invoke
    replies = replies_until(client, call(CONSUMER_METHODS["QueryCapabilities"]))
    by_name = {sent[rid]: got for rid, got in replies.items() if rid in sent}
    assert by_name["ChangeTraceConfig"] == [False] and by_name["CloneSession"] == [False]
    assert by_name["QueryCapabilities"] == [True]
    state = rt.control.query_state(timeout=ANSWER_S)  # before the clients leave
    assert len(state.producers) == 1  # the one initialized
    assert state.refusals["perfetto_requests_rejected"] >= 2 * 4 + 1
    for client in clients:
        client.close()
    still_serving(rt)


def replies_until(client: RawClient, last: int) -> dict[int, list[bool]]:
    """The successes of the replies by request id, up to the reply to `last`."""
    replies: dict[int, list[bool]] = {}
    while True:
        frame = client.recv()[0]
        replies.setdefault(frame.request_id, []).append(frame.msg_invoke_method_reply.success)
        if frame.request_id == last:
            return replies


def test_a_zeromq_routing_id_of_the_perfetto_prefix_is_refused(rt: Runtime, service) -> None:
    routing_id = (PERFETTO_PREFIX + (1).to_bytes(4, "big")).hex()
    peer = rt.spawn("raw", ["-m", "tests.raw_peer", rt.producer_endpoint], lines=True)
    assert peer.stdin is not None
    peer.stdin.write(f"connect {routing_id}\ninit impostor\n")
    peer.stdin.flush()
    rt.wait_line(peer, timeout=30)  # connected
    reply = rt.wait_line(peer, timeout=30)
    assert reply.startswith("error") and "reserved" in reply, reply
    state = rt.control.query_state(timeout=ANSWER_S)
    assert state.refusals["routing_id_reserved"] >= 1
    assert "impostor" not in {p.name for p in state.producers}


def test_a_flood_of_connections_is_refused_past_the_limit(rt: Runtime) -> None:
    rt.start_service(*flags(rt), "--max-connections-per-process", "6")
    clients = [RawClient(sockets(rt)[0]) for _ in range(12)]  # this process holds one more
    refused = [c for c in clients if closed_at_once(c)]
    assert len(refused) >= 6
    state = rt.control.query_state(timeout=ANSWER_S)
    assert state.refusals["max_connections_per_process"] >= len(refused)
    for client in clients:
        client.close()
    wait_for(lambda: bound_ok(sockets(rt)[0]), ANSWER_S, "a connection admitted again")


def test_zeromq_and_perfetto_connections_share_the_limits(rt: Runtime) -> None:
    """A flood on the consumer socket, from a process already holding ZeroMQ
    connections: both front ends count against one per-process limit."""
    rt.start_service(*flags(rt), "--max-connections-per-process", "6")
    for number in range(3):  # with the control consumer: four ZeroMQ connections
        wait_for(lambda n=number: connect_consumer(rt, f"c{n}"), ANSWER_S, "a ZeroMQ consumer")
    clients = [RawClient(sockets(rt)[1]) for _ in range(12)]
    admitted = [c for c in clients if not closed_at_once(c, "ConsumerPort")]
    assert 1 <= len(admitted) <= 2  # 6 less the four ZeroMQ ones
    state = rt.control.query_state(timeout=ANSWER_S)
    assert state.refusals["max_connections_per_process"] >= 10
    for client in clients:
        client.close()
    # The service reads the admitted ones' EOFs in its own time: until then a new
    # connection would still be over the limit.
    wait_for(lambda: bound_ok(sockets(rt)[1], "ConsumerPort"), ANSWER_S, "the EOFs seen")
    still_serving(rt)


def closed_at_once(client: RawClient, service: str = "ProducerPort") -> bool:
    """Whether the service closed a connection it was offered a bind on."""
    try:
        client.bind(service)
    except (EOFError, ConnectionResetError, BrokenPipeError):
        return True
    return False


def bound_ok(path: Path, service: str = "ProducerPort") -> bool:
    client = RawClient(path)
    try:
        return not closed_at_once(client, service)
    finally:
        client.close()


STOPPED_CLIENT = """
import sys
from tests.perfetto_standin import FLOOD, FLOOD_ARGS, RawClient
client = RawClient(sys.argv[1])
client.bind("ProducerPort")
client.invoke(FLOOD, FLOOD_ARGS.pack(200, 100_000))  # 20 MB, within the queue's bounds
print("asked", flush=True)
sys.stdin.read()
"""


def test_a_stopped_client_is_given_up_on_and_the_service_goes_on(rt: Runtime) -> None:
    """On a service speaking the stand-in translator (its Flood method streams
    20 MB at once): the client stops before reading; its queue takes nothing for
    the peer send timeout, the service gives up on it, and answers meanwhile."""
    producer, consumer = sockets(rt)
    argv = ["-m", "tests.perfetto_standin", "--producer-endpoint", rt.producer_endpoint]
    argv += ["--consumer-endpoint", rt.consumer_endpoint, *flags(rt)]
    rt.spawn("standin-service", [*argv, "--peer-send-timeout-s", "1"])
    control = wait_for(lambda: connect_consumer(rt), READY_TIMEOUT, "the service")
    wait_for(producer.exists, READY_TIMEOUT, "the Perfetto sockets")
    client = rt.spawn("stopped", ["-c", STOPPED_CLIENT, str(producer)], lines=True)
    assert rt.wait_line(client, timeout=30) == "asked"
    client.send_signal(signal.SIGSTOP)
    try:
        control.query_state(timeout=ANSWER_S)  # served while the queue waits
        wait_for(lambda: control.query_state(timeout=ANSWER_S).peers_given_up.producers == 1,
                 ANSWER_S, "the give-up")  # fmt: skip
    finally:
        client.send_signal(signal.SIGCONT)
    assert control.query_state(timeout=ANSWER_S).peers_given_up.producers == 1
    other = RawClient(consumer)
    other.bind("ConsumerPort")
    rid = other.invoke(FLOOD, FLOOD_ARGS.pack(3, 1000))
    assert [other.recv()[0].request_id for _ in range(3)] == [rid] * 3
    other.close()


def connect_consumer(rt: Runtime, name: str = "probe"):
    from actors.consumer import Consumer
    from actors.core.consumer_core import ConsumerError

    try:
        consumer = Consumer.connect(rt.consumer_endpoint, timeout=0.5, name=name)
    except ConsumerError:
        return None
    rt.consumers.append(consumer)
    return consumer


def test_flags_and_environment_choose_the_paths(tmp_path: Path) -> None:
    from actors.endpoints import default_perfetto_sockets as default_sockets

    env = {"PERFETTO_PRODUCER_SOCK_NAME": str(tmp_path / "a"), "PERFETTO_CONSUMER_SOCK_NAME": ""}
    code = "from actors.endpoints import default_perfetto_sockets as d; print(d(None, 'x'))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert str(tmp_path / "a") in out and "consumer=PosixPath('x')" in out
    assert default_sockets("/p", "/c").producer == Path("/p")
    with pytest.raises(RuntimeError, match="abstract"):
        default_sockets("@traced", "/c")


def test_the_topology_keys_become_the_service_flags(tmp_path: Path) -> None:
    from launch.topology_parser import parse_topology

    text = """
service:
  perfetto_sockets: true
  perfetto_consumer_socket: pf/consumer.sock
producers: []
consumers: []
stop_when: never
"""
    topology = parse_topology(text, tmp_path / "topology.yaml")
    argv = topology.service.argv("python", "ipc://p", "ipc://c")
    assert argv[-3:] == ["--perfetto-sockets", "--perfetto-consumer-socket",
                         str(tmp_path / "pf" / "consumer.sock")]  # fmt: skip
    with pytest.raises(Exception, match="perfetto_sockets"):
        parse_topology(text.replace("true", "3"), tmp_path / "topology.yaml")


def test_a_topology_tells_its_children_where_the_perfetto_sockets_are(tmp_path: Path) -> None:
    """An app built with the Perfetto SDK, started as a producer group, finds the
    service's Perfetto sockets through Perfetto's own variables."""
    from launch.runtime import Runtime as LaunchRuntime
    from launch.topology_parser import parse_topology

    text = """
service:
  perfetto_producer_socket: pf/producer.sock
  perfetto_consumer_socket: pf/consumer.sock
producers: []
consumers: []
stop_when: never
"""
    topology = parse_topology(text, tmp_path / "topology.yaml")
    runtime = LaunchRuntime(tmp_path / "run", topology.service)
    runtime.prepare()
    assert runtime.endpoints["PERFETTO_PRODUCER_SOCK_NAME"] == str(tmp_path / "pf/producer.sock")
    assert runtime.endpoints["PERFETTO_CONSUMER_SOCK_NAME"] == str(tmp_path / "pf/consumer.sock")
    plain = parse_topology("producers: []\nconsumers: []\nstop_when: never\n", tmp_path / "t.yaml")
    runtime = LaunchRuntime(tmp_path / "run2", plain.service)
    runtime.prepare()
    assert not any(name.startswith("PERFETTO") for name in runtime.endpoints)
