"""A freshly started process under a running session (issue 10, item 3): its first
event is in the trace, with or without a startup wait, though it exits at once;
and the application's process never loads Perfetto's schema."""

from __future__ import annotations

import pytest

from tests.test_sdk_processes import INSTANT, app_env, read_trace, run_app, start_session

pytestmark = pytest.mark.timeout(180)

FIRST_APP = """
import tracebus
{init}
tracebus.instant("first")
"""


@pytest.mark.parametrize(
    "init, wait",
    [
        ("", ""),  # no wait asked for: the default
        ("", "30"),  # TRACEBUS_STARTUP_WAIT_S, as `tracebus run` sets it
        ("tracebus.init(wait_for_start=30)", ""),
    ],
    ids=["default", "env-wait", "init-wait"],
)
def test_the_first_event_of_a_new_process_is_in_the_trace(rt, init, wait):
    consumer = start_session(rt)
    env = app_env(rt, TRACEBUS_STARTUP_WAIT_S=wait)
    app = run_app(rt, "first", FIRST_APP.format(init=init), env)
    trace = read_trace(rt, consumer, app.pid)
    (first,) = trace.named("first")
    assert first.pid == app.pid and first.type == INSTANT


NO_SCHEMA_APP = """
import sys, tracebus
tracebus.init(wait_for_start=30)
with tracebus.slice("recorded"):
    pass
assert tracebus.stats()["instances"] == 1, tracebus.stats()
loaded = sorted(m for m in sys.modules if m.startswith("perfetto"))
print("perfetto modules:", loaded, flush=True)
assert not loaded
"""


def test_an_sdk_process_that_records_never_imports_perfettos_schema(rt):
    consumer = start_session(rt)
    app = run_app(rt, "no_schema", NO_SCHEMA_APP)
    trace = read_trace(rt, consumer, app.pid)
    assert len(trace.named("recorded")) == 1


IDLE_SERVICE_APP = """
import time, tracebus
t0 = time.monotonic()
tracebus.instant("unrecorded")
print("first event took", time.monotonic() - t0, tracebus.stats()["state"], flush=True)
"""


def test_without_a_session_the_first_event_waits_only_for_the_registration(rt):
    """A service but no session: the service's reply to the registration ends the
    default wait, long before its bound."""
    from tracebus import _runtime

    rt.start_service()
    run_app(rt, "idle", IDLE_SERVICE_APP, app_env(rt, TRACEBUS_STARTUP_WAIT_S=""))
    line = (rt.dir / "idle.log").read_text().split("first event took ")[1].split()
    assert float(line[0]) < _runtime.DEFAULT_STARTUP_WAIT_S / 2 and line[1] == "running", line


SIGNAL_APP = """
import signal, sys, time, tracebus

def on_alarm(sig, frame):  # emits events while the first call starts the producer
    tracebus.instant("alarm")

signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, {period}, {period})
t0 = time.monotonic()
tracebus.instant("first")
signal.setitimer(signal.ITIMER_REAL, 0)
print(f"{{time.monotonic() - t0:.3f}}", flush=True)
"""


@pytest.mark.parametrize("period", [0.001, 0.0001])
def test_a_signal_handler_emitting_events_does_not_stall_the_start(rt, period):
    """A handler's event that lands inside the first call (which may hold a lock or
    an import the start thread needs) never waits for the start: the first call
    returns as soon as the session records the process, and its event is there."""
    consumer = start_session(rt)
    app = run_app(rt, "alarms", SIGNAL_APP.format(period=period), app_env(rt))
    elapsed = float((rt.dir / "alarms.log").read_text().split()[0])
    assert elapsed < 4, elapsed  # the wait asked for is 30 s; a stall took 5 to 120 s
    trace = read_trace(rt, consumer, app.pid)
    if period >= 0.001:  # at 10 kHz the pure twin loses a packet now and then (open)
        assert [e.pid for e in trace.named("first")] == [app.pid]
