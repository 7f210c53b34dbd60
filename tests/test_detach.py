"""Detach and attach on ServiceCore, in one process with a fake clock (issue 12,
item 3, core side): a detached session goes on without a consumer and outlives
it; a consumer of the same uid attaches under the key and holds it as if it had
enabled it; keys are per uid; what the old consumer waited for ends at the
detach; a detached session that reaches its own end is freed (a write_into_file
session's file complete), any other end keeps it for the consumer that attaches."""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.detach import DETACHED
from protos import tracebus_ipc_pb2 as ipc
from tests.test_service_core import FakeConsumer, FakeProducer, Rig, config
from tests.test_write_into_file import CONSUMER, NOW, FakeFiles, chunks_of, run_drains, send
from tests.test_write_into_file import config as file_config
from tests.test_write_into_file import enable as enable_into_file

MS = 1_000_000


def enable(consumer: FakeConsumer, **fields) -> int:
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=config(**fields)))
    (reply,) = consumer.replies()
    assert not reply.enable_tracing.error
    return reply.enable_tracing.session_id


def detach(consumer: FakeConsumer, key: str) -> str:
    consumer.send(detach=ipc.DetachRequest(key=key))
    (reply,) = consumer.replies()
    return reply.ack.error


def attach(consumer: FakeConsumer, key: str) -> ipc.AttachResponse:
    consumer.send(attach=ipc.AttachRequest(key=key))
    (reply,) = consumer.replies()
    return reply.attach


def await_end(consumer: FakeConsumer) -> int:
    return consumer.send(enable_tracing=ipc.EnableTracingRequest(attach_notification_only=True))


def write(producer: FakeProducer, first: int, count: int) -> None:
    (writer,) = producer.writers.values()
    for i in range(first, first + count):
        packet = pb.TracePacket(timestamp=i)
        packet.for_testing.counter = i
        writer.write_packet(packet.SerializeToString())


def flush(rig: Rig, consumer: FakeConsumer, producer: FakeProducer) -> None:
    consumer.send(flush=ipc.FlushConsumerRequest(timeout_ms=1000))
    producer.process()
    (reply,) = consumer.replies()
    assert reply.flush.success


def test_a_detached_session_outlives_its_consumer_and_another_attaches_stops_and_reads():
    rig = Rig()
    producer = FakeProducer(rig, "prod", pid=555)
    first = FakeConsumer(rig, "first")
    session_id = enable(first)
    producer.process()
    write(producer, 1, 50)
    assert detach(first, "k") == ""
    rig.route(rig.core.consumer_gone(first.peer.identity, rig.now))  # the CLI exits
    (session,) = rig.core.sessions.values()
    assert session.consumer == DETACHED and session.state.value == "STARTED"
    write(producer, 51, 50)  # recorded while detached

    second = FakeConsumer(rig, "second")
    attached = attach(second, "k")
    assert (attached.error, attached.session_id, attached.state) == ("", session_id, "STARTED")
    assert pb.TraceConfig.FromString(attached.trace_config).duration_ms == 0
    end_id = await_end(second)
    assert second.replies() == []  # not ended yet: the end reply comes at the end
    flush(rig, second, producer)
    second.send(disable_tracing=ipc.DisableTracingRequest())
    replies = second.replies()
    assert replies[0].request_id == end_id and replies[0].enable_tracing.disabled
    assert replies[0].enable_tracing.session_id == session_id
    counters = [p.for_testing.counter for p in second.read() if p.HasField("for_testing")]
    assert counters == list(range(1, 101))  # before and after the detach
    assert first.replies() == []  # nothing more went to the consumer that detached


def test_detach_keys_are_unique_per_uid_and_attach_is_for_the_same_uid_only():
    rig = Rig()
    a, b = FakeConsumer(rig, "a"), FakeConsumer(rig, "b")
    other_uid = FakeConsumer(rig, "o", uid=2000)
    for c in (a, b, other_uid):
        enable(c)
    assert detach(a, "k") == ""
    assert detach(b, "k") == "a session of uid 1000 is already detached under the key 'k'"
    assert detach(other_uid, "k") == ""  # another uid's keys are its own
    assert detach(b, "") == "the detach key is empty"
    assert detach(b, "x" * 2000).startswith("the detach key is longer than")
    lone = FakeConsumer(rig, "lone")
    assert detach(lone, "z") == "this consumer has no tracing session to detach"

    assert attach(b, "k").error.startswith("this consumer already has a tracing session")
    stranger = FakeConsumer(rig, "s", uid=3000)
    assert attach(stranger, "k").error == "no session is detached under the key 'k' for uid 3000"
    assert attach(lone, "nope").error == "no session is detached under the key 'nope' for uid 1000"
    taken = attach(lone, "k")
    assert taken.error == "" and taken.session_id == 1
    assert attach(FakeConsumer(rig, "late"), "k").error  # taken back: no longer detached


def test_detach_ends_what_the_old_consumer_waited_for():
    rig = Rig()
    producer = FakeProducer(rig, "prod", pid=555)
    consumer = FakeConsumer(rig, "c")
    enable(consumer, data_source_stop_timeout_ms=1000)
    producer.process()
    observe = ipc.ObserveEventsRequest(types=[ipc.ObserveEventsRequest.TYPE_DATA_SOURCES_INSTANCES])
    consumer.send(observe_events=observe)
    consumer.replies()
    write(producer, 1, 2000)
    flush(rig, consumer, producer)
    read_id = consumer.send(read_buffers=ipc.ReadBuffersRequest())
    detach_id = consumer.send(detach=ipc.DetachRequest(key="k"))  # before any slice went
    rig.idle()
    replies = consumer.replies()
    assert [(r.request_id, r.WhichOneof("msg")) for r in replies] == [
        (read_id, "error"),
        (detach_id, "ack"),
    ]
    assert replies[0].error.message == "the session was detached mid-read"
    assert replies[1].ack.error == ""
    (session,) = rig.core.sessions.values()
    assert session.observer_request_id == 0
    other = FakeConsumer(rig, "other")
    attach(other, "k")
    counters = [p.for_testing.counter for p in other.read() if p.HasField("for_testing")]
    assert counters == list(range(1, 2001))  # the ended read took nothing
    other.send(disable_tracing=ipc.DisableTracingRequest())  # its instances stop
    kinds = [r.WhichOneof("msg") for r in other.replies()]
    assert "events" not in kinds  # the old subscription is gone, not inherited
    assert consumer.replies() == []


def test_a_detached_session_at_the_end_of_duration_ms_is_freed():
    """traced's FlushAndDisableTracing: nobody is attached, so the session goes."""
    rig = Rig()
    producer = FakeProducer(rig, "prod", pid=555)
    consumer = FakeConsumer(rig, "c")
    enable(consumer, duration_ms=100)
    producer.process()
    assert detach(consumer, "k") == ""
    rig.advance(100)  # the stop flush
    producer.process()  # acked: the session stops
    assert rig.core.next_deadline() == 0  # its free is due at once
    rig.advance(0)
    assert not rig.core.sessions and not rig.core.buffers
    assert consumer.replies() == []
    assert attach(FakeConsumer(rig, "late"), "k").error.startswith("no session is detached")


def test_a_detached_write_into_file_session_keeps_writing_and_its_end_frees_it():
    files = FakeFiles()
    core, _ = enable_into_file(file_config(duration_ms=100, file_write_period_ms=100), files)
    (reply,) = send(core, files, 2, NOW, detach=ipc.DetachRequest(key="k"))
    assert reply.ack.error == ""
    files.take(core.consumer_gone(CONSUMER.identity, NOW + 1 * MS))
    assert core.sessions  # the consumer's departure does not free it
    replies = files.take(core.on_timer(NOW + 100 * MS))  # duration over: flush, stop
    replies += run_drains(core, files, NOW + 100 * MS)
    replies += files.take(core.on_timer(NOW + 100 * MS))  # the due free
    assert replies == []  # no end reply: nobody is attached
    assert files.closed and not core.sessions and not core.buffers
    kinds = [p.WhichOneof("data") for p in files.trace().packet]
    assert kinds[0] == "clock_snapshot" and kinds[-1] == "trace_stats"


def test_a_detached_session_ended_otherwise_is_kept_and_told_to_the_consumer_that_attaches():
    """max_file_size_bytes ends it while detached: still there, DISABLED; the end reply
    (with the file's outcome) goes to the attaching consumer at once."""
    files = FakeFiles()
    cfg = file_config(max_file_size_bytes=2000, file_write_period_ms=100)
    core, _ = enable_into_file(cfg, files)
    (reply,) = send(core, files, 2, NOW, detach=ipc.DetachRequest(key="k"))
    assert reply.ack.error == ""
    files.take(core.consumer_gone(CONSUMER.identity, NOW))
    (buffer,) = core.buffers.values()
    for writer_id, chunk_id, count, flags, payload in chunks_of(64 << 10, writers=1):
        buffer.copy_chunk_untrusted(3, 1000, 4242, writer_id, chunk_id, count, flags, True, payload)
    files.take(core.on_timer(NOW + 100 * MS))
    assert run_drains(core, files, NOW + 100 * MS) == []  # ended: nobody told
    assert files.closed
    (session,) = core.sessions.values()
    assert session.state.value == "DISABLED" and session.detach_key == "k"

    (reply,) = send(core, files, 5, NOW + 200 * MS, attach=ipc.AttachRequest(key="k"))
    assert (reply.attach.error, reply.attach.state) == ("", "DISABLED")
    end = ipc.EnableTracingRequest(attach_notification_only=True)
    (ended,) = send(core, files, 6, NOW + 200 * MS, enable_tracing=end)
    assert ended.request_id == 6 and ended.enable_tracing.disabled
    assert ended.enable_tracing.error == ""


def test_attach_notification_only_without_a_session_ends_at_once_with_an_error():
    rig = Rig()
    consumer = FakeConsumer(rig, "c")
    request_id = await_end(consumer)
    (reply,) = consumer.replies()
    assert reply.request_id == request_id and reply.enable_tracing.disabled
    assert "no attached session" in reply.enable_tracing.error
    assert not rig.core.sessions  # it did not enable anything


def test_an_end_between_the_attach_and_its_notification_request_waits_for_that_request():
    rig = Rig()
    producer = FakeProducer(rig, "prod", pid=555)
    first = FakeConsumer(rig, "first")
    enable(first)
    producer.process()
    detach(first, "k")
    second = FakeConsumer(rig, "second")
    assert attach(second, "k").state == "STARTED"
    rig.route(rig.core.producer_gone(producer.peer.identity, rig.now))
    second.send(disable_tracing=ipc.DisableTracingRequest())  # ends before await_end
    (acked,) = second.replies()  # no end reply under no request: only the disable's ack
    assert acked.WhichOneof("msg") == "ack" and acked.ack.error == ""
    end_id = await_end(second)
    (ended,) = second.replies()
    assert ended.request_id == end_id and ended.enable_tracing.disabled
