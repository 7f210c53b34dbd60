"""linux.ftrace: kernel events from a private ftrace instance, as Perfetto writes them.

One data source instance = one kernel instance `tracebus-<pid>[-n]`
(actors/ftrace_instance.py), configured from FtraceConfig by Perfetto's rules
(actors/core/ftrace_plan.py):

- on_setup: the instance is created, its clock set to "boot", its per-CPU
  buffer sized, the requested events enabled. Fields of FtraceConfig not
  implemented are named in one log line, unknown and failed events in another.
- on_start: the per-CPU raw buffers are opened and tracing turned on; a thread
  writes FtraceStats (phase START_OF_TRACE: per-CPU kernel counters, unknown and
  failed events, setup errors) and then, every drain_period_ms, reads every CPU's
  new pages (at most 256 per CPU per pass, again at once while more are
  waiting) and writes one TracePacket{ftrace_events} per CPU and pass
  (actors.core.ftrace_encode.FtraceTranslator). The pids the events named go to
  linux.process_stats of the same session (actors.probes_bus.PIDS).
- on_flush: the thread drains at once, then flushes its writer.
- on_stop: tracing off, a last drain, FtraceStats END_OF_TRACE (the kernel's
  overrun counts: events the ring overwrote before they were read), the
  instance removed. A log line gives events read, losses and decoding errors.

Losses are never hidden: a page the kernel marked as following lost events makes
its bundle say lost_events; the per-CPU overrun is in FtraceStats.

Where tracefs is unavailable (not root, no tracefs, no private mount possible),
the data source still registers; each instance writes FtraceStats
START_OF_TRACE with the reason as its setup error, the reason is logged once per
process, and the session goes on without kernel events.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from actors.core.ftrace_encode import FtraceTranslator
from actors.core.ftrace_plan import FtracePlan, plan_ftrace
from actors.core.ftrace_schema import proto_event
from actors.core.ftrace_stats import CpuStats, ftrace_stats_packet, parse_cpu_stats
from actors.ftrace_instance import PAGE_SIZE, FtraceInstance, SetupResult
from actors.probes_bus import PIDS
from actors.producer_sdk import DataSource, perfetto_config
from actors.tracefs import shared_tracefs
from shm.writer import SMBExhaustedError, TraceWriter

_log = logging.getLogger("tracebus.probes")

START_OF_TRACE = 1
END_OF_TRACE = 2
MAX_PAGES_PER_CPU_PER_PASS = 256  # Perfetto's kMaxPagesPerCpuPerReadTick (1 MiB)

_unavailable_logged = False
_unavailable_lock = threading.Lock()


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _log_unavailable_once(reason: str) -> None:
    global _unavailable_logged
    with _unavailable_lock:
        if _unavailable_logged:
            return
        _unavailable_logged = True
    _log.warning("linux.ftrace: no kernel events: %s", reason)


class FtraceDataSource(DataSource):
    """Perfetto's linux.ftrace over a private ftrace instance (see the module docstring)."""

    name = "linux.ftrace"

    def on_setup(self, config: Any) -> None:
        self._inst: FtraceInstance | None = None
        self._thread: threading.Thread | None = None
        self._setup = SetupResult()
        self._setup_error = ""
        cfg = perfetto_config(config).ftrace_config
        phys = os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE
        self._plan = plan_ftrace(cfg, phys, PAGE_SIZE)
        self._log_plan(self._plan)
        tfs = shared_tracefs()
        if isinstance(tfs, str):
            self._setup_error = tfs
            _log_unavailable_once(tfs)
            return
        try:
            self._inst = FtraceInstance.create(tfs)
        except OSError as e:
            self._setup_error = f"cannot create an ftrace instance: {e}"
            _log.warning("linux.ftrace instance %d: %s", self.instance_id, self._setup_error)
            return
        self._setup = self._inst.configure(self._plan)
        self._log_setup()

    def _log_plan(self, plan: FtracePlan) -> None:
        if plan.ignored:
            _log.info("linux.ftrace: ignored: %s", ", ".join(plan.ignored))
        for note in plan.notes:
            _log.info("linux.ftrace: %s", note)

    def _log_setup(self) -> None:
        s = self._setup
        assert self._inst is not None
        _log.info(
            "linux.ftrace instance %d: %s records %d events (buffer %d KiB per CPU)",
            self.instance_id, self._inst.name, len(s.enabled), self._plan.buffer_size_kb,
        )  # fmt: skip
        if s.unknown or s.failed or s.errors:
            _log.warning(
                "linux.ftrace instance %d: unknown events: %s; failed events: %s; errors: %s",
                self.instance_id, ", ".join(s.unknown) or "none",
                ", ".join(s.failed) or "none", "; ".join(s.errors) or "none",
            )  # fmt: skip

    def on_start(self, config: Any) -> None:
        self._stopping = False
        self._flush_wanted = False
        self._wakeup = threading.Event()
        self._drain: _Drain | None = None
        if self._inst is not None:
            try:
                self._drain = self._start_drain(self._inst)
            except (OSError, ValueError) as e:
                self._setup_error = f"cannot start ftrace instance {self._inst.name}: {e}"
                _log.warning("linux.ftrace instance %d: %s", self.instance_id, self._setup_error)
                self._close_instance()
        self._thread = threading.Thread(
            target=self._run, name=f"linux.ftrace#{self.instance_id}", daemon=True
        )
        self._thread.start()

    def _start_drain(self, inst: FtraceInstance) -> _Drain:
        header, formats, failed = inst.formats()
        if self._plan.disable_generic_events:
            # Perfetto reports the events it skips for want of a proto as failed.
            generic = [f for f in formats if proto_event(f.group, f.name) is None]
            failed += [f"{f.group}/{f.name}" for f in generic]
        self._setup.failed.extend(failed)
        translator = FtraceTranslator(
            header,
            formats,
            compact_sched=self._plan.compact_sched,
            generic_events=not self._plan.disable_generic_events,
        )
        inst.start()
        session = self.config.tracing_session_id
        return _Drain(inst, translator, session)

    def on_flush(self) -> None:
        self._flush_wanted = True
        if self._thread is not None:
            self._wakeup.set()

    def on_stop(self) -> None:
        if self._inst is not None:
            self._inst.stop()  # nothing new from here: the last drain reads it all
        if self._thread is not None:
            self._stopping = True
            self._wakeup.set()
            self._thread.join()
        self._close_instance()

    def _close_instance(self) -> None:
        inst, self._inst = self._inst, None
        if inst is not None:
            try:
                inst.close()
            except OSError as e:
                _log.warning("linux.ftrace: could not remove instance %s: %s", inst.name, e)

    # -- the drain thread ------------------------------------------------------

    def _run(self) -> None:
        w = self.writer()
        self._write(w, self._stats_packet(START_OF_TRACE))
        period = self._plan.drain_period_ms / 1000
        while not self._stopping:
            self._wakeup.wait(period)
            self._wakeup.clear()
            if self._drain is not None:
                self._drain.drain(w, between_passes=lambda: self._serve_flush(w))
            self._serve_flush(w)
        if self._drain is not None:
            self._drain.drain(w)
            self._write(w, self._stats_packet(END_OF_TRACE))
            self._drain.log_totals(self.instance_id)
        w.flush()

    def _serve_flush(self, w: TraceWriter) -> bool:
        """Flush `w` if asked; True once the instance is stopping."""
        if self._flush_wanted:
            self._flush_wanted = False
            w.flush()
        return self._stopping

    def _stats_packet(self, phase: int) -> bytes:
        cpu_stats: list[CpuStats] = []
        if self._drain is not None:
            cpu_stats = self._drain.cpu_stats()
        s = self._setup
        error = "; ".join(filter(None, [self._setup_error, *s.errors]))
        return ftrace_stats_packet(
            phase, cpu_stats, boottime_ns(),
            unknown_events=s.unknown, failed_events=s.failed, setup_error=error,
        )  # fmt: skip

    @staticmethod
    def _write(w: TraceWriter, packet: bytes) -> None:
        try:
            w.write_packet(packet)
        except SMBExhaustedError:
            pass  # the writer counted it; the service reports the loss


class _Drain:
    """Reads the instance's per-CPU pages and writes them as bundles (one thread)."""

    def __init__(self, inst: FtraceInstance, translator: FtraceTranslator, session: int) -> None:
        self.inst = inst
        self.translator = translator
        self.session = session
        self.cpus = inst.cpus()
        self.events = 0
        self.lost_bundles = 0
        self.lost_events = 0
        self.errors = 0

    def drain(self, w: TraceWriter, between_passes: Callable[[], bool] = lambda: False) -> None:
        """Everything the kernel holds now, CPU by CPU, in passes of bounded size.
        Between passes (a rate that keeps the buffers full never lets the loop end by
        itself) `between_passes` serves flushes; True from it ends the drain."""
        more = True
        while more:
            more = False
            pids: set[int] = set()
            renamed: set[int] = set()
            for cpu in self.cpus:
                pages = self.inst.read_cpu(cpu, MAX_PAGES_PER_CPU_PER_PASS)
                more |= len(pages) == MAX_PAGES_PER_CPU_PER_PASS
                if pages:
                    self._write_bundle(w, cpu, pages, pids, renamed)
            if pids or renamed:
                PIDS.publish(self.session, pids, renamed)
            if more and between_passes():
                return

    def _write_bundle(
        self, w: TraceWriter, cpu: int, pages: list[bytes], pids: set[int], renamed: set[int]
    ) -> None:
        b = self.translator.bundle(cpu, pages)
        self.events += b.events
        self.errors += b.errors
        if b.lost:
            self.lost_bundles += 1
            self.lost_events += b.lost_count
        pids |= b.pids
        renamed |= b.renamed
        if b.packet:
            FtraceDataSource._write(w, b.packet)

    def cpu_stats(self) -> list[CpuStats]:
        stats = []
        for cpu in self.cpus:
            try:
                stats.append(parse_cpu_stats(self.inst.cpu_stats_text(cpu), cpu))
            except (OSError, ValueError):
                continue  # a CPU that went offline; the others still count
        return stats

    def log_totals(self, instance_id: int) -> None:
        overrun = sum(s.overrun for s in self.cpu_stats())
        _log.info(
            "linux.ftrace instance %d: %d events read from %s; lost: %d bundles "
            "(%d events counted), kernel overrun %d; undecodable records %d; failed reads %d",
            instance_id, self.events, self.inst.name, self.lost_bundles,
            self.lost_events, overrun, self.errors, self.inst.read_errors,
        )  # fmt: skip
