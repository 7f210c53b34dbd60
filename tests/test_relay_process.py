"""The relay as a process (python -m actors.relay): real producers (actors.producer)
connect to it as to a service, and it speaks to an in-test central service over
tcp://127.0.0.1 with CURVE (tests/relay_central.py), so these tests need no
central service of tracebus.

What a user relies on: the producers' packets arrive whole at the central side as
inline chunks, with the flush ack after them; the producer is announced with the
pid its kernel gave; a dead producer is said; the clocks are synced in bursts; a
link that goes silent is noticed, the producers' instances stopped, what could
not be sent counted and reported once the link is back; a key the central side
does not list gets no link; bad flags are refused with what to pass; a producer
path holding anything but a stale socket is refused and left alone.
"""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from protos import data_source_config_pb2 as dsc
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import (
    CHUNK_HEADER,
    CHUNK_HEADER_SIZE,
    FIRST_PACKET_CONTINUES,
    LAST_PACKET_CONTINUES,
    unpack_packets,
)
from shm.packets import parse_fragments_untrusted
from tests.processes import PYTHON, Runtime
from tests.relay_central import MACHINE_ID, FakeCentral, Keys
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(120)
SYNTHETIC = "tracebus.synthetic"
SEED = 11


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime() as runtime:
        yield runtime


@pytest.fixture
def keys(rt: Runtime) -> Keys:
    return Keys(rt.dir / "keys")


@pytest.fixture
def central(keys: Keys) -> Iterator[FakeCentral]:
    fake = FakeCentral(keys)
    try:
        yield fake
    finally:
        fake.close()


def start_relay(
    rt: Runtime,
    central: FakeCentral,
    keys: Keys,
    *args: str,
    key: Path | None = None,
    service: str | None = None,
):
    argv = [
        "-m", "actors.relay", "--service", service or central.endpoint,
        "--key", str(key or keys.relay_secret), "--service-key", str(keys.service_public),
        "--producer-endpoint", rt.producer_endpoint, "--machine-name", "m1", *args,
    ]  # fmt: skip
    return rt.spawn("relay", argv, stderr="lines")


def start_producer(rt: Runtime, name: str = "alpha"):
    argv = ["-m", "actors.producer", "--name", name, "--producer-endpoint", rt.producer_endpoint]
    return rt.spawn(name, argv)


def wait_log(rt: Runtime, central: FakeCentral, proc, pattern: str) -> re.Match[str]:
    """The relay's log line matching `pattern`, pumping the central side meanwhile."""
    return central.wait(lambda: re.search(pattern, rt.output(proc)), 30, repr(pattern))


def announced(central: FakeCentral, pid: int) -> int:
    """The channel of the producer of `pid` once the relay announced it and its
    synthetic data source (0 until then)."""
    for arrival in central.of_kind("initialize_connection"):
        if arrival.msg.initialize_connection.claimed_pid == pid:
            sources = central.of_kind("register_data_source", arrival.channel)
            names = {a.msg.register_data_source.descriptor.name for a in sources}
            return arrival.channel if SYNTHETIC in names else 0
    return 0


def start_instance(central: FakeCentral, relay: bytes, channel: int, count: int, rate: int = 0):
    config = dsc.DataSourceConfig(name=SYNTHETIC, target_buffer=0)
    config.for_testing.message_count = count
    config.for_testing.message_size = 40
    config.for_testing.seed = SEED
    config.for_testing.max_messages_per_second = rate
    data = config.SerializeToString()
    setup = ipc.SetupTracing(shm_size_bytes=64 * 1024, shm_page_size_bytes=4096)
    central.send(relay, channel, ipc.ServiceToProducer(setup_tracing=setup))
    setup_ds = ipc.SetupDataSource(instance_id=1, data_source_config=data)
    central.send(relay, channel, ipc.ServiceToProducer(setup_data_source=setup_ds))
    start = ipc.StartDataSource(instance_id=1, data_source_config=data)
    central.send(relay, channel, ipc.ServiceToProducer(start_data_source=start))


def chunks_of(central: FakeCentral, channel: int) -> list[bytes]:
    return [
        move.data
        for a in central.of_kind("commit_data", channel)
        for move in a.msg.commit_data.chunks_to_move
    ]


def packets_of(chunks: list[bytes]) -> list[pb.TracePacket]:
    """Whole packets of one writer's chunks, reassembled in chunk id order."""
    packets, pending = [], None
    for data in sorted(chunks, key=lambda d: CHUNK_HEADER.unpack_from(d)[0]):
        _chunk_id, _writer, word = CHUNK_HEADER.unpack_from(data)
        count, flags = unpack_packets(word)
        bounds, _status = parse_fragments_untrusted(data, CHUNK_HEADER_SIZE, len(data), count)
        fragments = [data[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]
        for j, fragment in enumerate(fragments):
            if j == 0 and flags & FIRST_PACKET_CONTINUES and pending is not None:
                fragment, pending = pending + fragment, None
            if j == len(fragments) - 1 and flags & LAST_PACKET_CONTINUES:
                pending = fragment
                continue
            if fragment:
                packets.append(pb.TracePacket.FromString(fragment))
    return packets


def flush_ids(central: FakeCentral) -> list[int]:
    return [a.msg.commit_data.flush_request_id for a in central.of_kind("commit_data")]


def counters(chunks: list[bytes]) -> list[int]:
    return [p.for_testing.counter for p in packets_of(chunks) if p.HasField("for_testing")]


def test_producer_data_crosses_the_relay_as_inline_chunks(rt, central, keys):
    relay_proc = start_relay(rt, central, keys)
    init = central.wait(lambda: central.of_kind("init_relay"), 30, "InitRelay")[0]
    assert init.msg.init_relay.machine_name == "m1"
    assert init.msg.init_relay.machine_id_hint.endswith("/m1")
    assert pb.SystemInfo.FromString(init.msg.init_relay.system_info).utsname.sysname == "Linux"
    wait_log(rt, central, relay_proc, rf"link up: machine id {MACHINE_ID}")
    producer = start_producer(rt)
    channel = central.wait(lambda: announced(central, producer.pid), 30, "the producer")
    start_instance(central, init.relay, channel, count=300)
    central.wait(lambda: len(counters(chunks_of(central, channel))) >= 290, 30, "packets")
    # The flush ack comes after the chunks it covers; then every packet is there.
    flush = ipc.FlushRequest(flush_request_id=5, instance_ids=[1])
    central.send(init.relay, channel, ipc.ServiceToProducer(flush=flush))
    central.wait(lambda: 5 in flush_ids(central), 30, "the flush ack")
    assert counters(chunks_of(central, channel)) == list(range(1, 301))
    assert {p.for_testing.str[:3] for p in packets_of(chunks_of(central, channel))} <= {"11:"}
    # The producer's death is said on the control channel.
    producer.send_signal(signal.SIGKILL)
    producer.wait(10)

    def gone() -> bool:
        return any(a.msg.producer_gone.channel == channel for a in central.of_kind("producer_gone"))

    central.wait(gone, 30, "RelayProducerGone")
    # A relay that stops says its producers' end (the service need not wait for it).
    beta = start_producer(rt, "beta")
    second = central.wait(lambda: announced(central, beta.pid), 30, "the second producer")
    relay_proc.send_signal(signal.SIGTERM)

    def beta_gone() -> bool:
        return any(a.msg.producer_gone.channel == second for a in central.of_kind("producer_gone"))

    central.wait(beta_gone, 30, "RelayProducerGone at the relay's stop")
    assert rt.finish(relay_proc) == 0


def test_clock_sync_runs_bursts_of_rounds(rt, central, keys):
    relay_proc = start_relay(rt, central, keys, "--clock-sync-interval-s", "1")

    def updates() -> list:
        return [
            a
            for a in central.of_kind("sync_clock")
            if a.msg.sync_clock.phase == ipc.SyncClock.UPDATE
        ]

    central.wait(lambda: {a.msg.sync_clock.burst for a in updates()} >= {1, 2}, 30, "two bursts")
    first = [a.msg.sync_clock for a in updates() if a.msg.sync_clock.burst == 1]
    assert len(first) == 5
    pings = {a.msg.sync_clock.round: a.msg.sync_clock for a in central.of_kind("sync_clock")
             if a.msg.sync_clock.phase == ipc.SyncClock.PING}  # fmt: skip
    for update in first:
        assert {c.clock_id for c in update.clocks} == {6, 3, 5, 1}
        ping = pings[update.round]
        boot = {c.clock_id: c.timestamp for c in ping.clocks}[6]
        after = {c.clock_id: c.timestamp for c in update.clocks}[6]
        assert update.client_round_trip_ns == after - boot > 0
    assert rt.stop(relay_proc) == 0


def test_a_silent_link_goes_down_and_what_was_lost_is_reported(rt, central, keys):
    """The network between the relay and the central side stops carrying bytes
    (a black hole): nothing comes from the service and nothing more leaves, so
    the link is down after the timeout."""
    proxy = TcpProxy(central.port)
    try:
        _silent_link_run(rt, central, keys, proxy)
    finally:
        proxy.close()


def _silent_link_run(rt: Runtime, central: FakeCentral, keys: Keys, proxy: TcpProxy) -> None:
    relay_proc = start_relay(rt, central, keys, "--link-timeout-s", "1.5", service=proxy.endpoint)
    init = central.wait(lambda: central.of_kind("init_relay"), 30, "InitRelay")[0]
    producer = start_producer(rt)
    channel = central.wait(lambda: announced(central, producer.pid), 30, "the producer")
    start_instance(central, init.relay, channel, count=1_000_000, rate=2000)
    central.wait(lambda: chunks_of(central, channel), 30, "chunks")
    proxy.stall()
    wait_log(rt, central, relay_proc, r"link down: no message from the service and nothing sent")
    sent_before = len(central.of_kind("init_relay"))
    proxy.restore()
    wait_log(rt, central, relay_proc, r"dropped \d+ chunks \(\d+ bytes\) without a link")
    assert len(central.of_kind("init_relay")) > sent_before
    # The link is back: the producer is announced again on its channel, the loss said.
    # A RelayLoss follows each link up: the first (nothing lost, nothing sent yet)
    # is the service's baseline; the second says what the silence cost.
    losses = central.wait(lambda: central.of_kind("loss")[1:], 30, "a second RelayLoss")
    first = central.of_kind("loss")[0].msg.loss
    assert not first.buffers and not first.sent
    lost = {b.target_buffer: b.chunks for b in losses[0].msg.loss.buffers}
    assert lost.get(0, 0) > 0
    sent = {b.target_buffer: b.chunks for b in losses[0].msg.loss.sent}
    assert sent.get(0, 0) > 0  # every chunk ZeroMQ took before, for the in-flight count
    central.wait(lambda: len(central.of_kind("initialize_connection", channel)) >= 2, 30, "again")
    assert rt.stop(relay_proc) == 0
    assert rt.stop(producer) == 0


def test_an_unknown_relay_error_starts_the_link_over(rt, central, keys):
    relay_proc = start_relay(rt, central, keys)
    wait_log(rt, central, relay_proc, r"link up")
    central.forget = True  # the service restarted: it knows no relay
    wait_log(rt, central, relay_proc, r"link down: the service says: unknown relay")
    central.forget = False
    central.wait(lambda: rt.output(relay_proc).count("link up") >= 2, 30, "the link again")
    assert rt.stop(relay_proc) == 0


def test_a_wrong_service_key_is_said_and_the_link_never_comes_up(rt, central, keys):
    other_public = keys.dir / "stranger.key"  # not the service's
    argv = [
        "-m", "actors.relay", "--service", central.endpoint, "--key", str(keys.relay_secret),
        "--service-key", str(other_public), "--producer-endpoint", rt.producer_endpoint,
    ]  # fmt: skip
    relay_proc = rt.spawn("relay", argv, stderr="lines")
    wait_log(rt, central, relay_proc, r"the handshake with .* failed: .*--service-key")
    assert central.arrivals == []
    assert rt.stop(relay_proc) == 0


def test_an_insecure_relay_gets_no_link_to_a_curve_service(rt, central):
    argv = [
        "-m", "actors.relay", "--service", central.endpoint, "--insecure",
        "--producer-endpoint", rt.producer_endpoint,
    ]  # fmt: skip
    relay_proc = rt.spawn("relay", argv, stderr="lines")
    wait_log(rt, central, relay_proc, r"the handshake with .* failed: .*--insecure on both sides")
    assert central.arrivals == []
    assert rt.stop(relay_proc) == 0


def test_a_relay_key_the_service_does_not_list_gets_no_link(rt, central, keys):
    relay_proc = start_relay(rt, central, keys, key=keys.stranger_secret)
    central.wait(lambda: central.refused >= 1, 30, "a refused handshake")
    wait_log(rt, central, relay_proc, r"refused this relay's key .*--relay-clients")
    assert rt.finish(relay_proc) == 1  # ZeroMQ would not retry: the relay says so and exits
    assert central.arrivals == []
    assert "link up" not in rt.output(relay_proc)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ([], "needs CURVE keys"),
        (["--insecure", "--key", "k.key_secret"], "exclude each other"),
        (["--key", "k.key_secret"], "needs CURVE keys"),
    ],
)
def test_the_link_is_not_plain_tcp_without_the_flag(rt, flags, says):
    result = rt.run([PYTHON, "-m", "actors.relay", "--service", "tcp://127.0.0.1:9", *flags])
    assert result.returncode == 2
    assert says in result.stderr


def test_an_unreadable_key_file_is_refused(rt, keys):
    result = rt.run([
        PYTHON, "-m", "actors.relay", "--service", "tcp://127.0.0.1:9",
        "--key", str(keys.dir / "missing.key_secret"), "--service-key", str(keys.service_public),
    ])  # fmt: skip
    assert result.returncode == 2
    assert "missing.key_secret" in result.stderr


def stale_socket(path: Path) -> Path:
    """A socket file nobody listens on (its process crashed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    return path


@pytest.mark.parametrize("kind", ["a file", "a symlink to a stale socket"])
def test_a_producer_path_that_is_no_socket_is_refused_and_left_alone(rt, kind):
    """The relay claims its producer socket's path as the service does: only a
    stale socket is replaced; anything else there is refused, not unlinked."""
    path = rt.dir / "p"
    if kind == "a file":
        path.write_text("not ours")
    else:
        path.symlink_to(stale_socket(rt.dir / "stale"))
    result = rt.run([
        PYTHON, "-m", "actors.relay", "--service", "tcp://127.0.0.1:9", "--insecure",
        "--producer-endpoint", rt.producer_endpoint,
    ], timeout=30)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "exists and is not a socket" in result.stderr
    if kind == "a file":
        assert path.read_text() == "not ours"
    else:
        assert path.is_symlink()


def vm_hwm_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def test_a_slow_link_fills_the_producers_smb_and_every_packet_is_there_or_counted(
    rt, central, keys
):
    """The link to the central side carries 256 KiB/s while the producer writes
    40 MB, with the default link timeout and a central side that only answers
    (no heartbeats of its own): the answers to the relay's heartbeats wait behind
    the chunks in flight, yet a link that moves data stays up; the relay's queue
    stays within its bound, the producer's SMB fills and its writer drops (its
    policy), and once the link drains every packet arrived or is counted."""
    proxy = TcpProxy(central.port, upstream_bytes_s=256 << 10)
    try:
        relay_proc = start_relay(rt, central, keys, "--send-queue-mb", "1", service=proxy.endpoint)
        _slow_link_run(rt, central, relay_proc)
    finally:
        proxy.close()


def _slow_link_run(rt: Runtime, central: FakeCentral, relay_proc) -> None:
    init = central.wait(lambda: central.of_kind("init_relay"), 30, "InitRelay")[0]
    producer = start_producer(rt)
    channel = central.wait(lambda: announced(central, producer.pid), 30, "the producer")
    central.wait(lambda: central.of_kind("sync_clock"), 30, "a clock round")
    baseline_kb = vm_hwm_kb(relay_proc.pid)
    config = dsc.DataSourceConfig(name=SYNTHETIC, target_buffer=0)
    config.for_testing.message_count, config.for_testing.message_size = 40_000, 1000
    config.for_testing.seed = SEED
    data = config.SerializeToString()
    setup = ipc.SetupTracing(shm_size_bytes=64 * 1024, shm_page_size_bytes=4096)
    for msg in (
        ipc.ServiceToProducer(setup_tracing=setup),
        ipc.ServiceToProducer(setup_data_source={"instance_id": 1, "data_source_config": data}),
        ipc.ServiceToProducer(start_data_source={"instance_id": 1, "data_source_config": data}),
    ):
        central.send(init.relay, channel, msg)
    log = rt.dir / "alpha.log"
    wrote = central.wait(
        lambda: re.search(r"wrote (\d+) packets", log.read_text()), 60, "the source's end"
    )
    assert vm_hwm_kb(relay_proc.pid) - baseline_kb < 32 * 1024  # bounded: 1 MiB + pipes
    flush = ipc.FlushRequest(flush_request_id=9, instance_ids=[1])
    central.send(init.relay, channel, ipc.ServiceToProducer(flush=flush))
    central.wait(lambda: 9 in flush_ids(central), 90, "the flush ack")
    assert "link down" not in rt.output(relay_proc)
    received = counters(chunks_of(central, channel))
    assert len(received) == len(set(received))
    dropped = max(
        (s.dropped_packets for a in central.of_kind("commit_data", channel)
         for s in a.msg.commit_data.writer_stats),
        default=0,
    )  # fmt: skip
    assert dropped > 0, "the link was not slow enough to fill the SMB"
    assert len(received) + dropped == int(wrote.group(1)) == 40_000
    assert rt.stop(relay_proc) == 0


def channels_of(central: FakeCentral, pid: int) -> list[int]:
    """The channels the producer of `pid` was announced on, in order."""
    inits = central.of_kind("initialize_connection")
    return sorted({a.channel for a in inits if a.msg.initialize_connection.claimed_pid == pid})


def test_a_stopped_relay_comes_back_with_its_producers(rt, central, keys):
    """SIGSTOP the relay until its producer gives it up: on SIGCONT the producer,
    reconnected on its own, is announced again on a new channel (whether the
    relay found its link silent too depends on what was in flight)."""
    relay_proc = start_relay(rt, central, keys, "--link-timeout-s", "2")
    producer = start_producer(rt)
    central.wait(lambda: announced(central, producer.pid), 30, "the producer")
    # The producer gives a service up only once one answered its heartbeats (every
    # second): let the relay's own heartbeats (every second too) show some passed.
    beats = len(central.of_kind("heartbeat"))
    central.wait(lambda: len(central.of_kind("heartbeat")) >= beats + 4, 30, "heartbeats")
    log = rt.dir / "alpha.log"
    relay_proc.send_signal(signal.SIGSTOP)
    try:
        central.wait(lambda: "lost the tracing service" in log.read_text(), 30, "the give-up")
    finally:
        relay_proc.send_signal(signal.SIGCONT)
    central.wait(lambda: len(channels_of(central, producer.pid)) >= 2, 30, "a new channel")
    assert rt.stop(relay_proc) == 0
