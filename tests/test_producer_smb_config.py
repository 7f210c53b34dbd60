"""A config's `producers { producer_name shm_size_kb page_size_kb }` sizes the SMB of
the producer of that name when it is created (traced's SetupDataSource): within
shm.abi's geometry rules and the SMB limits, an entry that cannot be honoured
named beside the ignored fields, never a crash nor a producer left without data."""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.limits import DEFAULT_LIMITS, Limits
from actors.core.service_core import Clocks, Peer, ServiceCore
from protos import tracebus_ipc_pb2 as ipc
from tests.test_service_core import SERVICE_PID, SERVICE_UID, FakeConsumer, FakeProducer, Rig

KIB = 1024
HINT = 64 * KIB  # FakeProducer's shm_size_hint_bytes


def rig_with(limits: Limits = DEFAULT_LIMITS) -> Rig:
    rig = Rig()
    clocks = Clocks(lambda: [(6, rig.now)], lambda: rig.now)
    rig.core = ServiceCore(rig._factory, clocks, SERVICE_UID, SERVICE_PID, limits)
    return rig


def config(*entries: dict) -> bytes:
    cfg = pb.TraceConfig()
    cfg.buffers.add(size_kb=64)
    cfg.data_sources.add().config.name = "tracebus.synthetic"
    for entry in entries:
        cfg.producers.add(**entry)
    return cfg.SerializeToString()


def enable(consumer: FakeConsumer, data: bytes) -> ipc.EnableTracingResponse:
    consumer.send(enable_tracing=ipc.EnableTracingRequest(trace_config=data))
    (reply,) = consumer.replies()
    assert reply.enable_tracing.error == ""
    return reply.enable_tracing


def smb_of(rig: Rig, producer: FakeProducer) -> tuple[int, int]:
    setups = [m.setup_tracing for m in rig.take(producer.peer) if m.HasField("setup_tracing")]
    (setup,) = setups
    return setup.shm_size_bytes, setup.shm_page_size_bytes


def test_the_entry_of_a_producers_name_sizes_its_smb_and_no_other():
    rig = rig_with()
    named, other = FakeProducer(rig, "named", pid=10), FakeProducer(rig, "other", pid=11)
    entry = {"producer_name": "named", "shm_size_kb": 1024, "page_size_kb": 16}
    reply = enable(FakeConsumer(rig, "c"), config(entry))
    assert reply.started and list(reply.unsupported_fields) == []
    assert smb_of(rig, named) == (1024 * KIB, 16 * KIB)
    assert smb_of(rig, other) == (HINT, 4 * KIB)


def test_a_field_the_entry_leaves_unset_comes_from_the_producers_hint():
    rig = rig_with()
    producer = FakeProducer(rig, "named", pid=10)
    enable(FakeConsumer(rig, "c"), config({"producer_name": "named", "page_size_kb": 16}))
    assert smb_of(rig, producer) == (HINT, 16 * KIB)


def test_an_invalid_entry_is_named_and_the_producer_gets_the_defaults_as_traced_gives():
    rig = rig_with()
    producer = FakeProducer(rig, "named", pid=10)
    reply = enable(FakeConsumer(rig, "c"), config({"producer_name": "named", "page_size_kb": 3}))
    assert list(reply.unsupported_fields) == [
        "producers[0] (not a valid SMB: its producer gets 256 KiB in pages of 4 KiB)"
    ]
    assert smb_of(rig, producer) == (256 * KIB, 4 * KIB)


def test_an_entry_past_the_smb_limit_falls_back_to_the_producers_own_size():
    rig = rig_with(Limits(max_smb_bytes_per_process=512 * KIB))
    producer = FakeProducer(rig, "named", pid=10)
    reply = enable(FakeConsumer(rig, "c"), config({"producer_name": "named", "shm_size_kb": 1024}))
    assert reply.started
    assert list(reply.unsupported_fields) == [
        "producers[0] (producer 'named': 1024 KiB in pages of 4 KiB would pass "
        "max_smb_bytes_per_process; 64 KiB in pages of 4 KiB used)"
    ]
    assert smb_of(rig, producer) == (HINT, 4 * KIB)
    assert rig.core.counters.refusals == {}  # the producer was not refused an SMB


def test_a_producer_keeps_the_smb_it_has_and_the_second_session_is_told():
    rig = rig_with()
    producer = FakeProducer(rig, "named", pid=10)
    enable(FakeConsumer(rig, "first"), config())
    assert smb_of(rig, producer) == (HINT, 4 * KIB)
    entry = {"producer_name": "named", "shm_size_kb": 1024}
    reply = enable(FakeConsumer(rig, "second"), config(entry))
    assert reply.started
    assert list(reply.unsupported_fields) == [
        "producers[0] (producer 'named' already has an SMB of 64 KiB in pages of 4 KiB)"
    ]
    kinds = [m.WhichOneof("msg") for m in rig.take(producer.peer)]
    assert "setup_tracing" not in kinds and "setup_data_source" in kinds


def test_a_producer_connecting_later_is_sized_by_the_running_sessions_entry():
    rig = rig_with()
    enable(FakeConsumer(rig, "c"), config({"producer_name": "late", "shm_size_kb": 512}))
    peer = Peer(b"p-late", 12, 1000)
    hello = ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION)
    init = ipc.InitializeConnectionRequest(hello=hello, producer_name="late")
    rig.producer(peer, 1, initialize_connection=init)
    desc = ipc.DataSourceDescriptor(name="tracebus.synthetic")
    rig.producer(peer, 2, register_data_source=ipc.RegisterDataSourceRequest(descriptor=desc))
    (setup,) = [m.setup_tracing for m in rig.take(peer) if m.HasField("setup_tracing")]
    assert (setup.shm_size_bytes, setup.shm_page_size_bytes) == (512 * KIB, 4 * KIB)
