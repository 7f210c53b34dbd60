"""The tracing service process: `python -m actors.service`.

Binds a ROUTER producer port (anyone local may connect) and a ROUTER consumer
port (its socket file owner-only, inside the 0700 runtime directory), creates
each producer's SMB as a sealed memfd, and runs ServiceCore. A peer's pid and
uid come from the kernel (libzmq's Peer-Address property of an ipc:// peer);
a pidfd per peer tells the service within a poll round that the process died.
SIGINT/SIGTERM stop every session, release every SMB and exit 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import zmq

from actors.core.service_core import Clocks, Peer, ServiceCore, SliceBudget, ToProducer
from actors.core.sessions import DEFAULT_LIMITS, Limits
from actors.endpoints import (
    default_consumer_endpoint,
    default_producer_endpoint,
    socket_answers,
)
from actors.loop import Loop, Timer
from protos import framing
from shm.abi import Geometry
from shm.region import MemfdRegion

CLOCKS = (
    (6, time.CLOCK_BOOTTIME),
    (1, time.CLOCK_REALTIME),
    (3, time.CLOCK_MONOTONIC),
    (5, time.CLOCK_MONOTONIC_RAW),
)


READ_SLICE_NS = 10_000_000  # one read-back slice's time budget; other peers are served between


def log(text: str) -> None:
    print(f"[service] {text}", file=sys.stderr, flush=True)


class ServedSmb:
    """A producer's SMB as the core sees it: a sealed memfd the producer maps
    through /proc/<service pid>/fd/<n>."""

    def __init__(self, geometry: Geometry) -> None:
        self.region = MemfdRegion.create(geometry.size, "tracebus-smb")
        self.buf = self.region.buf
        self.path = f"/proc/{os.getpid()}/fd/{self.region.fd}"

    def close(self) -> None:
        self.region.close()


def snapshot_clocks() -> list[tuple[int, int]]:
    return [(clock_id, time.clock_gettime_ns(clk)) for clock_id, clk in CLOCKS]


def peer_credentials(frame: zmq.Frame) -> tuple[int, int]:
    """(process id, uid) of an ipc:// peer from libzmq's "localhost:UID:GID:PID"."""
    try:
        address = frame.get("Peer-Address")
    except zmq.ZMQError:
        return 0, -1
    if not isinstance(address, str):  # an int only for integer properties
        return 0, -1
    try:
        _host, uid, _gid, pid = address.rsplit(":", 3)
        return int(pid), int(uid)
    except ValueError:
        return 0, -1


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://") :]) if endpoint.startswith("ipc://") else None


class ServiceShell:
    def __init__(
        self, producer_endpoint: str, consumer_endpoint: str, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.loop = Loop()
        self.ctx = zmq.Context()
        self.endpoints = (producer_endpoint, consumer_endpoint)
        self.producer_sock = self._bind(producer_endpoint, private=False)
        self.consumer_sock = self._bind(consumer_endpoint, private=True)
        clocks = Clocks(snapshot_clocks, lambda: time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        self.core = ServiceCore(ServedSmb, clocks, os.getuid(), os.getpid(), limits)
        self.pidfds: dict[tuple[str, bytes], int] = {}
        self.timer: Timer | None = None
        self.read_timer: Timer | None = None
        self.dropped_frames = 0
        self.loop.add_socket(self.producer_sock, lambda: self._drain(self.producer_sock, "p"))
        self.loop.add_socket(self.consumer_sock, lambda: self._drain(self.consumer_sock, "c"))

    def _bind(self, endpoint: str, private: bool) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a gone peer is an error, not silence
        sock.setsockopt(zmq.LINGER, 0)
        path = ipc_path(endpoint)
        if path is not None and path.exists():
            if socket_answers(path):
                raise RuntimeError(f"{endpoint} is in use: is another service running?")
            path.unlink()  # a stale socket from a crashed service
        old_umask = os.umask(0o077 if private else 0o000)
        try:
            sock.bind(endpoint)
        finally:
            os.umask(old_umask)
        if path is not None and private:
            os.chmod(path, 0o600)
        return sock

    # -- receiving ------------------------------------------------------------------------

    def _drain(self, sock: zmq.Socket, side: str) -> None:
        for _ in range(256):  # bounded, so timers and the other port get their turn
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._receive(side, frames)

    def _receive(self, side: str, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            self.dropped_frames += 1
            return
        identity = frames[0].bytes
        pid, uid = peer_credentials(frames[1])
        payload = [f.bytes for f in frames[1:]]
        peer = Peer(identity, pid, uid)
        try:
            if side == "p":
                from_producer = framing.decode_from_producer(payload)
                self._watch(side, identity, pid)
                outputs = self.core.handle_producer(peer, from_producer, time.monotonic_ns())
            else:
                from_consumer = framing.decode_from_consumer(payload)
                self._watch(side, identity, pid)
                outputs = self.core.handle_consumer(peer, from_consumer, time.monotonic_ns())
        except framing.FramingError as e:
            self.dropped_frames += 1
            log(f"dropped a frame from pid {pid}: {e}")
            return
        self._send_all(outputs)

    def _watch(self, side: str, identity: bytes, pid: int) -> None:
        key = (side, identity)
        if key in self.pidfds or pid <= 0:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            self._peer_gone(side, identity)
            return
        self.pidfds[key] = fd
        self.loop.add_fd(fd, lambda: self._peer_gone(side, identity))

    def _peer_gone(self, side: str, identity: bytes) -> None:
        fd = self.pidfds.pop((side, identity), None)
        if fd is not None:
            self.loop.remove(fd)
            os.close(fd)
        now = time.monotonic_ns()
        if side == "p":
            self._send_all(self.core.producer_gone(identity, now))
        else:
            self._send_all(self.core.consumer_gone(identity, now))

    # -- sending and timers -----------------------------------------------------------------

    def _send_all(self, outputs: list) -> None:
        for out in outputs:
            to_producer = isinstance(out, ToProducer)
            sock = self.producer_sock if to_producer else self.consumer_sock
            try:
                sock.send_multipart(framing.encode_routed(out.identity, out.msg))
            except zmq.ZMQError:  # EHOSTUNREACH: the peer is gone
                self._peer_gone("p" if to_producer else "c", out.identity)
        self._arm_timer()
        self._schedule_reads()

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline()
        if self.timer is not None:
            if self.timer.deadline == deadline:
                return
            self.timer.cancel()
            self.timer = None
        if deadline is not None:
            self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self._send_all(self.core.on_timer(time.monotonic_ns()))

    def _schedule_reads(self) -> None:
        """While a read is pending, one slice per loop turn: a timer due at once,
        so the loop polls its sockets (without waiting) between two slices."""
        if self.read_timer is None and self.core.pending_work():
            self.read_timer = self.loop.call_at(self.loop.now() + 1, self._continue_reads)

    def _continue_reads(self) -> None:
        self.read_timer = None
        end = time.monotonic_ns() + READ_SLICE_NS
        budget = SliceBudget(time_up=lambda: time.monotonic_ns() >= end)
        self._send_all(self.core.continue_reads(time.monotonic_ns(), budget))

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        self.loop.stop_on_signals()
        log(f"listening: producers on {self.endpoints[0]}, consumers on {self.endpoints[1]}")
        self.loop.run()
        log("stopping")
        if self.dropped_frames:
            log(f"dropped {self.dropped_frames} undecodable frames in all")
        if self.core.counters.messages_not_handled:
            unhandled = self.core.counters.messages_not_handled
            log(f"answered {unhandled} messages with no handler with an error")
        self._send_all(self.core.shutdown(time.monotonic_ns()))
        self.close()
        return 0

    def close(self) -> None:
        for fd in self.pidfds.values():
            os.close(fd)
        self.pidfds.clear()
        self.producer_sock.close(linger=0)
        self.consumer_sock.close(linger=500)  # let consumers hear that their session ended
        self.ctx.term()
        for endpoint in self.endpoints:
            path = ipc_path(endpoint)
            if path is not None:
                path.unlink(missing_ok=True)
        self.loop.close()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.service", description=__doc__)
    parser.add_argument("--producer-endpoint", help="ZeroMQ endpoint of the producer port")
    parser.add_argument("--consumer-endpoint", help="ZeroMQ endpoint of the consumer port")
    defaults = DEFAULT_LIMITS
    for name in ("max_sessions", "max_sessions_per_uid", "max_buffers_per_session"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=_positive, default=getattr(defaults, name),
                            help=f"default {getattr(defaults, name)}")  # fmt: skip
    args = parser.parse_args(argv)
    limits = Limits(args.max_sessions, args.max_sessions_per_uid, args.max_buffers_per_session)
    producer = args.producer_endpoint or default_producer_endpoint()
    consumer = args.consumer_endpoint or default_consumer_endpoint()
    try:
        shell = ServiceShell(producer, consumer, limits)
    except (zmq.ZMQError, OSError, RuntimeError) as e:
        log(f"cannot start: {e}")
        return 1
    return shell.run()


if __name__ == "__main__":
    sys.exit(main())
