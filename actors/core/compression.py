"""compression_type: COMPRESSION_TYPE_DEFLATE: the packets of a read, compressed
as traced compresses them.

traced compresses each batch of packets one ReadBuffers produces (service
packets, buffer contents and trace_stats alike) into ONE packet, whose
`compressed_packets` (TracePacket field 50) holds a zlib stream (deflateInit,
level 6) of those packets framed as a Trace (each as `packet`, field 1). So
the decompressed bytes parse as a Trace, and a reader (trace_processor, the
UI) splices them in where the compressed packet stood:

    a read slice:        packet  packet  ...  [trace_stats]
                           │        │              │
                           ▼        ▼              ▼
    compressed:  TracePacket { compressed_packets: zlib( 0a len packet | 0a len packet | ... ) }

Here a batch is one slice of a read (readback.read_slice: about
READ_SLICE_BYTES of packets), for a consumer's ReadBuffers and for a
write_into_file drain alike. A slice is read with Trace file framing (the
compressor's input, `read_framing`), then `compress` turns its records into
the one compressed packet, framed as the caller's read frames packets. The
compressed packet carries no trusted fields (traced adds none either; the
packets inside carry theirs). A session without compression reads as before:
both functions then hand back what they were given.

Cost: deflating a 1 MiB slice takes about 10 ms here, in the service's loop
after the slice is read (traced too compresses on its main thread); a slice
stays the unit, so a read still yields to other peers between slices.

`compression { deflate {} }` (the newer form) selects the same; `zstd` is not
available here (no zstd in the standard library) and, as in a traced built
without it, leaves the trace uncompressed unless deflate is also set.
"""

from __future__ import annotations

import zlib

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.readback import TRACE_FILE, Framing
from shm.protozero import read_varint, varint

DEFLATE_LEVEL = 6  # traced's deflateInit(&stream, 6)
_COMPRESSED_PACKETS = b"\x92\x03"  # TracePacket.compressed_packets (50), length-delimited


def compresses(config: pb.TraceConfig) -> bool:
    """Whether a session with `config` gets its packets compressed (deflate)."""
    deflate = config.compression_type == pb.TraceConfig.COMPRESSION_TYPE_DEFLATE
    return deflate or config.compression.HasField("deflate")


def read_framing(config: pb.TraceConfig, framing: Framing) -> Framing:
    """How a read of a session with `config` frames its packets: as Trace file
    records if they are to be compressed (what `compress` takes), else `framing`."""
    return TRACE_FILE if compresses(config) else framing


def compress(config: pb.TraceConfig, records: list[bytes], framing: Framing) -> list[bytes]:
    """The records of one slice, read with read_framing(config, framing), as
    `framing` frames packets: unchanged without compression; else one packet
    holding them all, compressed (none for an empty slice, as traced sends none)."""
    if not records or not compresses(config):
        return records
    return framing.frame(compressed_packet(b"".join(records)))


def compressed_packet(trace_bytes: bytes) -> bytes:
    """A TracePacket whose compressed_packets holds `trace_bytes` (a Trace) deflated."""
    data = zlib.compress(trace_bytes, DEFLATE_LEVEL)
    return _COMPRESSED_PACKETS + varint(len(data)) + data


def inner_packets(packet: bytes) -> list[bytes] | None:
    """The packets a compressed packet holds (as the record CLI counts them), or
    None if `packet` is not one: only compressed_packets, deflated, holding a
    Trace of whole packets."""
    if not packet.startswith(_COMPRESSED_PACKETS):
        return None
    start = len(_COMPRESSED_PACKETS)
    size, begin = read_varint(packet, start, len(packet))
    if begin < 0 or begin + size != len(packet):
        return None
    try:
        trace = zlib.decompress(packet[begin:])
    except zlib.error:
        return None
    return _trace_packets(trace)


def _trace_packets(trace: bytes) -> list[bytes] | None:
    packets: list[bytes] = []
    i, end = 0, len(trace)
    while i < end:
        if trace[i] != 0x0A:  # Trace.packet (1), length-delimited
            return None
        size, start = read_varint(trace, i + 1, end)
        if start < 0 or start + size > end:
            return None
        packets.append(trace[start : start + size])
        i = start + size
    return packets
