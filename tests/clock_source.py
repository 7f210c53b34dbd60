"""A data source for the relay tests (`--module tests.clock_source`).

`test.clock` writes a TrackDescriptor of its process (so a trace processor
gives each machine's process its own track), then, every 10 ms until stopped,
a packet stamped with CLOCK_BOOTTIME whose for_testing.counter is
CLOCK_REALTIME read at the same instant and whose for_testing.str is the
producer's name. A time namespace shifts BOOTTIME but not REALTIME: a trace
that puts a relay's machine on the service's timeline right gives every
packet the same REALTIME minus (corrected) BOOTTIME, within the time between
two clock reads.
"""

from __future__ import annotations

import os
import time

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.producer_sdk import ThreadedDataSource

PERIOD_S = 0.01


class ClockDataSource(ThreadedDataSource):
    name = "test.clock"

    def _run(self) -> None:
        w = self.writer()
        track = pb.TracePacket(timestamp=time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        track.track_descriptor.uuid = os.getpid()
        track.track_descriptor.process.pid = os.getpid()
        track.track_descriptor.process.process_name = self.producer_name or "clock"
        w.write_packet(track.SerializeToString())
        label = self.producer_name or ""
        while not self._stopping:
            packet = pb.TracePacket()
            packet.timestamp = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            packet.for_testing.counter = time.clock_gettime_ns(time.CLOCK_REALTIME)
            packet.for_testing.str = label
            w.write_packet(packet.SerializeToString())
            self._serve_flush(w)
            if self._wakeup.wait(PERIOD_S):
                self._wakeup.clear()
        w.flush()
