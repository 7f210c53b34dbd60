"""The producer: a process that hosts data sources, and its command line.

    python -m actors.producer --name X [--module pkg.mod] [--data-source DSNAME] ...

Embedding instead of the CLI: `Producer(name).register(Counter).run()`. The
pieces, each in its own module:

- actors/producer_sdk.py: the DataSource base class (the contract a data source
  follows) and data_sources_in(), which finds a module's data sources;
- actors/producer_host.py: ProducerHost, which wires a ProducerCore (the
  protocol, actors/core/producer_core.py) to the SMB arbiter and the data source
  objects, with no socket of its own;
- actors/producer_shell.py: ProducerShell, which runs the host over a ZeroMQ
  DEALER on the shared poll loop;
- this module: Producer (a name, hints and data sources; run() and stop()) and
  main(). It re-exports the SDK names, the import path data source modules use.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from actors import producer_sdk
from actors.core import producer_core as core
from actors.endpoints import default_producer_endpoint
from actors.producer_host import ProducerHost
from actors.producer_sdk import DataSource, data_sources_in
from actors.producer_shell import COMMIT_PERIOD_S, ProducerShell
from shm.writer import BufferExhaustedPolicy

__all__ = [
    "COMMIT_PERIOD_S",
    "POLICIES",
    "DataSource",
    "Producer",
    "ProducerHost",
    "data_sources_in",
    "main",
]

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
    """A producer process: its data sources, its SMB hints, its connection."""

    def __init__(
        self,
        name: str,
        *,
        endpoint: str | None = None,
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
        self.log = _Prefix(logging.getLogger("tracebus.producer"), name)
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
        """Connect and serve until SIGINT/SIGTERM or stop(); returns an exit code
        (0, or 1 if the service refused the connection)."""
        producer_core = core.ProducerCore(
            self.name,
            [cls.descriptor() for cls in self.data_sources.values()],
            smb_size_hint=self.smb_size_hint,
            page_size_hint=self.page_size_hint,
            policy=int(self.policy),
            pid=os.getpid(),
            uid=os.getuid(),
        )
        endpoint = self.endpoint or default_producer_endpoint()
        self._shell = ProducerShell(producer_core, self.data_sources, endpoint, self.log)
        return self._shell.run()

    def stop(self) -> None:
        """Make run() return after stopping the data sources; safe from any thread."""
        if self._shell is not None:
            self._shell.loop.stop()


def _parser() -> argparse.ArgumentParser:
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
