"""The default startup wait (tracebus/_runtime.py): with no wait asked for, a
thread's first event waits while the producer starts against a service that
exists, until a track_event instance starts or the service answered the
registration without one; with no service, it does not wait at all."""

from __future__ import annotations

import threading
import time

import pytest

import tracebus
from tests.test_sdk_api import Rig
from tests.waiting import wait_for
from tracebus import _runtime

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch):
    _runtime.WANTED.clear()
    r = Rig(monkeypatch, {})
    r.auto_start = False
    yield r
    r.runtime.shutdown(timeout=1)
    _runtime.WANTED.clear()


def _first_event_in_a_thread(rig: Rig) -> threading.Thread:
    t = threading.Thread(target=tracebus.instant, args=("first",))
    t.start()
    wait_for(lambda: rig.producers, 10, "the producer the first event creates")
    return t


def test_without_a_service_the_first_event_does_not_wait(rig):
    rig.service_there.clear()
    t0 = time.monotonic()
    tracebus.instant("first")
    assert time.monotonic() - t0 < 2.0  # far below DEFAULT_STARTUP_WAIT_S
    assert rig.producers == [] and rig.instances[0].calls == []


def test_the_first_event_waits_for_a_running_sessions_instance(rig):
    t = _first_event_in_a_thread(rig)
    rig.producers[0].go.set()
    t.join(10)
    assert rig.instances[0].calls == [("instant", "first", "default", None, None, None)]


def test_a_registration_no_session_wants_ends_the_wait(rig):
    t = _first_event_in_a_thread(rig)
    t0 = time.monotonic()
    rig.runtime.data_source_registered()
    t.join(_runtime.DEFAULT_STARTUP_WAIT_S / 2)
    assert not t.is_alive() and time.monotonic() - t0 >= _runtime.REGISTERED_GRACE_S
    t1 = time.monotonic()
    tracebus.instant("later", category="other")  # the wait is over for every thread
    assert time.monotonic() - t1 < _runtime.REGISTERED_GRACE_S
    assert rig.instances[0].calls == []


def test_the_default_wait_is_bounded(rig, monkeypatch):
    monkeypatch.setattr(_runtime, "DEFAULT_STARTUP_WAIT_S", 0.3)
    t0 = time.monotonic()
    tracebus.instant("first")  # the fake producer never registers
    assert 0.3 <= time.monotonic() - t0 < 10


def test_a_wait_asked_for_outlasts_the_registration(monkeypatch):
    """A session may be enabled after the process started (the supervisor starts
    producers first): TRACEBUS_STARTUP_WAIT_S waits for the instance itself."""
    _runtime.WANTED.clear()
    rig = Rig(monkeypatch, {"TRACEBUS_STARTUP_WAIT_S": "30"})
    rig.auto_start = False
    try:
        t = _first_event_in_a_thread(rig)
        rig.runtime.data_source_registered()
        t.join(_runtime.REGISTERED_GRACE_S * 5)
        assert t.is_alive()  # still waiting
        rig.producers[0].go.set()
        t.join(10)
        assert [c[1] for c in rig.instances[0].calls] == ["first"]
    finally:
        rig.runtime.shutdown(timeout=1)
        _runtime.WANTED.clear()


def test_shutdown_ends_the_wait(rig):
    t = _first_event_in_a_thread(rig)
    rig.runtime.shutdown(timeout=1)
    t.join(_runtime.DEFAULT_STARTUP_WAIT_S / 2)
    assert not t.is_alive()
