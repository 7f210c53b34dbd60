"""The service core's relay side in one process: a fake relay (its producer's SMB
in process memory, chunks sent inline as a relay sends them), a fake clock."""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import machines as machines_module
from actors.core.consumer_summary import trailer_start
from actors.core.machines import (
    PAIRING_WINDOW_NS,
    SyncRound,
    machine_id_of,
    rounds_to_emit,
)
from actors.core.relays import RELAYED_PREFIX, UNKNOWN_RELAY
from actors.core.service_core import Peer, ToRelay
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import SharedMemoryABI, resolve_geometry
from shm.arbiter import SharedMemoryArbiter
from shm.commits import CommitBatch
from shm.region import InProcessRegion
from shm.writer import BufferExhaustedPolicy
from tests.test_service_core import MS, FakeConsumer, FakeProducer, Rig, to_request

BOOT, MONO = 6, 3
S = 1_000_000_000


class RelayRig(Rig):
    """A Rig that also routes ToRelay outputs, per (relay, channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.to_relays: dict[tuple[bytes, int], list] = {}

    def route(self, outputs):
        rest = []
        for out in outputs:
            if isinstance(out, ToRelay):
                self.to_relays.setdefault((out.relay, out.channel), []).append(out.msg)
            else:
                rest.append(out)
        super().route(rest)

    def relay(self, relay: bytes, clocks=None, request_id: int = 0, **kw):
        msg = ipc.RelayToService(request_id=request_id, **kw)
        host = clocks if clocks is not None else [(BOOT, self.now), (MONO, self.now - 5)]
        self.route(self.core.handle_relay(relay, msg, self.now, host, key="KEY"))

    def relayed(self, relay: bytes, channel: int, request_id: int = 0, **kw):
        msg = ipc.ProducerToService(request_id=request_id, **kw)
        self.route(self.core.handle_relay_producer(relay, channel, msg, self.now, key="KEY"))

    def take_relay(self, relay: bytes, channel: int = 0):
        return self.to_relays.pop((relay, channel), [])


def init_relay(rig: RelayRig, relay: bytes, name: str = "robot1") -> int:
    init = ipc.InitRelay(
        hello=ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION),
        machine_name=name,
        machine_id_hint=f"boot-1/{name}",
        system_info=pb.SystemInfo(
            utsname=pb.Utsname(sysname="Linux", machine=name)
        ).SerializeToString(),
    )
    rig.relay(relay, request_id=1, init_relay=init)
    (reply,) = rig.take_relay(relay)
    assert reply.init_relay.hello.error == ""
    return reply.init_relay.machine_id


class RelayedProducer:
    """A producer behind a fake relay: the relay's SMB here, commits sent inline."""

    def __init__(self, rig: RelayRig, relay: bytes, channel: int, name: str, pid: int):
        self.rig, self.relay, self.channel = rig, relay, channel
        self.writers: dict[int, object] = {}
        self.arbiter: SharedMemoryArbiter | None = None
        init = ipc.InitializeConnectionRequest(
            hello=ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION),
            producer_name=name, shm_size_hint_bytes=64 * 1024, claimed_pid=pid, claimed_uid=4242,
        )  # fmt: skip
        rig.relayed(relay, channel, 1, initialize_connection=init)
        (reply,) = self.take()
        assert reply.initialize_connection.hello.error == ""
        desc = ipc.DataSourceDescriptor(name="tracebus.synthetic")
        rig.relayed(relay, channel, 2, register_data_source=ipc.RegisterDataSourceRequest(
            descriptor=desc))  # fmt: skip
        (reply,) = self.take()
        assert reply.register_data_source.error == ""

    def take(self):
        return self.rig.take_relay(self.relay, self.channel)

    def process(self):
        for msg in self.take():
            kind = msg.WhichOneof("msg")
            if kind == "setup_tracing":
                setup = msg.setup_tracing
                assert not setup.shm_token and not setup.shm_socket, "geometry only"
                geometry = resolve_geometry(setup.shm_size_bytes, setup.shm_page_size_bytes)
                self.abi = SharedMemoryABI(InProcessRegion(geometry.size).buf, geometry)
                self.arbiter = SharedMemoryArbiter(self.abi, self._commit, sleep=lambda s: None)
            elif kind == "start_data_source":
                config = pb.DataSourceConfig.FromString(msg.start_data_source.data_source_config)
                assert self.arbiter is not None
                writer = self.arbiter.create_trace_writer(
                    config.target_buffer, BufferExhaustedPolicy.DROP
                )
                self.writers[msg.start_data_source.instance_id] = writer
                reg = ipc.RegisterTraceWriterRequest(
                    writer_id=writer.writer_id, target_buffer=config.target_buffer
                )
                self.rig.relayed(self.relay, self.channel, register_trace_writer=reg)
            elif kind == "flush":
                for instance_id in msg.flush.instance_ids:
                    self.writers[instance_id].flush()
                ack = ipc.CommitDataRequest(flush_request_id=msg.flush.flush_request_id)
                self.rig.relayed(self.relay, self.channel, commit_data=ack)

    def _commit(self, batch: CommitBatch):
        """As the relay does: each moved chunk copied out of the SMB into `data`."""
        req = to_request(batch, self.writers.values())
        for move in req.chunks_to_move:
            ref = self.abi.try_acquire_for_reading(move.page, move.chunk)
            assert ref is not None
            move.data = bytes(self.abi.buf[ref.offset : ref.offset + ref.size])
            self.abi.release_as_free(ref)
        self.rig.relayed(self.relay, self.channel, commit_data=req)


def all_machines_config(**kw) -> bytes:
    cfg = pb.TraceConfig(**kw)
    cfg.buffers.add(size_kb=64)
    cfg.data_sources.add().config.name = "tracebus.synthetic"
    return cfg.SerializeToString()


def write(producer, first: int, count: int) -> None:
    (writer,) = producer.writers.values()
    for i in range(first, first + count):
        packet = pb.TracePacket(timestamp=i + 1)
        packet.for_testing.counter = i
        writer.write_packet(packet.SerializeToString())


def session_with_a_relayed_producer(rig: RelayRig) -> tuple[RelayedProducer, FakeConsumer]:
    """A session recording every machine (consumer "c"), with a producer behind relay
    R1 (pid 777) in it, set up."""
    remote = RelayedProducer(rig, b"R1", 1, "remote", pid=777)
    consumer = FakeConsumer(rig, "c")
    cfg = all_machines_config(trace_all_machines=True)
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=cfg))
    consumer.replies()
    remote.process()
    return remote, consumer


def sync_round(rig: RelayRig, relay: bytes, rnd: int, burst: int, offset: int, trip: int):
    """One clock round; the relay's clocks run `offset` ahead of the service's."""
    c1 = [ipc.ClockValue(clock_id=BOOT, timestamp=rig.now + offset)]
    ping = ipc.SyncClock(phase=ipc.SyncClock.PING, round=rnd, burst=burst, clocks=c1)
    rig.relay(relay, sync_clock=ping)
    assert [m.sync_clock.round for m in rig.take_relay(relay)] == [rnd]
    rig.now += trip
    c2 = [ipc.ClockValue(clock_id=BOOT, timestamp=rig.now + offset)]
    update = ipc.SyncClock(
        phase=ipc.SyncClock.UPDATE, round=rnd, burst=burst, clocks=c2, client_round_trip_ns=trip
    )
    rig.relay(relay, sync_clock=update)


# -- machine ids and clock rounds ----------------------------------------------------------


def test_machine_id_is_fnv1a_low_32_bits_and_never_zero():
    assert machine_id_of("") == 0x84222325  # FNV-1a 64 offset basis, low half
    assert machine_id_of("a") == 0x8601EC8C  # FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c
    assert machine_id_of("boot/x") == machine_id_of("boot/x") != machine_id_of("boot/y")


def _round(serial: int, start_s: float, trip_s: float = 0.001) -> SyncRound:
    start, end = [(BOOT, int(start_s * S))], [(BOOT, int((start_s + trip_s) * S))]
    return SyncRound(0, start, start, end, end, 1, serial)


def test_rounds_in_one_packet_are_spaced_for_pairing_newest_preferred():
    rounds = [_round(1, 0), _round(2, 10), _round(3, 40), _round(4, 45), _round(5, 80)]
    kept = rounds_to_emit(rounds, after_serial=0)
    assert [r.serial for r in kept] == [2, 4, 5]  # 80, 45 (35 s before), 10 (35 s before)
    # What trace_processor pairs: adjacent entries (a round's end, the next one's start).
    gaps = [b.client1[0][1] - a.client2[0][1] for a, b in zip(kept, kept[1:], strict=False)]
    assert all(g >= PAIRING_WINDOW_NS for g in gaps)
    assert [r.serial for r in rounds_to_emit(rounds, after_serial=4)] == [5]
    # Bursts exactly 30 s apart: one's end is under 30 s before the next's start.
    every_30 = [_round(1, 0), _round(2, 30), _round(3, 60)]
    assert [r.serial for r in rounds_to_emit(every_30, 0)] == [1, 3]


# -- a relayed producer's data in a session -----------------------------------------------------


def test_relayed_producer_data_carries_machine_id_and_local_none():
    rig = RelayRig()
    machine_id = init_relay(rig, b"R1")
    assert machine_id == machine_id_of("boot-1/robot1")
    local = FakeProducer(rig, "local", pid=555)
    remote = RelayedProducer(rig, b"R1", 1, "remote", pid=777)
    consumer = FakeConsumer(rig, "c")
    cfg = all_machines_config(trace_all_machines=True)
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=cfg))
    (enabled,) = consumer.replies()
    assert enabled.enable_tracing.started and not enabled.enable_tracing.error
    local.process()
    remote.process()
    write(local, 0, 50)
    write(remote, 1000, 300)
    consumer.send(flush=ipc.FlushConsumerRequest(timeout_ms=1000))
    local.process()
    remote.process()
    (flushed,) = consumer.replies()
    assert flushed.flush.success, "the relayed producer's ack came inline"
    packets = consumer.read()
    testing = [p for p in packets if p.HasField("for_testing")]
    by_pid: dict[int, list[int]] = {}
    for p in testing:
        by_pid.setdefault(p.trusted_pid, []).append(p.for_testing.counter)
        assert p.machine_id == (machine_id if p.trusted_pid == 777 else 0)
        assert p.HasField("machine_id") == (p.trusted_pid == 777)
    assert by_pid == {555: list(range(50)), 777: list(range(1000, 1300))}
    assert {p.trusted_uid for p in testing if p.trusted_pid == 777} == {4242}
    (info,) = [p for p in packets if p.HasField("system_info")]  # the rig's service has none
    assert info.machine_id == machine_id and info.system_info.utsname.machine == "robot1"
    assert packets[-1].trace_stats.chunks_discarded == 0


def test_machine_id_leaves_the_trailer_readable_backwards():
    """Consumers find a packet's identity from its end (consumer_summary): the
    machine_id goes before the trailer they read."""
    rig = RelayRig()
    init_relay(rig, b"R1")
    remote, consumer = session_with_a_relayed_producer(rig)
    write(remote, 0, 5)
    (writer,) = remote.writers.values()
    writer.flush()
    consumer.send(read_buffers=ipc.ReadBuffersRequest())
    rig.idle()
    raw = [s.data for r in consumer.replies() for s in r.read_buffers.slices]
    relayed = [d for d in raw if pb.TracePacket.FromString(d).trusted_pid == 777]
    assert len(relayed) == 5
    assert all(trailer_start(d) > 0 for d in relayed)


def test_remote_producers_need_trace_all_machines_or_their_machine_name():
    rig = RelayRig()
    init_relay(rig, b"R1", "robot1")
    local = FakeProducer(rig, "local", pid=555)
    remote = RelayedProducer(rig, b"R1", 1, "remote", pid=777)
    consumer = FakeConsumer(rig, "c")
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=all_machines_config()))
    (enabled,) = consumer.replies()
    assert enabled.enable_tracing.unsupported_fields == []
    assert remote.take() == [], "no instance on another machine without trace_all_machines"
    assert local.rig.take(local.peer) != []
    consumer.send(disable_tracing=ipc.DisableTracingRequest())
    consumer.send(free_buffers=ipc.FreeBuffersRequest())
    consumer.replies()
    rig.take(local.peer)

    def set_up(msgs) -> bool:
        return "setup_data_source" in [m.WhichOneof("msg") for m in msgs]

    for names, local_in, remote_in in ((["robot1"], False, True), (["host"], True, False)):
        cfg = pb.TraceConfig.FromString(all_machines_config())
        cfg.data_sources[0].machine_name_filter.extend(names)
        other = FakeConsumer(rig, f"c-{names[0]}")
        other.send(enable_tracing=ipc.EnableTracingRequest(trace_config=cfg.SerializeToString()))
        (enabled,) = other.replies()
        assert not enabled.enable_tracing.error
        assert "machine_name_filter" not in " ".join(enabled.enable_tracing.unsupported_fields)
        assert set_up(rig.take(local.peer)) == local_in
        assert set_up(remote.take()) == remote_in
        other.send(disable_tracing=ipc.DisableTracingRequest())
        other.send(free_buffers=ipc.FreeBuffersRequest())
        rig.take(local.peer)
        remote.take()


def test_clock_rounds_become_remote_clock_sync_best_of_burst():
    rig = RelayRig()
    machine_id = init_relay(rig, b"R1")
    _, consumer = session_with_a_relayed_producer(rig)
    offset = 5 * S
    for rnd, trip in enumerate([300_000, 100_000, 900_000], start=1):
        sync_round(rig, b"R1", rnd, burst=1, offset=offset, trip=trip)
    rig.now += 40 * S
    sync_round(rig, b"R1", 4, burst=2, offset=offset, trip=200_000)
    rig.now += 2 * S  # burst 2 is over: no round for a second
    packets = consumer.read()
    (sync,) = [p for p in packets if p.HasField("remote_clock_sync")]
    assert sync.machine_id == machine_id and sync.trusted_packet_sequence_id == 1
    entries = sync.remote_clock_sync.synced_clocks
    assert len(entries) == 4, "two rounds (one per burst), two entries each"
    first_client = entries[0].client_clocks.clocks[0].timestamp
    first_host = entries[0].host_clocks.clocks[0].timestamp
    assert first_client - first_host == offset
    # burst 1's best round is the 100 us one (round 2): its C2 - C1 is its trip.
    trip = entries[1].client_clocks.clocks[0].timestamp - first_client
    assert trip == 100_000
    again = consumer.read()
    assert not [p for p in again if p.HasField("remote_clock_sync")], "each round once"
    assert not [p for p in again if p.HasField("system_info")], "system_info once"


def test_a_read_in_the_middle_of_a_burst_waits_for_its_best_round():
    rig = RelayRig()
    init_relay(rig, b"R1")
    _, consumer = session_with_a_relayed_producer(rig)
    sync_round(rig, b"R1", 1, burst=1, offset=S, trip=900_000)
    assert not [p for p in consumer.read() if p.HasField("remote_clock_sync")]
    sync_round(rig, b"R1", 2, burst=1, offset=S, trip=100_000)
    rig.now += 2 * S
    (sync,) = [p for p in consumer.read() if p.HasField("remote_clock_sync")]
    entries = sync.remote_clock_sync.synced_clocks
    assert len(entries) == 2, "one round: the burst's best"
    trip = (
        entries[1].client_clocks.clocks[0].timestamp - entries[0].client_clocks.clocks[0].timestamp
    )
    assert trip == 100_000


def test_a_session_without_a_machine_s_producers_gets_none_of_its_packets():
    rig = RelayRig()
    init_relay(rig, b"R1")
    sync_round(rig, b"R1", 1, burst=1, offset=S, trip=1000)
    rig.now += 2 * S
    consumer = FakeConsumer(rig, "c")  # the service's machine only
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=all_machines_config()))
    consumer.replies()
    packets = consumer.read()
    assert not [p for p in packets if p.machine_id], "no system_info, no clock sync of robot1"


# -- the link: unknown relays, loss, a lost relay ----------------------------------------------


def test_unknown_relay_is_told_to_init_once_a_second_and_nothing_is_processed():
    rig = RelayRig()
    init = ipc.InitializeConnectionRequest(hello=ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION))
    rig.relayed(b"X", 1, initialize_connection=init)
    rig.relay(b"X", heartbeat=ipc.Heartbeat())
    (error,) = rig.take_relay(b"X")
    assert error.error.message == UNKNOWN_RELAY
    assert rig.take_relay(b"X", 1) == [] and len(rig.core.producers) == 0
    rig.now += 1001 * MS
    rig.relay(b"X", heartbeat=ipc.Heartbeat())
    assert [m.error.message for m in rig.take_relay(b"X")] == [UNKNOWN_RELAY]


def test_relay_loss_counts_as_discarded_chunks_of_its_buffers():
    """Only in buffers the relay's producers may write to: a relay (or a producer
    behind it) naming another session's buffer charges nothing there."""
    rig = RelayRig()
    init_relay(rig, b"R1")
    remote, consumer = session_with_a_relayed_producer(rig)
    other = FakeConsumer(rig, "d")  # a session of the service's machine only
    other.send(enable_tracing=ipc.EnableTracingRequest(trace_config=all_machines_config()))
    other.replies()
    buffer_id, other_buffer = sorted(rig.core.buffers)
    loss = ipc.RelayLoss()
    loss.buffers.add(target_buffer=buffer_id, chunks=7, bytes=7 * 4096)
    loss.buffers.add(target_buffer=other_buffer, chunks=9)  # not its producers': nothing
    loss.buffers.add(target_buffer=999, chunks=5)  # no such buffer: nothing
    rig.relay(b"R1", loss=ipc.RelayLoss())  # the first of a relay id: its baseline
    rig.relay(b"R1", loss=loss)
    stats = consumer.read()[-1].trace_stats
    assert stats.buffer_stats[0].chunks_discarded == 7
    assert other.read()[-1].trace_stats.buffer_stats[0].chunks_discarded == 0


def test_chunks_a_relay_sent_that_never_came_are_discarded_once():
    """RelayLoss.sent against what came from that relay id: the difference was lost
    in a connection that broke; a later report does not count it again, and a
    relay's first report (to a service started after it sent) is only a baseline."""
    rig = RelayRig()
    init_relay(rig, b"R1")
    remote, consumer = session_with_a_relayed_producer(rig)
    (buffer_id,) = rig.core.buffers
    baseline = ipc.RelayLoss()
    baseline.sent.add(target_buffer=buffer_id, chunks=100)  # sent to a service before us
    rig.relay(b"R1", loss=baseline)
    write(remote, 0, 200)
    (writer,) = remote.writers.values()
    writer.flush()
    came = rig.core.buffers[buffer_id].stats.chunks_written
    assert came > 0

    def report(sent: int) -> int:
        loss = ipc.RelayLoss()
        loss.sent.add(target_buffer=buffer_id, chunks=sent)
        rig.relay(b"R1", loss=loss)
        return consumer.read()[-1].trace_stats.buffer_stats[0].chunks_discarded

    assert report(100 + came + 3) == 3  # three lost on the way
    assert report(100 + came + 3) == 3  # said again: counted once
    assert report(100 + came + 5) == 5


def test_bad_inline_chunks_are_discarded_and_counted():
    rig = RelayRig()
    init_relay(rig, b"R1")
    remote, consumer = session_with_a_relayed_producer(rig)
    (buffer_id,) = rig.core.buffers
    req = ipc.CommitDataRequest()
    req.chunks_to_move.add(target_buffer=buffer_id, data=b"\x01\x02")  # shorter than a header
    req.chunks_to_move.add(target_buffer=buffer_id, data=b"\x00" * 40000)  # over a page
    req.chunks_to_move.add(target_buffer=buffer_id + 1, data=b"\x01" * 64)  # not its buffer
    req.chunks_to_move.add(target_buffer=buffer_id)  # no data at all
    rig.relayed(b"R1", 1, commit_data=req)
    assert rig.core.counters.chunks_discarded == 4


def test_lost_relay_ends_its_producers_keeps_their_data_and_lists_the_machine():
    rig = RelayRig()
    machine_id = init_relay(rig, b"R1")
    remote, consumer = session_with_a_relayed_producer(rig)
    write(remote, 0, 20)
    (writer,) = remote.writers.values()
    writer.flush()
    consumer.send(query_service_state=ipc.QueryServiceStateRequest())
    (state,) = consumer.replies()
    assert [(p.pid, p.machine_id) for p in state.service_state.producers] == [(777, machine_id)]
    (machine,) = state.service_state.machines
    assert (machine.id, machine.name, machine.connected, machine.producers) == (
        machine_id, "robot1", True, 1,
    )  # fmt: skip
    rig.now += 11 * S
    assert rig.core.relays_silent(rig.now, 10 * S) == [b"R1"]
    rig.route(rig.core.relay_lost(b"R1", rig.now))
    assert len(rig.core.producers) == 0
    consumer.send(query_service_state=ipc.QueryServiceStateRequest())
    (state,) = consumer.replies()
    (machine,) = state.service_state.machines
    assert (machine.connected, machine.producers) == (False, 0)
    departed = state.service_state.departed_producers
    assert [(p.pid, p.machine_id) for p in departed] == [(777, machine_id)]
    kept = [p for p in consumer.read() if p.HasField("for_testing")]
    assert [p.for_testing.counter for p in kept] == list(range(20))
    assert {p.machine_id for p in kept} == {machine_id}, "stamped after it left"
    rig.relayed(b"R1", 1, heartbeat=ipc.Heartbeat())
    assert [m.error.message for m in rig.take_relay(b"R1")] == [UNKNOWN_RELAY]


def test_init_relay_again_ends_the_previous_incarnations_producers():
    rig = RelayRig()
    first = init_relay(rig, b"R1")
    RelayedProducer(rig, b"R1", 1, "remote", pid=777)
    assert len(rig.core.producers) == 1
    assert init_relay(rig, b"R1") == first
    assert len(rig.core.producers) == 0
    # The same machine back on a new connection (a restarted relay) takes over.
    RelayedProducer(rig, b"R1", 2, "remote", pid=778)
    assert init_relay(rig, b"R2") == first
    assert len(rig.core.producers) == 0
    rig.relay(b"R1", heartbeat=ipc.Heartbeat())
    assert [m.error.message for m in rig.take_relay(b"R1")] == [UNKNOWN_RELAY]


def test_a_relay_id_spoken_with_another_key_is_unknown():
    rig = RelayRig()
    init_relay(rig, b"R1")
    hb = ipc.ProducerToService(heartbeat=ipc.Heartbeat())
    rig.route(rig.core.handle_relay_producer(b"R1", 1, hb, rig.now, key="OTHER"))
    assert [m.error.message for m in rig.take_relay(b"R1")] == [UNKNOWN_RELAY]


def test_relay_of_another_protocol_version_is_refused():
    rig = RelayRig()
    init = ipc.InitRelay(hello=ipc.Hello(protocol_version=99), machine_name="x")
    rig.relay(b"R1", init_relay=init)
    (reply,) = rig.take_relay(b"R1")
    assert "protocol version 99" in reply.init_relay.hello.error
    assert len(rig.core.relays_silent(rig.now + 100 * S, S)) == 0


def test_local_peer_may_not_use_a_relayed_identity():
    rig = RelayRig()
    init_relay(rig, b"R1")
    RelayedProducer(rig, b"R1", 1, "remote", pid=777)
    spoof = Peer(RELAYED_PREFIX + (1).to_bytes(4, "big") + b"R1", 1, 1000)
    rig.producer(spoof, 5, unregister_data_source=ipc.UnregisterDataSourceRequest(
        name="tracebus.synthetic"))  # fmt: skip
    (reply,) = rig.take(spoof)
    assert "reserved" in reply.error.message
    (producer,) = rig.core.producers.values()
    assert "tracebus.synthetic" in producer.data_sources, "the relayed producer untouched"
    fresh = Peer(RELAYED_PREFIX + b"zzzz", 1, 1000)
    init = ipc.InitializeConnectionRequest(hello=ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION))
    rig.producer(fresh, 6, initialize_connection=init)
    (reply,) = rig.take(fresh)
    assert "reserved" in reply.error.message
    assert len(rig.core.producers) == 1


def test_the_machine_table_forgets_the_longest_disconnected_past_its_bound(monkeypatch):
    monkeypatch.setattr(machines_module, "MAX_MACHINES", 3)
    rig = RelayRig()
    for i in range(3):
        init_relay(rig, f"R{i}".encode(), name=f"m{i}")
        rig.now += S
    rig.route(rig.core.relay_lost(b"R1", rig.now))
    rig.route(rig.core.relay_lost(b"R0", rig.now))
    init_relay(rig, b"R3", name="m3")
    names = sorted(m.name for m in rig.core._ctx.machines)
    assert names == ["m1", "m2", "m3"]  # m0 was seen last the longest ago


def test_a_clone_carries_the_relayed_machines_packets_of_its_source():
    rig = RelayRig()
    machine_id = init_relay(rig, b"R1")
    remote = RelayedProducer(rig, b"R1", 1, "remote", pid=777)
    owner = FakeConsumer(rig, "c")
    cfg = all_machines_config(trace_all_machines=True)
    owner.send(enable_tracing=ipc.EnableTracingRequest(trace_config=cfg))
    (reply,) = owner.replies()
    remote.process()
    write(remote, 0, 5)
    for rnd in range(1, 6):
        sync_round(rig, b"R1", rnd, burst=1, offset=S, trip=1000)
    owner.read()  # the source's own read takes its rounds: the clone has its own
    cloner = FakeConsumer(rig, "d")
    cloner.send(clone_session=ipc.CloneSessionRequest(session_id=reply.enable_tracing.session_id))
    remote.process()  # the clone's flush, acked over the link
    (cloned,) = cloner.replies()
    assert cloned.clone_session.success, cloned
    packets = cloner.read()
    assert [p.for_testing.counter for p in packets if p.HasField("for_testing")] == list(range(5))
    assert [p.machine_id for p in packets if p.HasField("remote_clock_sync")] == [machine_id]
    assert machine_id in {p.machine_id for p in packets if p.HasField("system_info")}
