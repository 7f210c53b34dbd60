"""How protocol envelopes map onto ZeroMQ multipart messages (pure: bytes only).

A DEALER (producer or consumer) sends one frame: the serialized envelope
(ProducerToService or ConsumerToService). The service's ROUTER socket sees
[identity, envelope]; it answers [identity, envelope] and ZeroMQ delivers the
envelope alone. Anything else (no frames, extra frames, bytes that do not parse)
is a FramingError: the service counts it and drops it, or answers with an
Error, and never lets it end the process.

An envelope that parses but carries no message this version knows (a newer
peer's, or none at all) is not a framing error: it keeps its request_id, so the
receiving core can answer it ("not handled") instead of leaving the peer waiting.
"""

from __future__ import annotations

import struct
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from protos import tracebus_ipc_pb2 as ipc

MAX_FRAME_BYTES = 4 << 20  # no control message needs more: bulk data goes through the SMB
# A relay's CommitData carries chunks inline: a relay keeps each under this.
MAX_RELAY_FRAME_BYTES = 8 << 20
RELAY_CHANNEL = struct.Struct(">I")  # the relay link's first frame: 0 control, n producer n
MAX_CHANNEL = 0xFFFFFFFF


class FramingError(ValueError):
    """A multipart message that is not a valid envelope."""


def encode(envelope: Message) -> list[bytes]:
    return [envelope.SerializeToString()]


def encode_routed(identity: bytes, envelope: Message) -> list[bytes]:
    return [identity, envelope.SerializeToString()]


def split_identity(frames_untrusted: list[bytes]) -> tuple[bytes, list[bytes]]:
    """ROUTER side: (peer identity, the rest)."""
    if not frames_untrusted:
        raise FramingError("empty message")
    return frames_untrusted[0], frames_untrusted[1:]


Envelope = TypeVar("Envelope", bound=Message)


def _decode(
    frames_untrusted: list[bytes], cls: type[Envelope], max_bytes: int = MAX_FRAME_BYTES
) -> Envelope:
    if len(frames_untrusted) != 1:
        raise FramingError(f"expected 1 frame, got {len(frames_untrusted)}")
    data = frames_untrusted[0]
    if len(data) > max_bytes:
        raise FramingError(f"frame of {len(data)} bytes exceeds {max_bytes}")
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError as e:
        raise FramingError(f"undecodable {cls.__name__}: {e}") from None
    return msg


def decode_from_producer(frames_untrusted: list[bytes]) -> ipc.ProducerToService:
    return _decode(frames_untrusted, ipc.ProducerToService)


def decode_from_consumer(frames_untrusted: list[bytes]) -> ipc.ConsumerToService:
    return _decode(frames_untrusted, ipc.ConsumerToService)


def decode_to_producer(frames: list[bytes]) -> ipc.ServiceToProducer:
    return _decode(frames, ipc.ServiceToProducer)


def decode_to_consumer(frames: list[bytes]) -> ipc.ServiceToConsumer:
    return _decode(frames, ipc.ServiceToConsumer)


# -- the relay link -------------------------------------------------------------------------
# [channel, envelope] (protos/tracebus_ipc.proto, "Relay link"): the relay's DEALER
# sends both frames; the service's ROUTER sees [relay routing id, channel, envelope].


def encode_channel(channel: int, envelope: Message) -> list[bytes]:
    """What a relay sends (and, after the routing id, what the service answers)."""
    return [RELAY_CHANNEL.pack(channel), envelope.SerializeToString()]


def split_channel(frames_untrusted: list[bytes]) -> tuple[int, list[bytes]]:
    """(channel, the envelope's frames) of a relay-link message."""
    if len(frames_untrusted) < 1 or len(frames_untrusted[0]) != RELAY_CHANNEL.size:
        raise FramingError("a relay-link message starts with a 4-byte channel")
    (channel,) = RELAY_CHANNEL.unpack(frames_untrusted[0])
    return channel, frames_untrusted[1:]


def decode_from_relay(frames_untrusted: list[bytes]) -> ipc.RelayToService:
    return _decode(frames_untrusted, ipc.RelayToService)


def decode_to_relay(frames: list[bytes]) -> ipc.ServiceToRelay:
    return _decode(frames, ipc.ServiceToRelay)


def decode_relayed_producer(frames_untrusted: list[bytes]) -> ipc.ProducerToService:
    """A relayed producer's message: its commits carry chunks, so the cap is larger."""
    return _decode(frames_untrusted, ipc.ProducerToService, MAX_RELAY_FRAME_BYTES)
