"""The `tracebus` command: every subcommand reaches its tool's main() with the rest of
the command line and returns its exit code, the help lists them, and the command's
own import stays light (the tools are imported only when they run)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import REPO
from tracebus import cli

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_a_subcommand_gets_the_rest_of_the_line_and_returns_its_code(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = importlib.import_module(cli.SUBCOMMANDS[name].module)
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 42

    monkeypatch.setattr(module, "main", fake_main)
    assert cli.main([name, "--flag", "value", "--", "x"]) == 42
    assert seen == [["--flag", "value", "--", "x"]]


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_subcommand_help_is_the_tools_own(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([name, "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_help_lists_every_subcommand_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, sub in cli.SUBCOMMANDS.items():
        assert f"  {name} " in out and sub.summary in out
    assert cli.main([]) == 2  # no command: the same list, as a usage error
    assert "commands:" in capsys.readouterr().err


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["recrod"]) == 2
    assert "unknown command 'recrod'" in capsys.readouterr().err


def test_a_tools_usage_error_is_its_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["record", "--no-such-flag"]) == 2  # argparse's, not an exception
    assert "usage: python -m actors.consumer" in capsys.readouterr().err


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30)


def test_python_m_tracebus_and_the_console_script_are_the_same() -> None:
    module = run(sys.executable, "-m", "tracebus", "--help")
    assert module.returncode == 0 and "summary" in module.stdout
    script = Path(sys.executable).with_name("tracebus")  # installed by pip into the venv
    if not script.exists():
        pytest.skip("the package is not installed here: no console script")
    assert run(str(script), "--help").stdout == module.stdout
    assert run(str(script), "bogus").returncode == 2


def test_the_command_imports_no_tool_until_one_runs() -> None:
    probe = (
        "import sys, tracebus.cli; "
        "print(sorted(m for m in ('zmq', 'google.protobuf', 'perfetto', 'actors.service', "
        "'launch.supervisor') if m in sys.modules))"
    )
    assert run(sys.executable, "-c", probe).stdout.strip() == "[]"
