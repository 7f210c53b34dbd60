"""The tracing service process: `python -m actors.service`.

Binds a ROUTER producer port (its owner's processes; every local user's with
--allow-other-users, the socket then in a shared 0755 directory) and a ROUTER
consumer port (its socket file owner-only, inside the 0700 runtime directory),
creates each producer's SMB as a sealed memfd handed to that producer's process
alone over the handoff socket beside the producer port (actors/smb_handoff.py),
and runs ServiceCore. The process is non-dumpable (prctl), so no other process
of its user opens its fds through /proc. A peer's pid and
uid come from the kernel (libzmq's Peer-Address property of an ipc:// peer);
a pidfd per peer tells the service within a poll round that the process died.
When a producer that hosted linux.ftrace goes away, the service runs `python -m
actors.probes --cleanup` in the background (actors/probe_cleanup.py): a probes
process that was SIGKILLed does not leave the kernel tracing.
SIGINT/SIGTERM stop every session, release every SMB and exit 0, within the
shutdown timeout whatever the peers do (past it the process exits 1 at once).
A write_into_file session's trace file is opened, appended to and closed by
the shell (actors/trace_files.py), as the core says (actors/core/file_sink.py);
a write that fails is handed back to the core (file_failed).

The service never waits on a peer. Sends are NOBLOCK; a peer whose pipe is
full gets a bounded queue (actors/peer_queues.py), retried on a short timer.
A peer is given up on when its queue takes nothing for the peer send timeout,
overflows, or when the process is stopped (SIGSTOP, a debugger): ZeroMQ
heartbeats with the same timeout drop its connection, and the service looks
for stopped peers when a connection drops (a socket monitor) or a send finds
one gone. Giving up drops its queue and ends it as if it had crashed (a
producer's SMB is scraped and released, a consumer's session freed); what it
sends afterwards is answered with an error asking it to reconnect and is not
processed. Each case is counted (the service state's peers_given_up) and logged
once.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import random
import signal
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import zmq
from zmq.utils.monitor import parse_monitor_message

from actors import host_info
from actors.connections import SILENT, ZMQ, ClosedIdentities, Connection, Connections
from actors.core.buffer_budget import memory_defaults
from actors.core.limits import DEFAULT_LIMITS, LIMIT_HELP, Limits, limit_names
from actors.core.perfetto_wire import PERFETTO_PREFIX
from actors.core.service_core import (
    AppendToFile,
    Clocks,
    CloseFile,
    Peer,
    ServiceCore,
    SliceBudget,
    ToConsumer,
    ToProducer,
    ToRelay,
)
from actors.endpoints import (
    SUN_PATH_MAX,
    PerfettoSockets,
    claim_socket_path,
    default_consumer_endpoint,
    default_producer_endpoint,
    make_shared_dir,
    runtime_dir,
    shared_producer_dir,
)
from actors.loop import Loop, Timer
from actors.peer_limits import (
    OTHER_USERS,
    RETRY_NS,
    admitted,
    connection_refused,
    count_give_up,
    count_refusal,
    not_admitted,
    open_files_note,
    raise_open_files_limit,
    worth_logging,
)
from actors.peer_queues import Outcome, PeerQueues
from actors.perfetto_front import (
    Wiring,
    add_perfetto_arguments,
    open_perfetto_port,
    perfetto_sockets,
)
from actors.perfetto_port import PerfettoPort
from actors.probe_cleanup import FTRACE_DATA_SOURCE, ProbeCleanup
from actors.relay_keys import KeyFileError
from actors.relay_port import DEFAULT_RELAY_TIMEOUT_S, RelayOptions, RelayPort, options_error
from actors.smb_handoff import SmbHandoff, handoff_path
from actors.trace_files import TraceFiles
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import Geometry
from shm.region import MemfdRegion, RegionError

DEFAULT_PEER_SEND_TIMEOUT_S = 5.0
DEFAULT_SHUTDOWN_TIMEOUT_S = 3.0
PR_SET_DUMPABLE = 4  # linux/prctl.h
LIBC = ctypes.CDLL(None, use_errno=True)
HEARTBEAT_IVL_MS = 1000  # ZeroMQ pings on every connection; the timeout is the send timeout
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq looks for a ZAP handler (RFC 27)
MONITOR_HWM = 100_000  # connection events queued (a flood of connects; about 10 MB)
GIVEN_UP_REMEMBERED = 4096  # identities answered "reconnect"; the oldest are forgotten
# Refusals counted beside the limits' (the service state's `refusals`).
ROUTING_ID_IN_USE = "routing_id_in_use"  # a routing id another process holds or held
ROUTING_ID_RESERVED = "routing_id_reserved"  # a routing id of the Perfetto-socket front end


READ_SLICE_NS = 10_000_000  # one read-back slice's time budget; other peers are served between
# Replies (read-back slices of up to 1 MiB) ZeroMQ holds per consumer before a send
# would block; past it they wait in our queue and the read waits for the consumer.
READ_PIPE_HWM = 8


def log(text: str) -> None:
    print(f"[service] {text}", file=sys.stderr, flush=True)


class ServedSmb:
    """A producer's SMB as the core sees it: a sealed memfd offered on the handoff
    socket to the producer's process alone (actors/smb_handoff.py)."""

    def __init__(self, handoff: SmbHandoff, geometry: Geometry, pid: int, uid: int) -> None:
        try:
            self.region = MemfdRegion.create(geometry.size, "tracebus-smb")
        except RegionError as e:  # out of memory or fds: the core gives that producer no SMB
            raise OSError(str(e)) from e
        self.buf = self.region.buf
        self._handoff = handoff
        self.socket = str(handoff.path)
        assert self.region.fd is not None
        self.token = handoff.offer(self.region.fd, pid, uid)

    def withdraw_offer(self) -> None:
        """The fd goes to the producer another way (a Perfetto producer's socket)."""
        self._handoff.withdraw(self.token)

    def close(self) -> None:
        self._handoff.withdraw(self.token)
        self.region.close()


def make_non_dumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): /proc/<our pid>/fd, mem and maps become closed to
    other processes of our user (without CAP_SYS_PTRACE), so nobody opens an SMB
    through them; no core dump either (it would hold every producer's data)."""
    if LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def peer_credentials(frame: zmq.Frame) -> tuple[int, int]:
    """(process id, uid) of an ipc:// peer from libzmq's "localhost:UID:GID:PID"."""
    try:
        address = frame.get("Peer-Address")
    except zmq.ZMQError:
        return 0, -1
    if not isinstance(address, str):  # an int only for integer properties
        return 0, -1
    return parse_peer_address(address)


def parse_peer_address(address: str) -> tuple[int, int]:
    """(pid, uid) from "localhost:UID:GID:PID"; (0, -1) for another form (not ipc://)."""
    try:
        _host, uid, _gid, pid = address.rsplit(":", 3)
        return int(pid), int(uid)
    except ValueError:
        return 0, -1


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://") :]) if endpoint.startswith("ipc://") else None


def smb_handoff_path(producer_endpoint: str, allow_other_users: bool = False) -> Path:
    """The handoff socket: beside an ipc:// producer socket (the same people reach
    both), else (an abstract or non-ipc endpoint) in the runtime directory, the
    shared one when other users are admitted."""
    path = ipc_path(producer_endpoint)
    if path is None or str(path).startswith("@"):
        where = make_shared_dir(shared_producer_dir()) if allow_other_users else runtime_dir()
        return where / f"smb-{os.getpid()}.sock"
    handoff = handoff_path(path)
    if len(os.fsencode(handoff)) > SUN_PATH_MAX:
        raise RuntimeError(
            f"{handoff} (the SMB handoff socket beside the producer socket) is longer "
            f"than a UNIX socket path may be ({SUN_PATH_MAX} bytes): use a shorter path"
        )
    return handoff


class ServiceShell:
    def __init__(
        self,
        producer_endpoint: str,
        consumer_endpoint: str,
        limits: Limits = DEFAULT_LIMITS,
        peer_send_timeout_s: float = DEFAULT_PEER_SEND_TIMEOUT_S,
        shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
        allow_other_users: bool = False,
        relay: RelayOptions | None = None,
        perfetto: PerfettoSockets | None = None,
    ) -> None:
        self.loop = Loop()
        self.ctx = zmq.Context()
        self.endpoints = (producer_endpoint, consumer_endpoint)
        self.peer_send_timeout_s = peer_send_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        # Producers of other uids are admitted (their packets carry their uid);
        # the producer and handoff sockets are then open to every local user.
        self.allow_other_users = allow_other_users  # producers of any uid (consumers: ours)
        self.uid = os.getuid()
        handoff_at = smb_handoff_path(producer_endpoint, allow_other_users)  # may refuse
        # Each port's connections, from its socket monitor (attached before the bind).
        self.connections = Connections()
        self.monitors: dict[str, zmq.Socket] = {}
        # The context's ZAP handler: libzmq asks it about each new connection.
        self.zap = self.ctx.socket(zmq.ROUTER)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        self.producer_sock = self._bind("p", producer_endpoint, private=False)
        producer_path = ipc_path(producer_endpoint)
        if producer_path is not None and producer_path.exists():  # not an abstract socket
            os.chmod(producer_path, 0o666 if allow_other_users else 0o600)
        self.consumer_sock = self._bind(
            "c", consumer_endpoint, private=True, send_hwm=READ_PIPE_HWM
        )
        self.handoff = SmbHandoff(self.loop, handoff_at, log, others_may_connect=allow_other_users)
        clocks = Clocks(host_info.snapshot_clocks, host_info.boottime_ns)
        self.files = TraceFiles()
        self.core = ServiceCore(
            functools.partial(ServedSmb, self.handoff), clocks, os.getuid(), os.getpid(),
            limits, open_file=self.files.open, rng=random.SystemRandom(),
            system_info=host_info.system_info(),
        )  # fmt: skip
        self.pidfds: dict[tuple[str, bytes], int] = {}
        self.pids: dict[tuple[str, bytes], int] = {}  # each routing id's process, first seen
        self.conn_of: dict[tuple[str, bytes], Connection] = {}  # ... and its connection
        self.closed_ids = ClosedIdentities()
        self.probe_cleanup = ProbeCleanup(self.loop, log)
        self.cut_timer: Timer | None = None
        timeout_ns = int(peer_send_timeout_s * 1e9)
        self.queues = {
            "p": PeerQueues(self.producer_sock, timeout_ns),
            "c": PeerQueues(self.consumer_sock, timeout_ns),
        }
        # Connections given up on, answered "reconnect" (bounded: oldest forgotten).
        self.given_up: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        self.timer: Timer | None = None
        self.retry_timer: Timer | None = None
        self.read_timer: Timer | None = None
        self.dropped_frames = 0
        self.messages_failed = 0  # messages whose handling raised (logged: a bug)
        self.sessions_held = 0  # sessions after the last message (see _trim_after_free)
        self.loop.add_socket(self.producer_sock, lambda: self._drain(self.producer_sock, "p"))
        self.loop.add_socket(self.consumer_sock, lambda: self._drain(self.consumer_sock, "c"))
        for side, monitor in self.monitors.items():
            self.loop.add_socket(monitor, functools.partial(self._on_monitor, side))
        self.loop.add_socket(self.zap, self._on_zap)
        self.relays: RelayPort | None = None
        self.perfetto: PerfettoPort | None = None
        try:
            if relay is not None:
                self.relays = RelayPort(self.loop, self.core, relay, self._send_all, log)
            if perfetto is not None:
                self.perfetto = open_perfetto_port(self._perfetto_wiring(), perfetto)
        except BaseException:
            self.close()
            raise

    def _perfetto_wiring(self) -> Wiring:
        return Wiring(
            self.loop, self.core, self.connections, self.files, self._send_all,
            self._schedule_reads, self._arm_cut, self._perfetto_smb_fd, self.uid,
            self.allow_other_users, self.peer_send_timeout_s, log,
        )  # fmt: skip

    def _bind(self, side: str, endpoint: str, private: bool, send_hwm: int = 1000) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        address = f"inproc://tracebus-monitor-{side}"
        sock.monitor(address, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        monitor = self.ctx.socket(zmq.PAIR)
        monitor.setsockopt(zmq.RCVHWM, MONITOR_HWM)  # past it libzmq drops events
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(address)
        self.monitors[side] = monitor
        sock.setsockopt(zmq.SNDHWM, send_hwm)
        # A frame over the cap is dropped by framing (the connection kept); one over
        # twice the cap is refused by libzmq before it buffers it: the connection drops.
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * framing.MAX_FRAME_BYTES)
        sock.setsockopt(zmq.ZAP_DOMAIN, b"tracebus")  # each handshake asks _on_zap
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a gone peer is an error, not silence
        sock.setsockopt(zmq.LINGER, 0)
        # A stopped process answers no ping: ZeroMQ drops its connection after the
        # timeout, and the next send to it finds it gone (see _unreachable).
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(self.peer_send_timeout_s * 1000)))
        path = ipc_path(endpoint)
        if path is not None and not str(path).startswith("@"):
            claim_socket_path(path)  # a stale socket from a crashed service is replaced
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
        # Connections first: a message's connection was accepted before it was sent.
        self._on_monitor(side)
        self._drain_messages(sock, side)

    def _drain_messages(self, sock: zmq.Socket, side: str) -> None:
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
        conn = self._connection_of(side, source_fd(frames[1]), pid)
        payload = [f.bytes for f in frames[1:]]
        peer = Peer(identity, pid, uid)
        try:
            if side == "p":
                from_producer = framing.decode_from_producer(payload)
                if self._refused(side, peer, from_producer.request_id):
                    return
                self._watch(side, identity, pid, conn)
                outputs = self.core.handle_producer(peer, from_producer, time.monotonic_ns())
            else:
                from_consumer = framing.decode_from_consumer(payload)
                if self._refused(side, peer, from_consumer.request_id):
                    return
                self._watch(side, identity, pid, conn)
                if self.relays is not None:  # the state it may ask for counts them
                    self.relays.sync_refusals()
                outputs = self.core.handle_consumer(peer, from_consumer, time.monotonic_ns())
        except framing.FramingError as e:
            self.dropped_frames += 1
            if worth_logging(self.dropped_frames):
                log(f"dropped a frame from pid {pid}: {e} ({self.dropped_frames} so far)")
            return
        except Exception:  # noqa: BLE001 - a bug one message meets must not end the service
            self.messages_failed += 1
            if worth_logging(self.messages_failed):
                log(f"a message from pid {pid} failed (a bug):\n{traceback.format_exc()}")
            return
        self._send_all(outputs)

    def _watch(self, side: str, identity: bytes, pid: int, conn: Connection | None) -> None:
        """Bind a routing id to the process (and connection) that first used it."""
        key = (side, identity)
        if key in self.pidfds or pid <= 0:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            self._peer_gone(side, identity)
            return
        self.pidfds[key] = fd
        self.pids[key] = pid
        if conn is not None:
            self.conn_of[key] = conn
            conn.identities.add(identity)
        self.loop.add_fd(fd, lambda: self._peer_gone(side, identity))

    def _peer_gone(self, side: str, identity: bytes) -> None:
        key = (side, identity)
        fd = self.pidfds.pop(key, None)
        pid = self.pids.pop(key, None)
        self.conn_of.pop(key, None)
        if pid is not None:
            self.closed_ids.closed(key, pid, time.monotonic_ns())
        if side == "p":
            self._after_probes(identity, pid, fd)
        if fd is not None:
            self.loop.remove(fd)
            os.close(fd)
        self.queues[side].drop(identity)
        now = time.monotonic_ns()
        if side == "p":
            self._send_all(self.core.producer_gone(identity, now))
        else:
            self._send_all(self.core.consumer_gone(identity, now))

    def _after_probes(self, identity: bytes, pid: int | None, pidfd: int | None) -> None:
        """A producer that hosted linux.ftrace may leave a kernel ftrace instance
        tracing (SIGKILLed): have it removed in the background once its process has
        exited (one given up on while stopped may still run, and own its instance)."""
        producer = self.core.producers.get(identity)
        if producer is None or FTRACE_DATA_SOURCE not in producer.data_sources:
            return
        why = f"producer {producer.name!r} (pid {pid}) is gone"
        if pidfd is None:
            self.probe_cleanup.request(why)
        else:
            self.probe_cleanup.after_exit(os.dup(pidfd), why)

    # -- peers given up on ----------------------------------------------------------------

    def _give_up(self, side: str, identity: bytes, why: str) -> None:
        """Stop waiting for this peer: drop its queue, end it as if it had crashed,
        and answer whatever it sends later with "reconnect"."""
        key = (side, identity)
        pid = self.pids.get(key, 0)
        dropped = self.queues[side].drop(identity)
        self.given_up[key] = why
        while len(self.given_up) > GIVEN_UP_REMEMBERED:
            self.given_up.popitem(last=False)
        what = "producer" if side == "p" else "consumer"
        log(count_give_up(self.core.counters, side == "p", f"{what} pid {pid}", why, dropped))
        self._peer_gone(side, identity)

    def _refused(self, side: str, peer: Peer, request_id: int) -> bool:
        """Answer a message the service will not process with an error (a connection
        given up on, a user not admitted, a routing id of another process) instead
        of processing it."""
        if peer.identity.startswith(PERFETTO_PREFIX):  # it would pass for a Perfetto client
            self._count_refusal(ROUTING_ID_RESERVED)
            text = "this routing id is reserved for the Perfetto sockets: use another"
        elif (why := self.given_up.get((side, peer.identity))) is not None:
            self.core.counters.given_up_messages_refused += 1
            text = f"the service gave up on this connection ({why}): reconnect"
        elif not self._admitted(side, peer.uid):
            self._count_refusal(OTHER_USERS)
            text = self._not_admitted(side, peer.uid)
        elif self._held_by_other(side, peer):
            self._count_refusal(ROUTING_ID_IN_USE)
            text = "this routing id belongs to another process: connect with one of your own"
        else:
            return False
        self._answer_error(side, peer.identity, request_id, text)
        return True

    def _admitted(self, side: str, uid: int) -> bool:
        return admitted(side == "p", uid, self.uid, self.allow_other_users)

    def _not_admitted(self, side: str, uid: int) -> str:
        return not_admitted(side == "p", uid, self.uid)

    def _held_by_other(self, side: str, peer: Peer) -> bool:
        """Whether the routing id is bound to another process, live or recently gone."""
        key = (side, peer.identity)
        held_by = self.pids.get(key)
        if held_by is not None:
            return held_by != peer.pid
        return self.closed_ids.held_by_other(key, peer.pid, time.monotonic_ns())

    def _count_refusal(self, name: str) -> None:
        count_refusal(self.core.counters, name)

    def _answer_error(self, side: str, identity: bytes, request_id: int, text: str) -> None:
        """Best effort: never queued (a peer that does not read loses it)."""
        msg: ipc.ServiceToProducer | ipc.ServiceToConsumer
        if side == "p":
            msg = ipc.ServiceToProducer(request_id=request_id)
        else:
            msg = ipc.ServiceToConsumer(request_id=request_id)
        msg.error.message = text
        sock = self._sock(side)
        try:
            sock.send_multipart(framing.encode_routed(identity, msg), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # its pipe is still full, or it is gone: it asks again or never

    # -- connections --------------------------------------------------------------------------

    def _on_monitor(self, side: str) -> None:
        """This port's connection events, in order: an accepted connection is
        counted against the limits (refused past one); a dropped one ends the
        routing ids bound to it (after the messages it sent before are handled).
        So does one whose fd number a newer connection took (of either port or a
        Perfetto socket) before its DISCONNECTED was read: that event, arriving
        late, finds the newcomer's entry and is ignored (Connections.displaced)."""
        monitor = self.monitors[side]
        now = time.monotonic_ns()
        ended: list[Connection] = []
        dropped = False
        for _ in range(1024):  # bounded: the loop polls the monitor again
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.connections.accepted(side, fd, now)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                dropped = True
                gone = self.connections.disconnected(fd, ZMQ, side)
                if gone is not None and gone.identities:
                    ended.append(gone)
        self._arm_cut()
        ended += self.connections.take_displaced()
        for ended_side in sorted({conn.side for conn in ended}):
            self._drain_messages(self._sock(ended_side), ended_side)
        for conn in ended:
            for identity in conn.identities:
                if self.conn_of.get((conn.side, identity)) is conn:
                    self._unreachable(conn.side, identity)
        if dropped:
            self._probe_stopped(side)

    def _sock(self, side: str) -> zmq.Socket:
        return self.producer_sock if side == "p" else self.consumer_sock

    def _connection_of(self, side: str, fd: int, pid: int) -> Connection | None:
        conn = self.connections.of_message(fd, pid)
        if conn is None and fd >= 0 and pid > 0:  # its accept event was lost
            conn = self.connections.accepted(side, fd, time.monotonic_ns(), pid)
        return conn

    def _on_zap(self) -> None:
        """libzmq asks, during each connection's handshake, whether to accept it
        (ZAP, RFC 27): a connection over a connection limit is denied with status
        400 naming the limit, which its peer's ZeroMQ does not retry."""
        for _ in range(1024):  # bounded: the loop polls the ZAP socket again
            try:
                request = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            for side in self.monitors:  # its accept (sent before it) is counted first
                self._on_monitor(side)
            now = time.monotonic_ns()
            if len(request) < 6:
                continue  # not a ZAP request: libzmq sends nothing else here
            routing, _empty, version, request_id, _domain, address = request[:6]
            pid, uid = parse_peer_address(address.decode(errors="replace"))
            limit = self.connections.admit(pid, uid, self.core.limits, now) if pid > 0 else ""
            status, text = (b"200", b"OK")
            if limit:
                refusal = connection_refused(self.core.counters, self.core.limits, limit, pid,
                                             uid, log)  # fmt: skip
                status, text = b"400", refusal.encode()
            self.zap.send_multipart([routing, b"", version, request_id, status, text, b"", b""])

    def _arm_cut(self) -> None:
        self.cut_timer = self.loop.rearm(self.cut_timer, self.connections.next_cut(), self._on_cut)

    def _on_cut(self) -> None:
        self.cut_timer = None
        for _ in range(self.connections.cut_due(time.monotonic_ns())):
            self._count_refusal(SILENT)
        self._arm_cut()

    def _probe_stopped(self, side: str) -> None:
        """A connection of this port dropped: probe the peers of this port whose
        process is stopped with a heartbeat; one whose connection is gone is given
        up on (see _unreachable)."""
        probes: list[ToProducer | ToConsumer] = []
        for (peer_side, identity), pid in self.pids.items():
            if peer_side == side and process_stopped(pid):
                if side == "p":
                    probes.append(ToProducer(identity, ipc.ServiceToProducer(heartbeat={})))
                else:
                    probes.append(ToConsumer(identity, ipc.ServiceToConsumer(heartbeat={})))
        self._send_all(probes)

    def _unreachable(self, side: str, identity: bytes) -> None:
        """ZeroMQ no longer knows the peer: it closed its connection or exited, or
        it is stopped and its heartbeats timed out (then it is given up on)."""
        pid = self.pids.get((side, identity), 0)
        if pid > 0 and process_stopped(pid):
            self._give_up(side, identity, "its process is stopped and stopped answering")
        else:
            self._peer_gone(side, identity)

    # -- the Perfetto sockets (actors/perfetto_front.py) -----------------------------------------

    def _perfetto_smb_fd(self, identity: bytes) -> int | None:
        """The memfd of a Perfetto producer's SMB, sent on its socket: the handoff
        socket's offer, which it never claims, is withdrawn."""
        producer = self.core.producers.get(identity)
        smb = producer.smb if producer is not None else None
        if not isinstance(smb, ServedSmb):
            return None
        smb.withdraw_offer()
        return smb.region.fd

    # -- sending and timers -----------------------------------------------------------------

    def _send_all(self, outputs: list) -> None:
        now = time.monotonic_ns()
        failed: list[tuple[int, str]] = []
        for out in outputs:
            if isinstance(out, AppendToFile | CloseFile):
                if isinstance(out, AppendToFile):
                    error = self.files.append(out.file_id, out.data)
                else:
                    error = self.files.close(out.file_id)
                if error:
                    failed.append((out.file_id, error))
                continue
            if isinstance(out, ToRelay):
                if self.relays is not None:
                    self.relays.send(out)
                continue
            if out.identity.startswith(PERFETTO_PREFIX):
                if self.perfetto is not None:
                    self.perfetto.send(out)
                continue
            side = "p" if isinstance(out, ToProducer) else "c"
            if (side, out.identity) in self.given_up:
                self.core.counters.given_up_messages_dropped += 1
                continue
            frames = framing.encode_routed(out.identity, out.msg)
            outcome = self.queues[side].send(out.identity, frames, now)
            if outcome is Outcome.GONE:
                self._unreachable(side, out.identity)
            elif outcome is Outcome.OVERFLOW:
                self._give_up(side, out.identity, "its outgoing queue passed its bounds")
        for file_id, error in failed:  # the core ends the session, its consumer told why
            self._send_all(self.core.file_failed(file_id, error, now))
        self._arm_retry()
        self._arm_timer()
        self._schedule_reads()
        self._trim_after_free()

    def _trim_after_free(self) -> None:
        """Once a session is freed, hand its freed heap back to the system: glibc
        keeps it otherwise (its mmap threshold grows with large frees), and a
        long-lived service would hold every past session's peak."""
        sessions = len(self.core.sessions)
        if sessions < self.sessions_held:
            malloc_trim()
        self.sessions_held = sessions

    def _arm_retry(self) -> None:
        if self.retry_timer is None and any(self.queues.values()):
            self.retry_timer = self.loop.call_at(self.loop.now() + RETRY_NS, self._on_retry)

    def _on_retry(self) -> None:
        self.retry_timer = None
        now = time.monotonic_ns()
        for side, queues in self.queues.items():
            for identity, outcome in queues.retry(now):
                if outcome is Outcome.GONE:
                    self._unreachable(side, identity)
                else:
                    timeout = self.peer_send_timeout_s
                    self._give_up(side, identity, f"it took no message for {timeout:g} s")
        self._arm_retry()
        self._schedule_reads()  # a consumer that took its queued slices may have the next

    def _arm_timer(self) -> None:
        self.timer = self.loop.rearm(self.timer, self.core.next_deadline(), self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self._send_all(self.core.on_timer(time.monotonic_ns()))

    def _schedule_reads(self) -> None:
        """While a read is pending, one slice per loop turn: a timer due at once,
        so the loop polls its sockets (without waiting) between two slices."""
        if self.read_timer is None and self.core.pending_work(self._may_send):
            self.read_timer = self.loop.call_at(self.loop.now() + 1, self._continue_reads)

    def _may_send(self, consumer: bytes) -> bool:
        """A consumer gets its next read-back slice once it took the last ones
        (nothing of it waits in our queue); ZeroMQ holds at most READ_PIPE_HWM."""
        if consumer.startswith(PERFETTO_PREFIX):
            return self.perfetto is None or self.perfetto.may_send(consumer)
        return self.queues["c"].backlog(consumer)[0] == 0

    def _continue_reads(self) -> None:
        self.read_timer = None
        end = time.monotonic_ns() + READ_SLICE_NS
        budget = SliceBudget(time_up=lambda: time.monotonic_ns() >= end, may_send=self._may_send)
        self._send_all(self.core.continue_reads(time.monotonic_ns(), budget))

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            make_non_dumpable()  # before any SMB exists
        except OSError as e:
            log(f"cannot start: {e}")
            self.close()
            return 1
        limit = raise_open_files_limit()  # connections hold fds (actors/peer_limits.py)
        log(open_files_note(limit, self.core.limits.max_connections_per_uid))
        self.loop.stop_on_signals(on_signal=self._arm_shutdown_deadline)
        if self.relays is not None:
            log(f"relays on {self.relays.endpoint}")
        log(f"listening: producers on {self.endpoints[0]}, consumers on {self.endpoints[1]}")
        if self.perfetto is not None:
            paths = self.perfetto.paths
            log(f"Perfetto sockets: producers on {paths['p']}, consumers on {paths['c']}")
        self.loop.run()
        log("stopping")
        if self.dropped_frames:
            log(f"dropped {self.dropped_frames} undecodable frames in all")
        if self.core.counters.messages_not_handled:
            unhandled = self.core.counters.messages_not_handled
            log(f"answered {unhandled} messages with no handler with an error")
        self._send_all(self.core.shutdown(time.monotonic_ns()))
        self.close()
        signal.setitimer(signal.ITIMER_REAL, 0)
        return 0

    def _arm_shutdown_deadline(self, signum: int) -> None:
        """On the first SIGINT/SIGTERM: whatever the shutdown waits on, the process
        ends within the shutdown timeout."""
        if signal.getitimer(signal.ITIMER_REAL)[0] > 0:
            return
        signal.signal(signal.SIGALRM, self._shutdown_overdue)
        signal.setitimer(signal.ITIMER_REAL, self.shutdown_timeout_s)

    def _shutdown_overdue(self, signum: int, frame: object) -> None:
        log(f"the shutdown took over {self.shutdown_timeout_s:g} s: exiting now")
        self._unlink_endpoints()
        os._exit(1)  # the kernel releases every SMB and socket with the process

    def close(self) -> None:
        if getattr(self, "relays", None) is not None:
            assert self.relays is not None
            self.relays.close()
            self.relays = None
        if getattr(self, "perfetto", None) is not None:
            assert self.perfetto is not None
            self.perfetto.close()
            self.perfetto = None
        self.files.close_all()
        self.probe_cleanup.close()
        for fd in self.pidfds.values():
            os.close(fd)
        self.pidfds.clear()
        for side, monitor in self.monitors.items():
            sock = self._sock(side)
            sock.disable_monitor()
            monitor.close(linger=0)
        self.handoff.close()
        self.producer_sock.close(linger=0)
        self.consumer_sock.close(linger=500)  # let consumers hear that their session ended
        self.zap.close(linger=0)
        self.ctx.term()
        self._unlink_endpoints()
        self.loop.close()

    def _unlink_endpoints(self) -> None:
        for endpoint in self.endpoints:
            path = ipc_path(endpoint)
            if path is not None:
                path.unlink(missing_ok=True)
        self.handoff.path.unlink(missing_ok=True)
        if self.perfetto is not None:
            for path in self.perfetto.paths.values():
                path.unlink(missing_ok=True)


def malloc_trim() -> None:
    try:
        LIBC.malloc_trim(0)
    except AttributeError:  # not glibc
        pass


def source_fd(frame: zmq.Frame) -> int:
    """The fd of the connection a message came in on (libzmq's ZMQ_SRCFD), or -1."""
    try:
        fd = frame.get(zmq.SRCFD)
    except (zmq.ZMQError, AttributeError):
        return -1
    return fd if isinstance(fd, int) else -1


def process_stopped(pid: int) -> bool:
    """Whether `pid` is stopped by a signal or a debugger (/proc state T or t)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] in "Tt"


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def seconds(text: str) -> float:
    """argparse type: a positive number of seconds."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


# Where a container's memory limit shows (cgroup v2, then v1), as its own root.
CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def machine_memory() -> int:
    """Bytes of memory this service may expect: the physical memory, or the
    cgroup's limit if lower; 0 if unknown."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        physical = 0
    sizes = [physical] if physical > 0 else []
    for path in CGROUP_MEMORY_LIMITS:
        try:
            sizes.append(int(Path(path).read_text()))
        except (OSError, ValueError):  # absent, or "max": no limit there
            pass
    return min(sizes, default=0)


def machine_limits() -> Limits:
    """DEFAULT_LIMITS with the buffer memory budget sized from this machine
    (the rule is actors/core/buffer_budget.py's memory_defaults)."""
    memory = machine_memory()
    return replace(DEFAULT_LIMITS, **memory_defaults(memory)) if memory else DEFAULT_LIMITS


def add_relay_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("relays on other machines (docs/relay.md)")
    group.add_argument("--relay-endpoint", help="accept relays on tcp://HOST:PORT")
    group.add_argument("--relay-key", type=Path, help="the service's NAME.key_secret (CURVE)")
    group.add_argument(
        "--relay-clients", type=Path, help="a directory of the accepted relays' public *.key"
    )
    group.add_argument(
        "--relay-insecure", action="store_true",
        help="plain TCP without CURVE: only on a network where every host is trusted",
    )  # fmt: skip
    group.add_argument(
        "--relay-timeout-s", type=seconds, default=DEFAULT_RELAY_TIMEOUT_S,
        help="a relay silent this long is lost (its producers end); "
        f"default {DEFAULT_RELAY_TIMEOUT_S:g}",
    )  # fmt: skip


def add_limit_flags(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """--max-... flags for these Limits fields, defaulting to this machine's."""
    defaults = machine_limits()
    for name in names:
        default = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=positive, default=default,
                            help=f"{LIMIT_HELP[name]}; default {default}")  # fmt: skip


def relay_options(args: argparse.Namespace) -> RelayOptions | None:
    """None without any relay flag; else the options (options_error says what is missing)."""
    if not (args.relay_endpoint or args.relay_key or args.relay_clients or args.relay_insecure):
        return None
    return RelayOptions(
        args.relay_endpoint or "", args.relay_key, args.relay_clients, args.relay_insecure,
        args.relay_timeout_s,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.service", description=__doc__)
    parser.add_argument("--producer-endpoint", help="ZeroMQ endpoint of the producer port")
    parser.add_argument("--consumer-endpoint", help="ZeroMQ endpoint of the consumer port")
    add_limit_flags(parser, limit_names())
    parser.add_argument(
        "--peer-send-timeout-s", type=seconds, default=DEFAULT_PEER_SEND_TIMEOUT_S,
        help="give up on a peer that takes no message (or is stopped) this long; "
        f"default {DEFAULT_PEER_SEND_TIMEOUT_S:g}",
    )  # fmt: skip
    parser.add_argument(
        "--shutdown-timeout-s", type=seconds, default=DEFAULT_SHUTDOWN_TIMEOUT_S,
        help="after SIGINT/SIGTERM, exit (code 1) if the clean shutdown takes longer; "
        f"default {DEFAULT_SHUTDOWN_TIMEOUT_S:g}",
    )  # fmt: skip
    parser.add_argument(
        "--allow-other-users", action="store_true",
        help="let producers of other local users connect (their packets carry their uid); "
        f"the default producer socket then lives in {shared_producer_dir()}",
    )  # fmt: skip
    add_relay_arguments(parser)
    add_perfetto_arguments(parser)
    args = parser.parse_args(argv)
    relay = relay_options(args)
    if relay is not None and (error := options_error(relay)):
        parser.error(error)  # exit 2
    limits = Limits(**{name: getattr(args, name) for name in limit_names()})
    try:
        producer = args.producer_endpoint or default_producer_endpoint(
            shared=args.allow_other_users
        )
        consumer = args.consumer_endpoint or default_consumer_endpoint()
        shell = ServiceShell(
            producer, consumer, limits, args.peer_send_timeout_s, args.shutdown_timeout_s,
            args.allow_other_users, relay, perfetto_sockets(args),
        )  # fmt: skip
    except (zmq.ZMQError, OSError, RuntimeError, KeyFileError) as e:
        log(f"cannot start: {e}")
        return 1
    return shell.run()


if __name__ == "__main__":
    sys.exit(main())
