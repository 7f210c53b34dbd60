"""Detach and attach with real processes (issue 12, item 3): the record CLI's
--detach / --attach [--stop] / --is_detached as Perfetto's, and a consumer
script's tracing.detach / attach. A CLI process detaches and exits; the session
goes on (a producer that joins afterwards records into it); another process
attaches, stops and reads: the packets from before and after the detach are in
the trace; with write_into_file the service keeps writing the file meanwhile.
Misuse gets Perfetto's exit codes and a clear error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.consumer import split_trace
from tests.processes import Proc, Runtime
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

COUNT = 20  # synthetic packets per producer


def config(extra: str = "") -> str:
    return f"""
buffers {{ size_kb: 1024 fill_policy: RING_BUFFER }}
data_sources {{
  config {{ name: "tracebus.synthetic" for_testing {{ message_count: {COUNT} seed: 3 }} }}
}}
{extra}
"""


def cli(rt: Runtime, *args: str, label: str = "cli") -> tuple[int, str]:
    proc = rt.start_consumer_cli(*args, "--consumer-endpoint", rt.consumer_endpoint, label=label)
    _, err = rt.communicate(proc, timeout=60.0)
    return proc.returncode, err


def counters_by_pid(packets: list[pb.TracePacket]) -> dict[int, list[int]]:
    by_pid: dict[int, list[int]] = {}
    for p in packets:
        if p.HasField("for_testing"):
            by_pid.setdefault(p.trusted_pid, []).append(p.for_testing.counter)
    return by_pid


def file_packets(path: Path) -> list[pb.TracePacket]:
    data = path.read_bytes() if path.exists() else b""
    return [pb.TracePacket.FromString(p) for p in split_trace(data)[0]]


def detached_sessions(rt: Runtime) -> list:
    return list(rt.control.query_state(timeout=5).sessions)


def test_the_cli_detaches_and_exits_another_attaches_stops_and_reads_it_all(rt: Runtime):
    rt.start_service()
    before = rt.start_producer("before")
    cfg = rt.write_file("detach.pbtxt", config())
    code, err = cli(rt, "-c", str(cfg), "--txt", "--detach=k1", label="detach")
    assert code == 0, err + rt.logs()
    assert "detached as 'k1'" in err and "--attach=k1" in err
    (session,) = detached_sessions(rt)  # its CLI is gone, the session is not
    assert session.state == "STARTED"
    after = rt.start_producer("after")  # joins the detached session

    assert cli(rt, "--is_detached=k1", label="is-detached")[0] == 0
    out = rt.dir / "attached.pftrace"
    code, err = cli(rt, "--attach=k1", "--stop", "-o", str(out), label="attach")
    assert code == 0, err + rt.logs()
    trace = pb.Trace.FromString(out.read_bytes())
    by_pid = counters_by_pid(list(trace.packet))
    expected = list(range(1, COUNT + 1))
    assert by_pid == {before.pid: expected, after.pid: expected}
    assert trace.packet[-1].HasField("trace_stats")
    assert detached_sessions(rt) == []  # read and freed
    assert cli(rt, "--is_detached=k1", label="gone")[0] == 2


def test_a_detached_write_into_file_session_keeps_writing_its_file(rt: Runtime):
    rt.start_service()
    before = rt.start_producer("before")
    out = rt.dir / "long.pftrace"
    cfg = rt.write_file("file.pbtxt", config("write_into_file: true file_write_period_ms: 100"))
    code, err = cli(rt, "-c", str(cfg), "--txt", "--detach=k2", "-o", str(out), label="detach")
    assert code == 0, err + rt.logs()
    after = rt.start_producer("after")

    def written_by_the_late_producer() -> bool:  # the service's periodic drains, no consumer
        return len(counters_by_pid(file_packets(out)).get(after.pid, [])) >= 1

    wait_for(written_by_the_late_producer, 30.0, "the service to write the late producer's data")
    code, err = cli(rt, "--attach=k2", "--stop", "-o", str(out), label="attach")
    assert code == 0, err + rt.logs()
    packets = file_packets(out)
    expected = list(range(1, COUNT + 1))
    assert counters_by_pid(packets) == {before.pid: expected, after.pid: expected}
    assert packets[-1].HasField("trace_stats")
    assert f"{len(packets)} packets" in err.replace(",", "")  # the summary counts the file
    assert detached_sessions(rt) == []


def test_a_detached_session_that_reaches_its_duration_is_freed_and_its_file_complete(
    rt: Runtime,
):
    rt.start_service()
    producer = rt.start_producer("p")
    out = rt.dir / "timed.pftrace"
    extra = "write_into_file: true file_write_period_ms: 100 duration_ms: 1000"
    cfg = rt.write_file("timed.pbtxt", config(extra))
    code, err = cli(rt, "-c", str(cfg), "--txt", "--detach=k3", "-o", str(out), label="detach")
    assert code == 0, err
    wait_for(lambda: not detached_sessions(rt), 30.0, "the service to end and free the session")
    packets = file_packets(out)
    assert counters_by_pid(packets) == {producer.pid: list(range(1, COUNT + 1))}
    assert packets[-1].HasField("trace_stats")
    code, err = cli(rt, "--attach=k3", "-o", str(rt.dir / "x.pftrace"), label="late")
    assert code == 2 and "no session is detached under the key 'k3'" in err


def test_a_detached_session_ended_by_its_file_limit_waits_for_the_attach(rt: Runtime):
    """Not its own end (max_file_size_bytes): kept, stopped; --attach --stop then
    only takes its end, and frees it."""
    rt.start_service()
    rt.start_producer("p")
    out = rt.dir / "capped.pftrace"
    cfg = rt.write_file(
        "capped.pbtxt",
        """
buffers { size_kb: 1024 fill_policy: RING_BUFFER }
data_sources {
  config { name: "tracebus.synthetic" for_testing { message_count: 500 message_size: 100 } }
}
write_into_file: true file_write_period_ms: 100 max_file_size_bytes: 4000
""",
    )
    code, err = cli(rt, "-c", str(cfg), "--txt", "--detach=capped", "-o", str(out))
    assert code == 0, err

    def stopped() -> bool:
        return [s.state for s in detached_sessions(rt)] == ["DISABLED"]

    wait_for(stopped, 30.0, "the file limit to end the detached session")
    assert cli(rt, "--is_detached=capped", label="is-detached")[0] == 0
    code, err = cli(rt, "--attach=capped", "--stop", "-o", str(out), label="attach")
    assert code == 0, err + rt.logs()
    assert "flush" not in err  # nothing left to flush or stop
    assert 0 < out.stat().st_size <= 4000
    pb.Trace.FromString(out.read_bytes())  # whole packets only
    assert detached_sessions(rt) == []


def test_misuse_gets_perfettos_exit_codes_and_clear_errors(rt: Runtime):
    rt.start_service()
    rt.start_producer("p")
    cfg = rt.write_file("c.pbtxt", config())
    assert cli(rt, "-c", str(cfg), "--txt", "--detach=dup", label="first")[0] == 0
    code, err = cli(rt, "-c", str(cfg), "--txt", "--detach=dup", label="second")
    assert code == 1 and "already detached under the key 'dup'" in err
    assert len(detached_sessions(rt)) == 1  # the refused one was freed with its CLI

    code, err = cli(rt, "--is_detached=nope", label="is-nope")
    assert code == 2
    code, err = cli(rt, "--attach=nope", "-o", str(rt.dir / "n.pftrace"), label="attach-nope")
    assert code == 2 and "no session is detached under the key 'nope'" in err
    code, err = cli(rt, "--attach=dup", label="no-out")  # buffers only: where to read it?
    assert code == 2 and "-o OUT" in err and "stays detached" in err
    assert cli(rt, "--is_detached=dup", label="still")[0] == 0

    usage = [
        (["--stop", "-o", "x"], "--stop is supported only in combination with --attach"),
        (["--attach=dup", "-c", str(cfg)], "take no -c"),
        (["--detach=a", "--attach=b"], "not allowed with argument"),
        (["--detach=a"], "-c CONFIG"),
        (["-c", str(cfg), "--txt", "--detach=a", "-o", "x.pftrace"], "without write_into_file"),
    ]
    for args, expected in usage:
        code, err = cli(rt, *args, label="usage")
        assert code == 2 and expected in err, (args, err)
    assert len(detached_sessions(rt)) == 1  # none of them touched it

    out = rt.dir / "dup.pftrace"
    code, err = cli(rt, "--attach=dup", "--stop", "-o", str(out), label="last")
    assert code == 0, err
    assert pb.Trace.FromString(out.read_bytes()).packet[-1].HasField("trace_stats")


def script_proc(rt: Runtime, name: str, body: str) -> Proc:
    script = rt.write_file(f"{name}.py", body)
    argv = ["-m", "launch.script_runner", str(script), "--consumer-endpoint", rt.consumer_endpoint]
    return rt.spawn(name, argv, stderr="pipe")


def test_a_script_detaches_and_another_process_attaches_and_reads(rt: Runtime):
    rt.start_service()
    producer = rt.start_producer("p")
    rt.write_file("s.pbtxt", config())
    proc = script_proc(
        rt,
        "detacher",
        f"""
import time
from pathlib import Path


def main(tracing):
    tracing.enable(Path({str(rt.dir / "s.pbtxt")!r}))
    tracing.detach("from-a-script")
""",
    )
    _, err = rt.communicate(proc, timeout=60.0)
    assert proc.returncode == 0, err + rt.logs()
    consumer = rt.consumer()
    attached = consumer.attach("from-a-script")
    assert attached.state == "STARTED" and not attached.ended
    assert attached.config.data_sources[0].config.name == "tracebus.synthetic"
    assert consumer.flush(5.0)
    consumer.disable()
    consumer.wait_disabled(15.0)
    out = rt.dir / "script.pftrace"
    consumer.save(out)
    consumer.free()
    trace = pb.Trace.FromString(out.read_bytes())
    assert counters_by_pid(list(trace.packet)) == {producer.pid: list(range(1, COUNT + 1))}


# -- Perfetto's own examples (docs/concepts/detached-mode.md), their config text as is --------

PERFETTO_CONFIGS = Path(__file__).parent / "perfetto_configs"


def ftrace_stand_in(rt: Runtime) -> Proc:
    """A producer offering "linux.ftrace" (the synthetic source under that name: with
    no for_testing config it writes nothing, but its instance is set up and stopped)."""
    args = ("--data-source", "linux.ftrace")
    return rt.start_producer("ftrace", *args, data_sources=("linux.ftrace",))


@pytest.mark.parametrize(
    ("name", "period_ms"),
    [("docs-detached-mode-1.cfg", 1_000_000_000), ("docs-detached-mode-0.cfg", 5000)],
)
def test_perfettos_detach_then_attach_and_stop_examples(rt: Runtime, name: str, period_ms: int):
    """`--detach=session -o trace`, then `--attach=session --stop`: the file is complete.
    In ring-buffer mode (an 11-day write period) nothing reaches it before the stop."""
    rt.start_service()
    ftrace_stand_in(rt)
    out = rt.dir / "trace"
    args = ("-c", str(PERFETTO_CONFIGS / name), "--txt", "--detach=session", "-o", str(out))
    code, err = cli(rt, *args)
    assert code == 0, err + rt.logs()
    if period_ms > 60_000:
        assert out.stat().st_size == 0  # opened by the service, not written yet
    code, err = cli(rt, "--attach=session", "--stop", label="attach")
    assert code == 0, err + rt.logs()
    trace = pb.Trace.FromString(out.read_bytes())
    (config,) = [p.trace_config for p in trace.packet if p.HasField("trace_config")]
    assert config.file_write_period_ms == period_ms
    assert config.data_sources[0].config.name == "linux.ftrace"
    assert trace.packet[-1].HasField("trace_stats")
    assert detached_sessions(rt) == []


def test_perfettos_time_limit_example_attach_waits_for_the_end(rt: Runtime):
    """duration_ms 10 s: `--attach=session3` (no --stop) stays until the service ends
    the session, then exits 0 with the file complete."""
    rt.start_service()
    ftrace_stand_in(rt)
    cfg = PERFETTO_CONFIGS / "docs-detached-mode-2.cfg"
    out = rt.dir / "trace"
    started = time.monotonic()
    code, err = cli(rt, "-c", str(cfg), "--txt", "--detach=session3", "-o", str(out))
    assert code == 0, err + rt.logs()
    code, err = cli(rt, "--attach=session3", "-o", str(out), label="attach")
    assert code == 0, err + rt.logs()
    assert time.monotonic() - started >= 10.0  # it waited for duration_ms
    trace = pb.Trace.FromString(out.read_bytes())
    assert trace.packet[-1].HasField("trace_stats")
    assert any(p.service_event.tracing_disabled for p in trace.packet)
    assert detached_sessions(rt) == []
