"""shm.packets: fragment framing inside a chunk payload, and its untrusted parser.

What users rely on: writers backfill Perfetto's redundant 4-byte varint
(7 -> 87 80 80 00); the service's parser accepts every framing a Perfetto writer
produces (1- to 4-byte lengths, empty fragments), recognises the drop sentinel,
and for any bytes a producer can write neither raises nor returns a fragment
outside the window it was given (nor even reads outside it).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shm.abi import PACKET_DROPPED_SIZE
from shm.packets import (
    MALFORMED,
    MAX_FRAGMENT_SIZE,
    OK,
    WRITER_DROPPED,
    encode_size4,
    parse_fragments_untrusted,
    write_size4,
)
from shm.region import InProcessRegion

# -- the redundant 4-byte varint -------------------------------------------------------------


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, "80 80 80 00"),
        (7, "87 80 80 00"),
        (127, "ff 80 80 00"),
        (128, "80 81 80 00"),
        (300, "ac 82 80 00"),
        (2**21, "80 80 80 01"),
        (MAX_FRAGMENT_SIZE, "fe ff ff 7f"),
        (PACKET_DROPPED_SIZE, "ff ff ff 7f"),
    ],
)
def test_encode_size4(n, expected):
    assert encode_size4(n) == bytes.fromhex(expected)
    buf = bytearray(b"\xaa" * 8)
    write_size4(buf, 2, n)
    assert buf == b"\xaa\xaa" + bytes.fromhex(expected) + b"\xaa\xaa"


def test_write_size4_into_a_memoryview_of_shared_memory():
    region = InProcessRegion(4096)
    write_size4(region.buf, 100, 7)
    assert bytes(region.buf[100:104]) == b"\x87\x80\x80\x00"
    region.close()


@given(st.integers(0, PACKET_DROPPED_SIZE))
def test_size4_is_a_valid_varint_of_the_value(n):
    raw = encode_size4(n)
    assert len(raw) == 4
    assert all(b & 0x80 for b in raw[:3]) and raw[3] < 0x80
    value = sum((b & 0x7F) << (7 * i) for i, b in enumerate(raw))
    assert value == n
    buf = bytearray(4)
    write_size4(buf, 0, n)
    assert bytes(buf) == raw


@given(st.binary(max_size=300))
def test_size4_round_trips_through_the_parser(payload):
    data = encode_size4(len(payload)) + payload
    bounds, status = parse_fragments_untrusted(data, 0, len(data), 1)
    assert status == OK
    assert bounds == [4, 4 + len(payload)]
    assert data[bounds[0] : bounds[1]] == payload


# -- parsing valid framings ----------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def test_parse_mixed_framing():
    data = bytearray(b"\xee\xee")  # bytes before the window
    start = len(data)
    data += b"\x03abc"  # 1-byte length
    data += encode_size4(2) + b"de"  # 4-byte redundant length
    data += b"\x00"  # empty fragment (the writer's inflation byte)
    data += b"\x81\x01" + b"x" * 129  # 2-byte minimal varint
    end = len(data)
    data += b"\xff\xff"  # bytes after the window
    bounds, status = parse_fragments_untrusted(data, start, end, 4)
    assert status == OK
    pieces = [bytes(data[bounds[i] : bounds[i + 1]]) for i in range(0, len(bounds), 2)]
    assert pieces == [b"abc", b"de", b"", b"x" * 129]


fragment = st.tuples(st.binary(max_size=200), st.sampled_from(["size1", "size4", "minimal"]))


def _frame(payloads_and_styles, prefix: bytes = b"") -> tuple[bytes, list[int]]:
    data = bytearray(prefix)
    expected: list[int] = []
    for payload, style in payloads_and_styles:
        if style == "size1" and len(payload) < 128:
            data.append(len(payload))
        elif style == "minimal":
            data += _varint(len(payload))
        else:
            data += encode_size4(len(payload))
        expected += [len(data), len(data) + len(payload)]
        data += payload
    return bytes(data), expected


@given(
    frags=st.lists(fragment, max_size=40),
    prefix=st.binary(max_size=16),
    suffix=st.binary(max_size=16),
)
def test_valid_framings_parse_back_exactly(frags, prefix, suffix):
    data, expected = _frame(frags, prefix)
    end = len(data)
    data += suffix
    bounds, status = parse_fragments_untrusted(data, len(prefix), end, len(frags))
    assert status == OK
    assert bounds == expected
    pieces = [data[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]
    assert pieces == [p for p, _ in frags]


@given(frags=st.lists(fragment, min_size=1, max_size=20), extra=st.integers(1, 5))
def test_count_larger_than_fragments_present_is_malformed_keeping_the_whole_ones(frags, extra):
    data, expected = _frame(frags)
    bounds, status = parse_fragments_untrusted(data, 0, len(data), len(frags) + extra)
    assert status == MALFORMED
    assert bounds == expected


@given(frags=st.lists(fragment, min_size=1, max_size=20), data_=st.data())
def test_count_smaller_than_fragments_present_parses_only_count(frags, data_):
    count = data_.draw(st.integers(0, len(frags) - 1))
    data, expected = _frame(frags)
    bounds, status = parse_fragments_untrusted(data, 0, len(data), count)
    assert status == OK
    assert bounds == expected[: 2 * count]


def test_count_zero_or_negative_yields_nothing():
    assert parse_fragments_untrusted(b"\x01a", 0, 2, 0) == ([], OK)
    assert parse_fragments_untrusted(b"\x01a", 0, 2, -5) == ([], OK)


# -- the drop sentinel and malformed lengths ------------------------------------------------


def test_drop_sentinel_gives_writer_dropped():
    data = b"\x02ab" + encode_size4(PACKET_DROPPED_SIZE) + b"garbage" + b"\x01z"
    bounds, status = parse_fragments_untrusted(data, 0, len(data), 3)
    assert status == WRITER_DROPPED
    assert bounds == [1, 3], "fragments before the sentinel are kept, nothing after it"


def test_drop_sentinel_needs_no_payload_after_it():
    data = encode_size4(PACKET_DROPPED_SIZE)
    assert parse_fragments_untrusted(data, 0, 4, 1) == ([], WRITER_DROPPED)


@pytest.mark.parametrize(
    "data, count",
    [
        (b"\x80\x80\x80\x80\x01x", 1),  # varint not ended within 4 bytes
        (b"\xff\xff\xff\xff\x7f", 1),
        (b"\x80\x80", 1),  # varint cut by the end of the window
        (b"\x05abc", 1),  # length running past the window
        (encode_size4(MAX_FRAGMENT_SIZE) + b"xx", 1),
        (b"", 1),  # count says 1, nothing there
        (b"\x01a\x80", 2),
    ],
)
def test_malformed_lengths(data, count):
    bounds, status = parse_fragments_untrusted(data, 0, len(data), count)
    assert status == MALFORMED
    assert all(0 <= b <= len(data) for b in bounds)


def test_length_just_fitting_the_window_is_ok_one_more_is_malformed():
    data = b"\x03abc"
    assert parse_fragments_untrusted(data, 0, 4, 1) == ([1, 4], OK)
    assert parse_fragments_untrusted(data, 0, 3, 1) == ([], MALFORMED)


# -- hostile input ----------------------------------------------------------------------------


class WindowOnly:
    """A buffer that fails the test if the parser reads outside its window."""

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.start, self.end = data, start, end

    def __getitem__(self, i):
        assert isinstance(i, int), f"unexpected index {i!r}"
        assert self.start <= i < self.end, f"read at {i} outside [{self.start}, {self.end})"
        return self.data[i]

    def __len__(self) -> int:
        return len(self.data)


@st.composite
def hostile(draw):
    data = draw(
        st.one_of(
            st.binary(max_size=300),
            # plausible-looking payloads: valid framings with a few bytes flipped
            st.lists(fragment, max_size=10).map(lambda f: _frame(f)[0]),
        )
    )
    if data and draw(st.booleans()):
        mutable = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            mutable[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        data = bytes(mutable)
    start = draw(st.integers(0, len(data)))
    end = draw(st.integers(0, len(data)))  # may be < start
    count = draw(st.one_of(st.integers(-2, 1100), st.integers(-(2**40), 2**40)))
    return data, start, end, count


@given(hostile())
def test_parser_never_raises_nor_leaves_its_window(case):
    data, start, end, count = case
    bounds, status = parse_fragments_untrusted(WindowOnly(data, start, end), start, end, count)
    assert status in (OK, MALFORMED, WRITER_DROPPED)
    assert len(bounds) % 2 == 0
    assert len(bounds) <= 2 * max(count, 0)
    previous_end = start
    for i in range(0, len(bounds), 2):
        b, e = bounds[i], bounds[i + 1]
        # a fragment is a half-open range inside [start, end), after its length byte(s),
        # after the previous fragment
        assert start < b <= e <= end
        assert b > previous_end
        previous_end = e
    if status == OK:
        assert len(bounds) == 2 * max(count, 0)


@given(hostile())
def test_parser_result_is_independent_of_bytes_outside_the_window(case):
    data, start, end, count = case
    if start > end:
        return
    shifted = b"\xff" * 7 + data[start:end] + b"\x80" * 5
    a = parse_fragments_untrusted(data, start, end, count)
    b = parse_fragments_untrusted(shifted, 7, 7 + end - start, count)
    assert b[1] == a[1]
    assert [x - 7 for x in b[0]] == [x - start for x in a[0]]


@given(hostile())
def test_parser_accepts_memoryview_and_bytearray_alike(case):
    data, start, end, count = case
    expected = parse_fragments_untrusted(data, start, end, count)
    assert parse_fragments_untrusted(bytearray(data), start, end, count) == expected
    assert parse_fragments_untrusted(memoryview(data), start, end, count) == expected
