"""ProducerCore and ProducerHost in one process, against a scripted fake service.

The fake service is this test: it answers the handshake, hands over an
in-process SMB, drives data source instances, and plays the service's part of
the data path with tests/smb_oracle.py (moving committed chunks out of the SMB,
applying patches, reassembling packets). No sockets, no sleeps: waits are on
the host's wake-up event, with deadlines.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors import endpoints
from actors.core import producer_core as core
from actors.data_sources import (
    SLICES,
    DemoTimelineDataSource,
    SyntheticDataSource,
    seq_values,
    synthetic_named,
    synthetic_str,
)
from actors.producer import DataSource, Producer, ProducerHost, data_sources_in
from actors.producer_host import InstanceRecord
from protos import tracebus_ipc_pb2 as ipc
from shm.commits import ChunkToMove, ChunkToPatch, CommitBatch
from shm.region import InProcessRegion
from shm.writer import BufferExhaustedPolicy, TraceWriter
from tests.smb_oracle import Oracle
from tests.track_event_import import Outcome, import_track_events

LOG = logging.getLogger("test.producer")
SEC = 1_000_000_000
SMB_SOCKET, SMB_TOKEN = "/run/p.smb", bytes(range(16))


class LoopWriter(DataSource):
    """Writes on the loop thread, in on_start, and never flushes by itself."""

    name = "test.loop_writer"
    will_notify_on_start = True
    will_notify_on_stop = True

    def on_start(self, config):
        for i in range(config.for_testing.message_count):
            self.writer().write_packet(b"\xc8\x01" + bytes([i & 0x7F]))  # field 25 varint

    calls: list[str] = []

    def on_flush(self):
        LoopWriter.calls.append(f"flush {self.instance_id}")

    def on_clear_incremental_state(self):
        LoopWriter.calls.append(f"clear {self.instance_id}")


def ds_config(name: str, target_buffer: int = 1, **testing) -> bytes:
    cfg = pb.DataSourceConfig(name=name, target_buffer=target_buffer)
    if testing:
        cfg.for_testing.CopyFrom(pb.TestConfig(**testing))
    return cfg.SerializeToString()


def to_batch(req: ipc.CommitDataRequest) -> CommitBatch:
    return CommitBatch(
        [ChunkToMove(m.page, m.chunk, m.target_buffer) for m in req.chunks_to_move],
        [
            ChunkToPatch(
                p.target_buffer,
                p.writer_id,
                p.chunk_id,
                [(x.offset, x.data) for x in p.patches],
                p.has_more_patches,
            )
            for p in req.chunks_to_patch
        ],
        req.flush_request_id,
    )


class Rig:
    """A ProducerHost wired to lists and events, and the fake service around it."""

    def __init__(self, sources, *, policy=BufferExhaustedPolicy.DROP, smb=256 * 1024, page=4096):
        self.sent: list[ipc.ProducerToService] = []
        self.woken = threading.Event()
        self.events: list[core.Output] = []
        self.smb, self.page = smb, page
        self.core = core.ProducerCore(
            "p1",
            [c.descriptor() for c in sources],
            smb_size_hint=smb,
            page_size_hint=page,
            policy=int(policy),
            pid=123,
            uid=456,
        )
        self.host = ProducerHost(
            self.core,
            {c.name: c for c in sources},
            send=self.sent.append,
            wake=self.woken.set,
            attach_region=self._attach,
            log=LOG,
            on_connection_event=self.events.append,
        )
        self.region: InProcessRegion | None = None
        self.oracle: Oracle | None = None
        self.hold = False  # True: record commits but do not move their chunks yet
        self.held: list[ipc.CommitDataRequest] = []
        self.registered: dict[int, int] = {}
        self.seen = 0

    def _attach(self, cmd: core.MapSmb) -> InProcessRegion:
        assert (cmd.socket, cmd.token) == (SMB_SOCKET, SMB_TOKEN)
        self.region = InProcessRegion(cmd.size)
        return self.region

    def push(self, request_id: int = 0, **msg) -> None:
        self.host.on_message(ipc.ServiceToProducer(request_id=request_id, **msg), 0)

    def kinds(self, start: int = 0) -> list[str]:
        return [m.WhichOneof("msg") for m in self.sent[start:]]

    def of(self, kind: str) -> list:
        return [getattr(m, kind) for m in self.sent if m.WhichOneof("msg") == kind]

    def connect(self) -> None:
        self.host.connect(0)
        init = self.sent[0]
        reply = ipc.InitializeConnectionResponse(
            hello=ipc.HelloReply(protocol_version=ipc.PROTOCOL_VERSION), producer_id=7
        )
        self.push(init.request_id, initialize_connection=reply)
        for m in self.sent[1:]:
            self.push(m.request_id, register_data_source=ipc.RegisterDataSourceResponse())

    def setup_tracing(self) -> None:
        from shm.abi import SharedMemoryABI, resolve_geometry

        st = ipc.SetupTracing(
            shm_size_bytes=self.smb,
            shm_page_size_bytes=self.page,
            shm_socket=SMB_SOCKET,
            shm_token=SMB_TOKEN,
        )
        self.push(setup_tracing=st)
        assert self.of("smb_mapped")[-1].error == ""
        geometry = resolve_geometry(self.smb, self.page)
        self.oracle = Oracle(SharedMemoryABI(self.region.buf, geometry))

    def start(self, instance_id: int, config: bytes) -> DataSource:
        self.push(
            setup_data_source=ipc.SetupDataSource(
                instance_id=instance_id, data_source_config=config
            )
        )
        self.push(
            start_data_source=ipc.StartDataSource(
                instance_id=instance_id, data_source_config=config
            )
        )
        return self.host._instances[instance_id].ds

    def process(self) -> None:
        """Play the service for what the producer sent since the last call."""
        for m in self.sent[self.seen :]:
            kind = m.WhichOneof("msg")
            if kind == "register_trace_writer":
                self.registered[m.register_trace_writer.writer_id] = (
                    m.register_trace_writer.target_buffer
                )
            elif kind == "commit_data":
                self.held.append(m.commit_data)
        self.seen = len(self.sent)
        if not self.hold:
            self.release()

    def release(self) -> None:
        held, self.held = self.held, []
        for req in held:
            before = len(self.oracle.chunks)
            self.oracle.on_commit(to_batch(req))
            for chunk in self.oracle.chunks[before:]:
                assert self.registered.get(chunk.writer_id) == chunk.target_buffer, (
                    "a chunk was committed before its writer was registered"
                )

    def pump(self, until, timeout: float = 20.0) -> None:
        """Deliver what data source threads queue, until `until()` or the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            self.woken.clear()
            self.host.deliver()
            self.process()
            if until():
                return
            assert time.monotonic() < deadline, "timed out"
            self.woken.wait(0.05)

    def finish(self, ds: DataSource) -> None:
        """Wait for a threaded data source's thread to end, then take what it committed."""
        self.pump(lambda: not ds._thread.is_alive())
        self.host.deliver()
        self.process()


# -- handshake ------------------------------------------------------------------------------


def test_handshake_messages_and_order():
    rig = Rig([SyntheticDataSource, LoopWriter])
    rig.connect()
    init, reg1, reg2 = rig.sent
    assert [m.request_id for m in rig.sent] == [1, 2, 3]
    ic = init.initialize_connection
    assert ic.hello.protocol_version == ipc.PROTOCOL_VERSION and ic.hello.features == 0
    assert ic.producer_name == "p1"
    assert (ic.shm_size_hint_bytes, ic.shm_page_size_hint_bytes) == (256 * 1024, 4096)
    assert (ic.buffer_exhausted_policy, ic.claimed_pid, ic.claimed_uid) == (1, 123, 456)
    assert reg1.register_data_source.descriptor.name == "tracebus.synthetic"
    d = reg2.register_data_source.descriptor
    assert d.name == LoopWriter.name and d.will_notify_on_start and d.will_notify_on_stop
    assert rig.core.state is core.State.CONNECTED and rig.core.producer_id == 7
    assert rig.events == [core.Connected(7)]


@pytest.mark.parametrize(
    "hello",
    [
        ipc.HelloReply(protocol_version=2, error="protocol version 1 is not supported"),
        ipc.HelloReply(protocol_version=2),
    ],
)
def test_version_mismatch_is_fatal(hello):
    rig = Rig([SyntheticDataSource])
    rig.host.connect(0)
    reply = ipc.InitializeConnectionResponse(hello=hello)
    rig.push(1, initialize_connection=reply)
    (fatal,) = rig.events
    assert isinstance(fatal, core.Fatal) and "protocol version" in fatal.reason
    assert rig.core.state is core.State.FAILED
    assert rig.kinds() == ["initialize_connection"]  # nothing registered
    rig.push(setup_tracing=ipc.SetupTracing(shm_socket=SMB_SOCKET, shm_token=SMB_TOKEN))
    assert rig.host.core.tick(100 * SEC) == [] and rig.core.connect(0) == []


def test_handshake_timeout_reconnects_with_backoff():
    c = core.ProducerCore("p", [SyntheticDataSource.descriptor()])
    delays = []
    now = 0
    for _ in range(7):
        (send,) = c.connect(now)
        assert send.message.request_id == 1
        assert c.tick(now + core.HANDSHAKE_TIMEOUT_NS - 1) == []
        (out,) = c.tick(now + core.HANDSHAKE_TIMEOUT_NS)
        assert isinstance(out, core.Reconnect) and "initialize_connection" in out.reason
        delays.append(out.delay_s)
        now += 10 * SEC
    assert delays == sorted(delays) and delays[-1] == delays[-2] == core.RECONNECT_BACKOFF_S[-1]


def _handshake(c: core.ProducerCore, now: int = 0) -> None:
    (init,) = c.connect(now)
    reply = ipc.ServiceToProducer(request_id=init.message.request_id, initialize_connection={})
    c.handle(reply, now)
    assert c.state is core.State.CONNECTED


def _heartbeat(c: core.ProducerCore, now: int) -> ipc.ProducerToService:
    (hb,) = c.tick(now)
    assert hb.message.WhichOneof("msg") == "heartbeat"
    return hb.message


def _reject(c: core.ProducerCore, hb: ipc.ProducerToService, now: int) -> list[core.Output]:
    err = ipc.ServiceToProducer(request_id=hb.request_id, error={"message": "who are you?"})
    return c.handle(err, now)


def test_heartbeats_and_liveness():
    c = core.ProducerCore("p")
    _handshake(c)
    _heartbeat(c, core.HEARTBEAT_INTERVAL_NS)
    assert c.tick(core.HEARTBEAT_INTERVAL_NS + 1) == []
    hb = _heartbeat(c, 100 * SEC)  # a service that ignores heartbeats is not declared dead
    # A service that answers: from now on its silence means it is gone.
    c.handle(ipc.ServiceToProducer(request_id=hb.request_id, heartbeat={}), 200 * SEC)
    out = c.tick(200 * SEC + core.LIVENESS_TIMEOUT_NS)
    assert [type(o) for o in out] == [core.Reconnect] and c.state is core.State.IDLE


def test_a_restarted_service_that_no_longer_knows_us_means_reconnecting():
    c = core.ProducerCore("p")
    _handshake(c)
    _heartbeat(c, 1 * SEC)
    hb = _heartbeat(c, 2 * SEC)  # the service took the first one: it knew us
    (out,) = _reject(c, hb, 2 * SEC)
    assert isinstance(out, core.Reconnect) and "no longer knows us" in out.reason
    _handshake(c, 3 * SEC)  # the new service
    assert _heartbeat(c, 4 * SEC).request_id > 0


def test_a_service_that_rejects_heartbeats_gets_no_more():
    c = core.ProducerCore("p")
    _handshake(c)
    (out,) = _reject(c, _heartbeat(c, SEC), SEC)
    assert isinstance(out, core.Reconnect)  # could be a restart: try once more
    _handshake(c, 2 * SEC)
    (out,) = _reject(c, _heartbeat(c, 3 * SEC), 3 * SEC)
    assert isinstance(out, core.Log) and c.state is core.State.CONNECTED
    assert c.tick(100 * SEC) == []


def test_service_heartbeat_is_answered_and_errors_are_logged():
    rig = Rig([SyntheticDataSource])
    rig.connect()
    out = rig.core.handle(ipc.ServiceToProducer(request_id=99, heartbeat={}), 0)
    assert out[0].message.request_id == 99 and out[0].message.WhichOneof("msg") == "heartbeat"
    out = rig.core.handle(ipc.ServiceToProducer(request_id=3, error={"message": "nope"}), 0)
    assert [type(o) for o in out] == [core.Log] and "nope" in out[0].text


SERVICE_TO_PRODUCER = ipc.ServiceToProducer.DESCRIPTOR.oneofs_by_name["msg"].fields
# A message from a newer service: only field 99, which this protocol does not know.
FROM_THE_FUTURE = b"\x08\x05" + b"\x9a\x06\x00"


@pytest.mark.parametrize("kind", [f.name for f in SERVICE_TO_PRODUCER])
def test_every_kind_the_service_sends_is_handled_or_marked_not_supported(kind):
    c = core.ProducerCore("p")
    _handshake(c)
    msg = ipc.ServiceToProducer(request_id=5)
    getattr(msg, kind).SetInParent()
    c.handle(msg, 0)
    if kind in core.NOT_SUPPORTED:
        assert kind not in c.handled_kinds and c.unhandled == {kind: 1}
    else:
        assert kind in c.handled_kinds and c.unhandled == {}


def test_a_kind_without_handler_is_logged_once_and_counted():
    c = core.ProducerCore("p")
    _handshake(c)
    msg = ipc.ServiceToProducer.FromString(FROM_THE_FUTURE)
    assert msg.WhichOneof("msg") is None
    (log,) = c.handle(msg, 0)
    assert isinstance(log, core.Log) and log.level == core.WARNING and "ignoring" in log.text
    assert c.handle(msg, 0) == [] and c.handle(msg, 0) == []
    assert c.unhandled == {"(unknown kind)": 3} and c.state is core.State.CONNECTED


def test_commands_before_the_handshake_are_ignored():
    rig = Rig([SyntheticDataSource])
    rig.host.connect(0)
    rig.push(setup_data_source=ipc.SetupDataSource(instance_id=1, data_source_config=b""))
    assert rig.host._instances == {} and rig.kinds() == ["initialize_connection"]


# -- the SMB and instances ---------------------------------------------------------------------


def test_smb_geometry_is_checked():
    rig = Rig([SyntheticDataSource])
    rig.connect()
    rig.push(
        setup_tracing=ipc.SetupTracing(
            shm_size_bytes=5000,
            shm_page_size_bytes=4096,
            shm_socket=SMB_SOCKET,
            shm_token=SMB_TOKEN,
        )
    )
    assert "geometry" in rig.of("smb_mapped")[-1].error and rig.host.arbiter is None


def test_unknown_data_source_and_stop_of_unknown_instance():
    rig = Rig([SyntheticDataSource])
    rig.connect()
    rig.setup_tracing()
    n = len(rig.sent)
    rig.push(
        setup_data_source=ipc.SetupDataSource(instance_id=5, data_source_config=ds_config("nope"))
    )
    assert rig.host._instances == {} and len(rig.sent) == n
    rig.push(stop_data_source=ipc.StopDataSource(instance_id=5))
    assert rig.of("data_source_stopped")[-1].instance_id == 5


def test_start_without_setup_sets_up_first():
    rig = Rig([LoopWriter])
    rig.connect()
    rig.setup_tracing()
    cfg = ds_config(LoopWriter.name, message_count=3)
    rig.push(start_data_source=ipc.StartDataSource(instance_id=4, data_source_config=cfg))
    ds = rig.host._instances[4].ds
    assert isinstance(ds, LoopWriter) and ds.config.for_testing.message_count == 3
    assert rig.kinds(2)[:2] == ["smb_mapped", "register_trace_writer"]
    assert rig.kinds()[-1] == "data_source_started"


def test_writers_registered_before_commits_and_stop_acks_after_them():
    rig = Rig([LoopWriter])
    rig.connect()
    rig.setup_tracing()
    start = len(rig.sent)
    rig.start(9, ds_config(LoopWriter.name, target_buffer=3, message_count=50))
    assert rig.kinds(start) == ["register_trace_writer", "data_source_started"]
    reg = rig.sent[start].register_trace_writer
    assert reg.target_buffer == 3 and reg.writer_id >= 1
    n = len(rig.sent)
    rig.push(stop_data_source=ipc.StopDataSource(instance_id=9))
    assert rig.kinds(n) == ["commit_data", "data_source_stopped"]
    assert rig.sent[-1].data_source_stopped.instance_id == 9
    rig.process()
    packets, _ = rig.oracle.packets(reg.writer_id)
    assert len(packets) == 50
    assert rig.host._instances == {}
    with pytest.raises(RuntimeError, match="stopped"):
        rig.host.create_writer(_stopped_instance(rig))


def _stopped_instance(rig: Rig) -> InstanceRecord:
    cfg = pb.DataSourceConfig(name=LoopWriter.name)
    rec = InstanceRecord(rig.host, LoopWriter(), 99, cfg)
    rec.stopped = True
    return rec


def test_flush_ack_carries_the_id_even_with_nothing_pending():
    rig = Rig([LoopWriter])
    rig.connect()
    n = len(rig.sent)
    rig.push(flush=ipc.FlushRequest(flush_request_id=77, instance_ids=[1, 2]))
    assert rig.kinds(n) == ["commit_data"]
    ack = rig.sent[-1].commit_data
    assert ack.flush_request_id == 77 and not ack.chunks_to_move and not ack.writer_stats


def test_flush_commits_the_loop_threads_writers_then_acks():
    LoopWriter.calls.clear()
    rig = Rig([LoopWriter])
    rig.connect()
    rig.setup_tracing()
    rig.start(1, ds_config(LoopWriter.name, message_count=5))
    n = len(rig.sent)
    rig.push(flush=ipc.FlushRequest(flush_request_id=8, instance_ids=[1]))
    assert LoopWriter.calls == ["flush 1"]
    commits = rig.of("commit_data")
    assert rig.kinds(n) == ["commit_data", "commit_data"]
    assert commits[-2].chunks_to_move and commits[-1].flush_request_id == 8
    rig.push(clear_incremental_state=ipc.ClearIncrementalState(instance_ids=[1, 2]))
    assert LoopWriter.calls == ["flush 1", "clear 1"]


def test_clear_incremental_state_reaches_only_known_instances():
    c = core.ProducerCore("p", [LoopWriter.descriptor()])
    c.connect(0)
    c.handle(ipc.ServiceToProducer(request_id=1, initialize_connection={}), 0)
    out = c.handle(ipc.ServiceToProducer(clear_incremental_state={"instance_ids": [4]}), 0)
    assert out == [core.ClearIncrementalState(())]


# -- the synthetic data source -------------------------------------------------------------------


def parse(packets: list[bytes]) -> list[pb.TracePacket]:
    out = []
    for data in packets:
        p = pb.TracePacket()
        p.ParseFromString(data)
        out.append(p)
    return out


def test_seq_values_are_minstd_rand0():
    assert seq_values(1, 3) == [16807, 282475249, 1622650073]  # std::minstd_rand0's sequence
    assert seq_values(0, 2) == seq_values(1, 2)
    assert synthetic_str(7, 12, 10) == b"7:12:....." and synthetic_str(7, 12, 3) == b"7:1"


@pytest.mark.parametrize("size", [0, 10, 300, 5000])
def test_synthetic_packets_match_the_documented_formula(size):
    rig = Rig([SyntheticDataSource], policy=BufferExhaustedPolicy.STALL)
    rig.connect()
    rig.setup_tracing()
    n, seed = 300, 1234
    ds = rig.start(
        3, ds_config("tracebus.synthetic", 2, message_count=n, message_size=size, seed=seed)
    )
    rig.finish(ds)
    (wid,) = rig.registered
    assert rig.registered[wid] == 2
    packets, aborted = rig.oracle.packets(wid)
    assert aborted == 0
    events = [p.for_testing for p in parse(packets)]
    assert [e.counter for e in events] == list(range(1, n + 1))
    assert [e.seq_value for e in events] == seq_values(seed, n)
    assert [e.str.encode() for e in events] == [
        synthetic_str(seed, i, size) for i in range(1, n + 1)
    ]
    assert [e.is_last for e in events] == [False] * (n - 1) + [True]
    assert parse(packets)[0].first_packet_on_sequence


def test_synthetic_under_other_names_and_rate_limit():
    other = synthetic_named("my.synth")
    assert other.name == "my.synth" and issubclass(other, SyntheticDataSource)
    assert synthetic_named("tracebus.synthetic") is SyntheticDataSource
    rig = Rig([other])
    rig.connect()
    rig.setup_tracing()
    t0 = time.monotonic()
    ds = rig.start(1, ds_config("my.synth", message_count=20, max_messages_per_second=400))
    rig.finish(ds)
    assert time.monotonic() - t0 >= 19 / 400
    (wid,) = rig.registered
    assert len(rig.oracle.packets(wid)[0]) == 20


def test_commits_are_batched():
    rig = Rig([SyntheticDataSource], policy=BufferExhaustedPolicy.STALL)
    rig.connect()
    rig.setup_tracing()
    n = 20_000
    ds = rig.start(1, ds_config("tracebus.synthetic", message_count=n, message_size=8))
    rig.finish(ds)
    (wid,) = rig.registered
    assert len(rig.oracle.packets(wid)[0]) == n
    commits = rig.of("commit_data")
    assert len(commits) < n / 200, f"{len(commits)} commit_data messages for {n} packets"


def test_stop_ends_the_synthetic_sequence_early():
    rig = Rig([SyntheticDataSource])
    rig.connect()
    rig.setup_tracing()
    ds = rig.start(
        1, ds_config("tracebus.synthetic", message_count=10**6, max_messages_per_second=1000)
    )
    rig.pump(lambda: rig.registered)
    rig.push(stop_data_source=ipc.StopDataSource(instance_id=1))
    assert not ds._thread.is_alive()
    rig.process()
    (wid,) = rig.registered
    packets, _ = rig.oracle.packets(wid)
    counters = [p.for_testing.counter for p in parse(packets)]
    assert counters == list(range(1, len(counters) + 1)) and len(counters) < 10**6


def test_a_closed_writers_drops_reach_the_service_before_its_id_is_registered_again():
    """Writer ids are reused: the service restarts a writer's drop count when the
    id is registered, so a closed writer's last count must arrive first."""
    rig = Rig([SyntheticDataSource])
    rig.connect()
    rig.setup_tracing()
    arbiter = rig.host.arbiter
    assert arbiter is not None
    old = arbiter.create_trace_writer(1, BufferExhaustedPolicy.DROP)
    old.dropped_packets = 5  # what it dropped before it was closed, not yet reported
    rig.host._retired.append(old)
    reuse = TraceWriter(arbiter, old.writer_id, 1, BufferExhaustedPolicy.DROP)
    start = len(rig.sent)
    rig.host._post(reuse)  # on the loop thread: delivered at once
    kinds = rig.kinds(start)
    stats_at = next(
        i
        for i, m in enumerate(rig.sent[start:])
        if m.WhichOneof("msg") == "commit_data"
        and [(s.writer_id, s.dropped_packets) for s in m.commit_data.writer_stats]
        == [(old.writer_id, 5)]
    )
    assert stats_at < kinds.index("register_trace_writer")


def test_writer_stats_report_the_drops_of_a_tiny_smb():
    rig = Rig([SyntheticDataSource], smb=4096, page=4096)  # one page: one chunk
    rig.connect()
    rig.setup_tracing()
    rig.hold = True  # the service moves nothing until the writer is done
    n = 2000
    ds = rig.start(1, ds_config("tracebus.synthetic", message_count=n, message_size=20))
    rig.finish(ds)
    (w,) = [w for _, w in rig.host._instances[1].writers()]
    stats = [s for c in rig.of("commit_data") for s in c.writer_stats]
    assert stats, "drops must be reported"
    assert all(s.writer_id == w.writer_id and s.target_buffer == 1 for s in stats)
    counts = [s.dropped_packets for s in stats]
    assert counts == sorted(counts) and counts[-1] == w.dropped_packets > 0
    assert stats[-1].dropped_bytes == w.dropped_bytes > 0
    rig.release()
    packets, _ = rig.oracle.packets(w.writer_id)
    assert len(packets) + w.dropped_packets == n
    # Reported once: a later commit repeats no unchanged counts.
    n = len(rig.sent)
    rig.host.tick(0)
    assert not [m for m in rig.sent[n:] if m.WhichOneof("msg") == "commit_data"]


# -- track_event ------------------------------------------------------------------------------


def test_track_event_timeline_parses_with_the_official_schema():
    rig = Rig([DemoTimelineDataSource])
    rig.connect()
    rig.setup_tracing()
    config = ds_config("tracebus.demo_timeline", message_count=5, max_messages_per_second=1000)
    ds = rig.start(1, config)
    rig.finish(ds)
    (wid,) = rig.registered
    packets = parse(rig.oracle.packets(wid)[0])
    descriptors = [p for p in packets if p.HasField("track_descriptor")]
    assert len(descriptors) == 3
    proc, thread, counter = (d.track_descriptor for d in descriptors)
    assert packets[0].sequence_flags == pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    assert proc.process.pid == os.getpid() and proc.process.process_name == "p1"
    assert (
        thread.thread.pid == os.getpid() and thread.thread.tid and thread.parent_uuid == proc.uuid
    )
    assert counter.HasField("counter") and counter.parent_uuid == proc.uuid
    stamps = [p.timestamp for p in packets]
    assert stamps == sorted(stamps) and stamps[0] > 0
    imported = import_track_events(packets)  # interned names resolved
    (events,) = imported.events.values()
    assert all(e.outcome is Outcome.RESOLVED for e in events)
    depth, deepest, counters = 0, 0, 0
    for e in events:
        if e.type == pb.TrackEvent.TYPE_SLICE_BEGIN:
            assert e.track_uuid == thread.uuid and e.name in SLICES
            depth += 1
            deepest = max(deepest, depth)
        elif e.type == pb.TrackEvent.TYPE_SLICE_END:
            depth -= 1
            assert depth >= 0
        else:
            assert e.type == pb.TrackEvent.TYPE_COUNTER and e.track_uuid == counter.uuid
            counters += 1
    assert depth == 0 and deepest == 3 and counters == 5
    frames = [e for e in events if e.name == "frame"]
    assert [(f.categories, f.args) for f in frames] == [
        (("demo",), {"frame": n}) for n in range(1, 6)
    ]


# -- the SDK ------------------------------------------------------------------------------------


def test_data_sources_in_a_module_and_registration(tmp_path, monkeypatch):
    (tmp_path / "user_sources.py").write_text(
        "from actors.producer import DataSource\n"
        "from actors.data_sources import SyntheticDataSource  # imported, not defined here\n"
        "class Base(DataSource):\n    pass\n"
        "class A(DataSource):\n    name = 'user.a'\n"
        "class B(Base):\n    name = 'user.b'\n    will_notify_on_stop = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        found = data_sources_in("user_sources")
    finally:
        sys.modules.pop("user_sources", None)
    assert [c.name for c in found] == ["user.a", "user.b"]
    assert found[1].descriptor().will_notify_on_stop
    p = Producer("x")
    for cls in found:
        p.register(cls)
    with pytest.raises(ValueError, match="two data sources"):
        p.register(type("Other", (DataSource,), {"name": "user.a"}))
    with pytest.raises(ValueError, match="no name"):
        p.register(DataSource)


def test_endpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv(endpoints.PRODUCER_ENV, raising=False)
    assert endpoints.default_producer_endpoint() == f"ipc://{tmp_path}/tracebus/producer.sock"
    assert stat.S_IMODE((tmp_path / "tracebus").stat().st_mode) == 0o700
    monkeypatch.setenv(endpoints.PRODUCER_ENV, "ipc:///x/p.sock")
    monkeypatch.setenv(endpoints.CONSUMER_ENV, "ipc:///x/c.sock")
    assert endpoints.default_producer_endpoint() == "ipc:///x/p.sock"
    assert endpoints.default_consumer_endpoint() == "ipc:///x/c.sock"
    os.chmod(tmp_path / "tracebus", 0o755)
    assert endpoints.runtime_dir() == tmp_path / "tracebus"
    assert stat.S_IMODE((tmp_path / "tracebus").stat().st_mode) == 0o700


def test_a_flush_reaches_the_writing_thread_while_it_waits():
    rig = Rig([SyntheticDataSource])
    rig.connect()
    rig.setup_tracing()
    ds = rig.start(
        1, ds_config("tracebus.synthetic", message_count=1000, max_messages_per_second=5)
    )
    rig.pump(lambda: rig.registered)  # the first packet is written at once, the next in 200 ms
    rig.push(flush=ipc.FlushRequest(flush_request_id=3, instance_ids=[1]))
    # The ack waits for the writing thread's flush, and follows its chunk.
    rig.pump(lambda: any(c.flush_request_id == 3 for c in rig.of("commit_data")), timeout=5)
    commits = rig.of("commit_data")
    acked = next(i for i, c in enumerate(commits) if c.flush_request_id == 3)
    assert any(c.chunks_to_move for c in commits[:acked])
    (wid,) = rig.registered
    assert [p.for_testing.counter for p in parse(rig.oracle.packets(wid)[0])] == [1]
    rig.push(stop_data_source=ipc.StopDataSource(instance_id=1))
    assert not ds._thread.is_alive()
