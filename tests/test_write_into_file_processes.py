"""write_into_file with real processes (issue 8, item 5, Done-when): the
service writes a trace many times larger than its buffer, complete and
parsable, while the record CLI only waits; max_file_size_bytes ends a session
at the limit; a script's tracing.record() does the same."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.consumer_core import ConsumerError
from tests import packet_kinds
from tests.processes import Runtime
from tests.waiting import wait_for

MIB = 1 << 20
WROTE = re.compile(r"tracebus\.synthetic instance \d+: wrote (\d+) packets")


def synthetic_config(
    *, duration_ms: int, count: int, rate: int, size: int, file_fields: str
) -> str:
    return f"""
buffers {{ size_kb: 1024 fill_policy: RING_BUFFER }}
data_sources {{
  config {{
    name: "tracebus.synthetic"
    for_testing {{
      message_count: {count} max_messages_per_second: {rate} message_size: {size} seed: 7
    }}
  }}
}}
duration_ms: {duration_ms}
write_into_file: true
{file_fields}
"""


def load(path: Path) -> pb.Trace:
    return pb.Trace.FromString(path.read_bytes())  # the official schema


def counters(trace: pb.Trace) -> list[int]:
    return [p.for_testing.counter for p in trace.packet if p.HasField("for_testing")]


def packets_written(rt: Runtime, producer) -> int:
    """What the producer's synthetic source says it wrote (logged when it ends)."""

    def logged() -> int | None:
        match = WROTE.search(rt.logs())
        return int(match.group(1)) if match else None

    return wait_for(logged, 15.0, "the producer to log what it wrote")


@pytest.mark.slow
def test_a_30_s_session_at_1_mb_s_through_a_1_mib_buffer_is_written_whole(rt: Runtime):
    rt.start_service()
    producer = rt.start_producer("writer")
    config = synthetic_config(
        duration_ms=30_000, count=40_000, rate=1000, size=1000,
        file_fields="file_write_period_ms: 500",
    )  # fmt: skip
    result, out = rt.record(config, "long", timeout=90.0)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size >= 25 * MIB  # 25 times the buffer
    trace = load(out)
    written = counters(trace)
    assert written == list(range(1, len(written) + 1))  # every packet, in order
    assert len(written) == packets_written(rt, producer)
    assert not any(p.previous_packet_dropped for p in trace.packet)
    kinds = packet_kinds.kinds(trace.packet)
    config_at = kinds.index("trace_config")
    assert config_at >= 1 and set(kinds[:config_at]) == {"clock_snapshot"}
    assert kinds[config_at + 1 : config_at + 4] == ["trace_uuid", "trace_provenance", "system_info"]
    assert kinds[config_at + 4] == "tracing_started"
    assert kinds[-1] == "trace_stats"
    (buffer,) = trace.packet[-1].trace_stats.buffer_stats
    assert buffer.chunks_overwritten == buffer.chunks_discarded == 0
    assert buffer.chunks_written == buffer.chunks_read
    assert buffer.trace_writer_packet_loss == 0
    assert "losses: none" in result.stderr


def test_max_file_size_bytes_ends_the_session_at_the_limit(rt: Runtime):
    rt.start_service()
    rt.start_producer("writer")
    limit = 2 * MIB
    config = synthetic_config(
        duration_ms=60_000, count=0x7FFFFFFF, rate=2000, size=1000,
        file_fields=f"file_write_period_ms: 100 max_file_size_bytes: {limit}",
    )  # fmt: skip
    started = time.monotonic()
    result, out = rt.record(config, "capped", timeout=60.0)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30  # ended by the limit (~1 s), not the 60 s duration
    size = out.stat().st_size
    assert limit - 1100 < size <= limit  # what fits: whole packets of ~1 KiB
    trace = load(out)  # parses: nothing half-written
    written = counters(trace)
    assert written == list(range(1, len(written) + 1))


def test_a_script_records_into_a_file_the_service_writes(rt: Runtime):
    rt.start_service()
    rt.start_producer("writer")
    out = rt.dir / "script.pftrace"
    config = synthetic_config(
        duration_ms=1500, count=1000, rate=1000, size=100, file_fields="file_write_period_ms: 200"
    )
    rt.write_file("script.pbtxt", config)
    script = rt.write_file(
        "rec.py",
        f"""
from pathlib import Path


def main(tracing):
    result = tracing.record(Path({str(rt.dir / "script.pbtxt")!r}), {str(out)!r})
    print("packets", result.packets, "bytes", result.bytes)
""",
    )
    proc = rt.spawn(
        "script",
        ["-m", "launch.script_runner", str(script), "--consumer-endpoint", rt.consumer_endpoint],
        stderr="pipe",
    )
    stdout, stderr = rt.communicate(proc, timeout=60.0)
    assert proc.returncode == 0, stderr + rt.logs()
    trace = load(out)
    written = counters(trace)
    assert written and written == list(range(1, len(written) + 1))
    assert trace.packet[-1].HasField("trace_stats")
    assert f"packets {len(trace.packet)} bytes {out.stat().st_size}" in rt.logs() + (stdout or "")


def test_ctrl_c_ends_the_session_and_the_service_finishes_the_file(rt: Runtime):
    rt.start_service()
    rt.start_producer("writer")
    config = synthetic_config(
        duration_ms=60_000, count=0x7FFFFFFF, rate=1000, size=200,
        file_fields="file_write_period_ms: 100",
    )  # fmt: skip
    proc, out = rt.start_record(config, "interrupted")
    wait_for(lambda: out.exists() and out.stat().st_size > 10_000, 30.0, "the first drains")
    proc.send_signal(signal.SIGINT)
    _, err = rt.communicate(proc, timeout=30.0)
    assert proc.returncode == 130, err
    trace = load(out)
    written = counters(trace)
    assert written == list(range(1, len(written) + 1))
    assert trace.packet[-1].HasField("trace_stats")
    assert "losses: none" in err


def test_an_output_that_is_not_a_regular_file_is_refused_and_blocks_nothing(rt: Runtime):
    """A FIFO as the output: the service must not block opening it (no reader). The
    CLI refuses it before asking the service (issue 11: a usage error, exit 2); a
    script that asks the service anyway is refused by the service."""
    rt.start_service()
    fifo = rt.dir / "fifo.pftrace"
    os.mkfifo(fifo)  # the CLI's -o
    config = synthetic_config(duration_ms=1000, count=10, rate=100, size=100, file_fields="")
    proc, _ = rt.start_record(config, "fifo")
    _, err = rt.communicate(proc, timeout=30.0)
    assert proc.returncode == 2, err
    assert "not a regular file" in err
    with pytest.raises(ConsumerError, match="not a regular file"):
        rt.consumer().enable(config, output_path=fifo)
    result, out = rt.record(  # and the service goes on serving
        synthetic_config(duration_ms=200, count=10, rate=100, size=100, file_fields=""), "after"
    )
    assert result.returncode == 0, result.stderr
    assert load(out).packet[-1].HasField("trace_stats")
