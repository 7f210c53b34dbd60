"""The connections table (actors/connections.py), in one process over real UNIX
socket pairs: an entry dropped without its DISCONNECTED (a new connection took its
fd number first, or its fd was found stale) is handed to the shell as ended, so the
routing ids bound to it end too (the shell's side: tests/test_service_shell.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import replace

import pytest

from actors.connections import PERFETTO, ZMQ, Connection, Connections
from actors.core.limits import DEFAULT_LIMITS

NOW = 1_000_000_000


@pytest.fixture
def pairs() -> Iterator[list[socket.socket]]:
    """Socket pairs made by the test; all closed at the end."""
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def new_socket(pairs: list[socket.socket]) -> socket.socket:
    """The service's end of a new connection (its peer: this process)."""
    ours, peer = socket.socketpair()
    pairs += [ours, peer]
    return ours


def reuse_number(fd: int, pairs: list[socket.socket]) -> None:
    """The socket on `fd` is closed and a new connection gets its number, as the
    kernel does once libzmq closed it (dup2: the number is the one asked for)."""
    os.dup2(new_socket(pairs).fileno(), fd)


def bound(conn: Connection | None, identity: bytes) -> Connection:
    """A connection a routing id was bound to (what the shell's _watch does)."""
    assert conn is not None
    conn.identities.add(identity)
    return conn


@pytest.mark.parametrize(("side", "front"), [("c", PERFETTO), ("p", ZMQ), ("c", ZMQ)])
def test_an_entry_whose_number_a_new_connection_took_is_displaced(pairs, side, front):
    table = Connections()
    fd = new_socket(pairs).fileno()
    old = bound(table.accepted("c", fd, NOW), b"consumer")
    reuse_number(fd, pairs)  # before the DISCONNECTED of the old one was read
    new = table.accepted(side, fd, NOW, front=front)
    assert new is not None and new is not old
    assert table.by_fd[fd] is new
    assert table.take_displaced() == [old]
    assert table.take_displaced() == []  # taken once
    assert table.per_pid[os.getpid()] == 1  # the old one no longer counts


def test_an_entry_without_routing_ids_is_not_kept_once_displaced(pairs):
    table = Connections()
    fd = new_socket(pairs).fileno()
    assert table.accepted("p", fd, NOW) is not None  # never spoke: nothing to end
    reuse_number(fd, pairs)
    assert table.accepted("p", fd, NOW, front=PERFETTO) is not None
    assert table.take_displaced() == []


def test_a_known_connection_met_again_is_not_displaced(pairs):
    table = Connections()
    fd = new_socket(pairs).fileno()
    conn = bound(table.accepted("p", fd, NOW), b"producer")
    assert table.accepted("p", fd, NOW, pid=os.getpid()) is None  # its message, then its event
    assert table.by_fd[fd] is conn
    assert table.take_displaced() == []


def test_a_reported_disconnect_is_not_displaced_again(pairs):
    table = Connections()
    fd = new_socket(pairs).fileno()
    conn = bound(table.accepted("p", fd, NOW), b"producer")
    assert table.disconnected(fd, ZMQ, "p") is conn  # the shell ends its routing ids itself
    reuse_number(fd, pairs)
    assert table.accepted("p", fd, NOW, front=PERFETTO) is not None
    assert table.take_displaced() == []


def test_a_stale_entry_dropped_at_a_limit_check_is_displaced(pairs):
    table = Connections()
    limits = replace(DEFAULT_LIMITS, max_connections_per_process=1)
    first = new_socket(pairs)
    gone = bound(table.accepted("c", first.fileno(), NOW), b"consumer")
    live = table.accepted("c", new_socket(pairs).fileno(), NOW)
    assert live is not None
    first.close()  # closed unreported (its monitor event lost)
    assert table.admit(live.pid, live.uid, limits, NOW) == ""  # the stale one does not count
    assert table.take_displaced() == [gone]
