"""`tracebus run [-c CONFIG] [--txt] [-o OUT] [--no-probes] -- CMD ARGS...`: record a command.

    1. the service: the one $TRACEBUS_CONSUMER_SOCK names, else the one whose
       socket in the per-user runtime directory answers, else one of our own on
       ipc:// sockets in a fresh /tmp/tb-run-XXXXXXXX (in its own process group,
       so a Ctrl-C in the terminal reaches the command, not the service that
       still has to read the trace back);
    2. the system probes (`python -m actors.probes`, tracebus/run_probes.py), unless
       --no-probes or the service has a probes producer already;
    3. a session, started before the command: CONFIG, else default_config() (one
       32 MiB ring buffer, the SDK's "track_event" with Perfetto's defaults, and
       linux.process_stats's scan of every process at the start);
    4. the command, with TRACEBUS_PRODUCER_SOCK, TRACEBUS_CONSUMER_SOCK and, if
       the config asks for "track_event", TRACEBUS_STARTUP_WAIT_S=5 in its
       environment (every process it starts inherits them): the SDK's first call
       waits, up to that bound, for its instance to start, so the trace holds the
       app's first events;
    5. when the command exits: flush, stop, read back into OUT (tracebus.pftrace),
       print the record CLI's summary (actors/consumer_cli.py's Recording), and
       stop our probes and our own service and remove it, whatever happened
       (failure, Ctrl-C).

Exit code: the command's (128+N if a signal N killed it, as shells say); 1 if the
command succeeded but the recording failed; 1 without running the command when
no service can be reached or started; 127 (not found) or 126 (not executable)
when the command cannot start, with nothing left behind; 2 for a usage error.

Signals: SIGINT, SIGTERM and SIGHUP are taken synchronously (blocked, then
sigtimedwait) while the command runs. Each one sent by a process (kill) is
forwarded to the command; one the terminal sent (Ctrl-C, a hangup) reached the
command already, which is in our process group, and is not sent twice. The
session stops once the command exits, then is read back; a signal after that
aborts the read-back, keeping what was read. A SIGKILL of the runner leaves its
own service and its probes running (nothing can catch it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from actors.endpoints import (
    CONSUMER_ENV,
    PRODUCER_ENV,
    STARTUP_WAIT_ENV,
    default_consumer_endpoint,
    default_producer_endpoint,
    socket_answers,
)
from tracebus._children import log_tail, say, terminate

if TYPE_CHECKING:
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TraceConfig

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 1, 2, 126, 127
DEFAULT_OUT = "tracebus.pftrace"
DEFAULT_BUFFER_KB = 32 * 1024
STARTUP_WAIT_S = "5"
SERVICE_MODULE = "actors.service"
SERVICE_READY_TIMEOUT = 15.0  # a cold interpreter on a loaded machine
SERVICE_STOP_TIMEOUT = 10.0  # its own shutdown timeout is 3 s
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SI_KERNEL = 0x80  # siginfo si_code of a signal the kernel raised (the terminal's Ctrl-C)


class RunError(Exception):
    """The command was not run: the message says why; `code` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def default_config() -> TraceConfig:
    """One ring buffer and the SDK's track_event data source with no track_event_config:
    every category but Perfetto's default-disabled ones ("slow", "debug" tags); and
    linux.process_stats with scan_all_processes_on_start only (every process and
    thread running at the start, with its command line, once: a few tens of KiB;
    no periodic memory counters)."""
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    config = pb.TraceConfig()
    buffer = config.buffers.add(size_kb=DEFAULT_BUFFER_KB)
    buffer.fill_policy = pb.TraceConfig.BufferConfig.RING_BUFFER
    config.data_sources.add().config.name = "track_event"
    process_stats = config.data_sources.add().config
    process_stats.name = "linux.process_stats"
    process_stats.process_stats_config.scan_all_processes_on_start = True
    return config


# -- the service ------------------------------------------------------------------------------


class OwnService:
    """A service of our own on private sockets, for one run; stop() removes everything."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tb-run-", dir="/tmp"))
        self.producer_endpoint = f"ipc://{self.dir}/p"
        self.consumer_endpoint = f"ipc://{self.dir}/c"
        self.log = self.dir / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and return once its consumer port answers; RunError if it does not."""
        argv = [sys.executable, "-m", SERVICE_MODULE]
        argv += ["--producer-endpoint", self.producer_endpoint]
        argv += ["--consumer-endpoint", self.consumer_endpoint]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        socket_path = Path(self.consumer_endpoint.removeprefix("ipc://"))
        deadline = time.monotonic() + SERVICE_READY_TIMEOUT
        while not socket_answers(socket_path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                self.proc = None  # reported here; stop() only removes the directory
                raise RunError(f"could not start a tracing service:\n{log_tail(self.log)}")
            time.sleep(0.02)  # polling a socket file: nothing to wait on

    def stop(self) -> None:
        """SIGTERM (the service frees its sessions, SMBs and sockets), SIGKILL if it
        hangs, then remove the directory and whatever it left in it."""
        proc = self.proc
        if proc is not None:
            if proc.poll():  # it died on its own: say how
                say(f"the tracing service exited with {proc.returncode}:\n{log_tail(self.log)}")
            terminate(proc, SERVICE_STOP_TIMEOUT, "the tracing service")
        shutil.rmtree(self.dir, ignore_errors=True)


def _running_service() -> tuple[str, str] | None:
    """(producer, consumer) endpoints of the service to use, if not one of our own:
    the one $TRACEBUS_CONSUMER_SOCK names (it must answer: the user chose it), else
    the one in the per-user runtime directory if its consumer port answers."""
    if os.environ.get(CONSUMER_ENV):
        return default_producer_endpoint(), default_consumer_endpoint()
    try:
        consumer = default_consumer_endpoint()
        producer = default_producer_endpoint()
    except RuntimeError:  # the runtime directory is not ours: no service of ours there
        return None
    if not socket_answers(Path(consumer.removeprefix("ipc://"))):
        return None
    return producer, consumer


# -- the command ------------------------------------------------------------------------------


def check_command(argv: Sequence[str]) -> None:
    """RunError (127/126) for a command that cannot start, before anything else starts."""
    program = argv[0]
    if shutil.which(program) is not None:
        return
    if os.sep in program and os.path.exists(program):
        raise RunError(f"{program}: permission denied (not executable)", EXIT_NOT_EXECUTABLE)
    raise RunError(f"{program}: command not found", EXIT_NOT_FOUND)


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Command:
    """The recorded command: spawned with the tracing environment, waited for with
    SIGINT/SIGTERM taken synchronously and forwarded."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.argv = list(argv)
        self.env = env
        self.code: int | None = None  # its exit code, once it exited

    def run(self) -> None:
        """Spawn, wait for the exit (forwarding signals), keep the exit code."""
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {*FORWARDED, signal.SIGCHLD})
        try:
            pid = self._spawn(old_mask)
            self.code = self._wait(pid)
            while signal.sigtimedwait(FORWARDED, 0) is not None:
                pass  # the Ctrl-C that ended the command is not an abort of the read-back
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _spawn(self, mask: set[int | signal.Signals]) -> int:
        """posix_spawn, so the child starts with our original signal mask (not the
        blocked one) and with SIGPIPE/SIGXFSZ back to default (Python ignores them)."""
        try:
            return os.posix_spawnp(
                self.argv[0], self.argv, self.env,
                setsigmask=mask, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )  # fmt: skip
        except FileNotFoundError:
            raise RunError(f"{self.argv[0]}: command not found", EXIT_NOT_FOUND) from None
        except OSError as e:
            raise RunError(f"{self.argv[0]}: {e.strerror}", EXIT_NOT_EXECUTABLE) from None

    def _wait(self, pid: int) -> int:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return exit_code(status)
            info = signal.sigtimedwait({*FORWARDED, signal.SIGCHLD}, 1.0)
            if info is not None and info.si_signo in FORWARDED:
                self._forward(pid, info)

    def _forward(self, pid: int, info: signal.struct_siginfo) -> None:
        if info.si_code == SI_KERNEL:
            return  # from the terminal (Ctrl-C, hangup): it went to our whole group already
        try:
            os.kill(pid, info.si_signo)
        except ProcessLookupError:
            pass  # it exited meanwhile: the next waitpid reaps it


# -- the run ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracebus run",
        usage="tracebus run [-c CONFIG] [--txt] [-o OUT] [--no-probes] -- COMMAND [ARGS ...]",
        description="Record a command and every process it starts: uses the running "
        "tracing service or starts one, starts a session, runs COMMAND, and when it "
        "exits writes the trace and prints a summary. Exits with COMMAND's exit code.",
    )
    parser.add_argument("-c", "--config", help="TraceConfig file (default: every "
                        "track_event category into a 32 MiB ring buffer)")  # fmt: skip
    parser.add_argument("--txt", action="store_true", help="the config is a textproto "
                        "(the default for .pbtxt, .txt, .textproto, .cfg)")  # fmt: skip
    parser.add_argument("-o", "--out", default=DEFAULT_OUT,
                        help=f"the trace file to write (a regular file, - for stdout; "
                        f"default {DEFAULT_OUT})")  # fmt: skip
    parser.add_argument("--no-probes", action="store_true", help="do not start the system "
                        "probes (python -m actors.probes: linux.process_stats, "
                        "linux.sys_stats, linux.ftrace)")  # fmt: skip
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to record")
    return parser


def _load_config(path: str | None, text: bool) -> TraceConfig:
    if path is None:
        return default_config()
    from actors.consumer import load_config
    from actors.core.consumer_core import ConfigError

    try:
        return load_config(Path(path), text=True if text else None)
    except ConfigError as e:
        raise RunError(f"error: {e}", EXIT_USAGE) from None


def _check_output(out: str, config: TraceConfig) -> None:
    """-o OUT refused before the command runs (a directory, a device, no such directory)."""
    from actors.consumer_cli import check_output
    from actors.core.consumer_core import ConsumerError

    try:
        check_output(out, config)
    except ConsumerError as e:
        raise RunError(f"error: {e}", EXIT_USAGE) from None


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def record(config: TraceConfig, out: Path, argv: Sequence[str], *, probes: bool = True) -> int:
    """Run `argv` under a session of `config` on a running service or our own (with
    the system probes, if `probes` and the service has none)."""
    from tracebus.run_probes import RunProbes

    # SIGTERM/SIGHUP outside the command's run (Recording takes SIGINT/SIGTERM over
    # meanwhile) end this function by its finally: our service stops on the way out.
    saved = {signum: signal.signal(signum, _interrupt) for signum in FORWARDED[1:]}
    own: OwnService | None = None
    run_probes: RunProbes | None = None
    try:
        running = _running_service()
        if running is None:
            own = OwnService()
            say(f"no tracing service running: starting one in {own.dir}")
            own.start()
            running = own.producer_endpoint, own.consumer_endpoint
        if probes:
            run_probes = RunProbes(*running)
            run_probes.start()
        return _record_command(config, out, argv, *running)
    finally:
        try:
            if run_probes is not None:
                run_probes.stop()
        finally:  # a second Ctrl-C in the probes' stop still stops our own service
            if own is not None:
                own.stop()
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _record_command(
    config: TraceConfig, out: Path, argv: Sequence[str], producer: str, consumer: str
) -> int:
    """The session around the command, on the service at these endpoints."""
    from actors.consumer_cli import EXIT_OK, Recording, connect_timeout
    from actors.core.consumer_core import ConsumerError

    try:
        timeout = connect_timeout(None)
    except ConsumerError as e:
        raise RunError(f"error: {e}", EXIT_USAGE) from None
    env = {**os.environ, PRODUCER_ENV: producer, CONSUMER_ENV: consumer}
    if records_track_events(config):
        env[STARTUP_WAIT_ENV] = STARTUP_WAIT_S
    command = Command(argv, env)

    def until_the_command_exits() -> None:
        command.run()
        recording.signals.target = None  # from now on a signal aborts the read-back

    recording = Recording(config, out, consumer, timeout, until=until_the_command_exits)
    result = recording.run()
    if command.code is None:  # never ran: the session could not start
        raise RunError("the command was not run", result or EXIT_FAILED)
    return command.code or (EXIT_FAILED if result != EXIT_OK else 0)


def records_track_events(config: TraceConfig) -> bool:
    """Whether the session asks for the API's data source: only then is a first
    call's wait worth it (with no track_event instance coming it would wait the
    whole bound, in every process)."""
    return any(ds.config.name == "track_event" for ds in config.data_sources)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _parser().print_usage(sys.stderr)
        say("error: no command to run (put it after --)")
        return EXIT_USAGE
    try:
        check_command(command)
        config = _load_config(args.config, args.txt)
        _check_output(args.out, config)
        return record(config, Path(args.out), command, probes=not args.no_probes)
    except RunError as e:
        say(str(e))
        return e.code
    except KeyboardInterrupt:  # before the command ran (while our service started)
        say("interrupted")
        return 130
