"""shm.region: the memory an SMB lives in.

What users rely on: the service's region is a memfd sealed against resizing (a
producer that could shrink it would SIGBUS the service), a producer can map the
same memory through /proc/<pid>/fd/<n> or a passed fd, an attach refuses memory
that is unsealed or of the wrong size, close() gives back the fd and the mapping,
and nothing ever appears in /dev/shm. InProcessRegion is a drop-in for tests.
"""

from __future__ import annotations

import errno
import fcntl
import multiprocessing as mp
import os
import struct
import uuid

import pytest
from shm._atomics import cas32, load32, store32

from shm import abi
from shm.region import REQUIRED_SEALS, InProcessRegion, MemfdRegion, Region, RegionError

SIZE = 64 * 1024
DEADLINE_S = 30.0


def _dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as e:
        assert e.errno == errno.EBADF
        return False
    return True


def _mapped(name: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(f"memfd:{name}" in line for line in f)


@pytest.fixture
def region():
    r = MemfdRegion.create(SIZE, name=f"tracebus-test-{uuid.uuid4().hex[:8]}")
    yield r
    r.close()


# -- create ------------------------------------------------------------------------------


def test_create_is_sealed_against_resizing(region):
    seals = fcntl.fcntl(region.fd, fcntl.F_GET_SEALS)
    assert seals & REQUIRED_SEALS == REQUIRED_SEALS
    assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW and seals & fcntl.F_SEAL_SEAL
    # no write seal: both sides must be able to write the SMB
    assert not seals & fcntl.F_SEAL_WRITE


@pytest.mark.parametrize("new_size", [0, SIZE // 2, SIZE + 4096, 2 * SIZE])
def test_create_ftruncate_is_refused(region, new_size):
    with pytest.raises(OSError) as info:
        os.ftruncate(region.fd, new_size)
    assert info.value.errno == errno.EPERM
    assert os.fstat(region.fd).st_size == SIZE


def test_create_seals_cannot_be_removed_or_extended(region):
    with pytest.raises(OSError) as info:
        fcntl.fcntl(region.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
    assert info.value.errno == errno.EPERM


def test_create_gives_a_zeroed_writable_view_of_exact_size(region):
    assert region.size == SIZE
    assert isinstance(region.buf, memoryview) and len(region.buf) == SIZE
    assert not region.buf.readonly
    assert not any(region.buf)
    region.buf[100:103] = b"abc"
    store32(region.buf, 4096, 0x70000000)
    assert load32(region.buf, 4096) == 0x70000000


def test_create_fd_is_close_on_exec(region):
    assert fcntl.fcntl(region.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


@pytest.mark.parametrize("size", [0, -1])
def test_create_refuses_non_positive_size(size):
    with pytest.raises(RegionError):
        MemfdRegion.create(size)


def test_nothing_appears_in_dev_shm():
    before = _dev_shm()
    a = MemfdRegion.create(SIZE, name="tracebus-devshm-probe")
    try:
        assert _dev_shm() == before
        b = MemfdRegion.attach_path(f"/proc/self/fd/{a.fd}", SIZE)
        b.close()
        assert _dev_shm() == before
    finally:
        a.close()
    assert _dev_shm() == before
    assert not any("tracebus" in name for name in _dev_shm())


# -- attach ------------------------------------------------------------------------------


def test_attach_path_maps_the_same_memory(region):
    other = MemfdRegion.attach_path(f"/proc/self/fd/{region.fd}", SIZE)
    try:
        assert other.fd != region.fd
        assert other.size == SIZE
        region.buf[10:15] = b"hello"
        assert bytes(other.buf[10:15]) == b"hello"
        struct.pack_into("<I", other.buf, SIZE - 4, 0xFEEDFACE)
        assert load32(region.buf, SIZE - 4) == 0xFEEDFACE
        # a CAS on one mapping is seen by the other
        assert cas32(other.buf, 0, 0, 5 << abi.LAYOUT_SHIFT) == 0
        assert cas32(region.buf, 0, 0, 1) == 5 << abi.LAYOUT_SHIFT
    finally:
        other.close()
    # closing the attached side leaves the creator's mapping intact
    assert bytes(region.buf[10:15]) == b"hello"


def test_attach_path_without_expected_size_takes_the_file_size(region):
    other = MemfdRegion.attach_path(f"/proc/self/fd/{region.fd}")
    try:
        assert other.size == SIZE
    finally:
        other.close()


def test_attach_path_wrong_size_is_refused(region):
    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(RegionError):
        MemfdRegion.attach_path(f"/proc/self/fd/{region.fd}", SIZE + 4096)
    assert set(os.listdir("/proc/self/fd")) == fds_before, "the opened fd leaked"


def test_attach_path_missing_file_is_refused(tmp_path):
    with pytest.raises(RegionError):
        MemfdRegion.attach_path(str(tmp_path / "nope"))


def test_attach_fd_maps_a_passed_fd(region):
    fd = os.dup(region.fd)
    other = MemfdRegion.attach_fd(fd, SIZE)
    try:
        assert other.fd == fd
        other.buf[0:4] = b"abcd"
        assert bytes(region.buf[0:4]) == b"abcd"
    finally:
        other.close()
    assert not _fd_is_open(fd)


def _memfd(size: int, seals: int | None) -> int:
    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if seals is not None else 0)
    fd = os.memfd_create("tracebus-unsealed", flags)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


@pytest.mark.parametrize(
    "seals",
    [
        None,  # sealing not even allowed
        0,  # allowed but no seal added: the peer could still resize it
        fcntl.F_SEAL_SHRINK,
        fcntl.F_SEAL_GROW,
        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW,  # resize-proof, but seals may still be added
        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL,
    ],
)
def test_attach_fd_refuses_an_unsealed_memfd_and_closes_it(seals):
    fd = _memfd(SIZE, seals)
    with pytest.raises(RegionError):
        MemfdRegion.attach_fd(fd, SIZE)
    assert not _fd_is_open(fd), "attach_fd takes ownership of the fd even when refusing"


@pytest.mark.parametrize("expected", [SIZE - 4096, SIZE + 4096, 4096, 2 * SIZE])
def test_attach_fd_refuses_a_wrong_size_and_closes_it(expected):
    fd = _memfd(SIZE, REQUIRED_SEALS)
    with pytest.raises(RegionError):
        MemfdRegion.attach_fd(fd, expected)
    assert not _fd_is_open(fd)


def test_attach_fd_refuses_an_empty_memfd():
    fd = _memfd(0, REQUIRED_SEALS)
    with pytest.raises(RegionError):
        MemfdRegion.attach_fd(fd)
    assert not _fd_is_open(fd)


def test_attach_fd_refuses_a_regular_file_and_a_pipe(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(bytes(SIZE))
    fd = os.open(path, os.O_RDWR)
    with pytest.raises(RegionError):
        MemfdRegion.attach_fd(fd, SIZE)
    assert not _fd_is_open(fd)
    r, w = os.pipe()
    try:
        with pytest.raises(RegionError):
            MemfdRegion.attach_fd(r)
        assert not _fd_is_open(r)
    finally:
        os.close(w)


def test_attach_fd_refuses_a_write_sealed_memfd_and_closes_it():
    fd = _memfd(SIZE, REQUIRED_SEALS | fcntl.F_SEAL_WRITE)
    with pytest.raises(RegionError):
        MemfdRegion.attach_fd(fd, SIZE)
    assert not _fd_is_open(fd)


# -- close -------------------------------------------------------------------------------


def test_close_releases_fd_and_mapping():
    name = f"tracebus-close-{uuid.uuid4().hex[:8]}"
    r = MemfdRegion.create(SIZE, name=name)
    fd = r.fd
    view = r.buf
    assert _mapped(name)
    r.close()
    assert r.fd is None
    assert not _fd_is_open(fd)
    assert not _mapped(name), "the mapping outlived close()"
    with pytest.raises(ValueError):
        view[0]  # released
    r.close()  # idempotent


def test_close_with_a_live_slice_can_be_retried_and_then_unmaps():
    """KNOWN BUG (left failing on purpose). A slice of region.buf (what any reader
    keeps, e.g. payload = region.buf[a:b]) makes close() raise BufferError from
    mmap.close() -- acceptable, the memory cannot be unmapped under a live view --
    but close() has already closed the fd and set self.fd = None, so every later
    close() returns at once and the mapping is never unmapped while the region
    object lives (design.md section 7: nothing left behind, mappings included)."""
    name = f"tracebus-slice-{uuid.uuid4().hex[:8]}"
    r = MemfdRegion.create(SIZE, name=name)
    piece = r.buf[0:8]
    with pytest.raises(BufferError):
        r.close()
    piece.release()
    r.close()  # nothing holds the memory any more: this close must finish the job
    assert not _mapped(name), "the mapping outlived a close() retried after the view was gone"


def test_context_manager_closes():
    name = f"tracebus-ctx-{uuid.uuid4().hex[:8]}"
    with MemfdRegion.create(SIZE, name=name) as r:
        fd = r.fd
        assert _mapped(name)
    assert not _fd_is_open(fd)
    assert not _mapped(name)


def test_closing_creator_keeps_attached_mapping_alive():
    a = MemfdRegion.create(SIZE)
    b = MemfdRegion.attach_path(f"/proc/self/fd/{a.fd}", SIZE)
    try:
        a.buf[0:3] = b"xyz"
        a.close()
        assert bytes(b.buf[0:3]) == b"xyz"
        b.buf[0:3] = b"abc"
        assert bytes(b.buf[0:3]) == b"abc"
    finally:
        b.close()


# -- another process -----------------------------------------------------------------------


def _child_attach(path: str, size: int, conn) -> None:
    report: dict = {}
    try:
        region = MemfdRegion.attach_path(path, size)
    except Exception as e:  # report, do not hang the parent
        conn.send({"error": repr(e)})
        return
    try:
        report["seen"] = bytes(region.buf[0:16])
        report["word"] = load32(region.buf, 4096)
        for new_size in (0, size // 2, size * 2):
            try:
                os.ftruncate(region.fd, new_size)
                report.setdefault("ftruncate", []).append("allowed")
            except OSError as e:
                report.setdefault("ftruncate", []).append(e.errno)
        report["size_after"] = os.fstat(region.fd).st_size
        region.buf[32:40] = b"fromkid!"
        report["cas"] = cas32(region.buf, 4096, 0x11111111, 0x22222222)
        conn.send(report)
    finally:
        region.close()
        conn.close()


def test_child_attaches_through_proc_sees_writes_and_cannot_resize(region):
    region.buf[0:16] = b"tracebus-parent!"
    store32(region.buf, 4096, 0x11111111)
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe()
    path = f"/proc/{os.getpid()}/fd/{region.fd}"
    child = ctx.Process(target=_child_attach, args=(path, SIZE, child_conn))
    try:
        child.start()
        child_conn.close()
        assert parent_conn.poll(DEADLINE_S), "child did not report"
        report = parent_conn.recv()
        child.join(DEADLINE_S)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
        child.join(5)
        parent_conn.close()
    assert "error" not in report, report
    assert report["seen"] == b"tracebus-parent!"
    assert report["word"] == 0x11111111
    assert report["ftruncate"] == [errno.EPERM] * 3
    assert report["size_after"] == SIZE
    assert report["cas"] == 0x11111111
    assert load32(region.buf, 4096) == 0x22222222
    assert bytes(region.buf[32:40]) == b"fromkid!"
    assert os.fstat(region.fd).st_size == SIZE


# -- in-process ------------------------------------------------------------------------------


def test_in_process_region_has_the_same_interface():
    r = InProcessRegion(SIZE)
    assert isinstance(r, Region) and isinstance(r.buf, memoryview)
    assert r.size == SIZE and len(r.buf) == SIZE and not r.buf.readonly
    assert r.fd is None
    assert not any(r.buf)
    assert cas32(r.buf, 0, 0, 7) == 0 and load32(r.buf, 0) == 7
    store32(r.buf, SIZE - 4, 9)
    assert struct.unpack_from("<I", r.buf, SIZE - 4)[0] == 9
    smb = abi.SharedMemoryABI(r.buf, abi.Geometry(SIZE, 4096))
    assert cas32(r.buf, 4096, 0, 1 << abi.LAYOUT_SHIFT) == 0  # partition page 1
    assert smb.bitmap(1) == 1 << abi.LAYOUT_SHIFT
    with r as same:
        assert same is r
    with pytest.raises(ValueError):
        r.buf[0]  # released by close()
    r.close()  # idempotent


@pytest.mark.parametrize("make", [lambda: InProcessRegion(SIZE), lambda: MemfdRegion.create(SIZE)])
def test_both_regions_carry_an_smb_end_to_end(make):
    r = make()
    try:
        smb = abi.SharedMemoryABI(r.buf, abi.resolve_geometry(SIZE, 4096))
        assert cas32(r.buf, 5 * 4096, 0, 3 << abi.LAYOUT_SHIFT) == 0  # partition page 5
        ref = smb.try_acquire_for_writing(5, 2, writer_id=3, chunk_id=9)
        assert smb.release_as_complete(ref)
        got = smb.try_acquire_for_reading(5, 2)
        assert got == ref
        assert smb.release_as_free(got)
        assert smb.bitmap(5) == 0
    finally:
        r.close()
