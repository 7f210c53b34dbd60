"""Real tracebus processes for integration tests: one runtime directory, its
service, producers and consumers, and a cleanup that leaves nothing behind.

    @pytest.fixture
    def rt():
        with Runtime() as runtime:
            yield runtime

    service = rt.start_service()          # returns once the consumer port answers
    alpha = rt.start_producer("alpha")    # returns once the service lists it, sources registered
    result, out = rt.record(CONFIG, "a")  # the record CLI, run to the end of its session
    cli = rt.start_consumer_cli("-c", ...)  # the CLI with any arguments; stderr piped
    sup = rt.start_supervisor(rt.write_file("topology.yaml", TEXT))  # its output read as lines
    rt.wait_output(sup, r"base#1 registered"); rt.finish(sup)  # then rt.output(sup)

Contract:

- The runtime directory is /tmp/tb-XXXXXXXX (short: an ipc:// path must fit in
  sun_path); the endpoints are ipc://DIR/p (producers) and ipc://DIR/c (consumers).
  Modules written with write_module() are importable by every child
  (PYTHONPATH = DIR/mods:REPO), e.g. for `actors.producer --module NAME`.
- Every child runs `sys.executable` from the repository, with
  TRACEBUS_TEST_RUNTIME=DIR in its environment: close() finds whatever carries
  it, grandchildren included, even if this object lost track of it. No other
  TRACEBUS_* variable is inherited from the test's environment (a test run from
  inside a topology must not reach its service); a test passes the ones it means.
- Readiness is a handshake or a condition polled with a deadline
  (tests.waiting.wait_for), never a sleep. A child that exits while it is waited
  for fails the wait at once, with the logs.
- A child's stdout and stderr go to DIR/<label>.log, unless spawn() is asked to
  read one of them as lines (wait_line; the lines are copied to the log too) or
  to pipe stderr to the test (the record CLI's summary); logs() returns the logs'
  tails; close() prints them, which pytest shows for a failed test. Lines read are
  also kept: output() and wait_output() search all of them (nothing is consumed).
- The supervisor (launch.supervisor) passes its environment, so the marker, to
  every actor it starts; its per-user default control link goes under DIR
  (XDG_RUNTIME_DIR=DIR), never into the user's. A runtime directory it creates
  outside DIR (the topology names none) and still holds once it is stopped is a
  leftover too: close() reads where it is from the supervisor's output.
- close() always runs the whole cleanup: it closes the consumers of this
  process, asks producers then the service to stop (SIGTERM, as a user would),
  kills what did not stop in time and reaps everything, removes the directory.
  Then it checks that nothing is left behind: no process carrying the marker, no
  new /dev/shm entry, no SMB memfd open or mapped in this process that was not
  before. A leftover is cleaned up first, then fails the test at teardown.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from actors.consumer import Consumer
from actors.core.consumer_core import ConsumerError
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MARKER = "TRACEBUS_TEST_RUNTIME"
SMB_MEMFD = "/memfd:tracebus-smb"
SUN_PATH_MAX = 107
READY_TIMEOUT = 15.0  # a cold interpreter on a loaded 2-core machine
STOP_GRACE = 5.0  # SIGTERM to SIGKILL at cleanup
BUILTIN_SOURCES = ("tracebus.synthetic", "tracebus.demo_timeline")

SUPERVISOR = ("-m", "launch.supervisor")
SUPERVISOR_RUNTIME_DIR = re.compile(r"^supervisor \| runtime dir (.+)$", re.MULTILINE)

Proc = subprocess.Popen
Stderr = Literal["log", "pipe", "lines", "stdout"]


@dataclass
class Lines:
    """One child's stream read as lines: the queue wait_line consumes, every line read
    so far, and whether the stream ended (the child and its heirs closed it)."""

    queue: queue.Queue[str] = field(default_factory=queue.Queue)
    read: list[str] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)


class Runtime:
    """One private runtime directory, and every process a test starts in it."""

    def __init__(self) -> None:
        self._shm_before = _dev_shm()
        self._memfds_before = smb_memfds(os.getpid())
        self.dir = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))
        self.modules = self.dir / "mods"
        self.modules.mkdir()
        self.producer_endpoint = f"ipc://{self.dir}/p"
        self.consumer_endpoint = f"ipc://{self.dir}/c"
        assert len(self.consumer_endpoint) - len("ipc://") < SUN_PATH_MAX - 8, "sun_path"
        self._service: Proc | None = None
        self.procs: list[tuple[str, Proc]] = []
        self.consumers: list[Consumer] = []
        self._control: Consumer | None = None
        self._lines: dict[int, Lines] = {}
        self._supervisors: list[Proc] = []
        self._runtime_dirs: set[Path] = set()  # the supervisors' own, outside self.dir
        self.stop_grace = STOP_GRACE

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- children --------------------------------------------------------------------------

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A child's environment: this one without TRACEBUS_*, then PYTHONPATH, the
        marker and `extra`."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("TRACEBUS_")}
        path = os.pathsep.join([str(self.modules), str(REPO)])
        return {**inherited, "PYTHONPATH": path, MARKER: str(self.dir), **(extra or {})}

    def write_module(self, name: str, text: str) -> Path:
        """A module every child can import as `name`."""
        path = self.modules / f"{name}.py"
        path.write_text(text, encoding="utf-8")
        return path

    def write_file(self, name: str, text: str) -> Path:
        """DIR/name (parents created), holding `text`."""
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def spawn(
        self, label: str, argv: Sequence[str], env: dict[str, str] | None = None, *,
        lines: bool = False, stderr: Stderr = "log", cwd: Path = REPO, prefix: Sequence[str] = (),
    ) -> Proc:  # fmt: skip
        """Start `python argv...` in `cwd` (after the command `prefix`, such as
        `unshare --time ...`, if given). With `lines`, its stdout is read line by line
        (see wait_line) and its stdin is a pipe the test may close. `stderr` goes to the
        log, or to a text pipe the test reads (communicate), or is read line by line,
        or goes where stdout goes ("stdout": one stream, in the order written).
        Whatever is not read otherwise goes to the log."""
        assert not (lines and stderr == "lines"), "one stream per process is read as lines"
        log_path = self._log_path(label)
        # Append mode: the child and the line pump below share the file.
        with open(log_path, "ab") as log:  # the child holds its own descriptor
            err: int | IO[bytes] = log if stderr == "log" else subprocess.PIPE
            if stderr == "stdout":
                err = subprocess.STDOUT
            proc = subprocess.Popen(
                [*prefix, PYTHON, *argv],
                cwd=cwd,
                env=self.env(env),
                stdin=subprocess.PIPE if lines else subprocess.DEVNULL,
                stdout=subprocess.PIPE if lines else log,
                stderr=err,
                text=True,
            )
        self.procs.append((log_path.stem, proc))
        if lines:
            self._pump_lines(proc, proc.stdout, log_path)
        elif stderr == "lines":
            self._pump_lines(proc, proc.stderr, log_path)
        return proc

    def _log_path(self, label: str) -> Path:
        path, n = self.dir / f"{label}.log", 1
        while path.exists():  # a label used twice keeps both logs
            n += 1
            path = self.dir / f"{label}-{n}.log"
        return path

    def _pump_lines(self, proc: Proc, stream: IO[str] | None, log_path: Path) -> None:
        """Keep and queue every line of `stream` for wait_line and wait_output, and copy
        it to the log."""
        lines = self._lines[proc.pid] = Lines()
        assert stream is not None, "spawned with a pipe for the stream read as lines"

        def pump() -> None:
            with open(log_path, "a", encoding="utf-8") as log:
                try:
                    for line in stream:
                        log.write(line)
                        log.flush()
                        lines.read.append(line.rstrip("\n"))
                        lines.queue.put(line.rstrip("\n"))
                except ValueError:
                    pass  # close() closed the pipe while this thread read it
                finally:
                    lines.ended.set()

        threading.Thread(target=pump, daemon=True).start()

    def wait_line(
        self, proc: Proc, prefix: str = "", timeout: float = 10.0, *, contains: str = ""
    ) -> str:
        """The next line that `proc` (spawned with lines=True or stderr="lines") writes
        on the stream read as lines, starting with `prefix` and containing `contains`.
        The lines before it are consumed."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines[proc.pid].queue.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(
                    f"no line starting with {prefix!r} and containing {contains!r} from "
                    f"pid {proc.pid} within {timeout:g} s (exit code {proc.poll()})\n"
                    f"{self.logs()}"
                ) from None
            if line.startswith(prefix) and contains in line:
                return line

    def output(self, proc: Proc) -> str:
        """Every line `proc` (spawned with lines=True or stderr="lines") wrote so far on
        the stream read as lines, wait_line's included."""
        return "\n".join(list(self._lines[proc.pid].read))

    def wait_output(self, proc: Proc, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first match of `pattern` (re.MULTILINE) in output(proc), once there. Fails
        at once, with the output, if the stream ends without one."""

        def found() -> re.Match[str] | None:
            ended = self._lines[proc.pid].ended.is_set()  # before reading: no line missed
            match = re.search(pattern, self.output(proc), re.MULTILINE)
            if match is None and ended:
                raise AssertionError(
                    f"{pattern!r} not in the output of pid {proc.pid}, which ended (exit "
                    f"code {proc.poll()}):\n{self.output(proc)}"
                )
            return match

        return wait_for(found, timeout, f"{pattern!r} in the output of pid {proc.pid}")

    def finish(self, proc: Proc, timeout: float = 60.0) -> int:
        """Wait for `proc` to exit and, if a stream of it is read as lines, for its end
        (output() is then complete); its exit code."""
        try:
            code = proc.wait(timeout)
            if proc.pid not in self._lines or self._lines[proc.pid].ended.wait(timeout):
                return code
        except subprocess.TimeoutExpired:
            pass
        raise AssertionError(f"pid {proc.pid} did not exit and end its output:\n{self.logs()}")

    # -- the service and its control connection ---------------------------------------------

    def start_service(self, *args: str) -> Proc:
        """Start `actors.service` on this runtime's endpoints; return once its consumer
        port answers the hello handshake (the control connection stays open)."""
        endpoints = ["--producer-endpoint", self.producer_endpoint]
        endpoints += ["--consumer-endpoint", self.consumer_endpoint]
        service = self.spawn("service", ["-m", "actors.service", *endpoints, *args])
        self._service = service

        def handshake() -> Consumer | None:
            self.assert_running(service, "the service")
            try:
                return Consumer.connect(self.consumer_endpoint, timeout=0.5, name="probe")
            except ConsumerError:
                return None

        self._control = wait_for(handshake, READY_TIMEOUT, "the service's consumer port")
        return service

    @property
    def service(self) -> Proc:
        """The service process start_service started."""
        assert self._service is not None, "start_service() first"
        return self._service

    @property
    def control(self) -> Consumer:
        """A consumer connection opened by start_service, for queries."""
        assert self._control is not None, "start_service() first"
        return self._control

    def consumer(self, timeout: float = 10.0, name: str = "tracebus-consumer") -> Consumer:
        """A Consumer in this process, closed by close()."""
        c = Consumer.connect(self.consumer_endpoint, timeout=timeout, name=name)
        self.consumers.append(c)
        return c

    # -- the supervisor ----------------------------------------------------------------------------

    def start_supervisor(self, topology: Path | str, *args: str, cwd: Path = REPO) -> Proc:
        """Start `launch.supervisor TOPOLOGY ARGS` in `cwd`, its stdout and stderr read
        as one stream of lines (output, wait_output, finish)."""
        argv = [*SUPERVISOR, str(topology), *args]
        env = self._supervisor_env()
        proc = self.spawn("supervisor", argv, env, lines=True, stderr="stdout", cwd=cwd)
        self._supervisors.append(proc)
        return proc

    def run_supervisor(
        self, topology: Path | str, *args: str, cwd: Path = REPO, timeout: float = 90.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `launch.supervisor TOPOLOGY ARGS` in `cwd` to its end (run())."""
        argv = [PYTHON, *SUPERVISOR, str(topology), *args]
        result = self.run(argv, self._supervisor_env(), timeout, cwd=cwd)
        self._note_runtime_dirs(result.stdout + result.stderr)
        return result

    def _supervisor_env(self) -> dict[str, str]:
        return {"XDG_RUNTIME_DIR": str(self.dir)}  # its default control link: ours

    def _note_runtime_dirs(self, output: str) -> None:
        """Remember the runtime directories a supervisor's output names outside DIR."""
        for match in SUPERVISOR_RUNTIME_DIR.finditer(output):
            path = Path(match.group(1))
            if not path.is_relative_to(self.dir):
                self._runtime_dirs.add(path)

    # -- producers ---------------------------------------------------------------------------

    def start_producer(
        self, name: str, *args: str, data_sources: Sequence[str] = BUILTIN_SOURCES,
        env: dict[str, str] | None = None, wait: bool = True,
    ) -> Proc:  # fmt: skip
        """Start `actors.producer --name NAME ARGS`; unless `wait` is false, return once
        the service lists it (by pid and name) with `data_sources` registered."""
        argv = ["-m", "actors.producer", "--name", name]
        proc = self.spawn(name, [*argv, "--producer-endpoint", self.producer_endpoint, *args], env)
        if wait:
            self.wait_registered(proc, *data_sources, name=name)
        return proc

    def producer_state(self, pid: int) -> tuple[Any, Any]:
        """(the service's ProducerInfo for this pid or None, the whole state)."""
        state = self.control.query_state(timeout=5)
        return next((p for p in state.producers if p.pid == pid), None), state

    def wait_registered(self, proc: Proc, *data_sources: str, name: str | None = None) -> Any:
        """Poll the service until the producer of this pid (and name) registered every
        one of `data_sources`; its ProducerInfo."""

        def registered() -> Any:
            self.assert_running(proc, f"pid {proc.pid}")
            producer, state = self.producer_state(proc.pid)
            if producer is None or (name is not None and producer.name != name):
                return None
            names = {d.descriptor.name for d in state.data_sources if d.producer_id == producer.id}
            return producer if set(data_sources) <= names else None

        what = f"pid {proc.pid} ({name or '?'}) to register {', '.join(data_sources)}"
        return wait_for(registered, READY_TIMEOUT, what)

    # -- the record CLI ------------------------------------------------------------------------

    def start_consumer_cli(
        self, *args: str, env: dict[str, str] | None = None, label: str = "consumer-cli"
    ) -> Proc:
        """Start `actors.consumer ARGS` (no endpoint unless ARGS or `env` name one);
        its stderr (the summary, or the error) is a text pipe: read it with
        communicate()."""
        return self.spawn(label, ["-m", "actors.consumer", *args], env, stderr="pipe")

    def start_record(
        self, config: str, name: str, env: dict[str, str] | None = None
    ) -> tuple[Proc, Path]:
        """Start `actors.consumer -c NAME.pbtxt --txt -o NAME.pftrace` against this
        service; its stderr (the summary) is a text pipe."""
        cfg = self.dir / f"{name}.pbtxt"
        cfg.write_text(config)
        out = self.dir / f"{name}.pftrace"
        args = ["-c", str(cfg), "--txt", "-o", str(out)]
        args += ["--consumer-endpoint", self.consumer_endpoint]
        return self.start_consumer_cli(*args, env=env, label=f"record-{name}"), out

    def record(
        self, config: str, name: str, env: dict[str, str] | None = None, timeout: float = 60.0
    ) -> tuple[subprocess.CompletedProcess[str], Path]:
        """Run the record CLI to the end of its session: (result with stderr, trace path)."""
        proc, out = self.start_record(config, name, env)
        _, err = self.communicate(proc, timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, "", err), out

    def communicate(self, proc: Proc, timeout: float = 60.0) -> tuple[str, str]:
        """proc.communicate(), killing it if it does not finish in time."""
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        return out, err

    def run(
        self, argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 60.0,
        *, cwd: Path = REPO,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """subprocess.run of `argv` (a whole command line) in `cwd`, as a marked child of
        this runtime."""
        return subprocess.run(
            list(argv), cwd=cwd, env=self.env(env), capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=timeout,
        )  # fmt: skip

    # -- ending ----------------------------------------------------------------------------------

    def assert_running(self, proc: Proc, what: str) -> None:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{self.logs()}")

    def stop(self, proc: Proc, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL; the exit code."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait(timeout=timeout)

    def logs(self) -> str:
        parts = []
        for path in sorted(self.dir.glob("*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"----- {path.name} -----\n{text[-4000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        """Stop and reap everything, remove the directory, then fail on a leftover."""
        try:
            self._close_consumers()
            self._stop_all()
            print(self.logs())  # shown by pytest when the test failed
        finally:
            stray = self._kill_marked()
            for supervisor in self._supervisors:
                self._note_runtime_dirs(self.output(supervisor))
            for _label, proc in self.procs:
                _close_pipes(proc)
            kept = self._remove_runtime_dirs()
            shutil.rmtree(self.dir, ignore_errors=True)
        self._check_nothing_left(stray, kept)

    def _close_consumers(self) -> None:
        for c in [*self.consumers, *filter(None, [self._control])]:
            try:
                c.close()
            except Exception as e:  # noqa: BLE001 - cleanup goes on
                print(f"closing a consumer: {e!r}")

    def _stop_all(self) -> None:
        """Producers and consumers first (they say goodbye to the service), the service
        last, each group signalled at once and given one shared grace period."""
        others = [p for _, p in self.procs if p is not self._service]
        for group in (others, [self._service] if self._service else []):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_grace
            for proc in group:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _kill_marked(self) -> list[int]:
        """SIGKILL every live process carrying this runtime's marker; their pids."""
        stray = marked_pids(str(self.dir))
        for pid in stray:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if stray:  # not our children: wait for the kernel, not on a pid. By their state:
            # a dying process stops showing its environment before it is dead.
            wait_for(lambda: not any(map(_running, stray)), STOP_GRACE, "strays to die")
        for _label, proc in self.procs:
            if proc.poll() is None:  # only if the SIGKILL above raced with a fork
                proc.kill()
                proc.wait()
        return stray

    def _remove_runtime_dirs(self) -> list[Path]:
        """Remove the supervisors' runtime directories outside DIR that are still there,
        once everything stopped (a supervisor removes the one it created); those."""
        kept = sorted(path for path in self._runtime_dirs if path.exists())
        for path in kept:
            shutil.rmtree(path, ignore_errors=True)
        return kept

    def _check_nothing_left(self, stray: list[int], runtime_dirs: list[Path]) -> None:
        left = []
        if stray:
            left.append(f"processes still running after cleanup: {stray}")
        if self.dir.exists():
            left.append(f"runtime directory {self.dir}")
        if runtime_dirs:
            left.append(f"a supervisor's runtime directory {[str(d) for d in runtime_dirs]}")
        shm = self.new_dev_shm_entries()
        if shm:
            left.append(f"/dev/shm entries {sorted(shm)}")
        memfds = self.new_smb_memfds()
        if memfds:
            left.append(f"SMB memfds still open or mapped in the test process: {memfds}")
        assert not left, "left behind: " + "; ".join(left)

    def new_dev_shm_entries(self) -> set[str]:
        """/dev/shm entries that appeared since this runtime was created."""
        # multiprocessing's named semaphores (sem.*) belong to whoever else runs on
        # this machine (benchmarks); nothing here creates one.
        return {n for n in _dev_shm() - self._shm_before if not n.startswith("sem.")}

    def new_smb_memfds(self) -> set[int]:
        """Inodes of SMB memfds this process opened or mapped since this runtime was
        created, and still holds."""
        return smb_memfds(os.getpid()) - self._memfds_before


# -- what a process holds, from /proc -------------------------------------------------------------


def marked_pids(runtime_dir: str) -> list[int]:
    """Live processes (zombies excluded) whose environment carries MARKER=runtime_dir."""
    needle = f"{MARKER}={runtime_dir}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes() and not _is_zombie(entry):
                found.append(int(entry.name))
        except OSError:
            pass  # gone meanwhile, or not ours to read
    return sorted(found)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (dead, waiting to be reaped)."""
    try:
        return not _is_zombie(Path(f"/proc/{pid}"))
    except OSError:
        return False


def _is_zombie(proc_dir: Path) -> bool:
    stat = (proc_dir / "stat").read_text()
    return stat[stat.rindex(")") + 2] == "Z"


def smb_inodes_mapped(pid: int) -> list[int]:
    """Inodes of the SMB memfds `pid` maps (one entry per mapping)."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if SMB_MEMFD in line:
            out.append(int(line.split()[4]))
    return out


def smb_inodes_open(pid: int) -> list[int]:
    """Inodes of the SMB memfds `pid` holds open."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(SMB_MEMFD):
                out.append(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
        except OSError:
            pass  # closed meanwhile
    return out


def smb_memfds(pid: int) -> set[int]:
    """Inodes of every SMB memfd `pid` maps or holds open."""
    return set(smb_inodes_mapped(pid)) | set(smb_inodes_open(pid))


def children_of(pid: int) -> list[int]:
    """Live direct children of `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue  # gone meanwhile
            ppid = next(line for line in status.splitlines() if line.startswith("PPid:"))
            if int(ppid.split()[1]) == pid:
                out.append(int(entry))
    return out


def _dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _close_pipes(proc: Proc) -> None:
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
