"""The producer's own DataSourceConfig schema (protos/data_source_config.proto):
the same wire format as Perfetto's for every field it names, and nothing lost
for the fields it does not."""

from __future__ import annotations

from google.protobuf import text_format
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.producer import perfetto_config
from actors.track_event_config import CategoryFilter
from protos import data_source_config_pb2 as dsc


def _pairs(ours, theirs):
    for field in ours.DESCRIPTOR.fields:
        yield field, theirs.DESCRIPTOR.fields_by_number.get(field.number)


def _check(ours, theirs) -> None:
    for field, perfetto in _pairs(ours, theirs):
        assert perfetto is not None, f"{ours.DESCRIPTOR.name}.{field.name}: not Perfetto's"
        assert field.name == perfetto.name, (field.name, perfetto.name)
        enum = perfetto.type == perfetto.TYPE_ENUM and field.type == field.TYPE_INT32
        assert field.type == perfetto.type or enum, field.name  # an enum travels as a varint
        assert field.is_repeated == perfetto.is_repeated, field.name
        if field.message_type is not None:
            _check(getattr(ours(), field.name), getattr(theirs(), field.name))


def test_every_field_has_perfettos_number_name_and_type():
    _check(dsc.DataSourceConfig, pb.DataSourceConfig)


CONFIG = """
name: "track_event" target_buffer: 3 trace_duration_ms: 500 tracing_session_id: 77
stop_timeout_ms: 400 buffer_exhausted_policy: BUFFER_EXHAUSTED_STALL_THEN_DROP
track_event_config { disabled_categories: "*" enabled_categories: "io" enabled_tags: "hot" }
for_testing { message_count: 3 max_messages_per_second: 10 seed: 9 message_size: 12 }
chrome_config { trace_config: "x" }
"""


def test_a_perfetto_config_decodes_with_our_schema_and_back():
    theirs = text_format.Parse(CONFIG, pb.DataSourceConfig())
    ours = dsc.DataSourceConfig.FromString(theirs.SerializeToString())
    assert (ours.name, ours.target_buffer, ours.trace_duration_ms) == ("track_event", 3, 500)
    assert (ours.tracing_session_id, ours.stop_timeout_ms) == (77, 400)
    assert ours.buffer_exhausted_policy == pb.DataSourceConfig.BUFFER_EXHAUSTED_STALL_THEN_DROP
    assert ours.for_testing.message_count == 3 and ours.for_testing.message_size == 12
    assert ours.HasField("track_event_config") and not dsc.DataSourceConfig().HasField(
        "track_event_config"
    )
    f = CategoryFilter.from_config(ours.track_event_config)
    assert [f.enabled(c) for c in ("io", "net")] == [True, False]
    assert f.enabled("net", ("hot",))
    assert perfetto_config(ours) == theirs  # chrome_config included: kept as unknown
