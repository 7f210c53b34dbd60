"""The relay process: `python -m actors.relay --service tcp://HOST:PORT`.

Runs on a machine other than the central service's. Local producers connect to
it exactly as to a service (--producer-endpoint, default the service's default:
$TRACEBUS_PRODUCER_SOCK or the runtime dir), each gets its SMB as a sealed memfd
over the handoff socket beside that port (actors/smb_handoff.py), and the relay
forwards their protocol over one ZeroMQ DEALER to the service's relay endpoint:
TCP with CURVE (--key, --service-key), or plain TCP with --insecure only. The
rules are RelayCore's (actors/core/relay_core.py); this shell owns the sockets,
the pidfds of the producers, the clocks and the timers.

- A producer's pid and uid come from the kernel (the ipc:// peer's Peer-Address);
  only producers of the relay's own user are admitted. A pidfd per producer tells
  the relay within a poll round that one died (RelayProducerGone upstream).
- The upstream DEALER keeps one random 16-byte routing id for the relay's life, so
  the service knows a reconnect. It queues nothing for a link that is not up
  (ZMQ_IMMEDIATE); what ZeroMQ does not take waits in RelayCore's bounded queue.
  ZeroMQ heartbeats drop a dead TCP connection and ZeroMQ connects again by itself.
- SIGINT/SIGTERM: each producer's committed and complete chunks and its end go up
  (ZeroMQ gets a second to send them), SMBs released, sockets closed, socket
  files removed, exit 0. The process is non-dumpable, as the service (its SMBs stay private).

Log lines (stderr, "[relay] "): `listening: producers on ..., service ...`,
`link up: machine id N`, `link down: <why>`, `dropped N chunks (M bytes) without
a link`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import zmq
from zmq.utils.monitor import parse_monitor_message

from actors import host_info
from actors.core.limits import Limits
from actors.core.relay_core import Link, Log, RelayConfig, RelayCore, ToProducer
from actors.endpoints import claim_socket_path, default_producer_endpoint
from actors.loop import Loop, Timer
from actors.peer_limits import RETRY_NS, worth_logging
from actors.relay_keys import KeyFileError, load_pair, load_public
from actors.service import (
    ServedSmb,
    add_limit_flags,
    ipc_path,
    machine_limits,
    make_non_dumpable,
    peer_credentials,
    seconds,
    smb_handoff_path,
)
from actors.smb_handoff import SmbHandoff
from protos import framing
from protos import tracebus_ipc_pb2 as ipc

ROUTING_ID_BYTES = 16
# The service's limits the relay applies to its producers (--max-... flags as the service's).
RELAY_LIMITS = (
    "max_producers_per_uid",
    "max_data_sources_per_producer",
    "max_smb_bytes_per_process",
    "max_smb_bytes_per_uid",
    "max_connections_per_process",
    "max_connections_per_uid",
)
HEARTBEAT_IVL_MS = 1000
# Messages ZeroMQ holds (of at most relay_chunks.PIECE_BYTES each: 2 MiB); the rest
# waits in the relay's accounted queue.
UPSTREAM_HWM = 8
# Handshake outcomes on the link (a refused key is final: ZeroMQ does not retry it).
HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
STOP_LINGER_MS = 1000  # at exit, for the producers' last chunks and ends to leave
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# The clocks a sync round carries (BuiltinClock id: POSIX clock), read back to back.
SYNC_CLOCKS = (
    (6, time.CLOCK_BOOTTIME),
    (3, time.CLOCK_MONOTONIC),
    (5, time.CLOCK_MONOTONIC_RAW),
    (1, time.CLOCK_REALTIME),
)


def log(text: str) -> None:
    print(f"[relay] {text}", file=sys.stderr, flush=True)


def read_clocks() -> list[tuple[int, int]]:
    readings = [time.clock_gettime_ns(clk) for _, clk in SYNC_CLOCKS]
    return [(clock_id, ns) for (clock_id, _), ns in zip(SYNC_CLOCKS, readings, strict=True)]


def machine_id_hint(machine_name: str) -> str:
    """What the service hashes into the machine id: this boot of this host, and the
    machine name (two relays on one host with two names are two machines)."""
    try:
        boot_id = BOOT_ID.read_text().strip()
    except OSError:
        boot_id = ""
    return f"{boot_id}/{machine_name}"


class Curve:
    """The relay's CURVE client keys and the service's public key (Z85)."""

    def __init__(self, key: Path, service_key: Path) -> None:
        self.public, self.secret = load_pair(key)
        self.server = load_public(service_key)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server


class RelayShell:
    def __init__(
        self, service: str, producer_endpoint: str, curve: Curve | None, config: RelayConfig
    ) -> None:
        self.loop = Loop()
        self.ctx = zmq.Context()
        self.service_endpoint = service
        self.producer_endpoint = producer_endpoint
        self.uid = os.getuid()
        handoff_at = smb_handoff_path(producer_endpoint)
        self.producer_sock = self._bind_producers(producer_endpoint)
        self.handoff = SmbHandoff(self.loop, handoff_at, log, others_may_connect=False)
        self.upstream = self._connect_upstream(service, curve, config.link_timeout_ns)
        self.core = RelayCore(config, functools.partial(ServedSmb, self.handoff), read_clocks)
        self.pidfds: dict[bytes, int] = {}
        self.pids: dict[bytes, int] = {}
        self.timer: Timer | None = None
        self.retry_timer: Timer | None = None
        self.dropped_frames = 0
        self.producer_sends_dropped = 0
        self.exit_code = 0
        self.handshake_failures = 0
        self.loop.add_socket(self.producer_sock, self._drain_producers)
        self.loop.add_socket(self.upstream, self._drain_upstream)
        self.loop.add_socket(self.monitor, self._on_monitor)

    def _bind_producers(self, endpoint: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * framing.MAX_FRAME_BYTES)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        path = ipc_path(endpoint)
        if path is not None and not str(path).startswith("@"):  # not an abstract socket
            claim_socket_path(path)  # a stale socket of a crashed process is replaced
        old_umask = os.umask(0o077)
        try:
            sock.bind(endpoint)
        finally:
            os.umask(old_umask)
        return sock

    def _connect_upstream(self, service: str, curve: Curve | None, timeout_ns: int) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, os.urandom(ROUTING_ID_BYTES))
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no queue toward a link that is not up
        sock.setsockopt(zmq.SNDHWM, UPSTREAM_HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * framing.MAX_RELAY_FRAME_BYTES)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, timeout_ns // 1_000_000))
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        if curve is not None:
            curve.apply(sock)
        address = "inproc://tracebus-relay-monitor"
        sock.monitor(address, HANDSHAKE_EVENTS)
        self.monitor = self.ctx.socket(zmq.PAIR)
        self.monitor.setsockopt(zmq.LINGER, 0)
        self.monitor.connect(address)
        sock.connect(service)
        return sock

    def _on_monitor(self) -> None:
        """The link's handshakes: a key the service refuses is final (ZeroMQ does
        not retry it), so the relay says so and exits; a failed handshake of
        another kind (a wrong --service-key, not a tracebus service) is said."""
        for _ in range(64):
            try:
                event = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                log(
                    f"the service at {self.service_endpoint} refused this relay's key "
                    f"(status {event['value']}): list its public key in the service's "
                    "--relay-clients directory"
                )
                self.exit_code = 1
                self.loop.stop()
                return
            if kind != zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_failures += 1
                if worth_logging(self.handshake_failures):
                    log(
                        f"the handshake with {self.service_endpoint} failed: is it a tracebus "
                        "service's relay endpoint, secured as this relay is (CURVE with "
                        "--service-key its public key, or --insecure on both sides)? "
                        f"({self.handshake_failures} so far)"
                    )

    # -- local producers ------------------------------------------------------------------

    def _drain_producers(self) -> None:
        for _ in range(256):  # bounded, so the upstream gets its turn
            try:
                frames = self.producer_sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._from_producer(frames)
        self._after()

    def _from_producer(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            self.dropped_frames += 1
            return
        identity = frames[0].bytes
        pid, uid = peer_credentials(frames[1])
        try:
            msg = framing.decode_from_producer([f.bytes for f in frames[1:]])
        except framing.FramingError as e:
            self._count_dropped(pid, str(e))
            return
        if uid != self.uid or self.pids.get(identity, pid) != pid:
            self._refuse(identity, msg.request_id, uid)
            return
        try:
            outputs = self.core.handle_producer(identity, pid, uid, msg, time.monotonic_ns())
        except Exception:  # noqa: BLE001 - a bug one message meets must not end the relay
            log(f"a message from pid {pid} failed (a bug):\n{traceback.format_exc()}")
            return
        # A pidfd for a producer the core took in only: its limits bound them (a
        # flood of connections that never initialize holds nothing here).
        if identity in self.core.producers and not self._watch(identity, pid):
            outputs += self.core.producer_gone(identity, time.monotonic_ns())  # gone already
        self._perform(outputs)

    def _count_dropped(self, pid: int, why: str) -> None:
        self.dropped_frames += 1
        if worth_logging(self.dropped_frames):
            log(f"dropped a frame from pid {pid}: {why} ({self.dropped_frames} so far)")

    def _refuse(self, identity: bytes, request_id: int, uid: int) -> None:
        text = (
            f"producers of uid {uid} are not allowed here (relay of uid {self.uid})"
            if uid != self.uid
            else "this routing id belongs to another process: connect with one of your own"
        )
        reply = ipc.ServiceToProducer(request_id=request_id)
        reply.error.message = text
        self._perform([ToProducer(identity, reply)])

    def _watch(self, identity: bytes, pid: int) -> bool:
        if identity in self.pidfds:
            return True
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False  # it is gone already
        self.pidfds[identity] = fd
        self.pids[identity] = pid
        self.loop.add_fd(fd, lambda: self._producer_gone(identity))
        return True

    def _unwatch(self, identity: bytes) -> None:
        fd = self.pidfds.pop(identity, None)
        self.pids.pop(identity, None)
        if fd is not None:
            self.loop.remove(fd)
            os.close(fd)

    def _producer_gone(self, identity: bytes) -> None:
        self._unwatch(identity)
        self._perform(self.core.producer_gone(identity, time.monotonic_ns()))
        self._after()

    # -- the service ----------------------------------------------------------------------------

    def _drain_upstream(self) -> None:
        for _ in range(256):
            try:
                frames = self.upstream.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._from_service(frames)
        self._after()

    def _from_service(self, frames: list[bytes]) -> None:
        now = time.monotonic_ns()
        try:
            channel, rest = framing.split_channel(frames)
            if channel == 0:
                outputs = self.core.handle_control(framing.decode_to_relay(rest), now)
            else:
                outputs = self.core.handle_for_producer(
                    channel, framing.decode_to_producer(rest), now
                )
        except framing.FramingError as e:
            self._count_dropped(0, f"from the service: {e}")
            return
        except Exception:  # noqa: BLE001 - a bug one message meets must not end the relay
            log(f"a message from the service failed (a bug):\n{traceback.format_exc()}")
            return
        self._perform(outputs)

    # -- sending and timers -----------------------------------------------------------------

    def _perform(self, outputs: list) -> None:
        unreachable: list[bytes] = []
        for out in outputs:
            if isinstance(out, Log):
                log(out.text)
                continue
            try:
                frames = framing.encode_routed(out.identity, out.msg)
                self.producer_sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError as e:  # a full pipe (a producer not reading), or gone
                if e.errno == zmq.EHOSTUNREACH and out.identity not in unreachable:
                    unreachable.append(out.identity)
                self.producer_sends_dropped += 1
                dropped = self.producer_sends_dropped
                if worth_logging(dropped):
                    log(f"a message to a producer was dropped: {e} ({dropped} so far)")
        for identity in unreachable:  # its connection closed: it exited or reconnected
            if identity in self.core.producers:
                self._producer_gone(identity)

    def _after(self) -> None:
        """After each turn: send what the queue holds, then the timers."""
        self._flush_queue()
        self._arm_timer()

    def _flush_queue(self) -> None:
        """Send from the queue's head until ZeroMQ takes no more; each time some
        went, waiting commits may take the room."""
        queue = self.core.queue
        while self._send_some():
            self._perform(self.core.drained(time.monotonic_ns()))
        if len(queue) and self.retry_timer is None:
            self.retry_timer = self.loop.call_at(self.loop.now() + RETRY_NS, self._on_retry)

    def _send_some(self) -> int:
        queue = self.core.queue
        sent = 0
        while (frames := queue.head()) is not None:
            try:
                self.upstream.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                break
            queue.pop()
            sent += 1
        return sent

    def _on_retry(self) -> None:
        self.retry_timer = None
        self._after()

    def _arm_timer(self) -> None:
        self.timer = self.loop.rearm(self.timer, self.core.next_deadline(), self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self._perform(self.core.on_timer(time.monotonic_ns()))
        for identity in [i for i in self.pidfds if i not in self.core.producers]:
            self._unwatch(identity)  # ended by the core (silent); it starts over if it speaks
        self._after()

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            make_non_dumpable()  # before any SMB exists
        except OSError as e:
            log(f"cannot start: {e}")
            self.close()
            return 1
        self.loop.stop_on_signals()
        log(f"listening: producers on {self.producer_endpoint}, service {self.service_endpoint}")
        self._perform(self.core.on_timer(time.monotonic_ns()))  # the first InitRelay
        self._after()
        self.loop.run()
        log("stopping")
        linger = self._say_goodbye()
        chunks, nbytes = self.core.lost_total.totals()
        if chunks:
            log(f"dropped {chunks} chunks ({nbytes} bytes) without a link in all")
        counters = self.core.counters
        log(
            f"sent {counters.chunks_sent} chunks; {counters.chunks_invalid} moves named no "
            f"complete chunk; {counters.waiting_dropped} producer messages past the waiting "
            f"bound, {self.producer_sends_dropped} to producers and {self.dropped_frames} "
            "undecodable frames dropped"
        )
        if self.core.refusals:
            refused = ", ".join(f"{n} {c}" for n, c in sorted(self.core.refusals.items()))
            log(f"refused over limits: {refused}")
        self.close(linger)
        return self.exit_code

    def _say_goodbye(self) -> int:
        """Each producer ends here: what it committed and left in its SMB, then its
        end, go to the service (best effort: ZeroMQ gets STOP_LINGER_MS to send
        them), so the service need not wait for the relay timeout. The linger."""
        now = time.monotonic_ns()
        for identity in list(self.core.producers):
            self._perform(self.core.producer_gone(identity, now))
        self._send_some()
        return STOP_LINGER_MS if self.core.link is Link.UP else 0

    def close(self, linger: int = 0) -> None:
        self.core.close()
        for fd in self.pidfds.values():
            os.close(fd)
        self.pidfds.clear()
        self.handoff.close()
        self.producer_sock.close(linger=0)
        self.upstream.disable_monitor()
        self.monitor.close(linger=0)
        self.upstream.close(linger=linger)
        self.ctx.term()
        path = ipc_path(self.producer_endpoint)
        if path is not None:
            path.unlink(missing_ok=True)
        self.loop.close()


def _megabytes(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of MiB, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m actors.relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--service", required=True, help="the service's relay endpoint, tcp://HOST:PORT"
    )
    parser.add_argument("--key", type=Path, help="this relay's NAME.key_secret (CURVE)")
    parser.add_argument("--service-key", type=Path, help="the service's NAME.key (CURVE)")
    parser.add_argument("--insecure", action="store_true",
                        help="plain TCP without CURVE: only on a network you trust")  # fmt: skip
    parser.add_argument(
        "--producer-endpoint", help="the ZeroMQ endpoint local producers connect to"
    )
    parser.add_argument("--machine-name", default=os.uname().nodename,
                        help="this machine's name in the trace; default the host name")  # fmt: skip
    parser.add_argument("--send-queue-mb", type=_megabytes, default=16,
                        help="bytes waiting for the link, at most (MiB); default 16")  # fmt: skip
    parser.add_argument("--clock-sync-interval-s", type=seconds, default=30.0,
                        help="seconds between clock sync bursts; default 30")  # fmt: skip
    parser.add_argument("--link-timeout-s", type=seconds, default=5.0,
                        help="the link is down after this long without a message "
                        "from the service; default 5")  # fmt: skip
    add_limit_flags(parser, RELAY_LIMITS)
    return parser.parse_args(argv)


def limits_of(args: argparse.Namespace) -> Limits:
    return replace(machine_limits(), **{name: getattr(args, name) for name in RELAY_LIMITS})


def security_error(args: argparse.Namespace) -> str:
    """Why the key flags cannot be used as given ("" if they can)."""
    has_keys = args.key is not None or args.service_key is not None
    if args.insecure and has_keys:
        return "--insecure and --key/--service-key exclude each other: pick one"
    if args.insecure:
        return ""
    if args.key is None or args.service_key is None:
        return (
            "the link needs CURVE keys: pass --key RELAY.key_secret and --service-key "
            "SERVICE.key (python -m actors.relay_keys makes them), or --insecure on a "
            "trusted network"
        )
    return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    error = security_error(args)
    if not args.service.startswith("tcp://"):
        error = error or f"--service must be a tcp:// endpoint, got {args.service!r}"
    if error:
        print(f"python -m actors.relay: error: {error}", file=sys.stderr)
        return 2
    try:
        curve = None if args.insecure else Curve(args.key, args.service_key)
    except KeyFileError as e:
        print(f"python -m actors.relay: error: {e}", file=sys.stderr)
        return 2
    config = RelayConfig(
        machine_name=args.machine_name,
        machine_id_hint=machine_id_hint(args.machine_name),
        system_info=host_info.system_info().SerializeToString(),
        send_queue_bytes=args.send_queue_mb << 20,
        link_timeout_ns=int(args.link_timeout_s * 1e9),
        clock_sync_interval_ns=int(args.clock_sync_interval_s * 1e9),
        limits=limits_of(args),
    )
    try:
        producers = args.producer_endpoint or default_producer_endpoint()
        shell = RelayShell(args.service, producers, curve, config)
    except (zmq.ZMQError, OSError, RuntimeError) as e:
        log(f"cannot start: {e}")
        return 1
    return shell.run()


if __name__ == "__main__":
    sys.exit(main())
