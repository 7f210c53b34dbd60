"""The Python twin of producer_app: a process using tracebus's SDK (`import
tracebus`, which hosts the "track_event" data source) that writes a slice
"py_work" (category "app", args pid and i) every 500 µs for SECONDS, then
prints "python_app pid=P emitted=N stats=...".

    TRACEBUS_PRODUCER_SOCK=ipc://... python examples/perfetto_sdk/python_app.py SECONDS

It waits up to 60 s for a session to start recording it, like producer_app.
"""

import os
import sys
import time

import tracebus

INTERVAL_S = 0.0005


def main(seconds: float) -> None:
    tracebus.init(name="python_app", wait_for_start=60)
    end = time.monotonic() + seconds
    emitted = 0
    while time.monotonic() < end:
        with tracebus.slice("py_work", category="app", args={"pid": os.getpid(), "i": emitted}):
            pass
        emitted += 1
        time.sleep(INTERVAL_S)
    tracebus.shutdown()
    print(f"python_app pid={os.getpid()} emitted={emitted} stats={tracebus.stats()}", flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]))
