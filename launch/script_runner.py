"""Runs a consumer actor script: a Python file that defines `main(tracing)`.

    python -m launch.script_runner SCRIPT [--consumer-endpoint EP] [--control EP]
                                          [--name NAME] [--output FILE] [--result FILE]

The supervisor starts one of these per script consumer, so that a script is
an actor like any other: its own process, its own connection to the service,
its output prefixed with its name. `tracing` is a connected `Tracing`: the
whole blocking Consumer API (actors/consumer.py: enable, start, flush, disable,
wait_disabled, read_buffers, save, free, stats, query_state, observe,
next_event), plus

- `tracing.supervisor`: a SupervisorClient (launch/control.py) for attach(),
  list(), detach() while the session runs;
- `tracing.record(config, output=None, duration_s=None, during=None)`: a whole
  session, as the record CLI runs it, written to `output` even when
  interrupted or when the service goes away mid-read (`during(tracing)` runs
  once it started); with write_into_file in the config, the service writes
  `output` itself as the session runs;
- `tracing.save(path=None)`: Consumer.save (it streams into the file, and keeps
  what it read if the service dies mid-read); without a path, the consumer's
  `output:` from the topology (--output);
- `tracing.stop()`: flush, disable and wait for the end of the session;
- `tracing.wait(seconds)`: an interruptible pause (Ctrl-C raises Interrupted).

Exit codes: 0 when main returns, 1 when it raises (its traceback is printed),
2 when the script cannot be loaded or defines no main, 128+signum (130 for
SIGINT) when the runner was asked to stop: the first SIGINT/SIGTERM interrupts
the handle (its waits raise Interrupted; record() still writes what was read),
a second one raises KeyboardInterrupt. With --result, a JSON file records the
exit code, the error and the trace files the script saved (the supervisor's
summary reads them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from actors.consumer import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    ConfigLike,
    Consumer,
    UnmatchedWatch,
    load_config,
    trace_file_batches,
)
from actors.core import trigger_modes
from actors.core.consumer_core import (
    ConsumerError,
    Interrupted,
    ReadResult,
    RequestTimeout,
    UsageError,
)
from actors.core.consumer_summary import unmatched_at_end
from actors.interrupts import Interrupts
from launch.control import SupervisorClient

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
END_GRACE = 10.0  # beyond duration_ms before record() stops a session itself
FLUSH_TIMEOUT = 5.0


class Tracing(Consumer):
    """The handle a script's main() gets: a Consumer that also reaches the supervisor
    and remembers the traces it wrote."""

    control_endpoint: str | None = None  # None: $TRACEBUS_CONTROL, else the default
    output: Path | None = None  # the topology's `output:` for this consumer, if any

    def __init__(self, endpoint: str | None = None, *, name: str = "tracebus-script") -> None:
        super().__init__(endpoint, name=name)
        self.saved: list[str] = []
        self._supervisor: SupervisorClient | None = None

    @property
    def supervisor(self) -> SupervisorClient:
        """The supervisor's control channel, connected on first use."""
        if self._supervisor is None:
            self._supervisor = SupervisorClient(self.control_endpoint)
        return self._supervisor

    def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.close()
            self._supervisor = None
        super().close()

    def save(self, path: str | os.PathLike | None = None, **kwargs: Any) -> ReadResult:
        """Consumer.save, to `path` or the topology's output (its directory created)."""
        path = Path(path) if path is not None else self.output
        if path is None:
            raise UsageError("save: no path given and no output: in the topology")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return super().save(path, **kwargs)
        finally:
            if self.last_saved is not None:  # also what a failed read kept
                self.saved.append(str(self.last_saved.resolve()))

    def wait(self, seconds: float) -> None:
        """Pause for `seconds` while the connection keeps being served; raises Interrupted
        at once if the runner is told to stop (time.sleep would not)."""
        self._wait(lambda: False, seconds, interruptible=True)

    def stop(self, *, flush_timeout: float = FLUSH_TIMEOUT) -> bool:
        """Flush, disable and wait until the service ended the session; False if the flush
        did not complete in time (the session is stopped anyway)."""
        flushed = self.flush(flush_timeout)
        self.disable()
        self.wait_disabled(DEFAULT_TIMEOUT)
        return flushed

    def record(
        self,
        config: ConfigLike,
        output: str | os.PathLike | None = None,
        *,
        duration_s: float | None = None,
        during: Callable[[Tracing], object] | None = None,
    ) -> ReadResult:
        """Run one session and write it to `output` (default: the topology's): enable,
        call `during(self)` if given (e.g. to attach producers), wait for duration_s
        (else the config's duration_ms, or a trigger session's own end: its
        trigger_timeout_ms and stop_delay_ms), stop, save, free. Interrupted: the trace is
        still written, then Interrupted is raised again."""
        trace_config = load_config(config)
        path = self._output_path(output) if trace_config.write_into_file else None
        enabled = self.enable(trace_config, output_path=path)
        unmatched = UnmatchedWatch(self, enabled.unmatched_data_sources)  # `during` may add some
        interrupted = None
        try:
            if during is not None:
                during(self)
            # A trigger session's own end: trigger_timeout_ms + stop_delay_ms.
            ends_ms = trace_config.duration_ms or trigger_modes.expected_end_ms(trace_config)
            self._run_for(duration_s, ends_ms)
        except Interrupted as e:
            interrupted = e
        if not self.session_ended:
            self.stop()
        result = self.save(output) if path is None else self._written_by_the_service(path)
        self.free()
        if unmatched.remaining():
            print(f"warning: {unmatched_at_end(unmatched.names)}", file=sys.stderr, flush=True)
        if interrupted is not None:
            raise interrupted
        return result

    def _output_path(self, output: str | os.PathLike | None) -> Path:
        """Where a write_into_file session goes: `output`, else the topology's."""
        path = Path(output) if output is not None else self.output
        if path is None:
            raise UsageError("record: no output given and no output: in the topology")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.absolute()

    def _written_by_the_service(self, path: Path) -> ReadResult:
        """write_into_file: the service wrote and closed `path` before the session's end;
        what it holds, counted as a read would be."""
        packets = sum(len(batch) for batch in trace_file_batches(path))
        size = path.stat().st_size
        self.saved.append(str(path.resolve()))
        return ReadResult(packets=packets, bytes=size, replies=0, incomplete_bytes=0)

    def _run_for(self, duration_s: float | None, duration_ms: int) -> None:
        if duration_s is None:
            if not duration_ms:
                raise UsageError(
                    "record: the config has no duration_ms (nor trigger_config): pass duration_s"
                )
            self.wait_disabled(duration_ms / 1000 + END_GRACE)
            return
        try:
            self.wait_disabled(duration_s)
        except RequestTimeout:
            pass  # still running after duration_s: record() stops it


# -- running a script ------------------------------------------------------------------------


def load_script(path: Path) -> ModuleType:
    """Import the file as a module (its directory first on sys.path, as `python FILE`
    would), so tracebacks name the script's own lines."""
    spec = importlib.util.spec_from_file_location("__tracebus_script__", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module


def _say(message: str) -> None:
    print(f"tracebus: {message}", file=sys.stderr, flush=True)


def _print_script_traceback(error: BaseException) -> None:
    """The traceback from the script's main() down, without the runner's own frame."""
    tb = error.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    traceback.print_exception(type(error), error, tb, file=sys.stderr)


def run(args: argparse.Namespace) -> tuple[int, str, list[str]]:
    """(exit code, error, saved traces)."""
    signals = Interrupts()  # the first signal interrupts the handle, a second one aborts
    signals.install()
    tracing: Tracing | None = None
    try:
        try:
            module = load_script(Path(args.script).resolve())
        except Exception as e:
            traceback.print_exc()
            return EXIT_USAGE, f"cannot load {args.script}: {e}", []
        main = getattr(module, "main", None)
        if not callable(main):
            _say(f"error: {args.script} defines no main(tracing)")
            return EXIT_USAGE, "no main(tracing)", []
        try:
            tracing = Tracing.connect(args.consumer_endpoint, args.connect_timeout, name=args.name)
        except ConsumerError as e:
            _say(f"error: {e}")
            return EXIT_FAILED, str(e), []
        tracing.control_endpoint = args.control
        tracing.output = Path(args.output) if args.output else None
        signals.target = tracing
        try:
            main(tracing)
        except (Interrupted, KeyboardInterrupt) as e:
            if not signals.signum:
                _print_script_traceback(e)
                return EXIT_FAILED, f"{type(e).__name__}: {e}", tracing.saved
        except Exception as e:
            _print_script_traceback(e)
            return EXIT_FAILED, f"{type(e).__name__}: {e}", tracing.saved
        if signals.signum:
            _say(f"{signal.Signals(signals.signum).name}: the script was interrupted")
            return signals.exit_code, "interrupted", tracing.saved
        return EXIT_OK, "", tracing.saved
    except KeyboardInterrupt:
        _say("interrupted again: aborted")
        saved = tracing.saved if tracing is not None else []
        return signals.exit_code, "interrupted", saved
    finally:
        signals.target = None
        if tracing is not None:
            tracing.close()


def _write_result(path: str, code: int, error: str, traces: list[str]) -> None:
    data = json.dumps({"exit": code, "error": error, "traces": traces})
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.script_runner",
        description="Run a consumer actor script: a Python file defining main(tracing).",
    )
    parser.add_argument("script", help="the script file")
    parser.add_argument("--consumer-endpoint", metavar="EP", help="the service's consumer port")
    parser.add_argument("--control", metavar="EP", help="the supervisor's control channel")
    parser.add_argument("--name", default="tracebus-script", help="the consumer's name")
    parser.add_argument("--output", metavar="FILE", help="where save() writes by default")
    parser.add_argument("--result", metavar="FILE", help="write a JSON result here")
    parser.add_argument("--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT)
    args = parser.parse_args(argv)
    code, error, traces = run(args)
    if args.result:
        _write_result(args.result, code, error, traces)
    return code


if __name__ == "__main__":
    sys.exit(main())
