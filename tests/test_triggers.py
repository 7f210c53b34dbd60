"""Triggers in one process (ServiceCore with a fake clock and a seeded rng):
START_TRACING, STOP_TRACING and CLONE_SNAPSHOT, trigger_timeout_ms, the knobs of
each trigger, who fires them, and what a read of a trigger session returns."""

from __future__ import annotations

import random

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.trigger_modes import duration_ms, expected_end_ms, mode
from actors.core.triggers import ONE_DAY_NS, TriggerHistory
from protos import tracebus_ipc_pb2 as ipc
from tests.test_service_core import MS, SERVICE_PID, SERVICE_UID, FakeConsumer, FakeProducer, Rig

MODE = pb.TraceConfig.TriggerConfig
CLONE_HIT = ipc.ObserveEventsRequest.TYPE_CLONE_TRIGGER_HIT


def trigger_config(trigger_mode, timeout_ms=10_000, **trigger) -> bytes:
    cfg = pb.TraceConfig()
    cfg.buffers.add(size_kb=64)
    cfg.data_sources.add().config.name = "tracebus.synthetic"
    cfg.trigger_config.trigger_mode = trigger_mode
    cfg.trigger_config.trigger_timeout_ms = timeout_ms
    spec = cfg.trigger_config.triggers.add(name="go")
    for key, value in trigger.items():
        setattr(spec, key, value)
    return cfg.SerializeToString()


def setup(cfg: bytes, producer_name="prod"):
    rig = Rig()
    producer = FakeProducer(rig, producer_name, pid=555)
    consumer = FakeConsumer(rig, "c")
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=cfg))
    (enabled,) = consumer.replies()
    assert not enabled.enable_tracing.error
    producer.process()
    return rig, producer, consumer, enabled.enable_tracing


def fire(rig: Rig, producer: FakeProducer, *names: str) -> None:
    req = ipc.ActivateTriggersRequest(trigger_names=list(names))
    rig.producer(producer.peer, 9, activate_triggers=req)


def write(producer: FakeProducer, *stamps: int) -> None:
    (writer,) = producer.writers.values()
    for ts in stamps:
        writer.write_packet(pb.TracePacket(timestamp=ts).SerializeToString())
    writer.flush()


def ended(consumer: FakeConsumer) -> bool:
    return any(r.enable_tracing.disabled for r in consumer.replies())


def produced(packets) -> list[int]:
    return [p.timestamp for p in packets if p.trusted_packet_sequence_id == 2]


def triggers_in(packets) -> list[pb.Trigger]:
    return [p.trigger for p in packets if p.HasField("trigger")]


# -- START_TRACING -------------------------------------------------------------------------


def test_start_tracing_sets_up_and_records_nothing_until_the_trigger():
    rig, producer, consumer, enabled = setup(trigger_config(MODE.START_TRACING, stop_delay_ms=500))
    assert not enabled.started
    assert producer.writers == {}, "set up, not started"
    assert consumer.read() == [], "nothing at all before the trigger, not even service packets"
    rig.advance(1000)
    fire(rig, producer, "go")
    producer.process()  # start_data_source
    write(producer, 1, 2, 3)
    rig.advance(499)
    assert not ended(consumer)
    rig.advance(1)  # stop_delay_ms over: flush, then stop
    producer.process()
    assert ended(consumer)
    packets = consumer.read()
    assert produced(packets) == [1, 2, 3]
    kinds = [p.WhichOneof("data") for p in packets if p.trusted_packet_sequence_id == 1]
    assert kinds.index("trigger") == kinds.index("trace_config") + 1
    (trigger,) = triggers_in(packets)
    assert (trigger.trigger_name, trigger.producer_name) == ("go", "prod")
    assert (trigger.trusted_producer_uid, trigger.stop_delay_ms) == (1000, 500)
    (packet,) = [p for p in packets if p.HasField("trigger")]
    assert packet.timestamp == 2000 * MS and packet.trusted_pid == SERVICE_PID
    assert packet.trusted_uid == SERVICE_UID


def test_start_tracing_without_a_trigger_ends_at_the_timeout_with_no_data():
    rig, producer, consumer, _ = setup(trigger_config(MODE.START_TRACING, timeout_ms=3000))
    rig.advance(2999)
    assert not ended(consumer)
    rig.advance(1)
    assert ended(consumer)
    assert [m.WhichOneof("msg") for m in rig.take(producer.peer)] == ["stop_data_source"]
    assert consumer.read() == []
    fire(rig, producer, "go")  # too late: the session is over
    assert producer.writers == {} and consumer.read() == []


def test_a_second_start_trigger_is_recorded_but_does_not_restart_or_extend():
    rig, producer, consumer, _ = setup(trigger_config(MODE.START_TRACING, stop_delay_ms=1000))
    fire(rig, producer, "go")
    producer.process()
    rig.advance(600)
    fire(rig, producer, "go")
    assert [m.WhichOneof("msg") for m in rig.take(producer.peer)] == []
    rig.advance(400)
    producer.process()
    assert ended(consumer)
    assert len(triggers_in(consumer.read())) == 2


# -- STOP_TRACING --------------------------------------------------------------------------


def test_stop_tracing_records_from_the_start_and_stops_after_the_delay():
    rig, producer, consumer, enabled = setup(trigger_config(MODE.STOP_TRACING, stop_delay_ms=200))
    assert enabled.started
    write(producer, 1, 2)
    assert consumer.read() == [], "not triggered yet: a read returns nothing"
    write(producer, 3)
    fire(rig, producer, "go")
    rig.advance(100)
    fire(rig, producer, "go")  # the stop stays where the first one put it
    rig.advance(100)
    producer.process()
    assert ended(consumer)
    packets = consumer.read()
    assert produced(packets) == [1, 2, 3]  # the withheld read consumed nothing
    assert [t.trigger_name for t in triggers_in(packets)] == ["go", "go"]


def test_stop_tracing_never_triggered_ends_at_the_timeout_and_returns_nothing():
    rig, producer, consumer, _ = setup(trigger_config(MODE.STOP_TRACING, timeout_ms=5000))
    write(producer, 1, 2, 3)
    rig.advance(4999)
    assert not ended(consumer)
    rig.advance(1)  # flush, then stop, as duration_ms
    assert [m.WhichOneof("msg") for m in rig.to_producers[producer.peer.identity]] == ["flush"]
    producer.process()
    assert ended(consumer)
    assert consumer.read() == []


def test_an_unknown_trigger_name_changes_nothing():
    rig, producer, consumer, _ = setup(trigger_config(MODE.STOP_TRACING, timeout_ms=5000))
    fire(rig, producer, "nope", "GO", "")
    rig.advance(4000)
    assert not ended(consumer)


# -- the knobs -----------------------------------------------------------------------------


def test_producer_name_regex_must_match_the_senders_name_in_full():
    cfg = trigger_config(MODE.STOP_TRACING, producer_name_regex="cam.*")
    rig, producer, consumer, _ = setup(cfg, producer_name="xcamera")
    fire(rig, producer, "go")
    rig.advance(10)
    assert not ended(consumer)
    camera = FakeProducer(rig, "camera", pid=556, ds="other")
    fire(rig, camera, "go")
    rig.advance(10)
    producer.process()
    assert ended(consumer)
    (trigger,) = triggers_in(consumer.read())
    assert trigger.producer_name == "camera"


def test_one_trigger_starts_every_session_that_names_it():
    cfg = trigger_config(MODE.START_TRACING, timeout_ms=3_600_000, max_per_24_h=1)
    rig, producer, consumer, _ = setup(cfg)
    other = FakeConsumer(rig, "other")
    other.send(enable_tracing=ipc.EnableTracingRequest(trace_config=cfg))
    other.replies()
    fire(rig, producer, "go")  # starts both sessions: one matched activation
    producer.process()
    assert len(producer.writers) == 2


def test_max_per_24_h_ignores_triggers_past_the_limit_until_the_window_moves():
    history = TriggerHistory()
    history.add("go", 0)
    history.add("other", 0)
    assert history.count("go", ONE_DAY_NS) == 1
    assert history.count("go", ONE_DAY_NS + 1) == 0  # the day is over
    cfg = trigger_config(MODE.STOP_TRACING, timeout_ms=3_600_000, max_per_24_h=2)
    rig, producer, consumer, _ = setup(cfg)
    for _ in range(4):
        fire(rig, producer, "go")
    rig.advance(10)
    producer.process()
    assert len(triggers_in(consumer.read())) == 2


def test_skip_probability_one_never_fires_and_zero_always_does():
    rig, producer, consumer, _ = setup(trigger_config(MODE.STOP_TRACING, skip_probability=1.0))
    for _ in range(20):
        fire(rig, producer, "go")
    rig.advance(10)
    assert not ended(consumer)
    rig, producer, consumer, _ = setup(trigger_config(MODE.STOP_TRACING, skip_probability=0.0))
    fire(rig, producer, "go")
    rig.advance(1)
    producer.process()
    assert ended(consumer)


def test_skip_probability_draws_from_the_services_rng():
    rig, producer, consumer, _ = setup(trigger_config(MODE.STOP_TRACING, skip_probability=0.5))
    rig.core._ctx.rng = random.Random(7)
    expected = random.Random(7)
    first_kept = next(i for i in range(50) if expected.random() >= 0.5)
    for _ in range(first_kept):
        fire(rig, producer, "go")
    rig.advance(1)
    assert not ended(consumer)
    fire(rig, producer, "go")
    rig.advance(1)
    producer.process()
    assert ended(consumer)


# -- CLONE_SNAPSHOT ------------------------------------------------------------------------


def test_clone_snapshot_tells_the_observing_consumer_and_goes_on():
    cfg = trigger_config(MODE.CLONE_SNAPSHOT, timeout_ms=10_000, stop_delay_ms=300)
    rig, producer, consumer, _ = setup(cfg)
    observe = consumer.send(observe_events=ipc.ObserveEventsRequest(types=[CLONE_HIT]))
    consumer.replies()  # the subscription's ack
    write(producer, 1)
    rig.advance(1000)
    fire(rig, producer, "go")
    rig.advance(299)
    assert consumer.replies() == []
    rig.advance(1)
    (event,) = consumer.replies()
    assert event.request_id == observe
    hit = event.events.clone_trigger_hit
    assert (hit.tracing_session_id, hit.trigger_name, hit.producer_name) == (1, "go", "prod")
    assert (hit.producer_uid, hit.boot_time_ns, hit.trigger_delay_ms) == (1000, 2000 * MS, 300)
    fire(rig, producer, "go")  # every trigger is a snapshot
    rig.advance(300)
    assert [r.events.clone_trigger_hit.trigger_name for r in consumer.replies()] == ["go"]
    assert consumer.read() == [], "a CLONE_SNAPSHOT session is read through its clones"
    rig.advance(10_000 - 1600)
    producer.process()
    assert ended(consumer)


def test_clone_snapshot_hits_go_only_to_a_consumer_that_asked_for_them():
    rig, producer, consumer, _ = setup(trigger_config(MODE.CLONE_SNAPSHOT))
    consumer.send(observe_events=ipc.ObserveEventsRequest(types=[1, 2]))
    consumer.replies()
    fire(rig, producer, "go")
    rig.advance(1)
    assert [r.WhichOneof("msg") for r in consumer.replies()] == []


# -- who fires -----------------------------------------------------------------------------


def test_a_consumer_fires_under_its_client_name_and_its_kernel_uid():
    rig, producer, consumer, _ = setup(trigger_config(MODE.START_TRACING, stop_delay_ms=100))
    ctl = FakeConsumer(rig, "ctl", uid=4321)
    ctl.send(hello=ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION, client_name="tracebus-ctl"))
    ctl.replies()
    rid = ctl.send(activate_triggers=ipc.ActivateTriggersRequest(trigger_names=["go"]))
    (ack,) = ctl.replies()
    assert ack.request_id == rid and ack.WhichOneof("msg") == "ack" and ack.ack.error == ""
    producer.process()
    rig.advance(100)
    producer.process()
    (trigger,) = triggers_in(consumer.read())
    assert (trigger.producer_name, trigger.trusted_producer_uid) == ("tracebus-ctl", 4321)


def test_a_consumer_without_a_client_name_is_recorded_as_consumer():
    rig, producer, consumer, _ = setup(trigger_config(MODE.STOP_TRACING))
    anonymous = FakeConsumer(rig, "anon")
    anonymous.send(activate_triggers=ipc.ActivateTriggersRequest(trigger_names=["go"]))
    rig.advance(1)
    producer.process()
    (trigger,) = triggers_in(consumer.read())
    assert trigger.producer_name == "consumer"


def test_a_producer_trigger_gets_no_reply_and_is_not_counted_as_unhandled():
    rig, producer, consumer, _ = setup(trigger_config(MODE.STOP_TRACING))
    fire(rig, producer, "x" * 300)
    assert rig.take(producer.peer) == []
    assert rig.core.counters.messages_not_handled == 0


def test_mode_and_duration_follow_traced():
    cfg = pb.TraceConfig(duration_ms=7)
    assert mode(cfg) == MODE.UNSPECIFIED and duration_ms(cfg) == 7
    assert expected_end_ms(cfg) == 0
    cfg.trigger_config.trigger_mode = MODE.STOP_TRACING
    cfg.trigger_config.trigger_timeout_ms = 5
    assert expected_end_ms(cfg) == 5  # (no triggers: no delay)
    cfg.trigger_config.use_clone_snapshot_if_available = True
    assert mode(cfg) == MODE.CLONE_SNAPSHOT
    cfg = pb.TraceConfig.FromString(trigger_config(MODE.CLONE_SNAPSHOT, timeout_ms=42))
    assert duration_ms(cfg) == 42
    cfg = pb.TraceConfig.FromString(trigger_config(MODE.START_TRACING, stop_delay_ms=9))
    assert duration_ms(cfg) == 0 and expected_end_ms(cfg) == 10_009


def test_stop_tracing_with_use_clone_snapshot_if_available_snapshots():
    cfg = pb.TraceConfig.FromString(trigger_config(MODE.STOP_TRACING, timeout_ms=5000))
    cfg.trigger_config.use_clone_snapshot_if_available = True
    rig, producer, consumer, _ = setup(cfg.SerializeToString())
    consumer.send(observe_events=ipc.ObserveEventsRequest(types=[CLONE_HIT]))
    consumer.replies()
    fire(rig, producer, "go")
    rig.advance(1000)
    (event,) = consumer.replies()
    assert event.events.clone_trigger_hit.trigger_name == "go"
    assert not ended(consumer)  # it goes on, as a CLONE_SNAPSHOT session


def test_a_request_with_too_many_names_is_refused_whole_with_a_clear_error():
    rig, producer, consumer, _ = setup(trigger_config(MODE.STOP_TRACING))
    names = ["go"] + ["x"] * 256
    rig.producer(
        producer.peer, 9, activate_triggers=ipc.ActivateTriggersRequest(trigger_names=names)
    )
    (reply,) = rig.take(producer.peer)
    assert reply.request_id == 9 and "257 trigger names in one request" in reply.error.message
    consumer.send(activate_triggers=ipc.ActivateTriggersRequest(trigger_names=names))
    (ack,) = consumer.replies()
    assert "at most 256, none fired" in ack.ack.error
    rig.advance(10)
    assert not ended(consumer)


def test_the_history_keeps_times_per_name_and_forgets_after_a_day():
    history = TriggerHistory()
    for t in range(5):
        history.add("go", t)
    assert history.count("go", 4) == 5 and history.count("other", 4) == 0
    assert history.count("go", ONE_DAY_NS + 2) == 3  # times 0 and 1 are over a day old


# -- write_into_file -------------------------------------------------------------------------


def test_write_into_file_writes_nothing_before_a_start_trigger_then_the_whole_trace():
    from tests.test_write_into_file import PATH, FileRig

    rig = FileRig()
    producer = FakeProducer(rig, "prod", pid=555)
    consumer = FakeConsumer(rig, "c")
    cfg = pb.TraceConfig.FromString(trigger_config(MODE.START_TRACING, stop_delay_ms=1000))
    cfg.write_into_file, cfg.file_write_period_ms = True, 100
    request = ipc.EnableTracingRequest(trace_config=cfg.SerializeToString(), output_path=PATH)
    consumer.send(enable_tracing=request)
    assert not consumer.replies()[0].enable_tracing.error
    producer.process()
    for _ in range(5):  # five periods without a trigger
        rig.advance(100)
        rig.idle()
    assert rig.files.data == b"", "nothing before the trigger, not even service packets"
    fire(rig, producer, "go")
    producer.process()
    write(producer, 1, 2)
    rig.advance(1000)  # stop_delay_ms: flush, stop, last drain
    producer.process()
    rig.idle()
    assert rig.files.closed and ended(consumer)
    trace = rig.files.trace()
    assert produced(trace.packet) == [1, 2]
    assert [t.trigger_name for t in triggers_in(trace.packet)] == ["go"]
    assert trace.packet[-1].HasField("trace_stats")


def test_write_into_file_start_never_triggered_leaves_the_file_empty():
    from tests.test_write_into_file import PATH, FileRig

    rig = FileRig()
    FakeProducer(rig, "prod", pid=555)
    consumer = FakeConsumer(rig, "c")
    cfg = pb.TraceConfig.FromString(trigger_config(MODE.START_TRACING, timeout_ms=500))
    cfg.write_into_file = True
    request = ipc.EnableTracingRequest(trace_config=cfg.SerializeToString(), output_path=PATH)
    consumer.send(enable_tracing=request)
    consumer.replies()
    rig.advance(500)
    rig.idle()
    assert rig.files.closed and rig.files.data == b"" and ended(consumer)


def test_a_sender_firing_in_a_loop_costs_bounded_memory():
    from actors.core.triggers import MAX_KEPT_TRIGGERS

    rig, producer, consumer, _ = setup(
        trigger_config(MODE.CLONE_SNAPSHOT, timeout_ms=60_000, stop_delay_ms=30_000)
    )
    for _ in range(MAX_KEPT_TRIGGERS // 256 + 2):
        fire(rig, producer, *["go"] * 256)
    (session,) = rig.core.sessions.values()
    assert len(session.received_triggers) == MAX_KEPT_TRIGGERS
    assert len(session.clone_hits_due) == MAX_KEPT_TRIGGERS
