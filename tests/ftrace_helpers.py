"""tracefs for tests that run as root, without a mount in the root namespace.

`held_tracefs()` starts a child that calls actors.tracefs.open_tracefs() (which
mounts tracefs privately, in the child's own mount namespace, when it is not
mounted) and waits on its stdin; the test reaches that mount through
/proc/<child>/root. Closing stdin ends the child, and the mount with it. When
tracefs is unavailable the tests using it skip with the child's reason.

Other engineers' tests create `tracebus-<pid>` instances at the same time:
`settings(tfs)` is kernel_state without the instance list, and
`instances_of(tfs, pids)` the instances owned by the given processes, so that
a test checks only what it is responsible for.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pytest

from actors.tracefs import Tracefs, instance_owner, kernel_state, remove_instance

_HOLDER = """
import sys
from actors import tracefs
t = tracefs.open_tracefs(allow_mount=True)
print("unavailable: " + t if isinstance(t, str) else "root " + t.root, flush=True)
sys.stdin.read()
"""


@contextmanager
def held_tracefs() -> Iterator[Tracefs]:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if not line.startswith("root "):
            pytest.skip(f"tracefs is not available: {line or 'the holder died'}")
        yield Tracefs(f"/proc/{child.pid}/root{line[5:]}")
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def settings(tfs: Tracefs) -> dict[str, object]:
    """The top-level settings (kernel_state without the instances)."""
    state = kernel_state(tfs)
    del state["instances"]
    return state


def instances_of(tfs: Tracefs, pids: Iterable[int]) -> list[str]:
    wanted = set(pids)
    return [n for n in tfs.instance_names() if instance_owner(n) in wanted]


def remove_instances_of(tfs: Tracefs, pids: Iterable[int]) -> None:
    """Cleanup after a failed test: the instances the test's processes left."""
    for name in instances_of(tfs, pids):
        remove_instance(tfs, name)
