"""A service that never waits on a peer (issue 8, item 7), with real processes
through the harness (tests/processes.py, fixture `rt`):

- test_stopped_producer_is_given_up_and_reconnects: SIGSTOP a producer in a
  session with flush_period_ms 100; another consumer is answered within 1 s
  throughout, another producer keeps committing, the stopped one is disconnected
  (its SMB released) and counted, the session ends on time; after SIGCONT it
  reconnects.
- test_consumer_that_stops_reading_is_given_up: a raw consumer connection that
  never reads while the service answers it; its queue stalls, it is given up,
  its session freed, and later requests are answered "reconnect".
- test_stopped_consumer_is_given_up_and_its_session_freed: SIGSTOP the record
  CLI mid-session.
- test_sigterm_with_stopped_peers: the service exits within its shutdown
  timeout while a producer and a consumer are stopped.

Stopped processes are always continued in a `finally` (the harness's SIGTERM
would otherwise wait out its grace period on them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import zmq

from actors.core import reports
from actors.data_sources import seq_values
from launch.topology_parser import load_topology
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from tests.processes import Runtime, smb_inodes_mapped
from tests.test_integration_faults import by_pid, session_config, synthetic_source
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

SEND_TIMEOUT_S = 2.0  # the service's --peer-send-timeout-s in these tests
ANSWER_S = 1.0  # every query to the service is answered within this
# Giving up on a stopped peer takes the heartbeat timeout (SEND_TIMEOUT_S) plus
# up to one heartbeat interval and one periodic flush; a loaded CI machine adds more.
GIVE_UP_WITHIN_S = SEND_TIMEOUT_S + 6.0


@contextmanager
def stopped(proc: subprocess.Popen) -> Iterator[None]:
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)


def timed_state(rt: Runtime) -> ipc.QueryServiceStateResponse:
    """The service state, asserting it came within ANSWER_S."""
    start = time.monotonic()
    state = rt.control.query_state(timeout=5)
    took = time.monotonic() - start
    assert took < ANSWER_S, f"query_service_state took {took:.2f} s"
    return state


def serve_until(rt: Runtime, condition, timeout: float, what: str):
    """Poll the service state until `condition(state)` holds, every answer timed;
    that state."""

    def check() -> ipc.QueryServiceStateResponse | None:
        state = timed_state(rt)
        return state if condition(state) else None

    return wait_for(check, timeout, what)


def test_peers_given_up_in_the_service_state_report():
    given_up = reports.PeersGivenUp(producers=1, consumers=2, messages_dropped=3)
    reply = reports.service_state([], [], uid=0, given_up=given_up)
    assert reply.peers_given_up.producers == 1
    assert reply.peers_given_up.consumers == 2
    assert reply.peers_given_up.messages_dropped == 3
    assert reply.peers_given_up.messages_refused == 0


@pytest.mark.slow  # about 10 s: kept out of the edit loop, CI runs it
def test_stopped_producer_is_given_up_and_reconnects(rt: Runtime):
    service = rt.start_service("--peer-send-timeout-s", str(SEND_TIMEOUT_S))
    steady = rt.start_producer("steady", "--page-size-kb", "4", wait=False)
    victim = rt.start_producer("victim", "--page-size-kb", "4", wait=False)
    rt.wait_registered(steady, "tracebus.synthetic")
    rt.wait_registered(victim, "tracebus.synthetic")
    size, seed_s, seed_v = 32, 5, 6
    duration_s = 8.0
    config = session_config(
        synthetic_source("steady", 10**6, seed_s, size, rate=1500, buf=0),
        synthetic_source("victim", 10**6, seed_v, size, rate=1000, buf=1),
        buffers_kb=(4096, 4096),
    )
    config.flush_period_ms = 100
    config.duration_ms = int(duration_s * 1000)
    cons = rt.consumer()
    cons.enable(config)
    enabled_at = time.monotonic()

    def written(index: int) -> int:
        return cons.stats(timeout=ANSWER_S).buffer_stats[index].chunks_written

    wait_for(lambda: written(1) >= 2, 10, "the victim's first chunks")
    victim_smb = set(smb_inodes_mapped(victim.pid))
    assert victim_smb and victim_smb <= set(smb_inodes_mapped(service.pid))
    with stopped(victim):
        stopped_at = time.monotonic()
        steady_before = written(0)
        state = serve_until(
            rt,
            lambda s: s.peers_given_up.producers == 1,
            GIVE_UP_WITHIN_S,
            "the stopped producer to be given up",
        )
        print(f"given up after {time.monotonic() - stopped_at:.2f} s")
        assert victim.pid not in {p.pid for p in state.producers}
        assert steady.pid in {p.pid for p in state.producers}
        assert state.peers_given_up.consumers == 0
        assert not victim_smb & set(smb_inodes_mapped(service.pid)), "its SMB is released"
        # The other producer was served all along, and still is.
        assert written(0) > steady_before
        serve_until(rt, lambda s: written(0) > steady_before + 5, 10, "steady to go on")
        # The session ends on time, the victim still stopped.
        cons.wait_disabled(timeout=duration_s + 10)
        ended_after = time.monotonic() - enabled_at
        assert ended_after < duration_s + 3, f"the session ended after {ended_after:.1f} s"
        trace = list(cons.read_packets(timeout=10))
    # Continued, the victim learns it was dropped and connects again.
    rt.wait_registered(victim, "tracebus.synthetic", name="victim")
    assert timed_state(rt).peers_given_up.producers == 1
    steady_events = [p.for_testing for p in by_pid(trace, steady.pid)]
    n = len(steady_events)
    assert n >= 100
    assert [e.seq_value for e in steady_events] == seq_values(seed_s, n)
    # What the victim committed before it stopped, and its SMB's complete
    # chunks (scraped when it was given up), are in the trace, in order.
    victim_events = [p.for_testing for p in by_pid(trace, victim.pid)]
    v = len(victim_events)
    assert v >= 60
    assert [e.counter for e in victim_events] == list(range(1, v + 1))
    assert service.poll() is None


def raw_consumer(rt: Runtime, ctx: zmq.Context) -> zmq.Socket:
    """A consumer connection that reads only when the test says so."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 10)
    sock.connect(rt.consumer_endpoint)
    return sock


def call(sock: zmq.Socket, request_id: int, **fields) -> None:
    sock.send_multipart(framing.encode(ipc.ConsumerToService(request_id=request_id, **fields)))


def test_consumer_that_stops_reading_is_given_up(rt: Runtime):
    timeout_s = 1.0
    rt.start_service("--peer-send-timeout-s", str(timeout_s))
    rt.start_producer("p1", data_sources=("tracebus.synthetic",))
    ctx = zmq.Context()
    sock = raw_consumer(rt, ctx)
    try:
        config = session_config(synthetic_source("p1", 10**6, 1, 16, rate=500))
        call(
            sock,
            1,
            enable_tracing=ipc.EnableTracingRequest(trace_config=config.SerializeToString()),
        )
        assert sock.poll(10_000)
        reply = framing.decode_to_consumer(sock.recv_multipart())
        assert reply.enable_tracing.session_id and not reply.enable_tracing.error
        serve_until(rt, lambda s: len(s.sessions) == 1, 5, "the raw consumer's session")
        # Thousands of requests whose answers it never reads: more than ZeroMQ's
        # pipe and the socket buffer hold, so the rest queue in the service.
        for i in range(5000):
            call(sock, 2 + i, query_service_state=ipc.QueryServiceStateRequest())
        state = serve_until(
            rt,
            lambda s: s.peers_given_up.consumers == 1,
            timeout_s + 10,
            "the consumer that does not read to be given up",
        )
        assert state.sessions == [], "its session is freed"
        assert state.peers_given_up.messages_dropped > 0
        assert state.peers_given_up.producers == 0
        # It reads again: the backlog, then "reconnect" for anything it asks.
        while sock.poll(500):
            sock.recv_multipart()
        call(sock, 9999, query_service_state=ipc.QueryServiceStateRequest())
        assert sock.poll(5000), "no answer to a given-up connection"
        answer = framing.decode_to_consumer(sock.recv_multipart())
        assert answer.request_id == 9999
        assert "reconnect" in answer.error.message
        assert not answer.HasField("service_state"), "a given-up connection is not served"
        assert timed_state(rt).peers_given_up.messages_refused >= 1
    finally:
        sock.close(linger=0)
        ctx.term()


def test_stopped_consumer_is_given_up_and_its_session_freed(rt: Runtime):
    """Even with nothing to send it (its session records for a minute), a stopped
    consumer is noticed when ZeroMQ drops its connection, and its session freed."""
    rt.start_service("--peer-send-timeout-s", str(SEND_TIMEOUT_S))
    producer = rt.start_producer("p1", data_sources=("tracebus.synthetic",))
    config = (
        "buffers { size_kb: 4096 }\n"
        'data_sources { config { name: "tracebus.synthetic" for_testing { '
        "message_count: 1000000 seed: 1 message_size: 64 max_messages_per_second: 2000 } } }\n"
        "duration_ms: 60000\nflush_period_ms: 100\n"
    )
    cli, _out = rt.start_record(config, "stopped")
    serve_until(rt, lambda s: len(s.sessions) == 1, 15, "the CLI's session")
    other = rt.consumer(name="other")
    other.enable(session_config(synthetic_source("p1", 10**6, 2, 16, rate=2000)))

    def written() -> int:
        return other.stats(timeout=ANSWER_S).buffer_stats[0].chunks_written

    with stopped(cli):
        stopped_at = time.monotonic()
        before = written()
        state = serve_until(
            rt,
            lambda s: s.peers_given_up.consumers == 1,
            GIVE_UP_WITHIN_S,
            "the stopped consumer to be given up",
        )
        print(f"given up after {time.monotonic() - stopped_at:.2f} s")
        assert [s.id for s in state.sessions] == [other.session_id], "its session is freed"
        assert state.peers_given_up.producers == 0
        # The other consumer's session was served all along, and still is.
        wait_for(lambda: written() > before, 10, "the other session to go on")
        assert producer.poll() is None
    cli.kill()
    rt.communicate(cli, 10)
    other.disable(timeout=10)


def test_sigterm_with_stopped_peers(rt: Runtime):
    """A stopped producer and CLI, and a connection that does not read with a
    backlog queued for it: SIGTERM still ends the service within its timeout."""
    shutdown_s = 3.0
    service = rt.start_service("--shutdown-timeout-s", str(shutdown_s))
    producer = rt.start_producer("p1", data_sources=("tracebus.synthetic",))
    config = (
        "buffers { size_kb: 1024 }\n"
        'data_sources { config { name: "tracebus.synthetic" for_testing { '
        "message_count: 1000000 seed: 1 message_size: 64 max_messages_per_second: 2000 } } }\n"
        "flush_period_ms: 100\n"
    )
    cli, _out = rt.start_record(config, "stuck")
    serve_until(rt, lambda s: len(s.sessions) == 1, 15, "the CLI's session")
    ctx = zmq.Context()
    sock = raw_consumer(rt, ctx)
    try:
        with stopped(producer), stopped(cli):
            # More answers than ZeroMQ holds for a peer that does not read, then
            # a session: once it shows, every answer before it is sent or queued.
            for i in range(5000):
                call(sock, 1 + i, query_service_state=ipc.QueryServiceStateRequest())
            marker = session_config(synthetic_source("nobody", 1, 1, 16))
            marker.unique_session_name = "after-the-flood"
            enable = ipc.EnableTracingRequest(trace_config=marker.SerializeToString())
            call(sock, 9999, enable_tracing=enable)
            serve_until(
                rt,
                lambda s: "after-the-flood" in {x.unique_session_name for x in s.sessions},
                15,
                "the non-reading consumer's requests to be handled",
            )
            start = time.monotonic()
            service.send_signal(signal.SIGTERM)
            code = service.wait(timeout=shutdown_s + 5)
            took = time.monotonic() - start
    finally:
        sock.close(linger=0)
        ctx.term()
    assert took < shutdown_s, f"the service took {took:.2f} s to stop"
    assert code == 0
    assert not (rt.dir / "p").exists() and not (rt.dir / "c").exists()
    cli.kill()
    rt.communicate(cli, 10)


def test_peer_send_timeout_is_a_service_limit_in_the_topology(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("stop_when: never\nservice:\n  limits:\n    peer_send_timeout_s: 2\n")
    spec = load_topology(path).service
    argv = spec.argv("py", "ipc:///p", "ipc:///c")
    assert argv[-2:] == ["--peer-send-timeout-s", "2"]
