"""A Perfetto consumer's connection, translated: the frames a client of
traced's consumer socket sends (an app's `Tracing::NewTrace(kSystemBackend)`,
the `perfetto` command line) become tracebus ConsumerToService envelopes for
ServiceCore, and the core's ServiceToConsumer envelopes become the replies the
client waits for. One PerfettoConsumerConn per connection; the shell
(actors/perfetto_port.py) owns the socket, the fds and the core calls.

    client frames ──on_frame──► Step(to_core, frames, fd_taken, close)
    core envelopes ──on_core──► [OutFrame]

The client binds "ConsumerPort" and gets the table of SERVED methods (its own
ids are Perfetto's: perfetto_wire.CONSUMER_METHODS); it never sends one the
table leaves out. Each request that waits on the core goes there under a
request id of ours, remembered with the client's (a _Waiting); the core's
answer under that id becomes the client's reply. `drop_reply` requests go to
the core too, and nothing of their answers comes back.

Mapping, method by method: Perfetto's method (its id) {request fields};
-> what goes to the core (ConsumerToService); <- what the client gets.

BindService "ConsumerPort"
    <- BindServiceReply{service id, SERVED}; any other name: success=false
EnableTracing (1) {trace_config, attach_notification_only} [+ fd]
    -> enable_tracing{trace_config (the same bytes), attach_notification_only,
       output_path = adopt_output_fd(fd) for write_into_file without output_path};
       then observe_events again if the client observes (see ObserveEvents)
    <- the core answers twice (started, then disabled): only the final one goes,
       EnableTracingResponse{disabled=true, error if any}; a refusal is final at
       once (disabled + error); an Error envelope: rejected
DisableTracing (2)        -> disable_tracing       <- ack: {} (ack error: rejected)
ReadBuffers (3)           -> read_buffers
    <- each ReadBuffersResponse{slices(1){data, last_slice_for_packet}, has_more}
       re-cut as Perfetto ReadBuffersResponse{slices(2)} in frames under 128 KiB
       (traced's rule: a new frame before the running size, each slice + 16,
       would pass 128 KiB - 64; a bigger slice split, last_slice_for_packet on
       its last piece only); IPC has_more false on the very last frame only;
       an Error (a read already under way, a write_into_file session): rejected
FreeBuffers (4) {buffer_ids}
    -> free_buffers (tracebus frees the session, all its buffers) <- ack: {}
Flush (5) {timeout_ms, flags}
    -> flush{timeout_ms, flags (tracebus keeps the low 32 bits)}
    <- FlushConsumerResponse: success {}, else rejected (a failed flush)
StartTracing (6)          -> start_tracing         <- ack: {} (ack error: rejected)
Detach (8) {key}          -> detach{key}
    <- ack: {}, and the EnableTracing it waited on is never answered (as traced)
Attach (9) {key}          -> attach{key}; then observe_events again, if observed
    <- AttachResponse{trace_config (the same bytes)}; its error: rejected
GetTraceStats (10)        -> get_trace_stats
    <- GetTraceStatsResponse{trace_stats: the core's TraceStats bytes}
ObserveEvents (11) {events_to_observe}
    -> observe_events{types: 1 DATA_SOURCES_INSTANCES, 2 ALL_DATA_SOURCES_STARTED,
       same numbers}, now and again after each EnableTracing and Attach: a
       tracebus subscription belongs to a session, traced's to the connection
       (the probe's client observes before it enables); the core's acks are
       not told (a refusal: no session yet, the next one takes it)
    <- each ObservableEvents as ObserveEventsResponse{events} with has_more:
       instance_state_changes{producer_name, data_source_name, state 1 STOPPED
       / 2 STARTED} (tracebus's fields 2, 3, 5), all_data_sources_started; a
       new ObserveEvents, or one with no types, ends the old stream: {} without
       has_more (traced's way)
QueryServiceState (12)    -> query_service_state
    <- TracingServiceState{producers{id, name, uid, pid, machine_id},
       data_sources{ds_descriptor, producer_id}, tracing_sessions{id,
       consumer_uid, state, unique_session_name, buffer_size_kb, is_started},
       num_sessions, num_sessions_started}, in several replies (has_more) when
       one frame cannot hold it: each a valid TracingServiceState, together
       the whole (v14's client concatenates the parts and parses once)
QueryCapabilities (13)    <- at once: {has_query_capabilities, observable events
                             1 and 2, has_trace_config_output_path}
SaveTraceForBugreport (14) <- at once: {success=false, msg=NOT_HERE}
ChangeTraceConfig (7), CloneSession (15): not served (not in the table)

DataSourceDescriptor field numbers differ (tracebus start=2/stop=3/no_flush=5,
Perfetto stop=2/start=3/no_flush=9): QueryServiceState re-encodes them; what
tracebus does not keep (track_event_descriptor's categories) is not told.

The fd that came with a frame is taken only by an EnableTracing whose config
has write_into_file and no output_path (traced's rule); the shell closes any
other. adopt_output_fd is the shell's (TraceFiles.adopt): it returns a token
path that the core's file opener resolves to that fd during this Step's core
calls.

Hostile bytes: a method before BindService, on another service id, with an id
not SERVED, or whose args do not parse is rejected (success=false) and counted
in `refused`; any other frame kind gets a RequestError. Nothing here raises on
a client's bytes. A client with more than MAX_WAITING requests waiting on the
core is cut off (Step.close). Pure: frames in, envelopes and frames out.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.perfetto_wire import (
    CONSUMER_METHODS,
    CONSUMER_SERVICE,
    CONSUMER_SERVICE_ID,
    MAX_FRAME_BYTES,
    OutFrame,
    Step,
    bind_reply,
    method_reply,
    request_error,
)
from protos import perfetto_ipc_pb2 as pf
from protos import tracebus_ipc_pb2 as ipc

SERVED: dict[str, int] = {
    name: CONSUMER_METHODS[name]
    for name in (
        "EnableTracing",
        "DisableTracing",
        "ReadBuffers",
        "FreeBuffers",
        "Flush",
        "StartTracing",
        "Detach",
        "Attach",
        "GetTraceStats",
        "ObserveEvents",
        "QueryServiceState",
        "QueryCapabilities",
        "SaveTraceForBugreport",
    )
}
_METHOD_OF = {method_id: name for name, method_id in SERVED.items()}

MAX_WAITING = 1024  # requests waiting on the core; a client past it is cut off
# traced's ReadBuffers cut: a slice counts its bytes + 16 (its field headers), and a
# reply is sent before it would pass MAX_FRAME_BYTES - 64 (the IPC frame's headers).
SLICE_OVERHEAD = 16
FRAME_BUDGET = MAX_FRAME_BYTES - 64
MAX_PIECE = FRAME_BUDGET - SLICE_OVERHEAD  # a larger slice travels in pieces
STATE_BUDGET = MAX_FRAME_BYTES - 128  # traced's QueryServiceState chunk size
OBSERVABLE = frozenset({1, 2})  # DATA_SOURCES_INSTANCES, ALL_DATA_SOURCES_STARTED
NOT_HERE = "tracebus does not implement SaveTraceForBugreport"

AdoptOutputFd = Callable[[int], str]
_HOLD = b"(nothing to tell the client yet)"  # compared by identity


@dataclass
class _Waiting:
    """A client's request that the core answers, under a request id of ours."""

    method: str
    request_id: int  # the client's
    drop: bool  # drop_reply: nothing goes back


class PerfettoConsumerConn:
    closing = ""  # the shell's Translator: this one ends a connection through Step.close

    def __init__(self, identity: bytes, adopt_output_fd: AdoptOutputFd) -> None:
        self.identity = identity
        self._adopt = adopt_output_fd
        self._bound = False
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiting] = {}
        # The ObserveEvents stream: the client's request id (0: none), its types,
        # and our id of the core's current subscription.
        self._observer = 0
        self._observer_drop = False
        self._observe_types: list[Any] = []  # ObservableEvents.Type values
        self._observe_id = 0
        self.refused: Counter[str] = Counter()  # requests rejected, by why (the shell logs)

    def read_pending(self) -> bool:
        """A ReadBuffers is being answered (for the shell's pacing)."""
        return any(w.method == "ReadBuffers" for w in self._waiting.values())

    # -- client -> core -------------------------------------------------------------------------

    def on_frame(self, frame_untrusted: pf.IPCFrame, fd: int | None) -> Step:
        step = Step()
        rid = frame_untrusted.request_id
        kind = frame_untrusted.WhichOneof("msg")
        if kind == "msg_bind_service":
            if frame_untrusted.msg_bind_service.service_name == CONSUMER_SERVICE:
                self._bound = True
                step.frames.append(OutFrame(bind_reply(rid, CONSUMER_SERVICE_ID, SERVED)))
            else:
                step.frames.append(OutFrame(bind_reply(rid, 0, {})))
        elif kind == "msg_invoke_method":
            self._invoke(rid, frame_untrusted.msg_invoke_method, fd, step)
        elif kind != "set_peer_identity":  # traced_relay's; nothing of ours needs it
            self.refused["not a request"] += 1
            step.frames.append(OutFrame(request_error(rid, "neither BindService nor InvokeMethod")))
        if len(self._waiting) > MAX_WAITING:
            step.close = f"more than {MAX_WAITING} requests waiting on the service"
        return step

    def _invoke(self, rid: int, call: pf.IPCFrame.InvokeMethod, fd: int | None, step: Step) -> None:
        method = _METHOD_OF.get(call.method_id, "")
        if not self._bound:
            why = "invoked before BindService"
        elif call.service_id != CONSUMER_SERVICE_ID:
            why = "unknown service id"
        elif not method:
            why = "unknown method id"
        else:
            why = self._request(method, rid, call.args_proto, call.drop_reply, fd, step)
        if why:
            self.refused[why] += 1
            if not call.drop_reply:
                step.frames.append(OutFrame(method_reply(rid, None)))

    def _request(
        self, method: str, rid: int, args: bytes, drop: bool, fd: int | None, step: Step
    ) -> str:
        """Translate one call; why it is refused ("" if it is not)."""
        try:
            return _HANDLERS[method](self, rid, args, drop, fd, step)
        except Exception:  # noqa: BLE001 - a client's bytes must not end the service
            return "args do not parse"

    def _to_core(self, step: Step, method: str, rid: int, drop: bool, **fields: object) -> int:
        """Queue an envelope for the core; the id of ours its answer comes under."""
        our_id = next(self._ids)
        msg = ipc.ConsumerToService(request_id=our_id)
        for name, value in fields.items():
            getattr(msg, name).CopyFrom(value)
        step.to_core.append(msg)
        if method:
            self._waiting[our_id] = _Waiting(method, rid, drop)
        return our_id

    def _reply_now(self, step: Step, rid: int, drop: bool, reply: bytes | None) -> None:
        if not drop:
            step.frames.append(OutFrame(method_reply(rid, reply)))

    def _enable_tracing(self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step) -> str:
        req = pf.EnableTracingRequest.FromString(args)
        out = ipc.EnableTracingRequest(
            trace_config=req.trace_config, attach_notification_only=req.attach_notification_only
        )
        if fd is not None and not req.attach_notification_only and _wants_fd(req.trace_config):
            out.output_path = self._adopt(fd)
            step.fd_taken = True
        self._to_core(step, "EnableTracing", rid, drop, enable_tracing=out)
        if not req.attach_notification_only:
            self._resubscribe(step)  # the new session's events go to the stream
        return ""

    def _disable_tracing(
        self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step
    ) -> str:
        pf.Empty.FromString(args)
        self._to_core(
            step, "DisableTracing", rid, drop, disable_tracing=ipc.DisableTracingRequest()
        )
        return ""

    def _start_tracing(self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step) -> str:
        pf.Empty.FromString(args)
        self._to_core(step, "StartTracing", rid, drop, start_tracing=ipc.StartTracingRequest())
        return ""

    def _read_buffers(self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step) -> str:
        pf.Empty.FromString(args)
        self._to_core(step, "ReadBuffers", rid, drop, read_buffers=ipc.ReadBuffersRequest())
        return ""

    def _free_buffers(self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step) -> str:
        pf.FreeBuffersRequest.FromString(args)  # buffer_ids: tracebus frees all of the session's
        self._to_core(step, "FreeBuffers", rid, drop, free_buffers=ipc.FreeBuffersRequest())
        return ""

    def _flush(self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step) -> str:
        req = pf.FlushRequest.FromString(args)
        out = ipc.FlushConsumerRequest(timeout_ms=req.timeout_ms, flags=req.flags & 0xFFFFFFFF)
        self._to_core(step, "Flush", rid, drop, flush=out)
        return ""

    def _detach(self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step) -> str:
        key = pf.DetachRequest.FromString(args).key
        if not isinstance(key, str):  # proto2 hands over bytes that are not UTF-8
            return "args do not parse"
        self._to_core(step, "Detach", rid, drop, detach=ipc.DetachRequest(key=key))
        return ""

    def _attach(self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step) -> str:
        key = pf.AttachRequest.FromString(args).key
        if not isinstance(key, str):
            return "args do not parse"
        self._to_core(step, "Attach", rid, drop, attach=ipc.AttachRequest(key=key))
        self._resubscribe(step)  # the attached session's events go to the stream
        return ""

    def _get_trace_stats(
        self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step
    ) -> str:
        pf.Empty.FromString(args)
        self._to_core(step, "GetTraceStats", rid, drop, get_trace_stats=ipc.GetTraceStatsRequest())
        return ""

    def _query_service_state(
        self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step
    ) -> str:
        pf.QueryServiceStateRequest.FromString(args)  # sessions_only: the whole state is small
        query = ipc.QueryServiceStateRequest()
        self._to_core(step, "QueryServiceState", rid, drop, query_service_state=query)
        return ""

    def _observe_events(self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step) -> str:
        req = pf.ObserveEventsRequest.FromString(args)
        types = sorted({t for t in req.events_to_observe if t in OBSERVABLE})
        self._end_observer(step)  # traced ends a previous stream (its client cleans up)
        self._observer, self._observer_drop, self._observe_types = rid, drop, types
        self._resubscribe(step)
        if not types:  # nothing to observe: the stream ends at once, as in traced
            self._end_observer(step)
        return ""

    def _query_capabilities(
        self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step
    ) -> str:
        pf.Empty.FromString(args)
        caps = pf.TracingServiceCapabilities(
            has_query_capabilities=True,
            observable_events=sorted(OBSERVABLE),  # type: ignore[arg-type]
            has_trace_config_output_path=True,  # the core honors TraceConfig.output_path
        )
        reply = pf.QueryCapabilitiesResponse(capabilities=caps)
        self._reply_now(step, rid, drop, reply.SerializeToString())
        return ""

    def _save_trace_for_bugreport(
        self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step
    ) -> str:
        reply = pf.SaveTraceForBugreportResponse(success=False, msg=NOT_HERE)
        self._reply_now(step, rid, drop, reply.SerializeToString())
        return ""

    def _resubscribe(self, step: Step) -> None:
        """(Re)subscribe the core's session of this consumer to the stream's events.
        Without a session the core refuses; the stream waits for the next one."""
        if not self._observer:
            self._observe_id = 0
            return
        req = ipc.ObserveEventsRequest(types=self._observe_types)
        self._observe_id = self._to_core(step, "", 0, True, observe_events=req)

    def _end_observer(self, step: Step) -> None:
        if self._observer and not self._observer_drop:
            end = pf.ObserveEventsResponse().SerializeToString()
            step.frames.append(OutFrame(method_reply(self._observer, end, has_more=False)))
        self._observer = 0

    # -- core -> client -------------------------------------------------------------------------

    def on_core(self, msg: ipc.ServiceToConsumer) -> list[OutFrame]:
        our_id = msg.request_id
        kind = msg.WhichOneof("msg")
        if our_id and our_id == self._observe_id:
            return self._observed(msg)
        waiting = self._waiting.get(our_id) if our_id else None
        if waiting is None or kind in (None, "heartbeat", "hello"):
            return []
        reply, more = self._answer(waiting.method, msg)
        if not more:
            del self._waiting[our_id]
            if waiting.method == "Detach" and reply is not None:
                self._forget_enables()
        if waiting.drop or reply is _HOLD:
            return []
        if waiting.method == "ReadBuffers" and reply is not None:
            return self._read_frames(waiting.request_id, msg.read_buffers)
        if waiting.method == "QueryServiceState" and reply is not None:
            return self._state_frames(waiting.request_id, msg.service_state)
        return [_fitting(waiting.request_id, reply)]

    def _answer(self, method: str, msg: ipc.ServiceToConsumer) -> tuple[bytes | None, bool]:
        """(the reply's bytes, or None: rejected; whether more is to come)."""
        kind = msg.WhichOneof("msg")
        if kind == "error":
            return None, False
        if method == "EnableTracing":
            if kind != "enable_tracing":
                return None, False
            end = msg.enable_tracing
            if not end.disabled:  # started: the client hears only the end
                return _HOLD, True
            reply = pf.EnableTracingResponse(disabled=True)
            if end.error:
                reply.error = end.error
            return reply.SerializeToString(), False
        if kind == "ack":
            return (None if msg.ack.error else b""), False
        if method == "Flush" and kind == "flush":
            return (b"" if msg.flush.success else None), False
        if method == "ReadBuffers" and kind == "read_buffers":
            return b"", msg.read_buffers.has_more
        if method == "GetTraceStats" and kind == "trace_stats":
            stats = pf.GetTraceStatsResponse(trace_stats=msg.trace_stats.trace_stats)
            return stats.SerializeToString(), False
        if method == "QueryServiceState" and kind == "service_state":
            return b"", False
        if method == "Attach" and kind == "attach":
            if msg.attach.error:
                return None, False
            attached = pf.AttachResponse(trace_config=msg.attach.trace_config)
            return attached.SerializeToString(), False
        return None, False  # not the answer this method waits for

    def _forget_enables(self) -> None:
        """Detached: the session's end is not this client's any more (traced never
        answers its EnableTracing either)."""
        for our_id in [i for i, w in self._waiting.items() if w.method == "EnableTracing"]:
            del self._waiting[our_id]

    def _observed(self, msg: ipc.ServiceToConsumer) -> list[OutFrame]:
        if msg.WhichOneof("msg") != "events" or not self._observer or self._observer_drop:
            return []  # its acks: a refusal (no session yet) waits for the next one
        events = pf.ObservableEvents()
        if msg.events.all_data_sources_started:
            events.all_data_sources_started = True
        for change in msg.events.instance_state_changes:
            if change.state in (1, 2):  # STOPPED, STARTED: the same numbers
                events.instance_state_changes.add(
                    producer_name=change.producer_name,
                    data_source_name=change.data_source_name,
                    state=change.state,
                )
        if not events.ListFields():
            return []
        reply = pf.ObserveEventsResponse(events=events).SerializeToString()
        return [_fitting(self._observer, reply, has_more=True)]

    def _read_frames(self, rid: int, read: ipc.ReadBuffersResponse) -> list[OutFrame]:
        """The core's reply as frames of Perfetto ReadBuffersResponses, each under
        MAX_FRAME_BYTES; has_more is false on the last frame of the last reply."""
        frames: list[OutFrame] = []
        reply = pf.ReadBuffersResponse()
        size = 0
        for piece, last in _pieces(read.slices):
            cost = len(piece) + SLICE_OVERHEAD
            if size + cost > FRAME_BUDGET and reply.slices:
                frames.append(_fitting(rid, reply.SerializeToString(), has_more=True))
                reply, size = pf.ReadBuffersResponse(), 0
            size += cost
            reply.slices.add(data=piece, last_slice_for_packet=last)
        if reply.slices or not read.has_more:
            frames.append(_fitting(rid, reply.SerializeToString(), has_more=read.has_more))
        return frames

    def _state_frames(self, rid: int, state: ipc.QueryServiceStateResponse) -> list[OutFrame]:
        """TracingServiceState in replies under the frame limit, as traced cuts it:
        each a valid TracingServiceState, all of them together the whole (the
        client concatenates and parses once)."""
        chunks: list[bytes] = [_state_head(state).SerializeToString()]
        for entry in _state_entries(state):
            part = entry.SerializeToString()
            if len(part) >= STATE_BUDGET:
                continue  # cannot travel; the core bounds names, so not expected
            if len(chunks[-1]) + len(part) >= STATE_BUDGET:
                chunks.append(b"")
            chunks[-1] += part
        return [
            _fitting(
                rid,
                _state_reply(chunk),
                has_more=i < len(chunks) - 1,
            )
            for i, chunk in enumerate(chunks)
        ]


_HANDLERS: dict[str, Callable[[PerfettoConsumerConn, int, bytes, bool, int | None, Step], str]] = {
    "EnableTracing": PerfettoConsumerConn._enable_tracing,
    "DisableTracing": PerfettoConsumerConn._disable_tracing,
    "ReadBuffers": PerfettoConsumerConn._read_buffers,
    "FreeBuffers": PerfettoConsumerConn._free_buffers,
    "Flush": PerfettoConsumerConn._flush,
    "StartTracing": PerfettoConsumerConn._start_tracing,
    "Detach": PerfettoConsumerConn._detach,
    "Attach": PerfettoConsumerConn._attach,
    "GetTraceStats": PerfettoConsumerConn._get_trace_stats,
    "ObserveEvents": PerfettoConsumerConn._observe_events,
    "QueryServiceState": PerfettoConsumerConn._query_service_state,
    "QueryCapabilities": PerfettoConsumerConn._query_capabilities,
    "SaveTraceForBugreport": PerfettoConsumerConn._save_trace_for_bugreport,
}


def _wants_fd(config_bytes: bytes) -> bool:
    """traced takes the frame's fd for write_into_file without an output_path."""
    config = pb.TraceConfig()
    try:
        config.ParseFromString(config_bytes)
    except Exception:  # noqa: BLE001 - the core refuses the config, with the reason
        return False
    return config.write_into_file and not config.output_path


def _fitting(rid: int, reply: bytes | None, has_more: bool = False) -> OutFrame:
    """The reply frame; one that could not travel (over MAX_FRAME_BYTES) becomes a
    rejection, which ends the call on the client's side."""
    try:
        return OutFrame(method_reply(rid, reply, has_more=has_more))
    except ValueError:
        return OutFrame(method_reply(rid, None))


def _pieces(slices: Iterable[ipc.ReadBuffersResponse.Slice]) -> list[tuple[bytes, bool]]:
    """(data, last_slice_for_packet) of each slice, a slice over MAX_PIECE cut in
    pieces, the last piece keeping the flag."""
    out: list[tuple[bytes, bool]] = []
    for s in slices:
        data = s.data
        if len(data) <= MAX_PIECE:
            out.append((data, s.last_slice_for_packet))
            continue
        starts = range(0, len(data), MAX_PIECE)
        for start in starts:
            last = start + MAX_PIECE >= len(data)
            out.append((data[start : start + MAX_PIECE], last and s.last_slice_for_packet))
    return out


def _i32(value: int) -> int:
    """A uint32 of ours in one of Perfetto's int32 fields (as C++ casts it)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _state_head(state: ipc.QueryServiceStateResponse) -> pb.TracingServiceState:
    head = pb.TracingServiceState(
        num_sessions=_i32(len(state.sessions)),
        num_sessions_started=_i32(sum(s.state == "STARTED" for s in state.sessions)),
        supports_tracing_sessions=True,
    )
    return head


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
        desc = d.descriptor
        ds.ds_descriptor.name = desc.name
        for name in ("will_notify_on_start", "will_notify_on_stop"):
            if getattr(desc, name):
                setattr(ds.ds_descriptor, name, True)
        if desc.handles_incremental_state_clear:
            ds.ds_descriptor.handles_incremental_state_clear = True
        if desc.no_flush:
            ds.ds_descriptor.no_flush = True
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
