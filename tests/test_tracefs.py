"""actors/tracefs.py: finding tracefs, tracebus instances, stale-instance removal.

The tests marked `kernel` create real ftrace instances (as root; they skip with
the reason otherwise) and remove every instance they create, even on failure.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import tracefs
from actors.ftrace_instance import FtraceInstance
from actors.tracefs import Tracefs
from tests.ftrace_helpers import held_tracefs, instances_of, remove_instances_of, settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tfs() -> Iterator[Tracefs]:
    with held_tracefs() as t:
        yield t


def run_python(code: str, env: dict[str, str] | None = None, **kw: object) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
        env={**os.environ, **(env or {})}, cwd=REPO, check=True, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return out.stdout


# -- finding tracefs ------------------------------------------------------------


def fake_tracefs(path: Path) -> Path:
    (path / "instances").mkdir(parents=True)
    (path / "trace_marker").touch()
    return path


def test_only_tracefs_mounts_count_never_a_debugfs_tracing_dir(tmp_path: Path) -> None:
    t = fake_tracefs(tmp_path / "t")
    d = fake_tracefs(tmp_path / "d" / "tracing")
    mounts = (
        f"debugfs {tmp_path / 'd'} debugfs rw 0 0\n"
        f"nodev {t} tracefs rw 0 0\n"
        "proc /proc proc rw 0 0\n"
    )
    assert tracefs.mounted_tracefs(mounts) == str(t)
    # Looking into debugfs's tracing/ would automount tracefs in this namespace, for good.
    assert tracefs.mounted_tracefs(f"debugfs {tmp_path / 'd'} debugfs rw 0 0\n") is None
    assert tracefs.mounted_tracefs(f"nodev {d} tracefs rw 0 0\n") == str(d)
    assert tracefs.mounted_tracefs("proc /proc proc rw 0 0\nbroken\n") is None


def test_explicit_directory_that_is_not_tracefs_gives_a_reason(tmp_path: Path) -> None:
    out = run_python(
        "from actors import tracefs; print(tracefs.open_tracefs())",
        env={tracefs.TRACEFS_ENV: str(tmp_path)},
    )
    assert f"{tmp_path} is not a tracefs directory" in out


def test_a_multithreaded_process_is_told_to_open_tracefs_first() -> None:
    code = (
        "import threading; from actors import tracefs\n"
        "e = threading.Event(); t = threading.Thread(target=e.wait); t.start()\n"
        "print(tracefs._mount_privately()); e.set(); t.join()\n"
    )
    out = run_python(code)
    if "needs root" in out:
        pytest.skip("not root")
    assert "single-threaded" in out and "2 threads" in out


def test_a_user_that_is_not_root_gets_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # The interpreter here is root's own (not executable by another uid): the
    # euid is what the code asks, so that is what is faked.
    monkeypatch.delenv(tracefs.TRACEFS_ENV, raising=False)
    monkeypatch.setattr(tracefs, "mounted_tracefs", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = tracefs._find_tracefs(allow_mount=True)
    assert reason == "tracefs is not mounted, and mounting it needs root (running as uid 1000)"


def test_instance_names_carry_the_pid(tmp_path: Path) -> None:
    t = Tracefs(str(fake_tracefs(tmp_path)))
    assert tracefs.new_instance_name(t, 42) == "tracebus-42"
    (tmp_path / "instances" / "tracebus-42").mkdir()
    (tmp_path / "instances" / "tracebus-42-1").mkdir()
    assert tracefs.new_instance_name(t, 42) == "tracebus-42-2"
    assert [tracefs.instance_owner(n) for n in ("tracebus-42", "tracebus-42-7")] == [42, 42]
    others = ("foo", "tracebus-x", "tracebus-1-2-3")
    assert [tracefs.instance_owner(n) for n in others] == [None] * 3


# -- stale instances (a fake tracefs directory: the rule, with real processes) --


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_rule_keeps_live_creators_and_removes_dead_and_reused_pids(tmp_path: Path) -> None:
    t = Tracefs(str(fake_tracefs(tmp_path)))
    inst = tmp_path / "instances"
    live, dead = f"tracebus-{os.getpid()}", f"tracebus-{dead_pid()}"
    reused = f"tracebus-{os.getpid()}-1"
    for name in (live, dead, reused, "someone-else"):
        (inst / name).mkdir()
    # Created long before this process started: this pid cannot be its creator.
    old = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) - 10
    os.utime(inst / reused, (old, old))
    assert sorted(tracefs.remove_stale_instances(t)) == sorted([dead, reused])
    assert sorted(os.listdir(inst)) == sorted([live, "someone-else"])


# -- the real kernel --------------------------------------------------------------


def test_private_mount_is_invisible_outside_and_state_is_json() -> None:
    before = Path("/proc/self/mounts").read_text().count(" tracefs ")
    out = subprocess.run(
        [sys.executable, "-m", "actors.tracefs", "--state"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    if out.returncode != 0:
        pytest.skip(out.stderr.strip())
    state = json.loads(out.stdout)
    assert set(state) == {"instances", *tracefs.STATE_FILES}
    assert state["tracing_on"] in ("0", "1")
    assert Path("/proc/self/mounts").read_text().count(" tracefs ") == before


def test_instance_is_created_configured_and_removed_without_touching_the_top(tfs: Tracefs) -> None:
    before = settings(tfs)
    name = tracefs.new_instance_name(tfs)
    inst = tracefs.create_instance(tfs, name)
    try:
        assert name in tfs.instance_names()
        inst.write("trace_clock", "boot")
        inst.write("buffer_size_kb", "64")
        inst.write("events/sched/sched_switch/enable", "1")
        inst.write("tracing_on", "1")
        assert "[boot]" in inst.read("trace_clock")
        assert inst.read("set_event").split() == ["sched:sched_switch"]
        assert settings(tfs) == before
    finally:
        tracefs.remove_instance(tfs, name)
    assert name not in tfs.instance_names()
    assert settings(tfs) == before


_OWNER = """
import sys
from actors import tracefs
t = tracefs.open_tracefs(allow_mount=False)
name = tracefs.new_instance_name(t)
inst = tracefs.create_instance(t, name)
inst.write("events/sched/sched_switch/enable", "1")
inst.write("tracing_on", "1")
print(name, flush=True)
sys.stdin.read()
"""


def test_a_killed_owner_leaves_an_instance_that_cleanup_removes(tfs: Tracefs) -> None:
    before = settings(tfs)
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, cwd=REPO, env={**os.environ, tracefs.TRACEFS_ENV: tfs.root},
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        name = owner.stdout.readline().strip()
        assert name == f"tracebus-{owner.pid}"
        assert name not in tracefs.remove_stale_instances(tfs)
        assert name in tfs.instance_names(), "a live owner's instance must be kept"
        owner.kill()
        owner.wait(timeout=10)
        assert name in tfs.instance_names()  # SIGKILL: nobody removed it
        out = subprocess.run(
            [sys.executable, "-m", "actors.tracefs", "--cleanup"], capture_output=True,
            text=True, timeout=30, cwd=REPO, env={**os.environ, tracefs.TRACEFS_ENV: tfs.root},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert f"removed stale ftrace instance {name}" in out.stderr
        assert instances_of(tfs, [owner.pid]) == []
        assert settings(tfs) == before
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        remove_instances_of(tfs, [owner.pid])


def test_a_live_instance_misjudged_stale_keeps_recording(tfs: Tracefs) -> None:
    """Whatever a cleanup thinks of the owner's pid (a clock step, another pid
    namespace), the owner's open file makes the kernel refuse the rmdir, and a
    cleanup that is not the owner never turns anything off first."""
    inst = FtraceInstance.create(tfs)
    try:
        inst.dir.write("tracing_on", "1")
        with pytest.raises(OSError) as refused:
            tracefs.remove_instance(tfs, inst.name, owner=False)
        assert refused.value.errno == errno.EBUSY
        assert inst.dir.read("tracing_on") == "1\n" and inst.name in tfs.instance_names()
    finally:
        inst.close()
    assert inst.name not in tfs.instance_names()
