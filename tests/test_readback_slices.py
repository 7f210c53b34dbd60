"""Read-back in bounded slices (issue 8, item 4, service side), on ServiceCore
with a fake clock: a read of a large buffer is answered one slice per
continue_reads call, other consumers are answered between slices, each slice
stays within its budget, and the slices together carry exactly the packets of
a one-step read, in the same order, stamped as before."""

from __future__ import annotations

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import readback
from actors.core.service_core import Clocks, Peer, ServiceCore, SliceBudget, ToConsumer
from benchmarks.readback_core import chunks_of, track_event_packet
from protos import tracebus_ipc_pb2 as ipc
from shm.packets import parse_fragments_untrusted

READER = Peer(b"reader", 77, 1000)
OTHER = Peer(b"other", 78, 1000)
PRODUCER_ID, UID, PID = 3, 1000, 4242
WRITERS = 4
NOW = 10**12
UNBOUNDED = SliceBudget(max_bytes=1 << 62)
FIRST_ON_SEQUENCE = b"\xb8\x05\x01"  # first_packet_on_sequence (87) = true


@pytest.fixture(scope="module")
def chunks_16mib():
    return chunks_of(16 << 20, WRITERS)


def filled_core(chunks, buffer_kib: int = 17 * 1024) -> ServiceCore:
    clocks = Clocks(lambda: [(6, NOW), (3, NOW)], lambda: NOW)
    core = ServiceCore(lambda geometry: None, clocks, 0, 100)  # type: ignore[arg-type]
    cfg = pb.TraceConfig()
    cfg.buffers.add(size_kb=buffer_kib, fill_policy=pb.TraceConfig.BufferConfig.DISCARD)
    enable = ipc.EnableTracingRequest(trace_config=cfg.SerializeToString())
    send(core, READER, 1, enable_tracing=enable)
    (buffer,) = core.buffers.values()
    for writer_id, chunk_id, count, flags, payload in chunks:
        buffer.copy_chunk_untrusted(
            PRODUCER_ID, UID, PID, writer_id, chunk_id, count, flags, True, payload
        )
    assert buffer.stats.chunks_written == len(chunks) and buffer.stats.chunks_discarded == 0
    return core


def send(core: ServiceCore, peer: Peer, request_id: int, **kw) -> list[ipc.ServiceToConsumer]:
    outputs = core.handle_consumer(peer, ipc.ConsumerToService(request_id=request_id, **kw), NOW)
    return messages(outputs, peer)


def messages(outputs, peer: Peer) -> list[ipc.ServiceToConsumer]:
    assert all(isinstance(o, ToConsumer) and o.identity == peer.identity for o in outputs)
    return [o.msg for o in outputs]


def packets_of(replies: list[ipc.ServiceToConsumer]) -> list[bytes]:
    """Whole packets, pieces of a packet cut into slices joined."""
    out, piece = [], b""
    for reply in replies:
        for s in reply.read_buffers.slices:
            piece += s.data
            if s.last_slice_for_packet:
                out.append(piece)
                piece = b""
    assert piece == b""
    return out


def read_in_one_step(core: ServiceCore) -> list[ipc.ServiceToConsumer]:
    assert send(core, READER, 2, read_buffers=ipc.ReadBuffersRequest()) == []
    replies = messages(core.continue_reads(NOW, UNBOUNDED), READER)
    assert not core.pending_work()
    return replies


def test_a_large_read_is_sliced_and_others_are_answered_between_slices(chunks_16mib):
    core = filled_core(chunks_16mib)
    assert send(core, READER, 2, read_buffers=ipc.ReadBuffersRequest()) == []
    assert core.pending_work()
    replies: list[ipc.ServiceToConsumer] = []
    answered_during_read = 0
    while core.pending_work():
        replies += messages(core.continue_reads(NOW), READER)
        (answer,) = send(
            core, OTHER, 100 + len(replies), query_service_state=ipc.QueryServiceStateRequest()
        )
        assert answer.HasField("service_state") and answer.request_id == 100 + len(replies)
        answered_during_read += core.pending_work()
    assert answered_during_read >= 15  # 16 MiB in slices of about 1 MiB
    assert all(r.request_id == 2 and r.HasField("read_buffers") for r in replies)
    assert [r.read_buffers.has_more for r in replies] == [True] * (len(replies) - 1) + [False]

    one_step = read_in_one_step(filled_core(chunks_16mib))
    assert packets_of(replies) == packets_of(one_step)


def test_each_slice_stays_within_its_budget(chunks_16mib):
    core = filled_core(chunks_16mib[:1000])
    send(core, READER, 2, read_buffers=ipc.ReadBuffersRequest())
    biggest = 0
    while core.pending_work():
        out = messages(core.continue_reads(NOW), READER)
        biggest = max(biggest, sum(len(s.data) for r in out for s in r.read_buffers.slices))
    # at most one batch over the budget: the read never holds much more than a slice
    assert 0 < biggest <= readback.READ_SLICE_BYTES + readback.READ_BATCH_BYTES


def test_the_time_budget_ends_a_slice_after_one_batch(chunks_16mib):
    core = filled_core(chunks_16mib[:200])  # about 800 KiB: one slice by size alone
    send(core, READER, 2, read_buffers=ipc.ReadBuffersRequest())
    looks = []
    budget = SliceBudget(time_up=lambda: looks.append(1) is None)  # time is always up
    calls = []
    while core.pending_work():
        out = messages(core.continue_reads(NOW, budget), READER)
        calls.append(sum(len(s.data) for r in out for s in r.read_buffers.slices))
    assert len(calls) >= 8 and len(looks) >= len(calls) - 1
    assert max(calls[:-1]) <= readback.READ_BATCH_BYTES * 5 // 4  # one batch, with trailers


def test_a_read_waits_while_its_consumer_has_not_taken_its_slices(chunks_16mib):
    """Flow control: while the shell says a consumer may not be sent more (its
    earlier slices still wait), its read gets no slice and is not pending work;
    once it may, the read resumes where it stood, so the service holds a few
    slices for a slow reader, never its whole trace."""
    core = filled_core(chunks_16mib[:1000])
    send(core, READER, 2, read_buffers=ipc.ReadBuffersRequest())
    first = messages(core.continue_reads(NOW), READER)
    assert first and first[-1].read_buffers.has_more
    backed_up = SliceBudget(may_send=lambda consumer: consumer != READER.identity)
    for _ in range(3):
        assert messages(core.continue_reads(NOW, backed_up), READER) == []
    assert not core.pending_work(backed_up.may_send) and core.pending_work()
    rest: list[ipc.ServiceToConsumer] = []
    while core.pending_work():
        rest += messages(core.continue_reads(NOW), READER)
    one_step = read_in_one_step(filled_core(chunks_16mib[:1000]))
    assert packets_of(first + rest) == packets_of(one_step)


def whole_packets(chunks) -> int:
    """Packets that start and end within `chunks`: not a fragment continuing one,
    not the empty fragment a writer leaves in its reserved slot, not a packet
    whose rest is in a chunk beyond them."""
    last_of_writer = {writer: chunk_id for writer, chunk_id, *_ in chunks}
    total = 0
    for writer, chunk_id, count, flags, payload in chunks:
        bounds, _ = parse_fragments_untrusted(payload, 0, len(payload), count)
        sizes = [end - begin for begin, end in zip(bounds[::2], bounds[1::2], strict=True)]
        total += sum(1 for i, size in enumerate(sizes) if size and not (i == 0 and flags & 1))
        total -= bool(flags & 2 and chunk_id == last_of_writer[writer])
    return total


def test_the_sliced_read_stamps_every_packet_exactly_as_written(chunks_16mib):
    chunks = chunks_16mib[:400]
    core = filled_core(chunks)
    send(core, READER, 2, read_buffers=ipc.ReadBuffersRequest())
    replies = []
    while core.pending_work():
        replies += messages(core.continue_reads(NOW, SliceBudget(max_bytes=100_000)), READER)
    session = next(iter(core.sessions.values()))
    trailers = {
        readback.trusted_trailer(UID, seq, PID): writer
        for (producer, writer), seq in session.seq_ids.items()
        if producer == PRODUCER_ID
    }
    written: dict[int, list[bytes]] = {}  # per writer id, what is left to find, in order
    i = 0
    total = whole_packets(chunks)
    while sum(map(len, written.values())) < total:
        written.setdefault(1 + i % WRITERS, []).append(track_event_packet(i))
        i += 1
    found = 0
    seen: set[int] = set()
    for packet in packets_of(replies):
        tail = next((t for t in trailers if packet.endswith(t)), None)
        if tail is None:  # the service's own packets
            assert pb.TracePacket.FromString(packet).trusted_packet_sequence_id == 1
            continue
        writer = trailers[tail]
        expected = written[writer].pop(0)
        if writer not in seen:  # the writer marks its first packet on the sequence
            expected += FIRST_ON_SEQUENCE
            seen.add(writer)
        assert packet == expected + tail
        found += 1
    assert found == total and session.invalid_packets == 0


def test_a_second_read_while_one_is_pending_is_refused_and_the_first_goes_on(chunks_16mib):
    """Moving the read to the new request would leave a hole: the consumer ignores
    the slices it already got under the first id."""
    core = filled_core(chunks_16mib[:600])
    send(core, READER, 2, read_buffers=ipc.ReadBuffersRequest())
    first = messages(core.continue_reads(NOW), READER)
    assert first and first[-1].read_buffers.has_more
    (refused,) = send(core, READER, 3, read_buffers=ipc.ReadBuffersRequest())
    assert refused.request_id == 3 and "still being answered" in refused.error.message
    rest = []
    while core.pending_work():
        rest += messages(core.continue_reads(NOW), READER)
    assert {r.request_id for r in rest} == {2} and not rest[-1].read_buffers.has_more
    assert packets_of(first + rest) == packets_of(read_in_one_step(filled_core(chunks_16mib[:600])))


def test_a_read_ends_when_its_consumer_goes_or_its_session_is_freed(chunks_16mib):
    core = filled_core(chunks_16mib[:600])
    send(core, READER, 2, read_buffers=ipc.ReadBuffersRequest())
    core.continue_reads(NOW)
    core.consumer_gone(READER.identity, NOW)
    assert not core.pending_work()

    core = filled_core(chunks_16mib[:600])
    send(core, READER, 2, read_buffers=ipc.ReadBuffersRequest())
    core.continue_reads(NOW)
    assert send(core, READER, 3, free_buffers=ipc.FreeBuffersRequest())[0].ack.error == ""
    (last,) = messages(core.continue_reads(NOW), READER)
    assert last.request_id == 2 and not last.read_buffers.has_more
    assert not core.pending_work()


def test_a_consumer_without_a_session_gets_one_empty_last_reply():
    clocks = Clocks(lambda: [(6, NOW)], lambda: NOW)
    core = ServiceCore(lambda geometry: None, clocks, 0, 100)  # type: ignore[arg-type]
    (reply,) = send(core, READER, 5, read_buffers=ipc.ReadBuffersRequest())
    assert reply.HasField("read_buffers") and not reply.read_buffers.has_more
    assert not reply.read_buffers.slices and not core.pending_work()


def copy_into(core: ServiceCore, chunks) -> None:
    (buffer,) = core.buffers.values()
    for writer_id, chunk_id, count, flags, payload in chunks:
        buffer.copy_chunk_untrusted(
            PRODUCER_ID, UID, PID, writer_id, chunk_id, count, flags, True, payload
        )


def by_sequence(packets: list[bytes]) -> dict[bytes, list[bytes]]:
    """Producer packets per trusted trailer (its last 8 bytes tell the sequence)."""
    out: dict[bytes, list[bytes]] = {}
    for packet in packets:
        if pb.TracePacket.FromString(packet).trusted_packet_sequence_id != 1:
            out.setdefault(packet[-8:], []).append(packet)
    return out


def test_chunks_committed_between_slices_are_read_once_in_order(chunks_16mib):
    chunks = chunks_16mib[:1200]
    core = filled_core(chunks[:600])
    send(core, READER, 2, read_buffers=ipc.ReadBuffersRequest())
    replies = messages(core.continue_reads(NOW), READER)
    copy_into(core, chunks[600:])  # producers commit while the read goes on
    (buffer,) = core.buffers.values()
    assert buffer.read_interrupted
    while core.pending_work():
        replies += messages(core.continue_reads(NOW), READER)
    assert not buffer.read_interrupted
    send(core, READER, 3, read_buffers=ipc.ReadBuffersRequest())  # whatever is left
    while core.pending_work():
        replies += messages(core.continue_reads(NOW), READER)
    assert by_sequence(packets_of(replies)) == by_sequence(
        packets_of(read_in_one_step(filled_core(chunks)))
    )
