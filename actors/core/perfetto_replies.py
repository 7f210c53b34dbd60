"""The consumer port's replies that may not fit in one frame, cut as traced cuts
them (perfetto_consumer.py decides what to answer; this module only cuts):

ReadBuffers: the core's ReadBuffersResponse{slices(1){data,
last_slice_for_packet}, has_more} becomes Perfetto ReadBuffersResponses
{slices(2)} in frames under MAX_FRAME_BYTES. traced's rule: a slice counts its
bytes + 16 (its field headers), and a reply is sent before the running size
would pass MAX_FRAME_BYTES - 64 (the IPC frame's headers); a slice larger than
a frame travels in pieces, last_slice_for_packet on its last piece only. The
IPC has_more is false on the very last frame only. A read that ends with
nothing (or that the service could not serve) is one empty reply without
has_more: the client's read ends (v14's ReadTraceBlocking waits for it).

QueryServiceState: a TracingServiceState in several replies (has_more) when one
frame cannot hold it, each a valid TracingServiceState, together the whole
(v14's client concatenates the parts and parses once): the head (counts) then
each producer, data source and session as an entry, a new part before one
would reach MAX_FRAME_BYTES - 128 (traced's margin).

Pure: messages in, frames out.
"""

from __future__ import annotations

from collections.abc import Iterable

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.perfetto_wire import (
    MAX_FRAME_BYTES,
    OutFrame,
    method_reply,
    perfetto_descriptor,
)
from protos import perfetto_ipc_pb2 as pf
from protos import tracebus_ipc_pb2 as ipc

SLICE_OVERHEAD = 16
FRAME_BUDGET = MAX_FRAME_BYTES - 64
MAX_PIECE = FRAME_BUDGET - SLICE_OVERHEAD  # a larger slice travels in pieces
STATE_BUDGET = MAX_FRAME_BYTES - 128  # traced's QueryServiceState chunk size


def fitting(rid: int, reply: bytes | None, has_more: bool = False) -> OutFrame:
    """The reply frame; one that could not travel (over MAX_FRAME_BYTES) becomes a
    rejection, which ends the call on the client's side."""
    try:
        return OutFrame(method_reply(rid, reply, has_more=has_more))
    except ValueError:
        return OutFrame(method_reply(rid, None))


# -- ReadBuffers ------------------------------------------------------------------------


def read_frames(rid: int, read: ipc.ReadBuffersResponse) -> list[OutFrame]:
    """One reply of the core's as frames of Perfetto ReadBuffersResponses."""
    frames: list[OutFrame] = []
    reply = pf.ReadBuffersResponse()
    size = 0
    for piece, last in _pieces(read.slices):
        cost = len(piece) + SLICE_OVERHEAD
        if size + cost > FRAME_BUDGET and reply.slices:
            frames.append(fitting(rid, reply.SerializeToString(), has_more=True))
            reply, size = pf.ReadBuffersResponse(), 0
        size += cost
        reply.slices.add(data=piece, last_slice_for_packet=last)
    if reply.slices or not read.has_more:
        frames.append(fitting(rid, reply.SerializeToString(), has_more=read.has_more))
    return frames


def read_end(rid: int) -> list[OutFrame]:
    """The last reply of a read: nothing more (traced's OnTraceData({}, false))."""
    return read_frames(rid, ipc.ReadBuffersResponse(has_more=False))


def _pieces(slices: Iterable[ipc.ReadBuffersResponse.Slice]) -> list[tuple[bytes, bool]]:
    """(data, last_slice_for_packet) of each slice, a slice over MAX_PIECE cut in
    pieces, the last piece keeping the flag."""
    out: list[tuple[bytes, bool]] = []
    for s in slices:
        data = s.data
        if len(data) <= MAX_PIECE:
            out.append((data, s.last_slice_for_packet))
            continue
        for start in range(0, len(data), MAX_PIECE):
            last = start + MAX_PIECE >= len(data)
            out.append((data[start : start + MAX_PIECE], last and s.last_slice_for_packet))
    return out


# -- QueryServiceState ------------------------------------------------------------------


def state_frames(rid: int, state: ipc.QueryServiceStateResponse) -> list[OutFrame]:
    """The core's service state as a TracingServiceState in parts under the limit."""
    chunks: list[bytes] = [_state_head(state).SerializeToString()]
    for entry in _state_entries(state):
        part = entry.SerializeToString()
        if len(part) >= STATE_BUDGET:
            continue  # cannot travel; the core bounds names, so not expected
        if len(chunks[-1]) + len(part) >= STATE_BUDGET:
            chunks.append(b"")
        chunks[-1] += part
    last = len(chunks) - 1
    return [fitting(rid, _state_reply(chunk), has_more=i < last) for i, chunk in enumerate(chunks)]


def _i32(value: int) -> int:
    """A uint32 of ours in one of Perfetto's int32 fields (as C++ casts it)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _state_head(state: ipc.QueryServiceStateResponse) -> pb.TracingServiceState:
    return pb.TracingServiceState(
        num_sessions=_i32(len(state.sessions)),
        num_sessions_started=_i32(sum(s.state == "STARTED" for s in state.sessions)),
        supports_tracing_sessions=True,
    )


def _state_entries(state: ipc.QueryServiceStateResponse) -> list[pb.TracingServiceState]:
    """Each producer, data source and session as a TracingServiceState of its own."""
    out = []
    for p in state.producers:
        entry = pb.TracingServiceState()
        entry.producers.add(id=_i32(p.id), name=p.name, uid=_i32(p.uid), pid=_i32(p.pid))
        if p.machine_id:
            entry.producers[0].machine_id = p.machine_id
        out.append(entry)
    for d in state.data_sources:
        entry = pb.TracingServiceState()
        ds = entry.data_sources.add(producer_id=_i32(d.producer_id))
        ds.ds_descriptor.CopyFrom(perfetto_descriptor(d.descriptor))
        out.append(entry)
    for s in state.sessions:
        entry = pb.TracingServiceState()
        entry.tracing_sessions.add(
            id=s.id,
            consumer_uid=_i32(s.consumer_uid),
            state=s.state,
            unique_session_name=s.unique_session_name,
            buffer_size_kb=s.buffer_size_kb,
            is_started=s.state == "STARTED",
        )
        out.append(entry)
    return out


def _state_reply(chunk: bytes) -> bytes:
    return pf.QueryServiceStateResponse(service_state=chunk).SerializeToString()
