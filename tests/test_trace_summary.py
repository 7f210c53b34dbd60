"""`tracebus summary`: read_trace/read_packets on traces built with the official
schema (interning per sequence and its resets, tracks, counters, losses), the
screen format_contents makes of them, and the command's exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.consumer_core import frame_packet
from tracebus import cli
from tracebus.trace_summary import (
    SEQ_INCREMENTAL_STATE_CLEARED,
    TraceReadError,
    format_contents,
    read_packets,
    read_trace,
)

SERVICE_PID, APP_PID, APP_TID = 100, 200, 201
THREAD_TRACK, COUNTER_TRACK = 7, 8
TE = pb.TrackEvent


def packet(seq: int, pid: int = APP_PID, **fields: object) -> pb.TracePacket:
    return pb.TracePacket(trusted_packet_sequence_id=seq, trusted_pid=pid, **fields)


def interned(seq: int, names: dict[int, str], categories: dict[int, str]) -> pb.TracePacket:
    """A packet that clears the sequence's state and interns these names."""
    p = packet(seq, sequence_flags=SEQ_INCREMENTAL_STATE_CLEARED)
    p.interned_data.event_names.extend(pb.EventName(iid=i, name=n) for i, n in names.items())
    p.interned_data.event_categories.extend(
        pb.EventCategory(iid=i, name=n) for i, n in categories.items()
    )
    return p


def event(seq: int, kind: int, ts: int, **fields: object) -> pb.TracePacket:
    p = packet(seq, timestamp=ts)
    p.track_event.CopyFrom(TE(type=kind, track_uuid=THREAD_TRACK, **fields))
    return p


def descriptors(seq: int) -> list[pb.TracePacket]:
    process = packet(seq)
    process.track_descriptor.uuid = 1
    process.track_descriptor.process.pid = APP_PID
    process.track_descriptor.process.process_name = "worker"
    thread = packet(seq)
    thread.track_descriptor.uuid = THREAD_TRACK
    thread.track_descriptor.thread.pid = APP_PID
    thread.track_descriptor.thread.tid = APP_TID
    thread.track_descriptor.thread.thread_name = "main"
    counter = packet(seq)
    counter.track_descriptor.uuid = COUNTER_TRACK
    counter.track_descriptor.name = "queue_depth"
    counter.track_descriptor.counter.SetInParent()
    return [process, thread, counter]


def sample_trace() -> list[pb.TracePacket]:
    service = packet(1, SERVICE_PID, timestamp=1_000)
    service.trace_config.duration_ms = 1
    first = interned(5, {1: "decode", 2: "parse"}, {1: "io"})
    first.track_event.CopyFrom(TE(type=TE.TYPE_SLICE_BEGIN, track_uuid=THREAD_TRACK,
                                  name_iid=1, category_iids=[1]))  # fmt: skip
    first.timestamp = 2_000
    packets = [service, *descriptors(5), first]
    packets.append(event(5, TE.TYPE_SLICE_END, 3_000))
    packets.append(event(5, TE.TYPE_SLICE_BEGIN, 4_000, name_iid=1, category_iids=[1]))
    # A clear: iid 1 means something else from here on.
    packets.append(interned(5, {1: "encode"}, {1: "cpu"}))
    packets.append(event(5, TE.TYPE_INSTANT, 5_000, name_iid=1, category_iids=[1]))
    packets.append(event(5, TE.TYPE_INSTANT, 5_500, name_iid=2))  # interned before the clear
    # Another sequence never interned iid 1; plain names need no table.
    packets.append(event(6, TE.TYPE_INSTANT, 6_000, name_iid=1))
    packets.append(event(6, TE.TYPE_INSTANT, 7_000, name="tick", categories=["a", "b"]))
    for ts, value in ((8_000, 3), (9_000, 1)):
        p = event(5, TE.TYPE_COUNTER, ts, counter_value=value)
        p.track_event.track_uuid = COUNTER_TRACK
        packets.append(p)
    packets[-1].previous_packet_dropped = 1
    stats = packet(1, SERVICE_PID)
    stats.trace_stats.buffer_stats.add(chunks_overwritten=2, trace_writer_packet_loss=4)
    stats.trace_stats.buffer_stats.add(chunks_discarded=1)
    packets.append(stats)
    return packets


def serialized(packets: list[pb.TracePacket]) -> list[bytes]:
    return [p.SerializeToString() for p in packets]


def write_trace(path: Path, packets: list[pb.TracePacket]) -> Path:
    path.write_bytes(b"".join(frame_packet(p) for p in serialized(packets)))
    return path


def test_interned_names_resolve_per_sequence_and_reset_at_a_clear() -> None:
    contents = read_packets(serialized(sample_trace()))
    assert contents.events == {
        ("io", "decode"): 2,
        ("cpu", "encode"): 1,
        ("", "(interned #2)"): 1,  # the clear emptied the table
        ("", "(interned #1)"): 1,  # sequence 6 never interned it
        ("a,b", "tick"): 1,
    }


def test_processes_threads_counters_and_losses() -> None:
    contents = read_packets(serialized(sample_trace()))
    assert contents.processes[APP_PID].name == "worker"
    assert contents.processes[SERVICE_PID].service
    assert contents.processes[APP_PID].packets == len(sample_trace()) - 2
    thread = contents.threads[APP_TID]
    assert (thread.pid, thread.name) == (APP_PID, "main")
    assert thread.events == 6  # begins and instants on its track, not the ends
    counter = contents.counters["queue_depth"]
    assert (counter.samples, counter.min, counter.max, counter.last) == (2, 1, 3, 1)
    losses = contents.losses
    assert (losses.chunks_overwritten, losses.chunks_discarded) == (2, 1)
    assert (losses.writer_packets_dropped, losses.marked_packets) == (4, 1)
    assert (contents.first_ns, contents.last_ns) == (1_000, 9_000)
    assert contents.sequences == {1, 5, 6}


def test_the_screen_names_everything_and_cuts_long_tables(tmp_path: Path) -> None:
    packets = sample_trace()
    packets += [event(6, TE.TYPE_INSTANT, 10_000 + i, name=f"e{i}") for i in range(30)]
    text = format_contents(read_trace(write_trace(tmp_path / "t.pftrace", packets)), top=5)
    assert "worker" in text and "(tracing service)" in text and "main" in text
    assert "queue_depth" in text
    assert "decode" in text  # the most common event is shown first
    assert "... and 30 more" in text  # 35 kinds of events, 5 shown
    assert "chunks overwritten 2" in text and "previous_packet_dropped 1" in text


def test_a_trace_without_losses_says_none() -> None:
    packets = [p for p in sample_trace() if not p.HasField("trace_stats")]
    for p in packets:
        p.previous_packet_dropped = 0
    packets.append(packet(1, SERVICE_PID, trace_stats=pb.TraceStats()))
    assert format_contents(read_packets(serialized(packets))).endswith("losses: none")


def test_a_torn_end_is_noted_and_garbage_is_an_error(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.pftrace", sample_trace())
    whole = path.read_bytes()
    path.write_bytes(whole[:-3])
    contents = read_trace(path)
    assert contents.packets == len(sample_trace()) - 1 and contents.torn_bytes > 0
    path.write_bytes(whole + b"\x00garbage")
    with pytest.raises(TraceReadError, match="not a Perfetto trace"):
        read_trace(path)
    with pytest.raises(TraceReadError, match="cannot read"):
        read_trace(tmp_path / "missing.pftrace")


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_trace(tmp_path / "t.pftrace", sample_trace())
    assert cli.main(["summary", str(path)]) == 0
    assert "decode" in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("hello")
    for bad in ("missing.pftrace", "notes.txt"):
        assert cli.main(["summary", str(tmp_path / bad)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("tracebus: error:") and bad in err
