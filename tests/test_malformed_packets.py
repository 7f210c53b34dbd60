"""A producer that writes packets the official parser cannot read (issue 11,
item 3's packet check): real processes (the `rt` harness). Each malformed packet
is dropped on read-back and counted in trace_stats (invalid_packets), the
packets around it arrive, and the trace read back parses as a whole with the
official schema (one bad packet used to make the whole file unreadable).
"""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from shm.protozero import varint
from tests.processes import Runtime
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

MODULE = '''
"""Writes good packets with malformed ones between them."""
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from actors.producer import DataSource
from shm.protozero import varint


def ld(number, body):
    return varint(number << 3 | 2) + varint(len(body)) + body


def good(i):
    p = pb.TracePacket()
    p.for_testing.str = "good"
    p.for_testing.counter = i
    return p.SerializeToString()


def deep(depth):
    inner = b""
    for _ in range(depth):
        inner = ld(11, inner)  # DebugAnnotation.dict_entries
    return ld(11, ld(4, inner))  # track_event.debug_annotations


BAD = [
    ld(11, b"\\x00\\x01"),  # track_event holding field number 0
    ld(900, ld(1, b"x") + b"\\x0f"),  # for_testing ending in a cut tag (wire type 7)
    varint(2**29 << 3) + b"\\x01",  # field number 2**29: past the wire format's range
    b"\\x88\\x80\\x80\\x80\\x80\\x00\\x01",  # a 6-byte tag
    ld(11, ld(47, bytes(12))),  # track_event.flow_ids (fixed64) of 12 bytes
    deep(200),  # nested deeper than any parser goes
]


class Malformed(DataSource):
    name = "malformed.ds"

    def on_start(self, config):
        w = self.writer()
        for i, bad in enumerate(BAD):
            w.write_packet(good(i))
            w.write_packet(bad)
        w.write_packet(good(len(BAD)))
        w.flush()
'''

CONFIG = """
buffers { size_kb: 1024 fill_policy: DISCARD }
data_sources { config { name: "malformed.ds" } }
"""


@pytest.fixture
def rt():
    with Runtime() as runtime:
        yield runtime


def test_malformed_packets_are_dropped_counted_and_the_trace_parses(rt):
    rt.write_module("malformed_ds", MODULE)
    service = rt.start_service()
    producer = rt.start_producer("bad", "--module", "malformed_ds", data_sources=["malformed.ds"])
    consumer = rt.consumer()
    consumer.enable(text_format.Parse(CONFIG, pb.TraceConfig()))

    packets: list[bytes] = []  # every packet read back (reads are destructive)

    def all_good_arrived() -> bool:
        consumer.flush()
        packets.extend(consumer.read_buffers())
        return sum(b"good" in p for p in packets) >= 7

    wait_for(all_good_arrived, 30, "the good packets")
    consumer.disable()
    packets.extend(consumer.read_buffers())
    stats = consumer.stats()
    assert service.poll() is None and producer.poll() is None
    # The whole trace (service packets included) parses with the official schema.
    trace = pb.Trace()
    trace.ParseFromString(b"".join(b"\x0a" + varint(len(p)) + p for p in packets))
    mine = [p for p in trace.packet if p.trusted_pid == producer.pid]
    assert sorted(p.for_testing.counter for p in mine) == list(range(7))
    assert stats.invalid_packets == 6
