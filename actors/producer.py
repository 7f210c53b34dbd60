"""The producer: a process that hosts data sources, and its command line.

    python -m actors.producer --name X [--module pkg.mod] [--data-source DSNAME] ...

Embedding instead of the CLI: `Producer(name).register(Counter).run()` serves
on the calling thread until SIGINT/SIGTERM (on the main thread) or stop(). An
application that hosts a producer beside its own work (tracebus/, the SDK) calls
`start_thread()` instead: the same run() on a daemon thread. Either way:

- `stop(timeout)` from any thread, any number of times, before, during or after
  the run: the loop stops, the data sources' instances are stopped (on_stop,
  writers closed, commits sent), the socket lingers at most
  producer_shell.LINGER_MS, and the thread is joined (up to the timeout). It
  never raises; a stop before the run makes the run return at once. A stopped
  producer stays stopped.
- `call_soon(fn)`: run fn on the producer's loop thread (where the data
  sources' callbacks run); False once the producer is stopped.
- `activate_triggers(*names)`: fire named triggers from any thread, never
  blocking; before the producer is connected they wait for the connection
  (at most ttl_s, TRIGGER_TTL_S by default: ProducerCore.activate_triggers).
- No service yet, or a service gone: one WARNING, quiet retries with the
  core's backoff (a tick every producer_shell.IDLE_TICK_S, no busy loop), and
  an INFO line once connected.
- In a child forked after the start, the producer is the parent's: there
  stop() and call_soon() touch nothing (its loop's pipe is shared with the
  parent) and the child hosts a Producer of its own.

The pieces, each in its own module:

- actors/producer_sdk.py: the DataSource base class (the contract a data source
  follows) and data_sources_in(), which finds a module's data sources;
- actors/producer_host.py: ProducerHost, which wires a ProducerCore (the
  protocol, actors/core/producer_core.py) to the SMB arbiter and the data source
  objects, with no socket of its own, and keeps what it knows of each instance
  (writers, stopped) in an InstanceRecord rather than on the user's object;
- actors/producer_shell.py: ProducerShell, which runs the host over a ZeroMQ
  DEALER on the shared poll loop (actors/loop.py; other threads reach it with
  Loop.call_soon);
- this module: Producer (a name, hints and data sources; run() and stop()) and
  main(). It re-exports the SDK names, the import path data source modules use.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from actors import producer_sdk
from actors.core import producer_core as core
from actors.endpoints import default_producer_endpoint
from actors.loop import Loop
from actors.producer_host import ProducerHost
from actors.producer_sdk import DataSource, data_sources_in, perfetto_config
from actors.producer_shell import COMMIT_PERIOD_S, ProducerShell
from shm.writer import BufferExhaustedPolicy

if TYPE_CHECKING:
    import argparse

__all__ = [
    "COMMIT_PERIOD_S",
    "POLICIES",
    "DataSource",
    "Producer",
    "ProducerHost",
    "data_sources_in",
    "main",
    "perfetto_config",
]

TRIGGER_TTL_S = 60.0  # a trigger fired before the connection waits this long for it
STOP_TIMEOUT_S = 5.0  # stop()'s default bound on joining the producer's thread
THREAD_NAME = "tracebus-producer"

POLICIES = {
    "drop": BufferExhaustedPolicy.DROP,
    "stall": BufferExhaustedPolicy.STALL,
    "stall_then_drop": BufferExhaustedPolicy.STALL_THEN_DROP,
}


class _Prefix(logging.LoggerAdapter):
    """Every message prefixed with the producer's name."""

    def __init__(self, logger: logging.Logger, name: str) -> None:
        super().__init__(logger, {"name": name})
        self.prefix = name

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.prefix}: {msg}", kwargs


class Producer:
    """A producer: its data sources, its SMB hints, its connection (see the module
    docstring for run(), start_thread(), stop() and call_soon())."""

    def __init__(
        self,
        name: str,
        *,
        endpoint: str | None = None,
        log: logging.Logger | None = None,
        smb_size_kb: int = 0,
        page_size_kb: int = 0,
        policy: BufferExhaustedPolicy = BufferExhaustedPolicy.DROP,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.smb_size_hint = smb_size_kb * 1024
        self.page_size_hint = page_size_kb * 1024
        self.policy = BufferExhaustedPolicy(policy)
        self.data_sources: dict[str, type[DataSource]] = {}
        self.log = _Prefix(log or logging.getLogger("tracebus.producer"), name)
        # _lock orders a run's start against stop(): either stop() sees the loop
        # (and stops it) or the run sees _stopped (and returns). Reentrant for a
        # signal handler that calls stop() on a thread inside run().
        self._lock = threading.RLock()
        self._stopped = False
        self._loop: Loop | None = None  # created by the first run or start_thread()
        self._pid = 0  # the process that created _loop
        self._thread: threading.Thread | None = None
        self._shell: ProducerShell | None = None

    def register(self, cls: type[DataSource]) -> type[DataSource]:
        """Host `cls` (usable as a class decorator)."""
        if not cls.name:
            raise ValueError(f"{cls.__qualname__} has no name")
        if cls.name in self.data_sources and self.data_sources[cls.name] is not cls:
            raise ValueError(f"two data sources are named {cls.name!r}")
        self.data_sources[cls.name] = cls
        return cls

    def run(self) -> int:
        """Connect and serve on this thread until SIGINT/SIGTERM (on the main thread)
        or stop(); returns an exit code (0, or 1 if the service refused the
        connection). RuntimeError if this producer already runs or ran."""
        with self._lock:
            if self._stopped:
                return 0
            if self._loop is not None:
                raise RuntimeError(f"producer {self.name!r} already started")
            self._loop, self._pid = Loop(), os.getpid()
        return self._serve(self._loop)

    def start_thread(self) -> None:
        """run() on a daemon thread named THREAD_NAME; returns at once. A second
        call, or one after stop(), does nothing."""
        with self._lock:
            if self._stopped or self._loop is not None:
                return
            self._loop = loop = Loop()  # now, so that call_soon() works at once
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._serve_logged, args=(loop,), name=THREAD_NAME, daemon=True
            )
            self._thread.start()

    def _serve_logged(self, loop: Loop) -> None:
        """The thread's run(): an error ends it with a log line, not a traceback in
        the application's stderr."""
        try:
            self._serve(loop)
        except Exception:
            self.log.exception("the producer stopped on an error")

    def _serve(self, loop: Loop) -> int:
        try:
            # The shell (and its host) are made here: this is their loop thread.
            self._shell = ProducerShell(
                self._core(), self.data_sources, self.endpoint or default_producer_endpoint(),
                self.log, loop=loop,
            )  # fmt: skip
        except BaseException:
            loop.close()
            raise
        return self._shell.run(until=self._stop_requested)

    def _core(self) -> core.ProducerCore:
        return core.ProducerCore(
            self.name,
            [cls.descriptor() for cls in self.data_sources.values()],
            smb_size_hint=self.smb_size_hint,
            page_size_hint=self.page_size_hint,
            policy=int(self.policy),
            pid=os.getpid(),
            uid=os.getuid(),
        )

    def _stop_requested(self) -> bool:
        return self._stopped

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving, from any thread, any number of times, at any point; join
        the thread start_thread() started for up to `timeout` seconds
        (STOP_TIMEOUT_S by default). Never raises."""
        try:
            if self._inherited():
                return
            with self._lock:
                self._stopped = True
                loop, thread = self._loop, self._thread
            if loop is not None:
                loop.stop()  # a no-op once the run closed it
            if thread is not None and thread is not threading.current_thread():
                thread.join(STOP_TIMEOUT_S if timeout is None else timeout)
                if thread.is_alive():
                    self.log.warning("the producer thread did not end within its bound")
        except Exception:
            self.log.exception("stopping the producer failed")

    def call_soon(self, fn: Callable[[], object]) -> bool:
        """Run fn on the producer's loop thread (an exception it raises is logged);
        False, and fn dropped, if the producer is not started or is stopped."""
        if self._inherited():  # before the lock: a forked child may find it held
            return False
        with self._lock:
            loop = None if self._stopped else self._loop
        return loop is not None and loop.call_soon(lambda: self._call_logged(fn))

    def activate_triggers(self, *names: str, ttl_s: float = TRIGGER_TTL_S) -> bool:
        """Fire named triggers (every session whose trigger_config names one acts
        on it); from any thread, never blocks. False, and the names dropped, if the
        producer is not started or is stopped."""
        fired = tuple(str(name) for name in names)
        ttl_ns = int(ttl_s * 1e9)

        def fire() -> None:
            shell = self._shell
            if shell is not None:
                shell.host.activate_triggers(fired, shell.loop.now(), ttl_ns)

        return self.call_soon(fire)

    def _inherited(self) -> bool:
        """Started by the parent of this (forked) process."""
        return self._loop is not None and self._pid != os.getpid()

    def _call_logged(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:
            self.log.exception("a call on the producer's thread failed")


def _parser() -> argparse.ArgumentParser:
    import argparse  # the command line only: an SDK process never parses one

    parser = argparse.ArgumentParser(
        prog="python -m actors.producer",
        description=producer_sdk.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", required=True, help="producer name (filters match it)")
    parser.add_argument("--smb-size-kb", type=int, default=0, help="SMB size hint")
    parser.add_argument("--page-size-kb", type=int, default=0, help="SMB page size hint")
    parser.add_argument("--policy", choices=sorted(POLICIES), default="drop")
    parser.add_argument(
        "--data-source",
        action="append",
        default=[],
        metavar="DSNAME",
        help="also host the synthetic data source under this name (repeatable)",
    )
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="PKG.MOD",
        help="host the DataSource subclasses this module defines (repeatable)",
    )
    parser.add_argument(
        "--producer-endpoint",
        help="the service's producer port (default: $TRACEBUS_PRODUCER_SOCK "
        "or ipc://<runtime dir>/producer.sock)",
    )
    return parser


def _register_all(producer: Producer, synthetic_names: list[str], modules: list[str]) -> None:
    """The built-in data sources, synthetic ones under more names, and each module's;
    ImportError or ValueError if a module or a name does not work."""
    from actors.data_sources import DemoTimelineDataSource, SyntheticDataSource, synthetic_named

    builtins: tuple[type[DataSource], ...] = (SyntheticDataSource, DemoTimelineDataSource)
    for cls in builtins:
        producer.register(cls)
    for name in synthetic_names:
        producer.register(synthetic_named(name))
    for module in modules:
        found = data_sources_in(module)
        if not found:
            producer.log.warning("module %s defines no DataSource subclass", module)
        for cls in found:
            producer.register(cls)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    producer = Producer(
        args.name,
        endpoint=args.producer_endpoint,
        smb_size_kb=args.smb_size_kb,
        page_size_kb=args.page_size_kb,
        policy=POLICIES[args.policy],
    )
    try:
        _register_all(producer, args.data_source, args.module)
    except (ImportError, ValueError) as e:
        parser.error(str(e))
    return producer.run()


if __name__ == "__main__":
    sys.exit(main())
