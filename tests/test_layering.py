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
The self-checks prove the probe sees a module importing socket, time or
threading, and stays quiet for one that does not.

Second rule (issue 7): no import cycles between project modules. That one does
read source code, on purpose: the graph is built with `ast` from every import
statement, including those that never run at import time (see
test_no_import_cycles_between_project_modules for what counts and why), and the
cycle finder is checked on synthetic graphs and a synthetic package.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import json
import pkgutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
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


# -- no import cycles between project modules ------------------------------------------------

PROJECT_PACKAGES = ("actors", "shm", "protos", "launch", "tracebus")


@dataclass(frozen=True)
class Import:
    """One edge of the import graph: `source` imports `target` at `line`."""

    source: str
    target: str
    line: int
    where: str  # "module", "TYPE_CHECKING" or "function"


def project_modules(
    root: Path = REPO, packages: tuple[str, ...] = PROJECT_PACKAGES
) -> dict[str, Path]:
    """Dotted name -> source file, for every .py file under the packages that exist."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_main_guard(test: ast.expr) -> bool:
    """`if __name__ == "__main__":`"""
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _imports_with_context(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement of a module, with where it stands."""

    def walk(node: ast.AST, where: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, where
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, "function")
            elif isinstance(child, ast.If) and _is_main_guard(child.test) and where == "module":
                continue  # runs as the program __main__, never for an importer of the module
            elif isinstance(child, ast.If) and _is_type_checking(child.test) and where == "module":
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), "TYPE_CHECKING")
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), where)
            else:
                yield from walk(child, where)

    yield from walk(tree, "module")


def _resolve(
    source: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: dict[str, Path]
) -> list[str]:
    """The project modules one import statement names (not the packages above them:
    their __init__ runs too, but depending on a.b.c is not depending on a)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    base = node.module or ""
    if node.level:
        package = source.split(".") if is_package else source.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    targets = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:  # `from pkg import module`
            targets.append(sub)
        elif base in known:  # `from module import name`
            targets.append(base)
    return targets


def import_graph(modules: dict[str, Path]) -> list[Import]:
    edges = []
    for source, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, where in _imports_with_context(tree):
            for target in _resolve(source, is_package, node, modules):
                if target != source:
                    edges.append(Import(source, target, node.lineno, where))
    return edges


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each strongly connected component that has one,
    as [a, b, ..., a] starting from the component's smallest name; sorted."""
    cycles = []
    for component in _strongly_connected(graph):
        start = min(component)
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        cycles.append(_shortest_cycle(graph, start, component))
    return sorted(cycles)


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on a long chain)."""
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def _shortest_cycle(graph: dict[str, set[str]], start: str, component: set[str]) -> list[str]:
    """Breadth-first from `start` inside its component, back to `start`."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if child in component and child not in parent:
                    parent[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")  # unreachable for a component with one


def describe_cycle(cycle: list[str], edges: list[Import]) -> str:
    """`a -> b -> a`, then each step with the import statement that makes it."""
    steps = []
    for source, target in itertools.pairwise(cycle):
        found = sorted(
            {(e.line, e.where) for e in edges if (e.source, e.target) == (source, target)}
        )
        where = ", ".join(f"line {line} ({kind})" for line, kind in found)
        steps.append(f"  {source} imports {target}: {where}")
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def adjacency(edges: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        graph[e.source].add(e.target)
    return graph


def project_cycles() -> tuple[list[list[str]], list[Import]]:
    edges = import_graph(project_modules())
    return find_cycles(adjacency(edges)), edges


def test_no_import_cycles_between_project_modules() -> None:
    """No two project modules (actors, shm, protos, launch, tracebus) depend on each
    other, directly or through others.

    The graph comes from the source (ast), not from running it, so that every
    import counts, wherever it stands: at module level, under `if TYPE_CHECKING:`,
    and inside functions. A cycle is a design problem before it is an import-time
    problem: the modules on it cannot be read, tested or moved apart. An import
    under TYPE_CHECKING does not run, but the annotations that need it make one
    module's meaning depend on the other's, and it is how a cycle that once broke
    at import time is usually hidden. An import inside a function runs late, which
    is also the usual way to paper over a cycle. Each such edge is labelled in the
    failure message, so a reader sees which kind of import closes the cycle.
    Only `if __name__ == "__main__":` blocks are left out: they run as the
    program `__main__`, never for a module that imports this one (the usual
    `python -m actors.consumer` entry point importing its CLI module).

    `from pkg import name` is an edge to pkg.name when that is a module, else to
    pkg; `import a.b.c` is an edge to a.b.c only (its parents' __init__ run too,
    but they hold no code here; an __init__ that does shows as a module of its own).
    """
    cycles, edges = project_cycles()
    assert not cycles, "import cycles:\n" + "\n".join(describe_cycle(c, edges) for c in cycles)


def test_project_import_graph_is_found() -> None:
    """The graph the cycle test walks is the real one: known edges of each kind are in it."""
    modules = project_modules()
    assert {"actors.core.service_core", "shm.abi", "protos", "launch.supervisor"} <= set(modules)
    edges = {(e.source, e.target, e.where) for e in import_graph(modules)}
    assert ("actors.core.service_core", "shm.trace_buffer", "module") in edges  # from x import Y
    assert (
        "actors.producer_host",
        "actors.core.producer_core",
        "module",
    ) in edges  # from pkg import mod
    assert ("actors.core.reports", "actors.core.sessions", "TYPE_CHECKING") in edges
    assert ("launch.control", "actors.endpoints", "function") in edges


def test_cycle_finder_on_synthetic_graphs() -> None:
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert find_cycles(acyclic) == []
    assert find_cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]
    # Two separate cycles, one of them long, with a shortcut: the shortest is named.
    graph = {
        "m": {"n"}, "n": {"o"}, "o": {"p", "m"}, "p": {"m"},
        "x": {"y"}, "y": {"z"}, "z": {"x"}, "q": {"m", "x"},
    }  # fmt: skip
    assert find_cycles(graph) == [["m", "n", "o", "m"], ["x", "y", "z", "x"]]
    # A long chain does not hit the recursion limit.
    chain = {f"n{i:05}": {f"n{i + 1:05}"} for i in range(5000)}
    assert find_cycles(chain) == []
    chain["n05000"] = {"n00000"}
    (cycle,) = find_cycles(chain)
    assert len(cycle) == 5002 and cycle[0] == cycle[-1] == "n00000"


def test_import_graph_on_a_synthetic_package(tmp_path: Path) -> None:
    """Relative imports, `from pkg import module`, TYPE_CHECKING and function-level
    imports all make edges, a __main__ block does not; a package without a cycle has
    none; the message names it."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from . import b\nimport json\n",
        "b.py": "from pkg.sub import c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import A\n",
        "d.py": "def later():\n    from pkg.e import E\n",
        "e.py": "import pkg.d\n",
        "g.py": "if __name__ == '__main__':\n    from pkg.h import main\n",
        "h.py": "from pkg import g\n",
        "f.py": "from pkg.a import thing\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    modules = project_modules(tmp_path, ("pkg", "absent"))
    expected = {"a", "b", "sub", "sub.c", "d", "e", "f", "g", "h"}
    assert set(modules) == {"pkg"} | {f"pkg.{name}" for name in expected}
    edges = import_graph(modules)
    assert {(e.source, e.target, e.where) for e in edges} == {
        ("pkg.a", "pkg.b", "module"),
        ("pkg.b", "pkg.sub.c", "module"),
        ("pkg.sub.c", "pkg.a", "TYPE_CHECKING"),
        ("pkg.d", "pkg.e", "function"),
        ("pkg.e", "pkg.d", "module"),
        ("pkg.f", "pkg.a", "module"),
        ("pkg.h", "pkg.g", "module"),  # and not g -> h: that import runs as __main__ only
    }
    cycles = find_cycles(adjacency(edges))
    assert cycles == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"], ["pkg.d", "pkg.e", "pkg.d"]]
    text = describe_cycle(cycles[0], edges)
    assert text.startswith("pkg.a -> pkg.b -> pkg.sub.c -> pkg.a\n")
    assert "pkg.sub.c imports pkg.a: line 3 (TYPE_CHECKING)" in text
    # Break both cycles: no cycle is found.
    (pkg / "sub" / "c.py").write_text("")
    (pkg / "d.py").write_text("")
    assert find_cycles(adjacency(import_graph(project_modules(tmp_path, ("pkg",))))) == []
