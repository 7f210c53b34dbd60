"""The service's relay endpoint: the shell side of the relay link.

    relay (DEALER, CURVE client) ==tcp==> ROUTER (CURVE server, ROUTER_HANDOVER)
        frames: [relay routing id][channel u32 BE][envelope]   (protos/framing.py)
        channel 0: RelayToService -> ServiceCore.handle_relay (clocks read on receipt)
        channel n: ProducerToService -> ServiceCore.handle_relay_producer
        ToRelay outputs go back as [relay, channel, envelope], NOBLOCK, queued per
        relay within bounds (actors/peer_queues.py)

The ROUTER lives in its own zmq.Context: the service's main context already
has a ZAP handler (for its ipc:// peers), and CURVE needs zmq.auth's
ThreadAuthenticator on the context of the socket it guards. The authenticator
accepts a client whose public key is one of --relay-clients' *.key files; any
other fails its handshake (ZeroMQ does not retry it), and is counted in the
service state's refusals as "relay_key_not_accepted" and logged (the first 3,
then every 2^k-th). With --relay-insecure (a trusted network) the link is
plain TCP: no keys, no authenticator.

Liveness: every second, relays silent for the relay timeout (they send a
heartbeat each second) are lost: ServiceCore.relay_lost ends their producers;
and each connected relay gets a heartbeat of ours (a relay whose own wait
behind its chunks on a slow link still hears the service).
A relay whose queue passes its bounds or takes nothing for the relay timeout
is lost too. The connection's CURVE public key (libzmq's User-Id property) is
passed to the core, which lists it with the machine.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from actors import host_info, relay_keys
from actors.core.service_core import Output, ServiceCore, ToRelay
from actors.loop import Loop, Timer
from actors.peer_queues import Outcome, PeerQueues
from protos import framing

DEFAULT_RELAY_TIMEOUT_S = 10.0
ZAP_DOMAIN = "tracebus-relay"
KEY_NOT_ACCEPTED = "relay_key_not_accepted"  # the service state's refusals
LIVENESS_CHECK_NS = 1_000_000_000
HEARTBEAT_IVL_MS = 1000  # ZeroMQ's own pings on the link (a dead TCP peer is noticed)
SEND_HWM = 10_000  # messages ZeroMQ holds per relay; past it they wait in our queue
# Messages ZeroMQ reads ahead per relay: each up to a relay frame, so a few only
# (a relay sending faster than we ingest waits in its own bounded queue).
RECEIVE_HWM = 64


@dataclass(frozen=True)
class RelayOptions:
    endpoint: str  # tcp://HOST:PORT
    key: Path | None  # the service's NAME.key_secret
    clients: Path | None  # a directory of the accepted relays' *.key
    insecure: bool  # plain TCP: the network is trusted
    timeout_s: float  # a relay silent this long is lost


def options_error(o: RelayOptions) -> str:
    """Why these options cannot start a relay endpoint ("" if they can)."""
    if not o.endpoint:
        return "--relay-key, --relay-clients and --relay-insecure need --relay-endpoint"
    if o.insecure and (o.key is not None or o.clients is not None):
        return "--relay-insecure takes no keys: drop --relay-key/--relay-clients, or the flag"
    if not o.insecure and (o.key is None or o.clients is None):
        return (
            "--relay-endpoint needs --relay-key (the service's NAME.key_secret) and "
            "--relay-clients (a directory of the relays' public .key files; make keys with "
            "python -m actors.relay_keys), or --relay-insecure on a trusted network"
        )
    if not o.endpoint.startswith("tcp://"):
        return f"--relay-endpoint must be tcp://HOST:PORT, got {o.endpoint!r}"
    return ""


class KeyCheck:
    """zmq.auth's CURVE callback: the accepted keys, and the refusals counted
    (called on the authenticator's thread; the loop reads `refused`)."""

    def __init__(self, accepted: set[bytes], log: Callable[[str], None]) -> None:
        self._accepted = frozenset(accepted)
        self._log = log
        self._lock = threading.Lock()
        self.refused = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._accepted:
            return True
        with self._lock:
            self.refused += 1
            count = self.refused
        if count <= 3 or count & (count - 1) == 0:
            text = key.decode(errors="replace")
            self._log(f"refused a relay: its key {text} is not in --relay-clients ({count} so far)")
        return False


class RelayPort:
    def __init__(
        self,
        loop: Loop,
        core: ServiceCore,
        options: RelayOptions,
        send_all: Callable[[list[Output]], None],
        log: Callable[[str], None],
    ) -> None:
        self._loop, self._core, self._send_all, self._log = loop, core, send_all, log
        self._timeout_ns = int(options.timeout_s * 1e9)
        self.ctx = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        self.keys: KeyCheck | None = None
        self.dropped_frames = 0
        try:
            self.sock = self._bind(options)
        except BaseException:
            self.close()
            raise
        self.endpoint = options.endpoint
        self._queues = PeerQueues(self.sock, self._timeout_ns)
        self._retry: Timer | None = None
        self._liveness = loop.call_at(loop.now() + LIVENESS_CHECK_NS, self._check_liveness)
        loop.add_socket(self.sock, self._drain)

    def _bind(self, o: RelayOptions) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        try:
            self._set_up(sock, o)
        except BaseException:
            sock.close(linger=0)  # else the context's term() waits for it forever
            raise
        return sock

    def _set_up(self, sock: zmq.Socket, o: RelayOptions) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a relay reconnecting takes its id back
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a gone relay is an error, not silence
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, framing.MAX_RELAY_FRAME_BYTES + 65536)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1000, self._timeout_ns // 1_000_000))
        if not o.insecure:
            assert o.key is not None and o.clients is not None
            public, secret = relay_keys.load_pair(o.key)
            self.keys = KeyCheck(relay_keys.load_directory(o.clients), self._log)
            self._auth = ThreadAuthenticator(self.ctx)
            self._auth.start()
            # The domain the socket names (zmq.auth's "*" stands only for an empty one).
            self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self.keys)
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        sock.bind(o.endpoint)

    # -- receiving ------------------------------------------------------------------------

    def _drain(self) -> None:
        for _ in range(256):  # bounded: the other ports and the timers get their turn
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._receive(frames)

    def _receive(self, frames: list[zmq.Frame]) -> None:
        clocks = host_info.snapshot_clocks()  # on receipt: a clock round's host side
        now = time.monotonic_ns()
        if len(frames) < 3:
            self._dropped("a message of fewer than 3 frames")
            return
        relay = frames[0].bytes
        key = user_id(frames[1])
        payload = [f.bytes for f in frames[1:]]
        try:
            channel, envelope = framing.split_channel(payload)
            if channel == 0:
                to_service = framing.decode_from_relay(envelope)
                outputs = self._core.handle_relay(relay, to_service, now, clocks, key)
            else:
                from_producer = framing.decode_relayed_producer(envelope)
                outputs = self._core.handle_relay_producer(
                    relay, channel, from_producer, now, key=key
                )
        except framing.FramingError as e:
            self._dropped(str(e))
            return
        except Exception:  # noqa: BLE001 - a bug one message meets must not end the service
            self._dropped(f"it met a bug:\n{traceback.format_exc()}")
            return
        self._send_all(outputs)

    def _dropped(self, why: str) -> None:
        self.dropped_frames += 1
        count = self.dropped_frames
        if count <= 16 or count & (count - 1) == 0:
            self._log(f"dropped a relay message: {why} ({count} so far)")

    def sync_refusals(self) -> None:
        """Copy the authenticator's refusal count into the service state's."""
        if self.keys is not None and self.keys.refused:
            self._core.counters.refusals[KEY_NOT_ACCEPTED] = self.keys.refused

    # -- sending ----------------------------------------------------------------------------

    def send(self, out: ToRelay) -> None:
        channel = framing.RELAY_CHANNEL.pack(out.channel)
        frames = [out.relay, channel, out.msg.SerializeToString()]
        outcome = self._queues.send(out.relay, frames, time.monotonic_ns())
        if outcome is Outcome.OVERFLOW:
            self._lose(out.relay, "its outgoing queue passed its bounds")
        elif outcome is Outcome.QUEUED and self._retry is None:
            self._retry = self._loop.call_at(self._loop.now() + 1_000_000, self._on_retry)
        # GONE: not connected now (it reconnects, or its silence ends it): dropped

    def _on_retry(self) -> None:
        self._retry = None
        for relay, outcome in self._queues.retry(time.monotonic_ns()):
            if outcome is Outcome.STALLED:
                self._lose(relay, "it took no message for the relay timeout")
            else:
                self._queues.drop(relay)
        if self._queues:
            self._retry = self._loop.call_at(self._loop.now() + 1_000_000, self._on_retry)

    # -- liveness -------------------------------------------------------------------------

    def _check_liveness(self) -> None:
        now = time.monotonic_ns()
        self.sync_refusals()
        for relay in self._core.relays_silent(now, self._timeout_ns):
            self._lose(relay, f"silent for {self._timeout_ns / 1e9:g} s")
        self._send_all(self._core.heartbeat_relays())
        self._liveness = self._loop.call_at(
            self._loop.now() + LIVENESS_CHECK_NS, self._check_liveness
        )

    def _lose(self, relay: bytes, why: str) -> None:
        dropped = self._queues.drop(relay)
        machine = self._core.machine_of_relay(relay)
        name = f"machine {machine.name!r} (id {machine.id})" if machine else "an unknown relay"
        self._log(f"lost the relay of {name}: {why}; dropped {dropped} queued messages")
        self._send_all(self._core.relay_lost(relay, time.monotonic_ns()))

    def close(self) -> None:
        if hasattr(self, "sock"):
            self._loop.remove(self.sock)
            self.sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()


def user_id(frame: zmq.Frame) -> str:
    """The CURVE public key (Z85) the authenticator gave the connection, or ""."""
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:
        return ""
    return value if isinstance(value, str) else ""
