"""The Perfetto IPC client double (tests/perfetto_client.py) without the service:
it talks to a scripted host over a socketpair, and what it sends is compared
with what the real v14 SDK sent (tests/data/perfetto_ipc_transcripts/: method
ids, request ids, drop_reply, args). The producer writes into a memfd the host
passes with setup_tracing, and the host reads the chunks back with
tests/smb_oracle (moves and patches), so the double's SMB traffic is checked
too; the consumer's ReadBuffers reassembly gets a property test.

The host is a thread reading its end of the socketpair; the tests wait on
what it logged with a deadline (tests.waiting.wait_for), never a sleep.
"""

from __future__ import annotations

import array
import json
import os
import re
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import perfetto_wire as wire
from protos import perfetto_ipc_pb2 as pf
from shm.abi import DEFAULT_PAGE_SIZE, DEFAULT_SMB_SIZE, Geometry, SharedMemoryABI
from shm.commits import ChunkToMove, ChunkToPatch, CommitBatch
from shm.region import REQUIRED_SEALS, MemfdRegion
from tests.perfetto_client import (
    Channel,
    MethodNotServed,
    PerfettoConsumer,
    PerfettoProducer,
    SliceAssembler,
    double_packet,
)
from tests.smb_oracle import Oracle
from tests.waiting import wait_for

TRANSCRIPTS = Path(__file__).parent / "data" / "perfetto_ipc_transcripts"
WAIT = 10.0
# Perfetto enums our proto keeps as uint32 (InitializeConnectionRequest).
ENUM_NUMBERS = {"SMB_SCRAPING_ENABLED": "1", "BUILD_FLAGS_DCHECKS_ON": "1"}
REQUEST_TYPES: dict[str, Any] = {
    "InitializeConnection": pf.InitializeConnectionRequest,
    "RegisterDataSource": pf.RegisterDataSourceRequest,
    "CommitData": pf.CommitDataRequest,
    "GetAsyncCommand": pf.Empty,
    "RegisterTraceWriter": pf.RegisterTraceWriterRequest,
    "NotifyDataSourceStarted": pf.NotifyDataSourceStartedRequest,
    "NotifyDataSourceStopped": pf.NotifyDataSourceStoppedRequest,
    "ObserveEvents": pf.ObserveEventsRequest,
    "EnableTracing": pf.EnableTracingRequest,
    "DisableTracing": pf.Empty,
    "ReadBuffers": pf.Empty,
    "GetTraceStats": pf.Empty,
    "FreeBuffers": pf.FreeBuffersRequest,
    "StartTracing": pf.Empty,
    "Flush": pf.FlushRequest,
    "QueryServiceState": pf.QueryServiceStateRequest,
}
# Perfetto schema messages nested as bytes: compared as messages.
NESTED: dict[str, tuple[str, Any]] = {
    "RegisterDataSource": ("data_source_descriptor", pb.DataSourceDescriptor),
    "EnableTracing": ("trace_config", pb.TraceConfig),
}


# -- reading the frame logs ---------------------------------------------------------


def transcript(name: str) -> list[dict[str, Any]]:
    lines = (TRANSCRIPTS / name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def sent_by_client(name: str) -> list[dict[str, Any]]:
    """The transcript's client frames: binds and invokes (notes left out)."""
    return [e for e in transcript(name) if e.get("dir") == "C->S" and "request_id" in e]


def expected_call(entry: dict[str, Any]) -> tuple[Any, ...]:
    """(request id, method, drop_reply, args as text) of a transcript line."""
    if entry.get("kind") == "msg_bind_service":
        return (entry["request_id"], "bind", False, entry["service_name"])
    method, text = entry["method"], entry["args"]
    if method in NESTED:
        field, schema = NESTED[method]
        inner = re.fullmatch(rf"{field} \{{ (.*) \}}", text)
        assert inner, text
        nested = text_format.Parse(inner[1], schema())
        return (entry["request_id"], method, entry["drop_reply"], _text(nested))
    text = re.sub(r"\b[A-Z_]+\b", lambda m: ENUM_NUMBERS.get(m[0], m[0]), text)
    message = text_format.Parse(text, REQUEST_TYPES[method]())
    return (entry["request_id"], method, entry["drop_reply"], _text(message))


def sent_call(frame: pf.IPCFrame, methods: dict[int, str]) -> tuple[Any, ...]:
    """The same tuple for a frame the double sent."""
    if frame.HasField("msg_bind_service"):
        return (frame.request_id, "bind", False, frame.msg_bind_service.service_name)
    invoke = frame.msg_invoke_method
    method = methods[invoke.method_id]
    message = REQUEST_TYPES[method].FromString(invoke.args_proto)
    if method in NESTED:
        field, schema = NESTED[method]
        message = schema.FromString(getattr(message, field))
    return (frame.request_id, method, invoke.drop_reply, _text(message))


def _text(message: Any) -> str:
    return text_format.MessageToString(message, as_one_line=True)


PRODUCER_IDS = {v: k for k, v in wire.PRODUCER_METHODS.items()}
CONSUMER_IDS = {v: k for k, v in wire.CONSUMER_METHODS.items()}


# -- a scripted host ------------------------------------------------------------------------


class FakeHost:
    """The host's end of a socketpair, read by a thread: logs every frame (with
    whether an fd came along) and sends what `answer` returns for it."""

    def __init__(self, sock: socket.socket, answer: Callable[[pf.IPCFrame], list[bytes]]) -> None:
        self.sock = sock
        self.answer = answer
        self.log: list[pf.IPCFrame] = []
        self.fds: dict[int, int] = {}  # request id -> fd that came with the frame
        self.error: BaseException | None = None
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = wire.FrameDecoder()
        try:
            while True:
                data, ancdata, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(16))
                if not data:
                    return
                fds = _fds(ancdata)
                for frame in decoder.feed(data):
                    if fds:
                        self.fds[frame.request_id] = fds.pop(0)
                    self.log.append(frame)
                    for out in self.answer(frame):
                        self.send(out)
        except OSError:
            return
        except BaseException as e:  # surfaced by the test through close()
            self.error = e

    def send(self, data: bytes, fd: int | None = None) -> None:
        with self._send_lock:
            if fd is None:
                self.sock.sendall(data)
            else:
                fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
                self.sock.sendmsg([data], fds)

    def calls(self, ids: dict[int, str]) -> list[tuple[Any, ...]]:
        return [sent_call(frame, ids) for frame in list(self.log)]

    def methods_sent(self, ids: dict[int, str]) -> list[str]:
        return [call[1] for call in self.calls(ids)]

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(WAIT)
        self.sock.close()
        for fd in self.fds.values():
            os.close(fd)
        if self.error is not None:
            raise self.error


def _fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return list(fds)


def command(rid: int, **cmd: Any) -> bytes:
    reply = pf.GetAsyncCommandResponse(**cmd).SerializeToString()
    return wire.method_reply(rid, reply, has_more=True)


# -- the producer ----------------------------------------------------------------------------


class ProducerHost:
    """traced's side for one producer: answers the opening calls, keeps the
    GetAsyncCommand stream's id, reads committed chunks with an Oracle."""

    def __init__(self, region: MemfdRegion) -> None:
        self.region = region
        self.oracle = Oracle(SharedMemoryABI(region.buf, Geometry(region.size, DEFAULT_PAGE_SIZE)))
        self.stream = 0
        self.commits: list[pf.CommitDataRequest] = []

    def answer(self, frame: pf.IPCFrame) -> list[bytes]:
        rid = frame.request_id
        if frame.HasField("msg_bind_service"):
            return [wire.bind_reply(rid, wire.PRODUCER_SERVICE_ID, wire.PRODUCER_METHODS)]
        invoke = frame.msg_invoke_method
        method = PRODUCER_IDS[invoke.method_id]
        if method == "GetAsyncCommand":
            self.stream = rid
        elif method == "CommitData":
            self._commit(pf.CommitDataRequest.FromString(invoke.args_proto))
        if invoke.drop_reply or method == "GetAsyncCommand":
            return []
        return [wire.method_reply(rid, b"")]

    def _commit(self, req: pf.CommitDataRequest) -> None:
        batch = CommitBatch(
            chunks_to_move=[
                ChunkToMove(m.page, m.chunk, m.target_buffer) for m in req.chunks_to_move
            ],
            chunks_to_patch=[
                ChunkToPatch(
                    p.target_buffer,
                    p.writer_id,
                    p.chunk_id,
                    [(x.offset, x.data) for x in p.patches],
                    p.has_more_patches,
                )
                for p in req.chunks_to_patch
            ],
            flush_request_id=req.flush_request_id,
        )
        self.oracle.on_commit(batch)
        self.commits.append(req)


TRACK_EVENT_CONFIG = pb.DataSourceConfig(
    name="track_event", target_buffer=1, tracing_session_id=1
).SerializeToString()


@pytest.fixture
def producer_pair():
    region = MemfdRegion.create(DEFAULT_SMB_SIZE)
    host_state = ProducerHost(region)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host = FakeHost(theirs, host_state.answer)
    producer = PerfettoProducer(Channel(ours), "./producer_app", timeout=WAIT)
    try:
        yield producer, host, host_state
    finally:
        producer.close()
        host.close()
        host_state.oracle.abi = None  # type: ignore[assignment]
        region.close()


def labels(packets: list[bytes]) -> list[str]:
    """What the double wrote in each packet (the writer adds first_packet_on_sequence)."""
    return [pb.TracePacket.FromString(p).for_testing.str for p in packets]


def start_instance(producer: PerfettoProducer, host: FakeHost, state: ProducerHost) -> None:
    """setup_tracing with the memfd, then setup and start instance 1, as the probe saw."""
    setup = pf.GetAsyncCommandResponse.SetupTracing(shared_buffer_page_size_kb=4)
    host.send(command(state.stream, setup_tracing=setup), fd=state.region.fd)
    ds = {"new_instance_id": 1, "config": TRACK_EVENT_CONFIG}
    host.send(command(state.stream, setup_data_source=ds))
    host.send(command(state.stream, start_data_source=ds))
    producer.wait_until(lambda: 1 in producer.started, WAIT, "instance 1 started")


def test_producer_replays_the_sdk_opening(producer_pair) -> None:
    producer, host, state = producer_pair
    producer.connect()
    wait_for(lambda: len(host.log) == 4, WAIT, "four frames")
    expected = [expected_call(e) for e in sent_by_client("probe-register.jsonl")]
    assert host.calls(PRODUCER_IDS) == expected
    assert producer.methods == wire.PRODUCER_METHODS
    assert state.stream == 3


def test_producer_replays_a_traced_session(producer_pair) -> None:
    """probe-trace.jsonl: setup with the memfd, start, three single-chunk commits,
    a flush acked with its id, stop; the chunks hold the packets written."""
    producer, host, state = producer_pair
    producer.connect()
    start_instance(producer, host, state)
    assert producer.commands == ["setup_tracing", "setup_data_source", "start_data_source"]
    assert producer.smb_seals & REQUIRED_SEALS == REQUIRED_SEALS
    written = []
    for page in range(3):  # one chunk per page (layout 1), committed one at a time
        packets = [double_packet("double", page * 100 + i, filler=20) for i in range(40)]
        producer.write_packets(1, packets)
        producer.flush_writers()
        written += packets
    host.send(command(state.stream, flush={"data_source_ids": [1], "request_id": 1}))
    host.send(command(state.stream, stop_data_source={"instance_id": 1}))
    producer.wait_until(lambda: not producer.started, WAIT, "the stop")
    wait_for(lambda: "NotifyDataSourceStopped" in host.methods_sent(PRODUCER_IDS), WAIT, "stop")

    expected = [expected_call(e) for e in sent_by_client("probe-trace.jsonl")]
    calls = host.calls(PRODUCER_IDS)
    assert calls[:9] == expected[:9]  # the same request ids, methods, args
    assert calls[-1][1:] == expected[-1][1:]  # NotifyDataSourceStopped{1}, drop_reply
    assert [c.flush_request_id for c in state.commits if c.flush_request_id] == [1]
    assert producer.flushes == producer.flushes_acked == [1]
    read, dropped = state.oracle.packets(1)
    assert (labels(read), dropped) == (labels(written), 0)
    assert pb.TracePacket.FromString(read[0]).first_packet_on_sequence  # the writer's mark


def test_producer_patches_a_packet_across_chunks(producer_pair) -> None:
    producer, host, state = producer_pair
    producer.connect()
    start_instance(producer, host, state)
    expected = producer.write_spanning_packet(1, "spanning", 10_000)
    small = double_packet("after", 1)
    producer.write_packets(1, [small])
    producer.flush_writers()
    wait_for(lambda: len(state.oracle.packets(1)[0]) == 2, WAIT, "both packets")
    assert labels(state.oracle.packets(1)[0]) == labels([expected, small])
    assert any(c.chunks_to_patch for c in state.commits)
    assert pb.TracePacket.FromString(expected).for_testing.str.startswith("spanning")


def test_producer_acks_a_flush_with_nothing_written(producer_pair) -> None:
    producer, host, state = producer_pair
    producer.connect()
    start_instance(producer, host, state)
    host.send(command(state.stream, flush={"data_source_ids": [1], "request_id": 7}))
    producer.wait_until(lambda: producer.flushes_acked, WAIT, "the flush")
    wait_for(lambda: state.commits, WAIT, "the ack")
    assert [c.flush_request_id for c in state.commits] == [7]
    assert not state.commits[0].chunks_to_move


def test_producer_without_auto_ack_leaves_the_flush_to_the_test(producer_pair) -> None:
    producer, host, state = producer_pair
    producer.auto_ack_flush = False
    producer.connect()
    start_instance(producer, host, state)
    host.send(command(state.stream, flush={"data_source_ids": [1], "request_id": 3}))
    producer.wait_until(lambda: producer.flushes, WAIT, "the flush")
    producer.write_packets(1, [double_packet("late", 0)])
    producer.ack_flush(3)
    wait_for(lambda: state.commits, WAIT, "the ack")
    assert [c.flush_request_id for c in state.commits] == [3]
    assert len(state.commits[0].chunks_to_move) == 1  # the ack came with the chunk


def test_setup_tracing_without_an_fd_fails_the_double(producer_pair) -> None:
    producer, host, state = producer_pair
    producer.connect()
    setup = pf.GetAsyncCommandResponse.SetupTracing(shared_buffer_page_size_kb=4)
    host.send(command(state.stream, setup_tracing=setup))
    with pytest.raises(Exception, match="without the SMB's fd"):
        producer.wait_until(lambda: False, WAIT, "nothing")


# -- the consumer -----------------------------------------------------------------------------

SERVED = {k: v for k, v in wire.CONSUMER_METHODS.items() if k != "SaveTraceForBugreport"}
PACKETS = [double_packet("read", i, filler=i * 997 % 3000) for i in range(200)] + [
    double_packet("huge", 0, filler=300_000)  # > 128 KiB: must travel in several slices
]


class ConsumerHost:
    """traced's side for one consumer, as consumer-probe.jsonl saw it."""

    def __init__(self) -> None:
        self.observe = 0
        self.enable = 0
        self.read_replies = 0

    def answer(self, frame: pf.IPCFrame) -> list[bytes]:
        rid = frame.request_id
        if frame.HasField("msg_bind_service"):
            return [wire.bind_reply(rid, wire.CONSUMER_SERVICE_ID, SERVED)]
        method = CONSUMER_IDS[frame.msg_invoke_method.method_id]
        return self._answers[method](self, rid)

    def _observe(self, rid: int) -> list[bytes]:
        self.observe = rid
        return []

    def _enable(self, rid: int) -> list[bytes]:
        self.enable = rid
        change = pf.ObservableEvents.DataSourceInstanceStateChange(
            producer_name="p", data_source_name="track_event", state=2
        )
        events = pf.ObservableEvents(instance_state_changes=[change], all_data_sources_started=True)
        reply = pf.ObserveEventsResponse(events=events).SerializeToString()
        return [wire.method_reply(self.observe, reply, has_more=True)]

    def _disable(self, rid: int) -> list[bytes]:
        ended = pf.EnableTracingResponse(disabled=True).SerializeToString()
        return [wire.method_reply(rid, b""), wire.method_reply(self.enable, ended)]

    def _read(self, rid: int) -> list[bytes]:
        replies = [pf.ReadBuffersResponse()]
        for packet in PACKETS:
            for start in range(0, len(packet), 100_000):
                piece = packet[start : start + 100_000]
                if replies[-1].ByteSize() + len(piece) + 16 > wire.MAX_PAYLOAD_BYTES - 64:
                    replies.append(pf.ReadBuffersResponse())
                last = start + 100_000 >= len(packet)
                replies[-1].slices.add(data=piece, last_slice_for_packet=last)
        self.read_replies = len(replies)
        return [
            wire.method_reply(rid, r.SerializeToString(), has_more=i < len(replies) - 1)
            for i, r in enumerate(replies)
        ]

    def _stats(self, rid: int) -> list[bytes]:
        stats = pb.TraceStats(producers_connected=1, chunks_discarded=0)
        reply = pf.GetTraceStatsResponse(trace_stats=stats.SerializeToString())
        return [wire.method_reply(rid, reply.SerializeToString())]

    def _state(self, rid: int) -> list[bytes]:
        first = pb.TracingServiceState(producers=[pb.TracingServiceState.Producer(id=1, name="p")])
        second = pb.TracingServiceState(num_sessions=1, num_sessions_started=1)
        return [
            wire.method_reply(rid, _state_reply(first), has_more=True),
            wire.method_reply(rid, _state_reply(second)),
        ]

    def _empty(self, rid: int) -> list[bytes]:
        return [wire.method_reply(rid, b"")]

    def _reject(self, rid: int) -> list[bytes]:
        return [wire.method_reply(rid, None)]

    _answers = {
        "ObserveEvents": _observe,
        "EnableTracing": _enable,
        "DisableTracing": _disable,
        "ReadBuffers": _read,
        "GetTraceStats": _stats,
        "QueryServiceState": _state,
        "FreeBuffers": _empty,
        "StartTracing": _empty,
        "Flush": _reject,
    }


def _state_reply(state: pb.TracingServiceState) -> bytes:
    return pf.QueryServiceStateResponse(service_state=state.SerializeToString()).SerializeToString()


@pytest.fixture
def consumer_pair():
    state = ConsumerHost()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host = FakeHost(theirs, state.answer)
    consumer = PerfettoConsumer(Channel(ours), timeout=WAIT)
    try:
        yield consumer, host, state
    finally:
        consumer.close()
        host.close()


PROBE_CONFIG = text_format.Parse(
    "buffers { size_kb: 8192 fill_policy: RING_BUFFER } data_sources { config { name: "
    '"track_event" track_event_config { enabled_categories: "*" } } } flush_period_ms: 1000',
    pb.TraceConfig(),
)


def test_consumer_replays_the_sdk_session(consumer_pair) -> None:
    """consumer-probe.jsonl: bind, ObserveEvents, EnableTracing, DisableTracing,
    ReadBuffers, GetTraceStats with the same ids and args; the reads reassemble."""
    consumer, host, state = consumer_pair
    consumer.connect()
    consumer.observe_events()
    consumer.enable_tracing(PROBE_CONFIG)
    consumer.wait_until(lambda: consumer.all_started, WAIT, "all data sources started")
    consumer.disable_tracing()
    ended = consumer.wait_tracing_disabled()
    read = consumer.read_buffers()
    stats = consumer.get_trace_stats()

    expected = [expected_call(e) for e in sent_by_client("consumer-probe.jsonl")]
    assert host.calls(CONSUMER_IDS) == expected
    assert ended.disabled and not ended.error
    assert consumer.instance_states() == [("p", "track_event", 2)]
    assert read.packets == PACKETS and read.pending == 0
    assert read.replies == state.read_replies > 2
    assert stats.producers_connected == 1


def test_consumer_merges_a_streamed_service_state(consumer_pair) -> None:
    consumer, _, _ = consumer_pair
    consumer.connect()
    state = consumer.query_service_state()
    assert [p.name for p in state.producers] == ["p"]
    assert (state.num_sessions, state.num_sessions_started) == (1, 1)


def test_consumer_refuses_unlisted_methods_locally(consumer_pair) -> None:
    consumer, host, _ = consumer_pair
    consumer.connect()
    with pytest.raises(MethodNotServed):
        consumer.invoke("SaveTraceForBugreport")
    consumer.free_buffers()
    assert host.calls(CONSUMER_IDS)[-1][:2] == (2, "FreeBuffers")  # id 2: nothing went out


def test_consumer_reports_a_rejected_flush(consumer_pair) -> None:
    consumer, _, _ = consumer_pair
    consumer.connect()
    assert consumer.flush(100) is False


def test_enable_tracing_carries_the_output_fd(consumer_pair) -> None:
    consumer, host, _ = consumer_pair
    consumer.connect()
    with tempfile.TemporaryFile() as out:
        config = pb.TraceConfig()
        config.CopyFrom(PROBE_CONFIG)
        config.write_into_file = True
        consumer.enable_tracing(config, fd=out.fileno())
        consumer.start_tracing()  # a call after it: once answered, the host has both
        rid = host.log[-2].request_id
        assert rid in host.fds and os.fstat(host.fds[rid]).st_ino == os.fstat(out.fileno()).st_ino


# -- slices -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    packets=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(1, 64), min_size=1, max_size=8),
    per_reply=st.integers(1, 5),
)
def test_slices_reassemble_into_packets(
    packets: list[bytes], cuts: list[int], per_reply: int
) -> None:
    """However packets are cut into slices and slices grouped into replies."""
    slices = []
    for n, packet in enumerate(packets):
        size = cuts[n % len(cuts)]
        pieces = [packet[i : i + size] for i in range(0, len(packet), size)] or [b""]
        slices += [(p, i == len(pieces) - 1) for i, p in enumerate(pieces)]
    assembler = SliceAssembler()
    for i in range(0, len(slices), per_reply):
        reply = pf.ReadBuffersResponse()
        for data, last in slices[i : i + per_reply]:
            reply.slices.add(data=data, last_slice_for_packet=last)
        assembler.feed(pf.ReadBuffersResponse.FromString(reply.SerializeToString()))
    assert assembler.packets == packets
    assert assembler.pending == 0
