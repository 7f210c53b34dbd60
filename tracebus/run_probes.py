"""The system probes of a `tracebus run`: one `python -m actors.probes` per run.

The runner starts a probes producer against the service it records on (its own
or a running one) before the session starts, so that the configs that name
linux.process_stats, linux.sys_stats or linux.ftrace record something, and
stops it after the read-back. A service that already has a probes producer
(one registered as perfetto.traced_probes, or hosting one of the probes' data
sources) keeps it and gets no second one: two would write every process and
counter twice. `--no-probes` starts none.

The probes process runs in a session of its own (a Ctrl-C in the terminal
reaches the command, not the probes that the read-back still needs), with its
output in a log file that is printed if it fails and removed afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracebus._children import log_tail, say, terminate

if TYPE_CHECKING:
    from actors.consumer import Consumer

PROBES_NAME = "perfetto.traced_probes"  # actors.probes.NAME (not imported: it is a CLI)
PROBE_DATA_SOURCES = ("linux.ftrace", "linux.process_stats", "linux.sys_stats")
REGISTER_TIMEOUT = 15.0  # a cold interpreter on a loaded machine
STOP_TIMEOUT = 10.0  # it stops its data sources, commits, removes its ftrace instance
POLL_S = 0.05


def probes_connected(state: Any) -> Any:
    """The producer (of a QueryServiceStateResponse) that is a probes producer, or None."""
    probes = PROBE_DATA_SOURCES
    hosting = {ds.producer_id for ds in state.data_sources if ds.descriptor.name in probes}
    for producer in state.producers:
        if producer.name == PROBES_NAME or producer.id in hosting:
            return producer
    return None


class RunProbes:
    """start() spawns the probes (unless the service has some) and waits until they
    registered; stop() ends them. Neither raises: probes are an extra."""

    def __init__(self, producer_endpoint: str, consumer_endpoint: str) -> None:
        self.producer_endpoint = producer_endpoint
        self.consumer_endpoint = consumer_endpoint
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None

    def start(self) -> None:
        from actors.consumer import Consumer
        from actors.core.consumer_core import ConsumerError

        try:
            consumer = Consumer.connect(self.consumer_endpoint)
        except ConsumerError as e:
            say(f"not starting the system probes: {e}")
            return
        try:
            present = probes_connected(consumer.query_state())
            if present is not None:
                say(f"using the system probes connected already (pid {present.pid})")
                return
            self._spawn()
            self._wait_registered(consumer)
        except ConsumerError as e:
            say(f"the system probes may miss the session's start: {e}")
        finally:
            consumer.close()

    def _spawn(self) -> None:
        fd, name = tempfile.mkstemp(prefix="tb-probes-", suffix=".log", dir="/tmp")
        self.log = Path(name)
        argv = [sys.executable, "-m", "actors.probes"]
        argv += ["--producer-endpoint", self.producer_endpoint]
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True
            )
        except OSError as e:
            say(f"cannot start the system probes: {e}")
        finally:
            os.close(fd)

    def _wait_registered(self, consumer: Consumer) -> None:
        """Until the service lists our probes (so that the session's instances start
        with the session), or they exit, or the bound."""
        deadline = time.monotonic() + REGISTER_TIMEOUT
        while self.proc is not None and self.proc.poll() is None:
            if self._registered(consumer.query_state()):
                return
            if time.monotonic() > deadline:
                say(f"the system probes did not register within {REGISTER_TIMEOUT:g} s")
                return
            time.sleep(POLL_S)  # polling the service's state: nothing to wait on
        if self.proc is not None:
            say(f"the system probes exited with {self.proc.returncode}:\n{log_tail(self.log)}")

    def _registered(self, state: Any) -> bool:
        """Connected: its data sources follow in the same burst, and one that
        registers after the session started still joins it (the service's rule)."""
        assert self.proc is not None, "asked only while our probes run"
        return any(p.pid == self.proc.pid for p in state.producers)

    def stop(self) -> None:
        """SIGTERM (the probes stop their instances, remove their ftrace instance),
        SIGKILL if they hang; their log removed (printed first if they failed)."""
        proc = self.proc
        if proc is not None:
            terminate(proc, STOP_TIMEOUT, "the system probes")
            if proc.returncode not in (0, -signal.SIGTERM):
                say(f"the system probes exited with {proc.returncode}:\n{log_tail(self.log)}")
        if self.log is not None:
            self.log.unlink(missing_ok=True)
