"""Property tests of the whole data path in one process: TraceWriters -> SMB ->
commits (held, reordered) and scrapes -> TraceBuffer (ring overwrites, DISCARD)
-> destructive reads. Every packet read back must be byte-identical to one that
was written, each sequence in order without duplicates, and every missing
packet accounted for: by a loss mark on the sequence's next packet where there
is one, and always by a counter.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from shm.abi import SharedMemoryABI, chunk_size_for, resolve_geometry
from shm.arbiter import SharedMemoryArbiter
from shm.protozero import Message, build
from shm.region import InProcessRegion
from shm.trace_buffer import FillPolicy, ReadPacket, TraceBuffer
from shm.writer import BufferExhaustedPolicy, TraceWriter
from tests.service_harness import ServiceHarness

FIRST_MARK = b"\xb8\x05\x01"  # first_packet_on_sequence, appended by the writer
DROP_MARK = b"\xd0\x02\x81\x02"  # previous_packet_dropped = 257, appended by the writer
ID = struct.Struct("<BI")  # (writer index, sequence number) at the start of each packet
PAGE = 4096


def write_nested(stream: Stream, rnd: random.Random, size: int) -> None:
    """A packet streamed with protozero: nested size fields left behind in returned
    chunks become patches. The same calls on a BytesStream give the expected bytes."""
    head = ID.pack(stream.index, len(stream.sent))
    fill = rnd.randbytes(size)

    def fill_packet(msg: Message) -> None:
        msg.raw(head)
        with msg.begin_nested(900) as outer:
            outer.varint(3, size)
            with outer.begin_nested(5) as inner:
                inner.bytes_field(1, fill)
            outer.bytes_field(1, fill[: size // 3])

    stream.sent.append(build(fill_packet))
    packet = stream.writer.new_packet()
    fill_packet(packet)
    packet.end()


def make_packet(rnd: random.Random, writer: int, seq: int, size: int) -> bytes:
    if size < ID.size:
        return bytes((seq + i) & 0xFF for i in range(size))
    return ID.pack(writer, seq) + rnd.randbytes(size - ID.size)


@dataclass
class Stream:
    writer: TraceWriter
    index: int
    sent: list[bytes] = field(default_factory=list)
    read: list[ReadPacket] = field(default_factory=list)


class Rig:
    def __init__(self, rnd, pages, layout, buffer_size, fill_policy, policies):
        geometry = resolve_geometry(pages * PAGE, PAGE)
        self.region = InProcessRegion(geometry.size)
        abi = SharedMemoryABI(self.region.buf, geometry)
        self.buffer = TraceBuffer(buffer_size, fill_policy)
        self.service = ServiceHarness(abi, self.buffer, rnd)
        self.arbiter = SharedMemoryArbiter(abi, self.service.on_commit, sleep=self._sleep)
        self.arbiter._layout = layout
        self.streams = [
            Stream(self.arbiter.create_trace_writer(1, policy), i)
            for i, policy in enumerate(policies)
        ]
        self.by_writer_id = {s.writer.writer_id: s for s in self.streams}
        for writer_id in self.by_writer_id:
            self.service.register_writer(writer_id)

    def _sleep(self, _seconds: float) -> None:
        self.service.deliver()  # a stalled writer waits for the service to free chunks

    def read_all(self) -> None:
        self.buffer.begin_read()
        while (packet := self.buffer.read_next_packet()) is not None:
            self.by_writer_id[packet.writer_id].read.append(packet)

    def finish(self) -> None:
        self.service.hold = False
        for s in self.streams:
            s.writer.flush()
        self.service.deliver()
        self.read_all()
        self.read_all()


def exact_fill_sizes(layout: int) -> list[int]:
    payload = chunk_size_for(PAGE, layout) - 8
    return [payload - 4, payload - 5, payload - 3, 2 * (payload - 4), 3 * (payload - 4)]


def packet_size(max_size: int, layout: int):
    return st.one_of(
        st.integers(ID.size, 300),
        st.integers(300, 5000),
        st.sampled_from(exact_fill_sizes(layout)),
        st.integers(5000, max_size),
    )


def check_stream(stream: Stream, counters: int) -> None:
    """Order, identity and loss accounting for one sequence."""
    last = -1
    for packet in stream.read:
        data = packet.data
        windex, seq = ID.unpack_from(data)
        assert windex == stream.index
        assert seq > last, "out of order or duplicated"
        expected = stream.sent[seq]
        marks = data[len(expected) :]
        assert data[: len(expected)] == expected, f"packet {seq} differs"
        assert marks in (b"", FIRST_MARK, DROP_MARK, FIRST_MARK + DROP_MARK), marks
        if seq == 0:
            assert marks.startswith(FIRST_MARK)
        if seq != last + 1:  # packets last+1 .. seq-1 are missing
            assert packet.loss_flags or DROP_MARK in marks, f"gap before {seq} not marked"
        last = seq
    missing = len(stream.sent) - len(stream.read)
    if missing:
        assert counters + stream.writer.dropped_packets > 0, "packets lost without a counter"


def loss_counters(buffer: TraceBuffer) -> int:
    s = buffer.stats
    return (
        s.chunks_overwritten
        + s.chunks_discarded
        + s.trace_writer_packet_loss
        + s.patches_failed
        + s.abi_violations
    )


OPS = st.sampled_from(
    ["write"] * 10 + ["nested"] * 3 + ["flush", "deliver", "shuffle", "hold", "scrape", "read"]
)


@settings(max_examples=500)
@given(data=st.data())
def test_random_streams_round_trip_or_account_for_every_loss(data):
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    pages = data.draw(st.sampled_from([4, 8]), label="pages")
    layout = data.draw(st.sampled_from([1, 1, 2, 3]), label="layout")
    buffer_size = data.draw(st.sampled_from([16 << 10, 64 << 10, 4 << 20]), label="buffer")
    fill = data.draw(st.sampled_from([FillPolicy.RING_BUFFER, FillPolicy.DISCARD]), label="fill")
    policies = data.draw(
        st.lists(
            st.sampled_from([BufferExhaustedPolicy.DROP, BufferExhaustedPolicy.STALL]),
            min_size=1,
            max_size=3,
        ),
        label="policies",
    )
    rig = Rig(rnd, pages, layout, buffer_size, fill, policies)
    sizes = packet_size(3 * pages * PAGE, layout)
    for op in data.draw(st.lists(OPS, min_size=10, max_size=120), label="ops"):
        stream = rig.streams[rnd.randrange(len(rig.streams))]
        if op == "write":
            packet = make_packet(rnd, stream.index, len(stream.sent), data.draw(sizes))
            stream.sent.append(packet)
            stream.writer.write_packet(packet)
        elif op == "nested":
            write_nested(stream, rnd, data.draw(sizes))
        elif op == "flush":
            stream.writer.flush()
        elif op in ("deliver", "shuffle"):
            rig.service.hold = False
            rig.service.deliver(shuffle=op == "shuffle")
        elif op == "hold":
            rig.service.hold = True
        elif op == "scrape":
            rig.service.scrape()
        else:
            rig.read_all()
    rig.finish()
    counters = loss_counters(rig.buffer)
    for stream in rig.streams:
        check_stream(stream, counters)
    if counters == 0 and not any(s.writer.dropped_packets for s in rig.streams):
        for stream in rig.streams:
            assert len(stream.read) == len(stream.sent), "nothing was lost, all must be read"
    assert rig.buffer.stats.abi_violations == 0  # our own writer never breaks the ABI


@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=400),
    layout=st.sampled_from([1, 2, 3, 4, 5]),
)
def test_tiny_packets_round_trip_exactly(sizes, layout):
    """Packets of 1 byte and up, no loss possible: everything comes back, in order."""
    rnd = random.Random(0)
    rig = Rig(rnd, 4, layout, 1 << 20, FillPolicy.RING_BUFFER, [BufferExhaustedPolicy.STALL])
    (stream,) = rig.streams
    for seq, size in enumerate(sizes):
        packet = make_packet(rnd, 0, seq, size)
        stream.sent.append(packet)
        stream.writer.write_packet(packet)
    rig.finish()
    got = [p.data for p in stream.read]
    assert got[0] == stream.sent[0] + FIRST_MARK
    assert got[1:] == stream.sent[1:]
    assert all(p.loss_flags == 0 for p in stream.read)
