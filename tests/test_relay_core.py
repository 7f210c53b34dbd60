"""RelayCore in one process: SMBs in bytearrays, a fake clock, the queue read
back as the service would decode it. No sockets, no sleeps."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from actors.core import relay_chunks, relay_core
from actors.core.limits import DEFAULT_LIMITS, Limits
from actors.core.relay_core import (
    INIT_BACKOFF_NS,
    RELAY_REQUEST_BIT,
    Link,
    Log,
    RelayConfig,
    RelayCore,
    ToProducer,
)
from actors.core.relay_upstream import ROUND_TIMEOUT_NS, ROUNDS_PER_BURST, SPACING_MARGIN_NS
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from protos.data_source_config_pb2 import DataSourceConfig
from shm.abi import CHUNK_HEADER, FREE, Geometry, SharedMemoryABI

S = 1_000_000_000
PID, UID = 4242, 1000
ME = b"producer-1"


@dataclass
class FakeSmb:
    buf: bytearray
    socket: str = "/run/handoff.sock"
    token: bytes = b"t" * 16
    closed: bool = False

    def close(self) -> None:
        self.closed = True


class Clocks:
    def __init__(self) -> None:
        self.boottime = 1000 * S

    def __call__(self) -> list[tuple[int, int]]:
        self.boottime += 1000
        return [(6, self.boottime), (3, self.boottime - 5), (5, self.boottime - 7), (1, 9)]


class Harness:
    def __init__(self, queue_bytes: int = 16 << 20, limits: Limits = DEFAULT_LIMITS) -> None:
        self.smbs: list[FakeSmb] = []
        config = RelayConfig("m1", "boot/m1", b"info", send_queue_bytes=queue_bytes, limits=limits)
        self.core = RelayCore(config, self._make_smb, Clocks())
        self.now = 0

    def _make_smb(self, geometry: Geometry, pid: int, uid: int) -> FakeSmb:
        smb = FakeSmb(bytearray(geometry.size))
        self.smbs.append(smb)
        return smb

    def sent(self) -> list[tuple[int, object]]:
        """What the service would receive: the queue, emptied."""
        out: list[tuple[int, object]] = []
        queue = self.core.queue
        while (frames := queue.head()) is not None:
            queue.pop()
            channel, rest = framing.split_channel(frames)
            if channel == 0:
                out.append((0, framing.decode_from_relay(rest)))
            else:
                out.append((channel, framing.decode_relayed_producer(rest)))
        return out

    def link_up(self) -> list:
        self.core.on_timer(self.now)
        reply = ipc.ServiceToRelay(init_relay=ipc.InitRelayResponse(machine_id=9))
        return self.core.handle_control(reply, self.now)

    def producer(self, msg: ipc.ProducerToService, identity: bytes = ME, pid: int = PID) -> list:
        return self.core.handle_producer(identity, pid, UID, msg, self.now)

    def connect(self, identity: bytes = ME, pid: int = PID) -> int:
        out = self.hello(identity, pid)[0]
        return out.msg.initialize_connection.producer_id

    def hello(self, identity: bytes = ME, pid: int = PID) -> list:
        req = ipc.ProducerToService(request_id=1)
        req.initialize_connection.hello.protocol_version = ipc.PROTOCOL_VERSION
        req.initialize_connection.claimed_pid = 1  # a lie the relay does not pass on
        return self.producer(req, identity, pid)

    def setup(self, channel: int, buffer: int = 3, instance: int = 1) -> SharedMemoryABI:
        """The producer's SMB, and an instance writing into `buffer`."""
        setup = ipc.SetupTracing(shm_size_bytes=16384, shm_page_size_bytes=4096)
        self.core.handle_for_producer(channel, ipc.ServiceToProducer(setup_tracing=setup), self.now)
        self.set_up_instance(channel, instance, buffer)
        return SharedMemoryABI(self.smbs[-1].buf, Geometry(16384, 4096))

    def set_up_instance(self, channel: int, instance: int, buffer: int) -> None:
        config = DataSourceConfig(name="ds", target_buffer=buffer).SerializeToString()
        setup = ipc.SetupDataSource(instance_id=instance, data_source_config=config)
        msg = ipc.ServiceToProducer(setup_data_source=setup)
        self.core.handle_for_producer(channel, msg, self.now)


def kinds(sent: list[tuple[int, object]]) -> list[tuple[int, str]]:
    return [(c, m.WhichOneof("msg")) for c, m in sent]  # type: ignore[attr-defined]


def sync_clocks(sent: list[tuple[int, object]]) -> list[ipc.SyncClock]:
    return [m.sync_clock for _, m in sent if m.WhichOneof("msg") == "sync_clock"]  # type: ignore[attr-defined]


def write_chunk(abi: SharedMemoryABI, page: int, chunk_id: int, payload: bytes) -> None:
    ref = abi.try_acquire_free_page(page, 1, 1, chunk_id)  # 1 chunk per page
    assert ref is not None
    start = ref.offset + CHUNK_HEADER.size
    abi.buf[start : start + len(payload)] = payload
    CHUNK_HEADER.pack_into(abi.buf, ref.offset, chunk_id, 1, 1)
    assert abi.release_as_complete(ref)


def commit(*pages: int, flush_id: int = 0, buffer: int = 3) -> ipc.ProducerToService:
    req = ipc.ProducerToService(request_id=77)
    for page in pages:
        req.commit_data.chunks_to_move.add(page=page, chunk=0, target_buffer=buffer)
    req.commit_data.flush_request_id = flush_id
    return req


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_the_handshake_is_answered_locally_and_sent_up_once_the_link_is_up(h):
    h.core.on_timer(h.now)  # the first InitRelay
    channel = h.connect()
    assert channel == 1
    register = ipc.ProducerToService(request_id=2)
    register.register_data_source.descriptor.name = "ds"
    (reply,) = h.producer(register)
    assert reply.msg.register_data_source.error == ""
    assert h.core.link is Link.CONNECTING
    assert kinds(h.sent()) == [(0, "init_relay")]  # nothing of the producer before the link
    out = h.link_up()
    assert Log("link up: machine id 9") in out
    sent = [s for s in h.sent() if s[0] or s[1].WhichOneof("msg") != "sync_clock"]  # type: ignore[attr-defined]
    assert kinds(sent)[:2] == [(1, "initialize_connection"), (1, "register_data_source")]
    init = sent[0][1].initialize_connection  # type: ignore[attr-defined]
    assert (init.claimed_pid, init.claimed_uid) == (PID, UID)  # the kernel's
    assert all(m.request_id & RELAY_REQUEST_BIT for _, m in sent[:2])  # type: ignore[attr-defined]


def test_init_relay_is_resent_with_a_doubling_backoff(h):
    sent_at = []
    for _ in range(12):
        h.now = h.core.next_deadline()
        h.core.on_timer(h.now)
        sent_at.append(h.now)
        assert kinds(h.sent()) == [(0, "init_relay")]
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
    assert gaps[0] == INIT_BACKOFF_NS[0]
    assert gaps[1] == 2 * INIT_BACKOFF_NS[0]
    assert max(gaps) == gaps[-1] == INIT_BACKOFF_NS[1]


def test_init_relay_is_not_stacked_while_there_is_no_connection(h):
    for _ in range(5):  # ZeroMQ takes nothing: the shell sends none of them
        h.now = h.core.next_deadline()
        h.core.on_timer(h.now)
    assert kinds(h.sent()) == [(0, "init_relay")]


def test_replies_to_the_relays_own_requests_are_swallowed_and_errors_logged(h):
    h.link_up()
    channel = h.connect()
    h.sent()
    reply = ipc.ServiceToProducer(request_id=RELAY_REQUEST_BIT | 5)
    reply.initialize_connection.hello.error = "too many producers"
    out = h.core.handle_for_producer(channel, reply, h.now)
    assert out == [
        Log(f"the service refused producer pid {PID} (initialize_connection): too many producers")
    ]
    ok = ipc.ServiceToProducer(request_id=RELAY_REQUEST_BIT | 6)
    ok.register_data_source.SetInParent()
    assert h.core.handle_for_producer(channel, ok, h.now) == []


def test_setup_tracing_makes_the_smb_here_once_and_hands_it_over(h):
    h.link_up()
    channel = h.connect()
    setup = ipc.SetupTracing(shm_size_bytes=16384, shm_page_size_bytes=4096)
    (out,) = h.core.handle_for_producer(channel, ipc.ServiceToProducer(setup_tracing=setup), 0)
    local = out.msg.setup_tracing
    assert (local.shm_token, local.shm_socket, local.shm_size_bytes) == (
        b"t" * 16, "/run/handoff.sock", 16384,
    )  # fmt: skip
    again = h.core.handle_for_producer(channel, ipc.ServiceToProducer(setup_tracing=setup), 0)
    assert again == [] and len(h.smbs) == 1


def test_a_commit_carries_its_chunks_inline_and_frees_them(h):
    h.link_up()
    channel = h.connect()
    abi = h.setup(channel)
    h.sent()
    write_chunk(abi, 0, 10, b"hello")
    write_chunk(abi, 1, 11, b"world")
    msg = commit(0, 1, flush_id=8)
    msg.commit_data.chunks_to_patch.add(target_buffer=3, writer_id=1, chunk_id=10)
    assert h.producer(msg) == []
    ((ch, sent),) = h.sent()
    assert ch == channel and sent.request_id == 77  # type: ignore[attr-defined]
    moves = sent.commit_data.chunks_to_move  # type: ignore[attr-defined]
    assert [CHUNK_HEADER.unpack_from(m.data)[0] for m in moves] == [10, 11]
    assert moves[0].data[CHUNK_HEADER.size :].startswith(b"hello")
    assert len(moves[0].data) == 4088 and moves[0].target_buffer == 3
    assert sent.commit_data.flush_request_id == 8  # type: ignore[attr-defined]
    assert len(sent.commit_data.chunks_to_patch) == 1  # type: ignore[attr-defined]
    assert abi.bitmap(0) == abi.bitmap(1) == FREE


def test_a_chunk_that_is_not_complete_is_not_sent(h):
    h.link_up()
    channel = h.connect()
    h.setup(channel)
    h.sent()
    h.producer(commit(0, 99))
    ((_, sent),) = h.sent()
    assert len(sent.commit_data.chunks_to_move) == 0  # type: ignore[attr-defined]
    assert h.core.counters.chunks_invalid == 2


def test_chunks_go_only_to_the_buffers_the_service_set_the_producer_up_for(h):
    """A commit naming another buffer (another session's, or any number at all)
    frees its chunk in the SMB and counts it as invalid: never sent, never in
    `sent` or in a loss."""
    h.link_up()
    channel = h.connect()
    abi = h.setup(channel, buffer=3)
    h.sent()
    for page in range(3):
        write_chunk(abi, page, page, b"x")
    h.producer(commit(0, buffer=3))
    h.producer(commit(1, buffer=4))
    h.producer(commit(2, buffer=1 << 31))
    moves = [m for _, s in h.sent() for m in s.commit_data.chunks_to_move]  # type: ignore[attr-defined]
    assert [m.target_buffer for m in moves] == [3]
    assert h.core.counters.chunks_invalid == 2
    assert abi.bitmap(1) == abi.bitmap(2) == FREE
    assert set(h.core.queue.sent.buffers) == {3}


def test_a_hostile_producers_commits_do_not_grow_what_the_relay_counts(h):
    h.link_up()
    channel = h.connect()
    abi = h.setup(channel, buffer=3)
    h.sent()
    for buffer in range(1000):
        write_chunk(abi, 0, buffer, b"x")
        h.producer(commit(0, buffer=100 + buffer))
    h.sent()
    assert h.core.queue.sent.buffers == {} and h.core.counters.chunks_invalid == 1000
    h.core.handle_control(ipc.ServiceToRelay(error={"message": "unknown relay"}), h.now)
    write_chunk(abi, 0, 1, b"x")
    h.producer(commit(0, buffer=7))  # no link: freed, but not counted as lost under 7
    assert not h.core.loss and h.core.counters.chunks_invalid == 1001


def test_a_chunk_goes_only_to_the_buffer_its_writer_registered(h):
    h.link_up()
    channel = h.connect()
    abi = h.setup(channel, buffer=3)
    h.set_up_instance(channel, 2, buffer=4)
    h.producer(ipc.ProducerToService(register_trace_writer={"writer_id": 1, "target_buffer": 3}))
    h.sent()
    write_chunk(abi, 0, 1, b"x")  # writer 1
    write_chunk(abi, 1, 2, b"y")
    h.producer(commit(0, buffer=4))
    h.producer(commit(1, buffer=3))
    moves = [m for _, s in h.sent() for m in s.commit_data.chunks_to_move]  # type: ignore[attr-defined]
    assert [CHUNK_HEADER.unpack_from(m.data)[0] for m in moves] == [2]
    assert h.core.counters.chunks_invalid == 1


def test_a_stopped_instances_buffer_still_takes_its_last_chunks(h):
    h.link_up()
    channel = h.connect()
    abi = h.setup(channel, buffer=3)
    stop = ipc.ServiceToProducer(stop_data_source={"instance_id": 1})
    h.core.handle_for_producer(channel, stop, h.now)
    h.sent()
    write_chunk(abi, 0, 1, b"last")
    h.producer(commit(0, buffer=3))
    moves = [m for _, s in h.sent() for m in s.commit_data.chunks_to_move]  # type: ignore[attr-defined]
    assert [m.target_buffer for m in moves] == [3]
    for instance in range(2, 2 + relay_core.ENDED_KEPT):
        h.set_up_instance(channel, instance, buffer=10)
        h.core.handle_for_producer(
            channel, ipc.ServiceToProducer(stop_data_source={"instance_id": instance}), h.now
        )
    assert h.core.producers[ME].targets().buffers == {10}  # the oldest ended forgotten


def test_a_large_commit_is_split_with_the_flush_ack_last(h, monkeypatch):
    monkeypatch.setattr(relay_chunks, "PIECE_BYTES", 5000)  # about one chunk per piece
    h.link_up()
    channel = h.connect()
    abi = h.setup(channel)
    h.sent()
    for page in range(3):
        write_chunk(abi, page, page, b"x")
    h.producer(commit(0, 1, 2, flush_id=4))
    pieces = [m.commit_data for _, m in h.sent()]  # type: ignore[attr-defined]
    assert [len(p.chunks_to_move) for p in pieces] == [1, 1, 1]
    assert [p.flush_request_id for p in pieces] == [0, 0, 4]


def test_a_commit_piece_holds_at_most_the_moves_the_service_takes(h, monkeypatch):
    monkeypatch.setattr(relay_chunks, "MAX_MOVES_PER_PIECE", 2)
    h.link_up()
    channel = h.connect()
    abi = h.setup(channel)
    h.sent()
    for page in range(3):
        write_chunk(abi, page, page, b"x")
    msg = commit(0, 1, 2)
    for chunk_id in range(3):
        msg.commit_data.chunks_to_patch.add(target_buffer=3, writer_id=1, chunk_id=chunk_id)
    h.producer(msg)
    pieces = [m.commit_data for _, m in h.sent()]  # type: ignore[attr-defined]
    assert [len(p.chunks_to_move) for p in pieces] == [2, 1, 0]
    assert [len(p.chunks_to_patch) for p in pieces] == [0, 2, 1]


def test_over_the_queue_bound_commits_wait_in_their_smb_and_in_order():
    h = Harness(queue_bytes=4000)
    h.link_up()
    channel = h.connect()
    abi = h.setup(channel)
    h.sent()
    write_chunk(abi, 0, 1, b"a")
    write_chunk(abi, 1, 2, b"b")
    h.producer(commit(0))  # fills the queue past its bound
    h.producer(commit(1, flush_id=3))
    started = ipc.ProducerToService(data_source_started=ipc.NotifyDataSourceStarted(instance_id=5))
    h.producer(started)
    assert h.core.queue.over_bound()
    assert abi.bitmap(1) != FREE  # still the producer's: its SMB fills
    (first,) = h.sent()
    rest: list[tuple[int, object]] = []
    for _ in range(3):  # the shell's turns: send what is queued, then drained()
        h.core.drained(h.now)
        rest += h.sent()
    assert kinds([first, *rest]) == [(channel, "commit_data")] * 2 + [
        (channel, "data_source_started")
    ]
    assert rest[0][1].commit_data.flush_request_id == 3  # type: ignore[attr-defined]
    assert abi.bitmap(1) == FREE


def test_a_silent_link_goes_down_stops_instances_and_counts_the_loss():
    h = Harness(queue_bytes=6000)
    h.link_up()
    channel = h.connect()
    abi = h.setup(channel)
    start = ipc.StartDataSource(instance_id=5)
    h.core.handle_for_producer(channel, ipc.ServiceToProducer(start_data_source=start), h.now)
    h.sent()
    for page in range(3):
        write_chunk(abi, page, page, b"x")
    h.producer(commit(0))  # queued, then dropped with the link
    h.producer(commit(1))  # waiting, freed with the link
    h.now = h.core.next_deadline()
    while h.core.link is Link.UP:
        out = h.core.on_timer(h.now)
        h.now = h.core.next_deadline()
    assert Log("link down: no message from the service and nothing sent for 5 s") in out
    stops = [o for o in out if isinstance(o, ToProducer)]
    assert [o.msg.stop_data_source.instance_id for o in stops] == [1, 5]
    assert abi.bitmap(1) == FREE
    h.producer(commit(2))  # no link: freed and counted
    assert h.core.link is Link.CONNECTING
    assert kinds(h.sent()) == [(0, "init_relay")]
    out = h.core.handle_control(
        ipc.ServiceToRelay(init_relay=ipc.InitRelayResponse(machine_id=9)), h.now
    )
    assert Log(f"dropped 3 chunks ({3 * 4088} bytes) without a link") in out
    sent = [s for s in h.sent() if s[0] or s[1].WhichOneof("msg") != "sync_clock"]  # type: ignore[attr-defined]
    assert kinds(sent)[:2] == [(channel, "initialize_connection"), (0, "loss")]
    loss = sent[1][1].loss  # type: ignore[attr-defined]
    assert [(b.target_buffer, b.chunks, b.bytes) for b in loss.buffers] == [(3, 3, 3 * 4088)]


def test_a_slow_link_that_takes_data_stays_up_without_answers(h):
    """The answers to our heartbeats may wait behind megabytes in ZeroMQ's pipe:
    ZeroMQ taking some of the queue (drained) shows the link works; once it takes
    nothing and the service says nothing for the timeout, the link is down."""
    h.link_up()
    timeout = h.core.config.link_timeout_ns
    for _ in range(4 * timeout // S):
        h.now += S
        h.sent()
        h.core.drained(h.now)
        h.core.on_timer(h.now)
    assert h.core.link is Link.UP
    h.now = h.core.next_deadline()
    while h.core.link is Link.UP and h.now < 10 * timeout:
        h.core.on_timer(h.now)
        h.now = h.core.next_deadline()
    assert h.core.link is Link.CONNECTING


def test_the_services_own_heartbeats_keep_the_link_up(h):
    """The service heartbeats every second unsolicited: any message is liveness,
    even with nothing leaving the relay."""
    h.link_up()
    for _ in range(4 * h.core.config.link_timeout_ns // S):
        h.now += S
        h.core.handle_control(ipc.ServiceToRelay(heartbeat={}), h.now)
        h.core.on_timer(h.now)
    assert h.core.link is Link.UP


def test_heartbeats_and_clock_rounds_go_ahead_of_waiting_chunks():
    h = Harness(queue_bytes=4000)
    h.link_up()
    channel = h.connect()
    abi = h.setup(channel)
    h.sent()
    write_chunk(abi, 0, 1, b"a")
    h.producer(commit(0))
    h.now = h.core.next_deadline()
    h.core.handle_control(ipc.ServiceToRelay(heartbeat={}), h.now)
    h.core.on_timer(h.now)
    assert kinds(h.sent()) == [(0, "heartbeat"), (channel, "commit_data")]


def test_an_unknown_relay_error_sends_init_relay_at_once(h):
    h.link_up()
    h.sent()
    error = ipc.ServiceToRelay()
    error.error.message = "unknown relay: send InitRelay"
    out = h.core.handle_control(error, h.now)
    assert Log("link down: the service says: unknown relay: send InitRelay") in out
    assert kinds(h.sent()) == [(0, "init_relay")]


def test_another_error_on_the_control_channel_keeps_the_link(h):
    h.link_up()
    error = ipc.ServiceToRelay()
    error.error.message = "loss is not handled by this service"
    out = h.core.handle_control(error, h.now)
    assert out == [Log("the service answered with an error: loss is not handled by this service")]
    assert h.core.link is Link.UP


def test_a_gone_producer_sends_its_waiting_commits_then_is_said_gone():
    h = Harness(queue_bytes=6000)
    h.link_up()
    channel = h.connect()
    abi = h.setup(channel)
    h.sent()
    write_chunk(abi, 0, 1, b"a")
    write_chunk(abi, 1, 2, b"b")
    h.producer(commit(0))
    h.producer(commit(1))
    h.producer(ipc.ProducerToService(register_trace_writer={"writer_id": 1, "target_buffer": 3}))
    write_chunk(abi, 2, 3, b"left in the SMB")
    h.core.producer_gone(ME, h.now)
    sent = h.sent()
    assert kinds(sent) == [
        (channel, "commit_data"), (channel, "commit_data"), (channel, "register_trace_writer"),
        (channel, "commit_data"), (0, "producer_gone"),
    ]  # fmt: skip
    (left,) = sent[3][1].commit_data.chunks_to_move  # type: ignore[attr-defined]
    assert CHUNK_HEADER.unpack_from(left.data)[0] == 3 and left.target_buffer == 3
    assert h.smbs[0].closed
    assert h.core.handle_for_producer(channel, ipc.ServiceToProducer(heartbeat={}), h.now) == []


def test_a_producer_silent_too_long_is_ended(h):
    h.link_up()
    channel = h.connect()
    h.setup(channel)
    h.now += relay_core.PRODUCER_SILENCE_NS - 1
    h.producer(ipc.ProducerToService(request_id=4, heartbeat={}))  # alive
    h.sent()
    h.now = h.core.next_deadline()
    while ME in h.core.producers and h.now < 10 * relay_core.PRODUCER_SILENCE_NS:
        h.core.handle_control(ipc.ServiceToRelay(heartbeat={}), h.now)  # the link stays up
        out = h.core.on_timer(h.now)
        h.now = h.core.next_deadline()
    assert Log(f"producer pid {PID} said nothing for 30 s: ended") in out
    assert (0, "producer_gone") in kinds(h.sent())
    assert h.smbs[0].closed


def test_a_message_before_the_handshake_is_answered_with_an_error(h):
    (out,) = h.producer(ipc.ProducerToService(request_id=3, heartbeat={}))
    assert out.msg.request_id == 3 and "initialize" in out.msg.error.message


def test_clock_sync_bursts_rounds_and_the_next_burst_after_the_interval(h):
    h.link_up()
    updates = []
    for _ in range(ROUNDS_PER_BURST):
        syncs = sync_clocks(h.sent())
        updates += [s for s in syncs if s.phase == ipc.SyncClock.UPDATE]
        (ping,) = [s for s in syncs if s.phase == ipc.SyncClock.PING]
        assert ping.burst == 1
        h.core.handle_control(ipc.ServiceToRelay(sync_clock={"round": ping.round}), h.now)
    updates += sync_clocks(h.sent())
    assert [u.phase for u in updates] == [ipc.SyncClock.UPDATE] * ROUNDS_PER_BURST
    assert [u.client_round_trip_ns for u in updates] == [1000] * ROUNDS_PER_BURST
    # The service pairs rounds whose clocks are 30 s apart or more: a margin past it.
    h.now += h.core.config.clock_sync_interval_ns
    h.core.handle_control(ipc.ServiceToRelay(heartbeat={}), h.now)
    h.core.on_timer(h.now)
    assert sync_clocks(h.sent()) == []
    h.now += SPACING_MARGIN_NS
    h.core.on_timer(h.now)
    assert [s.burst for s in sync_clocks(h.sent())] == [2]


def test_an_unanswered_round_abandons_its_burst(h):
    h.link_up()
    h.sent()
    h.now += ROUND_TIMEOUT_NS
    h.core.handle_control(ipc.ServiceToRelay(heartbeat={}), h.now)
    h.core.on_timer(h.now)
    assert h.core.clock.outstanding is None
    h.now = h.core.clock.deadline()
    h.core.handle_control(ipc.ServiceToRelay(heartbeat={}), h.now)
    h.core.on_timer(h.now)
    assert [s.burst for s in sync_clocks(h.sent())] == [2]


# -- the service's limits, applied to local producers ------------------------------------


def limited(**limits: int) -> Harness:
    h = Harness(limits=Limits(**limits))
    h.link_up()
    return h


def test_connections_of_one_process_past_the_limit_are_refused():
    h = limited(max_connections_per_process=2)
    assert [h.connect(b"a"), h.connect(b"b")] == [1, 2]
    out = h.hello(b"c")
    error = f"pid {PID} has 2 connections (max_connections_per_process)"
    assert out[0].msg.initialize_connection.hello.error == error
    assert Log(f"refused: {error} (1 refused over max_connections_per_process so far)") in out
    assert b"c" not in h.core.producers
    assert h.connect(b"d", pid=PID + 1) == 3  # another process
    logged = [len([o for o in h.hello(b"e") if isinstance(o, Log)]) for _ in range(7)]
    assert logged == [1, 0, 1, 0, 0, 0, 1]  # refusals 2..8: a line per doubling
    assert h.core.refusals == {"max_connections_per_process": 8}


def test_producers_of_one_user_past_the_limit_are_refused():
    h = limited(max_producers_per_uid=2)
    h.connect(b"a", pid=1)
    h.connect(b"b", pid=2)
    (reply, _log) = h.hello(b"c", pid=3)
    error = f"uid {UID} has 2 producers (max_producers_per_uid)"
    assert reply.msg.initialize_connection.hello.error == error


def test_data_sources_of_a_producer_past_the_limit_are_refused():
    h = limited(max_data_sources_per_producer=2)
    h.connect()
    errors = []
    for name in ("a", "b", "c"):
        register = ipc.ProducerToService(request_id=2)
        register.register_data_source.descriptor.name = name
        errors.append(h.producer(register)[0].msg.register_data_source.error)
    assert errors == ["", "", "this producer has 2 data sources (max_data_sources_per_producer)"]
    assert set(h.core.producers[ME].data_sources) == {"a", "b"}
    assert h.core.refusals == {"max_data_sources_per_producer": 1}


def test_an_smb_past_the_process_or_user_limit_is_refused():
    h = limited(max_smb_bytes_per_process=16384, max_smb_bytes_per_uid=32768)
    for identity, pid in ((b"a", 1), (b"b", 1), (b"c", 2), (b"d", 3)):
        h.connect(identity, pid)
    setup = ipc.ServiceToProducer(
        setup_tracing=ipc.SetupTracing(shm_size_bytes=16384, shm_page_size_bytes=4096)
    )
    outs = [h.core.handle_for_producer(channel, setup, h.now) for channel in (1, 2, 3, 4)]
    assert outs[0][0].msg.HasField("setup_tracing") and outs[2][0].msg.HasField("setup_tracing")
    assert outs[1][0].msg.error.message == (
        "no SMB of 16384 bytes: its process would pass max_smb_bytes_per_process (16384 bytes)"
    )
    assert outs[3][0].msg.error.message == (
        "no SMB of 16384 bytes: its user would pass max_smb_bytes_per_uid (32768 bytes)"
    )
    assert len(h.smbs) == 2
    assert h.core.refusals == {"max_smb_bytes_per_process": 1, "max_smb_bytes_per_uid": 1}


def test_what_a_producer_has_waiting_is_bounded_by_bytes():
    """Over the queue bound a producer's messages wait: 4096 of up to 4 MiB each
    would be 16 GiB; they are bounded by bytes as well."""
    h = Harness(queue_bytes=4000)
    h.link_up()
    channel = h.connect()
    abi = h.setup(channel)
    write_chunk(abi, 0, 1, b"a")
    h.producer(commit(0))  # fills the queue past its bound
    write_chunk(abi, 1, 2, b"b")
    h.producer(commit(1))  # waits
    big = ipc.ProducerToService(activate_triggers={"trigger_names": ["t" * 65536]})
    for _ in range(100):
        h.producer(big)
    producer = h.core.producers[ME]
    assert producer.waiting_bytes <= relay_core.MAX_WAITING_BYTES
    assert h.core.waiting_bytes <= h.core.config.send_queue_bytes
    assert h.core.counters.waiting_dropped > 0
    h.sent()
    while producer.waiting:
        h.core.drained(h.now)
        h.sent()
    assert producer.waiting_bytes == h.core.waiting_bytes == 0


def test_one_producer_has_at_most_max_waiting_bytes_waiting():
    h = Harness(queue_bytes=8 << 20)
    h.link_up()
    abi = h.setup(h.connect())
    big = ipc.ProducerToService(activate_triggers={"trigger_names": ["t" * 65536]})
    while not h.core.queue.over_bound():  # a slow link: the queue is full
        h.core.queue.push(1, big)
    write_chunk(abi, 0, 1, b"a")
    h.producer(commit(0))  # waits; what the producer sends next waits behind it
    for _ in range(100):
        h.producer(big)
    producer = h.core.producers[ME]
    assert 0 < producer.waiting_bytes <= relay_core.MAX_WAITING_BYTES
    assert h.core.counters.waiting_dropped == 101 - len(producer.waiting)
