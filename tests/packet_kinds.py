"""What the tests expect of the service's packets: each packet named by its
kind (a service event by its event), and the head of a first read."""

from __future__ import annotations

from collections.abc import Iterable

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

# A first read of a session whose data sources all started, from a core with no
# SystemInfo (the service's shell passes one: system_info then follows provenance).
FIRST_READ = [
    "clock_snapshot",  # at the start
    "clock_snapshot",  # when all data sources started
    "trace_config",
    "trace_uuid",
    "trace_provenance",
    "tracing_started",
    "all_data_sources_started",
]


def kind(packet: pb.TracePacket) -> str:
    what = packet.WhichOneof("data") or ""
    if what == "service_event":
        return packet.service_event.WhichOneof("event_type") or what
    return what


def kinds(packets: Iterable[pb.TracePacket]) -> list[str]:
    return [kind(p) for p in packets]
