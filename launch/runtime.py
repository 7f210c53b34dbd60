"""The supervisor's runtime directory, the endpoints in it, and their removal.

Runtime.prepare() makes the directory: the topology's runtime_dir, else a
fresh /tmp/tb-XXXXXXXX (short: ipc:// paths must fit in sun_path), 0700, with
results/ for the script runners' result files. It names the endpoints: the
service's producer and consumer ports (the topology's, else sockets in the
directory) and the supervisor's control socket, and when the service serves
Perfetto's sockets, their paths under Perfetto's own variable names (so that an
app built with the Perfetto SDK, started as a producer group, finds them); on a
relay's machine, the
relay's producer port (producer.sock in the directory) and the control socket.
An endpoint whose socket answers belongs to a topology that runs already:
SetupError, before anything is bound over it. link_default_control() points
the per-user default control path (launch/control.py) at our socket unless a
live supervisor holds it; remove() takes away what we made there, and only
that.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from actors.endpoints import (
    CONSUMER_ENV,
    CONSUMER_SOCKET,
    PERFETTO_CONSUMER_ENV,
    PERFETTO_PRODUCER_ENV,
    PRODUCER_ENV,
    PRODUCER_SOCKET,
    requested_perfetto_sockets,
    runtime_dir,
    socket_answers,
)
from launch.control import CONTROL_ENV, CONTROL_SOCKET
from launch.topology import ServiceSpec


class SetupError(Exception):
    """The topology cannot be run here (paths, directories): exit 2, nothing started."""


class Runtime:
    """Where a running topology's sockets live. `endpoints` maps PRODUCER_ENV,
    CONSUMER_ENV and CONTROL_ENV to their endpoints once prepare() ran."""

    def __init__(self, wanted: Path | None, service: ServiceSpec, *, relay: bool = False) -> None:
        self.wanted = wanted
        self.service = service
        self.relay = relay  # a relay serves the producers here; no service, no consumer port
        self.dir = Path()
        self.created = False  # the directory is ours to remove
        self.endpoints: dict[str, str] = {}
        self.default_link: Path | None = None

    def prepare(self) -> None:
        """The directory and the endpoints; SetupError if one is in use."""
        if self.wanted is None:
            self.dir = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))
            self.created = True
        else:
            self.dir = self.wanted
            self.created = not self.dir.exists()
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if self.relay:
            self.endpoints = {PRODUCER_ENV: self.ipc(PRODUCER_SOCKET)}
        else:
            self.endpoints = {
                PRODUCER_ENV: self.service.producer_endpoint or self.ipc(PRODUCER_SOCKET),
                CONSUMER_ENV: self.service.consumer_endpoint or self.ipc(CONSUMER_SOCKET),
                **self._perfetto_paths(),
            }
        self.endpoints[CONTROL_ENV] = self.ipc(CONTROL_SOCKET)
        for endpoint in self.endpoints.values():  # binding would steal a live one's path
            path = Path(endpoint.removeprefix("ipc://"))
            if endpoint.startswith("ipc://") and socket_answers(path):
                raise SetupError(f"{endpoint} is in use: is this topology running already?")
        (self.dir / "results").mkdir(exist_ok=True)

    def _perfetto_paths(self) -> dict[str, str]:
        """Perfetto's socket variables, when the service serves those sockets."""
        spec = self.service
        producer, consumer = spec.perfetto_producer_socket, spec.perfetto_consumer_socket
        try:
            paths = requested_perfetto_sockets(
                spec.perfetto_sockets,
                str(producer) if producer else None,
                str(consumer) if consumer else None,
            )
        except RuntimeError as e:  # an abstract name in the environment
            raise SetupError(str(e)) from None
        if paths is None:
            return {}
        return {
            PERFETTO_PRODUCER_ENV: str(paths.producer),
            PERFETTO_CONSUMER_ENV: str(paths.consumer),
        }

    def ipc(self, name: str) -> str:
        return f"ipc://{self.dir / name}"

    def result_file(self, consumer: str) -> Path:
        """Where a script consumer's runner reports the traces it saved."""
        return self.dir / "results" / f"{consumer}.json"

    def link_default_control(self, say: Callable[[str], None]) -> None:
        """Point the per-user default control path at our socket, unless a live
        supervisor holds it (then ctl needs --control or TRACEBUS_CONTROL)."""
        ours = self.dir / CONTROL_SOCKET
        try:
            link = runtime_dir() / CONTROL_SOCKET
            if link == ours:
                return
            if link.is_symlink() or link.exists():
                if socket_answers(link):
                    say(f"{link} belongs to another supervisor; ctl needs --control")
                    return
                link.unlink()
            link.symlink_to(ours)
            self.default_link = link
        except (OSError, RuntimeError) as e:
            say(f"no default control link: {e}")

    def remove(self, *, control_bound: bool, service_started: bool) -> None:
        """Our default link, the socket files we (or our service or relay, whose start
        `service_started` says) bound, and the directory if we created it (else just
        results/)."""
        if self.dir == Path():
            return  # prepare() failed before it chose a directory: nothing here is ours
        link = self.default_link
        if link is not None and link.is_symlink():
            if link.readlink() == self.dir / CONTROL_SOCKET:
                link.unlink(missing_ok=True)
        ours = [CONTROL_ENV] if control_bound else []
        if service_started:  # a killed service leaves its own
            ours += [PRODUCER_ENV, CONSUMER_ENV]
        for key in ours:
            if self.endpoints.get(key, "").startswith("ipc://"):
                Path(self.endpoints[key].removeprefix("ipc://")).unlink(missing_ok=True)
        if self.created:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            shutil.rmtree(self.dir / "results", ignore_errors=True)
