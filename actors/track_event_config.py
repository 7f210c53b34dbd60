"""Which categories a session wants: Perfetto's rules for a track_event data
source's TrackEventConfig (DataSourceConfig.track_event_config, field 113), as
TrackEventInternal::IsCategoryEnabled applies them (google/perfetto,
src/tracing/internal/track_event_internal.cc).

A pattern is a name, or a prefix ending in "*" ("io.*"), or "*" alone. Three
passes, each asking in this order and stopping at the first answer:

    pass:  1 exact names   2 "prefix*" patterns   3 the "*" wildcard
           enabled_categories  matches -> enabled
           disabled_categories matches -> disabled
           disabled_tags       matches a tag -> disabled  (when disabled_tags is
                               empty and enabled_tags too: "slow" and "debug")
           enabled_tags        matches a tag -> enabled
    nothing matched in any pass -> enabled

A category named "disabled-by-default-..." carries the tag "slow" (Perfetto
gives legacy categories of that prefix the tag), so it is off unless asked for.
"a,b" (a group, as the SDK's category="a,b") is enabled when any part is.
Answers are cached per (category, tags): the SDK may ask on every event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SLOW_TAG = "slow"
DEBUG_TAG = "debug"
LEGACY_SLOW_PREFIX = "disabled-by-default-"
_DEFAULT_DISABLED_TAGS = (SLOW_TAG, DEBUG_TAG)
_EXACT, _PATTERN, _WILDCARD = range(3)
_MAX_CACHED = 4096


def _matches(pattern: str, name: str, match: int) -> bool:
    """NameMatchesPattern: only a trailing "*" is a wildcard."""
    star = pattern.find("*")
    if star < 0:
        return name == pattern
    if star == 0:
        return match == _WILDCARD
    return match == _PATTERN and name[:star] == pattern[:star]


def _any(patterns: Sequence[str], names: Sequence[str], match: int) -> bool:
    return any(_matches(p, n, match) for p in patterns for n in names)


class CategoryFilter:
    """The categories one session's track_event_config enables (see the module
    docstring). Immutable but for its cache; any thread may ask."""

    def __init__(
        self,
        enabled_categories: Sequence[str] = (),
        disabled_categories: Sequence[str] = (),
        enabled_tags: Sequence[str] = (),
        disabled_tags: Sequence[str] = (),
    ) -> None:
        self.enabled_categories = tuple(enabled_categories)
        self.disabled_categories = tuple(disabled_categories)
        self.enabled_tags = tuple(enabled_tags)
        if disabled_tags:
            self.disabled_tags = tuple(disabled_tags)
        else:  # Perfetto's defaults, unless the config names tags of its own
            self.disabled_tags = () if enabled_tags else _DEFAULT_DISABLED_TAGS
        self._cache: dict[tuple[str, tuple[str, ...]], bool] = {}

    @classmethod
    def from_config(cls, config: Any) -> CategoryFilter:
        """From a TrackEventConfig (protos/data_source_config.proto's, Perfetto's,
        or anything with its four repeated fields); None: Perfetto's defaults."""
        if config is None:
            return cls()
        return cls(
            tuple(getattr(config, "enabled_categories", ())),
            tuple(getattr(config, "disabled_categories", ())),
            tuple(getattr(config, "enabled_tags", ())),
            tuple(getattr(config, "disabled_tags", ())),
        )

    def enabled(self, category: str, tags: Sequence[str] = ()) -> bool:
        """Whether events of `category` (with the tags its definition gives it)
        are recorded. "a,b": when any part is."""
        key = (category, (tags,) if isinstance(tags, str) else tuple(tags))
        answer = self._cache.get(key)
        if answer is None:
            name = category if isinstance(category, str) else str(category)
            answer = any(self._single(part, key[1]) for part in name.split(","))
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = answer
        return answer

    def _single(self, name: str, tags: tuple[str, ...]) -> bool:
        if name.startswith(LEGACY_SLOW_PREFIX) and SLOW_TAG not in tags:
            tags += (SLOW_TAG,)
        names = (name,)
        for match in (_EXACT, _PATTERN, _WILDCARD):
            if _any(self.enabled_categories, names, match):
                return True
            if _any(self.disabled_categories, names, match):
                return False
            if _any(self.disabled_tags, tags, match):
                return False
            if _any(self.enabled_tags, tags, match):
                return True
        return True
