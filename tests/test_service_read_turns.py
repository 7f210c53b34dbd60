"""The service shell continues pending reads one slice per loop turn, with a
time budget, and serves whatever else is readable between two slices (the
core-level tests in test_readback_slices.py show what a slice holds)."""

from __future__ import annotations

import os

from actors.core.service_core import SliceBudget
from actors.service import ServiceShell


class SlicedCore:
    """Stands in for ServiceCore: `slices` slices of pending read, nothing else."""

    def __init__(self, slices: int, events: list[str]) -> None:
        self.left = slices
        self.events = events
        self.budgets: list[SliceBudget] = []
        self.sessions: dict = {}  # the shell counts them (it trims the heap after a free)

    def pending_work(self, may_send=lambda _consumer: True) -> bool:
        return self.left > 0

    def continue_reads(self, now: int, budget: SliceBudget) -> list:
        self.left -= 1
        self.budgets.append(budget)
        self.events.append("slice")
        return []

    def next_deadline(self) -> None:
        return None


def test_the_shell_runs_one_slice_per_loop_turn_and_serves_input_between(tmp_path):
    shell = ServiceShell(f"ipc://{tmp_path}/p", f"ipc://{tmp_path}/c")
    events: list[str] = []
    core = SlicedCore(5, events)
    shell.core = core  # type: ignore[assignment]
    r, w = os.pipe()
    os.write(w, b"x")  # stays readable: input waiting on every turn
    shell.loop.add_fd(r, lambda: events.append("input"))
    try:
        shell._send_all([])  # what every message the shell handles ends with
        assert shell.loop.run(until=lambda: not core.pending_work(), timeout=30)
    finally:
        shell.loop.remove(r)
        os.close(r)
        os.close(w)
        shell.close()
    slices = [i for i, e in enumerate(events) if e == "slice"]
    assert len(slices) == 5
    for a, b in zip(slices, slices[1:], strict=False):
        assert "input" in events[a + 1 : b], events  # input served between two slices
    assert shell.read_timer is None  # nothing pending: the loop may sleep again
    untimed = SliceBudget().time_up
    assert all(budget.time_up is not untimed for budget in core.budgets)  # the shell's clock
