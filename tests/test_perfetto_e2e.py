"""End to end: the service with its Perfetto sockets, the Perfetto client double
(tests/perfetto_client.py) on them, and tracebus's own producers and consumers
on ZeroMQ, all in one service (tests/processes.py Runtime: real processes,
cleaned up whatever happens).

- One session, recorded by a tracebus consumer, holds a Perfetto producer's
  packets and a Python producer's, each under its own trusted pid and its own
  sequence ids, with nothing lost (TraceStats), and a flush acked by the
  Perfetto producer.
- A Perfetto consumer records a session Python producers wrote: every packet
  read back, reassembled from slices, the session's end reported once.
- A Perfetto producer killed mid-session (SIGKILL: no goodbye) leaves its
  committed packets in the trace and the session going on.
- A Perfetto consumer's write_into_file session with the file's fd attached to
  EnableTracing (the perfetto command line's way) gets the whole trace in it.
- A Perfetto consumer that asks for a read-back and takes none of it is given up
  on after the peer send timeout; its session is freed.

The double producer of the first test runs in a thread of this process (it
answers the service while the consumer blocks); its trusted pid is this
process's. The killed one is a process of its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import text_format
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.consumer_summary import BUFFER_LOSSES, SERVICE_LOSSES
from actors.data_sources import synthetic_str
from tests.perfetto_client import PerfettoConsumer, PerfettoProducer, double_packet
from tests.processes import Runtime
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0
DOUBLE_PACKETS = 3000
SYNTH_SEED, SYNTH_COUNT, SYNTH_SIZE, SYNTH_RATE = 7, 2000, 200, 4000


def session_config(*, track_event: bool = True, buffer_kb: int = 8192) -> pb.TraceConfig:
    """One DISCARD buffer, the synthetic source of Python producers, and (if asked)
    track_event, which only the Perfetto double registers."""
    text = f"""
        buffers {{ size_kb: {buffer_kb} fill_policy: DISCARD }}
        data_sources {{ config {{ name: "tracebus.synthetic" for_testing {{
            seed: {SYNTH_SEED} message_count: {SYNTH_COUNT} message_size: {SYNTH_SIZE}
            max_messages_per_second: {SYNTH_RATE} }} }} }}
    """
    if track_event:
        text += 'data_sources { config { name: "track_event" } }'
    return text_format.Parse(text, pb.TraceConfig())


@pytest.fixture
def pf(rt: Runtime) -> tuple[Runtime, str, str]:
    """The runtime with a service serving Perfetto's sockets; (rt, producer socket,
    consumer socket)."""
    producer_sock, consumer_sock = str(rt.dir / "pf-p"), str(rt.dir / "pf-c")
    rt.start_service(
        "--perfetto-producer-socket", producer_sock, "--perfetto-consumer-socket", consumer_sock
    )
    wait_for(lambda: Path(producer_sock).exists() and Path(consumer_sock).exists(), WAIT, "sockets")
    return rt, producer_sock, consumer_sock


def losses(stats: pb.TraceStats) -> dict[str, int]:
    """Every loss counter that is not zero."""
    found = {k: getattr(stats, k) for k in SERVICE_LOSSES if getattr(stats, k)}
    for i, buf in enumerate(stats.buffer_stats):
        found |= {f"{i}.{k}": getattr(buf, k) for k in BUFFER_LOSSES if getattr(buf, k)}
    return found


def by_pid(packets: list[pb.TracePacket], prefix: str) -> Counter[int]:
    return Counter(p.trusted_pid for p in packets if p.for_testing.str.startswith(prefix))


def start_python_producer(rt: Runtime) -> subprocess.Popen[str]:
    """alpha: a tracebus Python producer whose writers stall rather than drop
    (the synthetic source writes faster than its SMB drains on a loaded machine)."""
    return rt.start_producer("alpha", "--policy", "stall")


def synthetic_written(rt: Runtime, name: str) -> bool:
    """The Python producer's synthetic source logged that it wrote all its packets."""
    log = (rt.dir / f"{name}.log").read_text()
    return str(SYNTH_COUNT) in LOG_WROTE.findall(log)


LOG_WROTE = re.compile(r"tracebus\.synthetic instance \d+: wrote (\d+) packets")


def synthetic_strs() -> set[str]:
    return {synthetic_str(SYNTH_SEED, i, SYNTH_SIZE).decode() for i in range(1, SYNTH_COUNT + 1)}


class DoubleThread:
    """A PerfettoProducer driven by a thread: once its instance started, `script`
    writes (and may close it); then it answers the service (flushes, the stop)
    until stopped or closed. The object is the thread's until join()."""

    def __init__(self, path: str, script: Callable[[PerfettoProducer, int], None]) -> None:
        self.producer = PerfettoProducer(path, "perfetto-double", timeout=WAIT).connect()
        self.script = script
        self.written = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        producer = self.producer
        try:
            producer.wait_until(lambda: producer.started, WAIT, "the double's instance")
            self.script(producer, next(iter(producer.started)))
            self.written.set()
            if producer.region is not None:  # the script did not close it
                producer.serve(lambda: not producer.started, WAIT)
        except BaseException as e:
            self.error = e
            producer.close()  # unmapped here: the runtime checks that no SMB stays mapped
            self.written.set()

    def wait_written(self) -> None:
        assert self.written.wait(WAIT), "the double did not write"
        if self.error is not None:
            raise self.error

    def join(self) -> PerfettoProducer:
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the double did not see its stop"
        if self.error is not None:
            raise self.error
        return self.producer


def write_in_commits(producer: PerfettoProducer, iid: int) -> None:
    """DOUBLE_PACKETS packets in commits of 500, then one whose size is patched."""
    for start in range(0, DOUBLE_PACKETS, 500):
        producer.write_packets(
            iid, (double_packet("double", i, 40) for i in range(start, start + 500))
        )
        producer.flush_writers()
    producer.write_spanning_packet(iid, "double spanning", 20_000)
    producer.flush_writers()


def write_then_vanish(producer: PerfettoProducer, iid: int) -> None:
    """Half the packets committed, half only written (some chunks complete, the
    last one still being written, nothing said of them), then the socket closes."""
    producer.write_packets(iid, (double_packet("double", i, 40) for i in range(500)))
    producer.flush_writers()
    producer.write_packets(iid, (double_packet("double", i, 40) for i in range(500, 1000)))
    producer.close()


def test_one_session_records_a_perfetto_producer_and_a_python_producer(pf) -> None:
    rt, producer_sock, _ = pf
    double = DoubleThread(producer_sock, write_in_commits)
    try:
        python = start_python_producer(rt)
        consumer = rt.consumer()
        consumer.enable(session_config())
        double.wait_written()
        wait_for(lambda: synthetic_written(rt, "alpha"), WAIT, "alpha's packets written")
        assert consumer.flush(timeout=10.0), "a flush every producer acked"
        consumer.disable()
        consumer.wait_disabled(timeout=WAIT)
        producer = double.join()
        packets = list(consumer.read_packets())
        stats = consumer.stats()
    finally:
        double.producer.close()

    assert producer.flushes and producer.flushes_acked == producer.flushes
    ours = [p for p in packets if p.for_testing.str.startswith("double #")]
    assert sorted(p.for_testing.seq_value for p in ours) == list(range(DOUBLE_PACKETS))
    assert by_pid(packets, "double") == {os.getpid(): DOUBLE_PACKETS + 1}
    spanning = [p for p in packets if p.for_testing.str.startswith("double spanning")]
    assert len(spanning[0].for_testing.str) == len("double spanning") + 20_000
    theirs = [p for p in packets if p.for_testing.str in synthetic_strs()]
    assert len(theirs) == SYNTH_COUNT
    assert {p.trusted_pid for p in theirs} == {python.pid}
    assert {p.trusted_uid for p in ours + theirs} == {os.getuid()}
    double_seqs = {p.trusted_packet_sequence_id for p in ours}
    python_seqs = {p.trusted_packet_sequence_id for p in theirs}
    assert len(double_seqs) == 1 and not double_seqs & python_seqs
    assert losses(stats) == {}


def test_a_perfetto_consumer_reads_a_session_python_producers_wrote(pf) -> None:
    rt, _, consumer_sock = pf
    python = start_python_producer(rt)
    consumer = PerfettoConsumer(consumer_sock, timeout=WAIT).connect()
    try:
        state = consumer.query_service_state()
        alpha = {p.name: p for p in state.producers}["alpha"]
        assert alpha.uid == os.getuid()
        offered = {d.ds_descriptor.name for d in state.data_sources if d.producer_id == alpha.id}
        assert "tracebus.synthetic" in offered
        consumer.observe_events()
        consumer.enable_tracing(session_config(track_event=False))
        consumer.wait_until(lambda: consumer.all_started, WAIT, "all data sources started")
        read: list[bytes] = []

        def everything_read() -> bool:
            assert consumer.flush(5000), "the flush failed"
            read.extend(consumer.read_buffers().packets)
            return sum(s.startswith(f"{SYNTH_SEED}:") for s in strs(read)) >= SYNTH_COUNT

        wait_for(everything_read, WAIT, "every synthetic packet read")
        consumer.disable_tracing()
        ended = consumer.wait_tracing_disabled(WAIT)
        read.extend(consumer.read_buffers().packets)
        stats = consumer.get_trace_stats()
        consumer.free_buffers()
    finally:
        consumer.close()

    assert ended.disabled and not ended.error
    packets = [pb.TracePacket.FromString(p) for p in read]
    theirs = [p for p in packets if p.for_testing.str in synthetic_strs()]
    assert len(theirs) == SYNTH_COUNT
    assert {p.trusted_pid for p in theirs} == {python.pid}
    states = consumer.instance_states()
    assert ("alpha", "tracebus.synthetic", 2) in states
    assert losses(stats) == {}


def strs(packets: list[bytes]) -> list[str]:
    return [pb.TracePacket.FromString(p).for_testing.str for p in packets]


def test_a_killed_perfetto_producer_leaves_its_packets_and_the_session_goes_on(pf) -> None:
    rt, producer_sock, _ = pf
    argv = ["-m", "tests.perfetto_client", "producer", producer_sock, "doomed", "1000", "40"]
    doomed = rt.spawn("doomed", argv, lines=True)
    wait_for(lambda: _double_registered(rt, "doomed"), WAIT, "the doomed producer registered")
    python = start_python_producer(rt)
    consumer = rt.consumer()
    consumer.enable(session_config())
    rt.wait_line(doomed, "wrote 1000", timeout=WAIT)
    wait_for(lambda: synthetic_written(rt, "alpha"), WAIT, "alpha's packets written")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(WAIT)
    wait_for(lambda: not _double_registered(rt, "doomed"), WAIT, "the service to see it gone")
    assert consumer.flush(timeout=10.0)  # the survivors ack
    consumer.disable()
    consumer.wait_disabled(timeout=WAIT)
    packets = list(consumer.read_packets())

    assert by_pid(packets, "doomed") == {doomed.pid: 1000}
    theirs = [p for p in packets if p.for_testing.str in synthetic_strs()]
    assert {p.trusted_pid for p in theirs} == {python.pid}
    assert len(theirs) == SYNTH_COUNT
    rt.assert_running(rt.service, "the service")


def _double_registered(rt: Runtime, name: str) -> bool:
    state = rt.control.query_state(timeout=5)
    return any(p.name == name for p in state.producers)


def test_a_perfetto_producer_that_vanishes_keeps_what_it_wrote(pf) -> None:
    """Its socket closes mid-session with chunks written but never committed: the
    service scrapes them from the SMB, as it does for a ZeroMQ producer."""
    rt, producer_sock, _ = pf
    double = DoubleThread(producer_sock, write_then_vanish)
    python = start_python_producer(rt)
    consumer = rt.consumer()
    consumer.enable(session_config())
    double.wait_written()
    double.join()
    wait_for(lambda: not _double_registered(rt, "perfetto-double"), WAIT, "the double gone")
    wait_for(lambda: synthetic_written(rt, "alpha"), WAIT, "alpha's packets written")
    assert consumer.flush(timeout=10.0)
    consumer.disable()
    consumer.wait_disabled(timeout=WAIT)
    packets = list(consumer.read_packets())

    ours = [p for p in packets if p.for_testing.str.startswith("double #")]
    assert sorted(p.for_testing.seq_value for p in ours) == list(range(1000))
    assert by_pid(packets, "double") == {os.getpid(): 1000}
    assert by_pid(packets, f"{SYNTH_SEED}:") == {python.pid: SYNTH_COUNT}
    assert losses(consumer.stats()) == {}


def test_a_perfetto_consumer_s_fd_receives_a_write_into_file_trace(pf, tmp_path: Path) -> None:
    """The perfetto command line's way: write_into_file without output_path, the
    trace file's fd attached to EnableTracing. The service writes the trace into
    that file (it never opens a path), the whole of it by the session's end."""
    rt, _, consumer_sock = pf
    python = start_python_producer(rt)
    config = session_config(track_event=False)
    config.write_into_file = True
    config.file_write_period_ms = 100
    config.duration_ms = 1500
    out = tmp_path / "cli.pftrace"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    consumer = PerfettoConsumer(consumer_sock, timeout=WAIT).connect()
    try:
        consumer.enable_tracing(config, fd)
        os.close(fd)  # the service holds its own copy
        fd = -1
        ended = consumer.wait_tracing_disabled(WAIT)
    finally:
        if fd >= 0:
            os.close(fd)
        consumer.close()
    assert ended.disabled and not ended.error
    trace = pb.Trace.FromString(out.read_bytes())
    theirs = [p for p in trace.packet if p.for_testing.str in synthetic_strs()]
    assert {p.trusted_pid for p in theirs} == {python.pid}
    assert len(theirs) == SYNTH_COUNT  # everything the producer wrote, in the file
    stats = [p.trace_stats for p in trace.packet if p.HasField("trace_stats")]
    assert stats and losses(stats[-1]) == {}
    assert not list(rt.dir.glob("*.pftrace"))  # no file of its own anywhere


def test_a_perfetto_consumer_that_stops_reading_is_given_up_on(rt: Runtime) -> None:
    """A Perfetto consumer asks for a read-back of megabytes and takes none of it (a
    stopped process, a debugger): the service gives up on it after the peer send
    timeout, frees its session, and answers its other peers all along."""
    consumer_sock = str(rt.dir / "pf-c")
    rt.start_service("--perfetto-consumer-socket", consumer_sock, "--peer-send-timeout-s", "1")
    rt.start_producer("alpha", "--policy", "stall")
    config = text_format.Parse(
        """
        buffers { size_kb: 16384 fill_policy: DISCARD }
        data_sources { config { name: "tracebus.synthetic" for_testing {
            seed: 7 message_count: 3000 message_size: 4000 } } }
        """,
        pb.TraceConfig(),
    )
    consumer = PerfettoConsumer(consumer_sock, timeout=WAIT).connect()
    try:
        consumer.enable_tracing(config)
        state = lambda: rt.control.query_state(timeout=5)  # noqa: E731
        wait_for(lambda: _synthetic_done(rt), WAIT, "the producer wrote its 12 MB")
        assert consumer.flush(5000)
        consumer.open_stream("ReadBuffers", b"", lambda reply: None)  # and never read
        wait_for(lambda: state().peers_given_up.consumers == 1, WAIT, "the consumer given up on")
        wait_for(lambda: not state().sessions, WAIT, "its session freed")
    finally:
        consumer.close()
    assert rt.control.query_state(timeout=5).producers  # the service serves on


def _synthetic_done(rt: Runtime) -> bool:
    return "wrote 3000 packets" in (rt.dir / "alpha.log").read_text()
