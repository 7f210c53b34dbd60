"""Perfetto's sockets (actors/perfetto_port.py) wired into the service
(actors/service.py): the --perfetto-* flags, each side's translator
(actors/core/perfetto_producer.py, perfetto_consumer.py), and the admission
of a new connection under the ZeroMQ ports' rules (actors/peer_limits.py):
its user admitted as a ZeroMQ peer's would be, its process and uid within the
connection limits counted over both front ends (an entry of actors/connections.py
tagged PERFETTO), cut if it stays silent; refusals counted in the service
state's `refusals` and logged the same way."""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from actors.connections import PERFETTO, Connection, Connections
from actors.core.perfetto_consumer import PerfettoConsumerConn
from actors.core.perfetto_producer import PerfettoProducerConn
from actors.core.service_core import Output, ServiceCore
from actors.endpoints import (
    PERFETTO_CONSUMER_ENV,
    PERFETTO_PRODUCER_ENV,
    PerfettoSockets,
    requested_perfetto_sockets,
)
from actors.loop import Loop
from actors.peer_limits import (
    OTHER_USERS,
    admitted,
    connection_refused,
    count_refusal,
    not_admitted,
    worth_logging,
)
from actors.perfetto_port import PRODUCER, Hooks, PerfettoPort, Translator
from actors.trace_files import TraceFiles


@dataclass(frozen=True)
class Wiring:
    """What the front end uses of the service's shell."""

    loop: Loop
    core: ServiceCore
    connections: Connections
    files: TraceFiles  # write_into_file fds a consumer attaches are adopted here
    send_all: Callable[[list[Output]], None]
    drained: Callable[[], None]  # a queue emptied: read-back may go on
    arm_cut: Callable[[], None]  # a new connection may be cut if it stays silent
    smb_fd: Callable[[bytes], int | None]  # a producer's SMB memfd (the service's own)
    service_uid: int
    allow_other_users: bool
    peer_send_timeout_s: float
    log: Callable[[str], None]


def perfetto_translators(
    files: TraceFiles,
) -> tuple[Callable[[bytes], Translator], Callable[[bytes], Translator]]:
    """The factories of a Perfetto producer's and consumer's translators
    (tests/perfetto_standin.py puts its own here)."""
    return PerfettoProducerConn, lambda identity: PerfettoConsumerConn(identity, files.adopt)


def open_perfetto_port(wiring: Wiring, sockets: PerfettoSockets) -> PerfettoPort:
    """Listen on both sockets (RuntimeError: a path in use or not a socket)."""
    producer, consumer = perfetto_translators(wiring.files)
    hooks = Hooks(
        producer, consumer, wiring.send_all, functools.partial(admit, wiring), wiring.smb_fd,
        wiring.files.discard_adopted, wiring.drained, wiring.log,
    )  # fmt: skip
    return PerfettoPort(
        wiring.loop, wiring.core, sockets, hooks, wiring.connections,
        peer_send_timeout_s=wiring.peer_send_timeout_s,
        others_may_produce=wiring.allow_other_users,
    )  # fmt: skip


def admit(wiring: Wiring, side: str, fd: int) -> Connection | None:
    """The entry of a new connection on `fd`, or None: refused (counted, logged;
    the port closes it) or gone already."""
    now = time.monotonic_ns()
    conn = wiring.connections.accepted(side, fd, now, front=PERFETTO)
    if conn is None:
        return None
    producer = side == PRODUCER
    if not admitted(producer, conn.uid, wiring.service_uid, wiring.allow_other_users):
        if worth_logging(count_refusal(wiring.core.counters, OTHER_USERS)):
            why = not_admitted(producer, conn.uid, wiring.service_uid)
            wiring.log(f"refused a Perfetto connection: {why}")
        wiring.connections.disconnected(fd, PERFETTO)
        return None
    limit = wiring.connections.admit(conn.pid, conn.uid, wiring.core.limits, now)
    if limit:
        connection_refused(wiring.core.counters, wiring.core.limits, limit, conn.pid, conn.uid,
                           wiring.log)  # fmt: skip
        wiring.connections.disconnected(fd, PERFETTO)
        return None
    wiring.arm_cut()
    return conn


def add_perfetto_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Perfetto's sockets, for apps built with the Perfetto SDK")
    group.add_argument(
        "--perfetto-sockets", action="store_true",
        help=f"serve Perfetto's producer and consumer sockets: ${PERFETTO_PRODUCER_ENV} and "
        f"${PERFETTO_CONSUMER_ENV} if set, else /run/perfetto/traced-producer.sock and "
        "traced-consumer.sock if /run/perfetto exists, else /tmp/perfetto-producer and "
        "/tmp/perfetto-consumer",
    )  # fmt: skip
    for side in ("producer", "consumer"):
        group.add_argument(
            f"--perfetto-{side}-socket",
            metavar="PATH",
            help=f"the Perfetto {side} socket (implies --perfetto-sockets)",
        )


def perfetto_sockets(args: argparse.Namespace) -> PerfettoSockets | None:
    """The sockets the --perfetto-* flags ask for (None: the front end is off)."""
    return requested_perfetto_sockets(
        args.perfetto_sockets, args.perfetto_producer_socket, args.perfetto_consumer_socket
    )
