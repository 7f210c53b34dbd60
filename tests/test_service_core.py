"""ServiceCore in one process: a real TraceWriter on an in-process SMB, a fake clock,
messages in and out as the shells would pass them."""

from __future__ import annotations

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.producer_core import commit_request
from actors.core.service_core import Clocks, Peer, ServiceCore, ToConsumer, ToProducer
from actors.core.sessions import Limits
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import SharedMemoryABI
from shm.arbiter import SharedMemoryArbiter
from shm.commits import CommitBatch
from shm.region import InProcessRegion
from shm.writer import BufferExhaustedPolicy
from tests import packet_kinds

SERVICE_UID, SERVICE_PID = 0, 100
MS = 1_000_000


class FakeSmb:
    def __init__(self, geometry, pid, uid):
        self.region = InProcessRegion(geometry.size)
        self.buf = self.region.buf
        self.token = id(self).to_bytes(16, "little")
        self.socket = "/fake/handoff"
        self.owner = (pid, uid)
        self.closed = False

    def close(self):
        self.closed = True


def to_request(batch: CommitBatch, writers) -> ipc.CommitDataRequest:
    req = commit_request([batch])
    for w in writers:
        req.writer_stats.add(
            writer_id=w.writer_id,
            target_buffer=w.target_buffer,
            dropped_packets=w.dropped_packets,
            dropped_bytes=w.dropped_bytes,
        )
    return req


class Rig:
    def __init__(self):
        self.now = 1000 * MS
        self.smbs: list[FakeSmb] = []
        clocks = Clocks(lambda: [(6, self.now), (3, self.now)], lambda: self.now)
        self.core = ServiceCore(self._factory, clocks, SERVICE_UID, SERVICE_PID)
        self.to_producers: dict[bytes, list[ipc.ServiceToProducer]] = {}
        self.to_consumers: dict[bytes, list[ipc.ServiceToConsumer]] = {}

    def _factory(self, geometry, pid, uid):
        smb = FakeSmb(geometry, pid, uid)
        self.smbs.append(smb)
        return smb

    def route(self, outputs):
        for out in outputs:
            if isinstance(out, ToProducer):
                self.to_producers.setdefault(out.identity, []).append(out.msg)
            else:
                assert isinstance(out, ToConsumer)
                self.to_consumers.setdefault(out.identity, []).append(out.msg)

    def producer(self, peer: Peer, request_id: int = 0, **kw):
        msg = ipc.ProducerToService(request_id=request_id, **kw)
        self.route(self.core.handle_producer(peer, msg, self.now))

    def consumer(self, peer: Peer, request_id: int = 0, **kw):
        msg = ipc.ConsumerToService(request_id=request_id, **kw)
        self.route(self.core.handle_consumer(peer, msg, self.now))

    def advance(self, ms: int):
        self.now += ms * MS
        self.route(self.core.on_timer(self.now))

    def idle(self):
        """What the shell does when no message is waiting: continue pending reads."""
        while self.core.pending_work():
            self.route(self.core.continue_reads(self.now))

    def take(self, peer: Peer, consumer: bool = False):
        box = self.to_consumers if consumer else self.to_producers
        return box.pop(peer.identity, [])


class FakeProducer:
    """Plays a producer: handshake, one data source, a TraceWriter per instance."""

    def __init__(self, rig: Rig, name: str, pid: int, ds: str = "tracebus.synthetic"):
        self.rig = rig
        self.peer = Peer(f"p-{name}".encode(), pid, 1000)
        self.writers = {}
        self.arbiter = None
        rig.producer(
            self.peer,
            1,
            initialize_connection=ipc.InitializeConnectionRequest(
                hello=ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION),
                producer_name=name,
                shm_size_hint_bytes=64 * 1024,
                claimed_pid=1,
                claimed_uid=0,
            ),
        )
        (reply,) = rig.take(self.peer)
        assert reply.initialize_connection.hello.error == ""
        self.producer_id = reply.initialize_connection.producer_id
        desc = ipc.DataSourceDescriptor(name=ds)
        register = ipc.RegisterDataSourceRequest(descriptor=desc)
        rig.producer(self.peer, 2, register_data_source=register)
        (reply,) = rig.take(self.peer)
        assert reply.register_data_source.error == ""

    def process(self):
        """Act on whatever the service sent."""
        for msg in self.rig.take(self.peer):
            kind = msg.WhichOneof("msg")
            if kind == "setup_tracing":
                smb = next(s for s in self.rig.smbs if s.token == msg.setup_tracing.shm_token)
                assert smb.owner == (self.peer.pid, self.peer.uid), "offered to its producer"
                assert not msg.setup_tracing.shm_path, "no path to an SMB is published"
                from shm.abi import resolve_geometry

                geometry = resolve_geometry(
                    msg.setup_tracing.shm_size_bytes, msg.setup_tracing.shm_page_size_bytes
                )
                abi = SharedMemoryABI(smb.buf, geometry)
                self.arbiter = SharedMemoryArbiter(abi, self._commit, sleep=lambda s: None)
            elif kind == "start_data_source":
                config = pb.DataSourceConfig.FromString(msg.start_data_source.data_source_config)
                writer = self.arbiter.create_trace_writer(
                    config.target_buffer, BufferExhaustedPolicy.DROP
                )
                self.writers[msg.start_data_source.instance_id] = writer
                reg = ipc.RegisterTraceWriterRequest(
                    writer_id=writer.writer_id, target_buffer=config.target_buffer
                )
                self.rig.producer(self.peer, register_trace_writer=reg)
            elif kind == "flush":
                for instance_id in msg.flush.instance_ids:
                    self.writers[instance_id].flush()
                # As ProducerCore.flush_done: the ack is a CommitData of its own.
                ack = ipc.CommitDataRequest(flush_request_id=msg.flush.flush_request_id)
                self.rig.producer(self.peer, commit_data=ack)

    def _commit(self, batch: CommitBatch):
        self.rig.producer(self.peer, commit_data=to_request(batch, self.writers.values()))


class FakeConsumer:
    def __init__(self, rig: Rig, name: str, uid: int = 1000):
        self.rig = rig
        self.peer = Peer(f"c-{name}".encode(), 77, uid)
        self.next_id = 1

    def send(self, **kw) -> int:
        rid = self.next_id
        self.next_id += 1
        self.rig.consumer(self.peer, rid, **kw)
        return rid

    def replies(self):
        return self.rig.take(self.peer, consumer=True)

    def read(self) -> list[pb.TracePacket]:
        self.send(read_buffers=ipc.ReadBuffersRequest())
        self.rig.idle()
        packets = []
        replies = self.replies()
        assert replies[-1].read_buffers.has_more is False
        for r in replies:
            packets += [pb.TracePacket.FromString(s.data) for s in r.read_buffers.slices]
        return packets


def config(size_kb=64, **kw) -> bytes:
    cfg = pb.TraceConfig(**kw)
    cfg.buffers.add(size_kb=size_kb)
    cfg.data_sources.add().config.name = "tracebus.synthetic"
    return cfg.SerializeToString()


def test_session_end_to_end_in_one_process():
    rig = Rig()
    producer = FakeProducer(rig, "prod", pid=555)
    consumer = FakeConsumer(rig, "c")
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config()))
    (enabled,) = consumer.replies()
    assert enabled.enable_tracing.started and not enabled.enable_tracing.error
    kinds = [m.WhichOneof("msg") for m in rig.to_producers[producer.peer.identity]]
    assert kinds == ["setup_tracing", "setup_data_source", "start_data_source"]
    producer.process()
    (writer,) = producer.writers.values()
    sent = []
    for i in range(300):
        packet = pb.TracePacket(timestamp=i + 1)
        packet.for_testing.counter = i
        sent.append(packet)
        writer.write_packet(packet.SerializeToString())
    consumer.send(flush=ipc.FlushConsumerRequest(timeout_ms=1000))
    producer.process()
    (flushed,) = consumer.replies()
    assert flushed.flush.success
    packets = consumer.read()
    produced = [p for p in packets if p.HasField("for_testing")]
    assert [p.for_testing.counter for p in produced] == list(range(300))
    assert {(p.trusted_pid, p.trusted_uid) for p in produced} == {(555, 1000)}
    assert {p.trusted_packet_sequence_id for p in produced} == {2}
    head = len(packet_kinds.FIRST_READ)
    assert packet_kinds.kinds(packets[:head]) == packet_kinds.FIRST_READ
    assert packet_kinds.kinds(packets[-2:]) == ["read_tracing_buffers_completed", "trace_stats"]
    assert all(p.trusted_packet_sequence_id == 1 for p in packets if not p.HasField("for_testing"))
    consumer.send(disable_tracing=ipc.DisableTracingRequest())
    assert [m.WhichOneof("msg") for m in rig.take(producer.peer)] == ["stop_data_source"]
    replies = consumer.replies()
    assert replies[0].enable_tracing.disabled and replies[1].ack.error == ""


def test_reserved_fields_are_dropped_and_counted():
    rig = Rig()
    producer = FakeProducer(rig, "prod", pid=555)
    consumer = FakeConsumer(rig, "c")
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config()))
    consumer.replies()
    producer.process()
    (writer,) = producer.writers.values()
    writer.write_packet(pb.TracePacket(trusted_uid=0, timestamp=5).SerializeToString())
    bad = pb.TracePacket(timestamp=6)
    bad.trace_stats.producers_connected = 99
    writer.write_packet(bad.SerializeToString())
    writer.write_packet(pb.TracePacket(timestamp=7).SerializeToString())
    writer.flush()
    packets = consumer.read()
    kept = [p.timestamp for p in packets if p.trusted_packet_sequence_id == 2]
    assert kept == [7]
    assert packets[-1].trace_stats.invalid_packets == 2


def test_commit_to_a_buffer_of_another_session_is_discarded_and_freed():
    rig = Rig()
    producer = FakeProducer(rig, "prod", pid=555)
    victim = FakeConsumer(rig, "victim")
    victim.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config()))
    victim.replies()
    producer.process()
    (writer,) = producer.writers.values()
    # The producer redirects its writer to a buffer id it was never given.
    writer.target_buffer = 99
    writer.write_packet(pb.TracePacket(timestamp=1).SerializeToString())
    writer.flush()
    assert rig.core.counters.chunks_discarded == 1
    abi = producer.arbiter.abi
    assert all(abi.bitmap(p) == 0 for p in range(abi.num_pages))
    assert [p for p in victim.read() if p.trusted_packet_sequence_id == 2] == []


def test_version_mismatch_and_limits_are_clear_errors():
    rig = Rig()
    peer = Peer(b"old", 1, 1)
    rig.producer(
        peer,
        1,
        initialize_connection=ipc.InitializeConnectionRequest(hello=ipc.Hello(protocol_version=9)),
    )
    (reply,) = rig.take(peer)
    assert "protocol version 9" in reply.initialize_connection.hello.error
    consumers = [FakeConsumer(rig, f"c{i}", uid=5) for i in range(6)]
    for c in consumers:
        c.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config()))
    errors = [c.replies()[0].enable_tracing.error for c in consumers]
    assert errors[:5] == [""] * 5
    assert errors[5] == "too many tracing sessions for uid 5 (max_sessions_per_uid 5)"
    assert rig.core.counters.refusals == {"max_sessions_per_uid": 1}


@pytest.mark.parametrize(
    "field, expected",
    [("lockdown_mode", "lockdown_mode"), ("bugreport_score", "bugreport_score")],
)
def test_unsupported_fields_are_named(field, expected):
    rig = Rig()
    consumer = FakeConsumer(rig, "c")
    cfg = pb.TraceConfig.FromString(config())
    setattr(cfg, field, 1)
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=cfg.SerializeToString()))
    (reply,) = consumer.replies()
    assert expected in reply.enable_tracing.unsupported_fields


def test_duration_flushes_then_stops_and_a_dead_producer_is_scraped():
    rig = Rig()
    producer = FakeProducer(rig, "prod", pid=555)
    consumer = FakeConsumer(rig, "c")
    cfg = config(duration_ms=100)
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=cfg))
    consumer.replies()
    producer.process()
    (writer,) = producer.writers.values()
    for i in range(5):
        writer.write_packet(pb.TracePacket(timestamp=i + 1).SerializeToString())
    rig.advance(100)  # duration over: flush sent; the producer never answers
    assert [m.WhichOneof("msg") for m in rig.to_producers[producer.peer.identity]] == ["flush"]
    rig.route(rig.core.producer_gone(producer.peer.identity, rig.now))  # SIGKILL
    assert rig.smbs[0].closed
    replies = consumer.replies()
    assert [r.WhichOneof("msg") for r in replies] == ["enable_tracing"]
    assert replies[0].enable_tracing.disabled
    got = [p.timestamp for p in consumer.read() if p.trusted_packet_sequence_id == 2]
    assert got == [1, 2, 3, 4, 5]  # scraped from the dead producer's SMB


def test_a_dead_producer_is_scraped_only_into_buffers_it_was_given():
    rig = Rig()
    producer = FakeProducer(rig, "prod", pid=555)
    victim = FakeConsumer(rig, "victim")
    victim.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config()))
    victim.replies()
    own = FakeConsumer(rig, "own")
    own_config = pb.TraceConfig.FromString(config())
    own_config.data_sources[0].producer_name_filter.append("nobody")  # the producer is not in it
    own.send(enable_tracing=ipc.EnableTracingRequest(trace_config=own_config.SerializeToString()))
    own.replies()
    producer.process()
    (writer,) = producer.writers.values()
    other_buffer = rig.core.sessions[2].buffer_ids[0]
    # It registers its writer to a buffer of the session it is not part of and
    # leaves a complete chunk in the SMB for the scrape at disconnect.
    reg = ipc.RegisterTraceWriterRequest(writer_id=writer.writer_id, target_buffer=other_buffer)
    rig.producer(producer.peer, register_trace_writer=reg)
    writer.write_packet(pb.TracePacket(timestamp=1).SerializeToString())
    writer._return_chunk(last_continues=False)  # COMPLETE, never committed
    rig.route(rig.core.producer_gone(producer.peer.identity, rig.now))
    assert [p for p in own.read() if p.trusted_packet_sequence_id == 2] == []


def test_service_limits_are_configurable():
    rig = Rig()
    rig.core.limits = Limits(max_sessions=2, max_sessions_per_uid=5, max_buffers_per_session=1)
    consumers = [FakeConsumer(rig, f"c{i}", uid=i) for i in range(3)]
    for c in consumers:
        c.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config()))
    errors = [c.replies()[0].enable_tracing.error for c in consumers]
    assert errors == ["", "", "too many tracing sessions (max_sessions 2)"]
    two_buffers = pb.TraceConfig.FromString(config())
    two_buffers.buffers.add(size_kb=4)
    consumers[0].send(free_buffers=ipc.FreeBuffersRequest())
    consumers[2].send(
        enable_tracing=ipc.EnableTracingRequest(trace_config=two_buffers.SerializeToString())
    )
    error = consumers[2].replies()[0].enable_tracing.error
    assert error == "too many buffers: 2 (max_buffers_per_session 1)"
    assert rig.core.counters.refusals == {"max_sessions": 1, "max_buffers_per_session": 1}


def test_a_session_that_would_exhaust_the_buffer_ids_is_refused(monkeypatch):
    from actors.core import service_context

    monkeypatch.setattr(service_context, "MAX_BUFFER_ID", 3)  # a pool of three ids
    rig = Rig()
    two_buffers = pb.TraceConfig.FromString(config())
    two_buffers.buffers.add(size_kb=4)
    request = ipc.EnableTracingRequest(trace_config=two_buffers.SerializeToString())
    first, second = FakeConsumer(rig, "first"), FakeConsumer(rig, "second")
    first.send(enable_tracing=request)
    assert first.replies()[0].enable_tracing.error == ""
    second.send(enable_tracing=request)
    (refused,) = second.replies()
    assert refused.enable_tracing.disabled
    assert "no free buffer id" in refused.enable_tracing.error
    first.send(free_buffers=ipc.FreeBuffersRequest())
    second.send(enable_tracing=request)
    assert second.replies()[0].enable_tracing.error == ""


def test_the_buffer_budget_is_checked_before_any_buffer_is_allocated(monkeypatch):
    from actors.core import buffer_budget

    made = []
    real = buffer_budget.TraceBuffer
    monkeypatch.setattr(buffer_budget, "TraceBuffer", lambda *a: made.append(a) or real(*a))
    rig = Rig()
    rig.core.limits = Limits(max_buffer_bytes_total=192 * 1024, max_buffer_bytes_per_uid=128 * 1024)
    first, second, third = (FakeConsumer(rig, name, uid=7) for name in ("a", "b", "c"))
    first.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config(size_kb=100)))
    assert first.replies()[0].enable_tracing.error == ""
    assert made == [(100 * 1024, 1)]
    second.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config(size_kb=29)))
    (refused,) = second.replies()  # 100 + 28 KiB fit the share, 100 + 32 do not
    assert refused.enable_tracing.disabled and len(made) == 1
    assert (
        "uid 7 hold 0.1 MiB and max_buffer_bytes_per_uid is 131072" in refused.enable_tracing.error
    )
    other = FakeConsumer(rig, "other", uid=8)
    other.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config(size_kb=96)))
    assert "max_buffer_bytes_total is 196608" in other.replies()[0].enable_tracing.error
    assert rig.core.counters.refusals == {
        "max_buffer_bytes_per_uid": 1,
        "max_buffer_bytes_total": 1,
    }
    first.send(free_buffers=ipc.FreeBuffersRequest())
    third.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config(size_kb=128)))
    assert third.replies()[0].enable_tracing.error == ""


def test_memory_the_host_refuses_is_an_error_reply(monkeypatch):
    from actors.core import buffer_budget

    def refuse(size, policy):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(buffer_budget, "TraceBuffer", refuse)
    rig = Rig()
    consumer = FakeConsumer(rig, "c")
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config()))
    (reply,) = consumer.replies()
    assert reply.enable_tracing.disabled
    assert "could not allocate buffers[0] (0.1 MiB)" in reply.enable_tracing.error
    assert rig.core.sessions == {} and rig.core.counters.refusals == {}


def test_producers_that_left_stay_named_in_the_service_state(monkeypatch):
    from actors.core import producer_table

    monkeypatch.setattr(producer_table, "MAX_DEPARTED", 2)  # remember the last two
    rig = Rig()
    producers = [FakeProducer(rig, f"gone{i}", pid=600 + i) for i in range(3)]
    stays = FakeProducer(rig, "stays", pid=700)
    for p in producers:
        rig.route(rig.core.producer_gone(p.peer.identity, rig.now))
    consumer = FakeConsumer(rig, "c")
    consumer.send(query_service_state=ipc.QueryServiceStateRequest())
    (reply,) = consumer.replies()
    state = reply.service_state
    assert [(p.name, p.pid) for p in state.producers] == [("stays", 700)]
    departed = [(p.id, p.name, p.uid, p.pid) for p in state.departed_producers]
    # Oldest first, and the first one to leave no longer fits.
    assert departed == [
        (p.producer_id, p.peer.identity.decode()[2:], 1000, p.peer.pid) for p in producers[1:]
    ]
    assert stays.producer_id not in [p.id for p in state.departed_producers]


def test_the_service_state_names_each_sessions_consumer_process():
    """What a supervisor waits on before it starts the producers a session records."""
    rig = Rig()
    consumer = FakeConsumer(rig, "c")
    cfg = pb.TraceConfig.FromString(config())
    cfg.deferred_start = True
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=cfg.SerializeToString()))
    consumer.replies()
    consumer.send(query_service_state=ipc.QueryServiceStateRequest())
    (session,) = consumer.replies()[0].service_state.sessions
    assert (session.consumer_pid, session.state) == (consumer.peer.pid, "CONFIGURED")
    consumer.send(start_tracing=ipc.StartTracingRequest())
    consumer.replies()
    consumer.send(query_service_state=ipc.QueryServiceStateRequest())
    (session,) = consumer.replies()[0].service_state.sessions
    assert (session.consumer_pid, session.state) == (consumer.peer.pid, "STARTED")
