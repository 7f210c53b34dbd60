"""Outputs are checked before anything is recorded (actors/output_paths.py): `-o`
of the record CLI and of `tracebus run`, and a topology's `output:`, must name a
regular file to create or replace, or `-` for standard output. A directory, a
device node, a FIFO, a socket or a missing directory is refused at start with
one line and exit 2, and the node at the path is left as it was (as root, a
temp file renamed over `-o /dev/full` once turned the device into a plain file).
Real processes throughout (tests/processes.py): the CLI, the service, the runner,
the supervisor.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.consumer import TraceFile
from tests.processes import PYTHON, REPO, Runtime

pytestmark = pytest.mark.timeout(90)

# A session that would run for a minute: a refusal must come long before.
LONG_CONFIG = """
buffers { size_kb: 256 }
data_sources { config { name: "tracebus.synthetic" } }
duration_ms: 60000
"""
SHORT_CONFIG = """
buffers { size_kb: 1024 }
data_sources { config { name: "tracebus.synthetic" for_testing { message_count: 50 } } }
duration_ms: 500
"""
REFUSED_IN = 30.0  # seconds: a cold CLI on a loaded machine, far below the session's 60


def _directory(path: Path) -> None:
    path.mkdir()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))


def _char_device(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a device node needs root")
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # as /dev/full


def _link_to_device(path: Path) -> None:
    path.symlink_to("/dev/full")


NODES: dict[str, tuple[Callable[[Path], None], str]] = {
    "directory": (_directory, "a directory, not a regular file"),
    "fifo": (_fifo, "a FIFO, not a regular file"),
    "socket": (_socket, "a socket, not a regular file"),
    "device": (_char_device, "a character device, not a regular file"),
    "link-to-device": (_link_to_device, "a character device, not a regular file"),
}


def node_kind(path: Path) -> tuple[int, int]:
    """What stands at the path (the link itself, not its target) and its inode."""
    st = os.lstat(path)
    return stat.S_IFMT(st.st_mode), st.st_ino


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def service(rt: Runtime) -> Iterator[Runtime]:
    rt.start_service()
    rt.start_producer("prod")
    yield rt


def record_cli(rt: Runtime, config: str, *args: str) -> tuple[int, str, bytes, float]:
    """Run the record CLI against the runtime's service: (code, stderr, stdout, seconds)."""
    cfg = rt.write_file("cfg.pbtxt", config)
    argv = ["-c", str(cfg), "--txt", "--consumer-endpoint", rt.consumer_endpoint, *args]
    started = time.monotonic()
    result = subprocess.run(
        [PYTHON, "-m", "actors.consumer", *argv], cwd=REPO, env=rt.env(), capture_output=True,
        stdin=subprocess.DEVNULL, timeout=75,
    )  # fmt: skip
    return result.returncode, result.stderr.decode(), result.stdout, time.monotonic() - started


@pytest.mark.parametrize("kind", sorted(NODES))
def test_record_refuses_a_non_regular_output_at_start_and_leaves_it(
    service: Runtime, kind: str
) -> None:
    make, problem = NODES[kind]
    out = service.dir / "out"
    make(out)
    before = node_kind(out)
    code, err, _, seconds = record_cli(service, LONG_CONFIG, "-o", str(out))
    assert code == 2, err
    assert err.strip().splitlines() == [f"tracebus: error: -o: cannot write {out}: {problem}"]
    assert seconds < REFUSED_IN, "refused at start, not after recording"
    assert node_kind(out) == before
    assert leftovers(service.dir) == [] and not service.control.query_state().sessions


def test_record_refuses_a_missing_or_unwritable_directory(service: Runtime) -> None:
    missing = service.dir / "nope" / "t.pftrace"
    code, err, _, _ = record_cli(service, LONG_CONFIG, "-o", str(missing))
    assert code == 2 and f"no such directory: {missing.parent}" in err, err
    not_dir = service.dir / "plain"
    not_dir.write_text("x")
    code, err, _, _ = record_cli(service, LONG_CONFIG, "-o", str(not_dir / "t.pftrace"))
    assert code == 2 and f"not a directory: {not_dir}" in err, err
    if os.geteuid() != 0:  # root may write anywhere
        locked = service.dir / "locked"
        locked.mkdir(mode=0o500)
        code, err, _, _ = record_cli(service, LONG_CONFIG, "-o", str(locked / "t.pftrace"))
        assert code == 2 and "is not writable" in err, err


def test_write_into_file_outputs_are_checked_before_the_service_opens_them(
    service: Runtime,
) -> None:
    config = LONG_CONFIG + "write_into_file: true\n"
    code, err, _, _ = record_cli(service, config, "-o", "-")
    assert code == 2 and "write_into_file session is written by the service itself" in err, err
    directory = service.dir / "d"
    directory.mkdir()
    code, err, _, seconds = record_cli(service, config, "-o", str(directory))
    assert code == 2 and "a directory, not a regular file" in err, err
    assert seconds < REFUSED_IN and directory.is_dir()


def test_dash_writes_the_trace_to_stdout(service: Runtime) -> None:
    code, err, out, _ = record_cli(service, SHORT_CONFIG, "-o", "-")
    assert code == 0, err
    trace = pb.Trace.FromString(out)
    counters = [p.for_testing.counter for p in trace.packet if p.HasField("for_testing")]
    assert len(counters) == 50, err
    assert "to <stdout>" in err and not (service.dir / "-").exists()


def test_a_symlink_to_a_regular_file_is_followed_and_stays_a_link(service: Runtime) -> None:
    target = service.dir / "real.pftrace"
    target.write_bytes(b"old")
    link = service.dir / "link.pftrace"
    link.symlink_to(target)
    code, err, _, _ = record_cli(service, SHORT_CONFIG, "-o", str(link))
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert len(pb.Trace.FromString(target.read_bytes()).packet) > 50
    assert leftovers(service.dir) == []


def test_tracebus_run_refuses_a_directory_before_running_the_command(rt: Runtime) -> None:
    marker = rt.dir / "ran"
    (rt.dir / "xdg").mkdir(mode=0o700)
    (rt.dir / "outdir").mkdir()
    app = rt.write_file("app.py", f"open({str(marker)!r}, 'w').close()\n")
    argv = ["-m", "tracebus", "run", "-o", "outdir", "--", PYTHON, str(app)]
    env = {"XDG_RUNTIME_DIR": str(rt.dir / "xdg")}
    run = rt.spawn("run", argv, env, lines=True, stderr="stdout", cwd=rt.dir)
    assert rt.finish(run) == 2
    output = rt.output(run)
    assert "-o: cannot write outdir: a directory, not a regular file" in output, output
    assert "starting one" not in output and not marker.exists()
    assert (rt.dir / "outdir").is_dir()


def test_a_topology_output_that_is_not_a_regular_file_exits_2(rt: Runtime) -> None:
    os.mkfifo(rt.dir / "pipe.pftrace")
    topology = rt.write_file(
        "topology.yaml",
        "consumers:\n  - name: rec\n    config: cfg.pbtxt\n    output: pipe.pftrace\n",
    )
    rt.write_file("cfg.pbtxt", SHORT_CONFIG)
    result = rt.run_supervisor(topology)
    assert result.returncode == 2, result.stderr
    expected = f"consumers[0].output: {rt.dir / 'pipe.pftrace'}: a FIFO, not a regular file"
    assert result.stderr.strip().endswith(expected), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert stat.S_ISFIFO(os.lstat(rt.dir / "pipe.pftrace").st_mode)


def test_a_node_that_appears_during_the_recording_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "t.pftrace"
    trace = TraceFile(out)
    trace.write_all([b"\x08\x01"])
    out.mkdir()  # someone put a directory there meanwhile
    with pytest.raises(OSError, match="a directory, not a regular file; the trace is kept in"):
        trace.commit()
    trace.discard()
    assert out.is_dir() and trace.temp_path.read_bytes() == b"\x0a\x02\x08\x01"


def test_a_topology_output_under_a_plain_file_exits_2(rt: Runtime) -> None:
    (rt.dir / "plain").write_text("not a directory")
    topology = rt.write_file(
        "topology.yaml",
        "consumers:\n  - name: rec\n    config: cfg.pbtxt\n    output: plain/sub/t.pftrace\n",
    )
    rt.write_file("cfg.pbtxt", SHORT_CONFIG)
    result = rt.run_supervisor(topology)
    assert result.returncode == 2, result.stderr
    out = rt.dir / "plain" / "sub" / "t.pftrace"
    expected = f"consumers[0].output: {out}: {rt.dir / 'plain'} is not a directory"
    assert result.stderr.strip().endswith(expected), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
