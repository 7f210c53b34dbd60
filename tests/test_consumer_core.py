"""ConsumerCore against scripted service replies, in one process, with a fake clock.

Each test plays the service's side of the consumer port (protos/__init__.py):
it takes the Requests the core makes, wraps them as the shell does, and answers
with real ServiceToConsumer envelopes.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import readback
from actors.core.consumer_core import (
    FLUSH_REPLY_GRACE_NS,
    NOT_SUPPORTED,
    Completed,
    ConsumerCore,
    EnableResult,
    EventsObserved,
    Failed,
    Kind,
    Notice,
    PacketsRead,
    ProtocolMismatch,
    ReadResult,
    RequestTimeout,
    ServiceError,
    SessionEnded,
    SessionError,
    SessionView,
    UsageError,
    frame_packet,
)
from actors.core.consumer_summary import (
    SummaryInput,
    TraceSummary,
    format_summary,
    packet_identity,
    producer_names,
    trailer_start,
)
from protos import tracebus_ipc_pb2 as ipc

pytestmark = pytest.mark.timeout(30)

S = 1_000_000_000  # one second in ns
PEER = "ipc:///fake/consumer.sock"


def reply(request_id: int, **fields) -> ipc.ServiceToConsumer:
    return ipc.ServiceToConsumer(request_id=request_id, **fields)


def envelope(request: ipc.ConsumerToService) -> ipc.ConsumerToService:
    """What the shell sends, round-tripped through the wire format."""
    return ipc.ConsumerToService.FromString(request.SerializeToString())


def connected(now: int = 0) -> ConsumerCore:
    core = ConsumerCore()
    request = core.hello(now=now, timeout_ns=S)
    hello = ipc.HelloReply(protocol_version=ipc.PROTOCOL_VERSION, features=3)
    assert core.handle(PEER, reply(request.request_id, hello=hello), now) == [
        Completed(request.request_id, Kind.HELLO, 3)
    ]
    return core


def enabled(now: int = 0) -> ConsumerCore:
    core = connected(now)
    request = core.enable_tracing(b"", now=now, timeout_ns=S)
    first = ipc.EnableTracingResponse(started=True, session_id=9)
    core.handle(PEER, reply(request.request_id, enable_tracing=first), now)
    return core


def slices(*pieces: tuple[bytes, bool], has_more: bool) -> dict:
    slice_list = [{"data": d, "last_slice_for_packet": last} for d, last in pieces]
    return {"read_buffers": {"slices": slice_list, "has_more": has_more}}


# -- handshake -----------------------------------------------------------------------------------


def test_hello_sends_version_and_name_and_numbers_requests_from_one():
    core = ConsumerCore(client_name="probe")
    request = core.hello(now=0, timeout_ns=S)
    sent = envelope(request)
    assert sent.request_id == 1
    assert sent.hello.protocol_version == ipc.PROTOCOL_VERSION
    assert sent.hello.client_name == "probe"


def test_version_mismatch_is_a_clear_error():
    core = ConsumerCore()
    request = core.hello(now=0, timeout_ns=S)
    answer = reply(request.request_id, hello={"protocol_version": 7, "error": "version 7 only"})
    [event] = core.handle(PEER, answer, 0)
    assert isinstance(event, Failed) and isinstance(event.error, ProtocolMismatch)
    assert "protocol 7" in str(event.error) and f"speaks {ipc.PROTOCOL_VERSION}" in str(event.error)
    assert "version 7 only" in str(event.error)
    assert not core.connected
    with pytest.raises(UsageError, match="hello first"):
        core.enable_tracing(b"", now=0, timeout_ns=S)


def test_hello_refused_with_same_version():
    core = ConsumerCore()
    request = core.hello(now=0, timeout_ns=S)
    hello = {"protocol_version": ipc.PROTOCOL_VERSION, "error": "feature X required"}
    [event] = core.handle(PEER, reply(request.request_id, hello=hello), 0)
    assert isinstance(event.error, ProtocolMismatch) and "feature X" in str(event.error)


def test_hello_timeout_and_late_reply_is_ignored():
    core = ConsumerCore()
    request = core.hello(now=0, timeout_ns=S)
    assert core.next_deadline() == S
    assert core.expire(S - 1) == []
    [event] = core.expire(S)
    assert isinstance(event.error, RequestTimeout) and "hello" in str(event.error)
    hello = ipc.HelloReply(protocol_version=ipc.PROTOCOL_VERSION)
    assert core.handle(PEER, reply(request.request_id, hello=hello), 2 * S) == []
    assert core.late_replies == 1 and not core.connected


# -- enable: two phases ---------------------------------------------------------------------------


def test_two_phase_enable():
    core = connected()
    config = pb.TraceConfig(duration_ms=100).SerializeToString()
    request = core.enable_tracing(config, now=0, timeout_ns=S)
    assert envelope(request).enable_tracing.trace_config == config
    assert core.session is SessionView.ENABLING
    first = ipc.EnableTracingResponse(started=True, session_id=42, unsupported_fields=["a.b"])
    events = core.handle(PEER, reply(request.request_id, enable_tracing=first), 0)
    assert events == [Completed(request.request_id, Kind.ENABLE, EnableResult(42, True, ("a.b",)))]
    assert core.session is SessionView.ACTIVE and core.session_id == 42
    assert core.next_deadline() is None, "the second reply comes whenever the session ends"
    assert core.expire(100 * S) == []
    second = ipc.EnableTracingResponse(disabled=True)
    events = core.handle(PEER, reply(request.request_id, enable_tracing=second), 5 * S)
    assert events == [SessionEnded(request.request_id, "")]
    assert core.session is SessionView.ENDED


def test_the_end_of_a_session_names_data_sources_whose_stop_ack_was_late():
    core = connected()
    request = core.enable_tracing(pb.TraceConfig().SerializeToString(), now=0, timeout_ns=S)
    first = ipc.EnableTracingResponse(started=True, session_id=7)
    core.handle(PEER, reply(request.request_id, enable_tracing=first), 0)
    second = ipc.EnableTracingResponse(disabled=True, stop_timed_out=["p/ds", "q/ds"])
    events = core.handle(PEER, reply(request.request_id, enable_tracing=second), S)
    assert events == [SessionEnded(request.request_id, "", ("p/ds", "q/ds"))]


def test_session_ending_with_an_error():
    core = connected()
    request = core.enable_tracing(b"", now=0, timeout_ns=S)
    core.handle(PEER, reply(request.request_id, enable_tracing={"started": True}), 0)
    second = {"disabled": True, "error": "producer crashed"}
    events = core.handle(PEER, reply(request.request_id, enable_tracing=second), 0)
    assert events == [SessionEnded(request.request_id, "producer crashed")]
    assert core.session_error == "producer crashed"


def test_enable_refused_at_setup_leaves_no_session():
    core = connected()
    request = core.enable_tracing(b"", now=0, timeout_ns=S)
    refused = {"disabled": True, "error": "too many sessions (limit 15)"}
    events = core.handle(PEER, reply(request.request_id, enable_tracing=refused), 0)
    failed, ended = events
    assert isinstance(failed.error, SessionError) and "limit 15" in str(failed.error)
    assert ended == SessionEnded(request.request_id, "too many sessions (limit 15)")
    assert core.session is SessionView.NONE
    core.enable_tracing(b"", now=0, timeout_ns=S)  # a new attempt is allowed


def test_deferred_start_session_then_start():
    core = connected()
    request = core.enable_tracing(b"", now=0, timeout_ns=S)
    [done] = core.handle(PEER, reply(request.request_id, enable_tracing={"session_id": 3}), 0)
    assert done.value == EnableResult(3, False, ())
    start = core.start_tracing(now=0, timeout_ns=S)
    assert envelope(start).WhichOneof("msg") == "start_tracing"
    assert core.handle(PEER, reply(start.request_id, ack={}), 0) == [
        Completed(start.request_id, Kind.START)
    ]


def test_one_session_per_connection():
    core = enabled()
    with pytest.raises(UsageError, match="one session per consumer connection"):
        core.enable_tracing(b"", now=0, timeout_ns=S)


def test_requests_that_need_a_session():
    core = connected()
    for make in (core.start_tracing, core.disable_tracing, core.free_buffers):
        with pytest.raises(UsageError, match="no session"):
            make(now=0, timeout_ns=S)
    with pytest.raises(UsageError, match="no session"):
        core.read_buffers(now=0, idle_timeout_ns=S)
    core.get_trace_stats(now=0, timeout_ns=S)  # service-wide: allowed without a session
    core.query_service_state(now=0, timeout_ns=S)


def test_free_forgets_the_session_and_a_late_disabled_reply():
    core = enabled()
    free = core.free_buffers(now=0, timeout_ns=S)
    events = core.handle(PEER, reply(free.request_id, ack={}), 0)
    assert events == [Completed(free.request_id, Kind.FREE), SessionEnded(2, "")]
    assert core.session is SessionView.NONE
    late = reply(2, enable_tracing={"disabled": True})
    assert core.handle(PEER, late, 0) == []
    core.enable_tracing(b"", now=0, timeout_ns=S)


# -- read_buffers ---------------------------------------------------------------------------------


def test_read_reassembles_slices_across_replies():
    core = enabled()
    read = core.read_buffers(now=0, idle_timeout_ns=S)
    rid = read.request_id
    r1 = slices((b"A", True), (b"B1", False), (b"B2", False), (b"B3", True), (b"C1", False),
                has_more=True)  # fmt: skip
    assert core.handle(PEER, reply(rid, **r1), 0) == [PacketsRead(rid, (b"A", b"B1B2B3"))]
    r2 = slices((b"C2", False), has_more=True)  # C spans three replies
    assert core.handle(PEER, reply(rid, **r2), 0) == []
    r3 = slices((b"C3", True), (b"D", True), has_more=False)
    events = core.handle(PEER, reply(rid, **r3), 0)
    assert events == [
        PacketsRead(rid, (b"C1C2C3", b"D")),
        Completed(rid, Kind.READ, ReadResult(packets=4, bytes=14, replies=3, incomplete_bytes=0)),
    ]
    assert core.next_deadline() is None


def test_read_of_an_empty_buffer_and_a_dangling_slice():
    core = enabled()
    read = core.read_buffers(now=0, idle_timeout_ns=S)
    events = core.handle(PEER, reply(read.request_id, **slices(has_more=False)), 0)
    assert events == [Completed(read.request_id, Kind.READ, ReadResult(0, 0, 1, 0))]
    read = core.read_buffers(now=0, idle_timeout_ns=S)
    r = slices((b"x", True), (b"half", False), has_more=False)
    [packets, done] = core.handle(PEER, reply(read.request_id, **r), 0)
    assert packets.packets == (b"x",) and done.value.incomplete_bytes == 4


def test_read_timeout_is_per_reply():
    core = enabled()
    read = core.read_buffers(now=0, idle_timeout_ns=S)
    core.handle(PEER, reply(read.request_id, **slices((b"a", True), has_more=True)), S - 1)
    assert core.next_deadline() == 2 * S - 1, "each reply restarts the idle timeout"
    [failed] = core.expire(2 * S)
    assert isinstance(failed.error, RequestTimeout) and "read_buffers" in str(failed.error)
    late = reply(read.request_id, **slices((b"b", True), has_more=False))
    assert core.handle(PEER, late, 3 * S) == []


def test_a_read_lives_as_long_as_replies_keep_coming():
    """A read far longer than its idle timeout completes; only a silent gap fails it."""
    core = enabled()
    read = core.read_buffers(now=0, idle_timeout_ns=S)
    rid, now = read.request_id, 0
    for i in range(10):  # ten replies, each just inside the timeout: 10 s in all
        now += S - 1
        assert core.expire(now) == []
        piece = slices((b"p%d" % i, True), has_more=True)
        assert core.handle(PEER, reply(rid, **piece), now) == [PacketsRead(rid, (b"p%d" % i,))]
    now += S - 1
    [done] = core.handle(PEER, reply(rid, **slices(has_more=False)), now)
    assert done == Completed(rid, Kind.READ, ReadResult(10, 20, 11, 0))
    assert core.expire(now + 10 * S) == [] and core.next_deadline() is None


def test_a_reply_without_whole_packets_still_restarts_the_idle_timeout():
    core = enabled()
    read = core.read_buffers(now=0, idle_timeout_ns=S)
    rid = read.request_id
    assert core.handle(PEER, reply(rid, **slices((b"big1", False), has_more=True)), S - 1) == []
    assert core.expire(2 * S - 2) == [], "a slice of a packet is data flowing"
    [packets] = core.handle(PEER, reply(rid, **slices((b"big2", True), has_more=True)), 2 * S - 2)
    assert packets == PacketsRead(rid, (b"big1big2",))


def test_connection_lost_mid_read_keeps_whole_packets_and_never_delivers_a_partial_one():
    core = enabled()
    read = core.read_buffers(now=0, idle_timeout_ns=S)
    rid = read.request_id
    r1 = slices((b"A", True), (b"B1", False), has_more=True)
    assert core.handle(PEER, reply(rid, **r1), 0) == [PacketsRead(rid, (b"A",))]
    events = core.connection_lost("the service went away")
    [failed] = [e for e in events if isinstance(e, Failed)]
    assert failed.kind is Kind.READ and isinstance(failed.error, ServiceError)
    assert not any(isinstance(e, PacketsRead) for e in events), "B1 never became a packet"


# -- flush, errors, other requests ---------------------------------------------------------------


def test_flush_true_false_and_timeout():
    core = enabled()
    ok = core.flush(500, now=0)
    assert envelope(ok).flush.timeout_ms == 500
    assert core.handle(PEER, reply(ok.request_id, flush={"success": True}), 0)[0].value is True
    refused = core.flush(500, now=0)
    assert core.handle(PEER, reply(refused.request_id, flush={}), 0)[0].value is False
    silent = core.flush(500, now=0)
    assert core.next_deadline() == 500_000_000 + FLUSH_REPLY_GRACE_NS
    assert core.expire(400_000_000) == []
    assert core.expire(2 * S) == [Completed(silent.request_id, Kind.FLUSH, False)]
    assert core.handle(PEER, reply(silent.request_id, flush={"success": True}), 3 * S) == []


def test_error_envelope_fails_the_request_it_answers():
    core = enabled()
    disable = core.disable_tracing(now=0, timeout_ns=S)
    error = reply(disable.request_id, error={"message": "not allowed"})
    [failed] = core.handle(PEER, error, 0)
    assert isinstance(failed.error, ServiceError)
    assert str(failed.error) == "disable_tracing failed: not allowed"


def test_ack_with_error_and_wrong_reply_kind():
    core = enabled()
    free = core.free_buffers(now=0, timeout_ns=S)
    [failed] = core.handle(PEER, reply(free.request_id, ack={"error": "busy"}), 0)
    assert "free_buffers: busy" in str(failed.error)
    assert core.session is SessionView.ACTIVE
    stats = core.get_trace_stats(now=0, timeout_ns=S)
    [failed] = core.handle(PEER, reply(stats.request_id, flush={"success": True}), 0)
    assert "protocol error" in str(failed.error) and "get_trace_stats" in str(failed.error)


def test_enable_error_envelope_ends_the_session():
    core = connected()
    request = core.enable_tracing(b"", now=0, timeout_ns=S)
    events = core.handle(PEER, reply(request.request_id, error={"message": "bad config"}), 0)
    assert isinstance(events[0].error, ServiceError) and isinstance(events[1], SessionEnded)
    assert core.session is SessionView.NONE


def test_stray_replies_and_heartbeats():
    core = connected()
    assert core.handle(PEER, reply(0, heartbeat={}), 0) == []
    [notice] = core.handle(PEER, reply(77, flush={"success": True}), 0)
    assert isinstance(notice, Notice) and "77" in notice.message
    [notice] = core.handle(PEER, reply(0, error={"message": "undecodable frame"}), 0)
    assert "undecodable frame" in notice.message
    assert core.stray_replies == 2


SERVICE_TO_CONSUMER = ipc.ServiceToConsumer.DESCRIPTOR.oneofs_by_name["msg"].fields
# A message from a newer service: request 5 and field 99, which this protocol does not know.
FROM_THE_FUTURE = b"\x08\x05" + b"\x9a\x06\x00"


@pytest.mark.parametrize("kind", [f.name for f in SERVICE_TO_CONSUMER])
def test_every_kind_the_service_sends_is_handled_or_marked_not_supported(kind):
    core = enabled()
    message = reply(77)
    getattr(message, kind).SetInParent()
    core.handle(PEER, message, 0)
    if kind in NOT_SUPPORTED:
        assert kind not in core.handled_kinds and core.unhandled_messages == 1
    else:
        assert kind in core.handled_kinds and core.unhandled_messages == 0


def test_a_kind_without_handler_fails_its_request_or_is_noticed_and_counted():
    core = connected()
    message = ipc.ServiceToConsumer.FromString(FROM_THE_FUTURE)
    assert message.WhichOneof("msg") is None and message.request_id == 5
    [notice] = core.handle(PEER, message, 0)
    assert isinstance(notice, Notice) and "not understood" in notice.message
    stats = core.get_trace_stats(now=0, timeout_ns=S)
    message.request_id = stats.request_id
    [failed] = core.handle(PEER, message, 0)
    assert isinstance(failed, Failed) and "protocol error" in str(failed.error)
    assert core.unhandled_messages == 2 and core.next_deadline() is None


def test_stats_state_and_observe():
    core = connected()
    stats = core.get_trace_stats(now=0, timeout_ns=S)
    data = pb.TraceStats(producers_connected=2).SerializeToString()
    [done] = core.handle(PEER, reply(stats.request_id, trace_stats={"trace_stats": data}), 0)
    assert done.value.producers_connected == 2
    stats = core.get_trace_stats(now=0, timeout_ns=S)
    [failed] = core.handle(PEER, reply(stats.request_id, trace_stats={"trace_stats": b"\xff"}), 0)
    assert "undecodable TraceStats" in str(failed.error)
    query = core.query_service_state(now=0, timeout_ns=S)
    state = {"producers": [{"id": 1, "name": "p", "pid": 5, "uid": 6}]}
    [done] = core.handle(PEER, reply(query.request_id, service_state=state), 0)
    assert done.value.producers[0].name == "p"
    observe = core.observe_events([1, 2], now=0, timeout_ns=S)
    assert list(envelope(observe).observe_events.types) == [1, 2]
    assert core.handle(PEER, reply(observe.request_id, ack={}), 0) == [
        Completed(observe.request_id, Kind.OBSERVE)
    ]
    assert core.next_deadline() is None
    events = ipc.ObservableEvents(all_data_sources_started=True)
    [seen] = core.handle(PEER, reply(observe.request_id, events=events), 0)
    assert isinstance(seen, EventsObserved) and seen.events.all_data_sources_started


def test_connection_lost_fails_everything_and_ends_the_session():
    core = enabled()
    flush = core.flush(1000, now=0)
    events = core.connection_lost("the service went away")
    assert events == [SessionEnded(2, "the service went away"), events[1]]
    assert events[1].request_id == flush.request_id and isinstance(events[1], Failed)
    assert "went away" in str(events[1].error)
    assert core.session is SessionView.ENDED
    with pytest.raises(ServiceError, match="went away"):
        core.get_trace_stats(now=0, timeout_ns=S)


# -- trace file framing and the summary ----------------------------------------------------------


def stamped(pid: int, uid: int, seq: int, dropped: bool = False, size: int = 10) -> bytes:
    packet = pb.TracePacket(timestamp=1)
    packet.for_testing.str = "x" * size
    packet.trusted_pid, packet.trusted_uid = 1, 1  # forged by the producer...
    packet.trusted_packet_sequence_id = 99
    trailer = pb.TracePacket(trusted_pid=pid, trusted_uid=uid, trusted_packet_sequence_id=seq)
    trailer.previous_packet_dropped = int(dropped)  # uint32 in this schema version
    return packet.SerializeToString() + trailer.SerializeToString()  # ...the trailer wins


def test_frame_packet_makes_a_perfetto_trace():
    packets = [stamped(10, 20, 2), b"", stamped(10, 20, 3, size=300)]
    trace = pb.Trace.FromString(b"".join(map(frame_packet, packets)))
    assert [p.SerializeToString() for p in trace.packet][1] == b""
    assert trace.packet[2].for_testing.str == "x" * 300


def test_packet_identity_takes_the_last_value():
    ident = packet_identity(stamped(4321, 1000, 7, dropped=True))
    assert (ident.pid, ident.uid, ident.sequence_id, ident.previous_packet_dropped) == (
        4321,
        1000,
        7,
        True,
    )
    negative = pb.TracePacket(trusted_uid=-1).SerializeToString()
    assert packet_identity(negative).uid == -1
    assert packet_identity(b"\x0a\x05ab") is None  # truncated length-delimited field
    assert packet_identity(b"\x0b") is None  # group wire type


def test_summary_groups_by_producer_and_counts_losses():
    summary = TraceSummary()
    summary.add_all([stamped(1, 0, 1), stamped(100, 1000, 2), stamped(100, 1000, 3, True)])
    summary.add_all([stamped(200, 1000, 4, size=1000), b"\xff"])
    assert summary.packets == 5 and summary.malformed == 1
    stats = pb.TraceStats(invalid_packets=2)
    buf = stats.buffer_stats.add(buffer_size=65536, chunks_written=5, chunks_overwritten=3)
    buf.trace_writer_packet_loss = 4
    stats.buffer_stats.add(buffer_size=4096)
    text = format_summary(
        SummaryInput(
            out_path="t.pftrace",
            summary=summary,
            session_id=3,
            producer_names={100: "alpha", 200: "beta"},
            fill_policies=["RING_BUFFER", "DISCARD"],
            stats=stats,
        )
    )
    assert "wrote 5 packets" in text and "t.pftrace" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:6]}
    assert rows["alpha"][1:5] == ["100", "1000", "2", "2"]
    assert rows["beta"][4] == "1"
    assert "(tracing service)" in text and "(no trusted pid)" in text
    assert "buffer 0: chunks_overwritten 3, trace_writer_packet_loss 4" in text
    assert "service: invalid_packets 2" in text
    assert "previous_packet_dropped: 1 packets (alpha 1)" in text
    assert "#0 RING_BUFFER 64.0 KiB" in text and "#1 DISCARD" in text
    assert len(text.splitlines()) < 25


def test_summary_without_losses_or_stats():
    summary = TraceSummary()
    summary.add(stamped(5, 5, 2))
    text = format_summary(SummaryInput("o", summary, stats=pb.TraceStats()))
    assert "losses: none" in text and "(producer gone)" in text
    assert "losses: unknown" in format_summary(SummaryInput("o", summary))


def test_producers_that_left_are_named_and_a_live_one_wins_a_reused_pid():
    state = ipc.QueryServiceStateResponse()
    state.departed_producers.add(id=1, name="first", pid=10)
    state.departed_producers.add(id=2, name="gone", pid=20)
    state.departed_producers.add(id=3, name="second", pid=10)  # the pid's last user
    state.departed_producers.add(id=4, name="old", pid=30)
    state.producers.add(id=5, name="live", pid=30)  # the pid reused
    assert producer_names(state) == {10: "second", 20: "gone", 30: "live"}


def test_summary_states_the_readback_rate_when_known():
    info = SummaryInput(out_path="t.pftrace", summary=TraceSummary())
    assert "read back" not in format_summary(info)
    info.readback_seconds, info.file_bytes = 2.0, 4 << 20
    assert "read back 4.0 MiB in 2.000 s (2.0 MiB/s)" in format_summary(info)


def _groups(summary: TraceSummary) -> dict[tuple, tuple]:
    return {
        key: (g.pid, g.uid, g.service, g.packets, g.bytes, g.loss_marks, frozenset(g.sequences))
        for key, g in summary.groups.items()
    }


def _merged(summaries: list[TraceSummary]) -> dict[tuple, tuple]:
    """Each summary saw one packet (so scanned it in full): their groups added up."""
    merged: dict[tuple, list] = {}
    for s in summaries:
        for key, (pid, uid, service, n, size, marks, seqs) in _groups(s).items():
            m = merged.setdefault(key, [pid, uid, service, 0, 0, 0, frozenset()])
            m[3:] = [m[3] + n, m[4] + size, m[5] + marks, m[6] | seqs]
    return {key: tuple(m) for key, m in merged.items()}


service_packet = st.builds(
    lambda body, producer_marked, uid, seq, pid, loss: (
        (b"\xd0\x02\x81\x02" if producer_marked else b"")  # the SDK writer's own mark
        + pb.TracePacket(for_testing=pb.TestEvent(str=body)).SerializeToString()
        + readback.trusted_trailer(uid, seq, pid)
        + readback.loss_trailer(loss)
    ),
    st.text(max_size=40),
    st.booleans(),
    st.sampled_from([0, 1000, 2**31 - 1, -1]),
    st.sampled_from([1, 2, 3, 300, 70000]),
    st.sampled_from([1, 77, 4242, 2**22 + 5]),
    st.sampled_from([0, 0, 0, 1, 257]),
)


@given(st.lists(service_packet | st.binary(max_size=30), max_size=40))
def test_summary_of_a_stream_equals_a_full_scan_of_each_packet(packets):
    """The tail cache (TraceSummary's docstring) never changes what the summary says."""
    whole = TraceSummary()
    whole.add_all(packets[: len(packets) // 2])
    whole.add_all(packets[len(packets) // 2 :])
    singles = []
    for packet in packets:
        single = TraceSummary()
        single.add(packet)
        singles.append(single)
    assert _groups(whole) == _merged(singles)
    assert whole.malformed == sum(s.malformed for s in singles)
    assert (whole.packets, whole.bytes) == (len(packets), sum(map(len, packets)))


def test_trailer_start_reads_the_service_trailer_backwards():
    body = pb.TracePacket(timestamp=5).SerializeToString()
    for uid, seq, pid in [(0, 1, 1), (1000, 300, 4242), (-1, 2, 2**22)]:
        packet = body + readback.trusted_trailer(uid, seq, pid)
        assert trailer_start(packet) == len(body)
    assert trailer_start(body) == -1
    assert trailer_start(body + readback.trusted_trailer(1, 2, 3) + b"\xd0\x02\x01") == -1


def test_the_summary_tells_a_relayed_producer_from_a_local_one_of_the_same_pid():
    """pids are per machine: a producer behind a relay (machine_id in its trailer)
    is its own row, named NAME@MACHINE from the service state."""

    def packet(seq: int, machine: int) -> bytes:
        body = b"\x40\x01"  # timestamp 1
        machine_field = b"\x90\x06" + bytes([machine]) if machine else b""
        return body + machine_field + b"\x18\x00" + b"\x50" + bytes([seq]) + b"\xf8\x04\x64"

    summary = TraceSummary()
    summary.add_all([packet(2, 0), packet(2, 0), packet(3, 7)])
    state = ipc.QueryServiceStateResponse()
    state.producers.add(id=1, name="alpha", pid=100)
    state.producers.add(id=2, name="cam", pid=100, machine_id=7)
    state.machines.add(id=7, name="robot1", connected=True)
    text = format_summary(
        SummaryInput(out_path="t.pftrace", summary=summary, producer_names=producer_names(state))
    )
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:4]}
    assert rows["alpha"][1:5] == ["100", "0", "1", "2"]
    assert rows["cam@robot1"][1:5] == ["100", "0", "1", "1"]


def test_a_long_relayed_producer_name_keeps_its_machine_in_the_summary():
    summary = TraceSummary()
    summary.add(b"\x40\x01\x90\x06\x07\x18\x00\x50\x03\xf8\x04\x64")
    names = {(7, 100): "perfetto.traced_probes@robot1"}
    text = format_summary(SummaryInput(out_path="t", summary=summary, producer_names=names))
    assert "perfetto.traced_p@robot1" in text
