"""Tracing across machines, end to end: a central service and two relays, each
relay with its own runtime directory and producers, over 127.0.0.1 TCP with
CURVE. One relay and its producers run in a time namespace whose BOOTTIME and
MONOTONIC are OFFSET_S ahead (`unshare --time`), as another machine's clocks
would be: the trace puts every machine on the service's timeline within 1 ms.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
from collections.abc import Sequence
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors import relay_keys
from tests.processes import Proc, Runtime
from tests.tcp_proxy import TcpProxy
from tests.waiting import wait_for
from tracebus.remote_clocks import BOOTTIME, host_time, machine_offsets

pytestmark = pytest.mark.timeout(180)

OFFSET_S = 3600  # the namespaced machine's clocks run an hour ahead
MS = 1_000_000
CLOCK_SOURCE = "test.clock"
TIME_NS = ["unshare", "--time", "--boottime", str(OFFSET_S), "--monotonic", str(OFFSET_S)]


def in_own_time_namespace(pid: int) -> bool:
    return os.readlink(f"/proc/{pid}/ns/time") != os.readlink("/proc/self/ns/time")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_namespaces_work() -> bool:
    return shutil.which("unshare") is not None and shutil.which("nsenter") is not None


class Machines:
    """The keys, the central service and the relays of one test."""

    def __init__(self, rt: Runtime, *names: str) -> None:
        self.rt = rt
        self.keys = rt.dir / "keys"
        relay_keys.generate(self.keys, "service")
        for name in names:
            relay_keys.generate(self.keys / "relays", name)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"

    def start_service(self, *args: str) -> Proc:
        return self.rt.start_service(
            "--relay-endpoint", self.endpoint,
            "--relay-key", str(self.keys / "service.key_secret"),
            "--relay-clients", str(self.keys / "relays"),
            *args,
        )  # fmt: skip

    def producer_endpoint(self, name: str) -> str:
        path = self.rt.dir / name
        path.mkdir(exist_ok=True)
        return f"ipc://{path}/p"

    def start_relay(
        self, name: str, *args: str, prefix: Sequence[str] = (), service: str | None = None
    ) -> Proc:
        argv = ["-m", "actors.relay", "--service", service or self.endpoint]
        argv += ["--machine-name", name, "--producer-endpoint", self.producer_endpoint(name)]
        argv += ["--key", str(self.keys / "relays" / f"{name}.key_secret")]
        argv += ["--service-key", str(self.keys / "service.key"), *args]
        return self.rt.spawn(f"relay-{name}", argv, prefix=prefix)

    def start_producer(self, machine: str, name: str, prefix: Sequence[str] = ()) -> Proc:
        argv = ["-m", "actors.producer", "--name", name, "--module", "tests.clock_source"]
        argv += ["--producer-endpoint", self.producer_endpoint(machine)]
        return self.rt.spawn(name, argv, prefix=prefix)

    def wait_machines(self, *names: str) -> dict[str, int]:
        """Machine name -> id, once every named machine's relay is connected and has a
        producer of the clock source registered."""

        def ready() -> dict[str, int] | None:
            state = self.rt.control.query_state(timeout=5)
            ids = {m.name: m.id for m in state.machines if m.connected}
            hosting = {
                d.producer_id for d in state.data_sources if d.descriptor.name == CLOCK_SOURCE
            }
            machines_hosting = {p.machine_id for p in state.producers if p.id in hosting}
            if all(n in ids and ids[n] in machines_hosting for n in names):
                return {n: ids[n] for n in names}
            return None

        return wait_for(ready, 60, f"machines {', '.join(names)} with a clock producer")


def record(rt: Runtime, min_packets: int, machines: Sequence[str] = ()) -> list[pb.TracePacket]:
    """A session of the clock source on every machine (or on those named, by
    machine_name_filter), until each producer wrote `min_packets`; its packets."""
    config = pb.TraceConfig(trace_all_machines=not machines)
    config.buffers.add(size_kb=8192)
    ds = config.data_sources.add()
    ds.config.name = CLOCK_SOURCE
    ds.machine_name_filter.extend(machines)
    consumer = rt.consumer(name="relay-e2e")
    consumer.enable(config)

    def enough() -> bool:
        return all(b.bytes_written > min_packets * 64 for b in consumer.stats().buffer_stats)

    wait_for(enough, 30, "the clock packets")
    consumer.disable()
    return list(consumer.read_packets())


@pytest.mark.skipif(not time_namespaces_work(), reason="unshare/nsenter (util-linux) missing")
def test_two_relays_one_session_machine_ids_and_one_timeline(rt: Runtime) -> None:
    m = Machines(rt, "m1", "m2")
    m.start_service()
    rt.start_producer("central", "--module", "tests.clock_source", data_sources=[CLOCK_SOURCE])
    m.start_relay("m1")
    m.start_producer("m1", "m1-clock")
    relay2 = m.start_relay("m2", prefix=TIME_NS)
    # unshare moves into the new time namespace at its exec: enter it only once it has
    # (else the producer would join the host's and run an hour behind its relay).
    wait_for(lambda: in_own_time_namespace(relay2.pid), 30, "relay m2 in its time namespace")
    m.start_producer("m2", "m2-clock", prefix=["nsenter", "--time", "--target", str(relay2.pid)])
    ids = m.wait_machines("m1", "m2")
    assert 0 not in ids.values() and ids["m1"] != ids["m2"]

    packets = record(rt, 50)
    clocks = [p for p in packets if p.HasField("for_testing")]
    by_producer = {
        name: [p for p in clocks if p.for_testing.str == name]
        for name in ("central", "m1-clock", "m2-clock")
    }
    assert all(len(v) >= 20 for v in by_producer.values()), {
        k: len(v) for k, v in by_producer.items()
    }
    # Machine ids: the central machine's packets carry none, as in Perfetto.
    assert {p.machine_id for p in by_producer["central"]} == {0}
    assert {p.machine_id for p in by_producer["m1-clock"]} == {ids["m1"]}
    assert {p.machine_id for p in by_producer["m2-clock"]} == {ids["m2"]}
    # Each machine's process is on its own track: its descriptor carries its machine.
    tracks = {
        (p.machine_id, p.track_descriptor.process.process_name)
        for p in packets
        if p.HasField("track_descriptor")
    }
    assert {(0, "central"), (ids["m1"], "m1-clock"), (ids["m2"], "m2-clock")} <= tracks
    # The relays' machines are described: system_info and clock sync, stamped with their id.
    for machine in ids.values():
        assert any(p.machine_id == machine and p.HasField("system_info") for p in packets)
        assert any(p.machine_id == machine and p.HasField("remote_clock_sync") for p in packets)

    # A session may keep to some machines ("host": the service's own).
    only = record(rt, 20, machines=["m2", "host"])
    assert {p.for_testing.str for p in only if p.HasField("for_testing")} == {"central", "m2-clock"}

    offsets = machine_offsets(packets)
    assert abs(offsets[ids["m2"]][BOOTTIME] - OFFSET_S * 1_000_000_000) < MS
    assert abs(offsets[ids["m1"]][BOOTTIME]) < MS
    # REALTIME is not namespaced: realtime minus the boottime on the service's
    # timeline is one figure on every machine (the time between two clock reads aside).
    central = statistics.median(p.for_testing.counter - p.timestamp for p in by_producer["central"])
    for name in ("m1-clock", "m2-clock"):
        skew = [p.for_testing.counter - host_time(p, offsets) - central for p in by_producer[name]]
        assert max(abs(s) for s in skew) < MS, (name, min(skew), max(skew))


def test_a_relay_without_an_accepted_key_is_refused_and_counted(rt: Runtime) -> None:
    m = Machines(rt, "good")
    relay_keys.generate(rt.dir / "stranger", "bad")
    m.start_service()
    argv = ["-m", "actors.relay", "--service", m.endpoint, "--machine-name", "bad"]
    argv += ["--producer-endpoint", m.producer_endpoint("bad")]
    argv += ["--key", str(rt.dir / "stranger" / "bad.key_secret")]
    argv += ["--service-key", str(m.keys / "service.key")]
    rt.spawn("relay-bad", argv)

    def refused() -> bool:
        return rt.control.query_state(timeout=5).refusals.get("relay_key_not_accepted", 0) >= 1

    wait_for(refused, 30, "the refusal of the unknown key")
    assert not rt.control.query_state(timeout=5).machines


def relay_log(rt: Runtime, name: str) -> str:
    return Path(rt.dir / f"relay-{name}.log").read_text(errors="replace")


# -- links that break -----------------------------------------------------------------------

SYNTHETIC = "tracebus.synthetic"
WROTE = re.compile(r"tracebus\.synthetic instance (\d+): wrote (\d+) packets")


def synthetic_config(rate: int = 400) -> pb.TraceConfig:
    config = pb.TraceConfig(trace_all_machines=True)
    config.buffers.add(size_kb=16384)
    ds = config.data_sources.add().config
    ds.name = SYNTHETIC
    ds.for_testing.message_count = 10_000_000
    ds.for_testing.max_messages_per_second = rate
    ds.for_testing.message_size = 64
    ds.for_testing.seed = 1
    return config


def start_synthetic(m: Machines, machine: str, name: str) -> Proc:
    argv = ["-m", "actors.producer", "--name", name]
    return m.rt.spawn(name, [*argv, "--producer-endpoint", m.producer_endpoint(machine)])


def hosting(rt: Runtime, machine: str, source: str = SYNTHETIC) -> set[int]:
    """Ids of the producers of `machine` (by name) that registered `source` now."""
    state = rt.control.query_state(timeout=5)
    ids = {mc.id for mc in state.machines if mc.name == machine and mc.connected}
    sources = {d.producer_id for d in state.data_sources if d.descriptor.name == source}
    return {p.id for p in state.producers if p.machine_id in ids and p.id in sources}


def buffer_bytes(consumer) -> int:
    return sum(b.bytes_written for b in consumer.stats().buffer_stats)


def grows(consumer, by: int = 4096):
    start = buffer_bytes(consumer)
    return lambda: buffer_bytes(consumer) > start + by


def sequences(packets: list[pb.TracePacket]) -> dict[int, list[pb.TracePacket]]:
    out: dict[int, list[pb.TracePacket]] = {}
    for p in packets:
        if p.HasField("for_testing") and p.for_testing.counter:
            out.setdefault(p.trusted_packet_sequence_id, []).append(p)
    return out


def unflagged_gaps(seq: list[pb.TracePacket]) -> list[tuple[int, int]]:
    """(counter before, counter after) of each gap not marked previous_packet_dropped."""
    gaps = []
    for before, after in zip(seq, seq[1:], strict=False):
        if (
            after.for_testing.counter != before.for_testing.counter + 1
            and not after.previous_packet_dropped
        ):
            gaps.append((before.for_testing.counter, after.for_testing.counter))
    return gaps


def discarded(stats: pb.TraceStats) -> int:
    return stats.chunks_discarded + sum(b.chunks_discarded for b in stats.buffer_stats)


def test_a_cut_link_loses_only_counted_chunks_and_both_sides_recover(rt: Runtime) -> None:
    """The network between a relay and the service goes away for longer than both
    sides wait: the relay keeps its producer (its instance is stopped, what it
    commits meanwhile is dropped and counted), the service ends the relay's
    producers; when the network is back the relay says what it lost, registers the
    producer again and the session records it again. Within each sequence every
    gap is flagged; what a sequence lost at its end is counted in trace_stats."""
    m = Machines(rt, "m1")
    m.start_service("--relay-timeout-s", "2")
    proxy = TcpProxy(int(m.endpoint.rsplit(":", 1)[1]))
    try:
        relay = m.start_relay("m1", "--link-timeout-s", "1", service=proxy.endpoint)
        producer = start_synthetic(m, "m1", "m1-synth")
        first = wait_for(lambda: hosting(rt, "m1"), 60, "the relayed producer")
        consumer = rt.consumer(name="link-cut")
        consumer.enable(synthetic_config())
        wait_for(grows(consumer), 30, "data through the relay")
        proxy.cut()
        wait_for(lambda: "link down" in relay_log(rt, "m1"), 30, "the relay to see the link down")
        wait_for(lambda: not hosting(rt, "m1"), 30, "the service to end the relay's producers")
        proxy.restore()
        again = wait_for(lambda: hosting(rt, "m1"), 60, "the producer registered again")
        assert again.isdisjoint(first)  # a new producer id: a new incarnation of the link
        wait_for(grows(consumer), 30, "data through the relay again")
        consumer.disable()
        packets = list(consumer.read_packets())
        stats = consumer.stats()
    finally:
        proxy.close()
    assert rt.stop(producer) == 0
    assert relay.poll() is None  # the relay lived through it
    wrote = [int(n) for _, n in WROTE.findall(Path(rt.dir / "m1-synth.log").read_text())]
    seqs = sorted(sequences(packets).values(), key=lambda s: s[0].timestamp)
    assert len(seqs) == 2 and len(wrote) == 2, (len(seqs), wrote)
    for seq in seqs:
        assert not unflagged_gaps(seq)
    # What the first sequence lost at its end is what the buffer counts as discarded:
    # its packets fill that many 4 KiB chunks (give or take the chunk a packet straddles).
    lost_tail = wrote[0] - seqs[0][-1].for_testing.counter
    record = seqs[0][-1].for_testing.ByteSize() + 3 + 2  # field tag, length; chunk record
    chunks = lost_tail * record / (4096 - 8 - 16)  # a page holds one chunk of this SMB
    (buffer,) = stats.buffer_stats
    assert chunks - 1.5 <= buffer.chunks_discarded <= chunks + 1.5, (lost_tail, buffer)
    assert "link up" in relay_log(rt, "m1")


def test_a_killed_relay_restarts_and_its_producers_come_back(rt: Runtime) -> None:
    """SIGKILL the relay mid-session: the service ends its producers within its
    relay timeout; a new relay on the same socket gets the producers back (they
    reconnect on their own) and the session records them again."""
    m = Machines(rt, "m1")
    m.start_service("--relay-timeout-s", "2")
    relay = m.start_relay("m1")
    producer = start_synthetic(m, "m1", "m1-synth")
    first = wait_for(lambda: hosting(rt, "m1"), 60, "the relayed producer")
    consumer = rt.consumer(name="relay-kill")
    consumer.enable(synthetic_config())
    wait_for(grows(consumer), 30, "data through the relay")
    relay.kill()
    relay.wait()
    wait_for(lambda: not hosting(rt, "m1"), 30, "the service to end the dead relay's producers")
    m.start_relay("m1")
    again = wait_for(lambda: hosting(rt, "m1"), 60, "the producer back through the new relay")
    assert again.isdisjoint(first)
    wait_for(grows(consumer), 30, "data through the new relay")
    consumer.disable()
    packets = list(consumer.read_packets())
    assert len(sequences(packets)) == 2
    assert all(not unflagged_gaps(s) for s in sequences(packets).values())
    assert rt.stop(producer) == 0


def test_a_restarted_service_gets_the_relay_and_its_producers_back(rt: Runtime) -> None:
    """The central service dies: the relay keeps its producers and reconnects, with
    backoff, to the service started again on the same endpoint."""
    m = Machines(rt, "m1")
    service = m.start_service()
    relay = m.start_relay("m1")
    producer = start_synthetic(m, "m1", "m1-synth")
    wait_for(lambda: hosting(rt, "m1"), 60, "the relayed producer")
    service.kill()
    service.wait()
    rt.control.close()  # the next start_service opens another
    wait_for(lambda: "link down" in relay_log(rt, "m1"), 30, "the relay to see the service gone")
    m.start_service()
    wait_for(lambda: hosting(rt, "m1"), 60, "the producer registered with the new service")
    consumer = rt.consumer(name="after-restart")
    consumer.enable(synthetic_config())
    wait_for(grows(consumer), 30, "data through the relay to the new service")
    consumer.disable()
    assert sequences(list(consumer.read_packets()))
    assert relay.poll() is None and producer.poll() is None
