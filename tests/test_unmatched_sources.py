"""A session whose data sources match no producer says so: the service names them
in EnableTracingResponse.unmatched_data_sources (by name, after the producer
filters), Consumer.enable warns, and the record CLI's summary repeats it; the
session still runs, and the sources that matched record as usual (exit 0).
Before issue 11 such a config recorded an empty trace with exit 0 and no word.
Real processes (tests/processes.py): the service, a producer, the CLI.
"""

from __future__ import annotations

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tests.processes import PYTHON, Runtime

pytestmark = pytest.mark.timeout(90)

CONFIG = """
buffers { size_kb: 1024 }
data_sources { config { name: "tracebus.synthetic" for_testing { message_count: 30 } } }
data_sources { config { name: "no.such.source" } }
data_sources { config { name: "no.such.source" } }
data_sources {
  config { name: "tracebus.demo_timeline" }
  producer_name_filter: "somebody-else"
}
duration_ms: 300
"""
NAMES = "the data sources no.such.source, tracebus.demo_timeline"
AT_START = (
    f"tracebus: warning: no connected producer offers {NAMES}: nothing is recorded for them"
    " unless a producer offering them connects"
)
AT_END = f"warning: no producer offered {NAMES} during the session: they recorded nothing"


def test_the_cli_warns_naming_the_unmatched_sources_and_records_the_rest(rt: Runtime) -> None:
    rt.start_service()
    rt.start_producer("prod")
    result, out = rt.record(CONFIG, "rec")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines.index(AT_START) < lines.index(AT_END), result.stderr  # start, then summary
    trace = pb.Trace.FromString(out.read_bytes())
    assert sum(p.HasField("for_testing") for p in trace.packet) == 30


def test_a_producer_that_connects_during_the_session_is_not_reported(rt: Runtime) -> None:
    """`tracebus run` starts its command after the session: the app's data source is
    unmatched at the start by design. Only what no producer offered until the end is
    named, and no warning is given at the start."""
    app = rt.write_file(
        "app.py",
        "from actors.producer import Producer\n"
        "from actors.data_sources import SyntheticDataSource\n"
        "class Once(SyntheticDataSource):\n"
        "    def _run(self):\n"
        "        super()._run()  # its 30 packets written and committed\n"
        "        producer.stop()\n"
        "producer = Producer('app')\n"
        "producer.register(Once)\n"
        "raise SystemExit(producer.run())\n",
    )
    config = rt.write_file("cfg.pbtxt", CONFIG.replace("duration_ms: 300", ""))
    (rt.dir / "xdg").mkdir(mode=0o700)
    argv = ["-m", "tracebus", "run", "-c", str(config), "-o", "run.pftrace", "--"]
    env = {"XDG_RUNTIME_DIR": str(rt.dir / "xdg")}
    run = rt.spawn("run", [*argv, PYTHON, str(app)], env, lines=True, stderr="stdout", cwd=rt.dir)
    assert rt.finish(run) == 0, rt.output(run)
    output = rt.output(run)
    assert "no connected producer offers" not in output, output
    assert AT_END in output, output  # no.such.source and the filtered-out demo_timeline
    trace = pb.Trace.FromString((rt.dir / "run.pftrace").read_bytes())
    assert sum(p.HasField("for_testing") for p in trace.packet) == 30


def test_the_api_result_names_them_and_a_full_match_names_none(rt: Runtime) -> None:
    rt.start_service()
    rt.start_producer("prod")
    consumer = rt.consumer()
    result = consumer.enable(CONFIG)
    assert result.unmatched_data_sources == ("no.such.source", "tracebus.demo_timeline")
    consumer.disable()
    consumer.free()
    matched = CONFIG.replace('"somebody-else"', '"prod"').replace("no.such", "tracebus")
    matched = matched.replace('"tracebus.source"', '"tracebus.synthetic"')
    result = consumer.enable(matched)
    assert result.unmatched_data_sources == ()
    consumer.disable()
    consumer.free()
