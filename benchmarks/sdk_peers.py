"""What the tools Python developers use instead of tracebus cost per event.

Each peer runs as its users run it, with its defaults but for what the
benchmark needs to stay honest, and is timed by benchmarks/statement_timer.py
exactly as tracebus's rows are; each one also counts what it really recorded,
so that a peer that drops events under load is seen doing so:

- viztracer_slice_ns: `with tracer.log_event("viztracer"):` under a started
  VizTracer whose ring (tracer_entries) is far larger than a round, emptied
  between rounds; the events of each round are counted in the parsed buffer.
- otel_span_ns: `with tracer.start_as_current_span("otel"):` on an OpenTelemetry
  TracerProvider with a BatchSpanProcessor (its default queue and batch sizes)
  and an exporter that only counts the spans it is handed; flushed between rounds.
- queue_handler_ns: `log.info("job %d done", i)` on a logger whose only handler
  is a logging.handlers.QueueHandler onto a multiprocessing.Queue that another
  process drains (a QueueListener's job, counted there); drained between rounds.

What a peer's background thread does after a round (OpenTelemetry's exporter
thread, the Queue's feeder thread pickling records) is settled before the next
round starts, so that it falls on neither the next statement round nor an empty
one: each figure is what the calling thread waits for, as tracebus's are.

Each function returns (Timing, events the peer delivered).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing as mp
import queue
import time
from collections.abc import Iterator, Sequence
from typing import Any

from benchmarks.statement_timer import Timing, statement_ns

DRAIN_TIMEOUT_S = 60.0
SYNC = "sync"  # a marker through the record queue: the drainer answers once it got there


def viztracer_slice(per_round: int, rounds: int) -> tuple[Timing, int]:
    from viztracer import VizTracer  # type: ignore[import-untyped]

    tracer = VizTracer(tracer_entries=max(1_000_000, 4 * per_round), verbose=0)
    recorded = 0

    @contextlib.contextmanager
    def started() -> Iterator[None]:
        nonlocal recorded
        tracer.start()
        try:
            yield
        finally:
            tracer.stop()
            tracer.parse()
            recorded += sum(1 for e in tracer.data["traceEvents"] if _is_viztracer_event(e))
            tracer.clear()

    statement = 'with tracer.log_event("viztracer"):\n    pass'
    timing = statement_ns(statement, {"tracer": tracer}, per_round, rounds, around=started)
    return timing, recorded


def _is_viztracer_event(event: dict[str, Any]) -> bool:
    # log_event names its event "NAME (file:line)", category "FEE"
    return event.get("cat") == "FEE" and str(event.get("name", "")).startswith("viztracer (")


def otel_span(per_round: int, rounds: int) -> tuple[Timing, int]:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class CountingExporter(SpanExporter):
        spans = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            self.spans += len(spans)
            return SpanExportResult.SUCCESS

    exporter = CountingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("benchmarks.sdk")

    @contextlib.contextmanager
    def exported() -> Iterator[None]:
        yield
        provider.force_flush()  # the round's spans out before the next round's clock

    try:
        statement = 'with tracer.start_as_current_span("otel"):\n    pass'
        timing = statement_ns(statement, {"tracer": tracer}, per_round, rounds, around=exported)
    finally:
        provider.shutdown()
    return timing, exporter.spans


def queue_handler(per_round: int, rounds: int) -> tuple[Timing, int]:
    context = mp.get_context("spawn")  # a fresh drainer, whatever threads this process has
    records: Any = context.Queue()
    counted: Any = context.Queue()
    drainer = context.Process(target=_drain, args=(records, counted), daemon=True)
    drainer.start()
    log = logging.getLogger("benchmarks.sdk.queue_handler")
    log.propagate, log.level = False, logging.INFO
    handler = logging.handlers.QueueHandler(records)
    log.addHandler(handler)

    @contextlib.contextmanager
    def drained_round() -> Iterator[None]:
        yield
        records.put(SYNC)  # the round's records out before the next round's clock
        _drained(counted, drainer)

    try:
        statement = 'log.info("job %d done", i)'
        timing = statement_ns(statement, {"log": log}, per_round, rounds, around=drained_round)
        records.put(None)
        drained = _drained(counted, drainer)
    finally:
        log.removeHandler(handler)
        drainer.join(timeout=DRAIN_TIMEOUT_S)
        if drainer.is_alive():
            drainer.kill()
            drainer.join()
        records.close()
        counted.close()
    return timing, drained


def _drained(counted: Any, drainer: Any) -> int:
    """The drainer's answer to a marker: its count; 0 if it died or did not answer
    in time."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            return int(counted.get(timeout=0.5))
        except queue.Empty:
            if not drainer.is_alive():
                return 0
    return 0


def _drain(records: Any, counted: Any) -> None:
    """The other process: take records until the end marker (None), answering each
    marker with how many records it took."""
    n = 0
    while True:
        record = records.get()
        if record is None or record == SYNC:
            counted.put(n)
            if record is None:
                return
        else:
            n += 1
