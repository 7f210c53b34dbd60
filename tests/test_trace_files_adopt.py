"""TraceFiles.adopt (actors/trace_files.py): the output fd a Perfetto consumer
passes with EnableTracing (write_into_file, the `perfetto` CLI's way) becomes a
trace file through a token path the core's rules accept and no consumer can
name; what no session opens is closed after the core call; only a regular
file is written to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.file_sink import output_path
from actors.trace_files import NOT_REGULAR, TraceFiles


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_an_adopted_fd_is_opened_by_its_token_and_written_and_closed(tmp_path: Path):
    target = tmp_path / "trace"
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    os.set_inheritable(fd, True)
    files = TraceFiles()
    token = files.adopt(fd)
    config = pb.TraceConfig(write_into_file=True)
    assert output_path(token, config) == (token, "")  # the core's absolute-path rule lets it by
    file_id = files.open(token)
    assert files.fds[file_id] == fd and not os.get_inheritable(fd)
    files.discard_adopted()  # opened: not discarded
    assert files.append(file_id, b"packets") == ""
    assert files.close(file_id) == ""
    assert not is_open(fd)
    assert target.read_bytes() == b"packets"
    with pytest.raises(OSError):  # a token is good once
        files.open(token)


def test_unopened_adoptions_are_closed_and_their_tokens_die(tmp_path: Path):
    files = TraceFiles()
    fds = [os.open(tmp_path / f"t{i}", os.O_RDWR | os.O_CREAT, 0o600) for i in range(2)]
    tokens = [files.adopt(fd) for fd in fds]
    assert len(set(tokens)) == 2
    files.discard_adopted()
    assert not any(is_open(fd) for fd in fds)
    for token in tokens:
        with pytest.raises(OSError):
            files.open(token)
    assert files.fds == {}


def test_an_adopted_pipe_is_refused_and_closed():
    reader, writer = os.pipe()  # blocking: writing it could stall the service
    try:
        files = TraceFiles()
        token = files.adopt(writer)
        with pytest.raises(OSError) as refused:
            files.open(token)
        assert refused.value.strerror == NOT_REGULAR
        assert not is_open(writer) and files.fds == {}
    finally:
        os.close(reader)


def test_a_path_with_a_nul_byte_is_an_oserror_not_a_crash(tmp_path: Path):
    files = TraceFiles()
    for path in (f"{tmp_path}/a\0b", "/<the output fd the consumer passed, #1>\0"):
        with pytest.raises(OSError):  # not ValueError: the core refuses the session with it
            files.open(path)


def test_close_all_closes_pending_adoptions_too(tmp_path: Path):
    files = TraceFiles()
    fd = os.open(tmp_path / "t", os.O_RDWR | os.O_CREAT, 0o600)
    files.adopt(fd)
    files.close_all()
    assert not is_open(fd)
