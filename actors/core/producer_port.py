"""The producer port: what the service does with each message a producer sends,
and when a producer goes away.

Everything here is untrusted (`*_untrusted`): names are bounded, writer ids
range-checked, instance and flush ids looked up among the sender's own. The
dispatch table that routes each ProducerToService kind to a method here is in
service_core.py.
"""

from __future__ import annotations

from actors.core.flushes import Flushes
from actors.core.lifecycle import InstanceEvent
from actors.core.outbox import Peer, version_error
from actors.core.producers import ProducerEntry
from actors.core.service_context import ServiceContext
from actors.core.session_control import SessionControl
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import is_valid_writer_id

MAX_NAME_LENGTH = 256


class ProducerPort:
    def __init__(self, ctx: ServiceContext, control: SessionControl, flushes: Flushes) -> None:
        self._ctx = ctx
        self._control = control
        self._flushes = flushes

    def initialize(
        self, peer: Peer, request_id: int, req_untrusted: ipc.InitializeConnectionRequest
    ) -> None:
        ctx = self._ctx
        reply = ipc.InitializeConnectionResponse()
        reply.hello.protocol_version = ipc.PROTOCOL_VERSION
        version = req_untrusted.hello.protocol_version
        if version != ipc.PROTOCOL_VERSION:
            reply.hello.error = version_error(version)
        elif peer.identity in ctx.producers:
            reply.hello.error = "this connection is already initialized"
        else:
            producer = ctx.producers.add(
                peer.identity,
                req_untrusted.producer_name[:MAX_NAME_LENGTH],
                peer.pid,
                peer.uid,
                req_untrusted.shm_size_hint_bytes,
                req_untrusted.shm_page_size_hint_bytes,
            )
            if producer is None:
                reply.hello.error = "too many producers"
            else:
                ctx.producers_seen += 1
                reply.producer_id = producer.id
        ctx.out.to_producer(peer.identity, request_id, initialize_connection=reply)

    def register_data_source(
        self,
        producer: ProducerEntry,
        request_id: int,
        req_untrusted: ipc.RegisterDataSourceRequest,
        now: int,
    ) -> None:
        desc = req_untrusted.descriptor
        error = ""
        if not desc.name or len(desc.name) > MAX_NAME_LENGTH:
            error = "a data source needs a name of 1 to 256 characters"
        elif desc.name in producer.data_sources:
            error = f"data source {desc.name!r} is already registered"
        else:
            producer.data_sources[desc.name] = desc
            self._ctx.data_sources_seen += 1
        reply = ipc.RegisterDataSourceResponse(error=error)
        self._ctx.out.to_producer(producer.peer, request_id, register_data_source=reply)
        if not error:
            self._control.join_running_sessions(producer, desc.name)

    def unregister_data_source(
        self,
        producer: ProducerEntry,
        request_id: int,
        req_untrusted: ipc.UnregisterDataSourceRequest,
        now: int,
    ) -> None:
        producer.data_sources.pop(req_untrusted.name, None)

    def register_trace_writer(
        self,
        producer: ProducerEntry,
        request_id: int,
        req_untrusted: ipc.RegisterTraceWriterRequest,
        now: int,
    ) -> None:
        if is_valid_writer_id(req_untrusted.writer_id):
            producer.register_writer(req_untrusted.writer_id, req_untrusted.target_buffer)

    def unregister_trace_writer(
        self,
        producer: ProducerEntry,
        request_id: int,
        req_untrusted: ipc.UnregisterTraceWriterRequest,
        now: int,
    ) -> None:
        producer.unregister_writer(req_untrusted.writer_id)

    def smb_mapped(
        self, producer: ProducerEntry, request_id: int, req_untrusted: ipc.SmbMapped, now: int
    ) -> None:
        pass  # an error here shows up as missing data; commits need the SMB mapped

    def heartbeat(
        self, producer: ProducerEntry, request_id: int, req_untrusted: ipc.Heartbeat, now: int
    ) -> None:
        pass  # a known producer is alive; an unknown one was answered "initialize first"

    def commit_data(
        self,
        producer: ProducerEntry,
        request_id: int,
        req_untrusted: ipc.CommitDataRequest,
        now: int,
    ) -> None:
        self._ctx.commit.commit(producer, req_untrusted)
        if producer.abi is not None and req_untrusted.flush_request_id:
            self._flushes.acked(producer.id, req_untrusted.flush_request_id, now)

    def data_source_started(
        self,
        producer: ProducerEntry,
        request_id: int,
        req_untrusted: ipc.NotifyDataSourceStarted,
        now: int,
    ) -> None:
        self._control.instance_acked(
            producer, req_untrusted.instance_id, InstanceEvent.STARTED, now
        )

    def data_source_stopped(
        self,
        producer: ProducerEntry,
        request_id: int,
        req_untrusted: ipc.NotifyDataSourceStopped,
        now: int,
    ) -> None:
        self._control.instance_acked(
            producer, req_untrusted.instance_id, InstanceEvent.STOPPED, now
        )

    def gone(self, identity: bytes, now: int) -> None:
        """A producer is gone: keep what it committed and what is left in its SMB."""
        ctx = self._ctx
        producer = ctx.producers.remove(identity)
        if producer is None:
            return
        for session in ctx.sessions.values():
            ctx.commit.scrape(producer, set(session.buffer_ids))
        for session in list(ctx.sessions.values()):
            self._control.forget_instances(session, producer.id)
            self._flushes.producer_gone(session, producer.id, now)
            self._control.finish_disable(session, now)
        producer.release_smb()
