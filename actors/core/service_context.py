"""What the service keeps between messages, shared by its parts.

    ServiceCore (service_core.py)   entry points, dispatch tables, timers
      ├─ ProducerPort (producer_port.py)   producer messages, a producer gone
      ├─ ConsumerPort (consumer_port.py)   consumer messages, a consumer gone
      ├─ Flushes (flushes.py)              flush requests, acks, completion
      ├─ Clones (clones.py)                CloneSession: a session's copy, after its flush
      └─ SessionControl (session_control.py)  instances, start, stop
    each over one ServiceContext: producers, sessions, buffers, ids, counters,
    the commit path, the outbox, the shell's clocks.

The shell passes in an SMB factory, a file opener (write_into_file), the
clocks (for clock snapshots and service packet timestamps) and the host's
SystemInfo; the core never reads a clock or the host itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import readback, reports, service_packets
from actors.core.file_sink import FileOpener, SessionFile, no_files
from actors.core.ids import Counter, IdPool
from actors.core.machines import MachineTable, rounds_to_emit
from actors.core.outbox import Outbox
from actors.core.producer_table import ProducerTable
from actors.core.producers import CommitPath, ServiceCounters, SmbFactory
from actors.core.sessions import Limits, Session
from shm.trace_buffer import TraceBuffer

MAX_BUFFER_ID = 0xFFFF
MAX_REMEMBERED_REMOTE = 4096


class Clocks:
    """The shell's clocks, as the core may see them."""

    def __init__(self, snapshot: Callable[[], list[tuple[int, int]]], boottime: Callable[[], int]):
        self.snapshot = snapshot
        self.boottime = boottime


class ServiceContext:
    def __init__(
        self,
        smb_factory: SmbFactory,
        clocks: Clocks,
        uid: int,
        service_pid: int,
        limits: Limits,
        open_file: FileOpener = no_files,
        rng: random.Random | None = None,
        system_info: pb.SystemInfo | None = None,
    ) -> None:
        self.smb_factory = smb_factory
        # The host's SystemInfo (uname, page size, CPUs, time zone), collected once
        # by the shell; on the first read of each session (None: no such packet).
        self.system_info = system_info
        # The shell's randomness (trace UUIDs, trigger skip_probability); a seeded
        # Random by default, so that tests are repeatable.
        self.rng = rng if rng is not None else random.Random(0)
        self.open_file = open_file  # the shell's, for write_into_file (file_sink.py)
        self.clocks = clocks
        self.uid = uid
        self.service_pid = service_pid  # the service's own process id, on its packets
        self.limits = limits
        self.producers = ProducerTable()
        self.sessions: dict[int, Session] = {}
        self.buffers: dict[int, TraceBuffer] = {}  # by global buffer id
        self.files: dict[int, SessionFile] = {}  # write_into_file sessions, by session id
        self.counters = ServiceCounters()
        self.commit = CommitPath(self.buffers, self.counters)
        self.out = Outbox()
        self.buffer_ids = IdPool(MAX_BUFFER_ID)
        self.session_ids = Counter()
        self.instance_ids = Counter()
        self.flush_ids = Counter()
        self.producers_seen = 0
        self.data_sources_seen = 0
        # A consumer connection's Hello.client_name (the name its triggers carry).
        self.consumer_names: dict[bytes, str] = {}
        # The machines behind relays (machines.py), and the machine of each relayed
        # producer by what a buffer record names, (producer id, uid, pid): read-back
        # stamps machine_id from it, also after the producer left (the oldest of
        # MAX_REMEMBERED_REMOTE forgotten).
        self.machines = MachineTable()
        self.machine_of: dict[tuple[int, int, int], int] = {}
        # Chunks relays freed unsent (RelayLoss), by buffer id: added to the
        # buffer's chunks_discarded in its stats (TraceBuffer keeps its own counters).
        self.relay_loss: dict[int, int] = {}

    def refuse(self, limit: str) -> None:
        """Count a request refused because of `limit` (a Limits field name); the
        caller answers the peer with an error naming the limit."""
        refusals = self.counters.refusals
        refusals[limit] = refusals.get(limit, 0) + 1

    def remote_producer(self, producer_id: int, uid: int, pid: int, machine_id: int) -> None:
        """Remember a relayed producer's machine, for read-back's machine_id."""
        key = (producer_id, uid, pid)
        self.machine_of.pop(key, None)
        while len(self.machine_of) >= MAX_REMEMBERED_REMOTE:
            del self.machine_of[next(iter(self.machine_of))]
        self.machine_of[key] = machine_id

    def free_buffer_ids(self) -> int:
        return MAX_BUFFER_ID - len(self.buffer_ids)

    def session_of(self, consumer: bytes) -> Session | None:
        """The session of a consumer connection (one at most)."""
        for session in self.sessions.values():
            if session.consumer == consumer:
                return session
        return None

    # -- the service's packets, queued for the next read (service_packets.py) ---------------

    def service_event(self, session: Session, event: str) -> None:
        """Queue the TracingServiceEvent `event` (a field name), now."""
        if not session.config.builtin_data_sources.disable_service_events:
            service_packets.add_event(session.service_events, event, self.clocks.boottime())

    def start_clock_snapshot(self, session: Session) -> None:
        """The snapshot taken when the session starts, kept apart until read."""
        if not session.config.builtin_data_sources.disable_clock_snapshotting:
            session.initial_clock_snapshot = self.clocks.snapshot()

    def clock_snapshot(self, session: Session) -> None:
        """A snapshot into the session's ring (all data sources started, disabled)."""
        if not session.config.builtin_data_sources.disable_clock_snapshotting:
            service_packets.add_snapshot(session.clock_snapshots, self.clocks.snapshot())

    def clock_snapshot_if_drifted(self, session: Session) -> None:
        """A snapshot, if a clock drifted since the newest queued (periodic, flushes)."""
        if not session.config.builtin_data_sources.disable_clock_snapshotting:
            reading = self.clocks.snapshot()
            service_packets.add_snapshot_if_drifted(session.clock_snapshots, reading)

    def periodic_clock_snapshot(self, session: Session, now: int) -> None:
        """The snapshot every snapshot_interval_ms while the session is started."""
        due = session.next_clock_snapshot
        if due is None or due > now:
            return
        session.next_clock_snapshot = now + service_packets.snapshot_interval_ns(session.config)
        self.clock_snapshot_if_drifted(session)

    def scrape_session(self, session: Session, skip: frozenset[int] = frozenset()) -> None:
        """Copy what the session's producers left in their SMBs into its buffers
        (but those in `skip`)."""
        ids = set(session.buffer_ids) - skip
        for producer_id in {i.producer_id for i in session.instances.values()}:
            producer = self.producers.by_id(producer_id)
            if producer is not None:
                self.commit.scrape(producer, ids)

    def machine_packets(self, session: Session) -> tuple[list[bytes], list[bytes]]:
        """The relayed machines' packets for the session's next read: (system_info of
        each, once per InitRelay; remote_clock_sync of each with clock rounds not yet
        emitted in this session: machines.rounds_to_emit)."""
        infos: list[bytes] = []
        syncs: list[bytes] = []
        with_info = not session.config.builtin_data_sources.disable_system_info
        for machine in self.machines:
            if machine.id not in session.machines:
                continue  # none of its producers wrote into this session
            if with_info and session.machine_incarnations.get(machine.id) != machine.incarnation:
                session.machine_incarnations[machine.id] = machine.incarnation
                info = service_packets.remote_system_info_packet(
                    machine.system_info, machine.id, self.uid, self.service_pid
                )
                infos += [info] if info is not None else []
            self.machines.settle(machine, self.clocks.boottime())
            after = session.machine_serials.get(machine.id, 0)
            rounds = rounds_to_emit(self.machines.best_rounds(machine), after)
            if rounds:
                session.machine_serials[machine.id] = rounds[-1].serial
                values = [(r.client1, r.host1, r.client2, r.host2) for r in rounds]
                syncs.append(service_packets.remote_clock_sync_packet(
                    values, machine.id, self.clocks.boottime(), self.uid, self.service_pid
                ))  # fmt: skip
        return infos, syncs

    # -- reports ----------------------------------------------------------------------

    def trace_stats_packet(self, session: Session | None) -> bytes:
        stats = self.trace_stats(session)
        return readback.trace_stats_packet(
            stats, self.clocks.boottime(), self.uid, self.service_pid
        )

    def trace_stats(self, session: Session | None) -> pb.TraceStats:
        buffer_ids = session.buffer_ids if session is not None else []
        buffers = [self._buffer_report(b) for b in buffer_ids]
        return reports.trace_stats(self._totals(), buffers, session)

    def _totals(self) -> reports.ServiceTotals:
        producers = self.producers.values()
        return reports.ServiceTotals(
            producers_connected=len(producers),
            producers_seen=self.producers_seen,
            data_sources_registered=sum(len(p.data_sources) for p in producers),
            data_sources_seen=self.data_sources_seen,
            tracing_sessions=len(self.sessions),
            total_buffers=len(self.buffers),
            chunks_discarded=self.counters.chunks_discarded,
            patches_discarded=self.counters.patches_discarded,
        )

    def machine_reports(self) -> list[reports.MachineReport]:
        behind: dict[int, int] = {}
        for producer in self.producers.values():
            behind[producer.machine_id] = behind.get(producer.machine_id, 0) + 1
        return [
            reports.MachineReport(m.id, m.name, m.connected, behind.get(m.id, 0), m.key)
            for m in self.machines
        ]

    def peers_given_up(self) -> reports.PeersGivenUp:
        c = self.counters
        return reports.PeersGivenUp(
            producers=c.producers_given_up,
            consumers=c.consumers_given_up,
            messages_dropped=c.given_up_messages_dropped,
            messages_refused=c.given_up_messages_refused,
        )

    def _buffer_report(self, buffer_id: int) -> reports.BufferReport:
        buffer = self.buffers[buffer_id]
        stats = buffer.stats  # a copy
        stats.chunks_discarded += self.relay_loss.get(buffer_id, 0)
        return reports.BufferReport(stats, buffer.writer_packets_dropped, buffer.writer_stats)
