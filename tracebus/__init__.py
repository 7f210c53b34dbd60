"""tracebus: trace any Python code, in any process, into one Perfetto timeline.

    import tracebus
    tracebus.init()                    # optional; name = the script's name
    with tracebus.slice("decode", category="io", args={"bytes": n}, flow=job_id):
        ...
    @tracebus.trace                    # or @tracebus.trace(name=..., category=...)
    def handle(job): ...
    tracebus.instant("cache_miss", category="cache", args={"key": k})
    tracebus.counter("queue_depth", 3) # int or float, optional category/unit
    logging.getLogger().addHandler(tracebus.LoggingHandler())
    tracebus.trigger("crash_seen")     # fire a trigger (trigger_config sessions act on it)
    tracebus.shutdown()                # flush and detach; also at exit

The first call starts a producer on a background thread that hosts the
"track_event" data source and connects to $TRACEBUS_PRODUCER_SOCK (or the
default service), reconnecting whenever a service appears. Events are written
only while a session wants their category; otherwise a call costs one lookup.
No call raises or blocks (errors are counted: stats()), except the bounded
startup wait asked for with init(wait_for_start=S) or TRACEBUS_STARTUP_WAIT_S.
Forked and multiprocessing children become producers of their own (they flush
at exit, multiprocessing's children too; a process that leaves through
os._exit() should call shutdown() first).
TRACEBUS_DISABLE=1 turns everything off.

Importing this package loads no ZeroMQ, protobuf or Perfetto schema: those load
on the background thread.
"""

from tracebus._api import (
    counter,
    define_category,
    flow_id,
    init,
    instant,
    shutdown,
    slice,
    stats,
    trace,
    trigger,
)
from tracebus._logging import LoggingHandler

__all__ = [
    "LoggingHandler",
    "counter",
    "define_category",
    "flow_id",
    "init",
    "instant",
    "shutdown",
    "slice",
    "stats",
    "trace",
    "trigger",
]
