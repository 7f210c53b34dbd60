"""FrameDecoder (actors/core/perfetto_wire.py) cut lazily, in one process: the
frames it cuts one at a time are the frames parsed at once, whatever the reads'
boundaries; an fd goes to the frame holding its read's last byte (one per frame);
a frame announcing too much is refused before its bytes are kept."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.core.perfetto_wire import MAX_FRAME_BYTES, FrameDecoder, FrameError, encode
from protos import perfetto_ipc_pb2 as pf


def frame(request_id: int) -> bytes:
    return encode(pf.IPCFrame(request_id=request_id))


def cut_all(decoder: FrameDecoder) -> list[tuple[int | None, int | None]]:
    """(request id or None, fd) of every frame complete now."""
    cuts = []
    while (cut := decoder.next_frame()) is not None:
        got, fd = cut
        cuts.append((None if got is None else got.request_id, fd))
    return cuts


@given(
    st.lists(st.integers(1, 10**6), min_size=1, max_size=40),
    st.lists(st.integers(1, 60), min_size=1, max_size=40),
    st.integers(0, 3),
)
def test_lazy_cuts_are_the_eager_frames_and_fds_follow_the_last_byte(
    ids: list[int], sizes: list[int], limit: int
) -> None:
    """Reads of any sizes, each with an fd (its number: the read's index), cut at
    most `limit` frames between reads, then all at the end."""
    stream = b"".join(frame(i) for i in ids)
    ends, total = [], 0
    for i in ids:
        total += len(frame(i))
        ends.append(total)
    decoder, cuts, displaced, at, read = FrameDecoder(), [], [], 0, 0
    while at < len(stream):
        size = sizes[read % len(sizes)]
        chunk = stream[at : at + size]
        if decoder.complete():  # the port reads only once the last read is cut
            cuts += [c for c in [decoder.next_frame()] if c is not None]
            continue
        old = decoder.keep(chunk, 1000 + read)
        if old is not None:
            displaced.append(old)
        at += len(chunk)
        read += 1
        for _ in range(limit):
            if (cut := decoder.next_frame()) is None:
                break
            cuts.append(cut)
    cuts += [c for c in iter(decoder.next_frame, None)]
    assert [c[0].request_id for c in cuts if c[0] is not None] == ids
    assert FrameDecoder().feed(stream) == [pf.IPCFrame(request_id=i) for i in ids]
    # Each fd on the frame holding its read's last byte, the later one of a frame kept.
    expected: dict[int, int] = {}
    at = 0
    for r in range(read):
        at = min(at + sizes[r % len(sizes)], len(stream))
        holder = next(k for k, end in enumerate(ends) if at - 1 < end)
        expected[holder] = 1000 + r
    assert [fd for _, fd in cuts] == [expected.get(k) for k in range(len(ids))]
    assert sorted(displaced + [fd for _, fd in cuts if fd is not None]) == [
        1000 + r for r in range(read)
    ]
    assert decoder.buffered == 0 and not decoder.take_fds()


def test_an_fd_waits_for_its_incomplete_frame() -> None:
    decoder = FrameDecoder()
    data = frame(7)
    assert decoder.keep(data[:2], 5) is None
    assert decoder.fd_waiting() and decoder.next_frame() is None
    assert decoder.keep(data[2:3], 6) == 5  # the same frame: the older fd goes
    decoder.keep(data[3:] + frame(8)[:1])  # completes it, and begins another
    assert not decoder.fd_waiting()
    assert cut_all(decoder) == [(7, 6)]
    assert decoder.buffered == 1


def test_empty_and_undecodable_frames_hand_back_their_fd() -> None:
    decoder = FrameDecoder()
    decoder.keep(b"\x00\x00\x00\x00", 3)  # length 0: skipped
    decoder.keep(b"\x03\x00\x00\x00\xff\xff\xff", 4)  # does not parse
    assert cut_all(decoder) == [(None, 3), (None, 4)]
    assert decoder.undecodable == 1


def test_a_frame_announcing_too_much_is_refused_at_its_header() -> None:
    decoder = FrameDecoder()
    decoder.keep(frame(1) + MAX_FRAME_BYTES.to_bytes(4, "little"))
    assert decoder.next_frame() is not None
    assert decoder.complete()  # the error waits to be cut: the port reads no more
    with pytest.raises(FrameError):
        decoder.next_frame()
