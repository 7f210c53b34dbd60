"""The service's limits: one list, as flags, topology keys and refusal counters."""

from __future__ import annotations

from actors import service
from actors.core.limits import DEFAULT_LIMITS, LIMIT_HELP, limit_names
from launch.topology_parser import LIMIT_KEYS


def test_every_limit_is_documented_a_flag_and_a_topology_key() -> None:
    assert set(LIMIT_HELP) == set(limit_names())
    assert set(limit_names()) <= set(LIMIT_KEYS)
    for name in limit_names():
        assert getattr(DEFAULT_LIMITS, name) > 0


def test_limit_flags_reach_the_limits(monkeypatch) -> None:
    seen = {}

    class FakeShell:
        def __init__(self, producer, consumer, limits, *rest) -> None:
            seen["limits"] = limits

        def run(self) -> int:
            return 0

    monkeypatch.setattr(service, "ServiceShell", FakeShell)
    argv = ["--producer-endpoint", "ipc:///nowhere/p", "--consumer-endpoint", "ipc:///nowhere/c"]
    for name in limit_names():
        argv += ["--" + name.replace("_", "-"), "7"]
    assert service.main(argv) == 0
    assert all(getattr(seen["limits"], name) == 7 for name in limit_names())
