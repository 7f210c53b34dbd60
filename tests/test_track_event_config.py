"""CategoryFilter: Perfetto's rules for a session's track_event_config (the
order of TrackEventInternal::IsCategoryEnabled, pinned case by case)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.track_event_config import CategoryFilter

CASES = [
    # (config, category, tags, enabled)
    ({}, "app", (), True),  # nothing matched: enabled
    ({}, "app", ("slow",), False),  # "slow" and "debug" tags off by default
    ({}, "app", ("debug",), False),
    ({}, "disabled-by-default-gpu", (), False),  # the legacy prefix is a "slow" tag
    ({}, "app,disabled-by-default-gpu", (), True),  # a group: any part
    ({}, "disabled-by-default-a,disabled-by-default-b", (), False),
    ({"enabled_categories": ["disabled-by-default-gpu"]}, "disabled-by-default-gpu", (), True),
    ({"disabled_categories": ["*"], "enabled_categories": ["io"]}, "io", (), True),
    ({"disabled_categories": ["*"], "enabled_categories": ["io"]}, "net", (), False),
    ({"disabled_categories": ["*"], "enabled_categories": ["io"]}, "net,io", (), True),
    # Exact names before patterns: an exact disable beats a pattern enable ...
    ({"enabled_categories": ["io.*"], "disabled_categories": ["io.disk"]}, "io.disk", (), False),
    ({"enabled_categories": ["io.*"], "disabled_categories": ["io.disk"]}, "io.net", (), True),
    # ... and an exact enable beats a pattern disable.
    ({"enabled_categories": ["io.disk"], "disabled_categories": ["io.*"]}, "io.disk", (), True),
    ({"enabled_categories": ["io.disk"], "disabled_categories": ["io.*"]}, "io.net", (), False),
    # Patterns before the lone "*".
    ({"enabled_categories": ["*"], "disabled_categories": ["io.*"]}, "io.net", (), False),
    ({"enabled_categories": ["*"], "disabled_categories": ["io.*"]}, "net", (), True),
    # Within a pass: categories before tags, disabled tags before enabled ones.
    ({"enabled_categories": ["*"]}, "app", ("slow",), False),  # "*" matches in the last pass
    ({"disabled_categories": ["io"], "enabled_tags": ["hot"]}, "io", ("hot",), False),
    ({"enabled_categories": ["io"], "disabled_tags": ["hot"]}, "io", ("hot",), True),
    ({"disabled_tags": ["hot"], "enabled_tags": ["hot"]}, "io", ("hot",), False),
    ({"disabled_categories": ["*"], "enabled_tags": ["slow"]}, "app", ("slow",), True),
    ({"disabled_tags": ["h*"], "enabled_tags": ["hot"]}, "io", ("hot",), True),  # exact first
    # Naming tags replaces the defaults.
    ({"enabled_tags": ["slow"]}, "app", ("slow",), True),
    ({"enabled_tags": ["slow"]}, "app", ("debug",), True),
    ({"disabled_tags": ["net"]}, "app", ("slow",), True),
    ({"disabled_tags": ["net"]}, "app", ("net",), False),
    ({"disabled_tags": ["*"]}, "app", ("anything",), False),
    ({"disabled_tags": ["*"]}, "app", (), True),  # no tags: nothing to match
]


@pytest.mark.parametrize("config,category,tags,enabled", CASES)
def test_perfettos_rules(config, category, tags, enabled):
    f = CategoryFilter.from_config(pb.TrackEventConfig(**config))
    assert f.enabled(category, tags) is enabled
    assert f.enabled(category, tags) is enabled  # cached, the same


def test_no_config_is_perfettos_defaults():
    f = CategoryFilter.from_config(None)
    assert f.enabled("app") and not f.enabled("app", ["debug"]) and f.enabled("app", "net")
    assert not f.enabled("app", "slow")  # a single tag as a str


def test_from_a_data_source_config_in_text_format():
    from google.protobuf import text_format

    ds = text_format.Parse(
        'name: "track_event" track_event_config { disabled_categories: "*" '
        'enabled_categories: "io" enabled_categories: "db.*" }',
        pb.DataSourceConfig(),
    )
    f = CategoryFilter.from_config(ds.track_event_config)
    assert [f.enabled(c) for c in ("io", "db.read", "net", "ionet")] == [True, True, False, False]


names = st.sampled_from(["io", "io.disk", "net", "disabled-by-default-gpu", "x"])
tags = st.lists(st.sampled_from(["slow", "debug", "hot", "net"]), max_size=2)
patterns = st.lists(
    st.sampled_from(["*", "io*", "io.disk", "net", "slow", "h*", "hot"]), max_size=2
)


@given(name=names, tags=tags)
def test_by_default_everything_but_slow_and_debug(name, tags):
    slow = {"slow", "debug"} & set(tags) or name.startswith("disabled-by-default-")
    assert CategoryFilter.from_config(None).enabled(name, tags) is (not slow)


@given(
    config=st.fixed_dictionaries(
        {k: patterns for k in
         ("enabled_categories", "disabled_categories", "enabled_tags", "disabled_tags")}
    ),
    a=names,
    b=names,
    tags=tags,
)  # fmt: skip
def test_a_group_is_enabled_when_any_part_is(config, a, b, tags):
    f = CategoryFilter.from_config(pb.TrackEventConfig(**config))
    assert f.enabled(f"{a},{b}", tags) == (f.enabled(a, tags) or f.enabled(b, tags))
