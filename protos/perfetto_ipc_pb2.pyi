from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IPCFrame(_message.Message):
    __slots__ = ("request_id", "msg_bind_service", "msg_bind_service_reply", "msg_invoke_method", "msg_invoke_method_reply", "msg_request_error", "set_peer_identity", "data_for_testing")
    class BindService(_message.Message):
        __slots__ = ("service_name",)
        SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
        service_name: str
        def __init__(self, service_name: _Optional[str] = ...) -> None: ...
    class BindServiceReply(_message.Message):
        __slots__ = ("success", "service_id", "methods")
        class MethodInfo(_message.Message):
            __slots__ = ("id", "name")
            ID_FIELD_NUMBER: _ClassVar[int]
            NAME_FIELD_NUMBER: _ClassVar[int]
            id: int
            name: str
            def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...
        SUCCESS_FIELD_NUMBER: _ClassVar[int]
        SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
        METHODS_FIELD_NUMBER: _ClassVar[int]
        success: bool
        service_id: int
        methods: _containers.RepeatedCompositeFieldContainer[IPCFrame.BindServiceReply.MethodInfo]
        def __init__(self, success: _Optional[bool] = ..., service_id: _Optional[int] = ..., methods: _Optional[_Iterable[_Union[IPCFrame.BindServiceReply.MethodInfo, _Mapping]]] = ...) -> None: ...
    class InvokeMethod(_message.Message):
        __slots__ = ("service_id", "method_id", "args_proto", "drop_reply")
        SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
        METHOD_ID_FIELD_NUMBER: _ClassVar[int]
        ARGS_PROTO_FIELD_NUMBER: _ClassVar[int]
        DROP_REPLY_FIELD_NUMBER: _ClassVar[int]
        service_id: int
        method_id: int
        args_proto: bytes
        drop_reply: bool
        def __init__(self, service_id: _Optional[int] = ..., method_id: _Optional[int] = ..., args_proto: _Optional[bytes] = ..., drop_reply: _Optional[bool] = ...) -> None: ...
    class InvokeMethodReply(_message.Message):
        __slots__ = ("success", "has_more", "reply_proto")
        SUCCESS_FIELD_NUMBER: _ClassVar[int]
        HAS_MORE_FIELD_NUMBER: _ClassVar[int]
        REPLY_PROTO_FIELD_NUMBER: _ClassVar[int]
        success: bool
        has_more: bool
        reply_proto: bytes
        def __init__(self, success: _Optional[bool] = ..., has_more: _Optional[bool] = ..., reply_proto: _Optional[bytes] = ...) -> None: ...
    class RequestError(_message.Message):
        __slots__ = ("error",)
        ERROR_FIELD_NUMBER: _ClassVar[int]
        error: str
        def __init__(self, error: _Optional[str] = ...) -> None: ...
    class SetPeerIdentity(_message.Message):
        __slots__ = ("pid", "uid", "machine_id_hint", "machine_name")
        PID_FIELD_NUMBER: _ClassVar[int]
        UID_FIELD_NUMBER: _ClassVar[int]
        MACHINE_ID_HINT_FIELD_NUMBER: _ClassVar[int]
        MACHINE_NAME_FIELD_NUMBER: _ClassVar[int]
        pid: int
        uid: int
        machine_id_hint: str
        machine_name: str
        def __init__(self, pid: _Optional[int] = ..., uid: _Optional[int] = ..., machine_id_hint: _Optional[str] = ..., machine_name: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MSG_BIND_SERVICE_FIELD_NUMBER: _ClassVar[int]
    MSG_BIND_SERVICE_REPLY_FIELD_NUMBER: _ClassVar[int]
    MSG_INVOKE_METHOD_FIELD_NUMBER: _ClassVar[int]
    MSG_INVOKE_METHOD_REPLY_FIELD_NUMBER: _ClassVar[int]
    MSG_REQUEST_ERROR_FIELD_NUMBER: _ClassVar[int]
    SET_PEER_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    DATA_FOR_TESTING_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    msg_bind_service: IPCFrame.BindService
    msg_bind_service_reply: IPCFrame.BindServiceReply
    msg_invoke_method: IPCFrame.InvokeMethod
    msg_invoke_method_reply: IPCFrame.InvokeMethodReply
    msg_request_error: IPCFrame.RequestError
    set_peer_identity: IPCFrame.SetPeerIdentity
    data_for_testing: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, request_id: _Optional[int] = ..., msg_bind_service: _Optional[_Union[IPCFrame.BindService, _Mapping]] = ..., msg_bind_service_reply: _Optional[_Union[IPCFrame.BindServiceReply, _Mapping]] = ..., msg_invoke_method: _Optional[_Union[IPCFrame.InvokeMethod, _Mapping]] = ..., msg_invoke_method_reply: _Optional[_Union[IPCFrame.InvokeMethodReply, _Mapping]] = ..., msg_request_error: _Optional[_Union[IPCFrame.RequestError, _Mapping]] = ..., set_peer_identity: _Optional[_Union[IPCFrame.SetPeerIdentity, _Mapping]] = ..., data_for_testing: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InitializeConnectionRequest(_message.Message):
    __slots__ = ("shared_memory_page_size_hint_bytes", "shared_memory_size_hint_bytes", "producer_name", "smb_scraping_mode", "build_flags", "producer_provided_shmem", "sdk_version")
    SHARED_MEMORY_PAGE_SIZE_HINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_SIZE_HINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
    SMB_SCRAPING_MODE_FIELD_NUMBER: _ClassVar[int]
    BUILD_FLAGS_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_PROVIDED_SHMEM_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    shared_memory_page_size_hint_bytes: int
    shared_memory_size_hint_bytes: int
    producer_name: str
    smb_scraping_mode: int
    build_flags: int
    producer_provided_shmem: bool
    sdk_version: str
    def __init__(self, shared_memory_page_size_hint_bytes: _Optional[int] = ..., shared_memory_size_hint_bytes: _Optional[int] = ..., producer_name: _Optional[str] = ..., smb_scraping_mode: _Optional[int] = ..., build_flags: _Optional[int] = ..., producer_provided_shmem: _Optional[bool] = ..., sdk_version: _Optional[str] = ...) -> None: ...

class InitializeConnectionResponse(_message.Message):
    __slots__ = ("using_shmem_provided_by_producer", "direct_smb_patching_supported", "use_shmem_emulation")
    USING_SHMEM_PROVIDED_BY_PRODUCER_FIELD_NUMBER: _ClassVar[int]
    DIRECT_SMB_PATCHING_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    USE_SHMEM_EMULATION_FIELD_NUMBER: _ClassVar[int]
    using_shmem_provided_by_producer: bool
    direct_smb_patching_supported: bool
    use_shmem_emulation: bool
    def __init__(self, using_shmem_provided_by_producer: _Optional[bool] = ..., direct_smb_patching_supported: _Optional[bool] = ..., use_shmem_emulation: _Optional[bool] = ...) -> None: ...

class RegisterDataSourceRequest(_message.Message):
    __slots__ = ("data_source_descriptor",)
    DATA_SOURCE_DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    data_source_descriptor: bytes
    def __init__(self, data_source_descriptor: _Optional[bytes] = ...) -> None: ...

class RegisterDataSourceResponse(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: str
    def __init__(self, error: _Optional[str] = ...) -> None: ...

class UnregisterDataSourceRequest(_message.Message):
    __slots__ = ("data_source_name",)
    DATA_SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    data_source_name: str
    def __init__(self, data_source_name: _Optional[str] = ...) -> None: ...

class RegisterTraceWriterRequest(_message.Message):
    __slots__ = ("trace_writer_id", "target_buffer")
    TRACE_WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_BUFFER_FIELD_NUMBER: _ClassVar[int]
    trace_writer_id: int
    target_buffer: int
    def __init__(self, trace_writer_id: _Optional[int] = ..., target_buffer: _Optional[int] = ...) -> None: ...

class UnregisterTraceWriterRequest(_message.Message):
    __slots__ = ("trace_writer_id",)
    TRACE_WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    trace_writer_id: int
    def __init__(self, trace_writer_id: _Optional[int] = ...) -> None: ...

class CommitDataRequest(_message.Message):
    __slots__ = ("chunks_to_move", "chunks_to_patch", "flush_request_id")
    class ChunksToMove(_message.Message):
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
    class ChunkToPatch(_message.Message):
        __slots__ = ("target_buffer", "writer_id", "chunk_id", "patches", "has_more_patches")
        class Patch(_message.Message):
            __slots__ = ("offset", "data")
            OFFSET_FIELD_NUMBER: _ClassVar[int]
            DATA_FIELD_NUMBER: _ClassVar[int]
            offset: int
            data: bytes
            def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
        TARGET_BUFFER_FIELD_NUMBER: _ClassVar[int]
        WRITER_ID_FIELD_NUMBER: _ClassVar[int]
        CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
        PATCHES_FIELD_NUMBER: _ClassVar[int]
        HAS_MORE_PATCHES_FIELD_NUMBER: _ClassVar[int]
        target_buffer: int
        writer_id: int
        chunk_id: int
        patches: _containers.RepeatedCompositeFieldContainer[CommitDataRequest.ChunkToPatch.Patch]
        has_more_patches: bool
        def __init__(self, target_buffer: _Optional[int] = ..., writer_id: _Optional[int] = ..., chunk_id: _Optional[int] = ..., patches: _Optional[_Iterable[_Union[CommitDataRequest.ChunkToPatch.Patch, _Mapping]]] = ..., has_more_patches: _Optional[bool] = ...) -> None: ...
    CHUNKS_TO_MOVE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TO_PATCH_FIELD_NUMBER: _ClassVar[int]
    FLUSH_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    chunks_to_move: _containers.RepeatedCompositeFieldContainer[CommitDataRequest.ChunksToMove]
    chunks_to_patch: _containers.RepeatedCompositeFieldContainer[CommitDataRequest.ChunkToPatch]
    flush_request_id: int
    def __init__(self, chunks_to_move: _Optional[_Iterable[_Union[CommitDataRequest.ChunksToMove, _Mapping]]] = ..., chunks_to_patch: _Optional[_Iterable[_Union[CommitDataRequest.ChunkToPatch, _Mapping]]] = ..., flush_request_id: _Optional[int] = ...) -> None: ...

class NotifyDataSourceStartedRequest(_message.Message):
    __slots__ = ("data_source_id",)
    DATA_SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    data_source_id: int
    def __init__(self, data_source_id: _Optional[int] = ...) -> None: ...

class NotifyDataSourceStoppedRequest(_message.Message):
    __slots__ = ("data_source_id",)
    DATA_SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    data_source_id: int
    def __init__(self, data_source_id: _Optional[int] = ...) -> None: ...

class ActivateTriggersRequest(_message.Message):
    __slots__ = ("trigger_names",)
    TRIGGER_NAMES_FIELD_NUMBER: _ClassVar[int]
    trigger_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, trigger_names: _Optional[_Iterable[str]] = ...) -> None: ...

class GetAsyncCommandResponse(_message.Message):
    __slots__ = ("start_data_source", "stop_data_source", "setup_tracing", "flush", "setup_data_source", "clear_incremental_state")
    class SetupDataSource(_message.Message):
        __slots__ = ("new_instance_id", "config")
        NEW_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
        CONFIG_FIELD_NUMBER: _ClassVar[int]
        new_instance_id: int
        config: bytes
        def __init__(self, new_instance_id: _Optional[int] = ..., config: _Optional[bytes] = ...) -> None: ...
    class StartDataSource(_message.Message):
        __slots__ = ("new_instance_id", "config")
        NEW_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
        CONFIG_FIELD_NUMBER: _ClassVar[int]
        new_instance_id: int
        config: bytes
        def __init__(self, new_instance_id: _Optional[int] = ..., config: _Optional[bytes] = ...) -> None: ...
    class StopDataSource(_message.Message):
        __slots__ = ("instance_id",)
        INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
        instance_id: int
        def __init__(self, instance_id: _Optional[int] = ...) -> None: ...
    class SetupTracing(_message.Message):
        __slots__ = ("shared_buffer_page_size_kb",)
        SHARED_BUFFER_PAGE_SIZE_KB_FIELD_NUMBER: _ClassVar[int]
        shared_buffer_page_size_kb: int
        def __init__(self, shared_buffer_page_size_kb: _Optional[int] = ...) -> None: ...
    class Flush(_message.Message):
        __slots__ = ("data_source_ids", "request_id", "flags")
        DATA_SOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
        REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
        FLAGS_FIELD_NUMBER: _ClassVar[int]
        data_source_ids: _containers.RepeatedScalarFieldContainer[int]
        request_id: int
        flags: int
        def __init__(self, data_source_ids: _Optional[_Iterable[int]] = ..., request_id: _Optional[int] = ..., flags: _Optional[int] = ...) -> None: ...
    class ClearIncrementalState(_message.Message):
        __slots__ = ("data_source_ids",)
        DATA_SOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
        data_source_ids: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, data_source_ids: _Optional[_Iterable[int]] = ...) -> None: ...
    START_DATA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    STOP_DATA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    SETUP_TRACING_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    SETUP_DATA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CLEAR_INCREMENTAL_STATE_FIELD_NUMBER: _ClassVar[int]
    start_data_source: GetAsyncCommandResponse.StartDataSource
    stop_data_source: GetAsyncCommandResponse.StopDataSource
    setup_tracing: GetAsyncCommandResponse.SetupTracing
    flush: GetAsyncCommandResponse.Flush
    setup_data_source: GetAsyncCommandResponse.SetupDataSource
    clear_incremental_state: GetAsyncCommandResponse.ClearIncrementalState
    def __init__(self, start_data_source: _Optional[_Union[GetAsyncCommandResponse.StartDataSource, _Mapping]] = ..., stop_data_source: _Optional[_Union[GetAsyncCommandResponse.StopDataSource, _Mapping]] = ..., setup_tracing: _Optional[_Union[GetAsyncCommandResponse.SetupTracing, _Mapping]] = ..., flush: _Optional[_Union[GetAsyncCommandResponse.Flush, _Mapping]] = ..., setup_data_source: _Optional[_Union[GetAsyncCommandResponse.SetupDataSource, _Mapping]] = ..., clear_incremental_state: _Optional[_Union[GetAsyncCommandResponse.ClearIncrementalState, _Mapping]] = ...) -> None: ...

class EnableTracingRequest(_message.Message):
    __slots__ = ("trace_config", "attach_notification_only")
    TRACE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    ATTACH_NOTIFICATION_ONLY_FIELD_NUMBER: _ClassVar[int]
    trace_config: bytes
    attach_notification_only: bool
    def __init__(self, trace_config: _Optional[bytes] = ..., attach_notification_only: _Optional[bool] = ...) -> None: ...

class EnableTracingResponse(_message.Message):
    __slots__ = ("disabled", "error")
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    disabled: bool
    error: str
    def __init__(self, disabled: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class ReadBuffersResponse(_message.Message):
    __slots__ = ("slices",)
    class Slice(_message.Message):
        __slots__ = ("data", "last_slice_for_packet")
        DATA_FIELD_NUMBER: _ClassVar[int]
        LAST_SLICE_FOR_PACKET_FIELD_NUMBER: _ClassVar[int]
        data: bytes
        last_slice_for_packet: bool
        def __init__(self, data: _Optional[bytes] = ..., last_slice_for_packet: _Optional[bool] = ...) -> None: ...
    SLICES_FIELD_NUMBER: _ClassVar[int]
    slices: _containers.RepeatedCompositeFieldContainer[ReadBuffersResponse.Slice]
    def __init__(self, slices: _Optional[_Iterable[_Union[ReadBuffersResponse.Slice, _Mapping]]] = ...) -> None: ...

class FreeBuffersRequest(_message.Message):
    __slots__ = ("buffer_ids",)
    BUFFER_IDS_FIELD_NUMBER: _ClassVar[int]
    buffer_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, buffer_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ("timeout_ms", "flags")
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    timeout_ms: int
    flags: int
    def __init__(self, timeout_ms: _Optional[int] = ..., flags: _Optional[int] = ...) -> None: ...

class GetTraceStatsResponse(_message.Message):
    __slots__ = ("trace_stats",)
    TRACE_STATS_FIELD_NUMBER: _ClassVar[int]
    trace_stats: bytes
    def __init__(self, trace_stats: _Optional[bytes] = ...) -> None: ...

class ObservableEvents(_message.Message):
    __slots__ = ("instance_state_changes", "all_data_sources_started")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[ObservableEvents.Type]
        TYPE_DATA_SOURCES_INSTANCES: _ClassVar[ObservableEvents.Type]
        TYPE_ALL_DATA_SOURCES_STARTED: _ClassVar[ObservableEvents.Type]
        TYPE_CLONE_TRIGGER_HIT: _ClassVar[ObservableEvents.Type]
    TYPE_UNSPECIFIED: ObservableEvents.Type
    TYPE_DATA_SOURCES_INSTANCES: ObservableEvents.Type
    TYPE_ALL_DATA_SOURCES_STARTED: ObservableEvents.Type
    TYPE_CLONE_TRIGGER_HIT: ObservableEvents.Type
    class DataSourceInstanceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DATA_SOURCE_INSTANCE_STATE_STOPPED: _ClassVar[ObservableEvents.DataSourceInstanceState]
        DATA_SOURCE_INSTANCE_STATE_STARTED: _ClassVar[ObservableEvents.DataSourceInstanceState]
    DATA_SOURCE_INSTANCE_STATE_STOPPED: ObservableEvents.DataSourceInstanceState
    DATA_SOURCE_INSTANCE_STATE_STARTED: ObservableEvents.DataSourceInstanceState
    class DataSourceInstanceStateChange(_message.Message):
        __slots__ = ("producer_name", "data_source_name", "state")
        PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
        DATA_SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
        STATE_FIELD_NUMBER: _ClassVar[int]
        producer_name: str
        data_source_name: str
        state: ObservableEvents.DataSourceInstanceState
        def __init__(self, producer_name: _Optional[str] = ..., data_source_name: _Optional[str] = ..., state: _Optional[_Union[ObservableEvents.DataSourceInstanceState, str]] = ...) -> None: ...
    INSTANCE_STATE_CHANGES_FIELD_NUMBER: _ClassVar[int]
    ALL_DATA_SOURCES_STARTED_FIELD_NUMBER: _ClassVar[int]
    instance_state_changes: _containers.RepeatedCompositeFieldContainer[ObservableEvents.DataSourceInstanceStateChange]
    all_data_sources_started: bool
    def __init__(self, instance_state_changes: _Optional[_Iterable[_Union[ObservableEvents.DataSourceInstanceStateChange, _Mapping]]] = ..., all_data_sources_started: _Optional[bool] = ...) -> None: ...

class ObserveEventsRequest(_message.Message):
    __slots__ = ("events_to_observe",)
    EVENTS_TO_OBSERVE_FIELD_NUMBER: _ClassVar[int]
    events_to_observe: _containers.RepeatedScalarFieldContainer[ObservableEvents.Type]
    def __init__(self, events_to_observe: _Optional[_Iterable[_Union[ObservableEvents.Type, str]]] = ...) -> None: ...

class ObserveEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: ObservableEvents
    def __init__(self, events: _Optional[_Union[ObservableEvents, _Mapping]] = ...) -> None: ...

class QueryServiceStateRequest(_message.Message):
    __slots__ = ("sessions_only",)
    SESSIONS_ONLY_FIELD_NUMBER: _ClassVar[int]
    sessions_only: bool
    def __init__(self, sessions_only: _Optional[bool] = ...) -> None: ...

class QueryServiceStateResponse(_message.Message):
    __slots__ = ("service_state",)
    SERVICE_STATE_FIELD_NUMBER: _ClassVar[int]
    service_state: bytes
    def __init__(self, service_state: _Optional[bytes] = ...) -> None: ...

class TracingServiceCapabilities(_message.Message):
    __slots__ = ("has_query_capabilities", "observable_events", "has_trace_config_output_path", "has_clone_session")
    HAS_QUERY_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    OBSERVABLE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    HAS_TRACE_CONFIG_OUTPUT_PATH_FIELD_NUMBER: _ClassVar[int]
    HAS_CLONE_SESSION_FIELD_NUMBER: _ClassVar[int]
    has_query_capabilities: bool
    observable_events: _containers.RepeatedScalarFieldContainer[ObservableEvents.Type]
    has_trace_config_output_path: bool
    has_clone_session: bool
    def __init__(self, has_query_capabilities: _Optional[bool] = ..., observable_events: _Optional[_Iterable[_Union[ObservableEvents.Type, str]]] = ..., has_trace_config_output_path: _Optional[bool] = ..., has_clone_session: _Optional[bool] = ...) -> None: ...

class QueryCapabilitiesResponse(_message.Message):
    __slots__ = ("capabilities",)
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    capabilities: TracingServiceCapabilities
    def __init__(self, capabilities: _Optional[_Union[TracingServiceCapabilities, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("trace_config",)
    TRACE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    trace_config: bytes
    def __init__(self, trace_config: _Optional[bytes] = ...) -> None: ...

class SaveTraceForBugreportResponse(_message.Message):
    __slots__ = ("success", "msg")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    success: bool
    msg: str
    def __init__(self, success: _Optional[bool] = ..., msg: _Optional[str] = ...) -> None: ...
