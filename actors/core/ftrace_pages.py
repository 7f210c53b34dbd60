"""Records in one page of a kernel ring buffer (``per_cpu/cpuN/trace_pipe_raw``).

A read of trace_pipe_raw returns whole pages (4096 bytes here), each laid out as
events/header_page says (actors.core.ftrace_format.PageHeader)::

    | u64 timestamp | commit (local_t) | record | record | ... | (lost count) | junk |
                     bits 0..26: bytes of records after the header
                     bit 31 RB_MISSED_EVENTS: events were lost before this page
                     bit 30 RB_MISSED_STORED: their count is stored right after the
                            records, as a commit-sized unsigned word

Each record starts with a u32 event header, ``type_len:5 | time_delta:27`` (the
ring buffer's "compressed entry header", events/header_event)::

    type_len 1..28  data record of 4*type_len bytes after the header
    type_len 0      data record; its length (counting itself) in the next u32
    type_len 29     padding / discarded record; length (counting itself) in the next u32
    type_len 30     time extend: timestamp += time_delta + (next u32 << 27)
    type_len 31     absolute timestamp: time_delta + (next u32 << 27)

A data record's timestamp is the page's plus the time_delta of every header up to
and including its own. Data records start with the event's u16 common_type (its
ID in the format files); the rest is the event's fields.

`page_records` walks one untrusted page as Perfetto's cpu_reader.cc does
(ParsePageHeader, ParsePagePayload): it never raises; where the bytes contradict
the layout it stops and names the problem with Perfetto's FtraceParseStatus
number, keeping the records read before it. Padding adds no time (the kernel's
reader skips it; Perfetto adds its time_delta, 1 ns for a discarded record).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from actors.core.ftrace_format import PageHeader

TYPE_LEN_MAX = 28
TYPE_PADDING = 29
TYPE_TIME_EXTEND = 30
TYPE_TIME_STAMP = 31
TYPE_LEN_MASK = 0x1F
TIME_DELTA_SHIFT = 5

DATA_SIZE_MASK = (1 << 27) - 1  # the kernel never names it; trace-cmd's and Perfetto's choice
RB_MISSED_EVENTS = 1 << 31
RB_MISSED_STORED = 1 << 30

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class ParseStatus:
    """Perfetto's FtraceParseStatus numbers (protos/perfetto/trace/ftrace/ftrace_stats.proto)."""

    OK = 1
    INVALID_PAGE_HEADER = 4
    SHORT_EVENT_HEADER = 5
    NULL_PADDING = 6
    SHORT_PADDING_LENGTH = 7
    INVALID_PADDING_LENGTH = 8
    SHORT_TIME_EXTEND = 9
    SHORT_TIME_STAMP = 10
    SHORT_DATA_LENGTH = 11
    ZERO_DATA_LENGTH = 12
    INVALID_DATA_LENGTH = 13
    SHORT_EVENT_ID = 14
    END_OVERFLOW = 15
    SHORT_COMPACT_EVENT = 16
    INVALID_EVENT = 17


@dataclass
class PageRecords:
    """What one page holds: its data records as (timestamp, start, end) offsets
    into the page (end exclusive; start is where common_type is)."""

    timestamp: int  # the page header's: where an error in it is reported
    records: list[tuple[int, int, int]] = field(default_factory=list)
    lost: bool = False  # RB_MISSED_EVENTS
    lost_count: int = 0  # the stored count when RB_MISSED_STORED, else 0
    status: int = ParseStatus.OK  # where parsing stopped, if not OK


def page_records(page_untrusted: bytes, header: PageHeader) -> PageRecords:
    """Walk one page; never raises (see the module docstring)."""
    size = len(page_untrusted)
    data = header.data_offset
    if size < data:
        return PageRecords(0, status=ParseStatus.INVALID_PAGE_HEADER)
    (timestamp,) = _U64.unpack_from(page_untrusted, header.timestamp_offset)
    # Only the low 32 bits carry meaning; the kernel sign-extends bit 31 into the rest.
    (commit,) = _U32.unpack_from(page_untrusted, header.commit_offset)
    length = commit & DATA_SIZE_MASK
    page = PageRecords(timestamp, lost=bool(commit & RB_MISSED_EVENTS))
    end = data + length
    if length == 0 or end > size:
        page.status = ParseStatus.INVALID_PAGE_HEADER
        return page
    if commit & RB_MISSED_STORED and end + header.commit_size <= size:
        page.lost_count = int.from_bytes(page_untrusted[end : end + header.commit_size], "little")
    page.status = _walk(page_untrusted, data, end, timestamp, page.records)
    return page


def _walk(page: bytes, pos: int, end: int, ts: int, out: list[tuple[int, int, int]]) -> int:
    """Append the data records between pos and end to out; the ParseStatus where it stopped."""
    unpack_u32 = _U32.unpack_from
    append = out.append
    while pos < end:
        if pos + 4 > end:
            return ParseStatus.SHORT_EVENT_HEADER
        (word,) = unpack_u32(page, pos)
        pos += 4
        type_len = word & TYPE_LEN_MASK
        delta = word >> TIME_DELTA_SHIFT
        if 0 < type_len <= TYPE_LEN_MAX:
            ts += delta
            nxt = pos + 4 * type_len
            if nxt > end:
                return ParseStatus.END_OVERFLOW
        elif type_len == 0:
            ts += delta
            if pos + 4 > end:
                return ParseStatus.SHORT_DATA_LENGTH
            (length,) = unpack_u32(page, pos)
            if length == 0:
                return ParseStatus.ZERO_DATA_LENGTH
            if length < 4:
                return ParseStatus.INVALID_DATA_LENGTH
            pos += 4
            nxt = pos + length - 4
            if nxt > end:
                return ParseStatus.END_OVERFLOW
        else:
            if pos + 4 > end:
                return _SHORT_ARRAY[type_len]
            (array,) = unpack_u32(page, pos)
            pos += 4
            if type_len == TYPE_TIME_EXTEND:
                ts += delta + (array << 27)
            elif type_len == TYPE_TIME_STAMP:
                ts = delta + (array << 27)
            else:  # padding: array is its length, counting itself
                if delta == 0:
                    return ParseStatus.NULL_PADDING
                if array < 4:
                    return ParseStatus.INVALID_PADDING_LENGTH
                pos += array - 4
            continue
        if nxt - pos < 2:
            return ParseStatus.SHORT_EVENT_ID
        append((ts, pos, nxt))
        pos = nxt
    return ParseStatus.OK


_SHORT_ARRAY = {
    TYPE_PADDING: ParseStatus.SHORT_PADDING_LENGTH,
    TYPE_TIME_EXTEND: ParseStatus.SHORT_TIME_EXTEND,
    TYPE_TIME_STAMP: ParseStatus.SHORT_TIME_STAMP,
}
