"""A malformed topology, however hostile, costs one line and exit 2, never a
traceback: nesting bombs (PyYAML composes nodes recursively: 100,000 '[' ended in
a RecursionError), NUL characters (Popen refuses them only when the actor
starts), paths the kernel refuses to look up; and a property test: whatever a
valid topology is mutated into, the parser raises a TopologyError of one line or
returns a topology. The supervisor runs as a real process (tests/processes.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launch.topology import TopologyError
from launch.topology_parser import parse_topology
from launch.yaml_reader import MAX_DEPTH
from tests.processes import PYTHON, REPO, Runtime

pytestmark = pytest.mark.timeout(120)

DEMO = (REPO / "examples" / "demo.yaml").read_text()
DEEP = 100_000

BOMBS = {
    "flow": ("[" * DEEP + "]" * DEEP + "\n", 1),
    "flow-in-producers": ("producers:\n  - " + "{a: " * DEEP + "1" + "}" * DEEP + "\n", 2),
    "in-limits": ("service:\n  limits: " + "[" * DEEP + "]" * DEEP + "\n", 2),
    "block": ("x:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(3000)), MAX_DEPTH),
}


def one_error_line(result_stderr: str) -> str:
    lines = result_stderr.strip().splitlines()
    assert len(lines) == 1, result_stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_a_nesting_bomb_is_one_line_and_exit_2(rt: Runtime, bomb: str) -> None:
    text, line = BOMBS[bomb]
    topology = rt.write_file("bomb.yaml", text)
    result = rt.run_supervisor(topology)
    assert result.returncode == 2, result.stderr[-3000:]
    error = one_error_line(result.stderr)
    assert error.startswith(f"{topology}:{line}: invalid YAML at column "), error
    assert error.endswith(f"nested deeper than {MAX_DEPTH} levels"), error
    assert "started" not in result.stdout + result.stderr


# YAML's "\0" in double quotes is the NUL character.
NUL_ENTRIES = {
    "command": ('producers:\n  - name: p\n    command: [python, "a\\0b"]\n', "command[1]"),
    "data source": ('producers:\n  - name: p\n    builtin: ["a\\0b"]\n', "builtin[0]"),
    "env": ('producers:\n  - name: p\n    builtin: [x]\n    env: {A: "x\\0"}\n', "env.A"),
    "output": ('consumers:\n  - name: c\n    config_text: ""\n    output: "o\\0"\n', "output"),
}


@pytest.mark.parametrize("entry", sorted(NUL_ENTRIES))
def test_a_nul_character_is_refused_before_anything_starts(rt: Runtime, entry: str) -> None:
    text, key = NUL_ENTRIES[entry]
    topology = rt.write_file("nul.yaml", "stop_when: never\n" + text)
    result = rt.run_supervisor(topology, timeout=60)
    assert result.returncode == 2, result.stderr[-3000:]
    error = one_error_line(result.stderr)
    assert error.endswith(f".{key}: a NUL character is not allowed"), error
    assert "started" not in result.stdout


def test_a_path_the_kernel_refuses_to_look_up_is_a_key_error(tmp_path: Path) -> None:
    long_name = "x" * 5000  # ENAMETOOLONG from stat
    text = f"consumers:\n  - name: c\n    config_text: ''\n    output: {long_name}\n"
    with pytest.raises(TopologyError, match=r"consumers\[0\]\.output: cannot use .*too long"):
        parse_topology(text, tmp_path / "t.yaml")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    text = "consumers:\n  - name: c\n    config: loop/cfg.pbtxt\n    output: o.pftrace\n"
    with pytest.raises(TopologyError, match=r"consumers\[0\]\.config: "):
        parse_topology(text, tmp_path / "t.yaml")


TOKENS = [
    "[", "]", "{", "}", ":", "- ", "&a ", "*a", "<<: *a", "!!int ", "!!binary ",
    "!!python/object ", "\t", "'", '"', "|", ">", "?", ",", "\n", "  ", "~", "1e999",
    "-1", "9" * 5000, "\\0", "%YAML 1.1\n", "---\n", "!!set ", "!!timestamp ", "null",
    "x" * 300, "/" * 50, ".inf",
]  # fmt: skip
EDIT = st.tuples(st.integers(0, len(DEMO)), st.sampled_from(TOKENS), st.integers(0, 20))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(EDIT, min_size=1, max_size=6))
def test_a_mutated_topology_is_a_topology_or_one_line_error(edits: list) -> None:
    text = DEMO
    for position, token, cut in edits:
        position = min(position, len(text))
        text = text[:position] + token + text[position + cut :]
    try:
        parse_topology(text, REPO / "examples" / "mutated.yaml")
    except TopologyError as e:
        assert "\n" not in str(e)


def test_endless_inputs_are_refused_without_reading_on(rt: Runtime) -> None:
    """A topology or a config is small: /dev/zero (or a huge file) is refused after
    its first few MiB, with one line and exit 2, instead of filling the memory."""
    result = rt.run_supervisor("/dev/zero")
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_error_line(result.stderr) == "/dev/zero: larger than 16 MiB: not a topology"
    out = str(rt.dir / "t.pftrace")
    result = rt.run([PYTHON, "-m", "actors.consumer", "-c", "/dev/zero", "-o", out])
    assert result.returncode == 2, result.stderr[-3000:]
    assert (
        one_error_line(result.stderr)
        == "tracebus: error: /dev/zero: larger than 4 MiB, not a config"
    )
    topology = rt.write_file(
        "topology.yaml", "consumers:\n  - name: c\n    config: big.pbtxt\n    output: o.pftrace\n"
    )
    with open(rt.dir / "big.pbtxt", "wb") as f:
        f.truncate(5 << 20)
    result = rt.run_supervisor(topology)
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_error_line(result.stderr).endswith("big.pbtxt: larger than 4 MiB, not a config")
