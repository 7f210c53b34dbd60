"""Talk to a running supervisor over its control channel (launch/control.py).

    python -m launch.ctl [--control EP] attach NAME [--builtin DS ...] [--module pkg.mod]
                         [--command "..."] [--count N] [--smb-size-kb N] [--page-size-kb N]
                         [--policy drop|stall|stall_then_drop] [--data-source DS ...]
                         [--restart never|on-failure|always] [--max-restarts N] [--no-wait]
    python -m launch.ctl [--control EP] list
    python -m launch.ctl [--control EP] detach NAME|NAME#k
    python -m launch.ctl [--control EP] stop
    python -m launch.ctl [--control EP] trigger NAME [NAME ...] [--consumer-endpoint EP]

The supervisor is found through --control, else $TRACEBUS_CONTROL (set for
every actor the supervisor starts, and printed by it at start), else the
per-user default ipc://$XDG_RUNTIME_DIR/tracebus/control.sock (or
/tmp/tracebus-<uid>/control.sock), which points at the running supervisor.

`list` shows the actors; once relays of other machines connected to the
topology's service, also its machines (id, name, connected, producers) and its
producers with the machine each runs on (`host`: the service's own).

`attach` returns once every instance registered with the service (a producer
attached mid-session joins the running sessions); relative --module imports
and --command lines resolve against this shell's working directory. Exit
codes: 0 done, 1 the supervisor refused or did not answer, 2 usage.

`trigger` fires named triggers (every session whose trigger_config names one
starts, stops or snapshots) as a consumer of the topology's service, whose
consumer endpoint the supervisor gives (or --consumer-endpoint, with no
supervisor); the trace records them as fired by "tracebus-ctl". It exits 0
once the service took them, whether or not a session named them (as
`perfetto --trigger`), 1 if no service answered.
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
    format_listing,
)
from launch.control import SupervisorClient as Client

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TRIGGER_CLIENT_NAME = "tracebus-ctl"  # what the trace records as the triggers' producer


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
    sub.add_parser(
        "list", help="actors, pids, states, restarts; the machines, when relays connected"
    )
    detach = sub.add_parser("detach", help="stop a producer group or one instance NAME#k")
    detach.add_argument("name", metavar="NAME")
    sub.add_parser("stop", help="shut the whole topology down")
    trigger = sub.add_parser("trigger", help="fire named triggers at the topology's service")
    trigger.add_argument("names", nargs="+", metavar="NAME")
    trigger.add_argument(
        "--consumer-endpoint", metavar="EP", help="the service's consumer port (no supervisor)"
    )
    return parser


def fire(names: Sequence[str], control_endpoint: str | None, consumer_endpoint: str | None,
         timeout: float) -> None:  # fmt: skip
    """Fire `names` on the service's consumer port (asking the supervisor where it is)."""
    from actors.consumer import Consumer, ConsumerError  # protobuf: only for this command
    from actors.endpoints import CONSUMER_ENV

    if consumer_endpoint is None:
        with Client(control_endpoint, timeout=timeout) as client:
            consumer_endpoint = client.endpoints().get(CONSUMER_ENV)
        if not consumer_endpoint:
            raise ControlError("the supervisor did not say where its service's consumer port is")
    try:
        with Consumer.connect(consumer_endpoint, timeout, name=TRIGGER_CLIENT_NAME) as consumer:
            consumer.trigger(*names, timeout=timeout)
    except ConsumerError as e:
        raise ControlError(f"trigger: {e}") from None


def run(args: argparse.Namespace) -> int:
    timeout = args.timeout
    if args.cmd == "trigger":
        fire(args.names, args.control, args.consumer_endpoint, timeout or DEFAULT_TIMEOUT)
        print(f"fired {', '.join(args.names)}")
        return EXIT_OK
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
            print(format_listing(client.listing()))
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
