"""What the service's two front ends (the ZeroMQ ports, actors/service.py; Perfetto's
sockets, actors/perfetto_port.py) do alike to peers that misbehave or stall:
how often a full pipe is retried, how a repeated event is logged, and how a
peer given up on is counted and reported."""

from __future__ import annotations

import resource
from collections.abc import Callable

from actors.core.producers import ServiceCounters

# How often full pipes are retried while some peer has a queue. ZeroMQ says when
# the socket, not one peer's pipe, has room, so this is a timer; it paces a read-back
# that outruns its consumer (5 ms here halved read-back speed: 29 -> 52 MB/s at 1 ms).
RETRY_NS = 1_000_000
OTHER_USERS = "other_users"  # refused: a peer of a user this service does not admit


def worth_logging(count: int) -> bool:
    """The first few of a repeated event, then the 2^k-th: a peer sending garbage
    without end costs the log a line per doubling, not a line per frame."""
    return count <= 16 or count & (count - 1) == 0


def count_give_up(
    counters: ServiceCounters, producer: bool, peer: str, why: str, dropped: int
) -> str:
    """Count a peer given up on (the service state's peers_given_up) with the
    `dropped` messages queued for it; the log line that says so. `peer` names it
    ("producer pid 12")."""
    counters.given_up_messages_dropped += dropped
    if producer:
        counters.producers_given_up += 1
    else:
        counters.consumers_given_up += 1
    return f"gave up on {peer}: {why}; dropped {dropped} queued messages"


def count_refusal(counters: ServiceCounters, name: str) -> int:
    """One more refusal under `name` (the service state's refusals); the count."""
    count = counters.refusals[name] = counters.refusals.get(name, 0) + 1
    return count


def admitted(producer: bool, uid: int, service_uid: int, allow_other_users: bool) -> bool:
    """Producers of the service's user (any user's if allowed), consumers of its
    user or root; a peer without kernel credentials (uid -1) is of no user."""
    if producer:
        return uid == service_uid or (allow_other_users and uid >= 0)
    return uid in (service_uid, 0)


def not_admitted(producer: bool, uid: int, service_uid: int) -> str:
    """Why a peer of `uid` is not admitted, for it and the log."""
    if producer:
        return (
            f"producers of uid {uid} are not allowed: this service (uid {service_uid}) "
            "admits other users' producers only when started with --allow-other-users"
        )
    return f"consumers of uid {uid} are not allowed: only uid {service_uid} and root"


def connection_refused(
    counters: ServiceCounters,
    limit: str,
    value: int,
    pid: int,
    uid: int,
    log: Callable[[str], None],
) -> str:
    """Count a connection refused over a connection limit (a few log lines for a
    flood of them); the text its peer is told."""
    count = count_refusal(counters, limit)
    text = f"too many connections: {limit} is {value}"
    if count <= 3 or count % 100 == 0:
        log(f"refused a connection of pid {pid} (uid {uid}): {text} ({count} so far)")
    return text


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit, and return it:
    each connection holds fds of the service (a Perfetto peer up to three: its
    socket, its pidfd, an fd waiting for its frame) and the connection limits
    admit 1024 per uid, past the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
    return hard
