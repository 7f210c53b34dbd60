"""The system probes producer: `python -m actors.probes`, Perfetto's traced_probes.

    python -m actors.probes [--name perfetto.traced_probes] [--producer-endpoint EP]
                            [--smb-size-kb N] [--page-size-kb N] [--policy P]
                            [--no-ftrace] [--cleanup]

It registers as "perfetto.traced_probes" (Perfetto's name, so that configs with
producer_name_filter match it) and hosts Perfetto's probe data sources, with
their config fields and packet formats:

    linux.ftrace         actors.probes_ftrace.FtraceDataSource       (FtraceConfig)
    linux.process_stats  actors.probes_procfs.ProcessStatsDataSource (ProcessStatsConfig)
    linux.sys_stats      actors.probes_procfs.SysStatsDataSource     (SysStatsConfig)

Start-up order (why it matters): ftrace works in a tracefs of its own. When
tracefs is not mounted, a root process mounts it privately, in a mount
namespace of its own (actors.tracefs.open_tracefs), which the kernel allows
only while the process has one thread. So main() opens tracefs FIRST, before
anything that starts threads (ZeroMQ, the producer), then removes the ftrace
instances that probes processes which died left behind
(`instances/tracebus-<pid>`), then connects. Without tracefs (not root, no
kernel support) linux.ftrace still registers, and each of its instances reports
why in its FtraceStats; --no-ftrace leaves linux.ftrace out altogether (a
session asking for it is told that no producer offers it).

`--cleanup` only removes stale instances (of processes no longer alive) and
exits: the service and the supervisor run it when a probes process that
hosted linux.ftrace went away (actors/probe_cleanup.py), so that a SIGKILLed
probes process does not leave the kernel tracing. It prints one line per
instance removed, nothing when there was nothing to do, and exits 0 (1 if an
instance could not be removed).

The SMB defaults to Perfetto's traced_probes hints (2 MiB of 32 KiB pages) and
its writers stall when it is full, as traced_probes' do: ftrace bundles are large
and come in bursts, and a drain that waits loses nothing (the kernel's buffer
holds the events meanwhile, and counts what it has to overwrite).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from actors import tracefs  # no thread, no ZeroMQ: safe before the private mount

if TYPE_CHECKING:
    from actors.producer import Producer
    from actors.producer_sdk import DataSource

NAME = "perfetto.traced_probes"
SMB_SIZE_KB = 2048  # Perfetto's kTracingSharedMemSizeHintBytes for traced_probes
PAGE_SIZE_KB = 32  # ... and kTracingSharedMemPageSizeHintBytes

log = logging.getLogger("tracebus.probes")


def open_tracefs() -> tracefs.Tracefs | str:
    """A Tracefs, or the reason (a str) why ftrace cannot work here; mounted
    privately if need be, which works only while the process has one thread."""
    return tracefs.open_tracefs(allow_mount=True)


def remove_stale(found: tracefs.Tracefs | str) -> tuple[list[str], int]:
    """Remove the instances of probes processes that are gone: (names removed,
    failures). `found` is what open_tracefs() returned."""
    if isinstance(found, str):
        return [], 0
    try:
        removed = tracefs.remove_stale_instances(found)
    except OSError as e:
        log.warning("probes: cannot remove stale ftrace instances: %s", e)
        return [], 1
    for name in removed:
        log.info("probes: removed the ftrace instance %s left by a process that is gone", name)
    return removed, 0


def data_source_classes(*, ftrace: bool = True) -> list[type[DataSource]]:
    """linux.ftrace (unless not `ftrace`), linux.process_stats, linux.sys_stats."""
    from actors.probes_ftrace import FtraceDataSource
    from actors.probes_procfs import ProcessStatsDataSource, SysStatsDataSource

    classes: list[type[DataSource]] = [FtraceDataSource] if ftrace else []
    return [*classes, ProcessStatsDataSource, SysStatsDataSource]


def build_producer(args: argparse.Namespace) -> Producer:
    """The producer with the probes' data sources (imports ZeroMQ: threads follow)."""
    from actors.producer import POLICIES, Producer

    producer = Producer(
        args.name,
        endpoint=args.producer_endpoint,
        log=log,
        smb_size_kb=args.smb_size_kb,
        page_size_kb=args.page_size_kb,
        policy=POLICIES[args.policy],
    )
    for cls in data_source_classes(ftrace=not args.no_ftrace):
        producer.register(cls)
    return producer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m actors.probes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", default=NAME, help=f"producer name (default {NAME})")
    parser.add_argument(
        "--producer-endpoint",
        help="the service's producer port (default: $TRACEBUS_PRODUCER_SOCK "
        "or ipc://<runtime dir>/producer.sock)",
    )
    parser.add_argument("--smb-size-kb", type=int, default=SMB_SIZE_KB, help="SMB size hint")
    parser.add_argument("--page-size-kb", type=int, default=PAGE_SIZE_KB, help="page size hint")
    parser.add_argument(
        "--policy",
        choices=("drop", "stall", "stall_then_drop"),
        default="stall",
        help="when the SMB is full (default stall: traced_probes' writers stall)",
    )  # actors.producer.POLICIES, not imported here: it loads ZeroMQ
    parser.add_argument("--no-ftrace", action="store_true", help="do not host linux.ftrace")
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="remove the ftrace instances of probes processes that are gone, and exit",
    )
    return parser


def cleanup() -> int:
    """`--cleanup`: the stale instances removed, one line each; 1 if one stayed."""
    found = open_tracefs()
    if isinstance(found, str):
        return 0  # no tracefs here: nothing can be left in it
    _removed, failures = remove_stale(found)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    if args.cleanup:
        return cleanup()
    if not args.no_ftrace:
        # First, while this process has one thread (a private mount needs it).
        found = open_tracefs()
        if isinstance(found, str):
            log.info("probes: linux.ftrace: ftrace is not available: %s", found)
        remove_stale(found)
    return build_producer(args).run()


if __name__ == "__main__":
    sys.exit(main())
