"""The service process itself: a second service refuses a live endpoint."""

from __future__ import annotations

from pathlib import Path

from actors.core.consumer_core import ConsumerError
from tests.processes import PYTHON, Runtime


def test_a_second_service_does_not_take_over_live_sockets(rt: Runtime):
    rt.start_service()
    endpoints = ["--producer-endpoint", rt.producer_endpoint]
    endpoints += ["--consumer-endpoint", rt.consumer_endpoint]
    second = rt.run([PYTHON, "-m", "actors.service", *endpoints], timeout=30)
    assert second.returncode == 1
    assert "is in use: is another service running?" in second.stderr
    try:  # the first one still serves, on its own sockets
        rt.consumer(timeout=5).query_state()
    except ConsumerError as e:
        raise AssertionError(f"the first service stopped answering: {e}") from None
    assert rt.stop(rt.service, timeout=15) == 0
    assert not Path(rt.dir, "p").exists() and not Path(rt.dir, "c").exists()
