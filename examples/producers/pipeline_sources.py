"""A producer module for `python -m actors.producer --module pipeline_sources`:
a data pipeline's stages as slices, plus its queue depth as a counter.

Each instance runs one worker thread that records, per batch:
read > decode, transform, write (nested slices) and the queue depth.
"""

from __future__ import annotations

import random
import threading

from actors.producer import DataSource
from actors.track_event import TrackEvents


class PipelineStages(DataSource):
    name = "pipeline.stages"
    handles_incremental_state_clear = True  # TrackEvents re-emits its tracks

    def on_start(self, config) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pipeline-worker")
        self._thread.start()

    def on_stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        events = TrackEvents(self.writer(), process_name=self.producer_name, counters=("queue",))
        rnd = random.Random(self.instance_id)
        queue = 0
        while not self._stop.is_set():
            with events.slice("batch"):
                with events.slice("read"):
                    self._stop.wait(rnd.uniform(0.001, 0.004))
                with events.slice("decode"):
                    self._stop.wait(rnd.uniform(0.002, 0.006))
                with events.slice("transform"):
                    self._stop.wait(rnd.uniform(0.001, 0.008))
                with events.slice("write"):
                    self._stop.wait(rnd.uniform(0.001, 0.003))
            queue = max(0, queue + rnd.randint(-3, 4))
            events.counter("queue", queue)
        self.writer().flush()
