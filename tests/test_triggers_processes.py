"""Triggers with real processes (issue 12, item 1): Perfetto's background.cfg
(STOP_TRACING) fired from `launch.ctl trigger`, START_TRACING fired from an
application's `tracebus.trigger()` with producer_name_regex, skip_probability and
max_per_24_h, a session whose only end is trigger_timeout_ms, and a consumer
script's `tracing.trigger()`. Timestamps are CLOCK_BOOTTIME on both sides (the
service's trigger packet, the ticker's packets), so "before the trigger" is a
comparison."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.consumer import Consumer
from tests.processes import PYTHON, Runtime
from tests.waiting import wait_for

CONFIGS = Path(__file__).parent / "perfetto_configs"

# Data sources under the names a config asks for, each writing a for_testing packet
# stamped with CLOCK_BOOTTIME every 10 ms from its start until it is stopped.
TICKER_MODULE = """
import threading, time
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from actors.producer import DataSource

class _Ticker(DataSource):
    def on_start(self, config):
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        print(f"{self.name} ticking", flush=True)

    def run(self):
        w = self.writer()
        i = 0
        while not self.stopping.wait(0.01):
            i += 1
            packet = pb.TracePacket(timestamp=time.clock_gettime_ns(time.CLOCK_BOOTTIME))
            packet.for_testing.counter = i
            w.write_packet(packet.SerializeToString())
        w.flush()

    def on_stop(self):
        self.stopping.set()
        self.thread.join()

class Ftrace(_Ticker):
    name = "linux.ftrace"

class Log(_Ticker):
    name = "android.log"
"""

START_CONFIG = """
buffers { size_kb: 1024 }
data_sources { config { name: "linux.ftrace" } }
trigger_config {
  trigger_mode: START_TRACING
  trigger_timeout_ms: %(timeout)d
  triggers { name: "never" skip_probability: 1.0 }
  triggers { name: "start-now" producer_name_regex: "trigger_app.*" stop_delay_ms: 1500
             max_per_24_h: 1 }
}
"""

APP = """
import sys, tracebus
tracebus.init(name="trigger_app")
for _ in range(3):
    tracebus.trigger("never")
tracebus.trigger("start-now")
tracebus.trigger("start-now")  # past max_per_24_h: ignored
tracebus.shutdown()  # flushes what the producer holds, the triggers included
print("fired", flush=True)
"""

SCRIPT = """
def main(tracing):
    config = '''
buffers { size_kb: 1024 }
data_sources { config { name: "linux.ftrace" } }
trigger_config {
  trigger_mode: STOP_TRACING
  trigger_timeout_ms: 60000
  triggers { name: "script-stop" stop_delay_ms: 1000 }
}
'''
    result = tracing.record(config, "%(out)s", during=lambda t: t.trigger("script-stop"))
    print("packets", result.packets, flush=True)
"""


def ticks(trace: pb.Trace) -> list[int]:
    return [p.timestamp for p in trace.packet if p.HasField("for_testing")]


def triggers_of(trace: pb.Trace) -> list[tuple[pb.Trigger, int]]:
    return [(p.trigger, p.timestamp) for p in trace.packet if p.HasField("trigger")]


def session_state(rt: Runtime) -> str:
    sessions = rt.control.query_state(timeout=5).sessions
    return sessions[0].state if sessions else ""


def start_tickers(rt: Runtime):
    rt.write_module("tickers", TICKER_MODULE)
    return rt.start_producer(
        "tickers", "--module", "tickers", data_sources=("linux.ftrace", "android.log")
    )


def test_background_cfg_stops_stop_delay_ms_after_a_ctl_trigger(rt: Runtime):
    """Perfetto's own STOP_TRACING config: recorded from the start, and the session
    ends 2 s after `ctl trigger`, not at its 300 s trigger_timeout_ms."""
    rt.start_service()
    start_tickers(rt)
    config = (CONFIGS / "background.cfg").read_text()
    cli, out = rt.start_record(config, "background")
    wait_for(lambda: rt.logs().count("ticking") >= 2, 15.0, "both tickers to start")
    ctl = [PYTHON, "-m", "launch.ctl", "trigger", "test-configs-trigger"]
    fired = rt.run([*ctl, "--consumer-endpoint", rt.consumer_endpoint])
    assert fired.returncode == 0, fired.stderr
    assert "fired test-configs-trigger" in fired.stdout
    fired_at = time.monotonic()
    _, err = rt.communicate(cli, timeout=60)
    ended_after = time.monotonic() - fired_at
    assert cli.returncode == 0, err
    assert ended_after < 45, f"the session ended {ended_after:.1f} s after the trigger"
    trace = pb.Trace.FromString(out.read_bytes())
    ((trigger, at),) = triggers_of(trace)
    assert (trigger.trigger_name, trigger.stop_delay_ms) == ("test-configs-trigger", 2000)
    assert trigger.producer_name == "tracebus-ctl"
    stamps = ticks(trace)
    assert min(stamps) < at < max(stamps), "recorded before and after the trigger"
    assert max(stamps) >= at + 1_500_000_000, "and on for stop_delay_ms"
    kinds = [p.WhichOneof("data") for p in trace.packet]
    assert kinds.index("trigger") == kinds.index("trace_config") + 1


def test_start_tracing_records_nothing_before_an_apps_trigger(rt: Runtime):
    """START_TRACING: data sources set up at once, nothing recorded until the trigger
    (fired by an app with tracebus.trigger); skip_probability 1.0 and a
    producer_name_regex that only the app matches; max_per_24_h 1 ignores the
    app's second trigger."""
    rt.start_service()
    start_tickers(rt)
    cli, out = rt.start_record(START_CONFIG % {"timeout": 60_000}, "start")
    wait_for(lambda: session_state(rt) == "CONFIGURED", 15.0, "the session to wait")
    rt.consumer(name="not-the-app").trigger("start-now")  # fails producer_name_regex
    assert session_state(rt) == "CONFIGURED" and "ticking" not in rt.logs()
    app = rt.write_file("trigger_app.py", APP)
    env = {"TRACEBUS_PRODUCER_SOCK": rt.producer_endpoint}
    result = rt.run([PYTHON, str(app)], env, timeout=60)
    assert result.returncode == 0 and "fired" in result.stdout, result.stderr
    _, err = rt.communicate(cli, timeout=60)
    assert cli.returncode == 0, err
    trace = pb.Trace.FromString(out.read_bytes())
    ((trigger, at),) = triggers_of(trace)
    assert (trigger.trigger_name, trigger.producer_name) == ("start-now", "trigger_app")
    stamps = ticks(trace)
    assert stamps and min(stamps) > at, "no packet from before the trigger"
    assert max(stamps) - at < 10_000_000_000, "and it ended after stop_delay_ms"


def test_a_start_session_never_triggered_ends_at_trigger_timeout_ms_empty(rt: Runtime):
    rt.start_service()
    start_tickers(rt)
    started = time.monotonic()
    result, out = rt.record(START_CONFIG % {"timeout": 1500}, "timeout", timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert 1.5 <= took < 30
    assert out.read_bytes() == b""
    assert "no trigger fired within trigger_timeout_ms (1500 ms" in result.stderr
    assert "ticking" not in rt.logs()


def test_a_consumer_scripts_trigger_stops_its_session(rt: Runtime):
    rt.start_service()
    start_tickers(rt)
    out = rt.dir / "script.pftrace"
    script = rt.write_file("stopper.py", SCRIPT % {"out": out})
    argv = [PYTHON, "-m", "launch.script_runner", str(script)]
    argv += ["--consumer-endpoint", rt.consumer_endpoint, "--name", "stopper"]
    result = rt.run(argv, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    trace = pb.Trace.FromString(out.read_bytes())
    ((trigger, _),) = triggers_of(trace)
    assert (trigger.trigger_name, trigger.producer_name) == ("script-stop", "stopper")
    assert ticks(trace), "recorded from the start"


@pytest.mark.skipif(sys.platform != "linux", reason="ipc:// and memfd")
def test_ctl_trigger_without_a_service_is_a_clear_error(rt: Runtime):
    ctl = [PYTHON, "-m", "launch.ctl", "--timeout", "1", "trigger", "x"]
    result = rt.run([*ctl, "--consumer-endpoint", f"ipc://{rt.dir}/none.sock"])
    assert result.returncode == 1
    assert "no tracing service answered" in result.stderr


def test_ctl_trigger_finds_the_topologys_service_through_the_supervisor(rt: Runtime):
    """`ctl --control EP trigger NAME` asks the supervisor where its service is and
    fires there: a session of that topology, waiting for its START trigger, starts."""
    supervisor = rt.start_supervisor(
        rt.write_file(
            "topology.yaml",
            "runtime_dir: run\nstop_when: never\nproducers:\n  - name: base\n    builtin: []\n",
        )  # fmt: skip
    )
    rt.wait_output(supervisor, r"base#1 registered")
    consumer = Consumer.connect(f"ipc://{rt.dir}/run/consumer.sock", timeout=10)
    try:
        consumer.enable(
            'buffers { size_kb: 256 }\ndata_sources { config { name: "tracebus.synthetic" } }\n'
            "trigger_config { trigger_mode: START_TRACING trigger_timeout_ms: 60000\n"
            '  triggers { name: "from-ctl" stop_delay_ms: 100 } }\n'
        )
        ctl = [PYTHON, "-m", "launch.ctl", "--control", f"ipc://{rt.dir}/run/control.sock"]
        fired = rt.run([*ctl, "trigger", "from-ctl"])
        assert fired.returncode == 0, fired.stderr
        consumer.wait_disabled(30)  # started by the trigger, ended 100 ms later
        packets = consumer.read_packets()
        (trigger,) = [p.trigger for p in packets if p.HasField("trigger")]
        assert (trigger.trigger_name, trigger.producer_name) == ("from-ctl", "tracebus-ctl")
        consumer.free()
    finally:
        consumer.close()
    stop = rt.run([*ctl, "stop"])
    assert stop.returncode == 0, stop.stderr
    rt.finish(supervisor)
