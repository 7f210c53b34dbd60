"""Integration: the service, producers and consumers as real processes.

Every test starts `python -m actors.service` on ipc:// endpoints in a short
private directory, producers with `python -m actors.producer`, and records with
the consumer CLI (`python -m actors.consumer -c CFG --txt -o OUT`) or the
`Consumer` script API in this process, all through the process harness
(tests/processes.py, fixture `rt`): readiness is a handshake or a condition
polled with a deadline, never a sleep; every process is terminated (then
killed) and the directory removed whatever happens, and a leftover process or
SMB fails the test.

What is checked comes from outside the implementation: the trace file parses
with Perfetto's own schema, synthetic packets are recomputed from the formula
actors/data_sources.py documents (seq_values, synthetic_str, synthetic_packet),
and trusted pids are those of the processes started here.
"""

from __future__ import annotations

import base64
import os
import random
import re
import shlex
import sys
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.consumer import Consumer
from actors.data_sources import seq_values, synthetic_packet, synthetic_str
from shm.protozero import LEN, tag, varint
from tests.processes import REPO, Runtime
from tests.track_event_import import Outcome, import_track_events
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

PYTHON = sys.executable
RUN_TIMEOUT = 60.0
UID = os.getuid()

# Fields the writer (first_packet_on_sequence, previous_packet_dropped) or the
# service (the trusted ones, previous_packet_dropped) may append after the bytes
# a data source wrote.
TRUSTED = {"trusted_uid", "trusted_packet_sequence_id", "trusted_pid"}


# -- processes ------------------------------------------------------------------------------


@pytest.fixture
def topo(rt: Runtime) -> Runtime:
    """The harness's runtime (tests/processes.py) with its service answering."""
    rt.start_service()
    return rt


# -- reading traces ----------------------------------------------------------------------------


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7


def raw_packets(data: bytes) -> list[bytes]:
    """The bytes of each Trace.packet (field 1, length-delimited), as written."""
    out, i = [], 0
    while i < len(data):
        key, i = read_varint(data, i)
        assert key == (1 << 3 | LEN), f"unexpected Trace field/wire {key} at {i}"
        size, i = read_varint(data, i)
        out.append(data[i : i + size])
        i += size
    assert i == len(data), "truncated trace file"
    return out


@dataclass
class Trace:
    """A trace file parsed with Perfetto's official schema, plus the raw packet bytes."""

    packets: list[pb.TracePacket]
    raw: list[bytes]
    sequences: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def load(cls, path: Path) -> Trace:
        data = path.read_bytes()
        parsed = pb.Trace()
        parsed.ParseFromString(data)  # the official perfetto_trace_pb2.Trace
        raw = raw_packets(data)
        assert len(raw) == len(parsed.packet)
        trace = cls(list(parsed.packet), raw)
        for i, p in enumerate(trace.packets):
            assert p.HasField("trusted_packet_sequence_id"), p
            trace.sequences[p.trusted_packet_sequence_id].append(i)
        return trace

    def service_packets(self) -> list[pb.TracePacket]:
        return [self.packets[i] for i in self.sequences.get(1, [])]

    def producer_sequences(self) -> dict[int, list[int]]:
        return {seq: idx for seq, idx in self.sequences.items() if seq != 1}

    def pid_of(self, seq: int) -> int:
        pids = {self.packets[i].trusted_pid for i in self.sequences[seq]}
        assert len(pids) == 1, f"sequence {seq} has packets from pids {pids}"
        return pids.pop()

    def stats(self) -> pb.TraceStats:
        last = self.packets[-1]
        assert last.HasField("trace_stats"), "trace_stats must be the last packet"
        return last.trace_stats

    def service_event_ts(self, event: str) -> int:
        for p in self.service_packets():
            if p.HasField("service_event") and getattr(p.service_event, event):
                return p.timestamp
        raise AssertionError(f"no service_event {event}")


def tail_fields(raw: bytes, prefix_len: int) -> set[str]:
    """Names of the fields appended after the first prefix_len bytes."""
    tail = pb.TracePacket()
    tail.ParseFromString(raw[prefix_len:])
    return {f.name for f, _ in tail.ListFields()}


LOSS_PRESENT, LOSS_WRITER_ABORT, LOSS_SMB_FULL = 1, 128, 256  # previous_packet_dropped bits


def loss_marks(raw: bytes) -> set[int]:
    """Every previous_packet_dropped value in a packet (the writer's and the
    service's; a parser keeps only the last)."""
    marks, i = set(), 0
    while i < len(raw):
        key, i = read_varint(raw, i)
        wire = key & 7
        if wire == 0:
            value, i = read_varint(raw, i)
            if key >> 3 == 42:
                marks.add(value)
        elif wire == LEN:
            size, i = read_varint(raw, i)
            i += size
        else:
            i += 8 if wire == 1 else 4
    return marks


def seed_of(packet: pb.TracePacket) -> int:
    """The seed a synthetic packet's str starts with ("{seed}:{counter}:....")."""
    return int(packet.for_testing.str.split(":", 1)[0])


def check_synthetic(
    trace: Trace,
    seq: int,
    *,
    seed: int,
    count: int,
    size: int,
    complete: bool = True,
) -> list[int]:
    """Every packet of a synthetic sequence is byte-identical to what the data source
    wrote, in order, each at most once (all of them if `complete`). Returns the
    counters present."""
    idx = trace.sequences[seq]
    values = seq_values(seed, count)
    counters = []
    for n, i in enumerate(idx):
        p, raw = trace.packets[i], trace.raw[i]
        c = p.for_testing.counter
        assert 1 <= c <= count, (seq, c)
        counters.append(c)
        # The fields, from the documented formula (not from the packet builder) ...
        assert p.for_testing.str == synthetic_str(seed, c, size).decode()
        assert len(p.for_testing.str) == size
        assert p.for_testing.seq_value == values[c - 1]
        assert p.for_testing.is_last == (c == count)
        # ... and the bytes: the data source's packet first, then only what the writer
        # and the service may append.
        expected = synthetic_packet(seed, c, values[c - 1], size, c == count)
        assert raw[: len(expected)] == expected, f"packet {c} of sequence {seq} differs"
        allowed = TRUSTED | {"previous_packet_dropped"}
        if n == 0:
            allowed = allowed | {"first_packet_on_sequence"}
        assert tail_fields(raw, len(expected)) <= allowed, (seq, c, tail_fields(raw, len(expected)))
        assert p.trusted_uid == UID
    assert counters == sorted(set(counters)), f"sequence {seq}: out of order or repeated"
    if complete:
        assert counters == list(range(1, count + 1)), f"sequence {seq}: packets missing"
        assert not any(trace.packets[i].previous_packet_dropped for i in idx)
    return counters


def synthetic_sequences(trace: Trace) -> dict[tuple[int, int], int]:
    """(pid, seed) -> sequence id, for every sequence of TestEvent packets."""
    found: dict[tuple[int, int], int] = {}
    for seq, idx in trace.producer_sequences().items():
        first = trace.packets[idx[0]]
        if not first.HasField("for_testing"):
            continue
        seeds = {seed_of(trace.packets[i]) for i in idx}
        assert len(seeds) == 1, f"sequence {seq} mixes seeds {seeds}"
        key = (trace.pid_of(seq), seeds.pop())
        assert key not in found, f"two sequences for pid/seed {key}"
        found[key] = seq
    return found


# -- 1. three producers, two buffers, filters, a producer that drops -----------------------

ALPHA_SEED, B_SEED, GAMMA_SEED, GAMMA_B_SEED = 101, 202, 303, 404
ALPHA_N, ALPHA_SIZE = 1500, 200
B_N, B_SIZE = 800, 300
GAMMA_N, GAMMA_SIZE, GAMMA_RATE = 2000, 900, 4000
GAMMA_B_N, GAMMA_B_SIZE, GAMMA_B_RATE = 1000, 700, 2000
FRAMES = 25

TOPOLOGY_CONFIG = f"""
buffers {{ size_kb: 16384 fill_policy: RING_BUFFER }}
buffers {{ size_kb: 8192 fill_policy: DISCARD }}

# alpha only: the built-in synthetic source, into the ring buffer.
data_sources {{
  config {{
    name: "tracebus.synthetic" target_buffer: 0
    for_testing {{ message_count: {ALPHA_N} message_size: {ALPHA_SIZE} seed: {ALPHA_SEED}
                  max_messages_per_second: 5000 }}
  }}
  producer_name_filter: "alpha"
}}
# alpha and beta (gamma hosts it too, and is left out): into the DISCARD buffer.
data_sources {{
  config {{
    name: "synth.b" target_buffer: 1
    for_testing {{ message_count: {B_N} message_size: {B_SIZE} seed: {B_SEED} }}
  }}
  producer_name_regex_filter: "al.*"
  producer_name_regex_filter: "b[e]ta"
}}
# beta only: a track_event timeline, into the DISCARD buffer.
data_sources {{
  config {{
    name: "tracebus.demo_timeline" target_buffer: 1
    for_testing {{ message_count: {FRAMES} max_messages_per_second: 250 }}
  }}
  producer_name_filter: "beta"
}}
# gamma: two synthetic sources, 3.6 and 1.4 MB/s through an 8 KiB SMB: it drops.
data_sources {{
  config {{
    name: "tracebus.synthetic" target_buffer: 0
    for_testing {{ message_count: {GAMMA_N} message_size: {GAMMA_SIZE} seed: {GAMMA_SEED}
                  max_messages_per_second: {GAMMA_RATE} }}
  }}
  producer_name_filter: "gamma"
}}
data_sources {{
  config {{
    name: "gamma.b" target_buffer: 0
    for_testing {{ message_count: {GAMMA_B_N} message_size: {GAMMA_B_SIZE} seed: {GAMMA_B_SEED}
                  max_messages_per_second: {GAMMA_B_RATE} }}
  }}
  producer_name_regex_filter: "g.*"
}}
duration_ms: 2500
"""


def check_track_event(trace: Trace, seq: int, pid: int, frames: int) -> None:
    """beta's timeline: descriptors first (incremental state cleared), then balanced
    nested slices per frame and a counter, timestamps not going backwards."""
    packets = [trace.packets[i] for i in trace.sequences[seq]]
    first = packets[0]
    assert first.HasField("track_descriptor") and first.track_descriptor.process.pid == pid
    assert first.sequence_flags & pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    assert first.first_packet_on_sequence
    process_uuid = first.track_descriptor.uuid
    thread = packets[1].track_descriptor
    assert thread.thread.pid == pid and thread.parent_uuid == process_uuid
    counter = packets[2].track_descriptor
    assert counter.HasField("counter") and counter.parent_uuid == process_uuid
    TE = pb.TrackEvent
    imported = import_track_events(packets)  # interned names resolved
    (events,) = imported.events.values()
    assert all(e.outcome is Outcome.RESOLVED for e in events)
    depth, counters, last_ts = 0, 0, 0
    begins: defaultdict[str | None, int] = defaultdict(int)
    for p, ev in zip(packets[3:], events, strict=True):
        assert p.HasField("track_event"), p
        assert p.timestamp >= last_ts
        last_ts = p.timestamp
        if ev.type == TE.TYPE_SLICE_BEGIN:
            assert ev.track_uuid == thread.uuid
            depth += 1
            begins[ev.name] += 1
        elif ev.type == TE.TYPE_SLICE_END:
            assert ev.track_uuid == thread.uuid
            depth -= 1
            assert depth >= 0
        else:
            assert ev.type == TE.TYPE_COUNTER and ev.track_uuid == counter.uuid
            counters += 1
        assert p.trusted_pid == pid and p.trusted_uid == UID
        assert not p.previous_packet_dropped
    assert depth == 0
    assert dict(begins) == {n: frames for n in ("frame", "update", "physics", "render")}
    assert counters == frames
    assert len(packets) == 3 + frames * 9


def test_three_producers_two_buffer_kinds_filters_and_drops(topo):
    # Started side by side, then each waited for until registered.
    alpha = topo.start_producer(
        "alpha", "--policy", "stall", "--data-source", "synth.b", wait=False
    )
    beta = topo.start_producer("beta", "--policy", "stall", "--data-source", "synth.b", wait=False)
    gamma = topo.start_producer(
        "gamma", "--smb-size-kb", "8", "--page-size-kb", "4", "--policy", "drop",
        "--data-source", "synth.b", "--data-source", "gamma.b", wait=False,
    )  # fmt: skip
    builtin = ("tracebus.synthetic", "tracebus.demo_timeline")
    topo.wait_registered(alpha, *builtin, "synth.b", name="alpha")
    topo.wait_registered(beta, *builtin, "synth.b", name="beta")
    topo.wait_registered(gamma, *builtin, "synth.b", "gamma.b", name="gamma")

    result, out = topo.record(TOPOLOGY_CONFIG, "topology", timeout=RUN_TIMEOUT)
    assert result.returncode == 0, f"{result.stderr}\n{topo.logs()}"
    trace = Trace.load(out)

    # The service's own packets: its pid and uid, trace_config once, trace_stats last.
    service = trace.service_packets()
    assert {p.trusted_pid for p in service} == {topo.service.pid}
    assert {p.trusted_uid for p in service} == {UID}
    assert sum(p.HasField("trace_config") for p in service) == 1
    assert service[-1] is trace.packets[-1] and trace.packets[-1].HasField("trace_stats")

    # Exactly the sequences the filters select, each from the right process.
    synth = synthetic_sequences(trace)
    assert set(synth) == {
        (alpha.pid, ALPHA_SEED),
        (alpha.pid, B_SEED),
        (beta.pid, B_SEED),
        (gamma.pid, GAMMA_SEED),
        (gamma.pid, GAMMA_B_SEED),
    }, f"unexpected (pid, seed) sequences: {sorted(synth)}"
    others = set(trace.producer_sequences()) - set(synth.values())
    assert len(others) == 1, "only beta's track_event sequence besides the synthetic ones"
    (te_seq,) = others
    assert trace.pid_of(te_seq) == beta.pid
    check_track_event(trace, te_seq, beta.pid, FRAMES)

    # The producers that do not drop: every packet once, in order, byte-identical.
    check_synthetic(
        trace, synth[alpha.pid, ALPHA_SEED], seed=ALPHA_SEED, count=ALPHA_N, size=ALPHA_SIZE
    )
    for pid in (alpha.pid, beta.pid):
        check_synthetic(trace, synth[pid, B_SEED], seed=B_SEED, count=B_N, size=B_SIZE)

    # gamma dropped (8 KiB SMB, drop policy, more than it can commit) and said so.
    stats = trace.stats()
    total_missing = 0
    for seed, count, size in [
        (GAMMA_SEED, GAMMA_N, GAMMA_SIZE),
        (GAMMA_B_SEED, GAMMA_B_N, GAMMA_B_SIZE),
    ]:
        seq = synth[gamma.pid, seed]
        counters = check_synthetic(trace, seq, seed=seed, count=count, size=size, complete=False)
        missing = count - len(counters)
        total_missing += missing
        # Every loss shows on the next packet that made it: the writer marks it
        # (SMB_FULL). The service may add an early mark: as Perfetto's TraceBuffer
        # V2, it flags the sequence when it copies a chunk holding the writer's
        # drop sentinel, and reports that on the next packet it reads.
        previous = 0
        for i, c in zip(trace.sequences[seq], counters, strict=True):
            marks = loss_marks(trace.raw[i])
            if c != previous + 1:
                assert LOSS_PRESENT | LOSS_SMB_FULL in marks, (seed, c, previous, marks)
            else:
                assert marks <= {LOSS_PRESENT | LOSS_WRITER_ABORT}, (seed, c, marks)
            previous = c
    assert total_missing > 0, "gamma was meant to drop packets"
    # ... and in trace_stats: what gamma's writers reported dropping is what is
    # missing (only gamma drops, and both its sources write into buffer 0).
    loss = stats.buffer_stats[0].trace_writer_packet_loss
    assert loss == total_missing, f"loss {loss}, missing {total_missing}"

    # Nothing was lost to the buffers themselves (they are large enough).
    assert len(stats.buffer_stats) == 2
    assert stats.buffer_stats[1].trace_writer_packet_loss == 0
    for b in stats.buffer_stats:
        assert b.chunks_overwritten == 0 and b.chunks_discarded == 0 and b.abi_violations == 0
    assert stats.invalid_packets == 0
    assert "losses: none" not in result.stderr  # the CLI's summary shows the losses


# -- 2. a 5 MiB packet through a 128 KiB SMB with the stall policy -------------------------

BIG = 5 * 1024 * 1024

BIG_MODULE = textwrap.dedent(
    '''
    """A custom data source: two packets of 5 MiB, one pre-encoded and one streamed
    with protozero (its nested size is patched after its chunk left)."""
    import base64
    import random
    import threading

    from actors.producer import DataSource
    from shm.protozero import LEN, tag, varint

    SIZE = 5 * 1024 * 1024


    def payload(seed):
        return base64.b64encode(random.Random(seed).randbytes(SIZE * 3 // 4))[:SIZE]


    class BigBlob(DataSource):
        name = "test.bigblob"
        will_notify_on_stop = True  # the service waits for the last commits

        def on_start(self, config):
            self.thread = threading.Thread(target=self.run)
            self.thread.start()

        def run(self):
            w = self.writer()
            body = tag(1, LEN) + varint(SIZE) + payload(1) + tag(3, 0) + varint(1)
            w.write_packet(tag(900, LEN) + varint(len(body)) + body)
            with w.new_packet() as packet:
                with packet.begin_nested(900) as event:
                    event.bytes_field(1, payload(2))
                    event.varint(3, 2)
            w.flush()

        def on_stop(self):
            self.thread.join()
    '''
)


def big_payload(seed: int) -> bytes:
    return base64.b64encode(random.Random(seed).randbytes(BIG * 3 // 4))[:BIG]


def test_a_5_mib_packet_larger_than_the_smb_round_trips_with_the_stall_policy(topo):
    topo.write_module("tb_bigblob", BIG_MODULE)
    big = topo.start_producer(
        "big", "--smb-size-kb", "128", "--policy", "stall", "--module", "tb_bigblob",
        data_sources=("test.bigblob",),
    )  # fmt: skip
    config = """
        buffers { size_kb: 32768 fill_policy: DISCARD }
        data_sources { config { name: "test.bigblob" } }
    """
    with Consumer.connect(topo.consumer_endpoint, timeout=5) as c:
        c.enable(config)

        def both_written() -> bool:
            c.flush(timeout=5)
            return c.stats().buffer_stats[0].bytes_written >= 2 * BIG

        wait_for(both_written, 30, "the two big packets to reach the buffer")
        assert c.flush(timeout=5)
        c.disable()
        c.wait_disabled(timeout=10)
        out = topo.dir / "big.pftrace"
        c.save(out)
        c.free()
    trace = Trace.load(out)
    seqs = list(trace.producer_sequences())
    assert len(seqs) == 1
    packets = trace.sequences[seqs[0]]
    assert len(packets) == 2
    for n, i in enumerate(packets, start=1):
        p, raw = trace.packets[i], trace.raw[i]
        assert p.trusted_pid == big.pid and p.trusted_uid == UID
        assert not p.previous_packet_dropped
        body = tag(1, LEN) + varint(BIG) + big_payload(n) + tag(3, 0) + varint(n)
        if n == 1:
            expected = tag(900, LEN) + varint(len(body)) + body
        else:  # the streamed one: its size is a 4-byte redundant varint, backfilled
            size4 = bytes(
                [(len(body) >> s) & 0x7F | (0x80 if s < 21 else 0) for s in (0, 7, 14, 21)]
            )
            expected = tag(900, LEN) + size4 + body
        assert raw[: len(expected)] == expected, f"big packet {n} differs"
        allowed = TRUSTED | ({"first_packet_on_sequence"} if n == 1 else set())
        assert tail_fields(raw, len(expected)) <= allowed
        assert p.for_testing.counter == n and len(p.for_testing.str) == BIG
    stats = trace.stats().buffer_stats[0]
    assert stats.trace_writer_packet_loss == 0 and stats.patches_failed == 0


# -- 3. two sessions at once over the same producers ------------------------------------------

SESSION_A = dict(seed=7, count=400, size=50, rate=400)
SESSION_B = dict(seed=8, count=700, size=80, rate=700)


def session_config(seed: int, count: int, size: int, rate: int) -> str:
    return f"""
        buffers {{ size_kb: 4096 fill_policy: RING_BUFFER }}
        data_sources {{
          config {{
            name: "tracebus.synthetic"
            for_testing {{ message_count: {count} message_size: {size} seed: {seed}
                          max_messages_per_second: {rate} }}
          }}
        }}
        duration_ms: 1800
    """


def test_two_sessions_from_two_consumers_each_get_exactly_their_own_packets(topo):
    p1 = topo.start_producer("p1", "--policy", "stall", wait=False)
    p2 = topo.start_producer("p2", "--policy", "stall", wait=False)
    for proc, name in ((p1, "p1"), (p2, "p2")):
        topo.wait_registered(proc, "tracebus.synthetic", "tracebus.demo_timeline", name=name)
    # Session B through the script API in this process, session A through the CLI.
    with Consumer.connect(topo.consumer_endpoint, timeout=5, name="b") as b:
        b.enable(session_config(**SESSION_B))
        cli, out_a = topo.start_record(session_config(**SESSION_A), "a")  # stopped by topo
        b.wait_disabled(timeout=RUN_TIMEOUT)
        out_b = topo.dir / "b.pftrace"
        b.save(out_b)
        b.free()
        _, err = topo.communicate(cli, timeout=RUN_TIMEOUT)
    assert cli.returncode == 0, f"{err}\n{topo.logs()}"
    traces = {"a": Trace.load(out_a), "b": Trace.load(out_b)}

    # They ran at the same time.
    a, b_ = traces["a"], traces["b"]
    assert a.service_event_ts("tracing_started") < b_.service_event_ts("tracing_disabled")
    assert b_.service_event_ts("tracing_started") < a.service_event_ts("tracing_disabled")

    for name, params in (("a", SESSION_A), ("b", SESSION_B)):
        trace = traces[name]
        synth = synthetic_sequences(trace)
        seed = params["seed"]
        assert set(synth) == {(p1.pid, seed), (p2.pid, seed)}, (name, sorted(synth))
        assert set(trace.producer_sequences()) == set(synth.values())
        for seq in synth.values():
            check_synthetic(trace, seq, seed=seed, count=params["count"], size=params["size"])
        stats = trace.stats()
        assert stats.buffer_stats[0].trace_writer_packet_loss == 0


# -- 4. the worked example ---------------------------------------------------------------------


def documented_command(config: Path) -> list[str]:
    """The record command the example config documents in its header."""
    for line in config.read_text().splitlines():
        m = re.match(r"#\s+(python -m actors\.consumer .*)", line)
        if m:
            return shlex.split(m.group(1))
    raise AssertionError(f"{config} documents no `python -m actors.consumer` command")


def test_the_worked_example_records_against_a_service_and_a_producer(topo):
    producer = topo.start_producer("example")
    cmd = documented_command(REPO / "examples" / "configs" / "synthetic.pbtxt")
    assert cmd[:3] == ["python", "-m", "actors.consumer"]
    out = topo.dir / "synthetic.pftrace"
    cmd = [PYTHON, *cmd[1:]]
    cmd[cmd.index("-o") + 1] = str(out)
    # Exactly as documented: the service is found through the environment.
    env = {"TRACEBUS_CONSUMER_SOCK": topo.consumer_endpoint}
    result = topo.run(cmd, env, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, f"{result.stderr}\n{topo.logs()}"
    assert "example" in result.stderr  # the summary names the producer

    trace = Trace.load(out)
    synth = synthetic_sequences(trace)
    assert set(synth) == {(producer.pid, 42)}
    check_synthetic(trace, synth[producer.pid, 42], seed=42, count=1000, size=64)
    track = set(trace.producer_sequences()) - set(synth.values())
    assert len(track) == 1 and trace.pid_of(track.pop()) == producer.pid
    assert trace.packets[-1].HasField("trace_stats")

    # SIGTERM: every actor exits 0 and the service removes its socket files.
    assert topo.stop(producer) == 0
    assert topo.stop(topo.service) == 0
    assert not (topo.dir / "p").exists() and not (topo.dir / "c").exists()
