"""Loop (actors/loop.py): call_soon and stop from other threads, and both after
close(), which must never touch a descriptor the loop no longer owns."""

from __future__ import annotations

import os
import threading

import pytest

from actors.loop import Loop

pytestmark = pytest.mark.timeout(60)


def run_in_thread(loop: Loop) -> tuple[threading.Thread, threading.Event]:
    """run() on a thread of its own; the event is set from inside the loop."""
    running = threading.Event()
    loop.call_soon(running.set)
    thread = threading.Thread(target=loop.run, kwargs={"timeout": 30})
    thread.start()
    assert running.wait(10)
    return thread, running


def test_calls_from_many_threads_run_once_each_in_order_on_the_loop_thread() -> None:
    loop = Loop()
    thread, _ = run_in_thread(loop)
    seen: list[tuple[int, int, int]] = []  # (caller, index, thread that ran it)
    n_threads, n_calls = 4, 500

    def caller(k: int) -> None:
        for i in range(n_calls):
            assert loop.call_soon(lambda i=i: seen.append((k, i, threading.get_ident())))

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(n_threads)]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    loop.call_soon(loop.stop)
    thread.join(10)
    assert not thread.is_alive()
    assert {t for _, _, t in seen} == {thread.ident}
    for k in range(n_threads):
        assert [i for c, i, _ in seen if c == k] == list(range(n_calls))
    loop.close()


def test_a_call_queued_before_run_runs_when_it_starts() -> None:
    loop = Loop()
    ran: list[str] = []
    loop.call_soon(lambda: ran.append("first"))
    loop.call_soon(loop.stop)
    assert loop.run(timeout=30) is True  # ended by the queued stop, not the timeout
    assert ran == ["first"]
    loop.close()


def test_a_call_that_requeues_itself_lets_timers_run() -> None:
    loop = Loop()
    turns = []

    def again() -> None:
        turns.append(1)
        loop.call_soon(again)

    loop.call_soon(again)
    loop.call_later(0.05, loop.stop)
    assert loop.run(timeout=30) is True
    assert len(turns) > 1
    loop.close()


def test_stop_from_another_thread_wakes_an_idle_loop() -> None:
    loop = Loop()
    thread, _ = run_in_thread(loop)
    loop.stop()
    thread.join(10)
    assert not thread.is_alive()
    loop.close()


def test_after_close_stop_and_call_soon_do_nothing_even_if_the_fds_are_reused() -> None:
    loop = Loop()
    loop.close()
    loop.close()  # idempotent
    # The next pipe most likely gets the numbers the loop's pipe had: a late stop()
    # that wrote to its old descriptor would land in it (or raise EBADF).
    r, w = os.pipe2(os.O_NONBLOCK)
    try:
        loop.stop()
        assert loop.call_soon(lambda: None) is False
        with pytest.raises(BlockingIOError):
            os.read(r, 1)
    finally:
        os.close(r)
        os.close(w)


def test_stop_and_call_soon_racing_close_never_raise() -> None:
    errors: list[BaseException] = []
    for _ in range(50):
        loop = Loop()
        go = threading.Barrier(4)

        def hammer(loop: Loop = loop, go: threading.Barrier = go) -> None:
            go.wait()
            try:
                for _ in range(200):
                    loop.stop()
                    loop.call_soon(lambda: None)
            except BaseException as e:  # noqa: BLE001 - any error fails the test below
                errors.append(e)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        go.wait()
        loop.close()
        for t in threads:
            t.join()
    assert errors == []


def test_rearm_keeps_a_timer_set_for_the_same_deadline_and_replaces_another():
    loop = Loop()
    try:
        fired: list[str] = []
        first = loop.rearm(None, 10, lambda: fired.append("first"))
        assert first is not None and loop.rearm(first, 10, lambda: fired.append("x")) is first
        second = loop.rearm(first, 20, lambda: fired.append("second"))
        assert second is not first and first.cancelled and not second.cancelled
        assert loop.rearm(second, None, lambda: None) is None and second.cancelled
    finally:
        loop.close()


def test_a_handler_replaced_during_a_poll_round_is_not_run_for_its_stale_event() -> None:
    """Two fds ready in one round; the first's handler replaces the second's (as
    an accept reusing a just-closed pidfd's number would): the new handler is
    not run for the old event, and runs on the next round, its fd being ready."""
    loop = Loop()
    first_r, first_w = os.pipe()
    second_r, second_w = os.pipe()
    os.write(first_w, b"x")
    os.write(second_w, b"x")
    ran: list[str] = []

    def replaced() -> None:
        ran.append("replaced")

    def new() -> None:
        ran.append("new")
        os.read(second_r, 1)

    def first() -> None:
        ran.append("first")
        os.read(first_r, 1)
        loop.remove(second_r)
        loop.add_fd(second_r, new)

    loop.add_fd(first_r, first)
    loop.add_fd(second_r, replaced)
    try:
        assert loop.run(until=lambda: bool(ran), timeout=30)
        assert ran == ["first"]  # that round: neither the old handler nor the new one
        assert loop.run(until=lambda: len(ran) > 1, timeout=30)
        assert ran == ["first", "new"]
    finally:
        loop.close()
        for fd in (first_r, first_w, second_r, second_w):
            os.close(fd)
