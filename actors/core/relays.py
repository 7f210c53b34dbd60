"""The relay port: what the service does with a relay's control channel, and the
producers behind relays.

A relay (actors/relay.py, on another machine) holds one connection; channel 0
carries its control (RelayToService), channel n its local producer n, whose
protocol is the producer port's (producer_port.py) with three differences: the
producer's pid and uid are the ones its relay's kernel reported
(InitializeConnectionRequest.claimed_pid/uid, trusted since the relay is
authenticated), its SMB lives on its machine (session_control tells the relay
the geometry only), and its chunks come inline in CommitData
(producers.CommitPath.commit_inline).

Inside the core a relayed producer is known by `relayed_identity(relay,
channel)`, an identity no ipc peer can hold (RELAYED_PREFIX:
ServiceCore.handle_producer refuses a local peer that chose such a routing id);
the outbox routes what is said to it as ToRelay.

Nothing from a relay is processed before its InitRelay: a message from an
unknown relay is answered, at most once a second, with an Error on channel 0
("unknown relay: send InitRelay"). InitRelay again from a known relay is a new
incarnation of its link: its producers are ended first, then it is answered. A
relay lost (silent past the timeout, or a new relay taking over its machine)
ends its producers as gone producers; its machine stays listed, not connected.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from actors.core.machines import Machine, machine_id_of
from actors.core.outbox import version_error
from actors.core.producers import ProducerEntry
from actors.core.service_context import ServiceContext
from actors.core.service_packets import ClockReading
from protos import tracebus_ipc_pb2 as ipc

RELAYED_PREFIX = b"\x00relay\x00"  # ipc peers with such a routing id are refused
UNKNOWN_RELAY = "unknown relay: send InitRelay"
MAX_LOSS_ENTRIES = 256
MAX_BASELINE_ENTRIES = 4096  # buffer ids a relay sent to, over the services it outlived
MAX_RELAY_IDS = 1024  # relay ids whose traffic is remembered (a restarted relay has a new one)


@dataclass
class RelayTraffic:
    """What one relay id's commits brought, by target buffer: chunks received (handed
    to the commit path, which keeps or counts each), and chunks of what it said it
    sent that were already found lost. Lives as long as the relay id, across its
    link's incarnations."""

    received: dict[int, int] = field(default_factory=dict)
    accounted: dict[int, int] = field(default_factory=dict)
    baselined: bool = False  # its first RelayLoss came
    # Buffers its producers were allowed to write when they committed: the only ones
    # a RelayLoss may charge (a producer names any buffer id it likes).
    buffers: set[int] = field(default_factory=set)


def relayed_identity(relay: bytes, channel: int) -> bytes:
    return RELAYED_PREFIX + channel.to_bytes(4, "big") + relay


class RelayPort:
    def __init__(self, ctx: ServiceContext, end_producer: Callable[[bytes, int], None]) -> None:
        self._ctx = ctx
        self._end_producer = end_producer  # ProducerPort.gone
        self._traffic: OrderedDict[bytes, RelayTraffic] = OrderedDict()

    def known(self, relay: bytes, now: int, key: str) -> bool:
        """Whether the relay sent InitRelay, over a connection of the same key (its
        liveness noted); else it is answered "unknown relay" (at most once a second):
        a relay may not speak under another's routing id."""
        machine = self._ctx.machines.of_relay(relay)
        if machine is not None and machine.key == key:
            machine.last_seen = now
            return True
        if self._ctx.machines.may_answer_unknown(relay, now):
            self._ctx.out.to_relay(relay, error=UNKNOWN_RELAY)
        return False

    def handle(
        self, relay: bytes, msg: ipc.RelayToService, now: int, clocks: ClockReading, key: str
    ) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "init_relay":
            self._init(relay, msg.request_id, msg.init_relay, now, key)
            return
        if not self.known(relay, now, key):
            return
        machine = self._ctx.machines.of_relay(relay)
        assert machine is not None
        if kind == "heartbeat":
            self._ctx.out.to_relay(relay, msg.request_id, heartbeat=ipc.Heartbeat())
        elif kind == "sync_clock":
            self._sync_clock(machine, msg.request_id, msg.sync_clock, clocks)
        elif kind == "loss":
            self._loss(relay, msg.loss)
        elif kind == "producer_gone":
            self._producer_gone(relay, msg.producer_gone.channel, now)
        else:
            self._ctx.counters.messages_not_handled += 1
            text = f"{kind} is not handled by this service" if kind else "no message"
            self._ctx.out.to_relay(relay, msg.request_id, error=text)

    def _init(self, relay: bytes, request_id: int, init: ipc.InitRelay, now: int, key: str) -> None:
        reply = ipc.InitRelayResponse()
        reply.hello.protocol_version = ipc.PROTOCOL_VERSION
        version = init.hello.protocol_version
        if version != ipc.PROTOCOL_VERSION:
            reply.hello.error = version_error(version)
            self._ctx.out.to_relay(relay, request_id, init_relay=reply)
            return
        self.lost(relay, now)  # a known relay starts over: a new incarnation
        machines = self._ctx.machines
        held = machines.by_id(machine_id_of(init.machine_id_hint or init.machine_name))
        if held is not None and held.connected:
            self.lost(held.relay, now)  # the machine's relay came back on a new connection
        machine = machines.init_relay(relay, init, key, now)
        reply.machine_id = machine.id
        self._ctx.out.to_relay(relay, request_id, init_relay=reply)

    def lost(self, relay: bytes, now: int) -> Machine | None:
        """End every producer behind the relay; its machine stays, not connected."""
        routes = self._ctx.out.relayed
        for identity in [i for i, (r, _c) in routes.items() if r == relay]:
            self._end_producer(identity, now)
            routes.pop(identity, None)
        return self._ctx.machines.lost(relay)

    def _producer_gone(self, relay: bytes, channel: int, now: int) -> None:
        identity = relayed_identity(relay, channel)
        if identity in self._ctx.out.relayed:
            self._end_producer(identity, now)
            self._ctx.out.relayed.pop(identity, None)

    def _sync_clock(
        self, machine: Machine, request_id: int, sync: ipc.SyncClock, clocks: ClockReading
    ) -> None:
        machines = self._ctx.machines
        if sync.phase == ipc.SyncClock.PING:
            machines.ping(machine, sync, clocks)
            reply = ipc.SyncClockResponse(round=sync.round)
            self._ctx.out.to_relay(machine.relay, request_id, sync_clock=reply)
        elif sync.phase == ipc.SyncClock.UPDATE:
            machines.update(machine, sync, clocks)

    def received(
        self, relay: bytes, producer: ProducerEntry, commit_untrusted: ipc.CommitDataRequest
    ) -> None:
        """A relayed producer's commit reaches the commit path: count its chunks for
        the buffers it may write to (the commit path discards and counts the others;
        keys bounded by the service's buffers)."""
        traffic = self._traffic_of(relay)
        allowed, known = producer.allowed_buffers, traffic.buffers
        for move in commit_untrusted.chunks_to_move:
            buffer = move.target_buffer
            # A chunk for a buffer its instance just left came too: the commit path
            # counts it discarded, a RelayLoss must not count it again.
            if buffer in allowed or buffer in known:
                traffic.received[buffer] = traffic.received.get(buffer, 0) + 1
                known.add(buffer)

    def _traffic_of(self, relay: bytes) -> RelayTraffic:
        traffic = self._traffic.get(relay)
        if traffic is None:
            traffic = self._traffic[relay] = RelayTraffic()
            if len(self._traffic) > MAX_RELAY_IDS:
                self._traffic.popitem(last=False)
        else:
            self._traffic.move_to_end(relay)
        return traffic

    def _loss(self, relay: bytes, loss_untrusted: ipc.RelayLoss) -> None:
        """Chunks the relay freed unsent, and those it sent that never came (sent
        minus received, less what an earlier RelayLoss found): counted as discarded
        in the buffers they were for. The first RelayLoss of a relay id sets the
        baseline only: what it lost before went to a service before this one."""
        traffic = self._traffic_of(relay)
        if not traffic.baselined:
            traffic.baselined = True
            for entry in loss_untrusted.sent[:MAX_BASELINE_ENTRIES]:
                gone = entry.chunks - traffic.received.get(entry.target_buffer, 0)
                traffic.accounted[entry.target_buffer] = max(0, gone)
            return
        mine = traffic.buffers | self._allowed_now(relay)
        sent = [e for e in loss_untrusted.sent[:MAX_LOSS_ENTRIES] if e.target_buffer in mine]
        for entry in loss_untrusted.buffers[:MAX_LOSS_ENTRIES]:
            if entry.target_buffer in mine:
                self._discarded(entry.target_buffer, entry.chunks)
        for entry in sent:
            buffer = entry.target_buffer
            known = traffic.received.get(buffer, 0) + traffic.accounted.get(buffer, 0)
            if entry.chunks > known:
                traffic.accounted[buffer] = traffic.accounted.get(buffer, 0) + entry.chunks - known
                self._discarded(buffer, entry.chunks - known)

    def _allowed_now(self, relay: bytes) -> set[int]:
        """The buffers the relay's producers may write to now (set up again after its
        InitRelay, before its RelayLoss comes)."""
        allowed: set[int] = set()
        for identity, (owner, _channel) in self._ctx.out.relayed.items():
            producer = self._ctx.producers.get(identity)
            if owner == relay and producer is not None:
                allowed.update(producer.allowed_buffers)
        return allowed

    def _discarded(self, buffer_id: int, chunks: int) -> None:
        """Add to the buffer's chunks_discarded (one that exists: a stale id names nothing)."""
        if buffer_id in self._ctx.buffers:
            lost = self._ctx.relay_loss.get(buffer_id, 0) + chunks
            self._ctx.relay_loss[buffer_id] = min(lost, (1 << 64) - 1)
