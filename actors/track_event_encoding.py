"""Bytes of Perfetto's TrackEvent protos, built from precomputed tags
(shm.protozero), never with the generated protobuf classes: what
actors/track_event.py concatenates into packets.

Pure functions, values in and bytes out. The field numbers are Perfetto's
(protos/perfetto/trace/track_event/*.proto, interned_data.proto); a test parses
every output with the official schema.

Debug annotations (`annotation`, for a TrackEvent's args) never raise for odd
values: bool -> bool_value; int (or an integer type's value: numpy's) ->
int_value, uint_value beyond int64, its decimal string beyond uint64; float ->
double_value (NaN and infinities too); str -> string_value; None -> "None";
dict -> dict_entries (keys as str, in `name`), list/tuple -> array_values, both
at most MAX_DEPTH deep and MAX_ITEMS wide; anything else -> str(value), or a
placeholder when str() raises. Strings are UTF-8; a lone surrogate becomes "?"
(protobuf strings must be valid UTF-8).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterable
from typing import Any

from shm.protozero import FIXED64, LEN, VARINT, tag, varint

# TracePacket fields.
TIMESTAMP = tag(8, VARINT)
TRACK_EVENT = tag(11, LEN)
INTERNED_DATA = tag(12, LEN)
SEQUENCE_FLAGS = tag(13, VARINT)
TRACK_DESCRIPTOR = tag(60, LEN)
SEQ_INCREMENTAL_STATE_CLEARED = 1
SEQ_NEEDS_INCREMENTAL_STATE = 2
CLEARED = SEQUENCE_FLAGS + varint(SEQ_INCREMENTAL_STATE_CLEARED)
NEEDS_STATE = SEQUENCE_FLAGS + varint(SEQ_NEEDS_INCREMENTAL_STATE)

# TrackEvent fields and types.
TYPE = tag(9, VARINT)
TRACK_UUID = tag(11, VARINT)
CATEGORY_IIDS = tag(3, VARINT)
NAME_IID = tag(10, VARINT)
DEBUG_ANNOTATIONS = tag(4, LEN)
FLOW_IDS = tag(47, FIXED64)
TERMINATING_FLOW_IDS = tag(48, FIXED64)
COUNTER_VALUE = tag(30, VARINT)
DOUBLE_COUNTER_VALUE = tag(44, FIXED64)
LOG_MESSAGE = tag(21, LEN)
SLICE_BEGIN, SLICE_END, INSTANT, COUNTER = 1, 2, 3, 4

# InternedData fields: each entry is {iid 1, name/body 2}.
EVENT_CATEGORIES, EVENT_NAMES, DEBUG_ANNOTATION_NAMES = 1, 2, 3
SOURCE_LOCATIONS, LOG_MESSAGE_BODY = 4, 20
_IID = tag(1, VARINT)
_ENTRY_NAME = tag(2, LEN)

# LogMessage and SourceLocation fields.
_SOURCE_LOCATION_IID = tag(1, VARINT)
_BODY_IID = tag(2, VARINT)
_PRIO = tag(3, VARINT)
_FILE_NAME = tag(2, LEN)
_FUNCTION_NAME = tag(3, LEN)
_LINE_NUMBER = tag(4, VARINT)

# DebugAnnotation fields.
_ANN_NAME_IID = tag(1, VARINT)
_ANN_NAME = tag(10, LEN)
_BOOL = tag(2, VARINT)
_UINT = tag(3, VARINT)
_INT = tag(4, VARINT)
_DOUBLE = tag(5, FIXED64)
_STRING = tag(6, LEN)
_DICT_ENTRIES = tag(11, LEN)
_ARRAY_VALUES = tag(12, LEN)
MAX_DEPTH = 8
MAX_ITEMS = 1000

# TrackDescriptor fields, and those of its Process/Thread/CounterDescriptor.
_UUID = tag(1, VARINT)
_TRACK_NAME = tag(2, LEN)
_PROCESS = tag(3, LEN)
_THREAD = tag(4, LEN)
_PARENT_UUID = tag(5, VARINT)
_COUNTER = tag(8, LEN)
_PID = tag(1, VARINT)
_TID = tag(2, VARINT)
_THREAD_NAME = tag(5, LEN)
_PROCESS_NAME = tag(6, LEN)
_UNIT = tag(3, VARINT)
_UNIT_NAME = tag(6, LEN)
COUNTER_UNITS = {"ns": 1, "count": 2, "bytes": 3}  # CounterDescriptor.Unit

_INT64_MIN, _INT64_END, _UINT64_END = -(1 << 63), 1 << 63, 1 << 64
_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")


def utf8(s: str) -> bytes:
    try:
        return s.encode()
    except UnicodeEncodeError:  # lone surrogates
        return s.encode("utf-8", "replace")


def safe_str(value: object) -> str:
    """str(value), or a placeholder naming its type when str() raises."""
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def field(key: bytes, data: bytes) -> bytes:
    """A length-delimited field: its tag, length and bytes."""
    return key + varint(len(data)) + data


def fixed64(key: bytes, value: int) -> bytes:
    return key + _U64.pack(value)


def double(key: bytes, value: float) -> bytes:
    return key + _F64.pack(value)


# -- packets ---------------------------------------------------------------------------


def event_fields(body: bytes, interned: bytes = b"") -> bytes:
    """A TracePacket's fields after its timestamp: the TrackEvent `body`, the
    InternedData entries it introduces, and SEQ_NEEDS_INCREMENTAL_STATE."""
    if interned:
        return field(TRACK_EVENT, body) + field(INTERNED_DATA, interned) + NEEDS_STATE
    return field(TRACK_EVENT, body) + NEEDS_STATE


def interned_entry(kind: int, iid: int, name: str) -> bytes:
    """One InternedData entry: EventCategory, EventName, DebugAnnotationName or
    LogMessageBody (the same shape: iid 1, name/body 2)."""
    return field(tag(kind, LEN), _IID + varint(iid) + field(_ENTRY_NAME, utf8(name)))


def source_location_entry(iid: int, file: str, function: str, line: int) -> bytes:
    body = _IID + varint(iid) + field(_FILE_NAME, utf8(file))
    body += field(_FUNCTION_NAME, utf8(function)) + _LINE_NUMBER + varint(line & 0xFFFFFFFF)
    return field(tag(SOURCE_LOCATIONS, LEN), body)


def log_message_prefix(location_iid: int, prio: int) -> bytes:
    """A LogMessage's fields but its body_iid (protobuf takes fields in any order):
    the part that stays the same for every record of one source line and level."""
    return _SOURCE_LOCATION_IID + varint(location_iid) + _PRIO + varint(prio)


def log_message(prefix: bytes, body_iid: int) -> bytes:
    """TrackEvent.log_message from log_message_prefix() and the body's iid."""
    return field(LOG_MESSAGE, prefix + _BODY_IID + varint(body_iid))


# -- track descriptors -----------------------------------------------------------------


def process_descriptor(uuid: int, pid: int, name: str) -> bytes:
    process = _PID + varint(pid) + field(_PROCESS_NAME, utf8(name))
    return _UUID + varint(uuid) + field(_PROCESS, process)


def thread_descriptor(uuid: int, parent: int, pid: int, tid: int, name: str) -> bytes:
    thread = _PID + varint(pid) + _TID + varint(tid) + field(_THREAD_NAME, utf8(name))
    return _UUID + varint(uuid) + _PARENT_UUID + varint(parent) + field(_THREAD, thread)


def named_descriptor(uuid: int, parent: int, name: str) -> bytes:
    """A track with a name under `parent` (an async track)."""
    return _UUID + varint(uuid) + _PARENT_UUID + varint(parent) + field(_TRACK_NAME, utf8(name))


def counter_descriptor(uuid: int, parent: int, name: str, unit: str = "") -> bytes:
    """A counter track; "ns", "count" and "bytes" are CounterDescriptor units,
    any other unit its unit_name."""
    code = COUNTER_UNITS.get(unit)
    if code is not None:
        counter = _UNIT + varint(code)
    else:
        counter = field(_UNIT_NAME, utf8(unit)) if unit else b""
    return named_descriptor(uuid, parent, name) + field(_COUNTER, counter)


# -- debug annotations -----------------------------------------------------------------


def annotation(name_iid: int, value: Any) -> bytes:
    """One top-level DebugAnnotation (TrackEvent.debug_annotations entry body)."""
    return _ANN_NAME_IID + varint(name_iid) + annotation_value(value, 0)


def annotation_value(value: Any, depth: int) -> bytes:
    """The value fields of a DebugAnnotation (see the module docstring)."""
    if isinstance(value, str):
        return field(_STRING, utf8(value))
    if isinstance(value, bool):
        return _BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return _int_value(value)
    if isinstance(value, float):
        return double(_DOUBLE, value)
    if value is None:
        return field(_STRING, b"None")
    if depth < MAX_DEPTH:
        if isinstance(value, dict):
            return _dict_entries(value, depth + 1)
        if isinstance(value, (list, tuple)):
            return _array_values(value, depth + 1)
    if hasattr(type(value), "__index__"):  # numpy integers and the like
        try:
            return _int_value(operator.index(value))
        except Exception:
            pass
    return field(_STRING, utf8(safe_str(value)))


def _int_value(value: int) -> bytes:
    if _INT64_MIN <= value < _INT64_END:
        return _INT + varint(value)
    if _INT64_END <= value < _UINT64_END:
        return _UINT + varint(value)
    return field(_STRING, str(value).encode())


def _dict_entries(value: dict, depth: int) -> bytes:
    out = []
    for key, item in _first(value.items()):
        entry = field(_ANN_NAME, utf8(key if isinstance(key, str) else safe_str(key)))
        out.append(field(_DICT_ENTRIES, entry + annotation_value(item, depth)))
    return b"".join(out)


def _array_values(value: list | tuple, depth: int) -> bytes:
    return b"".join(field(_ARRAY_VALUES, annotation_value(v, depth)) for v in _first(value))


def _first(items: Iterable) -> list:
    """At most MAX_ITEMS items, taken in one go (a dict another thread mutates
    raises here rather than halfway through the bytes)."""
    out: list = []
    for item in items:
        if len(out) == MAX_ITEMS:
            break
        out.append(item)
    return out
