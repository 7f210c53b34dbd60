"""CloneSession in one process (actors/core/clones.py): a real TraceWriter on an
in-process SMB, a fake clock, the service core's real paths."""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.clones import CLONE_FLUSH_FLAGS
from actors.core.lifecycle import SessionState
from actors.core.sessions import Limits
from protos import tracebus_ipc_pb2 as ipc
from tests.test_service_core import FakeConsumer, FakeProducer, Rig

DS = "tracebus.synthetic"


def make_config(*buffers: dict, **kw) -> pb.TraceConfig:
    """One buffer per entry (BufferConfig fields), a data source entry for each."""
    cfg = pb.TraceConfig(**kw)
    for i, fields in enumerate(buffers or ({},)):
        cfg.buffers.add(size_kb=64, **fields)
        cfg.data_sources.add().config.CopyFrom(pb.DataSourceConfig(name=DS, target_buffer=i))
    return cfg


class Setup:
    """A producer, a session of consumer `owner` recording, a writer per buffer."""

    def __init__(self, cfg: pb.TraceConfig | None = None, uid: int = 1000):
        self.rig = Rig()
        self.producer = FakeProducer(self.rig, "prod", pid=555)
        self.owner = FakeConsumer(self.rig, "owner", uid=uid)
        cfg = cfg or make_config()
        request = ipc.EnableTracingRequest(trace_config=cfg.SerializeToString())
        self.owner.send(enable_tracing=request)
        (reply,) = self.owner.replies()
        assert reply.enable_tracing.started, reply
        self.source_id = reply.enable_tracing.session_id
        self.producer.process()
        self.writers = [self.producer.writers[i] for i in sorted(self.producer.writers)]

    def write(self, *counters: int, buffer: int = 0, commit: bool = True) -> None:
        writer = self.writers[buffer]
        for n in counters:
            packet = pb.TracePacket(timestamp=n)
            packet.for_testing.counter = n
            writer.write_packet(packet.SerializeToString())
        if commit:
            writer.flush()

    def clone(self, consumer: FakeConsumer, ack: bool = True, **fields) -> int:
        """Ask for a clone (of the source by default); the producer acks the flush
        unless `ack` is false. Returns the request id."""
        fields = fields or {"session_id": self.source_id}
        rid = consumer.send(clone_session=ipc.CloneSessionRequest(**fields))
        if ack:
            self.producer.process()
        return rid


def counters(packets: list[pb.TracePacket]) -> list[int]:
    return [p.for_testing.counter for p in packets if p.HasField("for_testing")]


def clone_reply(consumer: FakeConsumer) -> ipc.CloneSessionResponse:
    (reply,) = consumer.replies()
    assert reply.WhichOneof("msg") == "clone_session", reply
    return reply.clone_session


def test_a_clone_holds_a_copy_and_the_source_goes_on_with_all_of_it():
    s = Setup()
    s.write(1, 2, 3)
    s.write(4, 5, commit=False)  # still in the writer: the clone's flush brings it
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner, ack=False)
    flush = [m.flush for m in s.rig.to_producers[s.producer.peer.identity]]
    assert len(flush) == 1 and flush[0].flags == CLONE_FLUSH_FLAGS
    s.producer.process()
    reply = clone_reply(cloner)
    assert reply.success and reply.error == ""
    clone = s.rig.core.sessions[reply.session_id]
    assert clone.state is SessionState.CLONED_READ_ONLY and clone.id != s.source_id
    source = s.rig.core.sessions[s.source_id]
    assert (reply.uuid_msb, reply.uuid_lsb) == (clone.uuid_msb, clone.uuid_lsb)
    assert reply.uuid_lsb == source.uuid_lsb and reply.uuid_msb != source.uuid_msb
    packets = cloner.read()
    assert counters(packets) == [1, 2, 3, 4, 5]
    assert packets[-1].trace_stats.flushes_requested == 1
    s.write(6)
    assert counters(s.owner.read()) == [1, 2, 3, 4, 5, 6]  # the clone took nothing
    assert s.rig.core.sessions[s.source_id].state is SessionState.STARTED


def test_a_clones_trace_has_the_source_config_and_says_it_was_cloned():
    s = Setup()
    s.write(1)
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner)
    assert clone_reply(cloner).success
    packets = cloner.read()
    configs = [p.trace_config for p in packets if p.HasField("trace_config")]
    assert configs == [make_config()]
    events = [p.service_event for p in packets if p.HasField("service_event")]
    flags = [e.ListFields()[0][0].name for e in events]
    assert flags[:2] == ["tracing_started", "all_data_sources_started"]
    # The clone's own events come after the flush that made it (other events, such
    # as the end of the read, may follow).
    cloned = ["all_data_sources_flushed", "clone_started", "tracing_disabled"]
    assert [f for f in flags if f in cloned][-3:] == cloned
    # The source's (at its start, when all its data sources started), the clone's.
    assert sum(p.HasField("clock_snapshot") for p in packets) == 3
    service = [p for p in packets if not p.HasField("for_testing")]
    assert {p.trusted_packet_sequence_id for p in service} == {1}


def test_the_trigger_that_asked_for_a_snapshot_is_in_the_clone():
    s = Setup()
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(
        cloner,
        session_id=s.source_id,
        clone_trigger_name="crash",
        clone_trigger_producer_name="app",
        clone_trigger_trusted_producer_uid=1000,
        clone_trigger_boot_time_ns=123,
        clone_trigger_delay_ms=5,
    )
    assert clone_reply(cloner).success
    packets = cloner.read()
    kinds = [p.WhichOneof("data") for p in packets]
    at = kinds.index("clone_snapshot_trigger")
    assert kinds[at - 1] == "trace_config"  # Perfetto's place: right after the config
    hit = packets[at]
    assert hit.timestamp == 123
    assert hit.clone_snapshot_trigger == pb.Trigger(
        trigger_name="crash", producer_name="app", trusted_producer_uid=1000, stop_delay_ms=5
    )
    assert "clone_snapshot_trigger" not in [p.WhichOneof("data") for p in s.owner.read()]


def test_transfer_on_clone_moves_the_buffer_and_leaves_the_source_an_empty_one():
    s = Setup(make_config({"transfer_on_clone": True}, {}))
    s.write(1, 2, buffer=0)
    s.write(10, 20, buffer=1)
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner)
    assert clone_reply(cloner).success
    assert sorted(counters(cloner.read())) == [1, 2, 10, 20]
    s.write(3, buffer=0)
    assert counters(s.owner.read()) == [3, 10, 20]  # buffer 0 was moved, buffer 1 copied
    source = s.rig.core.sessions[s.source_id]
    assert s.rig.core.buffers[source.buffer_ids[0]].stats.chunks_written == 1


def test_clear_before_clone_keeps_only_what_the_clones_flush_brings():
    s = Setup(make_config({"clear_before_clone": True}))
    s.write(1, 2)  # committed before the clone: cleared
    s.write(3, commit=False)  # committed by the clone's flush
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner)
    assert clone_reply(cloner).success
    assert counters(cloner.read()) == [3]
    assert counters(s.owner.read()) == [3]


def test_a_flush_that_times_out_still_gives_a_clone():
    s = Setup()
    s.write(1)
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner, ack=False)
    assert cloner.replies() == []
    s.rig.advance(5000)  # the default flush_timeout_ms
    reply = clone_reply(cloner)
    assert reply.success
    assert counters(cloner.read()) == [1]


def test_clone_by_unique_session_name_finds_the_source_never_a_clone():
    s = Setup(make_config(unique_session_name="nightly"))
    s.write(1)
    first = FakeConsumer(s.rig, "first")
    s.clone(first, unique_session_name="nightly")
    assert clone_reply(first).success
    second = FakeConsumer(s.rig, "second")
    s.clone(second, unique_session_name="nightly")
    reply = clone_reply(second)
    assert reply.success and s.rig.core.sessions[reply.session_id].uid == 1000
    # The clones keep the name, yet the name is free once the source is gone.
    s.owner.send(free_buffers=ipc.FreeBuffersRequest())
    s.owner.replies()
    again = FakeConsumer(s.rig, "again")
    config = make_config(unique_session_name="nightly").SerializeToString()
    again.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config))
    assert again.replies()[0].enable_tracing.error == ""
    missing = FakeConsumer(s.rig, "missing")
    s.clone(missing, unique_session_name="weekly")
    assert clone_reply(missing).error == "no tracing session named 'weekly'"


def test_refusals_are_clear_and_leave_the_source_untouched():
    s = Setup()
    s.write(1)
    cases = [
        ({"session_id": 99}, 1000, "no tracing session 99"),
        ({}, 1000, "name the session to clone (session_id or unique_session_name)"),
        ({"session_id": s.source_id}, 2000, "belongs to another uid"),
    ]
    for fields, uid, error in cases:
        consumer = FakeConsumer(s.rig, f"c{uid}{fields}", uid=uid)
        consumer.send(clone_session=ipc.CloneSessionRequest(**fields))
        reply = clone_reply(consumer)
        assert not reply.success and error in reply.error and reply.session_id == 0
    # The owner holds the source: a connection holds one session at most.
    s.clone(s.owner)
    assert "already has a tracing session" in clone_reply(s.owner).error
    assert [m.WhichOneof("msg") for m in s.rig.take(s.producer.peer)] == []  # no flush
    assert len(s.rig.core.sessions) == 1
    assert counters(s.owner.read()) == [1]


def test_root_may_clone_a_session_of_another_uid():
    s = Setup(uid=1000)
    s.write(1)
    root = FakeConsumer(s.rig, "root", uid=0)
    s.clone(root)
    assert clone_reply(root).success
    assert counters(root.read()) == [1]


def test_a_clone_cannot_be_cloned_nor_started_and_disable_is_answered_at_once():
    s = Setup()
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner)
    clone_id = clone_reply(cloner).session_id
    other = FakeConsumer(s.rig, "other")
    s.clone(other, session_id=clone_id)
    assert "read-only clone" in clone_reply(other).error
    cloner.send(start_tracing=ipc.StartTracingRequest())
    assert cloner.replies()[0].ack.error == "no deferred session to start"
    cloner.send(disable_tracing=ipc.DisableTracingRequest())
    assert cloner.replies()[0].ack.error == ""
    cloner.send(flush=ipc.FlushConsumerRequest())
    assert not cloner.replies()[0].flush.success


def test_freeing_a_clone_releases_its_buffers_and_the_source_keeps_its_own():
    s = Setup()
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner)
    clone_id = clone_reply(cloner).session_id
    clone_buffers = list(s.rig.core.sessions[clone_id].buffer_ids)
    assert len(s.rig.core.buffers) == 2
    cloner.send(free_buffers=ipc.FreeBuffersRequest())
    assert cloner.replies()[0].ack.error == ""
    assert clone_id not in s.rig.core.sessions
    assert not set(clone_buffers) & set(s.rig.core.buffers)
    assert list(s.rig.core.buffers) == s.rig.core.sessions[s.source_id].buffer_ids


def test_a_clone_counts_against_the_session_and_memory_limits():
    s = Setup()
    s.rig.core.limits = Limits(max_sessions_per_uid=1)
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner)
    reply = clone_reply(cloner)
    assert reply.error == (
        f"cannot clone session {s.source_id}: too many tracing sessions for uid 1000 "
        "(max_sessions_per_uid 1)"
    )
    s.rig.core.limits = Limits(max_buffer_bytes_per_uid=100 * 1024)
    s.clone(cloner)
    assert "max_buffer_bytes_per_uid" in clone_reply(cloner).error
    assert s.rig.core.counters.refusals == {
        "max_sessions_per_uid": 1,
        "max_buffer_bytes_per_uid": 1,
    }


def test_a_cloner_that_leaves_during_the_flush_gets_nothing_made():
    s = Setup()
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner, ack=False)
    s.rig.route(s.rig.core.consumer_gone(cloner.peer.identity, s.rig.now))
    s.producer.process()
    assert cloner.replies() == []
    assert list(s.rig.core.sessions) == [s.source_id]


def test_a_second_clone_while_one_is_pending_is_refused():
    s = Setup()
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner, ack=False)
    s.clone(cloner, ack=False)
    assert "still pending" in clone_reply(cloner).error
    s.producer.process()
    assert clone_reply(cloner).success


def test_a_source_freed_during_the_flush_is_still_copied():
    s = Setup()
    s.write(1, 2)
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner, ack=False)
    s.owner.send(free_buffers=ipc.FreeBuffersRequest())
    reply = clone_reply(cloner)
    assert reply.success
    assert list(s.rig.core.sessions) == [reply.session_id]
    assert counters(cloner.read()) == [1, 2]


def test_a_stopped_session_is_copied_without_a_flush():
    s = Setup()
    s.write(1)
    s.owner.send(disable_tracing=ipc.DisableTracingRequest())
    s.owner.replies()
    s.rig.take(s.producer.peer)
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner, ack=False)
    assert s.rig.take(s.producer.peer) == []
    assert clone_reply(cloner).success
    assert counters(cloner.read()) == [1]


def test_a_clone_shows_in_the_service_state():
    s = Setup()
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner)
    clone_id = clone_reply(cloner).session_id
    cloner.send(query_service_state=ipc.QueryServiceStateRequest())
    (reply,) = cloner.replies()
    states = {x.id: x.state for x in reply.service_state.sessions}
    assert states == {s.source_id: "STARTED", clone_id: "CLONED_READ_ONLY"}


def test_a_clone_of_a_snapshot_session_is_read_whatever_its_trigger_config_says():
    """A CLONE_SNAPSHOT session gives its data only through its clones (traced reads
    nothing of it): its clone, which has the same trigger_config, must be read."""
    cfg = make_config()
    cfg.trigger_config.trigger_mode = pb.TraceConfig.TriggerConfig.CLONE_SNAPSHOT
    cfg.trigger_config.trigger_timeout_ms = 60_000
    cfg.trigger_config.triggers.add(name="snap")
    s = Setup(cfg)
    s.write(1, 2)
    cloner = FakeConsumer(s.rig, "cloner")
    s.clone(cloner, session_id=s.source_id, clone_trigger_name="snap")
    assert clone_reply(cloner).success
    packets = cloner.read()
    assert counters(packets) == [1, 2]
    assert [
        p.clone_snapshot_trigger.trigger_name
        for p in packets
        if p.HasField("clone_snapshot_trigger")
    ] == ["snap"]
    second = FakeConsumer(s.rig, "second")
    s.clone(second)
    assert clone_reply(second).success
    assert counters(second.read()) == [1, 2]  # the source still holds it all
