"""Suite-wide settings: hypothesis without per-example deadlines (the machine is
noisy and shared), a default pytest timeout from pyproject.toml, and the `rt`
fixture of the integration tests' process harness (tests/processes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from tests.processes import Runtime

settings.register_profile(
    "tracebus", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("tracebus")


@pytest.fixture
def rt() -> Iterator[Runtime]:
    """A private runtime for real processes (tests/processes.py); nothing started yet.
    Its cleanup fails the test if a process, the directory or an SMB is left behind."""
    from tests.processes import Runtime  # imported here: zmq only for tests that use it

    with Runtime() as runtime:
        yield runtime
