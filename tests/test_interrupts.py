"""actors.interrupts: the SIGINT/SIGTERM policy the record CLI and the script
runner share. Signals are raised in this process, on the main thread, where
Python runs the handler before raise_signal returns."""

from __future__ import annotations

import signal

import pytest

from actors.interrupts import Interrupts


class Target:
    def __init__(self) -> None:
        self.interrupts = 0

    def interrupt(self) -> None:
        self.interrupts += 1


@pytest.fixture
def interrupts():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    handler = Interrupts()
    handler.install()
    yield handler
    handler.restore()
    assert {s: signal.getsignal(s) for s in saved} == saved


def test_first_signal_interrupts_the_target_a_second_one_aborts(interrupts):
    target = Target()
    interrupts.target = target
    signal.raise_signal(signal.SIGTERM)
    assert target.interrupts == 1 and interrupts.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    assert target.interrupts == 1
    assert interrupts.exit_code == 128 + signal.SIGTERM  # the first signal names the exit


def test_a_signal_before_there_is_a_target_aborts(interrupts):
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    assert interrupts.exit_code == 130


def test_exit_code_without_a_signal_is_sigints():
    assert Interrupts().exit_code == 128 + signal.SIGINT
