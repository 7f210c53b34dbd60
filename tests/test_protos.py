"""The protocol's generated code and its framing over ZeroMQ multipart messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from protos.generate import stale


def test_generated_modules_are_fresh():
    assert stale() == [], "run: python -m protos.generate"


def test_round_trip_through_a_router():
    msg = ipc.ProducerToService(request_id=7)
    msg.initialize_connection.producer_name = "p"
    frames = framing.encode(msg)
    identity, rest = framing.split_identity([b"peer", *frames])
    assert identity == b"peer"
    assert framing.decode_from_producer(rest) == msg
    reply = ipc.ServiceToProducer(request_id=7)
    reply.initialize_connection.producer_id = 3
    routed = framing.encode_routed(b"peer", reply)
    assert routed[0] == b"peer"
    assert framing.decode_to_producer(routed[1:]) == reply


@pytest.mark.parametrize(
    "frames",
    [[], [b"a", b"b"], [b"\xff\xff\xff"], [b"\0" * 3]],
)
def test_bad_frames_raise_framing_error(frames):
    with pytest.raises(framing.FramingError):
        framing.decode_from_consumer(frames)


@pytest.mark.parametrize("frame", [b"", b"\x08\x07", b"\x08\x07\x9a\x06\x02\x08\x01"])
def test_an_envelope_with_no_known_message_keeps_its_request_id(frame):
    """No message, or one from a newer peer (field 99 here): the core answers it."""
    for decode in (framing.decode_from_producer, framing.decode_from_consumer):
        msg = decode([frame])
        assert msg.WhichOneof("msg") is None
        assert msg.request_id == (7 if frame else 0)


def test_oversized_frame_is_refused():
    with pytest.raises(framing.FramingError):
        framing.decode_from_producer([b"\0" * (framing.MAX_FRAME_BYTES + 1)])


@given(st.lists(st.binary(max_size=64), max_size=3))
def test_any_bytes_decode_or_raise_framing_error(frames):
    for decode in (framing.decode_from_producer, framing.decode_from_consumer):
        try:
            decode(frames)
        except framing.FramingError:
            pass
