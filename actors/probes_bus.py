"""How the probes' data sources of one session tell each other what they saw.

Perfetto's traced_probes hands the pids its ftrace reader decoded to the
process_stats data source of the same session, which then writes those
processes into the ProcessTree (ProcessStatsDataSource::OnPids), and the pids of
task_rename events so that their names are written again (OnRenamePids). The
probes here do the same in one process through a PidBus:

- linux.process_stats subscribes, per tracing session id
  (DataSourceConfig.tracing_session_id, which the service sets), a callback
  `on_pids(pids, renamed)`; it unsubscribes when it stops;
- linux.ftrace publishes, after each drain, the pids (tgids and tids) its
  events named and those renamed since the last drain.

Callbacks run on the publisher's thread: a subscriber only records the pids
(under its own lock) and writes them on its own thread. A session with no
process_stats instance has no subscriber: publishing costs a dict lookup.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection

PidCallback = Callable[[Collection[int], Collection[int]], None]


class PidBus:
    """Subscribers per tracing session; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[int, list[PidCallback]] = {}

    def subscribe(self, session_id: int, callback: PidCallback) -> None:
        with self._lock:
            self._subscribers.setdefault(session_id, []).append(callback)

    def unsubscribe(self, session_id: int, callback: PidCallback) -> None:
        with self._lock:
            callbacks = self._subscribers.get(session_id, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._subscribers.pop(session_id, None)

    def publish(
        self, session_id: int, pids: Collection[int], renamed: Collection[int] = ()
    ) -> None:
        with self._lock:
            callbacks = list(self._subscribers.get(session_id, ()))
        for callback in callbacks:
            callback(pids, renamed)


# The one bus of a probes process: its data sources are created by the producer
# host with no arguments, so they meet here.
PIDS = PidBus()
