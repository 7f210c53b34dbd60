"""The hostile and honest actors of the chaos soak (tests/test_chaos.py), and how
its traces are checked.

Run as a process (`python -m tests.chaos_peers KIND ENDPOINT SEED COUNT`), a
raw peer speaks the protocol itself over a ZeroMQ DEALER and sends COUNT
messages mutated from valid ones, then exits (the soak starts another):

- `producer`: a valid handshake and registration on the producer port, then
  mutated ProducerToService envelopes (commits naming random pages, chunks,
  buffers and patches; WriterStats of 2^64-1; ids, names, triggers), random
  bytes, extra and empty frames, now and then a frame over the size cap.
- `sockets`: ENDPOINT is the runtime directory: COUNT times, a raw AF_UNIX
  connection to one of its socket files (the ZeroMQ ports, and whatever other
  socket the service listens on there, such as an SMB handoff socket) that
  sends random bytes or a ZMTP greeting cut or mutated, is held open a little
  or closed at once, read or not.
- `perfetto-producer`, `perfetto-consumer`: ENDPOINT is the service's Perfetto
  producer or consumer socket: Perfetto IPC frames, valid and mutated
  (tests/chaos_perfetto.py).
- `consumer`: the same as `producer` on the consumer port with ConsumerToService envelopes,
  what a same-uid hostile consumer can send. A mutation that turns into a
  session is sent at most once per process and only if it names no output
  file and at most MAX_CONSUMER_BUFFERS_KB of buffers (the soak must not write
  files where it runs nor hold the machine's memory; the service's own budget
  is tested elsewhere); its session ends with the process.

Replies are drained as they come, never waited for.

`python -m tests.chaos_peers probe ENDPOINT PERIOD_MS 0` is the soak's probe:
a process of its own (so that the test's own work never delays it) that asks
the consumer port for the service state every PERIOD_MS and prints one line
per answer, `latency SECONDS AT` (AT: seconds since it connected), or `error
WHAT`, until its stdin closes. The module also holds the
text of the soak's other actors (a producer that scribbles on its own SMB, an
SDK app) and `check_trace`, which reads a trace file with Perfetto's schema.
"""

from __future__ import annotations

import random
import stat
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

MAX_CONSUMER_BUFFERS_KB = 64 * 1024
U64_MAX = (1 << 64) - 1
OVERSIZED_FRAME = (4 << 20) + 1  # one byte over protos.framing.MAX_FRAME_BYTES


# -- mutations ---------------------------------------------------------------------------------


def mutate(data: bytes, rnd: random.Random) -> bytes:
    """`data` with one to three random edits (bit flips, bytes set, inserted or
    deleted, a truncation, a huge varint, a stray field)."""
    out = bytearray(data)
    for _ in range(rnd.randint(1, 3)):
        _EDITS[rnd.randrange(len(_EDITS))](out, rnd)
    return bytes(out)


def _flip(out: bytearray, rnd: random.Random) -> None:
    if out:
        out[rnd.randrange(len(out))] ^= 1 << rnd.randrange(8)


def _set(out: bytearray, rnd: random.Random) -> None:
    if out:
        out[rnd.randrange(len(out))] = rnd.choice((0, 0x7F, 0x80, 0xFF, rnd.randrange(256)))


def _insert(out: bytearray, rnd: random.Random) -> None:
    at = rnd.randint(0, len(out))
    out[at:at] = rnd.randbytes(rnd.randint(1, 8))


def _delete(out: bytearray, rnd: random.Random) -> None:
    if out:
        at = rnd.randrange(len(out))
        del out[at : at + rnd.randint(1, 8)]


def _truncate(out: bytearray, rnd: random.Random) -> None:
    del out[rnd.randint(0, len(out)) :]


def _huge_varint(out: bytearray, rnd: random.Random) -> None:
    at = rnd.randint(0, len(out))
    out[at:at] = b"\xff" * 9 + b"\x01"


def _stray_field(out: bytearray, rnd: random.Random) -> None:
    tag = (rnd.randint(1, (1 << 29) - 1) << 3) | rnd.choice((0, 1, 2, 5))
    out += _varint(tag) + rnd.randbytes(rnd.randint(0, 6))


_EDITS = (_flip, _set, _insert, _delete, _truncate, _huge_varint, _stray_field)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# -- what each raw peer starts from -------------------------------------------------------------


def producer_seeds(rnd: random.Random) -> list[object]:
    """Valid ProducerToService envelopes with random (often out of range) values."""
    from protos import tracebus_ipc_pb2 as ipc

    def big() -> int:
        return rnd.choice((0, 1, 7, 255, 1 << 16, (1 << 32) - 1))

    commit = ipc.CommitDataRequest(flush_request_id=rnd.choice((0, 1, U64_MAX)))
    for _ in range(rnd.randint(0, 4)):
        commit.chunks_to_move.add(page=big(), chunk=rnd.randint(0, 15), target_buffer=big())
    patch = commit.chunks_to_patch.add(target_buffer=big(), writer_id=big(), chunk_id=big())
    patch.patches.add(offset=big(), data=rnd.randbytes(rnd.choice((0, 4, 9))))
    for _ in range(rnd.randint(0, 2)):
        commit.writer_stats.add(
            writer_id=big(), target_buffer=big(), dropped_packets=U64_MAX, dropped_bytes=U64_MAX
        )
    name = "chaos." + "x" * rnd.choice((1, 64, 300))
    return [
        ipc.ProducerToService(commit_data=commit),
        ipc.ProducerToService(register_data_source={"descriptor": {"name": name}}),
        ipc.ProducerToService(unregister_data_source={"name": name}),
        ipc.ProducerToService(register_trace_writer={"writer_id": big(), "target_buffer": big()}),
        ipc.ProducerToService(unregister_trace_writer={"writer_id": big()}),
        ipc.ProducerToService(smb_mapped={"error": rnd.choice(("", "no"))}),
        ipc.ProducerToService(data_source_started={"instance_id": rnd.choice((1, 2, U64_MAX))}),
        ipc.ProducerToService(data_source_stopped={"instance_id": rnd.choice((1, 2, U64_MAX))}),
        ipc.ProducerToService(activate_triggers={"trigger_names": ["t" * rnd.randint(0, 300)]}),
        ipc.ProducerToService(heartbeat={}),
        _hello_producer(rnd),
    ]


def _hello_producer(rnd: random.Random) -> object:
    from protos import tracebus_ipc_pb2 as ipc

    return ipc.ProducerToService(
        initialize_connection={
            "hello": {"protocol_version": ipc.PROTOCOL_VERSION, "client_name": "chaos"},
            "producer_name": "chaos-raw",
            "shm_size_hint_bytes": rnd.choice((0, 4096, 1 << 20, 32 << 20, (1 << 32) - 1)),
            "shm_page_size_hint_bytes": rnd.choice((0, 4096, 5000, 1 << 20)),
            "buffer_exhausted_policy": rnd.choice((0, 1, 2, 99)),
        }
    )


def consumer_seeds(rnd: random.Random) -> list[object]:
    """Valid ConsumerToService envelopes, a small session's config among them."""
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as cfg

    from protos import tracebus_ipc_pb2 as ipc

    config = cfg.TraceConfig(duration_ms=rnd.choice((0, 100, 2000)))
    config.buffers.add(size_kb=rnd.choice((4, 64, 1024)))
    config.data_sources.add().config.name = rnd.choice(("tracebus.synthetic", "track_event"))
    return [
        ipc.ConsumerToService(hello={"protocol_version": ipc.PROTOCOL_VERSION}),
        ipc.ConsumerToService(enable_tracing={"trace_config": config.SerializeToString()}),
        ipc.ConsumerToService(start_tracing={}),
        ipc.ConsumerToService(disable_tracing={}),
        ipc.ConsumerToService(flush={"timeout_ms": rnd.choice((0, 1, 100, (1 << 32) - 1))}),
        ipc.ConsumerToService(read_buffers={}),
        ipc.ConsumerToService(free_buffers={}),
        ipc.ConsumerToService(get_trace_stats={}),
        ipc.ConsumerToService(query_service_state={}),
        ipc.ConsumerToService(observe_events={"types": [rnd.randint(0, 5)]}),
        ipc.ConsumerToService(heartbeat={}),
    ]


def consumer_message_allowed(data: bytes, sessions_left: int) -> bool:
    """Whether a mutated consumer envelope may be sent: anything that does not
    parse, or parses into anything but a session, or a session the soak can
    afford (see the module docstring)."""
    from google.protobuf.message import DecodeError
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as cfg

    from protos import tracebus_ipc_pb2 as ipc

    envelope = ipc.ConsumerToService()
    try:
        envelope.ParseFromString(data)
    except DecodeError:
        return True
    if envelope.WhichOneof("msg") != "enable_tracing":
        return True
    request = envelope.enable_tracing
    config = cfg.TraceConfig()
    try:
        config.ParseFromString(request.trace_config)
    except DecodeError:
        return sessions_left > 0 and not request.output_path
    total_kb = sum(b.size_kb for b in config.buffers)
    return (
        sessions_left > 0
        and not request.output_path
        and not config.output_path
        and not config.write_into_file
        and total_kb <= MAX_CONSUMER_BUFFERS_KB
    )


# -- the raw peer processes ----------------------------------------------------------------------

# A ZMTP 3.0 greeting (NULL mechanism), what a libzmq peer sends first.
ZMTP_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00NULL" + b"\x00" * 16 + b"\x00" + b"\x00" * 31


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except FileNotFoundError:
        return False  # a trace file renamed meanwhile


def run_socket_peer(directory: str, seed: int, count: int) -> int:
    import socket
    import time

    rnd = random.Random(seed)
    held: list[socket.socket] = []
    for _ in range(count):
        paths = [p for p in Path(directory).iterdir() if is_socket(p)]
        if not paths:
            return 0
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(0.5)
        try:
            sock.connect(str(rnd.choice(paths)))
            greeting = mutate(ZMTP_GREETING, rnd) if rnd.random() < 0.5 else ZMTP_GREETING
            payload = rnd.choice(
                (greeting[: rnd.randint(0, 64)], rnd.randbytes(rnd.randint(1, 512)))
            )
            sock.sendall(payload)
            if rnd.random() < 0.3:
                sock.recv(4096)
        except OSError:
            pass  # refused, reset or timed out: what the service may do to such a peer
        if rnd.random() < 0.2 and len(held) < 8:
            held.append(sock)  # kept open, silent, until the process ends
        else:
            sock.close()
        time.sleep(rnd.uniform(0, 0.02))  # a pace, not a synchronization
    return 0


def run_raw_peer(kind: str, endpoint: str, seed: int, count: int) -> int:
    import zmq

    rnd = random.Random(seed)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 1000)  # a service that stops reading must not hang us
    sock.connect(endpoint)
    seeds = producer_seeds if kind == "producer" else consumer_seeds
    first = _hello_producer(rnd) if kind == "producer" else seeds(rnd)[0]
    sessions_left = 1
    try:
        _send(sock, [first.SerializeToString()])  # type: ignore[attr-defined]
        for i in range(count):
            frames = _next_frames(rnd, seeds, i)
            if kind == "consumer" and len(frames) == 1:
                if not consumer_message_allowed(frames[0], sessions_left):
                    continue
                sessions_left -= _is_session(frames[0])
            _send(sock, frames)
            _drain(sock)
    finally:
        sock.close(linger=0)
        ctx.term()
    return 0


def _next_frames(rnd: random.Random, seeds, i: int) -> list[bytes]:
    """The i-th message: mostly a mutated seed with a random request id."""
    roll = rnd.random()
    if roll < 0.03:
        return [rnd.randbytes(rnd.randint(0, 64))]
    if roll < 0.05:
        return [b"", rnd.randbytes(8)][: rnd.randint(1, 2)] + [rnd.randbytes(4)]
    if roll < 0.052 and i > 0:
        return [rnd.randbytes(16) * (OVERSIZED_FRAME // 16 + 1)]
    envelope = rnd.choice(seeds(rnd))
    envelope.request_id = rnd.choice((i + 2, 0, U64_MAX))  # type: ignore[attr-defined]
    data = envelope.SerializeToString()  # type: ignore[attr-defined]
    return [data if roll < 0.15 else mutate(data, rnd)]


def _is_session(data: bytes) -> bool:
    from google.protobuf.message import DecodeError

    from protos import tracebus_ipc_pb2 as ipc

    envelope = ipc.ConsumerToService()
    try:
        envelope.ParseFromString(data)
    except DecodeError:
        return False
    return envelope.WhichOneof("msg") == "enable_tracing"


def _send(sock, frames: list[bytes]) -> None:
    import zmq

    try:
        sock.send_multipart(frames)
    except zmq.Again:
        pass  # the pipe is full: the service drops what it cannot take


def _drain(sock) -> None:
    import zmq

    while sock.poll(0, zmq.POLLIN):
        sock.recv_multipart()


# -- the soak's other actors, as module texts -----------------------------------------------------

# `actors.producer --module chaos_scribbler`: a thread of the producer's own
# scribbles random bytes over the SMB it maps (found in /proc/self/maps; written
# through /proc/self/mem, so that an SMB released meanwhile costs an EIO, not a
# crash), headers and payloads alike, while its synthetic source writes.
SCRIBBLER_MODULE = r'''
"""A producer that scribbles on its own SMB (the chaos soak)."""
import os, random, threading, time

SMB = "/memfd:tracebus-smb"


def _regions():
    out = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if SMB in line:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                out.append((lo, hi))
    return out


def _scribble():
    rnd = random.Random(os.getpid())
    mem = os.open("/proc/self/mem", os.O_RDWR)
    while True:
        time.sleep(rnd.uniform(0.001, 0.02))  # a pace, not a synchronization
        regions = _regions()
        if not regions:
            continue
        lo, hi = rnd.choice(regions)
        page = rnd.randrange((hi - lo) // 4096) * 4096
        at = lo + page + rnd.choice((0, 8, rnd.randrange(4096)))
        try:
            os.pwrite(mem, rnd.randbytes(rnd.choice((1, 2, 4, 8))), at)
        except OSError:
            pass  # unmapped meanwhile


threading.Thread(target=_scribble, daemon=True, name="scribbler").start()
'''

# An application instrumented with the SDK, writing slices, instants and
# counters until it is killed.
SDK_APP = r"""
import itertools, time
import tracebus

for i in itertools.count():
    with tracebus.slice("chaos-work", category="chaos", args={"i": i}):
        tracebus.instant("tick", category="chaos")
    tracebus.counter("chaos_i", i)
    if i % 5 == 0:
        time.sleep(0.005)  # a pace, not a synchronization
"""


# -- checking a trace ---------------------------------------------------------------------------


@dataclass
class TraceCheck:
    """What one trace holds, for the soak's assertions and its report."""

    packets: int = 0
    synthetic: int = 0  # packets of honest synthetic sources
    sequences: int = 0
    gaps: int = 0  # jumps in a sequence's counters
    flagged_losses: int = 0  # packets with previous_packet_dropped
    problems: list[str] = field(default_factory=list)


def check_trace(data: bytes, honest_pids: set[int], seed: int, size: int) -> TraceCheck:
    """Parse `data` with Perfetto's schema and check the synthetic sequences of
    `honest_pids`: counters strictly increasing, each jump (and a first counter
    above 1) on a packet flagged previous_packet_dropped, and each packet's
    string the one its counter implies (nothing reordered or corrupted)."""
    from google.protobuf.message import DecodeError
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    from actors.data_sources import synthetic_str

    trace = pb.Trace()
    try:
        trace.ParseFromString(data)
    except DecodeError as e:
        where = first_bad_packet(data)
        return TraceCheck(problems=[f"{len(data)} bytes do not parse as a Trace ({e}): {where}"])
    check = TraceCheck(packets=len(trace.packet))
    last: dict[tuple[int, int], int] = defaultdict(int)
    for p in trace.packet:
        check.flagged_losses += p.previous_packet_dropped
        if p.trusted_pid not in honest_pids or not p.HasField("for_testing"):
            continue
        check.synthetic += 1
        key = (p.trusted_pid, p.trusted_packet_sequence_id)
        counter, prev = p.for_testing.counter, last[key]
        where = f"pid {key[0]} sequence {key[1]} counter {counter} after {prev}"
        if counter <= prev:
            check.problems.append(f"out of order: {where}")
        elif counter != prev + 1:
            check.gaps += 1
            if not p.previous_packet_dropped:
                check.problems.append(f"gap not flagged: {where}")
        if p.for_testing.str.encode() != synthetic_str(seed, counter, size):
            check.problems.append(f"corrupted: {where}: {p.for_testing.str[:40]!r}")
        last[key] = counter
    check.sequences = len(last)
    return check


def first_bad_packet(data: bytes) -> str:
    """Where a trace that does not parse goes wrong: the Trace framing itself, or
    the first packet that does not parse (and whose, by its trusted trailer)."""
    from google.protobuf.message import DecodeError
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    at, index = 0, 0
    while at < len(data):
        if data[at] != 0x0A:
            return f"byte {at}: tag {data[at]:#x} where a packet (field 1) should start"
        length, start = _read_varint(data, at + 1)
        packet = data[start : start + length]
        if start + length > len(data):
            return f"packet {index} at byte {at}: length {length} past the end"
        try:
            pb.TracePacket.FromString(packet)
        except DecodeError:
            pid = packet.rfind(b"\xf8\x04")
            owner = _read_varint(packet, pid + 2)[0] if pid >= 0 else "?"
            return f"packet {index} at byte {at} ({length} bytes, trusted_pid {owner}) " + (
                f"does not parse: {packet[:48].hex()}..."
            )
        at, index = start + length, index + 1
    return "every packet parses on its own"


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            break
    return value, at


def run_probe(endpoint: str, period_s: float) -> int:
    import threading
    import time

    from actors.consumer import Consumer

    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    consumer = Consumer.connect(endpoint, timeout=10, name="chaos-probe")
    print("ready", flush=True)
    start = time.monotonic()
    try:
        while not closed.wait(period_s):
            t0 = time.monotonic()
            try:
                consumer.query_state(timeout=5)
                print(f"latency {time.monotonic() - t0:.6f} {t0 - start:.1f}", flush=True)
            except Exception as e:  # noqa: BLE001 - the test reads it
                print(f"error {e!r}", flush=True)
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    kind, endpoint, seed, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if kind == "sockets":
        sys.exit(run_socket_peer(endpoint, seed, count))
    if kind == "probe":
        sys.exit(run_probe(endpoint, seed / 1000))
    if kind.startswith("perfetto-"):
        from tests.chaos_perfetto import run_perfetto_peer

        sys.exit(run_perfetto_peer(kind.removeprefix("perfetto-"), endpoint, seed, count))
    sys.exit(run_raw_peer(kind, endpoint, seed, count))
