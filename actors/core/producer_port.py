"""The producer port: what the service does with each message a producer sends,
and when a producer goes away.

Everything here is untrusted (`*_untrusted`): names are bounded (a producer
name is cut to MAX_NAME_LENGTH characters and its unprintable characters
replaced; a data source name must be 1..MAX_NAME_LENGTH printable characters),
a producer's data sources and a user's producers are counted against the
service's limits, a descriptor is kept as its known fields only (unknown
fields a producer appends would otherwise be stored and echoed in every
service state reply), writer ids range-checked, instance and flush ids looked
up among the sender's own. The dispatch table that routes each
ProducerToService kind to a method here is in service_core.py.
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


def producer_name(name_untrusted: str) -> str:
    """The name a producer is listed under: at most MAX_NAME_LENGTH characters, an
    unprintable one (a newline, a terminal escape) replaced by "?", since the name
    reaches consumers' summaries and the supervisor's log lines."""
    name = name_untrusted[:MAX_NAME_LENGTH]
    return name if name.isprintable() else "".join(c if c.isprintable() else "?" for c in name)


def data_source_error(name_untrusted: str) -> str:
    """Why a data source may not register under this name ("" if it may)."""
    if not name_untrusted or len(name_untrusted) > MAX_NAME_LENGTH:
        return f"a data source needs a name of 1 to {MAX_NAME_LENGTH} characters"
    if not name_untrusted.isprintable():
        return "a data source name must not hold unprintable characters"
    return ""


def known_fields(desc_untrusted: ipc.DataSourceDescriptor) -> ipc.DataSourceDescriptor:
    """The descriptor without the unknown fields a producer may have appended."""
    desc = ipc.DataSourceDescriptor()
    desc.CopyFrom(desc_untrusted)
    desc.DiscardUnknownFields()
    return desc


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
        elif ctx.producers.count_of_uid(peer.uid, peer.machine_id) >= (
            ctx.limits.max_producers_per_uid
        ):
            limit = ctx.limits.max_producers_per_uid
            reply.hello.error = f"uid {peer.uid} has {limit} producers (max_producers_per_uid)"
            ctx.refuse("max_producers_per_uid")
        else:
            producer = ctx.producers.add(
                peer.identity,
                producer_name(req_untrusted.producer_name),
                peer.pid,
                peer.uid,
                req_untrusted.shm_size_hint_bytes,
                req_untrusted.shm_page_size_hint_bytes,
                peer.machine_id,
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
        error = data_source_error(desc.name) or self._no_room(producer, desc.name)
        if not error:
            producer.data_sources[desc.name] = known_fields(desc)
            self._ctx.data_sources_seen += 1
        reply = ipc.RegisterDataSourceResponse(error=error)
        self._ctx.out.to_producer(producer.peer, request_id, register_data_source=reply)
        if not error:
            self._control.join_running_sessions(producer, desc.name)

    def _no_room(self, producer: ProducerEntry, name: str) -> str:
        """Why `name` cannot join the producer's data sources ("" if it can)."""
        if name in producer.data_sources:
            return f"data source {name!r} is already registered"
        limit = self._ctx.limits.max_data_sources_per_producer
        if len(producer.data_sources) >= limit:
            self._ctx.refuse("max_data_sources_per_producer")
            return f"this producer has {limit} data sources (max_data_sources_per_producer)"
        return ""

    def unregister_data_source(
        self,
        producer: ProducerEntry,
        request_id: int,
        req_untrusted: ipc.UnregisterDataSourceRequest,
        now: int,
    ) -> None:
        """The data source leaves, and its instances leave every session with it (as
        Perfetto's do): else registering and unregistering a name in a loop would
        add an instance to each session that wants it, every turn, without bound."""
        if producer.data_sources.pop(req_untrusted.name, None) is not None:
            self._control.unregistered(producer, req_untrusted.name, now)

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
        if producer.machine_id:
            self._ctx.commit.commit_inline(producer, req_untrusted)
        else:
            self._ctx.commit.commit(producer, req_untrusted)
        has_smb = producer.abi is not None or producer.remote_geometry is not None
        if has_smb and req_untrusted.flush_request_id:
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
