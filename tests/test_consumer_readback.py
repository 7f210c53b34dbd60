"""The record CLI reading a big session back from a real service.

- test_service_sigkilled_mid_read_leaves_a_valid_trace_of_what_was_received:
  the service is killed while the CLI streams its read-back into the output;
  the CLI writes every whole packet it received (a trace the official schema
  parses), says so, and exits 1. The producer never drops (STALL) into a
  buffer that never fills, so the file must hold packets 1..n of its sequence.

The kill lands mid-read without any sleep: the CLI's temp file grows only
while replies arrive; then the CLI is held (SIGSTOP) while the service is
killed. The consumer's bounded receive queue (actors/consumer.py RECEIVE_HWM)
keeps most of a ~40 MiB read in the service until the CLI asks for it, so the
read cannot have finished when the service dies.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tests.processes import Proc, Runtime

pytestmark = pytest.mark.timeout(120)

MESSAGES, SIZE = 40_000, 1000  # up to ~40 MiB of synthetic packets: ~40 read replies
BIG_SESSION = f"""
buffers {{ size_kb: 65536 fill_policy: DISCARD }}
data_sources {{ config {{
  name: "tracebus.synthetic"
  for_testing {{ message_count: {MESSAGES} message_size: {SIZE} }}
}} }}
duration_ms: 1500
"""


def wait_for_read_to_start(proc: Proc, directory: Path, name: str, timeout: float) -> None:
    """Until the CLI's temp file for `name` holds some of the read. Polled every
    millisecond (tests.waiting backs off to 50 ms: the whole read could pass by)."""
    deadline = time.monotonic() + timeout
    while not any(p.stat().st_size for p in directory.glob(f".{name}.*.tmp")):
        assert proc.poll() is None, f"the CLI exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"no read-back within {timeout:g} s"
        time.sleep(0.001)


def test_service_sigkilled_mid_read_leaves_a_valid_trace_of_what_was_received(rt: Runtime):
    service = rt.start_service()
    # STALL: the producer waits for chunks instead of dropping, so its sequence has no
    # gap and the file must hold exactly its first n packets.
    rt.start_producer("alpha", "--policy", "stall", data_sources=("tracebus.synthetic",))
    proc, out = rt.start_record(BIG_SESSION, "big")
    wait_for_read_to_start(proc, rt.dir, out.name, 60)
    proc.send_signal(signal.SIGSTOP)  # hold the CLI where it is: the rest stays in the service
    try:
        service.kill()
        service.wait(timeout=10)
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = rt.communicate(proc, timeout=60)

    assert proc.returncode == 1, err
    assert "went away" in err and "INCOMPLETE trace" in err, err
    trace = pb.Trace.FromString(out.read_bytes())  # whole packets only, or this fails
    wrote = re.search(r"wrote (\d+) packets", err)
    assert wrote is not None, err
    assert int(wrote.group(1)) == len(trace.packet), "the summary counts what the file holds"
    ours = [p for p in trace.packet if p.HasField("for_testing")]
    assert ours, "some of the producer's packets arrived before the kill"
    assert len({p.trusted_packet_sequence_id for p in ours}) == 1, "one writer, one sequence"
    assert not any(p.previous_packet_dropped for p in ours), "nothing dropped: no gap to mark"
    counters = [p.for_testing.counter for p in ours]
    # A DISCARD buffer that never fills and a writer that never drops: the file is a
    # gap-free prefix of what was written, in order, none twice, none missing.
    assert counters == list(range(1, len(counters) + 1)), "packets 1..n, without a hole"
    assert counters[-1] < MESSAGES, "the read was cut: not every packet arrived"
    assert all(len(p.for_testing.str) == SIZE for p in trace.packet if p.HasField("for_testing"))
    assert not trace.packet[-1].HasField("trace_stats"), "a whole read ends with trace_stats"
    assert not list(rt.dir.glob(".big.pftrace.*.tmp")), "the temp file became the output"
