"""The read-back validator's C twin (shm/_validate.c) answers exactly as its
pure-Python reference (shm/packet_check.py) on valid packets, on every
reserved and unreserved field number, and on mutated and random bytes; and
the reference keeps what the service must keep and drops what it must drop."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from shm import packet_check
from shm._validate import packet_is_valid_untrusted as c_valid
from shm.packet_check import MAX_DEPTH, RESERVED_FIELDS
from shm.packet_check import packet_is_valid_untrusted as py_valid
from shm.protozero import varint


def same(data: bytes) -> bool:
    expected = py_valid(data)
    assert c_valid(data) is expected, data.hex()
    assert c_valid(memoryview(data)) is expected  # any contiguous buffer, as the Python
    return expected


def field(number: int, wire: int, body: bytes = b"") -> bytes:
    return varint(number << 3 | wire) + body


def test_the_twins_share_a_name_and_the_reference_names_its_twin():
    assert c_valid.__name__ == py_valid.__name__ == "packet_is_valid_untrusted"
    assert "_validate.packet_is_valid_untrusted" in (packet_check.__doc__ or "")


def test_real_trace_packets_are_kept():
    packet = pb.TracePacket(timestamp=123)
    packet.track_event.name = "slice"
    packet.track_event.type = pb.TrackEvent.TYPE_SLICE_BEGIN
    packet.for_testing.str = "x" * 300
    packet.sequence_flags = 2
    assert same(packet.SerializeToString())
    assert same(b"")  # an empty packet is well-formed


def test_every_field_number_is_judged_alike_and_only_reserved_ones_are_dropped():
    for number in range(1, 300):
        # an empty length-delimited payload: well-formed whatever the parser reads it as
        for wire, body in ((0, b"\x01"), (2, b"\x00"), (1, bytes(8)), (5, bytes(4))):
            data = field(number, wire, body)
            assert same(data) is (number not in RESERVED_FIELDS), (number, wire)
    for number in RESERVED_FIELDS:  # wherever it appears in the packet
        assert not same(b"\x08\x01" + field(number, 0, b"\x00") + b"\x0a\x00")


def ld(number: int, body: bytes) -> bytes:
    """A length-delimited field."""
    return field(number, 2, varint(len(body)) + body)


def test_nested_messages_and_packed_fields_are_checked_as_the_parser_reads_them():
    """What the official parser reads into (messages, packed numbers) must be
    well-formed; what it does not (strings, bytes, unknown fields) is not looked at."""
    junk = b"\x00\x01"  # field number 0
    cases = {
        ld(11, junk): False,  # track_event
        ld(11, ld(4, b"")): True,  # track_event.debug_annotations
        ld(11, ld(4, junk)): False,  # ... broken inside
        ld(11, ld(31, b"\x80")): False,  # extra_counter_track_uuids: packed varint cut short
        ld(11, ld(31, b"\x80\x01\x05")): True,
        ld(11, ld(47, bytes(12))): False,  # flow_ids (fixed64): not a whole number of them
        ld(11, ld(47, bytes(16))): True,
        ld(900, junk): False,  # for_testing
        ld(1000, junk): True,  # unknown: bytes to the parser
        ld(11, b"\x0a" + b"\xff"): False,  # a string field's length past its message
        field(11, 1, bytes(8)): True,  # a message field with another wire type: unknown
    }
    for data, kept in cases.items():
        assert same(data) is kept, data.hex()
        assert _trace_parses(data) is kept, data.hex()


def test_nesting_deeper_than_max_depth_is_dropped():
    def annotation(depth: int) -> bytes:
        inner = b""
        for _ in range(depth):  # DebugAnnotation.dict_entries (11) in itself
            inner = field(11, 2, varint(len(inner)) + inner)
        body = field(4, 2, varint(len(inner)) + inner)  # TrackEvent.debug_annotations
        return field(11, 2, varint(len(body)) + body)  # TracePacket.track_event

    deepest = MAX_DEPTH - 2  # the packet is depth 0, track_event 1, the annotation 2
    assert same(annotation(deepest)) and _trace_parses(annotation(deepest))
    assert not same(annotation(deepest + 1))
    assert not same(annotation(500))  # nothing recurses without a bound


def test_malformed_tops_are_dropped():
    cases = [
        b"\x00",  # field number 0
        b"\x08",  # varint missing
        b"\x08\x80",  # varint unterminated
        b"\x0a\x05abc",  # length past the end
        b"\x09" + bytes(7),  # 64-bit field cut short
        b"\x0d" + bytes(3),  # 32-bit field cut short
        b"\x0b\x0c",  # a group
        b"\x0e\x00",  # wire type 6
        b"\x0f\x00",  # wire type 7
        b"\x08" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
        b"\x0a" + b"\xff" * 9 + b"\x01",  # a length of 2**63 and more
    ]
    for data in cases:
        assert not same(data), data.hex()


def test_varints_beyond_64_bits_are_read_as_python_reads_them():
    # A 10-byte tag with bits above 63 is a huge field number to Python: both
    # twins drop it as a tag past 32 bits (issue 11), and neither mistakes it
    # for field 3 or 0 by truncating it to 64 bits.
    low3 = (3 << 3).to_bytes(1, "little")  # bits of tag 3, varint wire type
    big_tag = bytes([low3[0] | 0x80]) + b"\x80" * 8 + b"\x02"  # 2**64 + 24
    assert not same(big_tag + b"\x01")
    zero_tag = b"\x80" * 9 + b"\x7e"  # only bits 64..69 set: field number != 0 in Python
    assert not same(zero_tag + b"\x01")
    length_9_bytes = b"\x0a" + b"\xff" * 8 + b"\x7f"  # 2**63 - 1: past any end
    assert not same(length_9_bytes)


packets = st.builds(
    lambda ts, name, payload, flags: pb.TracePacket(
        timestamp=ts,
        sequence_flags=flags,
        track_event=pb.TrackEvent(name=name),
        for_testing=pb.TestEvent(str=payload),
    ).SerializeToString(),
    st.integers(0, 2**64 - 1),
    st.text(max_size=40),
    st.text(max_size=200),
    st.integers(0, 3),
)


@settings(max_examples=400)
@given(packets)
def test_property_valid_packets_agree(data):
    assert same(data)


@settings(max_examples=1500)
@given(packets, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       st.integers(0, 10**6))  # fmt: skip
def test_property_mutated_packets_agree(data, flips, cut):
    mutated = bytearray(data)
    for where, value in flips:
        if mutated:
            mutated[where % len(mutated)] = value
    same(bytes(mutated[: cut % (len(mutated) + 1)]))


@settings(max_examples=1500)
@given(st.binary(max_size=64))
def test_property_random_bytes_agree(data):
    same(data)


@settings(max_examples=500)
@given(st.lists(st.tuples(st.integers(1, 140), st.sampled_from([0, 1, 2, 5])), max_size=8),
       st.binary(max_size=12))  # fmt: skip
def test_property_field_sequences_agree(fields, tail):
    data = b""
    for number, wire in fields:
        body = {0: b"\x96\x01", 1: bytes(8), 2: b"\x03abc", 5: bytes(4)}[wire]
        data += field(number, wire, body)
    same(data)
    same(data + tail)


def _trace_parses(packet: bytes) -> bool:
    """Whether the official parser (upb) reads `packet` framed as a Trace's packet."""
    trace = pb.Trace()
    try:
        trace.ParseFromString(b"\x0a" + varint(len(packet)) + packet)
    except Exception:  # DecodeError; the message names the type only
        return False
    return True


def test_field_numbers_are_1_to_2_pow_29_minus_1_and_tags_at_most_5_bytes():
    highest = (2**29 - 1) << 3  # wire type 0
    cases = {
        varint(highest) + b"\x01": True,  # the largest field number there is
        varint(2**29 << 3) + b"\x01": False,  # one past it: a tag above 32 bits
        varint(2**32 - 1) + bytes(4): False,  # wire type 7 on the top field number
        b"\x88\x80\x80\x80\x00\x01": True,  # field 1 in a padded 5-byte tag
        b"\x88\x80\x80\x80\x80\x00\x01": False,  # the same padded to 6 bytes
        varint(2**35 | 8) + b"\x01": False,  # 35-bit tag
        b"\x80\x80\x80\x80\x08\x01": True,  # tag 2**31 in 5 bytes: field 2**28
    }
    for data, kept in cases.items():
        assert same(data) is kept, data.hex()
        assert _trace_parses(data) is kept, data.hex()  # what upb says, too


@settings(max_examples=800)
@given(st.integers(0, 2**70), st.sampled_from([0, 1, 2, 5]), st.integers(0, 4))
def test_property_tags_are_judged_as_upb_judges_them(number, wire, padding):
    """Any field number, any padding of its tag: kept exactly when upb parses it
    (the field numbers are beyond any message-typed field of TracePacket, so
    only the framing is on trial; reserved fields aside)."""
    tag = bytearray(varint(number << 3 | wire))
    if padding and len(tag) + padding <= 10:  # a redundant (non-minimal) encoding
        tag[-1] |= 0x80
        tag += b"\x80" * (padding - 1) + b"\x00"
    body = {0: b"\x01", 1: bytes(8), 2: b"\x01x", 5: bytes(4)}[wire]
    data = bytes(tag) + body
    if number in RESERVED_FIELDS:
        return
    if 1000 <= number or not number:
        assert same(data) is _trace_parses(data), data.hex()


def test_the_committed_schema_table_is_what_the_installed_schema_gives():
    from shm import trace_schema_gen

    path = Path(trace_schema_gen.__file__).with_name("trace_schema.py")
    assert path.read_text() == trace_schema_gen.render(), "run python -m shm.trace_schema_gen"


def _rich_packet(ts: int, name: str, text: str, values: list[int], depth: int) -> bytes:
    packet = pb.TracePacket(timestamp=ts)
    event = packet.track_event
    event.name = name
    event.type = pb.TrackEvent.TYPE_SLICE_BEGIN
    event.flow_ids.extend(values)
    event.extra_counter_values.extend(values)
    annotation = event.debug_annotations.add(name="a", string_value=text)
    for v in values[:depth]:
        annotation = annotation.dict_entries.add(name=str(v), int_value=v)
    packet.interned_data.event_names.add(iid=1, name=name)
    packet.for_testing.str = text
    return packet.SerializeToString()


rich_packets = st.builds(
    _rich_packet,
    st.integers(0, 2**64 - 1),
    st.text(max_size=20),
    st.text(max_size=60),
    st.lists(st.integers(0, 2**63 - 1), max_size=6),
    st.integers(0, 6),
)


@settings(max_examples=3000, deadline=None)
@given(rich_packets, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       st.integers(0, 10**6), st.binary(max_size=8))  # fmt: skip
def test_property_whatever_a_producer_writes_a_kept_packet_parses_with_the_official_schema(
    data, flips, cut, tail
):
    """The read-back promise: a packet the validator keeps never breaks the
    trace for the official parser, whatever bytes the producer mutated (and the
    twins agree on every one)."""
    mutated = bytearray(data)
    for where, value in flips:
        if mutated:
            mutated[where % len(mutated)] = value
    candidate = bytes(mutated[: cut % (len(mutated) + 1)]) + tail
    if same(candidate):
        assert _trace_parses(candidate), candidate.hex()


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=80))
def test_property_random_bytes_kept_parse_with_the_official_schema(data):
    if same(data):
        assert _trace_parses(data), data.hex()
