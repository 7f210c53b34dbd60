"""Stopping actors: one with a deadline (a detach), and whole kinds at the end.

Stopper.stop_one signals an actor and SIGKILLs it if it is still there after
the timeout (a timer on the loop: the supervisor keeps serving meanwhile).
Stopper.stop_all signals a set of actors, serves the loop until they exit or
the timeout passes, SIGKILLs the late ones and waits KILL_TIMEOUT for them to
be reaped. The supervisor calls it once per kind, in its order: consumers
(SIGINT, CONSUMER_STOP_TIMEOUT: they flush, stop and write their traces),
producers (SIGTERM, STOP_TIMEOUT), the service (SIGTERM, its stop_timeout_s,
else STOP_TIMEOUT). kill_now, set by a signal during the shutdown, skips the
waiting: SIGKILL for everything.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable

from actors.loop import Loop
from launch.children import Actor

CONSUMER_STOP_TIMEOUT = 20.0  # they flush, stop and read back before they exit
STOP_TIMEOUT = 10.0  # producers, the service
KILL_TIMEOUT = 5.0  # for SIGKILLed processes to be reaped


class Stopper:
    def __init__(self, loop: Loop, say: Callable[[str], None]) -> None:
        self.loop = loop
        self.say = say
        self.kill_now = False  # a signal came during the shutdown
        self.killing_said = False

    def stop_one(self, actor: Actor, signum: int, timeout: float) -> None:
        """signum now, SIGKILL after timeout if it is still there."""
        if not actor.alive:
            return
        actor.signal(signum)

        def kill() -> None:
            if actor.alive:
                self.say(f"{actor.name} did not stop within {timeout:g} s: SIGKILL")
                actor.signal(signal.SIGKILL)

        actor.kill_timer = self.loop.call_later(timeout, kill)

    def cancel_restarts(self, actors: Iterable[Actor]) -> None:
        """An instance waiting to be restarted stays stopped."""
        for actor in actors:
            if actor.restart_timer is not None:
                actor.restart_timer.cancel()
                actor.restart_timer = None
                actor.state = "stopped"

    def stop_all(self, actors: list[Actor], signum: int, timeout: float) -> None:
        """signum to each, SIGKILL to those still there after timeout; returns once
        they were reaped (or KILL_TIMEOUT passed)."""
        if self.kill_now and not self.killing_said:
            self.killing_said = True
            self.say("signalled again: killing everything")
        for actor in actors:
            actor.stop_requested = True
        alive = [a for a in actors if a.alive]
        if not self.kill_now:
            for actor in alive:
                actor.signal(signum)
            self._wait_exits(alive, timeout)
        late = [a for a in alive if a.alive]
        for actor in late:
            if not self.kill_now:
                self.say(f"{actor.name} did not stop within {timeout:g} s: SIGKILL")
            actor.signal(signal.SIGKILL)
        self._wait_for_kills(late)

    def _wait_exits(self, actors: list[Actor], timeout: float) -> None:
        """Serve the loop until they exited, the timeout passed, or kill_now."""

        def done() -> bool:
            return self.kill_now or not any(a.alive for a in actors)

        self.loop.run(until=done, timeout=timeout)

    def _wait_for_kills(self, actors: list[Actor]) -> None:
        """Serve the loop until the SIGKILLed actors were reaped (kill_now or not)."""

        def done() -> bool:
            return not any(a.alive for a in actors)

        self.loop.run(until=done, timeout=KILL_TIMEOUT)
