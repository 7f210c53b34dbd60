"""Incremental state, end to end: the service's periodic ClearIncrementalState
(incremental_state_config.clear_period_ms), the SDK forwarding it to the
instance's writers, TrackEvents re-emitting its descriptors after a clear and
after a loss its writer saw, and a wrapped ring buffer that imports, by
trace_processor's rules (tests/track_event_import.py), from the first
re-emission of each sequence on."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.sessions import ignored_fields
from actors.track_event import TrackEvents
from protos import tracebus_ipc_pb2 as ipc
from shm.writer import BufferExhaustedPolicy
from tests.test_integration_sessions import Trace
from tests.test_producer_core import LoopWriter, ds_config
from tests.test_producer_core import Rig as HostRig
from tests.test_service_core import MS, FakeConsumer, Peer
from tests.test_service_core import Rig as ServiceRig
from tests.test_writer import Rig as WriterRig
from tests.track_event_import import Outcome, import_track_events
from tests.waiting import wait_for

PERIOD_MS = 200


# -- the service: ClearIncrementalState every clear_period_ms -------------------------------


def connect_producer(rig: ServiceRig, name: str, sources: dict[str, bool]) -> Peer:
    """A producer registering `sources` (name -> handles_incremental_state_clear)."""
    peer = Peer(f"p-{name}".encode(), 500, 1000)
    hello = ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION)
    init = ipc.InitializeConnectionRequest(hello=hello, producer_name=name)
    rig.producer(peer, 1, initialize_connection=init)
    for source, handles in sources.items():
        desc = ipc.DataSourceDescriptor(name=source, handles_incremental_state_clear=handles)
        rig.producer(peer, 2, register_data_source=ipc.RegisterDataSourceRequest(descriptor=desc))
    rig.take(peer)
    return peer


def session_config(clear_period_ms: int, *sources: str) -> bytes:
    cfg = pb.TraceConfig()
    cfg.buffers.add(size_kb=64)
    for name in sources:
        cfg.data_sources.add().config.name = name
    if clear_period_ms:
        cfg.incremental_state_config.clear_period_ms = clear_period_ms
    return cfg.SerializeToString()


def clears(rig: ServiceRig, peer: Peer) -> list[list[int]]:
    return [
        list(m.clear_incremental_state.instance_ids)
        for m in rig.take(peer)
        if m.WhichOneof("msg") == "clear_incremental_state"
    ]


def started_instances(rig: ServiceRig, peer: Peer) -> dict[str, int]:
    """name -> instance id, from the start_data_source messages the peer got."""
    out = {}
    for m in rig.take(peer):
        if m.WhichOneof("msg") == "start_data_source":
            cfg = pb.DataSourceConfig.FromString(m.start_data_source.data_source_config)
            out[cfg.name] = m.start_data_source.instance_id
    return out


def test_clears_go_every_period_to_started_instances_that_take_them_until_the_stop():
    rig = ServiceRig()
    a = connect_producer(rig, "a", {"te": True, "plain": False})
    b = connect_producer(rig, "b", {"te": True})
    consumer = FakeConsumer(rig, "c")
    trace_config = session_config(PERIOD_MS, "te", "plain")
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=trace_config))
    (enabled,) = consumer.replies()
    assert enabled.enable_tracing.started
    assert "incremental_state_config" not in enabled.enable_tracing.unsupported_fields
    ids_a, ids_b = started_instances(rig, a), started_instances(rig, b)
    assert rig.core.next_deadline() == rig.now + PERIOD_MS * MS  # the shell wakes for it
    rig.advance(PERIOD_MS - 1)
    assert clears(rig, a) == clears(rig, b) == []  # the first is one period after the start
    rig.advance(1)
    assert clears(rig, a) == [[ids_a["te"]]]  # "plain" did not declare it takes clears
    assert clears(rig, b) == [[ids_b["te"]]]
    rig.advance(PERIOD_MS)
    assert clears(rig, a) == [[ids_a["te"]]]
    consumer.send(disable_tracing=ipc.DisableTracingRequest())
    rig.take(a), rig.take(b)
    rig.advance(PERIOD_MS * 3)
    assert clears(rig, a) == clears(rig, b) == []


def test_no_clears_without_a_clear_period():
    rig = ServiceRig()
    a = connect_producer(rig, "a", {"te": True})
    consumer = FakeConsumer(rig, "c")
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=session_config(0, "te")))
    rig.take(a)
    rig.advance(10_000)
    assert clears(rig, a) == []
    (session,) = rig.core.sessions.values()
    assert session.next_incremental_clear is None
    assert rig.core.next_deadline() == session.next_clock_snapshot  # the only timer


def test_clear_period_is_a_supported_field():
    cfg = pb.TraceConfig()
    cfg.incremental_state_config.clear_period_ms = PERIOD_MS
    assert ignored_fields(cfg) == []


# -- the producer: a clear reaches the instance's writers ------------------------------------


def test_a_clear_marks_the_instances_writers_then_calls_back():
    LoopWriter.calls.clear()
    rig = HostRig([LoopWriter])
    rig.connect()
    rig.setup_tracing()
    rig.start(1, ds_config(LoopWriter.name, message_count=3))
    ((_, writer),) = rig.host._instances[1].writers()
    writer.incremental_state_invalid = False  # as after TrackEvents described its tracks
    rig.push(clear_incremental_state=ipc.ClearIncrementalState(instance_ids=[1]))
    assert writer.incremental_state_invalid
    assert LoopWriter.calls == ["clear 1"]


# -- the writer and TrackEvents: re-emission after a clear and after a loss ------------------


def parsed(rig: WriterRig, writer) -> list[pb.TracePacket]:
    writer.flush()
    return [pb.TracePacket.FromString(p) for p in rig.packets(writer)[0]]


def test_a_writer_asks_for_its_incremental_state_when_new_and_after_a_gap():
    rig = WriterRig(pages=2, hold=True)  # the service frees nothing for now
    w = rig.arbiter.create_trace_writer(1, BufferExhaustedPolicy.DROP)
    assert w.incremental_state_invalid
    events = TrackEvents(w, process_name="p")
    events.instant("a")
    assert not w.incremental_state_invalid
    while w.dropped_packets == 0:
        events.instant("a")
    assert not w.incremental_state_invalid  # nothing landed yet: nothing to re-emit for
    rig.release_held()
    while w._dropping:  # recovery is tried each time the scratch chunk fills
        events.instant("a")
    assert w.incremental_state_invalid  # the packet that landed carries the gap


def test_after_a_loss_the_next_event_follows_a_re_emission():
    rig = WriterRig(pages=2, hold=True)
    w = rig.arbiter.create_trace_writer(1, BufferExhaustedPolicy.DROP)
    events = TrackEvents(w, process_name="p", counters=("depth",))
    events.counter("depth", 1)
    while w.dropped_packets == 0:
        events.instant("a")
    rig.release_held()
    while w._dropping:
        events.instant("a")
    for i in range(5):
        events.instant("b")
        events.counter("depth", i)
    packets = parsed(rig, w)
    gap = next(i for i, p in enumerate(packets) if p.previous_packet_dropped)
    after = packets[gap:]
    # The packet that carried the gap is an event, skipped; then the state again.
    assert after[0].HasField("track_event")
    assert after[1].sequence_flags == pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    assert [p.HasField("track_descriptor") for p in after[1:5]] == [True, True, True, False]
    imported = import_track_events(packets)
    (events_seen,) = imported.events.values()
    skipped = [e.index for e in events_seen if e.outcome is Outcome.SKIPPED]
    assert skipped == [gap]
    assert imported.count(Outcome.UNRESOLVED) == 0
    assert imported.count(Outcome.RESOLVED) == len(events_seen) - 1


def test_a_counter_keeps_its_track_across_clears_and_is_described_again():
    rig = WriterRig()
    w = rig.arbiter.create_trace_writer(1)
    events = TrackEvents(w, process_name="p")
    events.counter("late", 1)  # described on first use
    events.reset()  # as a ClearIncrementalState does, from any thread
    events.counter("late", 2)
    packets = parsed(rig, w)
    described = [p.track_descriptor for p in packets if p.HasField("track_descriptor")]
    late = [d.uuid for d in described if d.name == "late"]
    assert len(late) == 2 and late[0] == late[1]
    values = [(p.track_event.track_uuid, p.track_event.counter_value) for p in packets[-1:]]
    assert values == [(late[0], 2)]
    imported = import_track_events(packets)
    assert imported.count(Outcome.RESOLVED) == 2


# -- end to end: a wrapped ring buffer imports from the first re-emission on ----------------

WRAP_PRODUCERS = 3
WRAP_CONFIG = f"""
buffers {{ size_kb: 64 fill_policy: RING_BUFFER }}
data_sources {{
  config {{ name: "tracebus.demo_timeline" for_testing {{ max_messages_per_second: 100 }} }}
}}
incremental_state_config {{ clear_period_ms: {PERIOD_MS} }}
"""
WRAPS = 6


@pytest.mark.timeout(120)
def test_a_wrapped_ring_buffer_imports_from_the_first_re_emission_on(rt):
    """3 producers x 100 frames/s of 9 events each (~100 KB/s) into a 64 KiB ring
    buffer, recorded until it wrapped 6 times (the buffer's own stats say when).
    Each sequence's first descriptors are long overwritten: trace_processor
    skips its events up to the first re-emission that a clear caused, and
    resolves every event after it."""
    rt.start_service()
    procs = [rt.start_producer(f"te{i}", wait=False) for i in range(WRAP_PRODUCERS)]
    for i, proc in enumerate(procs):
        rt.wait_registered(proc, "tracebus.demo_timeline", name=f"te{i}")
    consumer = rt.consumer()
    enabled = consumer.enable(text_format.Parse(WRAP_CONFIG, pb.TraceConfig()))
    assert enabled.unsupported_fields == ()

    def wrapped() -> bool:
        (buffer,) = consumer.stats(timeout=5).buffer_stats
        return buffer.bytes_written >= WRAPS * buffer.buffer_size

    wait_for(wrapped, 60, f"the ring buffer to wrap {WRAPS} times")
    assert consumer.flush()
    consumer.disable()
    out = rt.dir / "wrap.pftrace"
    consumer.save(out)
    trace = Trace.load(out)
    (buffer,) = trace.stats().buffer_stats
    assert buffer.bytes_written >= WRAPS * buffer.buffer_size and buffer.chunks_overwritten

    imported = import_track_events(trace.packets)
    sequences = set(trace.producer_sequences())
    assert set(imported.events) == sequences and len(sequences) == WRAP_PRODUCERS
    for seq, events in imported.events.items():
        # The ring keeps ~0.6 s of each sequence: a clear's re-emission survives.
        assert imported.sequences[seq].clears >= 1, f"sequence {seq}"
        before = [e for e in events if not e.after_clear]
        after = [e for e in events if e.after_clear]
        assert all(e.needs_state and e.outcome is Outcome.SKIPPED for e in before), seq
        assert all(e.needs_state and e.outcome is Outcome.RESOLVED for e in after), seq
        assert len(after) > len(before)
    # The ring overwrote the start of the sequences: something had to be skipped.
    assert imported.count(Outcome.SKIPPED) > 0
    assert imported.count(Outcome.UNRESOLVED) == 0
