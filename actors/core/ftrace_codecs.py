"""How one kernel event's record becomes an FtraceEvent message (Perfetto's
proto_translation_table, compiled once per event format).

`compile_codec(fmt, proto)` matches the record's fields by name with the fields
of the event's message in Perfetto's schema (actors.core.ftrace_schema) and
keeps those with a translation Perfetto also makes::

    kernel field (ftrace_format.FieldKind)         proto field type
    signed int, pid_t, common_pid (<= 4 bytes)  -> int32      (<= 8 bytes -> int64)
    unsigned int, bool (<= 4 bytes)             -> uint32     (any, ino_t, dev_t, void * -> uint64)
    char[N], char[] (to the record's end),
    __data_loc char[]                           -> string     (cut at the first NUL)
    __data_loc u8[]                             -> bytes

Kernel fields without such a counterpart are left out, as Perfetto does (char *
pointers into kernel memory, arrays of numbers). An event Perfetto has no
message for (`proto` None) becomes a GenericFtraceEvent: its name, then every
non-common field as {name, int_value | uint_value | str_value}.

All fixed-size fields are read by one precompiled struct.Struct (fields that
overlap an earlier one are dropped); `encode` never reads outside
[start, end) of the record it is given and reports a __data_loc that points
outside it (the field is left out, the event kept).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from actors.core.ftrace_format import EventFormat, Field, FieldKind, field_kind
from actors.core.ftrace_schema import (
    EVENT_GENERIC,
    GENERIC_EVENT_NAME,
    GENERIC_FIELD,
    GENERIC_FIELD_INT,
    GENERIC_FIELD_NAME,
    GENERIC_FIELD_STR,
    GENERIC_FIELD_UINT,
    TYPE_BYTES,
    TYPE_INT32,
    TYPE_INT64,
    TYPE_STRING,
    TYPE_UINT32,
    TYPE_UINT64,
    ProtoEvent,
)
from shm.protozero import LEN, VARINT, tag, varint

# ops: how one field's value becomes bytes
NUM = 0  # varint of the unpacked int (negative: 10 bytes, as protozero sign-extends)
FIXED_STR = 1  # the unpacked char[N], cut at NUL
TAIL_STR = 2  # from the field's offset to the record's end, cut at NUL
LOC_STR = 3  # __data_loc: the unpacked u32 is length << 16 | offset
LOC_BYTES = 4
DEV = 5  # kernel dev_t -> userspace dev_t

_SIGNED = {FieldKind.INT, FieldKind.PID, FieldKind.COMMON_PID}
_UNSIGNED = {FieldKind.UINT, FieldKind.BOOL, FieldKind.INODE, FieldKind.DEV, FieldKind.SYM_ADDR}
_STRINGS = {
    FieldKind.FIXED_CSTRING: FIXED_STR,
    FieldKind.CSTRING: TAIL_STR,
    FieldKind.DATA_LOC: LOC_STR,
}
_INT_CODES = {(1, True): "b", (1, False): "B", (2, True): "h", (2, False): "H",
              (4, True): "i", (4, False): "I", (8, True): "q", (8, False): "Q"}  # fmt: skip


@dataclass(frozen=True)
class Op:
    kind: int  # NUM, FIXED_STR, ...
    prefix: bytes  # the proto tag; for a generic event, the tag of the value inside its Field
    index: int  # position in the unpacked tuple, or for TAIL_STR the offset in the record
    wrap: bytes = b""  # generic events: the encoded Field.name that goes before the value


@dataclass(frozen=True)
class EventCodec:
    fmt: EventFormat
    head: bytes  # tag of the FtraceEvent field holding this event's message
    size: int  # record bytes the fixed fields need (a shorter record is invalid)
    unpack: Callable[[bytes, int], tuple]
    ops: tuple[tuple[int, bytes, int, bytes], ...]  # Op fields, as tuples for the hot loop
    pid_index: int  # common_pid in the unpacked tuple, -1 if the format has none
    pid_fields: tuple[int, ...]  # pid_t fields in the unpacked tuple (Bundle.pids)
    generic: bool
    name_prefix: bytes  # generic: the encoded event_name, else b""
    index: dict[str, int]  # fixed field name -> its position in the unpacked tuple


def compile_codec(fmt: EventFormat, proto: ProtoEvent | None, head_number: int) -> EventCodec:
    """The codec of one event; head_number is its FtraceEvent field (EVENT_GENERIC if none)."""
    fixed = _fixed_fields(fmt.fields)
    unpack_fmt, index = _struct_format(fixed)
    ops, pid_fields = [], []
    for f in fmt.fields:
        if f.name.startswith("common_"):
            continue
        op = _generic_op(f, index) if proto is None else _proto_op(f, proto, index)
        if op is not None:
            ops.append((op.kind, op.prefix, op.index, op.wrap))
        if field_kind(f) is FieldKind.PID and f.name in index:
            pid_fields.append(index[f.name])
    size = max((f.offset + f.size for f in fixed), default=2)
    name_prefix = b""
    if proto is None:
        name = fmt.name.encode()
        name_prefix = tag(GENERIC_EVENT_NAME, LEN) + varint(len(name)) + name
    return EventCodec(
        fmt, tag(head_number if proto else EVENT_GENERIC, LEN), size,
        struct.Struct(unpack_fmt).unpack_from, tuple(ops), index.get("common_pid", -1),
        tuple(pid_fields), proto is None, name_prefix, index,
    )  # fmt: skip


def _fixed_fields(fields: tuple[Field, ...]) -> list[Field]:
    """The fields read by the struct: fixed size, sorted, none overlapping another."""
    out: list[Field] = []
    for f in sorted(fields, key=lambda f: f.offset):
        kind = field_kind(f)
        if kind in (FieldKind.CSTRING, FieldKind.STRING_PTR, FieldKind.UNSUPPORTED):
            continue
        if out and f.offset < out[-1].offset + out[-1].size:
            continue
        out.append(f)
    return out


def _struct_format(fixed: list[Field]) -> tuple[str, dict[str, int]]:
    parts, pos = ["<"], 0
    index: dict[str, int] = {}
    for f in fixed:
        if f.offset > pos:
            parts.append(f"{f.offset - pos}x")
        kind = field_kind(f)
        if kind is FieldKind.FIXED_CSTRING:
            parts.append(f"{f.size}s")
        elif kind in (FieldKind.DATA_LOC, FieldKind.DATA_LOC_BYTES):
            parts.append("I")
        else:
            parts.append(_INT_CODES[(f.size, kind in _SIGNED)])
        index[f.name] = len(index)
        pos = f.offset + f.size
    return "".join(parts), index


def _proto_op(f: Field, proto: ProtoEvent, index: dict[str, int]) -> Op | None:
    pf = proto.fields.get(f.name)
    if pf is None or pf.repeated:
        return None
    kind = field_kind(f)
    str_op = _STRINGS.get(kind)
    if str_op is not None:
        ok = pf.type == TYPE_STRING
    elif kind is FieldKind.DATA_LOC_BYTES:
        str_op, ok = LOC_BYTES, pf.type == TYPE_BYTES
    else:
        ok = _number_fits(kind, f.size, pf.type)
    if not ok:
        return None
    return _op(f, kind, str_op, tag(pf.number, LEN if str_op is not None else VARINT), index)


def _number_fits(kind: FieldKind, size: int, proto_type: int) -> bool:
    if kind in _SIGNED:
        return proto_type == TYPE_INT64 or (proto_type == TYPE_INT32 and size <= 4)
    if kind in (FieldKind.UINT, FieldKind.BOOL):
        return proto_type == TYPE_UINT64 or (proto_type == TYPE_UINT32 and size <= 4)
    return kind in _UNSIGNED and proto_type == TYPE_UINT64


def _generic_op(f: Field, index: dict[str, int]) -> Op | None:
    kind = field_kind(f)
    str_op = _STRINGS.get(kind)
    if str_op is not None:
        value_tag = tag(GENERIC_FIELD_STR, LEN)
    elif kind in _SIGNED:
        value_tag = tag(GENERIC_FIELD_INT, VARINT)
    elif kind in _UNSIGNED:
        value_tag = tag(GENERIC_FIELD_UINT, VARINT)
    else:
        return None
    name = f.name.encode()
    wrap = tag(GENERIC_FIELD_NAME, LEN) + varint(len(name)) + name
    op = _op(f, kind, str_op, value_tag, index)
    return None if op is None else Op(op.kind, op.prefix, op.index, wrap)


def _op(
    f: Field, kind: FieldKind, str_op: int | None, prefix: bytes, index: dict[str, int]
) -> Op | None:
    if str_op == TAIL_STR:
        return Op(TAIL_STR, prefix, f.offset)
    if f.name not in index:  # overlapped an earlier field
        return None
    if str_op is not None:
        return Op(str_op, prefix, index[f.name])
    return Op(DEV if kind is FieldKind.DEV else NUM, prefix, index[f.name])


_GENERIC_FIELD = tag(GENERIC_FIELD, LEN)
_MINOR_BITS = 20


def encode(
    codec: EventCodec, values: tuple, rec: bytes, start: int, end: int
) -> tuple[bytes, bool]:
    """The body of the event's message (without codec.head) from its unpacked
    values and the record rec[start:end]; and False if a field was left out
    because it pointed outside the record."""
    out = [codec.name_prefix] if codec.generic else []
    ok = True
    for kind, prefix, i, wrap in codec.ops:
        if kind == NUM:
            b = prefix + varint(values[i])
        elif kind == FIXED_STR:
            s = values[i]
            n = s.find(0)
            if n >= 0:
                s = s[:n]
            b = prefix + varint(len(s)) + s
        elif kind == TAIL_STR:
            s = rec[start + i : end]
            n = s.find(0)
            if n >= 0:
                s = s[:n]
            b = prefix + varint(len(s)) + s
        elif kind == DEV:
            b = prefix + varint(_user_dev(values[i]))
        else:
            loc = values[i]
            first, last = start + (loc & 0xFFFF), start + (loc & 0xFFFF) + (loc >> 16)
            if last > end:
                ok = False
                continue
            s = rec[first:last]
            n = s.find(0) if kind == LOC_STR else -1
            if n >= 0:
                s = s[:n]
            b = prefix + varint(len(s)) + s
        if wrap:
            b = _GENERIC_FIELD + varint(len(wrap) + len(b)) + wrap + b
        out.append(b)
    return b"".join(out), ok


def _user_dev(kdev: int) -> int:
    """The kernel's dev_t (major << 20 | minor) as glibc's makedev(major, minor),
    the form Perfetto writes (and userspace stat() shows)."""
    major, minor = kdev >> _MINOR_BITS, kdev & ((1 << _MINOR_BITS) - 1)
    return (
        (minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFF) << 12) | ((major & ~0xFFF) << 32)
    )
