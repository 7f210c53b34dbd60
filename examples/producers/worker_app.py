"""An application that embeds a producer: run it as any command line,
`python worker_app.py [--name worker]`. It finds the service through
TRACEBUS_PRODUCER_SOCK and its name in TRACEBUS_PRODUCER_NAME (the supervisor
sets both) and records its request
handling as slices while a session asks for "worker.requests".
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading

from actors.producer import DataSource, Producer
from actors.track_event import TrackEvents


class Requests(DataSource):
    name = "worker.requests"
    handles_incremental_state_clear = True  # TrackEvents re-emits its tracks

    def on_start(self, config) -> None:
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"handler-{i}") for i in range(2)
        ]
        for t in self._threads:
            t.start()

    def on_stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _serve(self, index: int) -> None:
        events = TrackEvents(self.writer(), process_name=self.producer_name)
        rnd = random.Random(index)
        while not self._stop.is_set():
            with events.slice("request"):
                with events.slice("auth"):
                    self._stop.wait(rnd.uniform(0.0005, 0.002))
                with events.slice("query"):
                    self._stop.wait(rnd.uniform(0.002, 0.01))
            self._stop.wait(rnd.uniform(0.001, 0.005))
        self.writer().flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=os.environ.get("TRACEBUS_PRODUCER_NAME", "worker"))
    args = parser.parse_args()
    producer = Producer(args.name)
    producer.register(Requests)
    return producer.run()


if __name__ == "__main__":
    sys.exit(main())
