"""The compiled common case of slice_fragments_untrusted (shm/_fragments.c)
against its pure-Python twin (shm.packets.slice_fragments_fast): the same
answer, piece for piece, on payloads framed every way a producer can frame
them, damaged, cut, or random bytes, from any start offset."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shm import native
from shm.packets import encode_size4, slice_fragments_fast
from tests.test_trace_buffer import payloads

_compiled = native.compiled("shm._fragments")
pytestmark = pytest.mark.skipif(_compiled is None, reason="shm._fragments not built")


def same(data: bytes, start: int) -> None:
    want = slice_fragments_fast(data, start)
    assert _compiled.slice_fragments_fast(data, start) == want
    assert _compiled.slice_fragments_fast(memoryview(data), start) == want


def test_the_twins_share_a_name():
    assert _compiled.slice_fragments_fast.__name__ == slice_fragments_fast.__name__


def test_whole_payloads_are_sliced_and_the_rest_is_declined():
    data = b"\x02ab" + encode_size4(3) + b"xyz" + b"\x00"
    assert _compiled.slice_fragments_fast(data, 0) == ([b"ab", b"xyz", b""], len(data), 10, 0)
    assert _compiled.slice_fragments_fast(data, len(data)) == ([], len(data), len(data), 0)
    for bad in (data[:-2], b"\x85\x01", encode_size4(4) + b"abc", b"\x80\x80\x80\x80"):
        assert _compiled.slice_fragments_fast(bad, 0) is None
        assert slice_fragments_fast(bad, 0) is None
    for start in (-1, len(data) + 1):
        same(data, start)


@settings(max_examples=500)
@given(payloads(), st.integers(0, 12))
def test_property_framed_and_damaged_payloads_agree(data, start):
    same(data, start)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.integers(-2, 20))
def test_property_random_bytes_agree(data, start):
    same(data, start)
