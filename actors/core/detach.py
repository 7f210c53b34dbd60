"""Detach and attach (Perfetto's --detach / --attach): a session that goes on
without a consumer, and a consumer of the same uid that takes it back.

    consumer A: enable ── detach(key) ─┐            (A may exit: the session stays)
                                        ▼
    session:  STARTED, detached under (uid, key) ── ends on its own? ──► see below
                                        │
    consumer B (same uid): attach(key) ─┘──► AttachResponse(config, id, state)
                           enable(attach_notification_only) ──► the end reply, when
                           it comes (at once if the session ended while detached)

While detached, `Session.consumer` is DETACHED (no connection has that
identity, so session_of() and a consumer's departure never find it) and
`Session.detach_key` is set; a key is unique per uid. Detaching ends what the
old consumer was waiting for: its ObserveEvents subscription is dropped, its
pending read ends with an error, its disable requests are answered; its end
reply is not sent (nobody to send it to). Whatever ends the session while it
is detached, the end is remembered (Session.end_stop_timed_out) and told to the
consumer that attaches.

A detached session that reaches its own end (duration_ms, or a trigger's stop:
the StopSession flush) is freed, as traced does in FlushAndDisableTracing: a
write_into_file session's file is complete by then; a buffers-only session's
trace is dropped (the CLI warns at --detach). Any other end (the file's
max_file_size_bytes, a failed write, a trigger timeout) leaves it DISABLED and
detached, readable by the consumer that attaches.

Attach: only a consumer of the uid that detached it (root too must use its own
uid: traced's rule), and only one that holds no session yet.
"""

from __future__ import annotations

from actors.core.lifecycle import ENDED_SESSION
from actors.core.outbox import Peer
from actors.core.readback import PendingRead
from actors.core.service_context import ServiceContext
from actors.core.session_control import SessionControl
from actors.core.sessions import Session
from protos import tracebus_ipc_pb2 as ipc

# The consumer identity of a detached session: a ROUTER identity is never empty.
DETACHED = b""
MAX_KEY_BYTES = 1024  # a key is a name, not a payload


class Detaches:
    def __init__(self, ctx: ServiceContext, control: SessionControl) -> None:
        self._ctx = ctx
        self._control = control

    def detach(
        self,
        peer: Peer,
        request_id: int,
        req: ipc.DetachRequest,
        reads: dict[bytes, PendingRead],
    ) -> None:
        """Acked, or refused with Ack.error; `reads` are the consumer port's pending
        reads (the old consumer's ends here)."""
        session = self._ctx.session_of(peer.identity)
        if session is None:
            error = "this consumer has no tracing session to detach"
        elif self.detached(peer.uid, req.key) is not None:
            error = f"a session of uid {peer.uid} is already detached under the key {req.key!r}"
        else:
            error = _key_error(req.key)
        if error or session is None:
            self._ctx.out.ack(peer.identity, request_id, error)
            return
        self._end_consumer_waits(session, peer.identity, reads)
        session.consumer = DETACHED
        session.consumer_pid = 0
        session.detach_key = req.key
        self._ctx.out.ack(peer.identity, request_id)

    def _end_consumer_waits(
        self, session: Session, consumer: bytes, reads: dict[bytes, PendingRead]
    ) -> None:
        """What the old consumer waited for ends now: nothing more goes to it."""
        out = self._ctx.out
        read = reads.pop(consumer, None)
        if read is not None:  # a read left running would steal packets from the next one
            out.consumer_error(consumer, read.request_id, "the session was detached mid-read")
        for waiter in session.disable_waiters:
            out.ack(consumer, waiter, "the session was detached before it ended")
        session.disable_waiters.clear()
        session.observer_request_id = 0
        session.observe_types = set()

    def attach(self, peer: Peer, request_id: int, req: ipc.AttachRequest) -> None:
        """Bind the session detached under (peer's uid, key) to this consumer."""
        reply = ipc.AttachResponse()
        held = self._ctx.session_of(peer.identity)
        session = self.detached(peer.uid, req.key)
        if held is not None:
            reply.error = f"this consumer already has a tracing session (id {held.id})"
        elif _key_error(req.key):
            reply.error = _key_error(req.key)
        elif session is None:
            reply.error = f"no session is detached under the key {req.key!r} for uid {peer.uid}"
        else:
            session.consumer = peer.identity
            session.consumer_pid = peer.pid
            session.detach_key = ""
            session.end_reply_held = True  # until attach_notification_only (await_end)
            reply.trace_config = session.config.SerializeToString()
            reply.session_id = session.id
            reply.state = session.state.value
        self._ctx.out.to_consumer(peer.identity, request_id, attach=reply)

    def await_end(self, peer: Peer, request_id: int) -> None:
        """enable_tracing(attach_notification_only): the attached session's end reply
        goes under `request_id`, now if it ended while detached."""
        session = self._ctx.session_of(peer.identity)
        if session is None:
            error = "attach_notification_only: this consumer has no attached session"
            reply = ipc.EnableTracingResponse(disabled=True, error=error)
            self._ctx.out.to_consumer(peer.identity, request_id, enable_tracing=reply)
            return
        session.enable_request_id = request_id
        session.end_reply_held = False
        if session.state in ENDED_SESSION and session.end_stop_timed_out is not None:
            self._control.tell_ended(session, list(session.end_stop_timed_out))

    def detached(self, uid: int, key: str) -> Session | None:
        for session in self._ctx.sessions.values():
            found = session.detach_key == key and session.uid == uid and key
            if found and not session.free_due:  # (one being freed is gone already)
                return session
        return None


def _key_error(key: str) -> str:
    if not key:
        return "the detach key is empty"
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"the detach key is longer than {MAX_KEY_BYTES} bytes"
    return ""
