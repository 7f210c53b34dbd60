"""Hostile producers against the service's limits, with real processes: the
service (`python -m actors.service`, or the supervisor's), raw ZeroMQ producers
that speak the protocol themselves (`python -m tests.raw_producer`), and
consumers here.

- writer stats of 2^64-1 from two writers: the drop count saturates, and the
  stats report and read-back still work (they raised "Value out of range");
- a data source unregistered and registered again 2,000 times: one instance;
- commits naming 300,000 chunks each: the service looks at as many as the SMB
  holds and counts the rest;
- 8,200 instances whose stop times out: the end reply lists what fits;
- 20,000 data sources with 256-character names: refused past
  max_data_sources_per_producer, counted, and query_state answers every consumer;
  with the limit raised past them, the reply is cut to the frame cap and says so,
  and the supervisor's readiness probe still sees a producer attached after;
- unprintable names, descriptors padded with unknown fields, SMB bytes per
  process and producers per uid: refused or cleaned, counted, the service up.

Every process runs through tests/processes.py (fixture `rt`): it is stopped and
reaped, and its runtime directory removed, whatever the test's outcome.
"""

from __future__ import annotations

import sys
import textwrap
import time

import pytest

from actors.core.limits import DEFAULT_LIMITS
from actors.core.producer_port import MAX_NAME_LENGTH
from protos.framing import MAX_FRAME_BYTES
from shm.abi import DEFAULT_PAGE_SIZE, MAX_CHUNKS_PER_PAGE
from tests.processes import Proc, Runtime
from tests.raw_producer import FLOOD_MOVES
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

U64_MAX = (1 << 64) - 1
RAW_DS = "raw.ds"
SESSION = f'buffers {{ size_kb: 256 }} data_sources {{ config {{ name: "{RAW_DS}" }} }}'


def start_raw(rt: Runtime, label: str, endpoint: str, *steps: str) -> Proc:
    """A raw producer on `endpoint` doing `steps` (see tests/raw_producer.py); its
    stdout is read as lines. It stays connected until its stdin closes."""
    return rt.spawn(label, ["-m", "tests.raw_producer", endpoint, *steps], lines=True)


def test_writer_stats_at_u64_max_saturate(rt: Runtime) -> None:
    """Two writers each claiming 2^64-1 dropped packets: the buffer's loss count
    stops at 2^64-1; GetTraceStats and ReadBuffers answer, the service stays up."""
    rt.start_service()
    raw = start_raw(rt, "raw", rt.producer_endpoint, f"register:{RAW_DS}", "start", "u64stats")
    rt.wait_line(raw, "registered")
    consumer = rt.consumer()
    consumer.enable(SESSION)
    rt.wait_line(raw, "sent u64stats", timeout=30)

    def saturated() -> bool:
        return consumer.stats().buffer_stats[0].trace_writer_packet_loss == U64_MAX

    wait_for(saturated, 20, "the writers' drop count in the buffer's stats")
    consumer.disable()
    packets = list(consumer.read_packets(timeout=10))
    stats = [p.trace_stats for p in packets if p.HasField("trace_stats")]
    assert len(stats) == 1
    assert stats[0].buffer_stats[0].trace_writer_packet_loss == U64_MAX
    # The same report again: the sums did not overflow the first time either.
    assert consumer.stats().buffer_stats[0].trace_writer_packet_loss == U64_MAX
    assert rt.control.query_state(timeout=5).producers
    rt.assert_running(rt.service, "the service")


def test_a_data_source_unregistered_leaves_its_sessions(rt: Runtime) -> None:
    """Unregistering and registering a data source 2,000 times while a session wants
    it leaves one instance of it in the session, not 2,001 (each flush, stop and
    observer walks them all)."""
    rt.start_service()
    steps = (f"register:{RAW_DS}", "start", "churn:2000", "flushwait")
    raw = start_raw(rt, "raw", rt.producer_endpoint, *steps)
    rt.wait_line(raw, "registered")
    consumer = rt.consumer()
    consumer.enable(SESSION)
    rt.wait_line(raw, "churned", timeout=60)
    assert not consumer.flush(timeout=0.5)  # it never acks
    assert rt.wait_line(raw, "flush") == "flush instances 1"
    rt.assert_running(rt.service, "the service")


def test_a_commit_names_at_most_the_chunks_of_the_smb(rt: Runtime) -> None:
    """Commits each naming 300,000 chunks of a 1 MiB SMB: the service looks at as
    many as the SMB holds and counts the rest as discarded chunks, in bounded time."""
    rt.start_service()
    raw = start_raw(rt, "raw", rt.producer_endpoint, f"register:{RAW_DS}", "start", "flood:6")
    consumer = rt.consumer()
    consumer.enable(SESSION)
    rt.wait_line(raw, "sent flood", timeout=60)
    held = (1 << 20) // DEFAULT_PAGE_SIZE * MAX_CHUNKS_PER_PAGE
    expected = 6 * (FLOOD_MOVES - held)
    wait_for(lambda: consumer.stats().chunks_discarded == expected, 30, "the flood counted")
    started = time.monotonic()
    assert rt.control.query_state(timeout=5).producers
    assert time.monotonic() - started < 1.0
    rt.assert_running(rt.service, "the service")


def test_the_end_of_a_session_fits_in_a_frame_whatever_timed_out(rt: Runtime) -> None:
    """Four producers of 256-character names, each with 2,050 instances of a data
    source of a 256-character name, never ack their stop: the names would make a
    4.2 MB end reply (past the frame cap); the consumer gets the first ones, then
    how many more, and its session's end. (Four producers, so that none is sent
    more than the service queues for one peer: setup, start and stop of each.)"""
    rt.start_service()
    name = "d" * 256
    raw = start_raw(rt, "raw", rt.producer_endpoint, *[f"stubborn:{name}"] * 4)
    rt.wait_line(raw, "done")
    entry = f'data_sources {{ config {{ name: "{name}" }} }} '
    config = "buffers { size_kb: 64 } data_source_stop_timeout_ms: 300 " + entry * 2050
    consumer = rt.consumer()
    consumer.enable(config, timeout=30)
    consumer.disable(timeout=30)
    timed_out = consumer.stop_timed_out
    assert len(timed_out) > 500
    assert set(timed_out[:-1]) == {"s" * 256 + "/" + name}
    assert timed_out[-1] == f"... and {8200 - len(timed_out) + 1} more"
    rt.assert_running(rt.service, "the service")


def test_twenty_thousand_data_sources_are_refused_past_the_limit(rt: Runtime) -> None:
    rt.start_service()
    raw = start_raw(rt, "hog", rt.producer_endpoint, "many:20000")
    line = rt.wait_line(raw, "registered", timeout=90)
    limit = DEFAULT_LIMITS.max_data_sources_per_producer
    assert line == f"registered {limit} refused {20000 - limit}", line
    for consumer in (rt.control, rt.consumer(), rt.consumer()):
        state = consumer.query_state(timeout=5)
        assert not state.truncated
        assert len(state.data_sources) == limit
        assert state.refusals["max_data_sources_per_producer"] == 20000 - limit
        assert all(len(d.descriptor.name) == MAX_NAME_LENGTH for d in state.data_sources)
    rt.assert_running(rt.service, "the service")


def test_a_state_past_the_frame_cap_is_truncated_and_still_answered(rt: Runtime) -> None:
    """With the limit raised, 20,000 names of 256 characters make a state of about
    5.5 MB: the reply is cut below the frame cap, says so, and lists every producer."""
    rt.start_service("--max-data-sources-per-producer", "30000")
    hog = start_raw(rt, "hog", rt.producer_endpoint, "many:20000")
    assert rt.wait_line(hog, "registered", timeout=90) == "registered 20000 refused 0"
    late = rt.start_producer("late")
    for consumer in (rt.control, rt.consumer()):
        state = consumer.query_state(timeout=10)
        assert state.truncated
        assert state.ByteSize() < MAX_FRAME_BYTES
        assert 10_000 < len(state.data_sources) < 20_000
        assert {p.pid for p in state.producers} == {hog.pid, late.pid}
    rt.assert_running(rt.service, "the service")


SUPERVISED = """
runtime_dir: run
stop_when: never
service:
  limits:
    max_data_sources_per_producer: 30000
producers:
  - name: base
    builtin: []
"""


def test_supervisor_readiness_probe_past_the_frame_cap(rt: Runtime) -> None:
    """The supervisor's readiness probe reads the service state: a producer attached
    after a hog filled it past the frame cap still registers."""
    topology = rt.write_file("topology.yaml", textwrap.dedent(SUPERVISED).lstrip())
    supervisor = rt.start_supervisor(topology)
    rt.wait_output(supervisor, r"base#1 registered")
    hog = start_raw(rt, "hog", f"ipc://{rt.dir}/run/producer.sock", "many:20000")
    assert rt.wait_line(hog, "registered", timeout=90) == "registered 20000 refused 0"
    control = f"ipc://{rt.dir}/run/control.sock"
    ctl = rt.run([sys.executable, "-m", "launch.ctl", "--control", control, "attach", "late"])
    assert ctl.returncode == 0, ctl.stderr
    rt.wait_output(supervisor, r"late#1 registered")
    assert "cannot ask the service for its state" not in rt.output(supervisor)
    assert "did not register" not in rt.output(supervisor)


def test_names_are_cleaned_and_unknown_fields_dropped(rt: Runtime) -> None:
    rt.start_service()
    raw = start_raw(rt, "raw", rt.producer_endpoint, "badnames")
    assert rt.wait_line(raw, "badnames") == "badnames refused 3 padded ok"
    state = rt.control.query_state(timeout=5)
    (producer,) = [p for p in state.producers if p.pid == raw.pid]
    assert producer.name == "evil?[31m?" + "x" * (MAX_NAME_LENGTH - 10)
    (source,) = [d for d in state.data_sources if d.producer_id == producer.id]
    assert source.descriptor.name == "padded"
    # The 1 MiB of unknown fields it sent with the descriptor was not kept.
    assert state.ByteSize() < 64 << 10


@pytest.mark.parametrize("limit", ["max_smb_bytes_per_process", "max_smb_bytes_per_uid"])
def test_smb_bytes_are_limited(rt: Runtime, limit: str) -> None:
    """Two connections of one process each ask for a 32 MiB SMB under a 48 MiB
    limit: the second gets an error naming the limit and no SMB; the first records."""
    rt.start_service("--" + limit.replace("_", "-"), str(48 << 20))
    raw = start_raw(rt, "raw", rt.producer_endpoint, "twosmbs")
    rt.wait_line(raw, "registered")
    consumer = rt.consumer()
    consumer.enable(SESSION)
    line = rt.wait_line(raw, "smbs", timeout=30)
    assert line == f"smbs 1 error {limit}", line
    state = rt.control.query_state(timeout=5)
    assert state.refusals[limit] == 1
    rt.assert_running(rt.service, "the service")


def test_producers_per_uid_are_limited(rt: Runtime) -> None:
    rt.start_service("--max-producers-per-uid", "3")
    raw = start_raw(rt, "raw", rt.producer_endpoint, "connections:5")
    line = rt.wait_line(raw, "connections", timeout=30)
    assert line == "connections 3 refused 2 max_producers_per_uid", line
    assert rt.control.query_state(timeout=5).refusals["max_producers_per_uid"] == 2
    rt.assert_running(rt.service, "the service")


def test_a_config_with_a_name_that_is_not_utf8_is_refused_and_the_service_lives(
    rt: Runtime,
) -> None:
    """Perfetto's schema is proto2: its parser gives a string that is not UTF-8 as
    bytes. A config naming a data source so once ended the service (the chaos soak
    found it); it is refused with the field named."""
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    from actors.core.consumer_core import ConsumerError

    rt.start_service()
    config = pb.TraceConfig()
    config.buffers.add(size_kb=64)
    config.data_sources.add().config.name = "ab"
    hostile = pb.TraceConfig.FromString(config.SerializeToString().replace(b"ab", b"a\x80"))
    with pytest.raises(ConsumerError, match="data_sources.config.name is not valid UTF-8"):
        rt.consumer().enable(hostile)
    assert rt.consumer().query_state().refusals is not None  # still answers
