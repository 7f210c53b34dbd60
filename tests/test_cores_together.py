"""The three pure cores wired together in one process (issue 3: "tested in one
process with a harness that wires them together over an in-process region and a
fake clock, no sleeps").

`Bus` plays the sockets and the shells:

- a real ServiceCore, real ProducerCores inside real ProducerHosts (the SDK's data
  source hosting and SMB arbiter), real ConsumerCores;
- every envelope is serialized with protos.framing on its way, as the ZeroMQ
  shells pass it: a DEALER sends encode(msg), the service's ROUTER sees
  [identity, envelope] and splits the identity off, and the service answers with
  encode_routed() which the bus routes by its first frame;
- one FIFO "wire" keeps each connection's order, as ZeroMQ does;
- each producer's SMB is an InProcessRegion the service's SMB factory creates;
  the producer "maps" it by getting a second view of the same bytes;
- the clock is fake: `advance()` walks time forward to each deadline the cores
  report (ServiceCore.next_deadline, ConsumerCore.next_deadline) and to the
  producers' commit ticks (every COMMIT_PERIOD_S, what the producer shell does),
  and calls on_timer / expire / tick there. Nothing sleeps.

A producer can be `frozen` (its loop thread is stuck: what the service sends it
waits in the socket, nothing is sent, it does not tick) and thawed again.

Peer credentials (pid, uid) are the bus's, as the service shell takes them from
the kernel; the producer cores claim other ones in their handshake.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import consumer_core as cc
from actors.core import producer_core as pc
from actors.core.service_core import Clocks, Peer, ServiceCore, ToConsumer, ToProducer
from actors.data_sources import (
    SyntheticDataSource,
    seq_values,
    synthetic_named,
    synthetic_packet,
    synthetic_str,
)
from actors.producer import COMMIT_PERIOD_S, DataSource, ProducerHost
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import COMPLETE, LAYOUT_CHUNKS, SharedMemoryABI, chunk_state, layout_of
from shm.region import InProcessRegion, Region
from tests import packet_kinds

LOG = logging.getLogger("test.cores_together")
MS = 1_000_000
SEC = 1000 * MS
T0 = 1000 * SEC
TICK_NS = int(COMMIT_PERIOD_S * SEC)
SERVICE_UID, SERVICE_PID = 0, 100
CLAIMED_PID, CLAIMED_UID = 1, 0  # what every producer core says about itself: lies
DS_INSTANCES, ALL_STARTED = 1, 2  # ObserveEventsRequest.Type
STARTED, STOPPED = 2, 1  # DataSourceInstanceStateChange.State
HANDOFF_SOCKET = "/fake/p.smb"


# -- the SMB -----------------------------------------------------------------------------------


class FakeSmb:
    """The service's side of a producer's SMB (what the SMB factory returns)."""

    def __init__(self, geometry, token: bytes, pid: int, uid: int) -> None:
        self.geometry = geometry
        self.region = InProcessRegion(geometry.size)
        self.backing = self.region.buf.obj  # the bytearray both sides share
        self.buf = self.region.buf
        self.token = token
        self.socket = HANDOFF_SOCKET
        self.owner = (pid, uid)  # the process the token is bound to (kernel ids)
        self.closed = False

    def close(self) -> None:
        self.closed = True


class ProducerMapping(Region):
    """The producer's mapping of a service-made SMB: another view of the same bytes."""

    def __init__(self, smb: FakeSmb) -> None:
        super().__init__(memoryview(smb.backing))


# -- data sources ------------------------------------------------------------------------------


class SyncSource(DataSource):
    """The synthetic data source's packets (actors.data_sources' documented
    functions), written on the loop thread in on_start, so they are in the SMB as
    soon as the start command has been handled. Commits happen as the SDK does them:
    at the arbiter's threshold, on a flush, at a tick, at stop."""

    name = "test.sync"
    flushes: list[int] = []  # instance ids, in on_flush order

    def on_start(self, config) -> None:
        t = config.for_testing
        w = self.writer()
        for i, x in enumerate(seq_values(t.seed, t.message_count), 1):
            w.write_packet(synthetic_packet(t.seed, i, x, t.message_size, i == t.message_count))

    def on_flush(self) -> None:
        SyncSource.flushes.append(self.instance_id)


STOP_MARK = 999_999  # the counter of the packet NotifySource writes in on_stop


class NotifySource(SyncSource):
    """Promises start and stop acks; writes one more packet when it stops."""

    name = "test.notify"
    will_notify_on_start = True
    will_notify_on_stop = True

    def on_stop(self) -> None:
        t = self.config.for_testing
        self.writer().write_packet(synthetic_packet(t.seed, STOP_MARK, 0, t.message_size, True))


BIG = 3 << 19  # 1.5 MiB: more than one ReadBuffers reply (1 MiB of slices) holds


def big_packet(counter: int, size: int) -> bytes:
    packet = pb.TracePacket()
    packet.for_testing.counter = counter
    packet.for_testing.str = f"{counter}:".ljust(size, "~")
    return packet.SerializeToString()


class BigSource(DataSource):
    """A small packet, a 1.5 MiB one, a small one: the big one spans hundreds of chunks."""

    name = "test.big"

    def on_start(self, config) -> None:
        w = self.writer()
        for counter, size in ((1, 10), (2, BIG), (3, 10)):
            w.write_packet(big_packet(counter, size))


# -- the bus -----------------------------------------------------------------------------------


class ProducerNode:
    """One producer process: ProducerCore inside ProducerHost, its DEALER socket."""

    def __init__(self, bus: Bus, name: str, sources, pid: int, uid: int, smb_kb: int) -> None:
        self.bus = bus
        self.name = name
        self.peer = Peer(f"producer-{name}".encode(), pid, uid)
        self.woken = threading.Event()
        self.connection_events: list[pc.Output] = []
        self.received: list[tuple[int, ipc.ServiceToProducer]] = []  # (time, message)
        self.sent: list[ipc.ProducerToService] = []
        self.frozen = False
        self.backlog: list[list[bytes]] = []  # frames held in the socket while frozen
        self.next_tick = bus.now + TICK_NS
        self.core = pc.ProducerCore(
            name,
            [c.descriptor() for c in sources],
            smb_size_hint=smb_kb * 1024,
            page_size_hint=4096,
            policy=1,
            pid=CLAIMED_PID,
            uid=CLAIMED_UID,
        )
        self.host = ProducerHost(
            self.core,
            {c.name: c for c in sources},
            send=self._send,
            wake=self.woken.set,
            attach_region=bus.attach_region,
            log=LOG,
            on_connection_event=self.connection_events.append,
        )

    def _send(self, msg: ipc.ProducerToService) -> None:
        self.sent.append(msg)
        frames = framing.encode(msg)  # what the DEALER sends
        self.bus.wire.append(("P>S", [self.peer.identity, *frames]))  # what the ROUTER sees

    def receive(self, frames: list[bytes]) -> None:
        msg = framing.decode_to_producer(frames)
        self.received.append((self.bus.now, msg))
        self.host.on_message(msg, self.bus.now)

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False
        held, self.backlog = self.backlog, []
        for frames in held:
            self.receive(frames)
        self.next_tick = max(self.next_tick, self.bus.now)
        self.bus.pump()

    def kinds(self, since: int = 0) -> list[str]:
        """What the service sent this producer (from message `since` on)."""
        return [m.WhichOneof("msg") for _, m in self.received[since:]]

    def commands(self, kind: str) -> list[tuple[int, object]]:
        return [(t, getattr(m, kind)) for t, m in self.received if m.WhichOneof("msg") == kind]

    def commits(self) -> list[ipc.CommitDataRequest]:
        return [m.commit_data for m in self.sent if m.WhichOneof("msg") == "commit_data"]

    def join_writer_threads(self, timeout_s: float = 10.0) -> None:
        """Wait (bounded) for threaded data sources to finish writing, then deliver
        what their threads queued, as the loop thread does when woken."""
        for ds in [rec.ds for rec in self.host._instances.values()]:
            thread = getattr(ds, "_thread", None)
            if thread is not None:
                thread.join(timeout_s)
                assert not thread.is_alive(), f"{ds.name} still writing after {timeout_s} s"
        self.bus.pump()


class ConsumerNode:
    """One consumer connection: a ConsumerCore and its DEALER socket."""

    def __init__(self, bus: Bus, name: str, pid: int, uid: int) -> None:
        self.bus = bus
        self.peer = Peer(f"consumer-{name}".encode(), pid, uid)
        self.core = cc.ConsumerCore(name)
        self.events: list[cc.Event] = []

    def send(self, msg: ipc.ConsumerToService) -> int:
        self.bus.wire.append(("C>S", [self.peer.identity, *framing.encode(msg)]))
        return msg.request_id

    def receive(self, frames: list[bytes]) -> None:
        msg = framing.decode_to_consumer(frames)
        self.events += self.core.handle("service", msg, self.bus.now)

    def result(self, request_id: int):
        """The outcome of a request: its Completed value, or raise its Failed error."""
        for e in self.events:
            if isinstance(e, cc.Failed) and e.request_id == request_id:
                raise e.error
            if isinstance(e, cc.Completed) and e.request_id == request_id:
                return e.value
        raise AssertionError(f"request {request_id} is not settled: {self.events}")

    def settled(self, request_id: int) -> bool:
        return any(
            isinstance(e, cc.Completed | cc.Failed) and e.request_id == request_id
            for e in self.events
        )

    def call(self, msg: ipc.ConsumerToService):
        rid = self.send(msg)
        self.bus.pump()
        return self.result(rid)

    # The requests, with the fake clock's now.
    def _t(self) -> dict:
        return {"now": self.bus.now, "timeout_ns": 5 * SEC}

    def hello(self):
        return self.call(self.core.hello(**self._t()))

    def enable(self, config: bytes) -> cc.EnableResult:
        self.enable_id = self.send(self.core.enable_tracing(config, **self._t()))
        self.bus.pump()
        return self.result(self.enable_id)

    def start(self):
        return self.call(self.core.start_tracing(**self._t()))

    def flush(self, timeout_ms: int) -> int:
        return self.send(self.core.flush(timeout_ms, now=self.bus.now))

    def disable(self) -> int:
        return self.send(self.core.disable_tracing(**self._t()))

    def stats(self) -> pb.TraceStats:
        return self.call(self.core.get_trace_stats(**self._t()))

    def query(self) -> ipc.QueryServiceStateResponse:
        return self.call(self.core.query_service_state(**self._t()))

    def observe(self, *types: int):
        self.observe_id = self.send(self.core.observe_events(types, **self._t()))
        self.bus.pump()
        return self.result(self.observe_id)

    def read(self) -> list[bytes]:
        """ReadBuffers until has_more is false; the packets ConsumerCore reassembled."""
        rid = self.send(self.core.read_buffers(now=self.bus.now, idle_timeout_ns=5 * SEC))
        self.bus.pump()
        result = self.result(rid)
        packets = [
            p
            for e in self.events
            if isinstance(e, cc.PacketsRead) and e.request_id == rid
            for p in e.packets
        ]
        assert result.packets == len(packets) and result.incomplete_bytes == 0
        return packets

    def session_ended(self) -> list[cc.SessionEnded]:
        return [e for e in self.events if isinstance(e, cc.SessionEnded)]

    def observed(self) -> list[ipc.ObservableEvents]:
        return [e.events for e in self.events if isinstance(e, cc.EventsObserved)]


class Bus:
    def __init__(self) -> None:
        self.now = T0
        self.smbs: dict[str, FakeSmb] = {}
        clocks = Clocks(lambda: [(6, self.now), (3, self.now)], lambda: self.now)
        self.service = ServiceCore(self._smb_factory, clocks, SERVICE_UID, SERVICE_PID)
        self.wire: deque[tuple[str, list[bytes]]] = deque()
        self.producers: dict[bytes, ProducerNode] = {}
        self.consumers: dict[bytes, ConsumerNode] = {}
        self.unroutable = 0  # messages for a peer that is gone (a ROUTER drops them)

    # -- peers --------------------------------------------------------------------------------

    def producer(self, name, sources, *, pid: int, uid: int = 1000, smb_kb: int = 256):
        node = ProducerNode(self, name, sources, pid, uid, smb_kb)
        self.producers[node.peer.identity] = node
        node.host.connect(self.now)
        self.pump()
        assert node.core.state is pc.State.CONNECTED, node.connection_events
        return node

    def consumer(self, name: str = "c", *, pid: int = 77, uid: int = 1000) -> ConsumerNode:
        node = ConsumerNode(self, name, pid, uid)
        self.consumers[node.peer.identity] = node
        node.hello()
        return node

    def consumer_gone(self, node: ConsumerNode) -> None:
        del self.consumers[node.peer.identity]
        self._route(self.service.consumer_gone(node.peer.identity, self.now))
        self.pump()

    # -- the SMB --------------------------------------------------------------------------------

    def _smb_factory(self, geometry, pid: int, uid: int) -> FakeSmb:
        smb = FakeSmb(geometry, (100 + len(self.smbs)).to_bytes(16, "little"), pid, uid)
        self.smbs[smb.token] = smb
        return smb

    def attach_region(self, cmd) -> Region:
        smb = self.smbs[cmd.token]
        assert cmd.socket == HANDOFF_SOCKET
        assert len(smb.backing) == cmd.size and not smb.closed
        return ProducerMapping(smb)

    # -- messages -------------------------------------------------------------------------------

    def _route(self, outputs) -> None:
        for out in outputs:
            assert isinstance(out, ToProducer | ToConsumer)
            kind = "S>P" if isinstance(out, ToProducer) else "S>C"
            self.wire.append((kind, framing.encode_routed(out.identity, out.msg)))

    def _deliver(self, kind: str, frames: list[bytes]) -> None:
        identity, rest = framing.split_identity(frames)
        if kind == "P>S":
            node = self.producers[identity]
            msg = framing.decode_from_producer(rest)
            self._route(self.service.handle_producer(node.peer, msg, self.now))
        elif kind == "C>S":
            node = self.consumers[identity]
            msg = framing.decode_from_consumer(rest)
            self._route(self.service.handle_consumer(node.peer, msg, self.now))
        elif kind == "S>P":
            node = self.producers.get(identity)
            if node is None:
                self.unroutable += 1
            elif node.frozen:
                node.backlog.append(rest)
            else:
                node.receive(rest)
        else:
            node = self.consumers.get(identity)
            if node is None:
                self.unroutable += 1
            else:
                node.receive(rest)

    def pump(self) -> None:
        """Deliver until nothing is in flight and the service has no pending
        work (what the poll loops would do)."""
        for _ in range(100_000):
            for node in self.producers.values():
                if node.woken.is_set() and not node.frozen:
                    node.woken.clear()
                    node.host.deliver()
            if not self.wire:
                if not self.service.pending_work():
                    return
                self._route(self.service.continue_reads(self.now))  # the shell, when idle
                continue
            self._deliver(*self.wire.popleft())
        raise AssertionError("messages never stopped flowing")

    # -- time -----------------------------------------------------------------------------------

    def _next_due(self) -> int | None:
        due = [self.service.next_deadline()]
        due += [c.core.next_deadline() for c in self.consumers.values()]
        due += [p.next_tick for p in self.producers.values() if not p.frozen]
        due = [d for d in due if d is not None]
        return min(due) if due else None

    def advance(self, ms: float) -> None:
        """Move the fake clock forward, firing every deadline on the way, in order."""
        target = self.now + int(ms * MS)
        for _ in range(1_000_000):
            due = self._next_due()
            if due is None or due > target:
                self.now = target
                return
            self.now = max(self.now, due)
            deadline = self.service.next_deadline()
            if deadline is not None and deadline <= self.now:
                self._route(self.service.on_timer(self.now))
                self.pump()
                after = self.service.next_deadline()
                assert after is None or after > self.now, "on_timer left a deadline in the past"
            for c in list(self.consumers.values()):
                deadline = c.core.next_deadline()
                if deadline is not None and deadline <= self.now:
                    c.events += c.core.expire(self.now)
            for p in list(self.producers.values()):
                if not p.frozen and p.next_tick <= self.now:
                    p.next_tick = self.now + TICK_NS
                    p.host.tick(self.now)
            self.pump()
        raise AssertionError("time did not move")


# -- configs and trace checks ------------------------------------------------------------------


def source(name: str, buffer: int = 0, *, only: str = "", **testing) -> pb.TraceConfig.DataSource:
    ds = pb.TraceConfig.DataSource()
    ds.config.name = name
    ds.config.target_buffer = buffer
    if testing:
        ds.config.for_testing.CopyFrom(pb.TestConfig(**testing))
    if only:
        ds.producer_name_filter.append(only)
    return ds


def trace_config(*sources: pb.TraceConfig.DataSource, buffers=(256,), **fields) -> bytes:
    cfg = pb.TraceConfig(**fields)
    for kb in buffers:
        cfg.buffers.add(size_kb=kb)
    cfg.data_sources.extend(sources)
    return cfg.SerializeToString()


def parse(packets: list[bytes]) -> list[pb.TracePacket]:
    return [pb.TracePacket.FromString(p) for p in packets]


def from_producer(packets: list[pb.TracePacket], pid: int) -> list[pb.TracePacket]:
    return [p for p in packets if p.trusted_packet_sequence_id != 1 and p.trusted_pid == pid]


def check_synthetic(packets: list[pb.TracePacket], seed: int, count: int, size: int) -> None:
    """Exactly the packets the synthetic source writes for (seed, count, size), in order."""
    events = [p.for_testing for p in packets]
    assert [e.counter for e in events] == list(range(1, count + 1))
    assert [e.seq_value for e in events] == seq_values(seed, count)
    assert [e.str.encode() for e in events] == [
        synthetic_str(seed, i, size) for i in range(1, count + 1)
    ]
    assert [e.is_last for e in events] == [False] * (count - 1) + [True]


def instance_changes(observed: list[ipc.ObservableEvents]) -> list[tuple[str, int]]:
    return [(c.data_source_name, c.state) for e in observed for c in e.instance_state_changes]


def smb_complete_chunks(smb: FakeSmb) -> int:
    """Chunks of the SMB that are COMPLETE: returned by their writer, not yet moved."""
    abi = SharedMemoryABI(smb.buf, smb.geometry)
    n = 0
    for page in range(abi.num_pages):
        bitmap = abi.bitmap(page)
        for chunk in range(LAYOUT_CHUNKS[layout_of(bitmap)]):
            n += chunk_state(bitmap, chunk) == COMPLETE
    return n


# -- 1. a whole session ------------------------------------------------------------------------

OTHER = synthetic_named("tracebus.other")


def test_full_session_with_two_buffers_over_the_wire():
    bus = Bus()
    producer = bus.producer("prod", [SyntheticDataSource, OTHER], pid=4242, uid=1234)
    assert producer.core.producer_id >= 1
    consumer = bus.consumer()
    config = trace_config(
        source(SyntheticDataSource.name, 0, message_count=300, message_size=40, seed=7),
        source(OTHER.name, 1, message_count=120, message_size=100, seed=11),
        buffers=(256, 128),
    )
    enabled = consumer.enable(config)
    assert enabled.started and enabled.unsupported_fields == ()
    assert consumer.core.session is cc.SessionView.ACTIVE
    session = bus.service.sessions[enabled.session_id]
    # The service's commands, in protocol order; target_buffer is the global buffer id.
    assert producer.kinds(3) == [
        "setup_tracing",
        "setup_data_source",
        "setup_data_source",
        "start_data_source",
        "start_data_source",
    ]
    (_, setup), *_ = producer.commands("setup_tracing")
    assert setup.shm_size_bytes == 256 * 1024 and setup.shm_token in bus.smbs
    assert not setup.shm_path  # no path to an SMB is published
    assert bus.smbs[setup.shm_token].owner == (producer.peer.pid, producer.peer.uid)
    started = [
        pb.DataSourceConfig.FromString(cmd.data_source_config)
        for _, cmd in producer.commands("start_data_source")
    ]
    targets = {c.name: c.target_buffer for c in started}
    assert targets == {
        SyntheticDataSource.name: session.buffer_ids[0],
        OTHER.name: session.buffer_ids[1],
    }
    producer.join_writer_threads()  # the synthetic source writes on a thread of its own

    flush = consumer.flush(1000)
    bus.pump()
    assert consumer.result(flush) is True
    assert len(producer.commands("flush")) == 1

    disable = consumer.disable()
    bus.pump()
    assert consumer.result(disable) is None
    assert producer.kinds()[-2:] == ["stop_data_source", "stop_data_source"]
    assert producer.host._instances == {}  # both instances were stopped by the SDK
    assert [e.error for e in consumer.session_ended()] == [""]
    assert consumer.core.session is cc.SessionView.ENDED

    raw = consumer.read()
    packets = parse(raw)
    kinds = packet_kinds.kinds(packets)
    config_at = kinds.index("trace_config")
    # snapshots at the start, when all data sources started, at the stop
    assert kinds[:config_at] == ["clock_snapshot"] * 3
    assert (6, T0) in [(c.clock_id, c.timestamp) for c in packets[0].clock_snapshot.clocks]
    assert packets[config_at].trace_config == pb.TraceConfig.FromString(config)
    assert kinds[-2:] == ["read_tracing_buffers_completed", "trace_stats"]
    service = [i for i, p in enumerate(packets) if p.trusted_packet_sequence_id == 1]
    produced = [i for i, p in enumerate(packets) if p.trusted_packet_sequence_id != 1]
    end = len(packets)
    assert max(service[:-2]) < min(produced) and service[-2:] == [end - 2, end - 1]
    assert all(packets[i].trusted_pid == SERVICE_PID for i in service)
    # Producer packets carry the connection's credentials, not the claimed ones.
    assert {(packets[i].trusted_pid, packets[i].trusted_uid) for i in produced} == {(4242, 1234)}
    seqs = [packets[i].trusted_packet_sequence_id for i in produced]
    first, second = seqs[0], seqs[-1]
    assert first != second and seqs == [first] * 300 + [second] * 120  # buffer 0, then 1
    check_synthetic([packets[i] for i in produced[:300]], 7, 300, 40)
    check_synthetic([packets[i] for i in produced[300:]], 11, 120, 100)
    # Byte for byte what the data source wrote, followed by the service's trailer.
    values = seq_values(7, 300)
    for n, i in enumerate(produced[:300], 1):
        assert raw[i].startswith(synthetic_packet(7, n, values[n - 1], 40, n == 300))
    stats = packets[-1].trace_stats
    assert [b.buffer_size for b in stats.buffer_stats] == [256 * 1024, 128 * 1024]
    assert stats.producers_connected == 1 and stats.flushes_succeeded == 1
    again = parse(consumer.read())  # reading is destructive: only the stats come again
    assert [p.trusted_packet_sequence_id for p in again] == [1, 1]
    assert packet_kinds.kinds(again) == ["read_tracing_buffers_completed", "trace_stats"]


def test_a_packet_larger_than_a_read_reply_is_reassembled_by_the_consumer_core():
    bus = Bus()
    producer = bus.producer("big", [BigSource], pid=4242, smb_kb=4096)
    consumer = bus.consumer()
    consumer.enable(trace_config(source(BigSource.name), buffers=(4096,)))
    flush = consumer.flush(1000)
    bus.pump()
    assert consumer.result(flush) is True
    assert sum(len(c.chunks_to_move) for c in producer.commits()) > 300
    rid = consumer.send(consumer.core.read_buffers(now=bus.now, idle_timeout_ns=SEC))
    bus.pump()
    result = consumer.result(rid)
    assert result.replies >= 2 and result.incomplete_bytes == 0
    raw = [p for e in consumer.events if isinstance(e, cc.PacketsRead) for p in e.packets]
    produced = [r for r in raw if pb.TracePacket.FromString(r).trusted_packet_sequence_id != 1]
    assert len(produced) == 3
    for data, (counter, size) in zip(produced, ((1, 10), (2, BIG), (3, 10)), strict=True):
        assert data.startswith(big_packet(counter, size))


# -- 2. a producer that comes late -------------------------------------------------------------


def test_a_producer_registering_after_the_start_joins_the_session():
    bus = Bus()
    early = bus.producer("early", [SyncSource], pid=501)
    consumer = bus.consumer()
    enabled = consumer.enable(
        trace_config(
            source(SyncSource.name, only="early", message_count=50, message_size=20, seed=1),
            source(SyncSource.name, only="late", message_count=70, message_size=30, seed=2),
        )
    )
    assert enabled.started and early.kinds(2) == [
        "setup_tracing",
        "setup_data_source",
        "start_data_source",
    ]
    late = bus.producer("late", [SyncSource], pid=502, uid=2000)
    assert late.kinds() == [
        "initialize_connection",
        "register_data_source",
        "setup_tracing",
        "setup_data_source",
        "start_data_source",
    ]
    (_, start), *_ = late.commands("start_data_source")
    config = pb.DataSourceConfig.FromString(start.data_source_config)
    assert config.for_testing.seed == 2  # the entry whose producer_name_filter names it
    assert config.target_buffer == bus.service.sessions[enabled.session_id].buffer_ids[0]
    assert len(late.host._instances) == 1

    flush = consumer.flush(1000)
    bus.pump()
    assert consumer.result(flush) is True
    packets = parse(consumer.read())
    check_synthetic(from_producer(packets, 501), 1, 50, 20)
    check_synthetic(from_producer(packets, 502), 2, 70, 30)
    assert {p.trusted_uid for p in from_producer(packets, 502)} == {2000}


# -- 3. timers: duration_ms and flush_period_ms ------------------------------------------------


def test_duration_flushes_then_stops_and_the_consumer_sees_the_end():
    bus = Bus()
    producer = bus.producer("prod", [SyncSource], pid=501)
    consumer = bus.consumer()
    consumer.enable(
        trace_config(
            source(SyncSource.name, message_count=40, message_size=10, seed=3), duration_ms=500
        )
    )
    before = len(producer.received)
    bus.advance(499)
    assert "flush" not in producer.kinds(before) and consumer.session_ended() == []
    bus.advance(1)
    (flush_at, _), *_ = producer.commands("flush")
    (stop_at, _), *_ = producer.commands("stop_data_source")
    assert flush_at == stop_at == T0 + 500 * MS
    assert producer.kinds(before).index("flush") < producer.kinds(before).index("stop_data_source")
    assert [e.error for e in consumer.session_ended()] == [""]
    assert consumer.core.session is cc.SessionView.ENDED
    check_synthetic(from_producer(parse(consumer.read()), 501), 3, 40, 10)


def test_flush_period_sends_periodic_flushes_until_the_session_stops():
    bus = Bus()
    producer = bus.producer("prod", [SyncSource], pid=501)
    consumer = bus.consumer()
    consumer.enable(trace_config(source(SyncSource.name, message_count=5), flush_period_ms=100))
    SyncSource.flushes.clear()
    bus.advance(350)
    times = [t for t, _ in producer.commands("flush")]
    assert times == [T0 + 100 * MS, T0 + 200 * MS, T0 + 300 * MS]
    ids = [cmd.flush_request_id for _, cmd in producer.commands("flush")]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert len(SyncSource.flushes) == 3  # the data source's on_flush ran each time
    stats = consumer.stats()
    assert (stats.flushes_requested, stats.flushes_succeeded) == (3, 3)
    consumer.disable()
    bus.pump()
    bus.advance(1000)
    assert len(producer.commands("flush")) == 3


# -- 4. a flush nobody answers -----------------------------------------------------------------


def test_unanswered_flush_fails_at_the_timeout_and_the_smb_is_scraped():
    bus = Bus()
    producer = bus.producer("prod", [SyncSource], pid=501)
    consumer = bus.consumer()
    consumer.enable(
        trace_config(
            source(SyncSource.name, message_count=100, message_size=100, seed=5),
            flush_timeout_ms=300,
        )
    )
    # The packets filled a few chunks: COMPLETE, waiting for the next commit, which
    # never comes: the producer hangs now.
    (smb,) = bus.smbs.values()
    assert smb_complete_chunks(smb) >= 2
    producer.freeze()
    flush = consumer.flush(0)  # 0: the session's flush_timeout_ms
    bus.pump()
    bus.advance(299)
    assert not consumer.settled(flush)
    bus.advance(1)
    assert consumer.result(flush) is False
    packets = parse(consumer.read())
    check_synthetic(from_producer(packets, 501), 5, 100, 100)  # scraped, the last chunk too
    assert packets[-1].trace_stats.flushes_failed == 1
    # The producer wakes up and commits the same chunks: nothing is read twice.
    producer.thaw()
    assert producer.commands("flush") and smb_complete_chunks(smb) == 0
    again = from_producer(parse(consumer.read()), 501)
    assert [p.for_testing.counter for p in again] == []


def test_a_flush_with_the_session_timeout_waits_for_the_services_answer():
    bus = Bus()
    producer = bus.producer("prod", [SyncSource], pid=501)
    consumer = bus.consumer()
    consumer.enable(trace_config(source(SyncSource.name, message_count=10), flush_timeout_ms=3000))
    producer.freeze()
    flush = consumer.flush(0)  # 0: the session's flush_timeout_ms, 3 s
    bus.pump()
    bus.advance(1500)
    producer.thaw()  # it answers well within the session's timeout
    assert consumer.result(flush) is True


def test_scraped_then_committed_chunks_are_read_once():
    bus = Bus()
    producer = bus.producer("prod", [SyncSource], pid=501)
    consumer = bus.consumer()
    consumer.enable(
        trace_config(
            source(SyncSource.name, message_count=100, message_size=100, seed=5),
            flush_timeout_ms=300,
        )
    )
    producer.freeze()
    flush = consumer.flush(0)
    bus.pump()
    bus.advance(300)
    assert consumer.result(flush) is False
    producer.thaw()  # commits the chunks the timeout's scrape copied already
    check_synthetic(from_producer(parse(consumer.read()), 501), 5, 100, 100)


# -- 5. ObserveEvents and QueryServiceState ----------------------------------------------------


def test_observed_events_and_service_state():
    bus = Bus()
    plain = bus.producer("plain", [SyncSource], pid=601, uid=1001)
    slow = bus.producer("slow", [NotifySource], pid=602, uid=1002)
    consumer = bus.consumer()
    enabled = consumer.enable(
        trace_config(
            source(SyncSource.name, message_count=3),
            source(NotifySource.name, message_count=3),
            deferred_start=True,
        )
    )
    assert not enabled.started
    assert consumer.observe(DS_INSTANCES, ALL_STARTED) is None
    # The current state is replayed: configured instances are not started.
    assert sorted(instance_changes(consumer.observed())) == [
        (NotifySource.name, STOPPED),
        (SyncSource.name, STOPPED),
    ]
    seen = len(consumer.observed())
    slow.freeze()
    assert consumer.start() is None
    assert instance_changes(consumer.observed()[seen:]) == [(SyncSource.name, STARTED)]
    assert not any(e.all_data_sources_started for e in consumer.observed())
    seen = len(consumer.observed())
    slow.thaw()  # it starts and acks: the last instance started
    assert slow.sent[-1].WhichOneof("msg") == "data_source_started"
    later = consumer.observed()[seen:]
    assert instance_changes(later) == [(NotifySource.name, STARTED)]
    assert [e.all_data_sources_started for e in later] == [False, True]
    change = later[0].instance_state_changes[0]
    assert (change.producer_id, change.producer_name) == (slow.core.producer_id, "slow")

    state = consumer.query()
    producers = {p.name: (p.id, p.pid, p.uid) for p in state.producers}
    assert producers == {
        "plain": (plain.core.producer_id, 601, 1001),
        "slow": (slow.core.producer_id, 602, 1002),
    }
    sources = {(d.producer_id, d.descriptor.name): d.descriptor for d in state.data_sources}
    assert set(sources) == {
        (plain.core.producer_id, SyncSource.name),
        (slow.core.producer_id, NotifySource.name),
    }
    notify = sources[(slow.core.producer_id, NotifySource.name)]
    assert notify.will_notify_on_start and notify.will_notify_on_stop
    (session,) = state.sessions
    assert (session.id, session.state, list(session.buffer_size_kb)) == (
        enabled.session_id,
        "STARTED",
        [256],
    )

    seen = len(consumer.observed())
    disable = consumer.disable()
    bus.pump()
    assert consumer.result(disable) is None
    assert sorted(instance_changes(consumer.observed()[seen:])) == [
        (NotifySource.name, STOPPED),
        (SyncSource.name, STOPPED),
    ]
    packets = parse(consumer.read())
    events = [p.service_event for p in packets if p.HasField("service_event")]
    assert [e.WhichOneof("event_type") for e in events][:2] == [
        "tracing_started",
        "all_data_sources_started",
    ]


# -- 6. a consumer that goes away --------------------------------------------------------------


def test_consumer_disconnect_frees_the_session():
    bus = Bus()
    producer = bus.producer("prod", [SyncSource, NotifySource], pid=501)
    consumer = bus.consumer()
    consumer.enable(
        trace_config(
            source(SyncSource.name, message_count=10),
            source(NotifySource.name, 1, message_count=10),
            buffers=(64, 64),
            duration_ms=10_000,
        )
    )
    assert len(bus.service.buffers) == 2 and len(producer.host._instances) == 2
    entry = bus.service.producers[producer.peer.identity]
    assert entry.allowed_buffers
    before = len(producer.received)
    bus.consumer_gone(consumer)
    assert bus.service.buffers == {} and bus.service.sessions == {}
    assert sorted(producer.kinds(before)) == ["stop_data_source", "stop_data_source"]
    assert producer.host._instances == {}  # the SDK ran on_stop and acked
    assert entry.allowed_buffers == {}
    assert bus.service.next_deadline() is None  # the duration timer went with it
    assert not any(s.closed for s in bus.smbs.values())  # the producer is still connected
    # The service is still good for a new consumer.
    other = bus.consumer("other")
    other.enable(trace_config(source(SyncSource.name, message_count=4, message_size=8, seed=9)))
    flush = other.flush(1000)
    bus.pump()
    assert other.result(flush) is True
    check_synthetic(from_producer(parse(other.read()), 501), 9, 4, 8)


# -- 7. stop acks ------------------------------------------------------------------------------


def notify_session(stop_timeout_ms: int = 400):
    bus = Bus()
    producer = bus.producer("prod", [NotifySource], pid=501)
    consumer = bus.consumer()
    consumer.enable(
        trace_config(
            source(NotifySource.name, message_count=20, message_size=16, seed=4),
            data_source_stop_timeout_ms=stop_timeout_ms,
        )
    )
    consumer.observe(DS_INSTANCES)
    return bus, producer, consumer


def test_disable_waits_for_the_stop_ack():
    bus, producer, consumer = notify_session()
    (start,) = [c for _, c in producer.commands("start_data_source")]
    assert pb.DataSourceConfig.FromString(start.data_source_config).stop_timeout_ms == 400
    producer.freeze()
    disable = consumer.disable()
    bus.pump()
    bus.advance(200)
    assert not consumer.settled(disable) and consumer.session_ended() == []
    producer.thaw()  # stops, commits what on_stop wrote, then acks
    assert producer.sent[-1].WhichOneof("msg") == "data_source_stopped"
    assert consumer.result(disable) is None and len(consumer.session_ended()) == 1
    packets = from_producer(parse(consumer.read()), 501)
    assert [p.for_testing.counter for p in packets] == [*range(1, 21), STOP_MARK]


def test_disable_finishes_at_the_stop_timeout_without_the_ack():
    bus, producer, consumer = notify_session()
    producer.freeze()
    disable = consumer.disable()
    bus.pump()
    bus.advance(399)
    assert not consumer.settled(disable) and consumer.session_ended() == []
    bus.advance(1)  # data_source_stop_timeout_ms
    assert consumer.result(disable) is None
    assert [e.error for e in consumer.session_ended()] == [""]
    # What the producer wrote before it hung is in the trace (scraped at the stop).
    packets = from_producer(parse(consumer.read()), 501)
    check_synthetic(packets, 4, 20, 16)
    producer.thaw()  # a late ack for a stopped session is harmless
    assert consumer.core.session is cc.SessionView.ENDED


def test_observers_see_instances_stopped_at_the_stop_timeout():
    bus, producer, consumer = notify_session()
    seen = len(consumer.observed())
    producer.freeze()
    consumer.disable()
    bus.pump()
    bus.advance(400)
    assert consumer.session_ended()
    assert instance_changes(consumer.observed()[seen:]) == [(NotifySource.name, STOPPED)]


def test_observing_a_starting_instance_does_not_report_it_stopped():
    bus = Bus()
    slow = bus.producer("slow", [NotifySource], pid=602)
    consumer = bus.consumer()
    slow.freeze()  # the start command waits in its socket: the instance is STARTING
    consumer.enable(trace_config(source(NotifySource.name, message_count=3)))
    consumer.observe(DS_INSTANCES)
    slow.thaw()
    assert instance_changes(consumer.observed()) == [(NotifySource.name, STARTED)]
