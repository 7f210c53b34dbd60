"""The default startup wait (tracebus/_runtime.py): with no wait asked for, a
thread's first event waits while the producer starts against a service that
exists, until a track_event instance starts or the service answered the
registration without one; with no service, it does not wait at all."""

from __future__ import annotations

import threading
import time

import pytest

import tracebus
from actors.core import producer_core as core
from actors.producer import DataSource
from protos import tracebus_ipc_pb2 as ipc
from tests.test_producer_core import Rig as ProducerRig
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


# -- the producer's side: the registration's reply reaches the data source ----------------


class _Source(DataSource):
    name = "startup.source"
    replies = 0

    @classmethod
    def on_registered(cls) -> None:
        cls.replies += 1


def test_the_registration_reply_reaches_the_data_source_class():
    producer_rig = ProducerRig([_Source])
    producer_rig.host.connect(0)
    reply = ipc.InitializeConnectionResponse(
        hello=ipc.HelloReply(protocol_version=ipc.PROTOCOL_VERSION), producer_id=7
    )
    producer_rig.push(producer_rig.sent[0].request_id, initialize_connection=reply)
    (register,) = producer_rig.sent[1:]
    assert _Source.replies == 0
    out = producer_rig.core.handle(
        ipc.ServiceToProducer(
            request_id=register.request_id, register_data_source=ipc.RegisterDataSourceResponse()
        ),
        0,
    )
    assert out == [core.Registered("startup.source")]
    producer_rig.host.perform(out)
    assert _Source.replies == 1
    refused = ipc.RegisterDataSourceResponse(error="no")
    producer_rig.push(register.request_id, register_data_source=refused)
    assert _Source.replies == 1  # a refusal is no registration
