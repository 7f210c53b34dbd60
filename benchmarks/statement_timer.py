"""The cost of one statement, measured the way `timeit` does.

    timing = statement_ns('tracebus.instant("tick", category="c")', {"tracebus": tracebus},
                          per_round=20_000, rounds=5)

The statement is compiled inline into the body of a `for i in range(n)` loop
inside a function (no call per iteration: only what the statement itself does is
timed), its names resolved in `namespace` (the function's globals, as timeit's
`globals=`), `i` being the loop counter. The same loop with `pass` is timed
beside it, round after round; the figure is the best statement round minus the
best empty round, divided by the statements per round: ns per statement. A
warm-up round first (not timed) lets caches, interning and lazy starts settle.

Every row of a benchmark goes through this one function, peers included, so the
figures compare. `around`, if given, is entered around each timed round (both
kinds): a peer that must be started, checked or emptied between rounds does it
there, outside the clock. `executed` counts every run of the statement, warm-up
included: what a trace must hold afterwards.
"""

from __future__ import annotations

import contextlib
import textwrap
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

_TEMPLATE = """\
def _timed(_n, _timer=_timer):
    _t0 = _timer()
    for i in range(_n):
{body}
    return _timer() - _t0
"""


@dataclass(frozen=True)
class Timing:
    ns: float  # per statement: best statement round minus best empty round, over per_round
    statement_round_ns: int  # the best statement round, whole
    empty_round_ns: int  # the best empty round, whole
    per_round: int
    rounds: int
    executed: int  # runs of the statement, warm-up included


def compile_loop(statement: str, namespace: dict[str, Any]) -> Callable[[int], int]:
    """A function of n that runs `statement` n times inline and returns the ns it took."""
    source = _TEMPLATE.format(body=textwrap.indent(textwrap.dedent(statement), " " * 8))
    code = compile(source, f"<timed: {statement.splitlines()[0]}>", "exec")
    scope = {**namespace, "_timer": time.perf_counter_ns}
    exec(code, scope)
    timed: Callable[[int], int] = scope["_timed"]
    return timed


def statement_ns(
    statement: str, namespace: dict[str, Any], per_round: int, rounds: int,
    around: Callable[[], AbstractContextManager[object]] | None = None,
) -> Timing:  # fmt: skip
    """Time `statement` as the module docstring says."""
    timed, empty = compile_loop(statement, namespace), compile_loop("pass", namespace)
    enter = around or contextlib.nullcontext
    warm_up = max(1, min(per_round, 1_000))
    with enter():
        timed(warm_up)
    best_timed = best_empty = None
    for _ in range(rounds):
        with enter():
            took_empty = empty(per_round)
        with enter():
            took = timed(per_round)
        best_empty = took_empty if best_empty is None else min(best_empty, took_empty)
        best_timed = took if best_timed is None else min(best_timed, took)
    assert best_timed is not None and best_empty is not None  # rounds >= 1
    return Timing(
        ns=(best_timed - best_empty) / per_round, statement_round_ns=best_timed,
        empty_round_ns=best_empty, per_round=per_round, rounds=rounds,
        executed=warm_up + rounds * per_round,
    )  # fmt: skip
