"""The record CLI's detached modes, Perfetto's --detach / --attach /
--is_detached (actors/record_cli.py picks the mode; consumer_cli.py records):

    python -m actors.consumer -c CONFIG [--txt] --detach=KEY [-o OUT]
    python -m actors.consumer --attach=KEY [--stop] [-o OUT]
    python -m actors.consumer --is_detached=KEY

--detach enables the session (and starts it, deferred_start included), leaves
it to the service under KEY and exits 0: with write_into_file the service
keeps writing OUT (or the config's output_path); without, the trace stays in
the service's buffers until a consumer attaches and reads it (Perfetto's CLI
refuses that case; its service would drop such a trace at the end of
duration_ms, and so does this one: a warning says so).

--attach takes the session back, as if this process had enabled it: it waits
for the session's end (duration_ms; Ctrl-C stops it: flush, disable), or with
--stop stops it at once, then reads the trace into OUT (a buffers-only session:
-o is required; without it the session is detached again under KEY and the
exit code is 2), prints the summary and frees the session. For a
write_into_file session the service writes the file; -o, if given, names that
file for the summary (the path given at --detach).

--is_detached attaches and detaches again at once (traced's way of asking).

Keys are per uid: only the user that detached a session attaches to it.
Exit codes (Perfetto's for these modes): 0 done, or detached (--is_detached);
2 no session is detached under KEY for this user (--attach, --is_detached),
and usage errors; 1 any other error (the service unreachable, a key taken).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.consumer import Consumer
from actors.consumer_cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Recording,
    _read_config,
    _say,
    check_output,
    connection_flags,
    flag_error,
)
from actors.core.consumer_core import ConsumerError, SessionError, UsageError
from actors.core.consumer_summary import format_summary, unmatched_at_start
from actors.output_paths import STDOUT

EXIT_NOT_DETACHED = 2  # perfetto --attach / --is_detached: no such detached session
CLI_NAME = "tracebus-cli"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("detached mode (Perfetto's)")
    modes = group.add_mutually_exclusive_group()
    modes.add_argument(
        "--detach", metavar="KEY", help="enable the session, leave it running under KEY, exit"
    )
    modes.add_argument(
        "--attach", metavar="KEY", help="take back the session detached under KEY and read it"
    )
    modes.add_argument(
        "--is_detached",
        "--is-detached",
        dest="is_detached",
        metavar="KEY",
        help="exit 0 if a session is detached under KEY (it stays detached), else 2",
    )
    group.add_argument("--stop", action="store_true", help="with --attach: stop it at once")


def wanted(args: argparse.Namespace) -> bool:
    return bool(args.detach or args.attach or args.is_detached or args.stop)


def usage_problem(args: argparse.Namespace) -> str:
    """The first flag combination Perfetto's CLI refuses too (or ours cannot serve)."""
    if args.stop and not args.attach:
        return "--stop is supported only in combination with --attach"
    if args.detach is not None and not args.config:
        return "--detach needs the session's config: -c CONFIG"
    if (args.attach or args.is_detached) and args.config:
        return "--attach and --is_detached take no -c: the session keeps its config"
    if args.is_detached and args.out:
        return "--is_detached takes no -o"
    for flag in ("detach", "attach", "is_detached"):
        if getattr(args, flag) == "":
            return f"--{flag}: the key is empty"
    return ""


def detached_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    problem = usage_problem(args)
    if problem:
        parser.error(problem)  # exits 2
    try:
        timeout, endpoint = connection_flags(args)
        if args.detach:
            config = _read_config(args.config, args.txt)
            out = detach_output(args.out, config)
        elif args.out:
            check_output(args.out, pb.TraceConfig())
    except (ConsumerError, RuntimeError) as e:
        return flag_error(e)
    if args.is_detached:
        return is_detached(args.is_detached, endpoint, timeout)
    if args.detach:
        return detach(config, out, args.detach, endpoint, timeout)
    out_path = Path(args.out) if args.out else None
    return AttachedRecording(args.attach, args.stop, out_path, endpoint, timeout, args).run()


def detach_output(out: str | None, config: pb.TraceConfig) -> Path | None:
    """Where the service writes a write_into_file session (None: the config's
    output_path); a buffers-only session takes no -o before --attach."""
    if not config.write_into_file:
        if out:
            raise UsageError(
                "-o with --detach: without write_into_file the trace stays in the service's "
                "buffers; name the file when reading it: --attach=KEY -o OUT"
            )
        return None
    if not out:
        if not config.output_path:
            raise UsageError("--detach with write_into_file: name the file with -o OUT")
        return None
    check_output(out, config)
    return Path(out).absolute()


def detach(
    config: pb.TraceConfig, out: Path | None, key: str, endpoint: str, timeout: float
) -> int:
    """Enable (and start), detach under `key`, exit. A refused detach frees the session
    (the connection closes holding it)."""
    try:
        with Consumer.connect(endpoint, timeout, name=CLI_NAME) as consumer:
            enabled = consumer.enable(config, output_path=out)
            if enabled.unmatched_data_sources:
                _say(f"warning: {unmatched_at_start(enabled.unmatched_data_sources)}")
            if config.deferred_start and not enabled.started:
                consumer.start()
            consumer.detach(key)
    except ConsumerError as e:
        _say(f"error: {e}")
        return EXIT_FAILED
    where = f"the service writes {out or config.output_path}" if config.write_into_file else ""
    if not config.write_into_file and config.duration_ms:
        _say(
            f"warning: without write_into_file, the trace is dropped if the session reaches "
            f"its duration_ms ({config.duration_ms} ms) while detached: attach before then"
        )
    then = f"; {where}" if where else ""
    _say(f"session {enabled.session_id} detached as {key!r}{then} (--attach={key} takes it back)")
    return EXIT_OK


def is_detached(key: str, endpoint: str, timeout: float) -> int:
    """Attach and detach again at once, as perfetto --is_detached does."""
    try:
        with Consumer.connect(endpoint, timeout, name=CLI_NAME) as consumer:
            try:
                consumer.attach(key)
            except SessionError:
                return EXIT_NOT_DETACHED
            consumer.detach(key)
    except ConsumerError as e:
        _say(f"error: {e}")
        return EXIT_FAILED
    return EXIT_OK


class AttachedRecording(Recording):
    """A Recording whose session was enabled by another process (--detach): attach
    instead of enable, then wait for its end (or --stop it), read it, free it."""

    def __init__(
        self,
        key: str,
        stop: bool,
        out: Path | None,
        endpoint: str,
        timeout: float,
        args: argparse.Namespace,
    ) -> None:
        super().__init__(pb.TraceConfig(), out or Path(), endpoint, timeout, args.read_timeout)
        self.key = key
        self.stop = stop
        self.out_given = out is not None
        self.ended_before = False

    def run(self) -> int:
        try:
            code = self._attach()
        except ConsumerError as e:
            _say(f"error: {e}")
            code = EXIT_FAILED
        if code is not None:
            if self.consumer is not None:
                self.consumer.close()
            return code
        return super().run()

    def _attach(self) -> int | None:
        """Attach; an exit code if this is as far as it goes."""
        consumer = self.consumer = Consumer.connect(
            self.endpoint, self.connect_timeout, name=CLI_NAME
        )
        try:
            attached = consumer.attach(self.key)
        except SessionError as e:
            _say(f"error: {e}")
            return EXIT_NOT_DETACHED
        self.config, self.session_id = attached.config, attached.session_id
        self.ended_before = attached.ended  # ended while detached: nothing to stop
        if not self.config.write_into_file and not self.out_given:
            consumer.detach(self.key)
            _say(
                f"error: session {self.session_id} keeps its trace in the service's buffers: "
                f"name the file to read it into with -o OUT (it stays detached as {self.key!r})"
            )
            return EXIT_USAGE
        if self.config.write_into_file and str(self.out) == STDOUT:
            self.out_given = False  # the service wrote a file: there is nothing to stream
        if self.config.write_into_file and not self.out_given and self.config.output_path:
            self.out, self.out_given = Path(self.config.output_path), True
        return None

    def _record(self) -> int:
        if self.config.write_into_file and not self.out_given:
            return self._unnamed_file()
        return super()._record()

    def _run_session(self, output_path: Path | None = None) -> Consumer:
        """The session runs already: wait for its end, or stop it (--stop)."""
        consumer = self.consumer
        assert consumer is not None  # attached by _attach
        self.signals.target = consumer  # Ctrl-C stops the session, as for our own
        self._learn_producers(consumer)
        self.started = time.monotonic()
        if self.stop and not self.ended_before:
            self._stop_session(consumer)
        else:
            self._wait_for_end(consumer)
        return consumer

    def _unnamed_file(self) -> int:
        """write_into_file to a file whose name only the --detach call knew: wait, free,
        and a summary without the file's packets."""
        consumer = self._run_session()
        assert self.started is not None  # set by _run_session
        seconds = time.monotonic() - self.started
        stats = self._finish(consumer)
        self.notes.append("the service wrote the trace into the file named at --detach")
        info = self._summary_input(self.session_id, seconds, stats)
        info.out_path = "(the file named at --detach)"
        print(format_summary(info), file=sys.stderr, flush=True)
        return self.signals.exit_code if self.signals.signum else EXIT_OK
