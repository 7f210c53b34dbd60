"""`python -m actors.producer` as a real process, against a fake service: a ROUTER
socket in this test that speaks the producer port, hands over a real sealed
memfd (by fd passing, on the service's own handoff code: actors/smb_handoff.py),
and moves committed chunks out of it.

The fake binds the process harness's producer endpoint (tests/processes.py,
fixture `rt`), which starts the producers, reads their stderr as lines, reaps
them, and fails the test if a process, a /dev/shm entry or an SMB memfd of this
process is left behind."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.data_sources import seq_values, synthetic_str
from actors.loop import Loop
from actors.smb_handoff import SmbHandoff
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import Geometry, SharedMemoryABI
from shm.region import MemfdRegion
from tests.processes import Proc, Runtime
from tests.smb_oracle import Oracle
from tests.test_producer_core import ds_config, to_batch

SMB_SIZE = 256 * 1024
PAGE = 4096


class FakeService:
    """A ROUTER on the runtime's producer endpoint, and the producer process it serves."""

    def __init__(self, rt: Runtime, bind: bool = True) -> None:
        self.rt = rt
        self.endpoint = rt.producer_endpoint
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if bind:
            self.bind()
        self._proc: Proc | None = None
        self.peer = b""
        self._handoffs: list[threading.Thread] = []

    def bind(self) -> None:
        self.router.bind(self.endpoint)

    def spawn(self, *args: str) -> Proc:
        """Start `actors.producer ARGS` on this endpoint through the harness; its stderr
        is read as lines (wait_line) and copied to its log."""
        argv = ["-m", "actors.producer", "--producer-endpoint", self.endpoint, *args]
        self._proc = self.rt.spawn("producer", argv, stderr="lines")
        return self._proc

    @property
    def proc(self) -> Proc:
        assert self._proc is not None, "spawn() first"
        return self._proc

    def wait_line(self, text: str, timeout: float = 10.0) -> str:
        """The next stderr line of the producer that contains `text`."""
        return self.rt.wait_line(self.proc, contains=text, timeout=timeout)

    def recv(self, timeout: float = 10.0) -> ipc.ProducerToService:
        assert self.router.poll(int(timeout * 1000)), "no message from the producer"
        self.peer, rest = framing.split_identity(self.router.recv_multipart())
        return framing.decode_from_producer(rest)

    def recv_kind(self, kind: str, timeout: float = 10.0) -> ipc.ProducerToService:
        msg = self.recv(timeout)
        assert msg.WhichOneof("msg") == kind, msg
        return msg

    def send(self, request_id: int = 0, **msg) -> None:
        env = ipc.ServiceToProducer(request_id=request_id, **msg)
        self.router.send_multipart(framing.encode_routed(self.peer, env))

    def handshake(self, name: str) -> ipc.InitializeConnectionRequest:
        init = self.recv_kind("initialize_connection")
        hello = ipc.HelloReply(protocol_version=ipc.PROTOCOL_VERSION)
        self.send(init.request_id, initialize_connection={"hello": hello, "producer_id": 1})
        names = []
        for _ in range(2):  # the two built-in data sources
            reg = self.recv_kind("register_data_source")
            names.append(reg.register_data_source.descriptor.name)
            self.send(reg.request_id, register_data_source={})
        assert names == ["tracebus.synthetic", "tracebus.demo_timeline"]
        return init.initialize_connection

    def setup_tracing(self, region: MemfdRegion, page: int) -> None:
        """Offer `region` to the producer's process on a real handoff socket (served
        by a thread until one claim), then send setup_tracing naming it."""
        loop = Loop()
        path = Path(self.rt.dir) / "p.smb"
        handoff = SmbHandoff(loop, path, lambda _text: None, others_may_connect=False)
        assert region.fd is not None
        token = handoff.offer(region.fd, self.proc.pid, os.getuid())
        c = handoff.counters

        def serve() -> None:
            try:
                loop.run(until=lambda: c.handed + c.refused + c.dropped > 0, timeout=30)
            finally:
                handoff.close()
                loop.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        self._handoffs.append(thread)
        setup = {"shm_size_bytes": region.size, "shm_page_size_bytes": page,
                 "shm_socket": str(path), "shm_token": token}  # fmt: skip
        self.send(setup_tracing=setup)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=10)

    def close(self) -> None:
        """Close the socket; the runtime stops and reaps the producer."""
        self.router.close(linger=0)
        self.ctx.term()
        for thread in self._handoffs:
            thread.join(timeout=35)


@pytest.fixture
def service(rt: Runtime) -> Iterator[FakeService]:
    svc = FakeService(rt)
    try:
        yield svc
    finally:
        svc.close()


def test_producer_writes_a_synthetic_session_and_exits_on_sigterm(
    rt: Runtime, service: FakeService
) -> None:
    region = MemfdRegion.create(SMB_SIZE)
    try:
        service.spawn("--name", "shelltest")
        init = service.handshake("shelltest")
        assert init.producer_name == "shelltest" and init.claimed_pid == service.proc.pid
        service.setup_tracing(region, PAGE)
        assert service.recv_kind("smb_mapped").smb_mapped.error == ""

        n, seed, size = 100, 42, 24
        cfg = ds_config("tracebus.synthetic", 1, message_count=n, message_size=size, seed=seed)
        service.send(setup_data_source={"instance_id": 1, "data_source_config": cfg})
        service.send(start_data_source={"instance_id": 1, "data_source_config": cfg})

        oracle = Oracle(SharedMemoryABI(region.buf, Geometry(SMB_SIZE, PAGE)))
        reg = service.recv_kind("register_trace_writer").register_trace_writer
        assert reg.target_buffer == 1
        packets: list[bytes] = []
        while len(packets) < n:
            commit = service.recv_kind("commit_data").commit_data
            oracle.on_commit(to_batch(commit))
            assert {c.writer_id for c in oracle.chunks} == {reg.writer_id}
            packets, _ = oracle.packets(reg.writer_id)
        events = []
        for data in packets:
            p = pb.TracePacket()
            p.ParseFromString(data)
            events.append(p.for_testing)
        assert [e.counter for e in events] == list(range(1, n + 1))
        assert [e.seq_value for e in events] == seq_values(seed, n)
        assert [e.str.encode() for e in events] == [
            synthetic_str(seed, i, size) for i in range(1, n + 1)
        ]
        assert events[-1].is_last and not any(e.is_last for e in events[:-1])

        service.send(flush={"flush_request_id": 5, "instance_ids": [1]})
        while service.recv().commit_data.flush_request_id != 5:
            pass

        assert service.stop(signal.SIGTERM) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(service.proc.pid, 0)
        assert service.wait_line("stopping").startswith("shelltest: ")
    finally:
        region.close()
    assert rt.new_dev_shm_entries() == set()  # the SMB is a memfd: it has no name
    assert rt.new_smb_memfds() == set()


def test_version_mismatch_exits_with_an_error(service: FakeService) -> None:
    service.spawn("--name", "old")
    init = service.recv_kind("initialize_connection")
    refusal = ipc.HelloReply(protocol_version=2, error="protocol version 1 is not supported")
    service.send(init.request_id, initialize_connection={"hello": refusal})
    assert service.proc.wait(timeout=10) == 1
    line = service.wait_line("refused")
    assert line.startswith("old: ") and "protocol version" in line


def test_producer_retries_until_the_service_appears(rt: Runtime) -> None:
    service = FakeService(rt, bind=False)
    try:
        service.spawn("--name", "early", "--data-source", "extra.synth")
        service.wait_line("retrying")  # no reply to initialize_connection: a new attempt
        service.bind()
        init = service.recv_kind("initialize_connection")
        service.send(init.request_id, initialize_connection={"producer_id": 3})
        names = [service.recv_kind("register_data_source") for _ in range(3)]
        descriptors = [m.register_data_source.descriptor.name for m in names]
        assert descriptors == ["tracebus.synthetic", "tracebus.demo_timeline", "extra.synth"]
        assert service.stop(signal.SIGINT) == 0
    finally:
        service.close()


def test_sigterm_ends_a_producer_stalled_on_a_full_smb(service: FakeService) -> None:
    # Two one-chunk pages, and the service never frees what the producer commits: the
    # writer splits a packet into the second chunk, then stalls for a third.
    region = MemfdRegion.create(2 * PAGE)
    try:
        service.spawn("--name", "stalled", "--policy", "stall")
        service.handshake("stalled")
        service.setup_tracing(region, PAGE)
        assert service.recv_kind("smb_mapped").smb_mapped.error == ""
        cfg = ds_config("tracebus.synthetic", 1, message_count=10**6, message_size=100)
        service.send(start_data_source={"instance_id": 1, "data_source_config": cfg})
        service.recv_kind("register_trace_writer")
        service.recv_kind("commit_data")  # the first chunk: from now on the writer stalls
        t0 = time.monotonic()
        assert service.stop(signal.SIGTERM) == 0
        assert time.monotonic() - t0 < 5
    finally:
        region.close()


def test_module_data_sources_are_hosted(rt: Runtime, service: FakeService) -> None:
    rt.write_module(
        "user_ds_mod",
        "from actors.producer import DataSource\n"
        "class Mine(DataSource):\n"
        "    name = 'user.mine'\n"
        "    will_notify_on_start = True\n",
    )
    service.spawn("--name", "mod", "--module", "user_ds_mod")
    init = service.recv_kind("initialize_connection")
    service.send(init.request_id, initialize_connection={"producer_id": 2})
    regs = [service.recv_kind("register_data_source").register_data_source for _ in range(3)]
    names = [r.descriptor.name for r in regs]
    assert names == ["tracebus.synthetic", "tracebus.demo_timeline", "user.mine"]
    assert regs[2].descriptor.will_notify_on_start
    assert service.stop(signal.SIGTERM) == 0
