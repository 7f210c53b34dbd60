"""Producer names are the producers' own words: the record summary prints them only
made printable (actors/core/consumer_summary.py), so that a name holding an escape
sequence or a newline can neither drive the terminal nor forge a line of the
summary (such as "losses: none"). `tracebus summary` prints the names a trace holds
(events, threads, counters: the traced programs' words) the same way."""

from __future__ import annotations

from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.consumer_core import frame_packet
from actors.core.consumer_summary import (
    SummaryInput,
    TraceSummary,
    format_summary,
    printable,
    producer_names,
)
from protos import tracebus_ipc_pb2 as ipc
from tracebus.trace_summary import format_contents, read_trace

EVIL = "evil\x1b[2J\nlosses: none\r\x00" + "x" * 500


def test_hostile_producer_names_are_printed_harmlessly() -> None:
    state = ipc.QueryServiceStateResponse()
    state.producers.add(id=1, name=EVIL, pid=42, uid=1000)
    state.departed_producers.add(id=2, name="gone\x07", pid=43, uid=1000)
    names = producer_names(state)
    assert names[42] == printable(EVIL) and names[43] == "gone?"
    summary = TraceSummary()
    summary.add_all([_packet(42), _packet(43)])
    info = SummaryInput(out_path="t.pftrace", summary=summary, producer_names=names, stats=None)
    info.notes.append(f"no stop ack in time from {printable(EVIL)}")
    text = format_summary(info)
    assert all(c.isprintable() for line in text.splitlines() for c in line), text
    lines = text.splitlines()
    assert not any(line.startswith("losses: none") for line in lines)  # no forged line
    assert "evil?[2J?losses: none??" in text and len(printable(EVIL)) == 67


def _packet(pid: int) -> bytes:
    """A packet ending in the service's trusted trailer: uid, sequence id 2, pid."""
    return bytes([0x18, 0xE8, 0x07, 0x50, 0x02, 0xF8, 0x04, pid])


def test_tracebus_summary_prints_hostile_event_names_harmlessly(tmp_path: Path) -> None:
    event = pb.TrackEvent(type=pb.TrackEvent.TYPE_INSTANT, name="evil\x1b]0;owned\x07\nforged")
    packet = pb.TracePacket(trusted_packet_sequence_id=2, trusted_pid=7, timestamp=1)
    packet.track_event.CopyFrom(event)
    path = tmp_path / "t.pftrace"
    path.write_bytes(frame_packet(packet.SerializeToString()))
    text = format_contents(read_trace(path))
    assert all(c.isprintable() for line in text.splitlines() for c in line), text
    assert "evil?]0;owned??forged" in text
