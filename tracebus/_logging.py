"""LoggingHandler: log records on the timeline.

    logging.getLogger().addHandler(tracebus.LoggingHandler())

Each record becomes an instant on the emitting thread's track, in category "log"
(filtered like any category), carrying Perfetto's LogMessage: the message as
its body, the level as an Android log priority (DEBUG 3 ... CRITICAL 7) and the
record's file, function and line as its source location. The cost is close to
a slice's: no handler lock (the per-thread sequences need none), no formatting
unless a formatter was set. Records of the "tracebus" loggers (the SDK's and
the producer's own) and records emitted on the SDK's threads are skipped, so
the handler never feeds on itself, and an error in it is counted
(tracebus.stats()) instead of printed.
"""

from __future__ import annotations

import logging

from tracebus import _runtime

_wanted = _runtime.WANTED

# logging levels -> android.LogPriority, which Perfetto's LogMessage.prio uses.
PRIO_VERBOSE, PRIO_DEBUG, PRIO_INFO, PRIO_WARN, PRIO_ERROR, PRIO_FATAL = 2, 3, 4, 5, 6, 7


def log_priority(levelno: int) -> int:
    if levelno < logging.DEBUG:
        return PRIO_VERBOSE
    if levelno < logging.INFO:
        return PRIO_DEBUG
    if levelno < logging.WARNING:
        return PRIO_INFO
    if levelno < logging.ERROR:
        return PRIO_WARN
    if levelno < logging.CRITICAL:
        return PRIO_ERROR
    return PRIO_FATAL


def _ours(record: logging.LogRecord) -> bool:
    """A record of the SDK's loggers, or one emitted on the SDK's own threads
    ("tracebus-producer", "tracebus-start"), where writing an event could re-enter
    the producer."""
    name = record.name
    return (
        name == "tracebus"
        or name.startswith("tracebus.")
        or (record.threadName or "").startswith(_runtime.SDK_THREAD_PREFIX)
    )


class LoggingHandler(logging.Handler):
    """A logging.Handler that puts records on the timeline (see the module docstring)."""

    def __init__(self, level: int = logging.NOTSET, category: str = "log") -> None:
        super().__init__(level)
        self.category = category

    def handle(self, record: logging.LogRecord) -> bool:
        """filter() and emit() without the handler lock, which emit does not need."""
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if _ours(record):  # first: the SDK's threads must not even resolve (or wait)
                return
            wanted = _wanted.get(self.category)
            if wanted is None:
                wanted = _runtime.current.resolve(self.category)
            if not wanted:
                return
            body = self.format(record) if self.formatter is not None else record.getMessage()
            prio = log_priority(record.levelno)
            for instance in wanted:
                instance.log(
                    body, prio, record.pathname, record.funcName, record.lineno, self.category
                )
        except Exception as e:
            _runtime.current.count_error("logging handler", e)
