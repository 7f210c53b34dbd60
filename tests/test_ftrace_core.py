"""The pure ftrace decoding and encoding (actors/core/ftrace_*.py).

Real inputs: tests/data/probes/ftrace/ was captured on this machine by
tests/ftrace_capture.py (its docstring says what the kernel was made to record);
the same capture runs again against the running kernel when we are root
(test_live_capture_decodes_exactly), so a kernel whose layout differs fails here
first. Synthetic pages (`page(...)` below) cover the layout's corners the kernel
rarely shows; hypothesis throws random and mutated pages at the decoder.
Packets are checked by parsing them with Perfetto's own schema.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import ftrace_schema as S
from actors.core.ftrace_encode import Bundle, FtraceTranslator, ftrace_stats_packet, parse_cpu_stats
from actors.core.ftrace_format import (
    EventFormat,
    FieldKind,
    PageHeader,
    field_kind,
    parse_format,
    parse_header_page,
)
from actors.core.ftrace_pages import ParseStatus, page_records
from tests import ftrace_capture

DATA = Path(__file__).parent / "data" / "probes" / "ftrace"
PAGE = 4096


def load_formats(root: Path) -> list[EventFormat]:
    return [parse_format(p.read_text(), p.parent.name) for p in sorted(root.glob("format/*/*"))]


def split_pages(raw: bytes) -> list[bytes]:
    return [raw[i : i + PAGE] for i in range(0, len(raw), PAGE)]


def decode(packet: bytes) -> pb.TracePacket:
    msg = pb.TracePacket()
    msg.ParseFromString(packet)
    return msg


HEADER = parse_header_page((DATA / "header_page").read_text())
FORMATS = load_formats(DATA)


def fmt(name: str) -> EventFormat:
    return next(f for f in FORMATS if f.name == name)


# ---------------------------------------------------------------- schema numbers


def test_field_numbers_are_perfettos():
    """Every hard-coded number in ftrace_schema is the one in Perfetto's descriptor."""
    d = pb.DESCRIPTOR.message_types_by_name
    bundle = pb.FtraceEventBundle.DESCRIPTOR
    compact = bundle.nested_types_by_name["CompactSched"]
    expect = {
        "PACKET_TIMESTAMP": (d["TracePacket"], "timestamp"),
        "PACKET_FTRACE_EVENTS": (d["TracePacket"], "ftrace_events"),
        "PACKET_FTRACE_STATS": (d["TracePacket"], "ftrace_stats"),
        "BUNDLE_CPU": (bundle, "cpu"),
        "BUNDLE_EVENT": (bundle, "event"),
        "BUNDLE_LOST_EVENTS": (bundle, "lost_events"),
        "BUNDLE_COMPACT_SCHED": (bundle, "compact_sched"),
        "BUNDLE_ERROR": (bundle, "error"),
        "BUNDLE_PREVIOUS_END_TIMESTAMP": (bundle, "previous_bundle_end_timestamp"),
        "ERROR_TIMESTAMP": (bundle.nested_types_by_name["FtraceError"], "timestamp"),
        "ERROR_STATUS": (bundle.nested_types_by_name["FtraceError"], "status"),
        "EVENT_TIMESTAMP": (d["FtraceEvent"], "timestamp"),
        "EVENT_PID": (d["FtraceEvent"], "pid"),
        "EVENT_GENERIC": (d["FtraceEvent"], "generic"),
        "GENERIC_EVENT_NAME": (d["GenericFtraceEvent"], "event_name"),
        "GENERIC_FIELD": (d["GenericFtraceEvent"], "field"),
        "STATS_PHASE": (d["FtraceStats"], "phase"),
        "STATS_CPU_STATS": (d["FtraceStats"], "cpu_stats"),
        "STATS_ATRACE_ERRORS": (d["FtraceStats"], "atrace_errors"),
        "STATS_UNKNOWN_EVENTS": (d["FtraceStats"], "unknown_ftrace_events"),
        "STATS_FAILED_EVENTS": (d["FtraceStats"], "failed_ftrace_events"),
    }
    for const, (msg, name) in expect.items():
        assert getattr(S, const) == msg.fields_by_name[name].number, const
    for name in ("intern_table", "switch_timestamp", "switch_prev_state", "switch_next_pid",
                 "switch_next_prio", "switch_next_comm_index", "waking_timestamp",
                 "waking_pid", "waking_target_cpu", "waking_prio", "waking_comm_index",
                 "waking_common_flags"):  # fmt: skip
        assert getattr(S, "COMPACT_" + name.upper()) == compact.fields_by_name[name].number
    field = pb.GenericFtraceEvent.Field.DESCRIPTOR.fields_by_name
    for const, name in (("NAME", "name"), ("STR", "str_value"), ("INT", "int_value"),
                        ("UINT", "uint_value")):  # fmt: skip
        assert getattr(S, "GENERIC_FIELD_" + const) == field[name].number
    cpu = pb.FtraceCpuStats.DESCRIPTOR.fields_by_name
    for name in ("cpu", "entries", "overrun", "commit_overrun", "bytes_read", "oldest_event_ts",
                 "now_ts", "dropped_events", "read_events"):  # fmt: skip
        assert getattr(S, "CPU_STATS_" + name.upper()) == cpu[name].number
    assert S.PHASE_START_OF_TRACE == pb.FtraceStats.Phase.START_OF_TRACE
    assert S.PHASE_END_OF_TRACE == pb.FtraceStats.Phase.END_OF_TRACE
    statuses = dict(pb.FtraceParseStatus.items())
    for name, value in vars(ParseStatus).items():
        if name.isupper():
            abi = statuses.get("FTRACE_STATUS_ABI_" + name)
            assert value == statuses.get("FTRACE_STATUS_" + name, abi), name


def test_vendor_events_resolve_to_their_group_prefixed_field():
    assert S.proto_event("sched", "sched_switch").number == 4
    assert S.proto_event("ftrace", "print").number == 3
    assert S.proto_event("mali", "tracing_mark_write").number == 350  # mali_tracing_mark_write
    assert S.proto_event("nosuchgroup", "nosuchevent") is None


# ---------------------------------------------------------------- format files


def test_parse_format_reads_the_kernels_sched_switch():
    f = fmt("sched_switch")
    assert (f.group, f.name, f.id) == ("sched", "sched_switch", f.id)
    names = [x.name for x in f.fields]
    assert names[:4] == ["common_type", "common_flags", "common_preempt_count", "common_pid"]
    assert (
        names[4:] == "prev_comm prev_pid prev_prio prev_state next_comm next_pid next_prio".split()
    )
    comm = f.field("prev_comm")
    assert comm is not None
    assert (comm.type, comm.offset, comm.size, comm.signed) == ("char[16]", 8, 16, False)
    kinds = {x.name: field_kind(x) for x in f.fields}
    assert kinds["prev_comm"] is FieldKind.FIXED_CSTRING
    assert kinds["prev_pid"] is kinds["next_pid"] is FieldKind.PID
    assert kinds["common_pid"] is FieldKind.COMMON_PID
    assert kinds["prev_state"] is FieldKind.INT and kinds["common_flags"] is FieldKind.UINT


def test_field_kinds_of_other_real_formats():
    kinds = {(f.name, x.name): field_kind(x) for f in FORMATS for x in f.fields}
    assert kinds[("print", "buf")] is FieldKind.CSTRING
    assert kinds[("print", "ip")] is FieldKind.UINT
    assert kinds[("sys_enter", "args")] is FieldKind.UNSUPPORTED
    assert kinds[("sched_process_exit", "group_dead")] is FieldKind.BOOL
    assert kinds[("task_newtask", "clone_flags")] is FieldKind.UINT
    line = "\tfield:__data_loc char[] name;\toffset:12;\tsize:4;\tsigned:0;"
    loc = parse_format(f"name: x\nID: 9\nformat:\n{line}\n", "g").fields[0]
    assert (loc.name, loc.type) == ("name", "__data_loc char[]")
    assert field_kind(loc) is FieldKind.DATA_LOC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello\nworld\n",
        "name: x\nformat:\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n",  # no ID
        "name: x\nID: 3\nformat:\n",  # no fields
        "name: x\nID: zz\nformat:\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n",
        "name: x\nID: 70000\nformat:\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n",
        "name: x\nID: 3\nformat:\n\tfield:int a;\toffset:99999;\tsize:4;\tsigned:1;\n",
        "name: x\nID: 3\nformat:\n\tfield:;\toffset:0;\tsize:4;\tsigned:1;\n",
    ],
)
def test_parse_format_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_format(text, "g")


def test_parse_header_page():
    assert HEADER == PageHeader(timestamp_offset=0, commit_offset=8, commit_size=8, data_offset=16)
    # A 32-bit kernel's: local_t is 4 bytes and data starts at 12.
    text32 = (
        "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n"
        "\tfield: local_t commit;\toffset:8;\tsize:4;\tsigned:1;\n"
        "\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;\n"
        "\tfield: char data;\toffset:12;\tsize:4084;\tsigned:0;\n"
    )
    assert parse_header_page(text32) == PageHeader(0, 8, 4, 12)
    with pytest.raises(ValueError):
        parse_header_page("nothing here")
    with pytest.raises(ValueError):
        parse_header_page(text32.replace("size:4;", "size:2;"))


# ---------------------------------------------------------------- captured pages


def events_of(bundle: Bundle) -> list[pb.FtraceEvent]:
    return list(decode(bundle.packet).ftrace_events.event)


def check_capture(root: Path, cpus: list[int]) -> None:
    """What tests/ftrace_capture.py made the kernel record comes back exactly."""
    header = parse_header_page((root / "header_page").read_text())
    formats = load_formats(root)
    translator = FtraceTranslator(header, formats, compact_sched=False)
    events, renamed, pids = [], set(), set()
    for cpu in cpus:
        stats = parse_cpu_stats((root / f"stats_cpu{cpu}").read_text(), cpu)
        b = translator.bundle(cpu, split_pages((root / f"pages_cpu{cpu}.raw").read_bytes()))
        assert (b.events, b.errors, b.lost) == (stats.entries, 0, False), cpu
        got = events_of(b) if b.packet else []
        assert len(got) == b.events
        assert [e.timestamp for e in got] == sorted(e.timestamp for e in got)
        events += got
        renamed |= b.renamed
        pids |= b.pids
    events.sort(key=lambda e: e.timestamp)
    prints = [e.print.buf for e in events if e.HasField("print")]
    assert prints == [f"tracebus marker {i}\n" for i in range(1, ftrace_capture.MARKERS + 1)]
    renames = [e.task_rename for e in events if e.task_rename.newcomm == "renamed"]
    assert len(renames) == ftrace_capture.RENAMES
    assert {r.pid for r in renames} <= renamed & pids
    newtasks = [e.task_newtask.pid for e in events if e.HasField("task_newtask")]
    assert len(newtasks) >= ftrace_capture.RENAMES and set(newtasks) <= renamed
    switches = [e for e in events if e.HasField("sched_switch")]
    assert switches and {s.sched_switch.next_pid for s in switches} - {0} <= pids
    assert all(e.pid in pids | {0} for e in events)
    lost = parse_cpu_stats((root / "stats_lost_cpu0").read_text(), 0)
    b = translator.bundle(0, split_pages((root / "pages_lost_cpu0.raw").read_bytes()))
    assert lost.overrun > 0 and b.lost and decode(b.packet).ftrace_events.lost_events
    assert (b.events, b.lost_count, b.errors) == (lost.entries, lost.overrun, 0)


def test_captured_pages_decode_exactly():
    check_capture(DATA, [0, 1])


def compact_view(bundle: Bundle) -> tuple[list[tuple], list[tuple]]:
    """The switches and wakings of a compact bundle, delta and intern undone."""
    c = decode(bundle.packet).ftrace_events.compact_sched
    table = list(c.intern_table)
    ts, switches = 0, []
    for i, delta in enumerate(c.switch_timestamp):
        ts += delta
        switches.append((ts, c.switch_next_pid[i], c.switch_next_prio[i], c.switch_prev_state[i],
                         table[c.switch_next_comm_index[i]]))  # fmt: skip
    ts, wakings = 0, []
    for i, delta in enumerate(c.waking_timestamp):
        ts += delta
        wakings.append((ts, c.waking_pid[i], c.waking_target_cpu[i], c.waking_prio[i],
                        table[c.waking_comm_index[i]]))  # fmt: skip
    return switches, wakings


@pytest.mark.parametrize("cpu", [0, 1])
def test_compact_sched_holds_the_same_switches_and_wakings(cpu):
    pages = split_pages((DATA / f"pages_cpu{cpu}.raw").read_bytes())
    full = FtraceTranslator(HEADER, FORMATS, compact_sched=False).bundle(cpu, pages)
    compact_translator = FtraceTranslator(HEADER, FORMATS, compact_sched=True)
    assert compact_translator.compact_sched
    compact = compact_translator.bundle(cpu, pages)
    assert (compact.events, compact.pids, compact.renamed) == (full.events, full.pids, full.renamed)
    evs = events_of(full)
    sw = [(e.timestamp, e.sched_switch) for e in evs if e.HasField("sched_switch")]
    wk = [(e.timestamp, e.sched_waking) for e in evs if e.HasField("sched_waking")]
    switches, wakings = compact_view(compact)
    assert switches == [(t, s.next_pid, s.next_prio, s.prev_state, s.next_comm) for t, s in sw]
    assert wakings == [(t, w.pid, w.target_cpu, w.prio, w.comm) for t, w in wk]
    rest = [e for e in events_of(compact)]
    assert not any(e.HasField("sched_switch") or e.HasField("sched_waking") for e in rest)
    assert len(rest) == len(evs) - len(sw) - len(wk)


def test_compact_sched_falls_back_when_the_format_does_not_fit():
    odd = fmt("sched_switch")
    fields = tuple(
        type(f)(f.name, "int", f.offset, 4, True) if f.name == "next_pid" else f for f in odd.fields
    )
    others = [f for f in FORMATS if f is not odd]
    formats = [EventFormat(odd.group, odd.name, odd.id, fields), *others]
    translator = FtraceTranslator(HEADER, formats, compact_sched=True)
    assert not translator.compact_sched
    b = translator.bundle(0, split_pages((DATA / "pages_cpu0.raw").read_bytes()))
    assert any(e.HasField("sched_switch") for e in events_of(b))


def test_previous_bundle_end_timestamp_chains_bundles_of_one_cpu():
    translator = FtraceTranslator(HEADER, FORMATS, compact_sched=False)
    pages = split_pages((DATA / "pages_cpu0.raw").read_bytes())
    first = decode(translator.bundle(0, pages).packet).ftrace_events
    assert first.previous_bundle_end_timestamp == 0
    second = decode(translator.bundle(0, pages).packet).ftrace_events
    assert second.previous_bundle_end_timestamp == first.event[-1].timestamp
    other_cpu = decode(translator.bundle(1, pages).packet).ftrace_events
    assert other_cpu.previous_bundle_end_timestamp == 0


def test_empty_input_gives_no_packet():
    b = FtraceTranslator(HEADER, FORMATS, compact_sched=True).bundle(0, [])
    assert b == Bundle()


# ---------------------------------------------------------------- synthetic pages


def record(payload: bytes, delta: int = 1) -> bytes:
    """A data record; type_len 0 (length word) when it is long or not 4-aligned."""
    padded = payload + b"\0" * (-len(payload) % 4)
    if len(padded) <= 4 * 28 and len(padded) == len(payload):
        return struct.pack("<I", (delta << 5) | (len(padded) // 4)) + padded
    return struct.pack("<II", delta << 5, len(padded) + 4) + padded


def page(body: bytes, ts: int = 1000, flags: int = 0, tail: bytes = b"") -> bytes:
    head = struct.pack("<QQ", ts, len(body) | flags)
    return (head + body + tail).ljust(PAGE, b"\0")


def print_payload(text: bytes, pid: int = 42) -> bytes:
    return struct.pack("<HBBiQ", fmt("print").id, 0, 0, pid, 0xFFFF) + text + b"\0"


def synthetic(body: bytes, **kw) -> tuple[Bundle, list[pb.FtraceEvent]]:
    b = FtraceTranslator(HEADER, FORMATS, compact_sched=False).bundle(3, [page(body, **kw)])
    return b, events_of(b) if b.packet else []


def test_time_extend_absolute_timestamp_and_padding():
    body = (
        record(print_payload(b"a"), delta=5)
        + struct.pack("<II", (7 << 5) | 30, 2)  # time extend: + 7 + (2 << 27)
        + record(print_payload(b"b"), delta=3)
        + struct.pack("<II", (9 << 5) | 29, 12) + b"\xee" * 8  # discarded record: no time
        + struct.pack("<II", (11 << 5) | 31, 1)  # absolute: 11 + (1 << 27)
        + record(print_payload(b"c"), delta=0)
    )  # fmt: skip
    b, evs = synthetic(body)
    assert b.errors == 0 and b.pids == {42}
    assert [(e.timestamp, e.print.buf, e.pid) for e in evs] == [
        (1005, "a", 42),
        (1005 + 7 + (2 << 27) + 3, "b", 42),
        (11 + (1 << 27), "c", 42),
    ]


def test_long_record_uses_the_length_word():
    text = b"x" * 300
    b, evs = synthetic(record(print_payload(text)))
    assert b.errors == 0 and evs[0].print.buf == text.decode() and evs[0].print.ip == 0xFFFF


def test_missed_events_flags_and_stored_count():
    body = record(print_payload(b"a"))
    b, _ = synthetic(body, flags=(1 << 31) | (1 << 30), tail=struct.pack("<Q", 1234))
    assert (b.lost, b.lost_count, b.events) == (True, 1234, 1)
    b, _ = synthetic(body, flags=0xFFFFFFFF80000000)  # bit 31 sign-extended, as the kernel does
    assert (b.lost, b.lost_count) == (True, 0)


def test_generic_event_for_an_event_perfetto_does_not_know():
    text = (
        "name: my_event\nID: 4000\nformat:\n"
        "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
        "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n"
        "\tfield:int delta;\toffset:8;\tsize:4;\tsigned:1;\n"
        "\tfield:unsigned long count;\toffset:16;\tsize:8;\tsigned:0;\n"
        "\tfield:__data_loc char[] label;\toffset:24;\tsize:4;\tsigned:0;\n"
        "\tfield:char tag[8];\toffset:28;\tsize:8;\tsigned:0;\n"
    )
    my = parse_format(text, "mygroup")
    label = b"hello\0"
    loc = (len(label) << 16) | 36
    payload = struct.pack("<HBBiiIQI8s", 4000, 0, 0, 7, -3, 0, 2**40, loc, b"tg\0")
    translator = FtraceTranslator(HEADER, [*FORMATS, my], compact_sched=False)
    b = translator.bundle(0, [page(record(payload + label + b"\0\0"))])
    (ev,) = events_of(b)
    g = ev.generic
    assert (g.event_name, ev.pid, b.errors) == ("my_event", 7, 0)
    assert [(f.name, f.WhichOneof("value")) for f in g.field] == [
        ("delta", "int_value"), ("count", "uint_value"), ("label", "str_value"),
        ("tag", "str_value"),
    ]  # fmt: skip
    values = [g.field[0].int_value, g.field[1].uint_value, g.field[2].str_value]
    assert [*values, g.field[3].str_value] == [-3, 2**40, "hello", "tg"]
    # A __data_loc pointing past its record: the field is left out, the event kept, counted.
    bad = payload[:24] + struct.pack("<I", (200 << 16) | 36) + payload[28:]
    b = translator.bundle(0, [page(record(bad + label + b"\0\0"))])
    assert b.errors == 1
    assert [f.name for f in events_of(b)[0].generic.field] == ["delta", "count", "tag"]
    # With generic events off, the event is not decoded; it is counted, not hidden.
    off = FtraceTranslator(HEADER, [*FORMATS, my], compact_sched=False, generic_events=False)
    b = off.bundle(0, [page(record(payload + label + b"\0\0"))])
    assert (b.events, b.errors, b.packet) == (0, 1, b"")


def test_unknown_ids_and_short_records_are_counted_and_skipped():
    body = (
        record(struct.pack("<HBBi", 4001, 0, 0, 5) + b"\0" * 8)  # no format for this ID
        + record(struct.pack("<HBBi", fmt("sched_switch").id, 0, 0, 5))  # too short
        + record(print_payload(b"ok"))
    )
    b, evs = synthetic(body)
    assert (b.events, b.errors, [e.print.buf for e in evs]) == (1, 2, ["ok"])


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"\x01\x00", ParseStatus.SHORT_EVENT_HEADER),
        (struct.pack("<I", 20), ParseStatus.END_OVERFLOW),  # type_len 20 needs 80 bytes
        (struct.pack("<II", 0, 0), ParseStatus.ZERO_DATA_LENGTH),
        (struct.pack("<II", 0, 2), ParseStatus.INVALID_DATA_LENGTH),
        (struct.pack("<I", 30), ParseStatus.SHORT_TIME_EXTEND),
        (struct.pack("<II", 29, 8), ParseStatus.NULL_PADDING),
        (struct.pack("<II", (1 << 5) | 29, 2), ParseStatus.INVALID_PADDING_LENGTH),
    ],
)
def test_layout_errors_are_counted_and_written_into_the_bundle(body, status):
    good = record(print_payload(b"before"))
    b, evs = synthetic(good + body, ts=777)
    assert (b.events, b.errors) == (1, 1) and evs[0].print.buf == "before"
    (error,) = decode(b.packet).ftrace_events.error
    assert (error.timestamp, error.status) == (777, status)


def test_page_header_errors():
    assert page_records(b"\0" * 8, HEADER).status == ParseStatus.INVALID_PAGE_HEADER
    assert page_records(page(b""), HEADER).status == ParseStatus.INVALID_PAGE_HEADER
    over = struct.pack("<QQ", 5, PAGE) + b"\0" * (PAGE - 16)
    assert page_records(over, HEADER).status == ParseStatus.INVALID_PAGE_HEADER


# ---------------------------------------------------------------- hypothesis


def check_never_raises(pages: list[bytes]) -> None:
    for compact in (False, True):
        translator = FtraceTranslator(HEADER, FORMATS, compact_sched=compact)
        b = translator.bundle(1, pages)
        assert b.events >= 0 and b.errors >= 0
        if b.packet:
            decode(b.packet)  # well-formed protobuf, always


@given(st.lists(st.binary(min_size=0, max_size=PAGE), max_size=3))
def test_random_pages_never_raise(pages):
    check_never_raises(pages)


REAL = split_pages((DATA / "pages_cpu1.raw").read_bytes()) + split_pages(
    (DATA / "pages_lost_cpu0.raw").read_bytes()
)


@given(
    st.sampled_from(REAL),
    st.lists(st.tuples(st.integers(0, PAGE - 1), st.integers(0, 255)), min_size=1, max_size=40),
)
def test_mutated_real_pages_never_raise(real, mutations):
    buf = bytearray(real)
    for pos, value in mutations:
        buf[pos] = value
    check_never_raises([bytes(buf)])


@given(st.integers(0, PAGE), st.binary(min_size=1, max_size=64))
def test_records_beyond_the_page_never_read(cut, junk):
    """A page cut short, or with a commit past its end: errors, no exception."""
    real = REAL[0]
    check_never_raises([real[:cut], real[:cut] + junk])


# ---------------------------------------------------------------- stats


def test_parse_cpu_stats_of_the_kernel():
    s = parse_cpu_stats((DATA / "stats_lost_cpu0").read_text(), 0)
    assert s.overrun > 0 and s.entries > 0 and s.now_ts >= s.oldest_event_ts > 0
    assert s.commit_overrun == 0 and s.bytes_read > 0
    odd = parse_cpu_stats("entries: x\nbogus line\noverrun: 5\n", 2)
    assert (odd.cpu, odd.entries, odd.overrun) == (2, 0, 5)


def test_ftrace_stats_packet_as_perfetto_reads_it():
    cpu0 = parse_cpu_stats((DATA / "stats_cpu0").read_text(), 0)
    cpu1 = parse_cpu_stats((DATA / "stats_cpu1").read_text(), 1)
    packet = ftrace_stats_packet(
        S.PHASE_START_OF_TRACE, [cpu0, cpu1], 123456789,
        unknown_events=["sched/nope"], failed_events=["sched/sched_switch"],
        setup_error="tracefs unavailable: not root",
    )  # fmt: skip
    msg = decode(packet)
    assert msg.timestamp == 123456789
    stats = msg.ftrace_stats
    assert stats.phase == pb.FtraceStats.START_OF_TRACE
    assert list(stats.unknown_ftrace_events) == ["sched/nope"]
    assert list(stats.failed_ftrace_events) == ["sched/sched_switch"]
    assert stats.atrace_errors == "tracefs unavailable: not root"
    assert [(c.cpu, c.entries, c.overrun, c.bytes_read, c.now_ts) for c in stats.cpu_stats] == [
        (s.cpu, s.entries, s.overrun, s.bytes_read, s.now_ts) for s in (cpu0, cpu1)
    ]
    end = decode(ftrace_stats_packet(S.PHASE_END_OF_TRACE, [], 5)).ftrace_stats
    assert end.phase == pb.FtraceStats.END_OF_TRACE and not end.HasField("atrace_errors")


# ---------------------------------------------------------------- the running kernel


def live_capture_blocker() -> str:
    if os.geteuid() != 0:
        return "needs root (mounting tracefs in a private mount namespace)"
    for tool in ("unshare", "mount", "umount", "taskset"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/sys/kernel/tracing").is_dir():
        return "this kernel has no tracefs (/sys/kernel/tracing is missing)"
    return ""


@pytest.mark.skipif(bool(live_capture_blocker()), reason=live_capture_blocker() or "runs")
def test_live_capture_decodes_exactly(tmp_path):
    """The same recording, made now on the running kernel, decodes exactly: its
    format files, page layout and event counts agree with what we parse."""
    out = tmp_path / "capture"
    module = ["-m", "tests.ftrace_capture", str(out)]
    cmd = ["unshare", "-m", "--propagation", "private", sys.executable, *module]
    root = Path(__file__).parents[1]
    subprocess.run(cmd, cwd=root, check=True, timeout=90)
    cpus = sorted(int(p.name[len("stats_cpu") :]) for p in out.glob("stats_cpu*"))
    assert cpus == list(range(len(cpus))) and cpus
    check_capture(out, cpus)
