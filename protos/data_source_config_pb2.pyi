from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrackEventConfig(_message.Message):
    __slots__ = ("disabled_categories", "enabled_categories", "disabled_tags", "enabled_tags")
    DISABLED_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    ENABLED_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    DISABLED_TAGS_FIELD_NUMBER: _ClassVar[int]
    ENABLED_TAGS_FIELD_NUMBER: _ClassVar[int]
    disabled_categories: _containers.RepeatedScalarFieldContainer[str]
    enabled_categories: _containers.RepeatedScalarFieldContainer[str]
    disabled_tags: _containers.RepeatedScalarFieldContainer[str]
    enabled_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, disabled_categories: _Optional[_Iterable[str]] = ..., enabled_categories: _Optional[_Iterable[str]] = ..., disabled_tags: _Optional[_Iterable[str]] = ..., enabled_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class TestConfig(_message.Message):
    __slots__ = ("message_count", "max_messages_per_second", "seed", "message_size", "send_batch_on_register")
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEND_BATCH_ON_REGISTER_FIELD_NUMBER: _ClassVar[int]
    message_count: int
    max_messages_per_second: int
    seed: int
    message_size: int
    send_batch_on_register: bool
    def __init__(self, message_count: _Optional[int] = ..., max_messages_per_second: _Optional[int] = ..., seed: _Optional[int] = ..., message_size: _Optional[int] = ..., send_batch_on_register: _Optional[bool] = ...) -> None: ...

class DataSourceConfig(_message.Message):
    __slots__ = ("name", "target_buffer", "trace_duration_ms", "tracing_session_id", "enable_extra_guardrails", "stop_timeout_ms", "buffer_exhausted_policy", "target_buffer_name", "track_event_config", "for_testing")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_BUFFER_FIELD_NUMBER: _ClassVar[int]
    TRACE_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TRACING_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ENABLE_EXTRA_GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    STOP_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    BUFFER_EXHAUSTED_POLICY_FIELD_NUMBER: _ClassVar[int]
    TARGET_BUFFER_NAME_FIELD_NUMBER: _ClassVar[int]
    TRACK_EVENT_CONFIG_FIELD_NUMBER: _ClassVar[int]
    FOR_TESTING_FIELD_NUMBER: _ClassVar[int]
    name: str
    target_buffer: int
    trace_duration_ms: int
    tracing_session_id: int
    enable_extra_guardrails: bool
    stop_timeout_ms: int
    buffer_exhausted_policy: int
    target_buffer_name: str
    track_event_config: TrackEventConfig
    for_testing: TestConfig
    def __init__(self, name: _Optional[str] = ..., target_buffer: _Optional[int] = ..., trace_duration_ms: _Optional[int] = ..., tracing_session_id: _Optional[int] = ..., enable_extra_guardrails: _Optional[bool] = ..., stop_timeout_ms: _Optional[int] = ..., buffer_exhausted_policy: _Optional[int] = ..., target_buffer_name: _Optional[str] = ..., track_event_config: _Optional[_Union[TrackEventConfig, _Mapping]] = ..., for_testing: _Optional[_Union[TestConfig, _Mapping]] = ...) -> None: ...
