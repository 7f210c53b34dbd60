from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_VERSION: _ClassVar[Protocol]
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_VERSION: Protocol

class Hello(_message.Message):
    __slots__ = ("protocol_version", "features", "client_name")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    features: int
    client_name: str
    def __init__(self, protocol_version: _Optional[int] = ..., features: _Optional[int] = ..., client_name: _Optional[str] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("protocol_version", "features", "error")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    features: int
    error: str
    def __init__(self, protocol_version: _Optional[int] = ..., features: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: str
    def __init__(self, error: _Optional[str] = ...) -> None: ...

class InitializeConnectionRequest(_message.Message):
    __slots__ = ("hello", "producer_name", "shm_size_hint_bytes", "shm_page_size_hint_bytes", "buffer_exhausted_policy", "claimed_pid", "claimed_uid")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
    SHM_SIZE_HINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHM_PAGE_SIZE_HINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUFFER_EXHAUSTED_POLICY_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_PID_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_UID_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    producer_name: str
    shm_size_hint_bytes: int
    shm_page_size_hint_bytes: int
    buffer_exhausted_policy: int
    claimed_pid: int
    claimed_uid: int
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., producer_name: _Optional[str] = ..., shm_size_hint_bytes: _Optional[int] = ..., shm_page_size_hint_bytes: _Optional[int] = ..., buffer_exhausted_policy: _Optional[int] = ..., claimed_pid: _Optional[int] = ..., claimed_uid: _Optional[int] = ...) -> None: ...

class InitializeConnectionResponse(_message.Message):
    __slots__ = ("hello", "producer_id")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    hello: HelloReply
    producer_id: int
    def __init__(self, hello: _Optional[_Union[HelloReply, _Mapping]] = ..., producer_id: _Optional[int] = ...) -> None: ...

class DataSourceDescriptor(_message.Message):
    __slots__ = ("name", "will_notify_on_start", "will_notify_on_stop", "handles_incremental_state_clear", "no_flush")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WILL_NOTIFY_ON_START_FIELD_NUMBER: _ClassVar[int]
    WILL_NOTIFY_ON_STOP_FIELD_NUMBER: _ClassVar[int]
    HANDLES_INCREMENTAL_STATE_CLEAR_FIELD_NUMBER: _ClassVar[int]
    NO_FLUSH_FIELD_NUMBER: _ClassVar[int]
    name: str
    will_notify_on_start: bool
    will_notify_on_stop: bool
    handles_incremental_state_clear: bool
    no_flush: bool
    def __init__(self, name: _Optional[str] = ..., will_notify_on_start: _Optional[bool] = ..., will_notify_on_stop: _Optional[bool] = ..., handles_incremental_state_clear: _Optional[bool] = ..., no_flush: _Optional[bool] = ...) -> None: ...

class RegisterDataSourceRequest(_message.Message):
    __slots__ = ("descriptor",)
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    descriptor: DataSourceDescriptor
    def __init__(self, descriptor: _Optional[_Union[DataSourceDescriptor, _Mapping]] = ...) -> None: ...

class RegisterDataSourceResponse(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: str
    def __init__(self, error: _Optional[str] = ...) -> None: ...

class UnregisterDataSourceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RegisterTraceWriterRequest(_message.Message):
    __slots__ = ("writer_id", "target_buffer")
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_BUFFER_FIELD_NUMBER: _ClassVar[int]
    writer_id: int
    target_buffer: int
    def __init__(self, writer_id: _Optional[int] = ..., target_buffer: _Optional[int] = ...) -> None: ...

class UnregisterTraceWriterRequest(_message.Message):
    __slots__ = ("writer_id",)
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    writer_id: int
    def __init__(self, writer_id: _Optional[int] = ...) -> None: ...

class CommitDataRequest(_message.Message):
    __slots__ = ("chunks_to_move", "chunks_to_patch", "flush_request_id", "writer_stats")
    class ChunkToMove(_message.Message):
        __slots__ = ("page", "chunk", "target_buffer", "data")
        PAGE_FIELD_NUMBER: _ClassVar[int]
        CHUNK_FIELD_NUMBER: _ClassVar[int]
        TARGET_BUFFER_FIELD_NUMBER: _ClassVar[int]
        DATA_FIELD_NUMBER: _ClassVar[int]
        page: int
        chunk: int
        target_buffer: int
        data: bytes
        def __init__(self, page: _Optional[int] = ..., chunk: _Optional[int] = ..., target_buffer: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
    class Patch(_message.Message):
        __slots__ = ("offset", "data")
        OFFSET_FIELD_NUMBER: _ClassVar[int]
        DATA_FIELD_NUMBER: _ClassVar[int]
        offset: int
        data: bytes
        def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
    class ChunkToPatch(_message.Message):
        __slots__ = ("target_buffer", "writer_id", "chunk_id", "patches", "has_more_patches")
        TARGET_BUFFER_FIELD_NUMBER: _ClassVar[int]
        WRITER_ID_FIELD_NUMBER: _ClassVar[int]
        CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
        PATCHES_FIELD_NUMBER: _ClassVar[int]
        HAS_MORE_PATCHES_FIELD_NUMBER: _ClassVar[int]
        target_buffer: int
        writer_id: int
        chunk_id: int
        patches: _containers.RepeatedCompositeFieldContainer[CommitDataRequest.Patch]
        has_more_patches: bool
        def __init__(self, target_buffer: _Optional[int] = ..., writer_id: _Optional[int] = ..., chunk_id: _Optional[int] = ..., patches: _Optional[_Iterable[_Union[CommitDataRequest.Patch, _Mapping]]] = ..., has_more_patches: _Optional[bool] = ...) -> None: ...
    class WriterStats(_message.Message):
        __slots__ = ("writer_id", "target_buffer", "dropped_packets", "dropped_bytes")
        WRITER_ID_FIELD_NUMBER: _ClassVar[int]
        TARGET_BUFFER_FIELD_NUMBER: _ClassVar[int]
        DROPPED_PACKETS_FIELD_NUMBER: _ClassVar[int]
        DROPPED_BYTES_FIELD_NUMBER: _ClassVar[int]
        writer_id: int
        target_buffer: int
        dropped_packets: int
        dropped_bytes: int
        def __init__(self, writer_id: _Optional[int] = ..., target_buffer: _Optional[int] = ..., dropped_packets: _Optional[int] = ..., dropped_bytes: _Optional[int] = ...) -> None: ...
    CHUNKS_TO_MOVE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TO_PATCH_FIELD_NUMBER: _ClassVar[int]
    FLUSH_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WRITER_STATS_FIELD_NUMBER: _ClassVar[int]
    chunks_to_move: _containers.RepeatedCompositeFieldContainer[CommitDataRequest.ChunkToMove]
    chunks_to_patch: _containers.RepeatedCompositeFieldContainer[CommitDataRequest.ChunkToPatch]
    flush_request_id: int
    writer_stats: _containers.RepeatedCompositeFieldContainer[CommitDataRequest.WriterStats]
    def __init__(self, chunks_to_move: _Optional[_Iterable[_Union[CommitDataRequest.ChunkToMove, _Mapping]]] = ..., chunks_to_patch: _Optional[_Iterable[_Union[CommitDataRequest.ChunkToPatch, _Mapping]]] = ..., flush_request_id: _Optional[int] = ..., writer_stats: _Optional[_Iterable[_Union[CommitDataRequest.WriterStats, _Mapping]]] = ...) -> None: ...

class SmbMapped(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: str
    def __init__(self, error: _Optional[str] = ...) -> None: ...

class NotifyDataSourceStarted(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: int
    def __init__(self, instance_id: _Optional[int] = ...) -> None: ...

class NotifyDataSourceStopped(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: int
    def __init__(self, instance_id: _Optional[int] = ...) -> None: ...

class ActivateTriggersRequest(_message.Message):
    __slots__ = ("trigger_names",)
    TRIGGER_NAMES_FIELD_NUMBER: _ClassVar[int]
    trigger_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, trigger_names: _Optional[_Iterable[str]] = ...) -> None: ...

class ProducerToService(_message.Message):
    __slots__ = ("request_id", "initialize_connection", "register_data_source", "unregister_data_source", "register_trace_writer", "unregister_trace_writer", "commit_data", "smb_mapped", "data_source_started", "data_source_stopped", "activate_triggers", "heartbeat")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INITIALIZE_CONNECTION_FIELD_NUMBER: _ClassVar[int]
    REGISTER_DATA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    UNREGISTER_DATA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    REGISTER_TRACE_WRITER_FIELD_NUMBER: _ClassVar[int]
    UNREGISTER_TRACE_WRITER_FIELD_NUMBER: _ClassVar[int]
    COMMIT_DATA_FIELD_NUMBER: _ClassVar[int]
    SMB_MAPPED_FIELD_NUMBER: _ClassVar[int]
    DATA_SOURCE_STARTED_FIELD_NUMBER: _ClassVar[int]
    DATA_SOURCE_STOPPED_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    initialize_connection: InitializeConnectionRequest
    register_data_source: RegisterDataSourceRequest
    unregister_data_source: UnregisterDataSourceRequest
    register_trace_writer: RegisterTraceWriterRequest
    unregister_trace_writer: UnregisterTraceWriterRequest
    commit_data: CommitDataRequest
    smb_mapped: SmbMapped
    data_source_started: NotifyDataSourceStarted
    data_source_stopped: NotifyDataSourceStopped
    activate_triggers: ActivateTriggersRequest
    heartbeat: Heartbeat
    def __init__(self, request_id: _Optional[int] = ..., initialize_connection: _Optional[_Union[InitializeConnectionRequest, _Mapping]] = ..., register_data_source: _Optional[_Union[RegisterDataSourceRequest, _Mapping]] = ..., unregister_data_source: _Optional[_Union[UnregisterDataSourceRequest, _Mapping]] = ..., register_trace_writer: _Optional[_Union[RegisterTraceWriterRequest, _Mapping]] = ..., unregister_trace_writer: _Optional[_Union[UnregisterTraceWriterRequest, _Mapping]] = ..., commit_data: _Optional[_Union[CommitDataRequest, _Mapping]] = ..., smb_mapped: _Optional[_Union[SmbMapped, _Mapping]] = ..., data_source_started: _Optional[_Union[NotifyDataSourceStarted, _Mapping]] = ..., data_source_stopped: _Optional[_Union[NotifyDataSourceStopped, _Mapping]] = ..., activate_triggers: _Optional[_Union[ActivateTriggersRequest, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetupTracing(_message.Message):
    __slots__ = ("shm_size_bytes", "shm_page_size_bytes", "shm_path", "shm_token", "shm_socket")
    SHM_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHM_PAGE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHM_PATH_FIELD_NUMBER: _ClassVar[int]
    SHM_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SHM_SOCKET_FIELD_NUMBER: _ClassVar[int]
    shm_size_bytes: int
    shm_page_size_bytes: int
    shm_path: str
    shm_token: bytes
    shm_socket: str
    def __init__(self, shm_size_bytes: _Optional[int] = ..., shm_page_size_bytes: _Optional[int] = ..., shm_path: _Optional[str] = ..., shm_token: _Optional[bytes] = ..., shm_socket: _Optional[str] = ...) -> None: ...

class SetupDataSource(_message.Message):
    __slots__ = ("instance_id", "data_source_config")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_SOURCE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    instance_id: int
    data_source_config: bytes
    def __init__(self, instance_id: _Optional[int] = ..., data_source_config: _Optional[bytes] = ...) -> None: ...

class StartDataSource(_message.Message):
    __slots__ = ("instance_id", "data_source_config")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_SOURCE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    instance_id: int
    data_source_config: bytes
    def __init__(self, instance_id: _Optional[int] = ..., data_source_config: _Optional[bytes] = ...) -> None: ...

class StopDataSource(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: int
    def __init__(self, instance_id: _Optional[int] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ("flush_request_id", "instance_ids", "flags", "timeout_ms")
    FLUSH_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_IDS_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    flush_request_id: int
    instance_ids: _containers.RepeatedScalarFieldContainer[int]
    flags: int
    timeout_ms: int
    def __init__(self, flush_request_id: _Optional[int] = ..., instance_ids: _Optional[_Iterable[int]] = ..., flags: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ClearIncrementalState(_message.Message):
    __slots__ = ("instance_ids",)
    INSTANCE_IDS_FIELD_NUMBER: _ClassVar[int]
    instance_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, instance_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ServiceToProducer(_message.Message):
    __slots__ = ("request_id", "initialize_connection", "register_data_source", "setup_tracing", "setup_data_source", "start_data_source", "stop_data_source", "flush", "clear_incremental_state", "error", "heartbeat")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INITIALIZE_CONNECTION_FIELD_NUMBER: _ClassVar[int]
    REGISTER_DATA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    SETUP_TRACING_FIELD_NUMBER: _ClassVar[int]
    SETUP_DATA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    START_DATA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    STOP_DATA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    CLEAR_INCREMENTAL_STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    initialize_connection: InitializeConnectionResponse
    register_data_source: RegisterDataSourceResponse
    setup_tracing: SetupTracing
    setup_data_source: SetupDataSource
    start_data_source: StartDataSource
    stop_data_source: StopDataSource
    flush: FlushRequest
    clear_incremental_state: ClearIncrementalState
    error: Error
    heartbeat: Heartbeat
    def __init__(self, request_id: _Optional[int] = ..., initialize_connection: _Optional[_Union[InitializeConnectionResponse, _Mapping]] = ..., register_data_source: _Optional[_Union[RegisterDataSourceResponse, _Mapping]] = ..., setup_tracing: _Optional[_Union[SetupTracing, _Mapping]] = ..., setup_data_source: _Optional[_Union[SetupDataSource, _Mapping]] = ..., start_data_source: _Optional[_Union[StartDataSource, _Mapping]] = ..., stop_data_source: _Optional[_Union[StopDataSource, _Mapping]] = ..., flush: _Optional[_Union[FlushRequest, _Mapping]] = ..., clear_incremental_state: _Optional[_Union[ClearIncrementalState, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class EnableTracingRequest(_message.Message):
    __slots__ = ("trace_config", "output_path", "attach_notification_only")
    TRACE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PATH_FIELD_NUMBER: _ClassVar[int]
    ATTACH_NOTIFICATION_ONLY_FIELD_NUMBER: _ClassVar[int]
    trace_config: bytes
    output_path: str
    attach_notification_only: bool
    def __init__(self, trace_config: _Optional[bytes] = ..., output_path: _Optional[str] = ..., attach_notification_only: _Optional[bool] = ...) -> None: ...

class EnableTracingResponse(_message.Message):
    __slots__ = ("disabled", "error", "session_id", "unsupported_fields", "started", "stop_timed_out", "unmatched_data_sources")
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    UNSUPPORTED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    STOP_TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_DATA_SOURCES_FIELD_NUMBER: _ClassVar[int]
    disabled: bool
    error: str
    session_id: int
    unsupported_fields: _containers.RepeatedScalarFieldContainer[str]
    started: bool
    stop_timed_out: _containers.RepeatedScalarFieldContainer[str]
    unmatched_data_sources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, disabled: _Optional[bool] = ..., error: _Optional[str] = ..., session_id: _Optional[int] = ..., unsupported_fields: _Optional[_Iterable[str]] = ..., started: _Optional[bool] = ..., stop_timed_out: _Optional[_Iterable[str]] = ..., unmatched_data_sources: _Optional[_Iterable[str]] = ...) -> None: ...

class StartTracingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DisableTracingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FlushConsumerRequest(_message.Message):
    __slots__ = ("timeout_ms", "flags")
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    timeout_ms: int
    flags: int
    def __init__(self, timeout_ms: _Optional[int] = ..., flags: _Optional[int] = ...) -> None: ...

class FlushConsumerResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class ReadBuffersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReadBuffersResponse(_message.Message):
    __slots__ = ("slices", "has_more")
    class Slice(_message.Message):
        __slots__ = ("data", "last_slice_for_packet")
        DATA_FIELD_NUMBER: _ClassVar[int]
        LAST_SLICE_FOR_PACKET_FIELD_NUMBER: _ClassVar[int]
        data: bytes
        last_slice_for_packet: bool
        def __init__(self, data: _Optional[bytes] = ..., last_slice_for_packet: _Optional[bool] = ...) -> None: ...
    SLICES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    slices: _containers.RepeatedCompositeFieldContainer[ReadBuffersResponse.Slice]
    has_more: bool
    def __init__(self, slices: _Optional[_Iterable[_Union[ReadBuffersResponse.Slice, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class FreeBuffersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTraceStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTraceStatsResponse(_message.Message):
    __slots__ = ("trace_stats",)
    TRACE_STATS_FIELD_NUMBER: _ClassVar[int]
    trace_stats: bytes
    def __init__(self, trace_stats: _Optional[bytes] = ...) -> None: ...

class QueryServiceStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueryServiceStateResponse(_message.Message):
    __slots__ = ("producers", "data_sources", "sessions", "peers_given_up", "departed_producers", "refusals", "truncated", "machines")
    class Producer(_message.Message):
        __slots__ = ("id", "name", "uid", "pid", "machine_id")
        ID_FIELD_NUMBER: _ClassVar[int]
        NAME_FIELD_NUMBER: _ClassVar[int]
        UID_FIELD_NUMBER: _ClassVar[int]
        PID_FIELD_NUMBER: _ClassVar[int]
        MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
        id: int
        name: str
        uid: int
        pid: int
        machine_id: int
        def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., uid: _Optional[int] = ..., pid: _Optional[int] = ..., machine_id: _Optional[int] = ...) -> None: ...
    class DataSource(_message.Message):
        __slots__ = ("producer_id", "descriptor")
        PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
        DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
        producer_id: int
        descriptor: DataSourceDescriptor
        def __init__(self, producer_id: _Optional[int] = ..., descriptor: _Optional[_Union[DataSourceDescriptor, _Mapping]] = ...) -> None: ...
    class Session(_message.Message):
        __slots__ = ("id", "consumer_uid", "state", "buffer_size_kb", "unique_session_name", "consumer_pid")
        ID_FIELD_NUMBER: _ClassVar[int]
        CONSUMER_UID_FIELD_NUMBER: _ClassVar[int]
        STATE_FIELD_NUMBER: _ClassVar[int]
        BUFFER_SIZE_KB_FIELD_NUMBER: _ClassVar[int]
        UNIQUE_SESSION_NAME_FIELD_NUMBER: _ClassVar[int]
        CONSUMER_PID_FIELD_NUMBER: _ClassVar[int]
        id: int
        consumer_uid: int
        state: str
        buffer_size_kb: _containers.RepeatedScalarFieldContainer[int]
        unique_session_name: str
        consumer_pid: int
        def __init__(self, id: _Optional[int] = ..., consumer_uid: _Optional[int] = ..., state: _Optional[str] = ..., buffer_size_kb: _Optional[_Iterable[int]] = ..., unique_session_name: _Optional[str] = ..., consumer_pid: _Optional[int] = ...) -> None: ...
    class PeersGivenUp(_message.Message):
        __slots__ = ("producers", "consumers", "messages_dropped", "messages_refused")
        PRODUCERS_FIELD_NUMBER: _ClassVar[int]
        CONSUMERS_FIELD_NUMBER: _ClassVar[int]
        MESSAGES_DROPPED_FIELD_NUMBER: _ClassVar[int]
        MESSAGES_REFUSED_FIELD_NUMBER: _ClassVar[int]
        producers: int
        consumers: int
        messages_dropped: int
        messages_refused: int
        def __init__(self, producers: _Optional[int] = ..., consumers: _Optional[int] = ..., messages_dropped: _Optional[int] = ..., messages_refused: _Optional[int] = ...) -> None: ...
    class RefusalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class Machine(_message.Message):
        __slots__ = ("id", "name", "connected", "producers", "relay_key")
        ID_FIELD_NUMBER: _ClassVar[int]
        NAME_FIELD_NUMBER: _ClassVar[int]
        CONNECTED_FIELD_NUMBER: _ClassVar[int]
        PRODUCERS_FIELD_NUMBER: _ClassVar[int]
        RELAY_KEY_FIELD_NUMBER: _ClassVar[int]
        id: int
        name: str
        connected: bool
        producers: int
        relay_key: str
        def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., connected: _Optional[bool] = ..., producers: _Optional[int] = ..., relay_key: _Optional[str] = ...) -> None: ...
    PRODUCERS_FIELD_NUMBER: _ClassVar[int]
    DATA_SOURCES_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    PEERS_GIVEN_UP_FIELD_NUMBER: _ClassVar[int]
    DEPARTED_PRODUCERS_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    MACHINES_FIELD_NUMBER: _ClassVar[int]
    producers: _containers.RepeatedCompositeFieldContainer[QueryServiceStateResponse.Producer]
    data_sources: _containers.RepeatedCompositeFieldContainer[QueryServiceStateResponse.DataSource]
    sessions: _containers.RepeatedCompositeFieldContainer[QueryServiceStateResponse.Session]
    peers_given_up: QueryServiceStateResponse.PeersGivenUp
    departed_producers: _containers.RepeatedCompositeFieldContainer[QueryServiceStateResponse.Producer]
    refusals: _containers.ScalarMap[str, int]
    truncated: bool
    machines: _containers.RepeatedCompositeFieldContainer[QueryServiceStateResponse.Machine]
    def __init__(self, producers: _Optional[_Iterable[_Union[QueryServiceStateResponse.Producer, _Mapping]]] = ..., data_sources: _Optional[_Iterable[_Union[QueryServiceStateResponse.DataSource, _Mapping]]] = ..., sessions: _Optional[_Iterable[_Union[QueryServiceStateResponse.Session, _Mapping]]] = ..., peers_given_up: _Optional[_Union[QueryServiceStateResponse.PeersGivenUp, _Mapping]] = ..., departed_producers: _Optional[_Iterable[_Union[QueryServiceStateResponse.Producer, _Mapping]]] = ..., refusals: _Optional[_Mapping[str, int]] = ..., truncated: _Optional[bool] = ..., machines: _Optional[_Iterable[_Union[QueryServiceStateResponse.Machine, _Mapping]]] = ...) -> None: ...

class ObserveEventsRequest(_message.Message):
    __slots__ = ("types",)
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[ObserveEventsRequest.Type]
        TYPE_DATA_SOURCES_INSTANCES: _ClassVar[ObserveEventsRequest.Type]
        TYPE_ALL_DATA_SOURCES_STARTED: _ClassVar[ObserveEventsRequest.Type]
        TYPE_CLONE_TRIGGER_HIT: _ClassVar[ObserveEventsRequest.Type]
    TYPE_UNSPECIFIED: ObserveEventsRequest.Type
    TYPE_DATA_SOURCES_INSTANCES: ObserveEventsRequest.Type
    TYPE_ALL_DATA_SOURCES_STARTED: ObserveEventsRequest.Type
    TYPE_CLONE_TRIGGER_HIT: ObserveEventsRequest.Type
    TYPES_FIELD_NUMBER: _ClassVar[int]
    types: _containers.RepeatedScalarFieldContainer[ObserveEventsRequest.Type]
    def __init__(self, types: _Optional[_Iterable[_Union[ObserveEventsRequest.Type, str]]] = ...) -> None: ...

class ObservableEvents(_message.Message):
    __slots__ = ("instance_state_changes", "all_data_sources_started", "clone_trigger_hit")
    class DataSourceInstanceStateChange(_message.Message):
        __slots__ = ("producer_id", "producer_name", "data_source_name", "instance_id", "state")
        class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            STATE_UNSPECIFIED: _ClassVar[ObservableEvents.DataSourceInstanceStateChange.State]
            STATE_STOPPED: _ClassVar[ObservableEvents.DataSourceInstanceStateChange.State]
            STATE_STARTED: _ClassVar[ObservableEvents.DataSourceInstanceStateChange.State]
        STATE_UNSPECIFIED: ObservableEvents.DataSourceInstanceStateChange.State
        STATE_STOPPED: ObservableEvents.DataSourceInstanceStateChange.State
        STATE_STARTED: ObservableEvents.DataSourceInstanceStateChange.State
        PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
        PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
        DATA_SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
        INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
        STATE_FIELD_NUMBER: _ClassVar[int]
        producer_id: int
        producer_name: str
        data_source_name: str
        instance_id: int
        state: ObservableEvents.DataSourceInstanceStateChange.State
        def __init__(self, producer_id: _Optional[int] = ..., producer_name: _Optional[str] = ..., data_source_name: _Optional[str] = ..., instance_id: _Optional[int] = ..., state: _Optional[_Union[ObservableEvents.DataSourceInstanceStateChange.State, str]] = ...) -> None: ...
    class CloneTriggerHit(_message.Message):
        __slots__ = ("tracing_session_id", "trigger_name", "producer_name", "producer_uid", "boot_time_ns", "trigger_delay_ms")
        TRACING_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
        TRIGGER_NAME_FIELD_NUMBER: _ClassVar[int]
        PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
        PRODUCER_UID_FIELD_NUMBER: _ClassVar[int]
        BOOT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
        TRIGGER_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
        tracing_session_id: int
        trigger_name: str
        producer_name: str
        producer_uid: int
        boot_time_ns: int
        trigger_delay_ms: int
        def __init__(self, tracing_session_id: _Optional[int] = ..., trigger_name: _Optional[str] = ..., producer_name: _Optional[str] = ..., producer_uid: _Optional[int] = ..., boot_time_ns: _Optional[int] = ..., trigger_delay_ms: _Optional[int] = ...) -> None: ...
    INSTANCE_STATE_CHANGES_FIELD_NUMBER: _ClassVar[int]
    ALL_DATA_SOURCES_STARTED_FIELD_NUMBER: _ClassVar[int]
    CLONE_TRIGGER_HIT_FIELD_NUMBER: _ClassVar[int]
    instance_state_changes: _containers.RepeatedCompositeFieldContainer[ObservableEvents.DataSourceInstanceStateChange]
    all_data_sources_started: bool
    clone_trigger_hit: ObservableEvents.CloneTriggerHit
    def __init__(self, instance_state_changes: _Optional[_Iterable[_Union[ObservableEvents.DataSourceInstanceStateChange, _Mapping]]] = ..., all_data_sources_started: _Optional[bool] = ..., clone_trigger_hit: _Optional[_Union[ObservableEvents.CloneTriggerHit, _Mapping]] = ...) -> None: ...

class DetachRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class AttachResponse(_message.Message):
    __slots__ = ("error", "trace_config", "session_id", "state")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    error: str
    trace_config: bytes
    session_id: int
    state: str
    def __init__(self, error: _Optional[str] = ..., trace_config: _Optional[bytes] = ..., session_id: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class CloneSessionRequest(_message.Message):
    __slots__ = ("session_id", "unique_session_name", "clone_trigger_name", "clone_trigger_producer_name", "clone_trigger_trusted_producer_uid", "clone_trigger_boot_time_ns", "clone_trigger_delay_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_SESSION_NAME_FIELD_NUMBER: _ClassVar[int]
    CLONE_TRIGGER_NAME_FIELD_NUMBER: _ClassVar[int]
    CLONE_TRIGGER_PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
    CLONE_TRIGGER_TRUSTED_PRODUCER_UID_FIELD_NUMBER: _ClassVar[int]
    CLONE_TRIGGER_BOOT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    CLONE_TRIGGER_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    unique_session_name: str
    clone_trigger_name: str
    clone_trigger_producer_name: str
    clone_trigger_trusted_producer_uid: int
    clone_trigger_boot_time_ns: int
    clone_trigger_delay_ms: int
    def __init__(self, session_id: _Optional[int] = ..., unique_session_name: _Optional[str] = ..., clone_trigger_name: _Optional[str] = ..., clone_trigger_producer_name: _Optional[str] = ..., clone_trigger_trusted_producer_uid: _Optional[int] = ..., clone_trigger_boot_time_ns: _Optional[int] = ..., clone_trigger_delay_ms: _Optional[int] = ...) -> None: ...

class CloneSessionResponse(_message.Message):
    __slots__ = ("success", "error", "session_id", "uuid_msb", "uuid_lsb", "was_write_into_file")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    UUID_MSB_FIELD_NUMBER: _ClassVar[int]
    UUID_LSB_FIELD_NUMBER: _ClassVar[int]
    WAS_WRITE_INTO_FILE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error: str
    session_id: int
    uuid_msb: int
    uuid_lsb: int
    was_write_into_file: bool
    def __init__(self, success: _Optional[bool] = ..., error: _Optional[str] = ..., session_id: _Optional[int] = ..., uuid_msb: _Optional[int] = ..., uuid_lsb: _Optional[int] = ..., was_write_into_file: _Optional[bool] = ...) -> None: ...

class ConsumerToService(_message.Message):
    __slots__ = ("request_id", "hello", "enable_tracing", "start_tracing", "disable_tracing", "flush", "read_buffers", "free_buffers", "get_trace_stats", "query_service_state", "observe_events", "heartbeat", "activate_triggers", "detach", "attach", "clone_session")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ENABLE_TRACING_FIELD_NUMBER: _ClassVar[int]
    START_TRACING_FIELD_NUMBER: _ClassVar[int]
    DISABLE_TRACING_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    READ_BUFFERS_FIELD_NUMBER: _ClassVar[int]
    FREE_BUFFERS_FIELD_NUMBER: _ClassVar[int]
    GET_TRACE_STATS_FIELD_NUMBER: _ClassVar[int]
    QUERY_SERVICE_STATE_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    CLONE_SESSION_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    hello: Hello
    enable_tracing: EnableTracingRequest
    start_tracing: StartTracingRequest
    disable_tracing: DisableTracingRequest
    flush: FlushConsumerRequest
    read_buffers: ReadBuffersRequest
    free_buffers: FreeBuffersRequest
    get_trace_stats: GetTraceStatsRequest
    query_service_state: QueryServiceStateRequest
    observe_events: ObserveEventsRequest
    heartbeat: Heartbeat
    activate_triggers: ActivateTriggersRequest
    detach: DetachRequest
    attach: AttachRequest
    clone_session: CloneSessionRequest
    def __init__(self, request_id: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., enable_tracing: _Optional[_Union[EnableTracingRequest, _Mapping]] = ..., start_tracing: _Optional[_Union[StartTracingRequest, _Mapping]] = ..., disable_tracing: _Optional[_Union[DisableTracingRequest, _Mapping]] = ..., flush: _Optional[_Union[FlushConsumerRequest, _Mapping]] = ..., read_buffers: _Optional[_Union[ReadBuffersRequest, _Mapping]] = ..., free_buffers: _Optional[_Union[FreeBuffersRequest, _Mapping]] = ..., get_trace_stats: _Optional[_Union[GetTraceStatsRequest, _Mapping]] = ..., query_service_state: _Optional[_Union[QueryServiceStateRequest, _Mapping]] = ..., observe_events: _Optional[_Union[ObserveEventsRequest, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., activate_triggers: _Optional[_Union[ActivateTriggersRequest, _Mapping]] = ..., detach: _Optional[_Union[DetachRequest, _Mapping]] = ..., attach: _Optional[_Union[AttachRequest, _Mapping]] = ..., clone_session: _Optional[_Union[CloneSessionRequest, _Mapping]] = ...) -> None: ...

class ServiceToConsumer(_message.Message):
    __slots__ = ("request_id", "hello", "enable_tracing", "flush", "read_buffers", "trace_stats", "service_state", "events", "error", "heartbeat", "ack", "attach", "clone_session")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ENABLE_TRACING_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    READ_BUFFERS_FIELD_NUMBER: _ClassVar[int]
    TRACE_STATS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_STATE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    CLONE_SESSION_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    hello: HelloReply
    enable_tracing: EnableTracingResponse
    flush: FlushConsumerResponse
    read_buffers: ReadBuffersResponse
    trace_stats: GetTraceStatsResponse
    service_state: QueryServiceStateResponse
    events: ObservableEvents
    error: Error
    heartbeat: Heartbeat
    ack: Ack
    attach: AttachResponse
    clone_session: CloneSessionResponse
    def __init__(self, request_id: _Optional[int] = ..., hello: _Optional[_Union[HelloReply, _Mapping]] = ..., enable_tracing: _Optional[_Union[EnableTracingResponse, _Mapping]] = ..., flush: _Optional[_Union[FlushConsumerResponse, _Mapping]] = ..., read_buffers: _Optional[_Union[ReadBuffersResponse, _Mapping]] = ..., trace_stats: _Optional[_Union[GetTraceStatsResponse, _Mapping]] = ..., service_state: _Optional[_Union[QueryServiceStateResponse, _Mapping]] = ..., events: _Optional[_Union[ObservableEvents, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., attach: _Optional[_Union[AttachResponse, _Mapping]] = ..., clone_session: _Optional[_Union[CloneSessionResponse, _Mapping]] = ...) -> None: ...

class InitRelay(_message.Message):
    __slots__ = ("hello", "machine_name", "machine_id_hint", "system_info")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    MACHINE_NAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_HINT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_INFO_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    machine_name: str
    machine_id_hint: str
    system_info: bytes
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., machine_name: _Optional[str] = ..., machine_id_hint: _Optional[str] = ..., system_info: _Optional[bytes] = ...) -> None: ...

class InitRelayResponse(_message.Message):
    __slots__ = ("hello", "machine_id")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    hello: HelloReply
    machine_id: int
    def __init__(self, hello: _Optional[_Union[HelloReply, _Mapping]] = ..., machine_id: _Optional[int] = ...) -> None: ...

class ClockValue(_message.Message):
    __slots__ = ("clock_id", "timestamp")
    CLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    clock_id: int
    timestamp: int
    def __init__(self, clock_id: _Optional[int] = ..., timestamp: _Optional[int] = ...) -> None: ...

class SyncClock(_message.Message):
    __slots__ = ("phase", "round", "burst", "clocks", "client_round_trip_ns")
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PHASE_UNSPECIFIED: _ClassVar[SyncClock.Phase]
        PING: _ClassVar[SyncClock.Phase]
        UPDATE: _ClassVar[SyncClock.Phase]
    PHASE_UNSPECIFIED: SyncClock.Phase
    PING: SyncClock.Phase
    UPDATE: SyncClock.Phase
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    CLOCKS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ROUND_TRIP_NS_FIELD_NUMBER: _ClassVar[int]
    phase: SyncClock.Phase
    round: int
    burst: int
    clocks: _containers.RepeatedCompositeFieldContainer[ClockValue]
    client_round_trip_ns: int
    def __init__(self, phase: _Optional[_Union[SyncClock.Phase, str]] = ..., round: _Optional[int] = ..., burst: _Optional[int] = ..., clocks: _Optional[_Iterable[_Union[ClockValue, _Mapping]]] = ..., client_round_trip_ns: _Optional[int] = ...) -> None: ...

class SyncClockResponse(_message.Message):
    __slots__ = ("round",)
    ROUND_FIELD_NUMBER: _ClassVar[int]
    round: int
    def __init__(self, round: _Optional[int] = ...) -> None: ...

class RelayLoss(_message.Message):
    __slots__ = ("buffers", "sent")
    class Buffer(_message.Message):
        __slots__ = ("target_buffer", "chunks", "bytes")
        TARGET_BUFFER_FIELD_NUMBER: _ClassVar[int]
        CHUNKS_FIELD_NUMBER: _ClassVar[int]
        BYTES_FIELD_NUMBER: _ClassVar[int]
        target_buffer: int
        chunks: int
        bytes: int
        def __init__(self, target_buffer: _Optional[int] = ..., chunks: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    buffers: _containers.RepeatedCompositeFieldContainer[RelayLoss.Buffer]
    sent: _containers.RepeatedCompositeFieldContainer[RelayLoss.Buffer]
    def __init__(self, buffers: _Optional[_Iterable[_Union[RelayLoss.Buffer, _Mapping]]] = ..., sent: _Optional[_Iterable[_Union[RelayLoss.Buffer, _Mapping]]] = ...) -> None: ...

class RelayProducerGone(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: int
    def __init__(self, channel: _Optional[int] = ...) -> None: ...

class RelayToService(_message.Message):
    __slots__ = ("request_id", "init_relay", "sync_clock", "heartbeat", "loss", "producer_gone")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INIT_RELAY_FIELD_NUMBER: _ClassVar[int]
    SYNC_CLOCK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_GONE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    init_relay: InitRelay
    sync_clock: SyncClock
    heartbeat: Heartbeat
    loss: RelayLoss
    producer_gone: RelayProducerGone
    def __init__(self, request_id: _Optional[int] = ..., init_relay: _Optional[_Union[InitRelay, _Mapping]] = ..., sync_clock: _Optional[_Union[SyncClock, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., loss: _Optional[_Union[RelayLoss, _Mapping]] = ..., producer_gone: _Optional[_Union[RelayProducerGone, _Mapping]] = ...) -> None: ...

class ServiceToRelay(_message.Message):
    __slots__ = ("request_id", "init_relay", "sync_clock", "heartbeat", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INIT_RELAY_FIELD_NUMBER: _ClassVar[int]
    SYNC_CLOCK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    init_relay: InitRelayResponse
    sync_clock: SyncClockResponse
    heartbeat: Heartbeat
    error: Error
    def __init__(self, request_id: _Optional[int] = ..., init_relay: _Optional[_Union[InitRelayResponse, _Mapping]] = ..., sync_clock: _Optional[_Union[SyncClockResponse, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
