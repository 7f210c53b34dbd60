"""The service process itself: a second service refuses a live endpoint."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from actors.consumer import Consumer
from actors.core.consumer_core import ConsumerError
from tests.waiting import wait_for


def test_a_second_service_does_not_take_over_live_sockets():
    with tempfile.TemporaryDirectory(prefix="tb-", dir="/tmp") as d:
        endpoints = ["--producer-endpoint", f"ipc://{d}/p", "--consumer-endpoint", f"ipc://{d}/c"]
        first = subprocess.Popen(
            [sys.executable, "-m", "actors.service", *endpoints], stderr=subprocess.DEVNULL
        )
        try:

            def answers():
                try:
                    Consumer.connect(f"ipc://{d}/c", timeout=0.5).close()
                    return True
                except ConsumerError:
                    return False

            wait_for(answers, 15, "the first service")
            second = subprocess.run(
                [sys.executable, "-m", "actors.service", *endpoints],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert second.returncode == 1
            assert "is in use: is another service running?" in second.stderr
            assert answers()  # the first one still serves, on its own sockets
        finally:
            first.terminate()
            assert first.wait(timeout=15) == 0
        assert not Path(d, "p").exists() and not Path(d, "c").exists()
