"""design.md section 3: the pure core does no I/O.

Every module under shm/ (but shm.region, which maps memory) and under
actors/core/ is imported alone in a fresh interpreter, and sys.modules tells what
that import brought in. None of them may load zmq, multiprocessing, subprocess,
socket, signal, asyncio or selectors (nor the C modules behind them), nor
`time` (time is passed in by the shells); `threading` is allowed only for
shm.arbiter, which needs a lock.

Modules are discovered with pkgutil, so a new module is covered without
touching this file. Nothing here reads source code: the check is what an import
actually loads, transitively.

`time` is already in sys.modules when the interpreter starts (zipimport imports
it), so a plain before/after comparison cannot see a module importing it. The
probe therefore takes every watched module that the interpreter preloaded out of
sys.modules just before the import under test: if the import (or anything it
imports) needs it again, it reappears. Modules a target is allowed to use are
imported first and left alone, so that what *they* import (threading imports
time) is not blamed on the target; so are the message libraries the cores use
(protobuf and Perfetto's schema), which load threading and time themselves.
The self-checks at the bottom prove the probe sees a module importing socket,
time or threading, and stays quiet for one that does not.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PURE_PACKAGES = ("shm", "actors.core")
NOT_PURE = frozenset({"shm.region"})  # the shell-side memory mapping

# Top-level names that may not be loaded by a pure module (with the C modules
# that would let a module do the same thing without the Python wrapper).
FORBIDDEN = frozenset(
    {
        "zmq",
        "multiprocessing",
        "_multiprocessing",
        "subprocess",
        "_posixsubprocess",
        "socket",
        "_socket",
        "signal",
        "asyncio",
        "_asyncio",
        "selectors",
    }
)
CLOCK = "time"
THREADING = "threading"
WATCHED = FORBIDDEN | {CLOCK, THREADING}
ALLOWED = {"shm.arbiter": frozenset({THREADING})}
# Libraries the cores may use for decoded messages. They are imported first and
# left alone like the allowed modules: what they load for themselves (protobuf
# loads threading and time) is theirs, not the core's.
LIBRARIES = (
    "google.protobuf.message",
    "google.protobuf.text_format",
    "perfetto.protos.perfetto.trace.perfetto_trace_pb2",
)

PROBE = r"""
import importlib, json, sys
extra_path, pre, target, keep = json.loads(sys.argv[1])
sys.path[:0] = extra_path
for name in pre:
    importlib.import_module(name)
watched = set(json.loads(sys.argv[2]))
popped = sorted(n for n in sys.modules if n.split(".")[0] in watched and n not in keep)
for n in popped:
    del sys.modules[n]
error = None
if target:
    try:
        importlib.import_module(target)
    except BaseException as e:
        error = type(e).__name__ + ": " + str(e)
modules = sorted(sys.modules)
print(json.dumps({"modules": modules, "popped": popped, "error": error}))
"""


def discover(packages=PURE_PACKAGES) -> list[str]:
    """Each package and every module and subpackage below it, recursively."""
    names: list[str] = []
    for package in packages:
        mod = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(mod.__path__, prefix=package + "."):
            names.append(info.name)
    return sorted(set(names))


def pure_modules() -> list[str]:
    return [m for m in discover() if m not in NOT_PURE]


def _run_probe(target: str | None, pre=(), keep=(), extra_path=()) -> dict:
    arg = json.dumps([list(map(str, extra_path)), list(pre), target, list(keep)])
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, arg, json.dumps(sorted(WATCHED))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@cache
def _baseline(pre: tuple[str, ...], extra_path: tuple[str, ...]) -> frozenset[str]:
    """sys.modules of an interpreter that ran the same probe but imported nothing
    (watched modules it preloaded are listed, although the probe set them aside)."""
    result = _run_probe(None, pre=pre, keep=pre, extra_path=extra_path)
    return frozenset(result["modules"]) | frozenset(result["popped"])


def violations(target: str, allowed=frozenset(), extra_path=()) -> tuple[set[str], set[str]]:
    """(forbidden modules the import of `target` loaded, everything it added)."""
    pre = tuple(sorted(allowed)) + LIBRARIES
    extra = tuple(map(str, extra_path))
    result = _run_probe(target, pre=pre, keep=pre, extra_path=extra)
    assert result["error"] is None, f"importing {target} failed: {result['error']}"
    after = set(result["modules"])
    added = (after - _baseline(pre, extra)) | (after & set(result["popped"]))
    bad = set()
    for name in added:
        top = name.split(".")[0]
        if top in FORBIDDEN or name == CLOCK or (name == THREADING and name not in allowed):
            bad.add(name)
    return bad, added


# -- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("module", pure_modules())
def test_pure_module_loads_no_io_no_clock(module):
    bad, added = violations(module, allowed=ALLOWED.get(module, frozenset()))
    assert not bad, f"{module} loads {sorted(bad)} (it added {sorted(added)})"


def test_discovery_covers_the_known_modules():
    found = pure_modules()
    for name in ("shm", "shm.abi", "shm.packets", "shm._atomics", "actors.core"):
        assert name in found
    assert "shm.region" not in found
    # whatever else exists today (writer, trace_buffer, protozero, actors.core.*)
    # is listed too, because pkgutil sees every file in the packages
    on_disk = {p.stem for p in (REPO / "shm").glob("*.py")} - {"__init__", "region"}
    assert {f"shm.{stem}" for stem in on_disk} <= set(found)


def test_baseline_interpreter_preloads_nothing_forbidden():
    modules = _baseline((), ())
    assert not {m for m in modules if m.split(".")[0] in FORBIDDEN}
    assert THREADING not in modules


# -- self-checks: the probe can fail --------------------------------------------------------


@pytest.fixture
def probes(tmp_path):
    files = {
        "probe_clean": "import struct, dataclasses, enum\nVALUE = struct.calcsize('<I')\n",
        "probe_socket": "import socket\n",
        "probe_clock": "import time\n",
        "probe_from_clock": "from time import monotonic\n",
        "probe_threading": "import threading\nLOCK = threading.Lock()\n",
        "probe_threading_and_clock": "import threading, time\n",
        "probe_lazy": "def later():\n    import socket\n    return socket\n",
        "probe_indirect": "import probe_indirect_dep\n",
        "probe_indirect_dep": "import selectors\n",
        "probe_signal": "import signal\n",
        "probe_zmq": "import zmq\n",
        "probe_mp": "import multiprocessing.connection\n",
        "probe_broken": "raise RuntimeError('boom')\n",
    }
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(text)
    pkg = tmp_path / "probe_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "leaf.py").write_text("import subprocess\n")
    (pkg / "mod.py").write_text("")
    return tmp_path


def test_self_check_detects_socket(probes):
    bad, _ = violations("probe_socket", extra_path=[probes])
    assert "socket" in bad


@pytest.mark.parametrize("probe", ["probe_clock", "probe_from_clock"])
def test_self_check_detects_time_although_the_interpreter_preloads_it(probes, probe):
    assert CLOCK in _baseline((), (str(probes),)), "premise: time is there at startup"
    bad, _ = violations(probe, extra_path=[probes])
    assert bad == {CLOCK}


def test_self_check_detects_threading_outside_the_writer(probes):
    bad, _ = violations("probe_threading", extra_path=[probes])
    assert THREADING in bad


def test_self_check_threading_allowance_does_not_blame_its_own_imports(probes):
    bad, _ = violations("probe_threading", allowed={THREADING}, extra_path=[probes])
    assert bad == set()
    bad, _ = violations("probe_threading_and_clock", allowed={THREADING}, extra_path=[probes])
    assert bad == {CLOCK}


@pytest.mark.parametrize(
    "probe, expected",
    [
        ("probe_indirect", "selectors"),
        ("probe_signal", "signal"),
        ("probe_zmq", "zmq"),
        ("probe_mp", "multiprocessing"),
        ("probe_pkg.sub.leaf", "subprocess"),
    ],
)
def test_self_check_detects_other_forbidden_imports(probes, probe, expected):
    bad, _ = violations(probe, extra_path=[probes])
    assert expected in bad


def test_self_check_quiet_for_a_clean_module(probes):
    bad, added = violations("probe_clean", extra_path=[probes])
    assert bad == set()
    assert "probe_clean" in added and "dataclasses" in added


def test_self_check_import_time_only(probes):
    """What a function imports when called is not seen by an import-time probe; the
    rule is about what importing the module loads."""
    bad, _ = violations("probe_lazy", extra_path=[probes])
    assert bad == set()


def test_self_check_a_module_that_fails_to_import_fails_the_check(probes):
    with pytest.raises(AssertionError, match="boom"):
        violations("probe_broken", extra_path=[probes])


def test_self_check_discovery_recurses_into_new_modules(probes, monkeypatch):
    monkeypatch.syspath_prepend(str(probes))
    try:
        found = discover(["probe_pkg"])
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "probe_pkg"]:
            del sys.modules[name]
    assert found == ["probe_pkg", "probe_pkg.mod", "probe_pkg.sub", "probe_pkg.sub.leaf"]
