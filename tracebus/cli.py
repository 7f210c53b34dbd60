"""The `tracebus` command (also `python -m tracebus`): one entry point, a subcommand
per tool.

    tracebus service ...          the tracing service (actors.service)
    tracebus record ...           record one session into a trace file (actors.consumer)
    tracebus up topology.yaml ... run a topology (launch.supervisor)
    tracebus ctl ...              talk to a running topology (launch.ctl)
    tracebus run [-c CONFIG] [-o OUT] -- CMD ...   record a command (tracebus/runner.py)
    tracebus summary TRACE        a look at a trace file (tracebus/trace_summary.py)

Each subcommand gets the rest of the command line unchanged and parses it itself,
so `tracebus SUB --help` is that tool's help and `tracebus record -c ...` is
exactly `python -m actors.consumer -c ...`. The tool's module is imported only
when it runs: `tracebus --help` stays quick, and `import tracebus` never loads this.
The return value of main() is the process's exit code (2 for a usage error).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

EXIT_USAGE = 2


@dataclass(frozen=True)
class Subcommand:
    module: str  # imported when the subcommand runs; its main(argv) -> int is called
    summary: str  # the one line `tracebus --help` shows


SUBCOMMANDS = {
    "service": Subcommand("actors.service", "run the tracing service"),
    "record": Subcommand("actors.record_cli", "record one tracing session into a trace file"),
    "up": Subcommand("launch.supervisor", "run a topology.yaml: service, producers, consumers"),
    "ctl": Subcommand("launch.ctl", "attach, list, detach or stop actors of a running topology"),
    "run": Subcommand("tracebus.runner", "record a command and every process it starts"),
    "summary": Subcommand("tracebus.trace_summary", "what a trace file holds, at a glance"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {sub.summary}" for name, sub in SUBCOMMANDS.items())
    return (
        "usage: tracebus COMMAND [ARGS ...]\n\n"
        "Tracing for multi-process Python: Perfetto's service model and trace format.\n\n"
        f"commands:\n{rows}\n\n"
        "`tracebus COMMAND --help` describes one command.\n"
    )


def _entry(name: str) -> Callable[[list[str]], int]:
    module = importlib.import_module(SUBCOMMANDS[name].module)
    entry: Callable[[list[str]], int] = module.main
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(usage(), end="", file=sys.stderr)
        return EXIT_USAGE
    if args[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"tracebus: unknown command {name!r}\n\n{usage()}", end="", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _entry(name)(rest)
    except SystemExit as e:  # argparse's --help (0) and usage errors (2)
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)  # sys.exit("message"), as the interpreter would
        return 1
