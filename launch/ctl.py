"""Talk to a running supervisor over its control channel (launch/control.py).

    python -m launch.ctl [--control EP] attach NAME [--builtin DS ...] [--module pkg.mod]
                         [--command "..."] [--count N] [--smb-size-kb N] [--page-size-kb N]
                         [--policy drop|stall|stall_then_drop] [--data-source DS ...]
                         [--restart never|on-failure|always] [--max-restarts N] [--no-wait]
    python -m launch.ctl [--control EP] list
    python -m launch.ctl [--control EP] detach NAME|NAME#k
    python -m launch.ctl [--control EP] stop

The supervisor is found through --control, else $TRACEBUS_CONTROL (set for
every actor the supervisor starts, and printed by it at start), else the
per-user default ipc://$XDG_RUNTIME_DIR/tracebus/control.sock (or
/tmp/tracebus-<uid>/control.sock), which points at the running supervisor.

`attach` returns once every instance registered with the service (a producer
attached mid-session joins the running sessions); relative --module imports
and --command lines resolve against this shell's working directory. Exit
codes: 0 done, 1 the supervisor refused or did not answer, 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from launch.control import (
    ATTACH_TIMEOUT,
    DEFAULT_TIMEOUT,
    POLICIES,
    RESTART_POLICIES,
    ControlError,
    format_actors,
)
from launch.control import SupervisorClient as Client

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launch.ctl",
        description=__doc__.split("\n\n")[-2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--control", metavar="EP", help="the supervisor's control endpoint")
    parser.add_argument(
        "--timeout", type=float, help="seconds to wait for the reply (default: per command)"
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    attach = sub.add_parser("attach", help="start a producer group")
    attach.add_argument("name", metavar="NAME")
    kind = attach.add_mutually_exclusive_group()
    kind.add_argument(
        "--builtin",
        nargs="*",
        metavar="DS",
        help="the built-in producer (tracebus.synthetic, tracebus.demo_timeline), optionally "
        "hosting these data source names too",
    )
    kind.add_argument("--module", metavar="PKG.MOD", help="host this module's DataSources")
    kind.add_argument("--command", metavar="CMD", help="a command line that runs a producer")
    attach.add_argument("--count", type=int, default=1, help="instances NAME#1..N (default 1)")
    attach.add_argument("--smb-size-kb", type=int, default=0, metavar="N")
    attach.add_argument("--page-size-kb", type=int, default=0, metavar="N")
    attach.add_argument("--policy", choices=POLICIES)
    attach.add_argument(
        "--data-source", action="append", metavar="DS", help="also host DS (repeatable)"
    )
    attach.add_argument("--restart", choices=RESTART_POLICIES, help="restart policy")
    attach.add_argument("--max-restarts", type=int, metavar="N", help="restart cap")
    attach.add_argument(
        "--no-wait", action="store_true", help="return once started, not once registered"
    )
    sub.add_parser("list", help="actors, pids, states, restarts")
    detach = sub.add_parser("detach", help="stop a producer group or one instance NAME#k")
    detach.add_argument("name", metavar="NAME")
    sub.add_parser("stop", help="shut the whole topology down")
    return parser


def run(args: argparse.Namespace) -> int:
    timeout = args.timeout
    with Client(args.control) as client:
        if args.cmd == "attach":
            instances = client.attach(
                args.name,
                builtin=args.builtin,
                module=args.module,
                command=args.command,
                count=args.count,
                smb_size_kb=args.smb_size_kb,
                page_size_kb=args.page_size_kb,
                policy=args.policy,
                data_sources=args.data_source,
                restart=args.restart,
                max_restarts=args.max_restarts,
                wait=not args.no_wait,
                timeout=timeout or ATTACH_TIMEOUT,
            )
            print(f"attached {', '.join(instances)}")
        elif args.cmd == "list":
            client.timeout = timeout or DEFAULT_TIMEOUT
            print(format_actors(client.list()))
        elif args.cmd == "detach":
            detached = client.detach(args.name, timeout=timeout or ATTACH_TIMEOUT)
            print(f"detached {', '.join(detached)}")
        else:
            client.timeout = timeout or DEFAULT_TIMEOUT
            client.stop()
            print("stopping")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except ControlError as e:
        print(f"tracebus: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except RuntimeError as e:  # the default runtime directory is not ours
        print(f"tracebus: error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
