"""Faults and hostile producers against the real processes: `python -m actors.service`,
`python -m actors.producer` (built-in and `--module` data sources), a raw ZeroMQ
producer that speaks the protocol itself (hostile), and the Consumer API here.

- test_hostile_producers_get_nothing_through: a data source that forges the
  service's reserved TracePacket fields, and a raw client that lies about its
  pid/uid in its handshake and commits, patches and leaves chunks behind for a
  buffer of a session it is not part of (plus bogus pages, chunks, writer ids).
- test_sigkilled_producer_is_noticed_and_its_smb_released: SIGKILL mid-session.
- test_service_exits_cleanly_on_signal: SIGTERM / SIGINT.

Every process runs through the process harness (tests/processes.py, fixture
`rt`): a short runtime dir under /tmp (ipc:// paths must fit in sun_path);
readiness is a handshake or a polled query with a deadline, never a sleep;
every process and the dir are cleaned up whatever happens, and a leftover
process or SMB fails the test.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from google.protobuf import text_format
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.consumer import Consumer
from actors.core.consumer_core import SessionError
from actors.data_sources import seq_values, synthetic_str
from tests.processes import Runtime, children_of, smb_inodes_mapped, smb_inodes_open
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

NOTICE_S = 1.0  # a dead producer must be noticed (and its SMB released) within this


# -- reading traces ---------------------------------------------------------------------------


def session_config(*data_sources: str, buffers_kb: tuple[int, ...] = (2048,)) -> pb.TraceConfig:
    config = pb.TraceConfig()
    for size in buffers_kb:
        config.buffers.add(size_kb=size)
    for text in data_sources:
        text_format.Parse(text, config.data_sources.add())
    config.flush_timeout_ms = 5000
    config.data_source_stop_timeout_ms = 5000
    return config


def synthetic_source(producer: str, count: int, seed: int, size: int, rate: int = 0, buf=0):
    return (
        f'producer_name_filter: "{producer}" '
        f'config {{ name: "tracebus.synthetic" target_buffer: {buf} '
        f"for_testing {{ message_count: {count} seed: {seed} message_size: {size} "
        f"max_messages_per_second: {rate} }} }}"
    )


def finish_session(c: Consumer) -> list[pb.TracePacket]:
    assert c.flush(timeout=5), "the final flush did not complete"
    c.disable(timeout=10)
    packets = list(c.read_packets(timeout=10))
    return packets


def by_pid(packets: list[pb.TracePacket], pid: int) -> list[pb.TracePacket]:
    return [p for p in packets if p.trusted_pid == pid]


def assert_synthetic(packets: list[pb.TracePacket], count: int, seed: int, size: int) -> None:
    """Exactly the synthetic source's packets 1..count, in order, on one sequence."""
    assert len({p.trusted_packet_sequence_id for p in packets}) == 1
    events = [p.for_testing for p in packets]
    assert [e.counter for e in events] == list(range(1, count + 1))
    assert [e.seq_value for e in events] == seq_values(seed, count)
    assert [e.str.encode() for e in events] == [
        synthetic_str(seed, i, size) for i in range(1, count + 1)
    ]
    assert events[-1].is_last


def trace_stats_of(packets: list[pb.TracePacket]) -> pb.TraceStats:
    stats = [p for p in packets if p.HasField("trace_stats")]
    assert len(stats) == 1, f"{len(stats)} trace_stats packets"
    return stats[0].trace_stats


# -- 1. hostile producers -------------------------------------------------------------------

# Each forged packet sets a TracePacket field only the service may write; the
# read-back must drop it and count it in trace_stats.invalid_packets.
FORGED = {
    "uid": "p.trusted_uid = 4242",
    "pid": "p.trusted_pid = 1",
    "seq": "p.trusted_packet_sequence_id = 1",
    "config": "p.trace_config.buffers.add(size_kb=1)",
    "stats": "p.trace_stats.producers_connected = 99",
    "sync": "p.synchronization_marker = b'\\x82' * 16",
    "compressed": "p.compressed_packets = b'\\x0a\\x00'",
    "event": "p.service_event.tracing_started = True",
    "machine": "p.machine_id = 7",
    "provenance": "p.trace_provenance.SetInParent()",
    "protovms": "p.protovms.SetInParent()",
    "zstd": "p.zstd_compressed_packets = b'x'",
}
FORGER_OK = 30  # honest packets the forger writes around its forgeries

FORGER_MODULE = '''
"""A data source that forges the service's trusted TracePacket fields."""
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from actors.producer import DataSource

FORGED = {forged!r}
N_OK = {n_ok}


def ok(i):
    p = pb.TracePacket()
    p.for_testing.str = "forger-ok"
    p.for_testing.counter = i
    return p.SerializeToString()


def forged():
    out = []
    for name, statement in FORGED.items():
        p = pb.TracePacket()
        p.for_testing.str = "FORGED-" + name
        exec(statement, {{"p": p}})
        out.append(p.SerializeToString())
    # Reserved fields after the payload, as if the trailer were the producer's.
    p = pb.TracePacket()
    p.for_testing.str = "FORGED-trailer"
    out.append(p.SerializeToString() + b"\\x18\\x00" + b"\\x50\\x01" + b"\\xf8\\x04\\x01")
    return out


class Forger(DataSource):
    name = "forge.ds"

    def on_start(self, config):
        w = self.writer()
        bad = forged()
        for i in range(1, N_OK + 1):
            w.write_packet(ok(i))
            if i <= len(bad):
                w.write_packet(bad[i - 1])
        w.flush()
'''
N_FORGED = len(FORGED) + 1

# A raw producer: its own handshake (lying about pid and uid), its own SMB
# writes, its own CommitData. Prints "STARTED <buffer>" once set up in a session,
# "DONE" after the attack, then exits when its stdin closes.
HOSTILE_SCRIPT = r'''
import os, sys
import zmq
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import CHUNK_HEADER, Geometry, SharedMemoryABI
from actors.smb_handoff import receive_smb
from shm.arbiter import SharedMemoryArbiter

endpoint, claimed_pid, claimed_uid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 2000)
sock.connect(endpoint)
rid = 0


def send(**msg):
    global rid
    rid += 1
    sock.send_multipart(framing.encode(ipc.ProducerToService(request_id=rid, **msg)))


def recv(kind):
    while True:
        assert sock.poll(15000), f"no {kind} from the service"
        msg = framing.decode_to_producer(sock.recv_multipart())
        if msg.WhichOneof("msg") == kind:
            return msg
        if msg.WhichOneof("msg") == "error":
            raise SystemExit(f"service error: {msg.error.message}")


send(initialize_connection=dict(
    hello=dict(protocol_version=ipc.PROTOCOL_VERSION, client_name="intruder"),
    producer_name="intruder", shm_size_hint_bytes=1 << 20, shm_page_size_hint_bytes=4096,
    buffer_exhausted_policy=1, claimed_pid=claimed_pid, claimed_uid=claimed_uid,
))
assert recv("initialize_connection").initialize_connection.producer_id
send(register_data_source=dict(descriptor=dict(name="intruder.ds")))
assert not recv("register_data_source").register_data_source.error
setup = recv("setup_tracing").setup_tracing
region = receive_smb(setup.shm_socket, setup.shm_token, setup.shm_size_bytes)
abi = SharedMemoryABI(region.buf, Geometry(setup.shm_size_bytes, setup.shm_page_size_bytes))
send(smb_mapped={})
start = recv("start_data_source").start_data_source
config = pb.DataSourceConfig.FromString(start.data_source_config)
A = config.target_buffer
OTHERS = [b for b in range(1, 11) if b != A]
print("STARTED", A, flush=True)

batches = []
arbiter = SharedMemoryArbiter(abi, batches.append, sleep=lambda s: None)


def packet(text):
    p = pb.TracePacket()
    p.for_testing.str = text
    return p.SerializeToString()


def writer(buffer, register_to=None, texts=(), flush=True):
    """A writer whose chunks name `buffer`; returns it and its returned chunks."""
    w = arbiter.create_trace_writer(buffer)
    if register_to is not None:
        send(register_trace_writer=dict(writer_id=w.writer_id, target_buffer=register_to))
    for text in texts:
        w.write_packet(packet(text))
    moves = []
    if flush:
        w.flush()
        moves = [m for b in batches for m in b.chunks_to_move]
        batches.clear()
    return w, moves


def commit(moves=(), patches=(), flush_request_id=0, target=None):
    req = ipc.CommitDataRequest(flush_request_id=flush_request_id)
    for page, chunk, buffer in moves:
        buffer = buffer if target is None else target
        req.chunks_to_move.add(page=page, chunk=chunk, target_buffer=buffer)
    for p in patches:
        req.chunks_to_patch.add(**p)
    send(commit_data=req)


# Its own buffer, legitimately: these get through, stamped with its real pid.
ok, moves = writer(A, A, [f"intruder-ok-{i}" for i in range(1, 6)])
commit(moves)

for b in OTHERS:
    commit(writer(b, None, [f"INTRUDER-unregistered-{b}"])[1])  # not registered
    w, moves = writer(b, b, [f"INTRUDER-registered-{b}"])  # registered to b itself
    commit(moves)
    # registered to its own buffer, committed naming b
    commit(writer(A, A, [f"INTRUDER-mismatch-{b}"])[1], target=b)
    # patches for b's chunks
    commit(patches=[dict(target_buffer=b, writer_id=w.writer_id, chunk_id=0,
                         patches=[dict(offset=0, data=b"\x01\x02\x03\x04")])])
    # left in the SMB for a scrape: a complete chunk and one being written
    writer(b, b, [f"INTRUDER-scrape-{b}"] * 2)
    writer(b, b, [f"INTRUDER-unflushed-{b}"] * 3, flush=False)

# Registered to another buffer, committed naming its own.
commit(writer(A, OTHERS[0], ["INTRUDER-registered-elsewhere"])[1])
# Pages and chunks that do not exist, and a buffer id beyond u16.
commit([(10**6, 0, A), (0, 13, A), (2**32 - 1, 2**32 - 1, A), (0, 0, 2**32 - 1)])
# Patches: writer ids 0 and > 32767, a 3-byte patch, too many patches, a wild offset.
four, three = dict(offset=0, data=b"abcd"), dict(offset=0, data=b"abc")
wild = dict(offset=10**9, data=b"abcd")
commit(patches=[
    dict(target_buffer=A, writer_id=0, chunk_id=0, patches=[four]),
    dict(target_buffer=A, writer_id=40000, chunk_id=0, patches=[four]),
    dict(target_buffer=A, writer_id=ok.writer_id, chunk_id=0, patches=[three]),
    dict(target_buffer=A, writer_id=ok.writer_id, chunk_id=0, patches=[four] * 2000),
    dict(target_buffer=A, writer_id=ok.writer_id, chunk_id=99, patches=[wild]),
])
# Chunk headers naming writer ids 0 and 40000, committed to its own buffer.
for bad_writer in (0, 40000):
    _, moves = writer(A, A, [f"INTRUDER-writer-{bad_writer}"])
    for page, chunk, _buf in moves:
        ref = abi.chunk_ref(page, chunk, 1)
        chunk_id, _, packets = CHUNK_HEADER.unpack_from(abi.buf, ref.offset)
        CHUNK_HEADER.pack_into(abi.buf, ref.offset, chunk_id, bad_writer, packets)
    commit(moves)
# Acks and notifications for instances and flushes that are not its own.
for instance_id in range(1, 21):
    send(data_source_started=dict(instance_id=instance_id))
    send(data_source_stopped=dict(instance_id=instance_id))
commit(flush_request_id=2**63)
# Frames that are not envelopes: undecodable, two frames, too large.
for frames in ([b"\xff\xff\xff"], [b"\x08\x01", b"x"], [b"\x00" * (4 << 20 | 1)]):
    sock.send_multipart(frames)
# An envelope with a message this service does not know (field 99): an error answer.
sock.send_multipart([b"\x08\x99\x01\x9a\x06\x02\x08\x01"])  # request_id 153
while True:
    assert sock.poll(15000), "no answer to an unknown message"
    answer = framing.decode_to_producer(sock.recv_multipart())
    if answer.WhichOneof("msg") == "error":
        assert answer.request_id == 153 and "knows" in answer.error.message, answer
        break

# And its own buffer again: the service still takes what is legitimate.
for i in range(6, 11):
    ok.write_packet(packet(f"intruder-ok-{i}"))
ok.flush()
commit([m for b in batches for m in b.chunks_to_move])
batches.clear()
# A request with a reply: once it comes, the service has handled all of the above.
send(register_data_source=dict(descriptor=dict(name="intruder.sync")))
assert not recv("register_data_source").register_data_source.error
print("DONE", flush=True)
sys.stdin.read()
os._exit(0)  # no goodbye: the service finds out from the kernel
'''


def test_hostile_producers_get_nothing_through(rt: Runtime):
    rt.write_module("forge_ds", FORGER_MODULE.format(forged=FORGED, n_ok=FORGER_OK))
    (rt.dir / "hostile.py").write_text(HOSTILE_SCRIPT, encoding="utf-8")
    service = rt.start_service()
    honest = rt.start_producer("honest", wait=False)
    forger = rt.start_producer("forger", "--module", "forge_ds", wait=False)
    rt.wait_registered(honest, "tracebus.synthetic")
    # The intruder claims to be the honest producer, under another uid.
    liar_uid = os.getuid() + 4242
    intruder = rt.spawn(
        "intruder",
        [str(rt.dir / "hostile.py"), rt.producer_endpoint, str(honest.pid), str(liar_uid)],
        lines=True,
    )
    rt.wait_registered(forger, "forge.ds")
    seen = rt.wait_registered(intruder, "intruder.ds")
    # The handshake's lies are not believed: pid and uid come from the kernel.
    assert (seen.pid, seen.uid) == (intruder.pid, os.getuid())
    assert rt.producer_state(honest.pid)[0].name == "honest"

    # Session B first (its buffer gets the lower id), then session A.
    nb, seed_b, size_b = 150, 22, 24
    cons_b = rt.consumer()
    cons_b.enable(session_config(synthetic_source("honest", nb, seed_b, size_b)))
    na, seed_a, size_a = 200, 11, 16
    cons_a = rt.consumer()
    cons_a.enable(
        session_config(
            synthetic_source("honest", na, seed_a, size_a),
            'producer_name_filter: "forger" config { name: "forge.ds" }',
            'producer_name_filter: "intruder" config { name: "intruder.ds" }',
        )
    )
    buffer_a = int(rt.wait_line(intruder, "STARTED").split()[1])
    rt.wait_line(intruder, "DONE")
    assert intruder.stdin is not None, "spawned with lines=True: stdin is a pipe"
    intruder.stdin.close()  # it exits without a word; the service must notice
    assert intruder.wait(timeout=10) == 0
    wait_for(lambda: rt.producer_state(intruder.pid)[0] is None, 5, "the intruder to be forgotten")
    assert service.poll() is None, "the service died"

    trace_a = finish_session(cons_a)
    trace_b = finish_session(cons_b)
    assert service.poll() is None, "the service died"
    me = os.getuid()
    pids = {service.pid, honest.pid, forger.pid, intruder.pid}
    for packet in trace_a + trace_b:
        assert packet.trusted_uid == me
        assert packet.trusted_pid in pids
        assert packet.trusted_packet_sequence_id >= 1
        assert not packet.for_testing.str.startswith(("FORGED", "INTRUDER")), packet

    # Session A: honest data complete, the forger's honest packets only, the
    # intruder's own legitimate packets only, everyone under their real pid.
    assert_synthetic(by_pid(trace_a, honest.pid), na, seed_a, size_a)
    forger_packets = by_pid(trace_a, forger.pid)
    assert [p.for_testing.counter for p in forger_packets] == list(range(1, FORGER_OK + 1))
    assert {p.for_testing.str for p in forger_packets} == {"forger-ok"}
    assert len({p.trusted_packet_sequence_id for p in forger_packets}) == 1
    intruder_packets = by_pid(trace_a, intruder.pid)
    assert [p.for_testing.str for p in intruder_packets] == [
        f"intruder-ok-{i}" for i in range(1, 11)
    ]
    service_packets = [p for p in trace_a if p.trusted_pid == service.pid]
    assert {p.trusted_packet_sequence_id for p in service_packets} == {1}
    assert all(p.trusted_packet_sequence_id != 1 for p in trace_a if p.trusted_pid != service.pid)
    assert sum(p.HasField("trace_config") for p in trace_a) == 1
    assert not any(p.HasField("machine_id") for p in trace_a + trace_b)
    stats_a = trace_stats_of(trace_a)
    assert stats_a.invalid_packets == N_FORGED
    # 9 other buffer ids x (unregistered, registered, mismatched) + one registered elsewhere.
    assert stats_a.chunks_discarded == 9 * 3 + 1
    # 9 other buffers + writer 0 + writer 40000 + a 3-byte patch + 2000 patches.
    assert stats_a.patches_discarded >= 9 + 4
    assert stats_a.buffer_stats[0].abi_violations >= 2  # the chunks naming writers 0 and 40000

    # Session B: only its own honest data, nothing of the intruder's, even after
    # the service scraped the intruder's SMB when it went away.
    assert buffer_a != 1  # B's buffer was among the intruder's targets
    assert by_pid(trace_b, intruder.pid) == []
    assert by_pid(trace_b, forger.pid) == []
    assert_synthetic(by_pid(trace_b, honest.pid), nb, seed_b, size_b)
    assert {p.trusted_pid for p in trace_b} == {service.pid, honest.pid}
    stats_b = trace_stats_of(trace_b)
    assert stats_b.invalid_packets == 0
    assert stats_b.buffer_stats[0].abi_violations == 0
    assert stats_b.buffer_stats[0].chunks_discarded == 0

    # The service is still serving (and said what it dropped).
    assert (rt.dir / "service.log").read_text().count("dropped a frame") == 3
    for c in (cons_a, cons_b):
        c.free()
    assert {p.pid for p in rt.control.query_state().producers} == {honest.pid, forger.pid}


# -- 2. a producer killed mid-session -------------------------------------------------------


def test_sigkilled_producer_is_noticed_and_its_smb_released(rt: Runtime):
    service = rt.start_service()
    steady = rt.start_producer("steady", "--page-size-kb", "4", wait=False)
    victim = rt.start_producer("victim", "--page-size-kb", "4", wait=False)
    rt.wait_registered(steady, "tracebus.synthetic")
    rt.wait_registered(victim, "tracebus.synthetic")
    size, seed_s, seed_v = 32, 5, 6
    cons = rt.consumer()
    cons.enable(
        session_config(
            synthetic_source("steady", 10**6, seed_s, size, rate=1500, buf=0),
            synthetic_source("victim", 10**6, seed_v, size, rate=1000, buf=1),
            buffers_kb=(4096, 4096),
        )
    )

    def buffer_stats(index: int) -> pb.TraceStats.BufferStats:
        return cons.stats(timeout=5).buffer_stats[index]

    # Some of the victim's chunks reached the service before it dies.
    wait_for(lambda: buffer_stats(1).chunks_written >= 3, 15, "the victim's first chunks")
    victim_smb = wait_for(lambda: smb_inodes_mapped(victim.pid), 5, "the victim's SMB mapping")
    assert len(set(victim_smb)) == 1
    inode = victim_smb[0]
    assert inode in smb_inodes_mapped(service.pid)
    assert inode in smb_inodes_open(service.pid)
    assert len(set(smb_inodes_mapped(service.pid))) == 2  # steady's and the victim's

    committed = buffer_stats(1).chunks_written
    victim.kill()
    killed_at = time.monotonic()
    victim.wait(timeout=5)
    wait_for(lambda: rt.producer_state(victim.pid)[0] is None, NOTICE_S, "the kill noticed")
    noticed = time.monotonic() - killed_at
    wait_for(
        lambda: (
            inode not in smb_inodes_mapped(service.pid)
            and inode not in smb_inodes_open(service.pid)
        ),
        max(0.05, killed_at + NOTICE_S - time.monotonic()),
        "the service to unmap and close the victim's SMB",
    )
    released = time.monotonic() - killed_at
    # Steady's SMB is still there (mmap holds a dup of the memfd: two fds, one inode).
    assert len(set(smb_inodes_mapped(service.pid))) == 1
    assert len(set(smb_inodes_open(service.pid))) == 1

    # The session goes on with the steady producer.
    assert service.poll() is None
    written = buffer_stats(0).bytes_written
    wait_for(lambda: buffer_stats(0).bytes_written > written + 8192, 15, "steady to go on")
    state = rt.control.query_state()
    assert {p.pid for p in state.producers} == {steady.pid}
    assert [s.state for s in state.sessions] == ["STARTED"]

    trace = finish_session(cons)
    steady_events = [p.for_testing for p in by_pid(trace, steady.pid)]
    n = len(steady_events)
    assert n >= 50
    assert [e.counter for e in steady_events] == list(range(1, n + 1))
    assert [e.seq_value for e in steady_events] == seq_values(seed_s, n)
    # The victim's complete chunks (and what the scrape found) are in, in order.
    victim_packets = by_pid(trace, victim.pid)
    v = len(victim_packets)
    # A chunk is committed when full: a 4 KiB chunk holds over 80 of these packets.
    assert v >= 60 * committed, f"{v} packets from {committed} committed chunks"
    assert len({p.trusted_packet_sequence_id for p in victim_packets}) == 1
    victim_events = [p.for_testing for p in victim_packets]
    assert [e.counter for e in victim_events] == list(range(1, v + 1))
    assert [e.seq_value for e in victim_events] == seq_values(seed_v, v)
    assert [e.str.encode() for e in victim_events] == [
        synthetic_str(seed_v, i, size) for i in range(1, v + 1)
    ]
    print(f"noticed after {noticed * 1000:.0f} ms, SMB released after {released * 1000:.0f} ms")


# -- 3. the service on SIGTERM / SIGINT ---------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_service_exits_cleanly_on_signal(rt: Runtime, signum: int):
    service = rt.start_service()
    rt.start_producer("p1", data_sources=("tracebus.synthetic",))
    cons = rt.consumer()
    # 2000 packets/s fill a first chunk in about 0.1 s (200/s took 0.7 s).
    cons.enable(session_config(synthetic_source("p1", 10**6, 1, 16, rate=2000)))
    wait_for(lambda: cons.stats(timeout=5).buffer_stats[0].chunks_written >= 1, 10, "data")
    sockets = [rt.dir / "p", rt.dir / "c"]
    assert all(s.exists() for s in sockets)
    assert children_of(service.pid) == []
    service.send_signal(signum)
    assert service.wait(timeout=10) == 0
    assert not any(s.exists() for s in sockets), os.listdir(rt.dir)
    assert not Path(f"/proc/{service.pid}").exists()
    # Its consumer learns the session is over (the service ended it, or went away).
    try:
        cons.wait_disabled(timeout=5)
    except SessionError:
        pass  # "the service went away" is an end too
    assert "Traceback" not in (rt.dir / "service.log").read_text()
