"""An application instrumented with the tracebus API: run it as any command
line, `python worker_app.py`. Two handler threads serve made-up requests; each
request is a slice with its auth and query steps nested in it, and a counter
tracks the requests served. The API finds the service through
TRACEBUS_PRODUCER_SOCK and takes its name from TRACEBUS_PRODUCER_NAME (the
supervisor sets both); the events are recorded while a session asks for the
`track_event` data source, and cost one check each otherwise.
"""

from __future__ import annotations

import random
import signal
import sys
import threading

import tracebus


def serve(index: int, stop: threading.Event) -> None:
    rnd = random.Random(index)
    served = 0
    while not stop.is_set():
        with tracebus.slice("request", category="worker", args={"handler": index}):
            with tracebus.slice("auth", category="worker"):
                stop.wait(rnd.uniform(0.0005, 0.002))
            with tracebus.slice("query", category="db"):
                stop.wait(rnd.uniform(0.002, 0.01))
        served += 1
        tracebus.counter(f"served by handler-{index}", served, category="worker")
        stop.wait(rnd.uniform(0.001, 0.005))


def main() -> int:
    stop = threading.Event()
    # SIGTERM (the supervisor stopping us) ends the handlers; the exit flushes.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    handlers = [
        threading.Thread(target=serve, args=(i, stop), name=f"handler-{i}") for i in range(2)
    ]
    for t in handlers:
        t.start()
    for t in handlers:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
