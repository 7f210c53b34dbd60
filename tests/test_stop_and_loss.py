"""Stop and flush as Perfetto does them, and exact loss accounting (issue 8,
items 1 and 2): a writer's flush asked from another thread, flush acks that wait
for every writer, and, with real processes, traces whose end is complete and
whose losses are counted exactly."""

from __future__ import annotations

import threading

from actors import producer_host
from actors.producer import DataSource
from protos import tracebus_ipc_pb2 as ipc
from tests.test_producer_core import Rig as ProducerRig
from tests.test_producer_core import ds_config
from tests.test_writer import Rig, test_packet


def test_a_flush_requested_from_another_thread_is_served_at_the_next_write():
    rig = Rig(hold=True)
    w = rig.arbiter.create_trace_writer(3)
    for i in range(5):
        w.write_packet(test_packet(i, 10))
    ticket = w.request_flush()
    assert rig.held == []  # nothing happens until the owning thread writes
    w.write_packet(test_packet(5, 10))  # the fast path would fit it: the flag wins
    flushed = [b for b in rig.held if b.writers_flushed]
    assert [b.writers_flushed for b in flushed] == [[(w.writer_id, ticket)]]
    # The chunk holding the 5 packets written before the request went with it.
    assert sum(len(b.chunks_to_move) for b in rig.held[: rig.held.index(flushed[0]) + 1]) == 1
    rig.release_held()
    w.flush()
    packets, _ = rig.packets(w)
    assert len(packets) == 6


def test_a_request_racing_with_the_fast_path_is_never_lost():
    """Another thread asks while the owner writes flat out: every ticket is served
    by a flush that started after it was handed out."""
    rig = Rig(pages=64)
    w = rig.arbiter.create_trace_writer(3)
    served: list[tuple[int, int]] = []
    real = rig.arbiter.commit_flush

    def record(writer_id: int, ticket: int) -> None:
        served.append((writer_id, ticket))
        real(writer_id, ticket)

    rig.arbiter.commit_flush = record  # type: ignore[method-assign]
    stop = threading.Event()
    tickets: list[int] = []

    def asker() -> None:
        while not stop.is_set() and len(tickets) < 200:
            tickets.append(w.request_flush())

    t = threading.Thread(target=asker)
    t.start()
    packet = test_packet(1, 8)
    n = 0
    while t.is_alive() and n < 2_000_000:
        w.write_packet(packet)
        n += 1
    stop.set()
    t.join()
    w.write_packet(packet)  # serves whatever was asked last
    assert tickets and served[-1][1] == tickets[-1]


# -- the producer host: flush acks wait for every writer --------------------------------------


class Idler(DataSource):
    """One packet from a thread of its own, then it waits, writing nothing, until stopped."""

    name = "test.idler"

    def on_start(self, config):
        self.stopping = threading.Event()
        self.wrote = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.writer().write_packet(b"\xc8\x01\x01")
        self.wrote.set()
        self.stopping.wait()

    def on_stop(self):
        self.stopping.set()
        self.thread.join()


def test_a_flush_ack_waits_for_an_idle_threads_writer_then_the_grace():
    rig = ProducerRig([Idler])
    now = [0]
    rig.host.clock = lambda: now[0]
    rig.connect()
    rig.setup_tracing()
    ds = rig.start(1, ds_config(Idler.name))
    assert ds.wrote.wait(10)
    rig.pump(lambda: rig.registered)
    rig.push(flush=ipc.FlushRequest(flush_request_id=5, instance_ids=[1]))
    rig.push(flush=ipc.FlushRequest(flush_request_id=6, instance_ids=[1]))
    now[0] = int(producer_host.WRITER_FLUSH_GRACE_S * 1e9) - 1
    rig.host.tick(0)
    assert not [c for c in rig.of("commit_data") if c.flush_request_id]  # still waiting
    now[0] += 1
    rig.host.tick(0)  # the thread never wrote again: acked at the grace, in order
    assert [c.flush_request_id for c in rig.of("commit_data") if c.flush_request_id] == [5, 6]
    rig.push(stop_data_source=ipc.StopDataSource(instance_id=1))
    kinds = rig.kinds()
    stopped = kinds.index("data_source_stopped")  # Idler does not opt out: the SDK acks
    commits = [
        i
        for i, k in enumerate(kinds)
        if k == "commit_data" and rig.sent[i].commit_data.chunks_to_move
    ]
    assert commits and commits[-1] < stopped  # its chunk went before the stop ack
