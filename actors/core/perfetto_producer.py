"""A Perfetto producer's connection, translated: ProducerPort frames from an app
built with the Perfetto SDK in, tracebus ProducerToService envelopes for
ServiceCore out; the core's ServiceToProducer messages in, frames for the app
out. One PerfettoProducerConn per connection of the producer socket; the shell
(actors/perfetto_port.py) owns the socket, the fds and the core.

    shell: frames --on_frame()--> Step.to_core --core.handle_producer()--> outputs
    shell: ToProducer(identity) --on_core()--> [OutFrame] (+ the SMB fd) --> socket

The mapping. Perfetto's method ids are its declaration order; all eleven v14
methods are served and listed in the BindService reply (v53's UpdateDataSource
is not, so a client never sends it). Client -> service:

  Perfetto request                        tracebus envelope             answer
  BindService "ProducerPort"              -                             service id 1, methods
  BindService, any other name             -                             success=false
  1  InitializeConnection                 initialize_connection         the core's reply (1)
       producer_name                        producer_name
       shared_memory_size_hint_bytes        shm_size_hint_bytes
       shared_memory_page_size_hint_bytes   shm_page_size_hint_bytes
       (none)                               hello{PROTOCOL_VERSION}
  2  RegisterDataSource                   register_data_source          the core's reply (2)
       data_source_descriptor (3)           descriptor
  3  UnregisterDataSource                 unregister_data_source        empty, at once
       data_source_name                     name
  4  CommitData                           commit_data: the same bytes   empty, at once
       (chunks_to_move 1 {page, chunk, target_buffer, data}, chunks_to_patch 2
       {target_buffer, writer_id, chunk_id, patches {offset, data},
       has_more_patches}, flush_request_id 3: the same numbers in both; a move
       carrying inline `data`, v53's shmem emulation, which we do not offer,
       is discarded)
  5  GetAsyncCommand                      -                             the command stream
  6  RegisterTraceWriter                  register_trace_writer         empty, at once
       trace_writer_id, target_buffer       writer_id, target_buffer
  7  UnregisterTraceWriter                unregister_trace_writer       empty, at once
       trace_writer_id                      writer_id
  8  NotifyDataSourceStarted              data_source_started           empty, at once
       data_source_id                       instance_id
  9  NotifyDataSourceStopped              data_source_stopped           empty, at once
       data_source_id                       instance_id
  10 ActivateTriggers{trigger_names}      activate_triggers{same}       empty, at once
  11 Sync                                 -                             empty, at once

  (1) InitializeConnectionResponse{using_shmem_provided_by_producer=false,
      direct_smb_patching_supported=false}; a hello.error is a rejection (and
      ends the connection if it was the first InitializeConnection, see below).
  (2) RegisterDataSourceResponse{error} with the core's error.
  (3) Decoded with Perfetto's schema and re-encoded in tracebus's numbering
      (perfetto_wire.tracebus_descriptor: the flags' numbers differ). The rest
      (track_event_descriptor, gpu counters, ftrace) tracebus does not keep.

Service -> client: a core message with request_id 0 is a command, sent as a
GetAsyncCommandResponse in a has_more reply on the stream:

  ServiceToProducer                       GetAsyncCommandResponse
  setup_tracing{shm_page_size_bytes}      setup_tracing{shared_buffer_page_size_kb}, with
                                          OutFrame.smb_fd: the shell attaches the SMB memfd
                                          (the SDK takes the size from fstat)
  setup_data_source{instance_id,          setup_data_source{new_instance_id, config}: the
      data_source_config}                 same DataSourceConfig bytes
  start_data_source{same}                 start_data_source{new_instance_id, config}
  stop_data_source{instance_id}           stop_data_source{instance_id}
  flush{flush_request_id, instance_ids,   flush{request_id, data_source_ids, flags}; acked
      flags}                              by CommitData.flush_request_id, as in tracebus
  clear_incremental_state{instance_ids}   clear_incremental_state{data_source_ids}
  error (no request: e.g. an SMB refused) nothing: counted, the last one kept
  heartbeat                               nothing

Replies the client waits for are matched by request ids of our own: each
envelope gets the next one, and the two methods the core answers
(InitializeConnection, RegisterDataSource) remember which Perfetto request
it was. A core `error` reply to one of those rejects it; a core reply that
matches nothing (the core's error for a request the client asked no reply
for) is counted and dropped. `drop_reply=true`: that request is never
answered, not even rejected.

GetAsyncCommand: its request id becomes the stream; commands from the core
before it is bound are kept in order (at most MAX_QUEUED_COMMANDS, past that
the connection ends) and sent when it is. A second GetAsyncCommand replaces
the stream and ends the old one with a rejection, as traced does. The core
sends setup_tracing once per producer (the SDK aborts on a second one).

Refused without a crash: a frame neither BindService nor InvokeMethod
(request_error), InvokeMethod before the bind, for another service id, for a
method id not listed, or with args that do not parse (a rejection). Names
from the peer may hold invalid UTF-8 (proto2 strings then come back as
bytes): they are decoded with U+FFFD (perfetto_wire.text, the rule of both
translators), and the core checks them as it checks any producer's. A
producer-provided SMB (producer_provided_shmem, startup tracing) is not
adopted: the fd is left for the shell to close and the answer says false,
after which the SDK reconnects without one.

Ending the connection: `closing` (non-empty: why) is set whenever the
translator decides the connection must end: the first InitializeConnection
was refused (as traced does not, so that the SDK reconnects with backoff
instead of sitting idle), the command queue overflowed, or a command would
not fit in a frame. The shell reads it after on_core; on_frame also puts it
in its Step.close (e.g. GetAsyncCommand meeting a queued command too big for
a frame), so both paths end the connection.

Pure: messages in, messages and frames out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.perfetto_wire import (
    PRODUCER_METHODS,
    PRODUCER_SERVICE,
    PRODUCER_SERVICE_ID,
    OutFrame,
    Step,
    bind_reply,
    encode,
    method_reply,
    request_error,
    text,
    tracebus_descriptor,
)
from protos import perfetto_ipc_pb2 as pf
from protos import tracebus_ipc_pb2 as ipc

# Commands the core may send before the client binds GetAsyncCommand. The SDK
# binds it right after InitializeConnection; a client that never does would
# pile up a session's commands without end.
MAX_QUEUED_COMMANDS = 256
# Requests waiting for the core's reply. The core answers within the call that
# takes the request, so more than one is never seen; the bound is a guard.
MAX_AWAITED = 64

EMPTY = b""  # every empty Perfetto response (Sync, CommitData, ...) encodes so

M = TypeVar("M", bound=Message)


def parse(cls: type[M], data_untrusted: bytes) -> M | None:
    """`data_untrusted` as a `cls`, or None when it does not parse."""
    msg = cls()
    try:
        msg.ParseFromString(data_untrusted)
    except DecodeError:
        return None
    return msg


@dataclass
class ProducerConnCounters:
    """What this connection refused or dropped, for the shell's log."""

    # Requests answered with a rejection (or, with drop_reply, not answered), by why.
    rejected: dict[str, int] = field(default_factory=dict)
    frames_not_requests: int = 0  # neither BindService nor InvokeMethod: request_error
    binds_refused: int = 0  # a service name other than ProducerPort
    moves_with_data: int = 0  # CommitData moves carrying inline data: discarded
    provided_smbs_declined: int = 0  # InitializeConnection offering the producer's SMB
    core_notices: int = 0  # core errors tied to no request (e.g. an SMB refused)

    def reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1


@dataclass
class _Awaited:
    """A Perfetto request whose answer is the core's reply to our envelope."""

    perfetto_request_id: int
    kind: str  # the ServiceToProducer kind that answers it


# A Perfetto method's handler: (Perfetto request id, parsed args, drop_reply) -> Step.
Handler = Callable[[int, Any, bool], Step]


class PerfettoProducerConn:
    """One Perfetto producer connection's protocol state: bound or not, the
    command stream, the requests awaiting the core. See the module docstring."""

    def __init__(self, identity: bytes) -> None:
        self.identity = identity
        self.counters = ProducerConnCounters()
        self.closing = ""  # non-empty: end the connection, and why (see the docstring)
        self.last_refusal = ""  # the service's last error to it, for the shell's log
        self.producer_id = 0  # the core's id for it, once initialized
        self._bound = False
        self._stream: int | None = None  # GetAsyncCommand's request id
        self._queued: list[tuple[bytes, bool]] = []  # (command, smb_fd) before the stream
        self._next_id = 1
        self._awaited: dict[int, _Awaited] = {}
        # Perfetto method id -> (its request message, handler); PRODUCER_METHODS has the ids.
        handlers: dict[str, tuple[type[Message], Handler]] = {
            "InitializeConnection": (pf.InitializeConnectionRequest, self._initialize),
            "RegisterDataSource": (pf.RegisterDataSourceRequest, self._register_data_source),
            "UnregisterDataSource": (pf.UnregisterDataSourceRequest, self._unregister_source),
            "CommitData": (ipc.CommitDataRequest, self._commit_data),  # same field numbers
            "GetAsyncCommand": (pf.Empty, self._get_async_command),
            "RegisterTraceWriter": (pf.RegisterTraceWriterRequest, self._register_writer),
            "UnregisterTraceWriter": (pf.UnregisterTraceWriterRequest, self._unregister_writer),
            "NotifyDataSourceStarted": (pf.NotifyDataSourceStartedRequest, self._started),
            "NotifyDataSourceStopped": (pf.NotifyDataSourceStoppedRequest, self._stopped),
            "ActivateTriggers": (pf.ActivateTriggersRequest, self._activate_triggers),
            "Sync": (pf.Empty, self._sync),
        }
        self._methods = {PRODUCER_METHODS[name]: h for name, h in handlers.items()}

    def rejections(self) -> Mapping[str, int]:
        """The requests rejected so far, by why (for the shell's refusal count)."""
        counters = self.counters
        reasons = dict(counters.rejected)
        for why, count in (("not a request", counters.frames_not_requests),
                           ("bind refused", counters.binds_refused)):  # fmt: skip
            if count:
                reasons[why] = reasons.get(why, 0) + count
        return reasons

    # -- from the client ---------------------------------------------------------------

    def on_frame(self, frame_untrusted: pf.IPCFrame, fd: int | None) -> Step:
        """What to do with one frame; `fd` (one that arrived with it) is never taken.
        Step.close carries `closing` if the frame made it (or it was) set."""
        step = self._frame(frame_untrusted)
        step.close = step.close or self.closing
        return step

    def _frame(self, frame_untrusted: pf.IPCFrame) -> Step:
        rid = frame_untrusted.request_id
        kind = frame_untrusted.WhichOneof("msg")
        if kind == "msg_bind_service":
            return self._bind(rid, frame_untrusted.msg_bind_service.service_name)
        if kind == "msg_invoke_method":
            return self._invoke(rid, frame_untrusted.msg_invoke_method)
        if kind == "set_peer_identity":
            return Step()  # traced_relay's; the kernel's credentials are what count
        self.counters.frames_not_requests += 1
        return Step(frames=[OutFrame(request_error(rid, "unknown request"))])

    def _bind(self, rid: int, name_untrusted: str | bytes) -> Step:
        if name_untrusted != PRODUCER_SERVICE:
            self.counters.binds_refused += 1
            return Step(frames=[OutFrame(bind_reply(rid, 0, {}))])
        self._bound = True
        return Step(frames=[OutFrame(bind_reply(rid, PRODUCER_SERVICE_ID, PRODUCER_METHODS))])

    def _invoke(self, rid: int, call_untrusted: pf.IPCFrame.InvokeMethod) -> Step:
        drop_reply = call_untrusted.drop_reply
        method = self._methods.get(call_untrusted.method_id)
        if not self._bound:
            return self._reject(rid, drop_reply, "before BindService")
        if call_untrusted.service_id != PRODUCER_SERVICE_ID:
            return self._reject(rid, drop_reply, "unknown service id")
        if method is None:
            return self._reject(rid, drop_reply, "unknown method id")
        cls, handler = method
        args = parse(cls, call_untrusted.args_proto)
        if args is None:
            return self._reject(rid, drop_reply, "args do not parse")
        return handler(rid, args, drop_reply)

    def _reject(self, rid: int, drop_reply: bool, why: str) -> Step:
        self.counters.reject(why)
        return Step(frames=[] if drop_reply else [OutFrame(method_reply(rid, None))])

    def _envelope(self, **fields: Any) -> ipc.ProducerToService:
        msg = ipc.ProducerToService(request_id=self._next_id, **fields)
        self._next_id += 1
        return msg

    def _forward(self, rid: int, drop_reply: bool, **fields: Any) -> Step:
        """An envelope the core does not answer (but for errors); answered at once."""
        return Step(to_core=[self._envelope(**fields)], frames=self._empty_reply(rid, drop_reply))

    def _awaiting(self, rid: int, drop_reply: bool, answer: str, **fields: Any) -> Step:
        """An envelope whose core reply (kind `answer`) is the client's answer."""
        if len(self._awaited) >= MAX_AWAITED:
            return self._reject(rid, drop_reply, "too many requests awaiting the service")
        msg = self._envelope(**fields)
        if not drop_reply:
            self._awaited[msg.request_id] = _Awaited(rid, answer)
        return Step(to_core=[msg])

    @staticmethod
    def _empty_reply(rid: int, drop_reply: bool) -> list[OutFrame]:
        return [] if drop_reply else [OutFrame(method_reply(rid, EMPTY))]

    # -- the methods -------------------------------------------------------------------

    def _initialize(
        self, rid: int, req_untrusted: pf.InitializeConnectionRequest, drop_reply: bool
    ) -> Step:
        if req_untrusted.producer_provided_shmem:
            self.counters.provided_smbs_declined += 1  # its fd stays with the shell
        init = ipc.InitializeConnectionRequest(
            hello=ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION),
            producer_name=text(req_untrusted.producer_name),
            shm_size_hint_bytes=req_untrusted.shared_memory_size_hint_bytes,
            shm_page_size_hint_bytes=req_untrusted.shared_memory_page_size_hint_bytes,
        )
        return self._awaiting(rid, drop_reply, "initialize_connection", initialize_connection=init)

    def _register_data_source(
        self, rid: int, req_untrusted: pf.RegisterDataSourceRequest, drop_reply: bool
    ) -> Step:
        desc = parse(pb.DataSourceDescriptor, req_untrusted.data_source_descriptor)
        if desc is None:
            return self._reject(rid, drop_reply, "args do not parse")
        register = ipc.RegisterDataSourceRequest(descriptor=tracebus_descriptor(desc))
        return self._awaiting(
            rid, drop_reply, "register_data_source", register_data_source=register
        )

    def _unregister_source(
        self, rid: int, req_untrusted: pf.UnregisterDataSourceRequest, drop_reply: bool
    ) -> Step:
        unregister = ipc.UnregisterDataSourceRequest(name=text(req_untrusted.data_source_name))
        return self._forward(rid, drop_reply, unregister_data_source=unregister)

    def _commit_data(
        self, rid: int, req_untrusted: ipc.CommitDataRequest, drop_reply: bool
    ) -> Step:
        moves = req_untrusted.chunks_to_move
        if any(m.data for m in moves):
            kept = [m for m in moves if not m.data]
            self.counters.moves_with_data += len(moves) - len(kept)
            del moves[:]
            moves.extend(kept)
        return self._forward(rid, drop_reply, commit_data=req_untrusted)

    def _get_async_command(self, rid: int, req_untrusted: pf.Empty, drop_reply: bool) -> Step:
        if drop_reply:  # a stream nobody listens to: the commands wait for a real one
            return Step()
        frames = [] if self._stream is None else [OutFrame(method_reply(self._stream, None))]
        self._stream = rid
        queued, self._queued = self._queued, []
        for command, smb_fd in queued:
            frames += self._command_frame(command, smb_fd)
        return Step(frames=frames)

    def _register_writer(
        self, rid: int, req_untrusted: pf.RegisterTraceWriterRequest, drop_reply: bool
    ) -> Step:
        register = ipc.RegisterTraceWriterRequest(
            writer_id=req_untrusted.trace_writer_id, target_buffer=req_untrusted.target_buffer
        )
        return self._forward(rid, drop_reply, register_trace_writer=register)

    def _unregister_writer(
        self, rid: int, req_untrusted: pf.UnregisterTraceWriterRequest, drop_reply: bool
    ) -> Step:
        unregister = ipc.UnregisterTraceWriterRequest(writer_id=req_untrusted.trace_writer_id)
        return self._forward(rid, drop_reply, unregister_trace_writer=unregister)

    def _started(
        self, rid: int, req_untrusted: pf.NotifyDataSourceStartedRequest, drop_reply: bool
    ) -> Step:
        started = ipc.NotifyDataSourceStarted(instance_id=req_untrusted.data_source_id)
        return self._forward(rid, drop_reply, data_source_started=started)

    def _stopped(
        self, rid: int, req_untrusted: pf.NotifyDataSourceStoppedRequest, drop_reply: bool
    ) -> Step:
        stopped = ipc.NotifyDataSourceStopped(instance_id=req_untrusted.data_source_id)
        return self._forward(rid, drop_reply, data_source_stopped=stopped)

    def _activate_triggers(
        self, rid: int, req_untrusted: pf.ActivateTriggersRequest, drop_reply: bool
    ) -> Step:
        names = [text(name) for name in req_untrusted.trigger_names]
        triggers = ipc.ActivateTriggersRequest(trigger_names=names)
        return self._forward(rid, drop_reply, activate_triggers=triggers)

    def _sync(self, rid: int, req_untrusted: pf.Empty, drop_reply: bool) -> Step:
        return Step(frames=self._empty_reply(rid, drop_reply))

    # -- from the core -----------------------------------------------------------------

    def on_core(self, msg: ipc.ServiceToProducer) -> list[OutFrame]:
        """The frames for one message of the core to this producer. Check `closing`
        afterwards."""
        kind = msg.WhichOneof("msg")
        if msg.request_id == 0:
            return self._from_core(kind, msg)
        awaited = self._awaited.pop(msg.request_id, None)
        if awaited is None:  # the core's error for a request not awaited (drop_reply)
            return []
        rid = awaited.perfetto_request_id
        if kind != awaited.kind:  # an error (or, never, another kind)
            self.counters.reject("refused by the service")
            self.last_refusal = f"{awaited.kind}: {msg.error.message}"
            self._refused(awaited.kind)
            return [OutFrame(method_reply(rid, None))]
        if kind == "initialize_connection":
            return self._initialized(rid, msg.initialize_connection)
        reply = pf.RegisterDataSourceResponse()
        if msg.register_data_source.error:
            reply.error = msg.register_data_source.error
        return [OutFrame(method_reply(rid, reply.SerializeToString()))]

    def _initialized(self, rid: int, reply: ipc.InitializeConnectionResponse) -> list[OutFrame]:
        if reply.hello.error:
            self.counters.reject("refused by the service")
            self.last_refusal = f"initialize_connection: {reply.hello.error}"
            self._refused("initialize_connection")
            return [OutFrame(method_reply(rid, None))]
        self.producer_id = reply.producer_id
        answer = pf.InitializeConnectionResponse(
            using_shmem_provided_by_producer=False, direct_smb_patching_supported=False
        )
        return [OutFrame(method_reply(rid, answer.SerializeToString()))]

    def _refused(self, kind: str) -> None:
        """A refused first InitializeConnection ends the connection: the SDK reconnects
        (with backoff) rather than stay connected with nothing to do."""
        if kind == "initialize_connection" and not self.producer_id:
            self.closing = "the service refused InitializeConnection"

    def _from_core(self, kind: str | None, msg: ipc.ServiceToProducer) -> list[OutFrame]:
        if kind == "error":
            self.counters.core_notices += 1
            self.last_refusal = msg.error.message
        if kind is None or kind not in COMMANDS:
            return []  # a notice, a heartbeat: nothing Perfetto has
        command = pf.GetAsyncCommandResponse()
        COMMANDS[kind](getattr(msg, kind), command)
        data, smb_fd = command.SerializeToString(), kind == "setup_tracing"
        if self._stream is not None:
            return self._command_frame(data, smb_fd)
        if len(self._queued) >= MAX_QUEUED_COMMANDS:
            self.closing = f"{MAX_QUEUED_COMMANDS} commands waiting for GetAsyncCommand"
        else:
            self._queued.append((data, smb_fd))
        return []

    def _command_frame(self, command: bytes, smb_fd: bool) -> list[OutFrame]:
        assert self._stream is not None
        frame = pf.IPCFrame(request_id=self._stream)
        reply = frame.msg_invoke_method_reply
        reply.success, reply.has_more, reply.reply_proto = True, True, command
        try:
            return [OutFrame(encode(frame), smb_fd)]
        except ValueError:  # a DataSourceConfig too big for a frame: the client would drop us
            self.closing = f"a command of {len(command)} bytes does not fit in a frame"
            return []


# -- tracebus command -> GetAsyncCommandResponse ---------------------------------------


def _setup_tracing(cmd: ipc.SetupTracing, out: pf.GetAsyncCommandResponse) -> None:
    out.setup_tracing.shared_buffer_page_size_kb = cmd.shm_page_size_bytes // 1024


def _setup_data_source(cmd: ipc.SetupDataSource, out: pf.GetAsyncCommandResponse) -> None:
    out.setup_data_source.new_instance_id = cmd.instance_id
    out.setup_data_source.config = cmd.data_source_config


def _start_data_source(cmd: ipc.StartDataSource, out: pf.GetAsyncCommandResponse) -> None:
    out.start_data_source.new_instance_id = cmd.instance_id
    out.start_data_source.config = cmd.data_source_config


def _stop_data_source(cmd: ipc.StopDataSource, out: pf.GetAsyncCommandResponse) -> None:
    out.stop_data_source.instance_id = cmd.instance_id


def _flush(cmd: ipc.FlushRequest, out: pf.GetAsyncCommandResponse) -> None:
    out.flush.data_source_ids.extend(cmd.instance_ids)
    out.flush.request_id = cmd.flush_request_id
    if cmd.flags:
        out.flush.flags = cmd.flags


def _clear_incremental_state(
    cmd: ipc.ClearIncrementalState, out: pf.GetAsyncCommandResponse
) -> None:
    out.clear_incremental_state.data_source_ids.extend(cmd.instance_ids)


# ServiceToProducer kind -> how it fills a GetAsyncCommandResponse.
COMMANDS: dict[str, Callable[[Any, pf.GetAsyncCommandResponse], None]] = {
    "setup_tracing": _setup_tracing,
    "setup_data_source": _setup_data_source,
    "start_data_source": _start_data_source,
    "stop_data_source": _stop_data_source,
    "flush": _flush,
    "clear_incremental_state": _clear_incremental_state,
}
