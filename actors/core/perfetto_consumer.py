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
       once (disabled + error), and so is an Error (disabled + its message)
DisableTracing (2)        -> disable_tracing       <- ack: {} (even an ack error)
ReadBuffers (3)           -> read_buffers
    <- each ReadBuffersResponse{slices, has_more} re-cut in frames under 128 KiB
       (perfetto_replies.py); an Error (a read already under way, a
       write_into_file session, a detach mid-read) or an answer of another
       kind ends the read as traced ends a failed one: an empty
       ReadBuffersResponse without has_more, never a rejection (v14's
       ReadTraceBlocking would wait forever)
FreeBuffers (4) {buffer_ids}
    -> free_buffers (tracebus frees the session, all its buffers)
    <- ack: {} (even an ack error)
Flush (5) {timeout_ms, flags}
    -> flush{timeout_ms, flags (tracebus keeps the low 32 bits)}
    <- FlushConsumerResponse: success {}, else rejected (a failed flush)
StartTracing (6)          -> start_tracing         <- ack: {} (even an ack error)
Detach (8) {key}          -> detach{key}
    <- ack: {}, and the EnableTracing it waited on is never answered (as
       traced); an ack error: rejected
Attach (9) {key}          -> attach{key}; then observe_events again, if observed
    <- AttachResponse{trace_config (the same bytes)}; its error: rejected
GetTraceStats (10)        -> get_trace_stats
    <- GetTraceStatsResponse{trace_stats: the core's TraceStats bytes}; an
       Error: rejected
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
       one frame cannot hold it (perfetto_replies.py); an Error: rejected
QueryCapabilities (13)    <- at once: {has_query_capabilities, observable events
                             1 and 2, has_trace_config_output_path}
SaveTraceForBugreport (14) <- at once: {success=false, msg=NOT_HERE}
ChangeTraceConfig (7), CloneSession (15): not served (not in the table)

How the core's refusals are told is traced's way for each method (what its
service answers when it fails the call), since the SDK waits on some replies
and reads a rejection of others as a lost connection: see _refused_reply. Each
is counted in `refused` under the method, and `last_refusal` keeps the core's
reason, which the shell logs.

DataSourceDescriptor field numbers differ: QueryServiceState re-encodes them
(perfetto_wire.perfetto_descriptor); what tracebus does not keep
(track_event_descriptor's categories) is not told. Keys that are not UTF-8 are
decoded with U+FFFD (perfetto_wire.text: both translators' rule).

The fd that came with a frame is taken only by an EnableTracing whose config
has write_into_file and no output_path (traced's rule); the shell closes any
other. adopt_output_fd is the shell's (TraceFiles.adopt): it returns a token
path that the core's file opener resolves to that fd during this Step's core
calls.

Hostile bytes: a method before BindService, on another service id, with an id
not SERVED, or whose args do not parse is rejected (success=false, as traced's
IPC host rejects it) and counted in `refused`; any other frame kind gets a
RequestError. Nothing here raises on a client's bytes. A client with more
than MAX_WAITING requests waiting on the core is cut off (Step.close, and
`closing` keeps the reason, as the producer translator's does). Pure: frames
in, envelopes and frames out.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.perfetto_replies import fitting, read_end, read_frames, state_frames
from actors.core.perfetto_wire import (
    CONSUMER_METHODS,
    CONSUMER_SERVICE,
    CONSUMER_SERVICE_ID,
    OutFrame,
    Step,
    bind_reply,
    method_reply,
    request_error,
    text,
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
OBSERVABLE = frozenset({1, 2})  # DATA_SOURCES_INSTANCES, ALL_DATA_SOURCES_STARTED
NOT_HERE = "tracebus does not implement SaveTraceForBugreport"

AdoptOutputFd = Callable[[int], str]


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
        self.refused: Counter[str] = Counter()  # requests refused, by why (the shell logs)
        self.last_refusal = ""  # the service's last reason, with the method (for the log)
        self.closing = ""  # non-empty once the connection must end (also in Step.close)

    def rejections(self) -> Mapping[str, int]:
        """The requests refused so far, by why (for the shell's refusal count)."""
        return self.refused

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
            self.closing = f"more than {MAX_WAITING} requests waiting on the service"
        step.close = self.closing
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
            if method in EMPTY_CALLS:
                return self._empty_request(method, rid, args, drop, step)
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

    def _empty_request(self, method: str, rid: int, args: bytes, drop: bool, step: Step) -> str:
        """A call with empty arguments that the core answers: its envelope from EMPTY_CALLS."""
        pf.Empty.FromString(args)
        kind, request = EMPTY_CALLS[method]
        self._to_core(step, method, rid, drop, **{kind: request()})
        return ""

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
        key = text(pf.DetachRequest.FromString(args).key)
        self._to_core(step, "Detach", rid, drop, detach=ipc.DetachRequest(key=key))
        return ""

    def _attach(self, rid: int, args: bytes, drop: bool, fd: int | None, step: Step) -> str:
        key = text(pf.AttachRequest.FromString(args).key)
        self._to_core(step, "Attach", rid, drop, attach=ipc.AttachRequest(key=key))
        self._resubscribe(step)  # the attached session's events go to the stream
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
        method, rid = waiting.method, waiting.request_id
        refusal = _refusal(method, msg)
        if refusal:
            self.refused[f"{method} refused by the service"] += 1
            self.last_refusal = f"{method}: {refusal}"
        more = not refusal and _more_to_come(method, msg)
        if not more:
            del self._waiting[our_id]
            if method == "Detach" and not refusal:
                self._forget_enables()
        if waiting.drop or (more and method == "EnableTracing"):  # the client hears its end only
            return []
        if refusal:
            return _refused_reply(method, rid, refusal)
        if method == "ReadBuffers":
            return read_frames(rid, msg.read_buffers)
        if method == "QueryServiceState":
            return state_frames(rid, msg.service_state)
        return [fitting(rid, _reply(method, msg))]

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
        return [fitting(self._observer, reply, has_more=True)]


# Calls whose arguments are empty and whose envelope for the core is too: its kind
# and message.
EMPTY_CALLS: dict[str, tuple[str, Callable[[], Any]]] = {
    "DisableTracing": ("disable_tracing", ipc.DisableTracingRequest),
    "ReadBuffers": ("read_buffers", ipc.ReadBuffersRequest),
    "StartTracing": ("start_tracing", ipc.StartTracingRequest),
    "GetTraceStats": ("get_trace_stats", ipc.GetTraceStatsRequest),
}
_HANDLERS: dict[str, Callable[[PerfettoConsumerConn, int, bytes, bool, int | None, Step], str]] = {
    "EnableTracing": PerfettoConsumerConn._enable_tracing,
    "FreeBuffers": PerfettoConsumerConn._free_buffers,
    "Flush": PerfettoConsumerConn._flush,
    "Detach": PerfettoConsumerConn._detach,
    "Attach": PerfettoConsumerConn._attach,
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


# -- the core's answers -------------------------------------------------------------------------

# The ServiceToConsumer kind that answers each method the core serves.
_ANSWERED_BY = {
    "EnableTracing": "enable_tracing",
    "DisableTracing": "ack",
    "StartTracing": "ack",
    "FreeBuffers": "ack",
    "Detach": "ack",
    "Flush": "flush",
    "ReadBuffers": "read_buffers",
    "GetTraceStats": "trace_stats",
    "QueryServiceState": "service_state",
    "Attach": "attach",
}


def _refusal(method: str, msg: ipc.ServiceToConsumer) -> str:
    """Why the core did not serve the request ("" if it did): an Error, a refusing
    ack, flush or attach, or an answer of another kind (not expected)."""
    kind = msg.WhichOneof("msg")
    if kind == "error":
        return msg.error.message or "an error"
    if kind != _ANSWERED_BY[method]:
        return f"answered with {kind}"
    if kind == "ack":
        return msg.ack.error
    if kind == "flush":
        return "" if msg.flush.success else "the flush failed"
    if kind == "attach":
        return msg.attach.error
    return ""  # EnableTracing's error is an end, told as one


def _more_to_come(method: str, msg: ipc.ServiceToConsumer) -> bool:
    if method == "EnableTracing":
        return not msg.enable_tracing.disabled  # started: its end comes later
    return method == "ReadBuffers" and msg.read_buffers.has_more


def _reply(method: str, msg: ipc.ServiceToConsumer) -> bytes:
    """A served request's reply (ReadBuffers and QueryServiceState are cut apart)."""
    if method == "EnableTracing":
        end = pf.EnableTracingResponse(disabled=True)
        if msg.enable_tracing.error:
            end.error = msg.enable_tracing.error
        return end.SerializeToString()
    if method == "GetTraceStats":
        stats = pf.GetTraceStatsResponse(trace_stats=msg.trace_stats.trace_stats)
        return stats.SerializeToString()
    if method == "Attach":
        return pf.AttachResponse(trace_config=msg.attach.trace_config).SerializeToString()
    return b""  # the empty responses: DisableTracing, StartTracing, FreeBuffers, Detach, Flush


def _refused_reply(method: str, rid: int, why: str) -> list[OutFrame]:
    """What traced answers when its service fails the call; never a rejection where
    the SDK would wait on: ReadBuffers ends the read (a rejected one leaves v14's
    ReadTraceBlocking waiting forever), EnableTracing ends the session with the
    reason (a rejection would tell "connection lost"), and StartTracing,
    DisableTracing, FreeBuffers succeed (traced always resolves them; the SDK only
    logs). Flush, Detach, Attach, GetTraceStats, QueryServiceState: rejected, as
    traced does, which the SDK reports as a failed call."""
    if method == "ReadBuffers":
        return read_end(rid)
    if method == "EnableTracing":
        end = pf.EnableTracingResponse(disabled=True, error=why)
        return [fitting(rid, end.SerializeToString())]
    if method in ("StartTracing", "DisableTracing", "FreeBuffers"):
        return [fitting(rid, b"")]
    return [fitting(rid, None)]
