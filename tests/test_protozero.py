"""The zero-copy writer's encoding and the untrusted top-level field scanner."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from shm.protozero import build, scan_fields, varint


@given(st.integers(0, 2**64 - 1))
def test_varint_matches_protobuf(value):
    packet = pb.TracePacket(timestamp=value)
    assert packet.SerializeToString() == b"\x40" + varint(value)


def test_negative_values_take_ten_bytes():
    assert len(varint(-1)) == 10


@given(
    ts=st.integers(0, 2**63),
    text=st.text(max_size=50),
    counter=st.integers(0, 2**32 - 1),
)
def test_built_messages_parse_and_scan(ts, text, counter):
    def fill(msg):
        msg.varint(8, ts)
        with msg.begin_nested(900) as event:
            event.string(1, text)
            event.varint(3, counter)

    data = build(fill)
    parsed = pb.TracePacket.FromString(data)
    assert (parsed.timestamp, parsed.for_testing.str, parsed.for_testing.counter) == (
        ts,
        text,
        counter,
    )
    assert [(f, w) for f, w, _ in scan_fields(data)] == [(8, 0), (900, 2)]
    assert scan_fields(data)[0][2] == ts


@given(st.binary(max_size=64))
def test_scan_fields_never_raises_and_stays_in_bounds(data):
    fields = scan_fields(data)
    if fields is not None:
        for number, wire, value in fields:
            assert number > 0 and wire in (0, 1, 2, 5)
            if wire != 0:
                assert 0 <= value <= len(data)


def test_scan_fields_rejects_truncation_groups_and_field_zero():
    assert scan_fields(b"\x40") is None  # varint missing
    assert scan_fields(b"\x0a\x05ab") is None  # length past the end
    assert scan_fields(b"\x0b") is None  # start group
    assert scan_fields(b"\x00\x01") is None  # field 0
    assert scan_fields(b"") == []
