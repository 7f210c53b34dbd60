"""What the service's two front ends (the ZeroMQ ports, actors/service.py; Perfetto's
sockets, actors/perfetto_port.py) do alike to peers that misbehave or stall:
how often a full pipe is retried, how a repeated event is logged, and how a
peer given up on is counted and reported."""

from __future__ import annotations

import resource
from collections.abc import Callable

from actors.core.limits import Limits
from actors.core.producers import ServiceCounters

# How often full pipes are retried while some peer has a queue. ZeroMQ says when
# the socket, not one peer's pipe, has room, so this is a timer; it paces a read-back
# that outruns its consumer (5 ms here halved read-back speed: 29 -> 52 MB/s at 1 ms).
RETRY_NS = 1_000_000
OTHER_USERS = "other_users"  # refused: a peer of a user this service does not admit


def worth_logging(count: int, before: int | None = None) -> bool:
    """Whether a repeated event's count, gone from `before` (count - 1 if not
    given) to `count`, passed one worth a log line: the first 16, then each
    2^k-th. A peer sending garbage without end costs the log a line per
    doubling, not a line per frame."""
    if before is None:
        before = count - 1
    return before < 16 or count.bit_length() > before.bit_length()


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
    return count_refusals(counters, name)[1]


def count_refusals(counters: ServiceCounters, name: str, n: int = 1) -> tuple[int, int]:
    """`n` more refusals under `name` (the service state's refusals); the count
    before and after, for worth_logging."""
    before = counters.refusals.get(name, 0)
    after = counters.refusals[name] = before + n
    return before, after


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
    limits: Limits,
    limit: str,
    pid: int,
    uid: int,
    log: Callable[[str], None],
) -> str:
    """Count a connection refused over `limit`, one of `limits`' fields (a few log
    lines for a flood of them); the text its peer is told."""
    count = count_refusal(counters, limit)
    text = f"too many connections: {limit} is {getattr(limits, limit)}"
    if worth_logging(count):
        log(f"refused a connection of pid {pid} (uid {uid}): {text} ({count} so far)")
    return text


# The most fds of the service one connection holds: a Perfetto producer's socket,
# its pidfd, an fd that came with a frame cut and not yet handled, one waiting
# for its incomplete frame, and its SMB memfd (a ZeroMQ peer holds fewer).
FDS_PER_CONNECTION = 5


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit, and return the
    soft limit now in force: each connection holds up to FDS_PER_CONNECTION fds
    of the service, and the connection limits admit 1024 per uid, past the
    usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
    return hard


def open_files_note(limit: int, max_connections_per_uid: int) -> str:
    """The log line on the open-files limit at start: a warning when one uid's
    connections alone could exhaust it (accepts then pause, and a peer's fds are
    refused, costing that peer only)."""
    wanted = max_connections_per_uid * FDS_PER_CONNECTION
    if limit < wanted:
        return (f"warning: the open-files limit is {limit}, below the {wanted} that "
                f"max_connections_per_uid ({max_connections_per_uid}) connections may hold; "
                "raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower "
                "max_connections_per_uid")  # fmt: skip
    return f"open-files limit: {limit}"
