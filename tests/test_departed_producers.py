"""Producers named after they left (issue 9, item 4), with real processes: a
producer that joins a running session, writes and exits before the session ends
keeps its registered name in the record CLI's summary (the service lists the
producers that left in QueryServiceState)."""

from __future__ import annotations

import re
import signal

import pytest

from tests.processes import Runtime
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

COUNT = 20
CONFIG = f"""
buffers {{ size_kb: 256 fill_policy: RING_BUFFER }}
data_sources {{ config {{ name: "tracebus.synthetic" for_testing {{ message_count: {COUNT} }} }} }}
duration_ms: 120000
"""


def session_started(rt: Runtime) -> bool:
    return any(s.state == "STARTED" for s in rt.control.query_state(timeout=5).sessions)


def departed_pids(rt: Runtime) -> set[int]:
    return {p.pid for p in rt.control.query_state(timeout=5).departed_producers}


def test_a_producer_that_left_before_the_session_ended_keeps_its_name(rt: Runtime):
    rt.start_service()
    cli, _out = rt.start_record(CONFIG, "names")
    wait_for(lambda: session_started(rt), 30.0, "the session to start")
    producer = rt.start_producer("short-lived")  # after the CLI learned the names at start
    wait_for(lambda: f"wrote {COUNT} packets" in rt.logs(), 30.0, "the producer's packets")
    assert rt.stop(producer) == 0
    wait_for(lambda: producer.pid in departed_pids(rt), 15.0, "the service to see it leave")
    cli.send_signal(signal.SIGINT)
    _, err = rt.communicate(cli, timeout=60.0)
    assert cli.returncode == 130, err
    row = re.search(rf"^  short-lived +{producer.pid} +\d+ +\d+ +(\d+) ", err, re.MULTILINE)
    assert row is not None, err
    assert int(row.group(1)) == COUNT
    assert "(producer gone)" not in err
