"""The record command line: `python -m actors.consumer -c CONFIG [--txt] -o OUT`.

Argument parsing and one Recording: connect, enable the session, wait for its
end (duration_ms, or Ctrl-C: then flush and disable; or, when the Recording is
given `until`, that call's return: then flush and disable), read the trace back into
a TraceFile as it arrives, print the summary (actors/core/consumer_summary.py)
on stderr and free the session. With write_into_file in the config, the
service writes OUT itself (the CLI passes it the absolute path) and the CLI
reads nothing back: it waits for the end and summarizes the file. When the
service dies or stops answering, or a second Ctrl-C aborts, the complete
packets read so far are still written (the summary says the trace is
incomplete) and the exit code says it failed.
OUT is checked first (check_output, actors/output_paths.py): a regular file
path, or `-` for stdout; anything else is a usage error (exit 2) before the
service is even asked.
actors/record_cli.py is the entry point (`python -m actors.consumer` runs it);
the blocking Consumer API it uses is in actors/consumer.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.cli_clone import (
    CloneTarget,
    Snapshots,
    check_snapshot_output,
    run_clone,
    takes_snapshots,
)
from actors.consumer import (
    CONNECT_TIMEOUT_ENV,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    READ_IDLE_TIMEOUT,
    Consumer,
    StdoutTrace,
    TraceFile,
    UnmatchedWatch,
    load_config,
    open_trace,
    parse_config,
    read_config_bytes,
    trace_file_batches,
)
from actors.core import trigger_modes
from actors.core.consumer_core import (
    ConfigError,
    ConsumerError,
    Interrupted,
    RequestTimeout,
    SessionError,
    UsageError,
)
from actors.core.consumer_summary import (
    ProducerKey,
    SummaryInput,
    TraceSummary,
    format_summary,
    printable,
    producer_names,
    unmatched_at_start,
)
from actors.endpoints import default_consumer_endpoint
from actors.interrupts import Interrupts
from actors.output_paths import STDOUT, output_problem

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
END_GRACE = 10.0  # beyond duration + flush + stop timeouts before the CLI stops it itself
CATCH_UP = 0.05  # after `until`: long enough to read the messages already queued


def _say(message: str) -> None:
    # Errors may quote what a producer registered (names): no control character passes.
    print(f"tracebus: {printable(message, 4000)}", file=sys.stderr, flush=True)


class _PendingInterrupt:
    """The interrupt target while the session is being enabled: remembers a Ctrl-C."""

    asked = False

    def interrupt(self) -> None:
        self.asked = True


class Recording:
    """One run of the record CLI: config in, trace file and summary out, an exit code."""

    def __init__(
        self,
        config: pb.TraceConfig,
        out: Path,
        endpoint: str,
        connect_timeout: float,
        read_timeout: float = READ_IDLE_TIMEOUT,
        until: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        # Blocks until the session should end (`tracebus run`: the command's exit);
        # None: the session's own end (duration_ms) or Ctrl-C.
        self.until = until
        self.out = out
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.signals = Interrupts()  # Ctrl-C: abort, or once a session runs, stop it
        self.file: TraceFile | StdoutTrace | None = None
        self.consumer: Consumer | None = None
        self.summary = TraceSummary()
        self.names: dict[ProducerKey, str] = {}
        self.notes: list[str] = []
        self.unmatched: UnmatchedWatch | None = None  # data sources no producer offered
        self.session_id = 0
        self.started: float | None = None  # monotonic seconds when the session started
        self.read_complete = False  # the service said the read-back was over
        self.snapshots: Snapshots | None = None  # CLONE_SNAPSHOT: OUT.0, OUT.1, ... (cli_clone)

    def run(self) -> int:
        self.signals.install()
        try:
            return self._record()
        except KeyboardInterrupt:
            _say("interrupted")
            self._keep_what_was_read("interrupted")
            return self.signals.exit_code
        except (ConfigError, UsageError) as e:
            _say(f"error: {e}")
            return EXIT_USAGE
        except SessionError as e:
            _say(f"error: session failed: {e}")
            self._keep_what_was_read(f"the session failed: {e}")
            return EXIT_FAILED
        except ConsumerError as e:
            _say(f"error: {e}")
            self._keep_what_was_read(str(e))
            return EXIT_FAILED
        except OSError as e:  # the output, at its commit (the path changed meanwhile)
            _say(f"error: cannot write {self.out}: {e.strerror or e}")
            return EXIT_FAILED
        finally:
            self.signals.restore()
            if self.file is not None:
                self.file.discard()
            if self.consumer is not None:
                self.consumer.close()

    def _record(self) -> int:
        if self.config.write_into_file:
            return self._record_by_the_service()
        # run() owns both (it discards and closes them); the steps get them as values.
        try:
            file = self.file = open_trace(self.out)
        except OSError as e:
            raise UsageError(f"cannot write {self.out}: {e.strerror}") from None
        consumer = self._run_session()
        assert self.started is not None  # set by _run_session
        started = self.started
        read_started = time.monotonic()
        self._read_back(consumer, file)
        self.read_complete = True
        seconds = time.monotonic() - started
        stats = self._finish(consumer)
        file.commit()
        info = self._summary_input(self.session_id, seconds, stats)
        info.readback_seconds, info.file_bytes = time.monotonic() - read_started, file.bytes
        summary = format_summary(info)
        print(summary, file=sys.stderr, flush=True)
        return self.signals.exit_code if self.signals.signum else EXIT_OK

    def _run_session(self, output_path: Path | None = None) -> Consumer:
        """Connect, enable (and start), and wait for the session's end."""
        consumer = Consumer.connect(self.endpoint, self.connect_timeout, name="tracebus-cli")
        self.consumer = consumer
        # The service may say the session started before enable() returns here: a
        # Ctrl-C in between is kept, and stops the session once it is ours.
        pending = _PendingInterrupt()
        self.signals.target = pending
        enabled = consumer.enable(self.config, output_path=output_path)
        self.session_id = enabled.session_id
        self._watch_unmatched(consumer, enabled.unmatched_data_sources)
        if takes_snapshots(self.config):
            self.snapshots = Snapshots(
                self.out, self.endpoint, self.connect_timeout, self.read_timeout, self.notes
            )
            self.snapshots.subscribe(consumer)
        self.signals.target = consumer  # from now on Ctrl-C stops the session
        if pending.asked:
            consumer.interrupt()
        self._learn_producers(consumer)
        waits = trigger_modes.waits_to_start(self.config)  # its START trigger starts it
        if self.config.deferred_start and not enabled.started and not waits:
            consumer.start()
        self.started = time.monotonic()
        self._wait_for_end(consumer)
        if consumer.stop_timed_out:
            late = ", ".join(map(printable, consumer.stop_timed_out))  # producers' names
            self.notes.append(f"no stop ack in time from {late}: what they wrote later is not read")
        return consumer

    def _record_by_the_service(self) -> int:
        """write_into_file: the service writes OUT as the session runs and closes it
        before it says the session ended; nothing is read back here. The summary
        counts the packets in the file, with the session's trace_stats."""
        consumer = self._run_session(output_path=self.out.absolute())
        assert self.started is not None  # set by _run_session
        seconds = time.monotonic() - self.started
        stats = self._finish(consumer)
        info = self._summary_input(self.session_id, seconds, stats)
        try:
            for batch in trace_file_batches(self.out):
                self.summary.add_all(batch)
            info.file_bytes = self.out.stat().st_size
        except OSError as e:
            self.notes.append(f"cannot read the trace the service wrote: {e.strerror}")
        self._note_if_empty()
        print(format_summary(info), file=sys.stderr, flush=True)
        return self.signals.exit_code if self.signals.signum else EXIT_OK

    def _watch_unmatched(self, consumer: Consumer, names: Sequence[str]) -> None:
        """Warn now of the data sources no producer offers, unless producers are to
        come (`until`: tracebus run's command); the summary names those that never
        got one."""
        if names and self.until is None:
            _say(f"warning: {unmatched_at_start(names)}")
        try:
            self.unmatched = UnmatchedWatch(consumer, names)
        except ConsumerError as e:
            self.notes.append(f"cannot watch for producers of {', '.join(names)}: {e}")

    def _keep_what_was_read(self, failure: str) -> None:
        """After a failure: the complete packets read so far become the output (a valid
        trace, incomplete), with a summary that says so; nothing read is thrown away."""
        file = self.file
        if file is None or file.committed:
            return
        if not file.packets:
            _say("nothing was read back: no trace written")
            return
        file.commit()
        seconds = time.monotonic() - self.started if self.started is not None else 0.0
        whole = "the read-back was complete" if self.read_complete else "INCOMPLETE trace"
        self.notes.append(f"{whole}: {failure}")
        info = self._summary_input(self.session_id, seconds, None)
        print(format_summary(info), file=sys.stderr, flush=True)

    def _timeout(self, field: str, default_ms: int) -> float:
        return (getattr(self.config, field) or default_ms) / 1000

    def _wait_for_end(self, consumer: Consumer) -> None:
        """The service ends the session at duration_ms; Ctrl-C or an overdue end stops it.
        With `until`, its return ends the session (unless the service ended it first)."""
        if self.until is not None:
            self.until()
            try:  # take in what the service said meanwhile: it may have ended the session
                consumer.wait_disabled(CATCH_UP)
            except RequestTimeout:
                self._stop_session(consumer)
            return
        limit = None
        # A trigger session's end is the service's too: trigger_timeout_ms + stop_delay_ms.
        expected_ms = self.config.duration_ms or trigger_modes.expected_end_ms(self.config)
        if expected_ms:
            limit = expected_ms / 1000 + END_GRACE
            limit += self._timeout("flush_timeout_ms", 5000)
            limit += self._timeout("data_source_stop_timeout_ms", 5000)
        try:
            if self.snapshots is not None:
                self.snapshots.wait(consumer, limit, self.unmatched)
            else:
                consumer.wait_disabled(limit)
            return
        except Interrupted:
            name = signal.Signals(self.signals.signum).name
            then = (
                "letting the service write the rest"
                if self.config.write_into_file
                else "reading back"
            )
            _say(f"{name}: flushing, stopping and {then} (again to abort)")
        except RequestTimeout:
            _say(f"warning: the service did not end the session within {limit:g} s; stopping it")
        self._stop_session(consumer)

    def _stop_session(self, consumer: Consumer) -> None:
        """Flush, then stop the data sources and wait for the service to say it ended."""
        if consumer.session_ended:  # the service ended it already (duration_ms)
            consumer.wait_disabled(0)  # raises SessionError if it ended in an error
            return
        flush_timeout = self._timeout("flush_timeout_ms", 5000)
        if not consumer.flush(flush_timeout):
            self.notes.append(f"the final flush did not complete within {flush_timeout:g} s")
        stop_timeout = self._timeout("data_source_stop_timeout_ms", 5000)
        consumer.disable(timeout=stop_timeout + DEFAULT_TIMEOUT)
        consumer.wait_disabled(DEFAULT_TIMEOUT)

    def _read_back(self, consumer: Consumer, file: TraceFile | StdoutTrace) -> None:
        """Each reply's packets go to the file as they arrive; the wait for the next
        reply restarts with every reply, so a long read lives as long as data flows."""
        for batch in consumer.read_batches(timeout=self.read_timeout):
            file.write_all(batch)
            self.summary.add_all(batch)
        file.flush()
        self._note_if_empty()
        read = consumer.last_read
        assert read is not None  # set when read_batches() finished
        if read.incomplete_bytes:
            lost = read.incomplete_bytes
            self.notes.append(f"the read ended inside a packet: {lost} bytes dropped")

    def _note_if_empty(self) -> None:
        """A trigger session that never triggered returns nothing: say so."""
        reason = trigger_modes.empty_trace_reason(self.config)
        if not self.summary.packets and reason:
            self.notes.append(f"the trace is empty: {reason}")

    def _learn_producers(self, consumer: Consumer) -> None:
        """pid -> producer name, asked at the start and the end (the service also
        names the producers that left in between)."""
        try:
            state = consumer.query_state()
        except ConsumerError as e:
            self.notes.append(f"could not name producers: {e}")
            return
        self.names.update(producer_names(state))

    def _finish(self, consumer: Consumer) -> pb.TraceStats | None:
        """Stats, producer names, free: each best effort, the trace is already read."""
        stats = None
        try:
            stats = consumer.stats()
        except ConsumerError as e:
            self.notes.append(f"no trace stats: {e}")
        self._learn_producers(consumer)
        try:
            consumer.free()
        except ConsumerError as e:
            self.notes.append(f"free_buffers failed: {e}")
        return stats

    def _summary_input(
        self, session_id: int, seconds: float, stats: pb.TraceStats | None
    ) -> SummaryInput:
        policy = pb.TraceConfig.BufferConfig.FillPolicy
        policies = [policy.Name(b.fill_policy or policy.RING_BUFFER) for b in self.config.buffers]
        return SummaryInput(
            out_path="<stdout>" if str(self.out) == STDOUT else str(self.out),
            summary=self.summary,
            session_id=session_id,
            seconds=seconds,
            producer_names=self.names,
            fill_policies=policies,
            stats=stats,
            notes=self.notes,
            # Instance events come before the session's end: all are in by now.
            unmatched_data_sources=self.unmatched.remaining() if self.unmatched else (),
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m actors.consumer",
        description="Record a trace: run one tracing session and write a Perfetto trace file.",
    )
    parser.add_argument("-c", "--config", help="TraceConfig file, or - for stdin (required)")
    parser.add_argument("--txt", action="store_true", help="the config is a textproto")
    clone = parser.add_mutually_exclusive_group()
    clone.add_argument(
        "--clone",
        type=int,
        metavar="SESSION_ID",
        help="copy this running session (of your uid) into OUT; it goes on (no -c)",
    )
    clone.add_argument(
        "--clone-by-name",
        metavar="NAME",
        help="as --clone, naming the session by its unique_session_name (no -c)",
    )
    parser.add_argument(
        "-o", "--out", help="the trace file to write (a regular file), - for stdout (required)"
    )
    parser.add_argument(
        "--consumer-endpoint",
        metavar="EP",
        help="the service's consumer port (default: $TRACEBUS_CONSUMER_SOCK, else the runtime dir)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        metavar="SECONDS",
        help=f"seconds to wait for the service (default: ${CONNECT_TIMEOUT_ENV}, else "
        f"{DEFAULT_CONNECT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=READ_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="give up reading back when the service sends nothing for this long (the "
        f"whole read may take longer; default {READ_IDLE_TIMEOUT:g})",
    )
    return parser


def _read_config(source: str, text: bool) -> pb.TraceConfig:
    if source == "-":
        return parse_config(
            read_config_bytes(sys.stdin.buffer, "<stdin>"), text=text, source="<stdin>"
        )
    return load_config(Path(source), text=text)


def check_output(out: str, config: pb.TraceConfig) -> None:
    """-o OUT, checked before anything is recorded: a regular file to create or
    replace, or - for stdout (actors/output_paths.py); UsageError says why not."""
    if out == STDOUT and config.write_into_file:
        raise UsageError(
            "-o -: a write_into_file session is written by the service itself; name a file"
        )
    problem = output_problem(out)
    if problem:
        raise UsageError(f"-o: cannot write {out}: {problem}")


def connect_timeout(flag: float | None) -> float:
    """--connect-timeout, else $TRACEBUS_CONNECT_TIMEOUT, else the default."""
    if flag is not None:
        return flag
    value = os.environ.get(CONNECT_TIMEOUT_ENV)
    try:
        return float(value) if value else DEFAULT_CONNECT_TIMEOUT
    except ValueError:
        raise UsageError(f"{CONNECT_TIMEOUT_ENV}={value!r} is not a number of seconds") from None


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Clone (--clone, --clone-by-name), or record one session as `args` say
    (actors/record_cli.py calls this for what is not a detached mode)."""
    if args.clone is not None or args.clone_by_name is not None:
        return _clone(parser, args)
    missing = [
        flag for flag, value in (("-c/--config", args.config), ("-o/--out", args.out)) if not value
    ]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    try:
        config = _read_config(args.config, args.txt)
        check_output(args.out, config)
        check_snapshot_output(args.out, config)
        timeout, endpoint = connection_flags(args)
    except (ConsumerError, RuntimeError) as e:
        return flag_error(e)
    return Recording(config, Path(args.out), endpoint, timeout, args.read_timeout).run()


def flag_error(e: ConsumerError | RuntimeError) -> int:
    """Say what is wrong with the command line (or its runtime directory, which is
    not ours: RuntimeError) and give the exit code."""
    _say(f"error: {e}")
    return EXIT_USAGE if isinstance(e, ConsumerError) else EXIT_FAILED


def connection_flags(args: argparse.Namespace) -> tuple[float, str]:
    """(connect timeout, consumer endpoint) from the flags every mode of the CLI
    takes; UsageError for a --read-timeout that is not positive."""
    timeout = connect_timeout(args.connect_timeout)
    endpoint = args.consumer_endpoint or default_consumer_endpoint()
    if not args.read_timeout > 0:
        raise UsageError(f"--read-timeout {args.read_timeout:g}: must be more than 0 s")
    return timeout, endpoint


def _clone(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """--clone / --clone-by-name (actors/cli_clone.py)."""
    if args.config is not None:
        parser.error("--clone/--clone-by-name copy a running session: no -c")
    if not args.out:
        parser.error("--clone/--clone-by-name need -o OUT")
    if args.clone is not None and args.clone <= 0:
        parser.error(f"--clone {args.clone}: a session id is a positive number")
    target = CloneTarget(args.clone or 0, args.clone_by_name or "")
    try:
        problem = output_problem(args.out)
        if problem:
            raise UsageError(f"-o: cannot write {args.out}: {problem}")
        timeout, endpoint = connection_flags(args)
    except (ConsumerError, RuntimeError) as e:
        return flag_error(e)
    return run_clone(target, Path(args.out), endpoint, timeout, args.read_timeout)
