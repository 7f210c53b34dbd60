"""The service shell's trace files (actors/trace_files.py): only regular files
are opened, without ever blocking; file ids are not fds (a late append of a
dead session cannot land in another session's file); a failed write or close
returns its error (the shell hands it to ServiceCore.file_failed), and the
record CLI fails with it."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.outbox import AppendToFile, CloseFile
from actors.service import ServiceShell
from actors.trace_files import NOT_REGULAR, TraceFiles
from tests.processes import Runtime
from tests.test_consumer_cli import CONFIG_TEXT, FakeService, run_cli, write_config


def test_a_fifo_without_a_reader_is_refused_without_blocking(tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    errors: list[str | None] = []

    def open_it() -> None:  # in a thread: a blocking open fails the test, not hangs it
        try:
            TraceFiles().open(str(fifo))
        except OSError as e:
            errors.append(e.strerror)

    thread = threading.Thread(target=open_it, daemon=True)
    thread.start()
    thread.join(timeout=10.0)
    assert errors == [NOT_REGULAR]


def test_a_fifo_with_a_reader_and_a_device_are_refused(tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        files = TraceFiles()
        for path in (str(fifo), "/dev/null"):
            with pytest.raises(OSError) as refused:
                files.open(path)
            assert refused.value.strerror == NOT_REGULAR
        assert files.fds == {}  # nothing left open
    finally:
        os.close(reader)


def test_file_ids_are_never_reused_so_a_late_append_goes_nowhere(tmp_path: Path):
    files = TraceFiles()
    first = files.open(str(tmp_path / "a"))
    assert files.close(first) == ""
    second = files.open(str(tmp_path / "b"))  # likely on the fd the first had
    assert second != first
    assert files.append(first, b"late") == ""  # dropped
    assert files.append(second, b"mine") == ""
    files.close_all()
    assert (tmp_path / "a").read_bytes() == b""
    assert (tmp_path / "b").read_bytes() == b"mine"
    assert os.stat(tmp_path / "b").st_mode & 0o777 == 0o600


def test_a_failed_write_closes_the_file_and_returns_the_error(tmp_path: Path):
    calls = []

    def full_disk(fd: int, data: memoryview) -> int:
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return 3  # a short write first: the rest is retried

    files = TraceFiles(write=full_disk)
    file_id = files.open(str(tmp_path / "t"))
    assert files.append(file_id, b"0123456789") == "No space left on device"
    assert calls == [10, 7] and file_id not in files.fds
    assert files.append(file_id, b"more") == "" and calls == [10, 7]  # nothing more tried
    assert files.close(file_id) == ""


class FailureRecorder:
    """The core's side of a failed write, as the shell sees it."""

    def __init__(self) -> None:
        self.failed: list[tuple[int, str]] = []
        self.sessions: dict = {}  # the shell counts them (it trims the heap after a free)

    def file_failed(self, file_id: int, error: str, now: int) -> list:
        self.failed.append((file_id, error))
        return []

    def pending_work(self, may_send=lambda _consumer: True) -> bool:
        return False

    def next_deadline(self) -> None:
        return None


def test_the_shell_hands_a_failed_write_to_the_core_once(tmp_path: Path):
    shell = ServiceShell(f"ipc://{tmp_path}/p", f"ipc://{tmp_path}/c")
    core = FailureRecorder()
    shell.core = core  # type: ignore[assignment]

    def full_disk(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    shell.files = TraceFiles(write=full_disk)
    try:
        file_id = shell.files.open(str(tmp_path / "t"))
        shell._send_all([AppendToFile(file_id, b"a"), AppendToFile(file_id, b"b")])
        shell._send_all([CloseFile(file_id)])
    finally:
        shell.close()
    assert core.failed == [(file_id, "No space left on device")]


class FileFailingService(FakeService):
    """A service whose write of the consumer's file failed mid-session."""

    def _enable(self, identity: bytes, rid: int, config: bytes) -> None:
        self.config = pb.TraceConfig.FromString(config)
        self._send(identity, rid, enable_tracing={"started": True, "session_id": 7})
        error = "writing the trace file failed: No space left on device"
        self._send(identity, rid, enable_tracing={"disabled": True, "error": error})


def test_the_cli_fails_saying_why_when_the_service_could_not_write_the_file(rt: Runtime):
    out = rt.dir / "t.pftrace"
    cfg = write_config(rt.dir, CONFIG_TEXT + "write_into_file: true\n")
    with FileFailingService(rt.consumer_endpoint) as fake:
        args = ["-c", str(cfg), "--txt", "-o", str(out)]
        code, err = run_cli(rt, *args, "--consumer-endpoint", rt.consumer_endpoint)
    assert fake.config is not None and fake.config.write_into_file
    assert code == 1, err
    assert "No space left on device" in err and "losses: none" not in err
