"""A real service with --relay-endpoint on tcp://127.0.0.1 and, in this test, a fake
relay: a zmq DEALER speaking the relay link (protos/tracebus_ipc.proto, "Relay link")
with CURVE keys made in the runtime directory (actors.relay_keys). The relay
itself (actors/relay.py) has its own tests; here the service's side is checked
against the wire protocol: machine ids, inline chunks, machine_id on packets,
the relayed machine's system_info and clock rounds, refused keys, plain TCP
without the flag, garbage on the port, a relay gone silent."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import zmq
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors import relay_keys
from actors.core.machines import machine_id_of
from actors.core.relay_upstream import ROUNDS_PER_BURST
from actors.core.relays import UNKNOWN_RELAY
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import CHUNK_HEADER
from shm.protozero import varint
from tests.processes import Runtime
from tests.waiting import wait_for

CONFIGS = Path(__file__).parent / "perfetto_configs"
MULTI_MACHINE = CONFIGS / "docs-multi-machine-tracing-6.cfg"  # trace_all_machines, linux.ftrace
BOOT = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Keys:
    def __init__(self, rt: Runtime) -> None:
        d = rt.dir / "keys"
        self.service_public, self.service_secret = relay_keys.generate(d, "service")
        self.relay_public, self.relay_secret = relay_keys.generate(d, "robot1")
        self.stranger_public, self.stranger_secret = relay_keys.generate(d, "stranger")
        self.clients = d / "relays"
        self.clients.mkdir()
        (self.clients / "robot1.key").write_bytes(self.relay_public.read_bytes())


def start_service(rt: Runtime, *args: str) -> str:
    """The service with a relay endpoint on a free port (another port on EADDRINUSE)."""
    for _ in range(5):
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        try:
            rt.start_service("--relay-endpoint", endpoint, *args)
        except AssertionError:
            if "Address already in use" in rt.logs():
                continue
            raise
        assert f"[service] relays on {endpoint}" in rt.logs()
        return endpoint
    raise AssertionError("no free port for the relay endpoint")


def start_curve_service(rt: Runtime, keys: Keys, *args: str) -> str:
    return start_service(
        rt, "--relay-key", str(keys.service_secret), "--relay-clients", str(keys.clients), *args
    )


class FakeRelay:
    """One relay connection: [channel][envelope] frames over a DEALER."""

    def __init__(self, endpoint: str, secret: Path | None = None, server: Path | None = None):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, os.urandom(16))
        if secret is not None and server is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey = relay_keys.load_pair(secret)
            self.sock.curve_serverkey = relay_keys.load_public(server)
        self.sock.connect(endpoint)

    def send(self, channel: int, msg) -> None:
        self.sock.send_multipart(framing.encode_channel(channel, msg))

    def recv(self, timeout: float = 10.0) -> tuple[int, bytes] | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        channel, envelope = framing.split_channel(self.sock.recv_multipart())
        return channel, envelope[0]

    def control(self, timeout: float = 10.0) -> ipc.ServiceToRelay:
        """The next control message but the heartbeats the service sends every second."""
        for _ in range(50):  # bounded: each recv has its own deadline
            got = self.recv(timeout)
            assert got is not None and got[0] == 0, f"no control message: {got}"
            msg = ipc.ServiceToRelay.FromString(got[1])
            if not msg.HasField("heartbeat"):
                return msg
        raise AssertionError("only heartbeats")

    def heard_heartbeat(self, timeout: float = 10.0) -> bool:
        """Whether the next message is a heartbeat the service sent on its own."""
        got = self.recv(timeout)
        if got is None or got[0] != 0:
            return False
        msg = ipc.ServiceToRelay.FromString(got[1])
        return msg.HasField("heartbeat") and msg.request_id == 0

    def producer_message(self, channel: int, kind: str, timeout: float = 10.0):
        """The next message on `channel` of this kind (other kinds before it skipped)."""
        for _ in range(50):  # bounded: each recv has its own deadline
            got = self.recv(timeout)
            assert got is not None, f"no {kind} on channel {channel}"
            if got[0] != channel:
                continue
            msg = ipc.ServiceToProducer.FromString(got[1])
            if msg.WhichOneof("msg") == kind:
                return msg
        raise AssertionError(f"no {kind}")

    def init(self, name: str = "robot1") -> int:
        info = pb.SystemInfo(utsname=pb.Utsname(sysname="Linux", machine=f"m-{name}"))
        init = ipc.InitRelay(
            hello=ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION), machine_name=name,
            machine_id_hint=f"boot-x/{name}", system_info=info.SerializeToString(),
        )  # fmt: skip
        self.send(0, ipc.RelayToService(request_id=1, init_relay=init))
        reply = self.control()
        assert reply.init_relay.hello.error == ""
        return reply.init_relay.machine_id

    def producer(self, channel: int, pid: int, source: str) -> None:
        init = ipc.InitializeConnectionRequest(
            hello=ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION), producer_name="remote",
            claimed_pid=pid, claimed_uid=os.getuid(),
        )  # fmt: skip
        self.send(channel, ipc.ProducerToService(request_id=1, initialize_connection=init))
        reply = self.producer_message(channel, "initialize_connection")
        assert reply.initialize_connection.hello.error == ""
        register = ipc.RegisterDataSourceRequest(descriptor=ipc.DataSourceDescriptor(name=source))
        self.send(channel, ipc.ProducerToService(request_id=2, register_data_source=register))
        assert (
            self.producer_message(channel, "register_data_source").register_data_source.error == ""
        )

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def chunk(writer_id: int, chunk_id: int, packets: list[bytes]) -> bytes:
    """A complete chunk as it lies in an SMB: header, then each packet as a fragment."""
    payload = b"".join(varint(len(p)) + p for p in packets)
    return CHUNK_HEADER.pack(chunk_id, writer_id, len(packets)) + payload


def clock_round(relay: FakeRelay, rnd: int) -> None:
    c1 = time.clock_gettime_ns(time.CLOCK_BOOTTIME) + 7_000_000_000
    ping = ipc.SyncClock(phase=ipc.SyncClock.PING, round=rnd, burst=1)
    ping.clocks.add(clock_id=BOOT, timestamp=c1)
    relay.send(0, ipc.RelayToService(sync_clock=ping))
    assert relay.control().sync_clock.round == rnd
    c2 = time.clock_gettime_ns(time.CLOCK_BOOTTIME) + 7_000_000_000
    update = ipc.SyncClock(
        phase=ipc.SyncClock.UPDATE, round=rnd, burst=1, client_round_trip_ns=c2 - c1
    )
    update.clocks.add(clock_id=BOOT, timestamp=c2)
    relay.send(0, ipc.RelayToService(sync_clock=update))


@pytest.fixture
def keys(rt: Runtime) -> Keys:
    return Keys(rt)


def in_order(relay: FakeRelay) -> None:
    """Wait until the service handled what the relay sent so far (one connection's
    messages are handled in order): a heartbeat and its answer."""
    relay.send(0, ipc.RelayToService(request_id=77, heartbeat=ipc.Heartbeat()))
    while True:  # the service's own heartbeats (request id 0) may come first
        got = relay.recv()
        assert got is not None, "no heartbeat answer"
        answer = ipc.ServiceToRelay.FromString(got[1]) if got[0] == 0 else None
        if answer is not None and answer.HasField("heartbeat") and answer.request_id == 77:
            return


@pytest.mark.timeout(90)
def test_relayed_producer_lands_in_a_session_with_its_machine_id(rt: Runtime, keys: Keys):
    endpoint = start_curve_service(rt, keys)
    local = rt.start_producer(
        "local", "--data-source", "linux.ftrace", data_sources=["linux.ftrace"]
    )
    relay = FakeRelay(endpoint, keys.relay_secret, keys.service_public)
    try:
        machine_id = relay.init("robot1")
        assert machine_id == machine_id_of("boot-x/robot1")
        relay.producer(3, pid=4321, source="linux.ftrace")
        consumer = rt.consumer()
        # Perfetto's config, and a few synthetic packets from the local producer.
        text = MULTI_MACHINE.read_text().replace(
            'name: "linux.ftrace"', 'name: "linux.ftrace" for_testing { message_count: 5 }'
        )
        result = consumer.enable(text)
        assert list(result.unsupported_fields) == []
        setup = relay.producer_message(3, "setup_tracing").setup_tracing
        assert setup.shm_size_bytes > 0 and not setup.shm_token and not setup.shm_socket
        start = relay.producer_message(3, "start_data_source").start_data_source
        target = pb.DataSourceConfig.FromString(start.data_source_config).target_buffer
        writer = ipc.RegisterTraceWriterRequest(writer_id=1, target_buffer=target)
        relay.send(3, ipc.ProducerToService(register_trace_writer=writer))
        commit = ipc.CommitDataRequest()
        for n in range(3):
            packets = [pb.TracePacket(timestamp=100 + 10 * n + i) for i in range(10)]
            for i, p in enumerate(packets):
                p.for_testing.counter = 10 * n + i
            data = chunk(1, n, [p.SerializeToString() for p in packets])
            commit.chunks_to_move.add(target_buffer=target, data=data)
        relay.send(3, ipc.ProducerToService(commit_data=commit))
        for rnd in range(1, ROUNDS_PER_BURST + 1):  # a whole burst: its best is final
            clock_round(relay, rnd)
        flushed = concurrent.futures.ThreadPoolExecutor(1)
        done = flushed.submit(consumer.flush, 20.0)
        request = relay.producer_message(3, "flush").flush
        ack = ipc.CommitDataRequest(flush_request_id=request.flush_request_id)
        relay.send(3, ipc.ProducerToService(commit_data=ack))
        assert done.result(timeout=30), "both producers acked, the relayed one over the link"
        flushed.shutdown()
        in_order(relay)
        packets = list(consumer.read_packets())
        remote = [p for p in packets if p.trusted_pid == 4321]
        assert [p.for_testing.counter for p in remote] == list(range(30))
        assert {(p.machine_id, p.trusted_pid) for p in remote} == {(machine_id, 4321)}
        local_packets = [p for p in packets if p.trusted_pid == local.pid]
        assert local_packets and not any(p.HasField("machine_id") for p in local_packets)
        infos = {p.machine_id: p.system_info for p in packets if p.HasField("system_info")}
        assert set(infos) == {0, machine_id}
        assert infos[machine_id].utsname.machine == "m-robot1"
        (sync,) = [p for p in packets if p.HasField("remote_clock_sync")]
        assert sync.machine_id == machine_id
        client, host = (sync.remote_clock_sync.synced_clocks[0].client_clocks,
                        sync.remote_clock_sync.synced_clocks[0].host_clocks)  # fmt: skip
        offset = client.clocks[0].timestamp - host.clocks[0].timestamp
        assert abs(offset - 7_000_000_000) < 1_000_000_000
        state = rt.control.query_state(timeout=5)
        (machine,) = state.machines
        assert (machine.id, machine.name, machine.connected, machine.producers) == (
            machine_id, "robot1", True, 1,
        )  # fmt: skip
        assert machine.relay_key == relay_keys.load_public(keys.relay_public).decode()
        assert [p.machine_id for p in state.producers if p.pid == 4321] == [machine_id]
    finally:
        relay.close()


def test_relay_with_a_key_not_accepted_is_refused_and_counted(rt: Runtime, keys: Keys):
    endpoint = start_curve_service(rt, keys)
    stranger = FakeRelay(endpoint, keys.stranger_secret, keys.service_public)
    plain = FakeRelay(endpoint)  # no CURVE at all
    junk = socket.create_connection(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])))
    try:
        junk.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(4096))
        for relay in (stranger, plain):
            init = ipc.RelayToService(init_relay=ipc.InitRelay(machine_name="x"))
            try:  # a refused handshake leaves the DEALER no peer: a send would block
                relay.sock.send_multipart(framing.encode_channel(0, init), zmq.NOBLOCK)
            except zmq.Again:
                pass

        def refused() -> int:
            return rt.control.query_state(timeout=5).refusals["relay_key_not_accepted"]

        assert wait_for(refused, 20, "the stranger's refusal counted") == 1
        assert stranger.recv(0.5) is None and plain.recv(0.1) is None
        assert "is not in --relay-clients" in rt.logs()
        assert list(rt.control.query_state(timeout=5).machines) == []
        # The accepted relay still gets in; its malformed frames are dropped and logged.
        good = FakeRelay(endpoint, keys.relay_secret, keys.service_public)
        try:
            good.sock.send_multipart([b"no channel"])
            good.sock.send_multipart([framing.RELAY_CHANNEL.pack(0), b"\xff\xff\xff"])
            assert good.init() != 0
            assert "dropped a relay message" in rt.logs()
        finally:
            good.close()
    finally:
        junk.close()
        stranger.close()
        plain.close()


def test_insecure_link_and_a_relay_gone_silent_is_lost(rt: Runtime):
    endpoint = start_service(rt, "--relay-insecure", "--relay-timeout-s", "1")
    relay = FakeRelay(endpoint)
    try:
        machine_id = relay.init("quiet")
        # The service heartbeats the relay on its own: a relay whose heartbeats
        # wait behind its chunks on a slow link still hears it.
        assert relay.heard_heartbeat(timeout=5)
        relay.producer(1, pid=999, source="linux.ftrace")
        state = rt.control.query_state(timeout=5)
        assert [(m.id, m.relay_key, m.connected) for m in state.machines] == [
            (machine_id, "", True)
        ]

        def lost():
            state = rt.control.query_state(timeout=5)
            (machine,) = state.machines
            gone = not machine.connected and not [p for p in state.producers if p.pid == 999]
            return state if gone else None

        state = wait_for(lost, 20, "the silent relay to be lost")
        assert [p.machine_id for p in state.producers] == []
        assert "lost the relay of machine 'quiet'" in rt.logs()
        relay.send(1, ipc.ProducerToService(heartbeat=ipc.Heartbeat()))
        assert relay.control().error.message == UNKNOWN_RELAY
        assert relay.init("quiet") == machine_id, "it comes back under the same id"
    finally:
        relay.close()


@pytest.mark.timeout(60)
def test_service_cli_refuses_plain_tcp_without_the_flag(rt: Runtime, keys: Keys):
    port = free_port()
    base = [sys.executable, "-m", "actors.service", "--producer-endpoint", rt.producer_endpoint,
            "--consumer-endpoint", rt.consumer_endpoint]  # fmt: skip
    plain = rt.run([*base, "--relay-endpoint", f"tcp://127.0.0.1:{port}"])
    assert plain.returncode == 2
    assert "--relay-insecure" in plain.stderr and "--relay-key" in plain.stderr
    both = rt.run([*base, "--relay-endpoint", f"tcp://127.0.0.1:{port}", "--relay-insecure",
                   "--relay-key", str(keys.service_secret)])  # fmt: skip
    assert both.returncode == 2 and "takes no keys" in both.stderr
    not_secret = rt.run([*base, "--relay-endpoint", f"tcp://127.0.0.1:{port}",
                         "--relay-key", str(keys.service_public),
                         "--relay-clients", str(keys.clients)])  # fmt: skip
    assert not_secret.returncode == 1 and "no secret key" in not_secret.stderr
    no_endpoint = rt.run([*base, "--relay-insecure"])
    assert no_endpoint.returncode == 2 and "need --relay-endpoint" in no_endpoint.stderr
