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

from tests.processes import Runtime

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
WARNING = (
    "no producer offered the data sources no.such.source, tracebus.demo_timeline"
    " when the session started"
)


def test_the_cli_warns_naming_the_unmatched_sources_and_records_the_rest(rt: Runtime) -> None:
    rt.start_service()
    rt.start_producer("prod")
    result, out = rt.record(CONFIG, "rec")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert f"tracebus: warning: {WARNING}" in lines, result.stderr  # at the start
    assert f"warning: {WARNING}" in lines, result.stderr  # in the summary
    assert lines.index(f"tracebus: warning: {WARNING}") < lines.index(f"warning: {WARNING}")
    trace = pb.Trace.FromString(out.read_bytes())
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
