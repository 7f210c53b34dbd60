"""The kernel's own description of ftrace records: event format files and the
ring-buffer page header (tracefs ``events/GROUP/NAME/format``, ``events/header_page``).

An event format file names each field of one event's binary record::

    name: sched_switch
    ID: 372
    format:
        field:unsigned short common_type;  offset:0;  size:2;  signed:0;
        field:int common_pid;  offset:4;  size:4;  signed:1;
                                          (a blank line ends the common_* fields)
        field:char prev_comm[16];  offset:8;  size:16;  signed:0;
        field:__data_loc char[] name;  offset:12;  size:4;  signed:0;
    print fmt: ...

(the kernel separates the parts of a field line with tabs).
`parse_format(text, group)` turns it into an `EventFormat` (common fields
included, in file order); `Field.type` is the declaration without the field
name ("char[16]", "__data_loc char[]", "pid_t"). `field_kind(field)` says how
a field's bytes are read, as Perfetto's proto_translation_table infers it
(InferFtraceType): the decoder in actors.core.ftrace_encode dispatches on it.

``events/header_page`` describes each page of ``per_cpu/cpuN/trace_pipe_raw``::

    field: u64 timestamp;     offset:0;  size:8;  signed:0;
    field: local_t commit;    offset:8;  size:8;  signed:1;   (4 on 32-bit kernels)
    field: int overwrite;     offset:8;  size:1;  signed:1;
    field: char data;         offset:16; size:4080; signed:0;

`parse_header_page` keeps where the timestamp, the commit word and the data
start (actors.core.ftrace_pages reads the records). Input is text the kernel
wrote; anything that does not look like it raises ValueError, never more.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

_FIELD_LINE = re.compile(
    r"^\s*field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"(?:\s*signed:(?P<signed>\d+);)?"
)
# "unsigned long args[6]" -> type "unsigned long", name "args", array "[6]".
_DECL = re.compile(
    r"^(?P<type>.*?)\s*\b(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<array>\[[^\]]*\])?\s*$"
)
_MAX_RECORD = 1 << 16  # offsets and sizes live in a page (u16 in the kernel)


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # the declaration without the name: "char[16]", "pid_t", "__data_loc char[]"
    offset: int  # from the start of the record (common_type is at 0)
    size: int  # 0 for a variable-length "char buf[]" running to the record's end
    signed: bool


@dataclass(frozen=True)
class EventFormat:
    group: str
    name: str
    id: int  # the record's common_type
    fields: tuple[Field, ...]  # common_* first, as in the file

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None


def parse_field(line: str) -> Field | None:
    """The Field of one "field:..." line; None if the line is not one."""
    m = _FIELD_LINE.match(line)
    if m is None:
        return None
    decl = _DECL.match(m["decl"].strip())
    if decl is None or not decl["type"]:
        raise ValueError(f"cannot read the field declaration {m['decl']!r}")
    offset, size = int(m["offset"]), int(m["size"])
    if offset >= _MAX_RECORD or size >= _MAX_RECORD:
        raise ValueError(f"field {decl['name']}: offset {offset} size {size} beyond a page")
    type_ = decl["type"].strip() + (decl["array"] or "")
    return Field(decl["name"], type_, offset, size, m["signed"] == "1")


def parse_format(text: str, group: str) -> EventFormat:
    """An event's format file (events/GROUP/NAME/format) as an EventFormat."""
    name = event_id = None
    fields: list[Field] = []
    for line in text.splitlines():
        if line.startswith("name:"):
            name = line[5:].strip()
        elif line.startswith("ID:"):
            event_id = _int(line[3:], "ID")
        elif line.startswith("print fmt:"):
            break
        else:
            field = parse_field(line)
            if field is not None:
                fields.append(field)
    if not name or event_id is None or not fields:
        raise ValueError(f"not an ftrace format file (group {group!r}): name, ID or fields missing")
    if not 0 < event_id < 0x10000:  # common_type is an unsigned short
        raise ValueError(f"{group}/{name}: event ID {event_id} is not a u16")
    return EventFormat(group, name, event_id, tuple(fields))


@dataclass(frozen=True)
class PageHeader:
    timestamp_offset: int  # u64: the time of the page's first record
    commit_offset: int  # local_t: data length in the low 27 bits, loss flags at 30, 31
    commit_size: int  # 8 on 64-bit kernels, 4 on 32-bit ones
    data_offset: int  # where the first record starts


def parse_header_page(text: str) -> PageHeader:
    """events/header_page as a PageHeader."""
    by_name = {}
    for line in text.splitlines():
        field = parse_field(line)
        if field is not None:
            by_name[field.name] = field
    try:
        ts, commit, data = by_name["timestamp"], by_name["commit"], by_name["data"]
    except KeyError as missing:
        raise ValueError(f"header_page lacks the field {missing}") from None
    if ts.size != 8 or commit.size not in (4, 8) or data.offset < commit.offset + commit.size:
        raise ValueError(f"header_page has an unexpected layout: {ts}, {commit}, {data}")
    return PageHeader(ts.offset, commit.offset, commit.size, data.offset)


class FieldKind(enum.Enum):
    """How a field's bytes are read (Perfetto's FtraceFieldType, grouped)."""

    INT = "int"  # signed integer, 1/2/4/8 bytes
    UINT = "uint"  # unsigned integer, 1/2/4/8 bytes
    BOOL = "bool"
    PID = "pid"  # pid_t: an int naming a task (reported in Bundle.pids)
    COMMON_PID = "common_pid"
    INODE = "inode"  # ino_t, read as unsigned
    DEV = "dev"  # dev_t in the kernel's encoding (major << 20 | minor)
    SYM_ADDR = "sym_addr"  # void *: a kernel address, kept as a number
    FIXED_CSTRING = "fixed_cstring"  # char name[N]: NUL-terminated within N bytes
    CSTRING = "cstring"  # char name[] of size 0: runs to the end of the record
    DATA_LOC = "data_loc"  # __data_loc char[]: u32 (length << 16 | offset in the record)
    DATA_LOC_BYTES = "data_loc_bytes"  # __data_loc u8[]
    STRING_PTR = "string_ptr"  # char * into kernel memory: not readable from here
    UNSUPPORTED = "unsupported"  # arrays of numbers and anything else


_INT_SIZES = (1, 2, 4, 8)


def field_kind(field: Field) -> FieldKind:
    """The FieldKind of a field, with the order of Perfetto's InferFtraceType."""
    t, size = field.type, field.size
    if t.startswith("__data_loc "):
        if size != 4:
            return FieldKind.UNSUPPORTED
        if re.match(r"__data_loc (u8|__u8|unsigned char)\[\]", t):
            return FieldKind.DATA_LOC_BYTES
        return FieldKind.DATA_LOC
    if "*" in t:
        if t.startswith("char") or t.startswith("const char"):
            return FieldKind.STRING_PTR
        return (
            FieldKind.SYM_ADDR if t.startswith("void") and size in (4, 8) else FieldKind.UNSUPPORTED
        )
    if t.startswith("char[") and t != "char[]":
        return FieldKind.FIXED_CSTRING
    if t.startswith("char") and size == 0:
        return FieldKind.CSTRING
    if "[" in t or size not in _INT_SIZES:
        return FieldKind.UNSUPPORTED
    return _scalar_kind(field)


def _scalar_kind(field: Field) -> FieldKind:
    t = field.type
    if t == "bool":
        return FieldKind.BOOL
    if t == "ino_t":
        return FieldKind.INODE
    if t == "dev_t" and field.size in (4, 8):
        return FieldKind.DEV
    if t == "pid_t" and field.size == 4:
        return FieldKind.PID
    if field.name == "common_pid" and field.size == 4:
        return FieldKind.COMMON_PID
    return FieldKind.INT if field.signed else FieldKind.UINT


def _int(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{what}: {text.strip()!r} is not a number") from None
