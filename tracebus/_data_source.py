"""The "track_event" data source every process using the API hosts, and the
producer that hosts it. Imported on the runtime's start thread only: this is
where the heavy modules (actors.producer: zmq, protobuf) come in.

Each instance (one per session whose config names "track_event") gets a
TrackEventInstance with the CategoryFilter of its config's track_event_config
(Perfetto's defaults without one). It joins the runtime's instances when it
starts and leaves them when it stops; on_stop returns only once no application
thread is still writing into it (tracebus/_instance.py), so that the host may
close its writers.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Protocol

from actors.producer import DataSource, Producer
from actors.track_event_config import CategoryFilter
from shm.writer import BufferExhaustedPolicy
from tracebus._instance import TrackEventInstance

# Every thread that writes holds a chunk of the SMB, and a busy one a second that the
# service has yet to copy: Perfetto's default 256 KiB (64 chunks of 4 KiB) makes a
# pool of 40 threads drop. 8 MiB in 32 KiB pages, one chunk each (256 chunks; pages
# are touched only as used), serves over a hundred writing threads; a chunk of 32 KiB
# holds the most packets a chunk may (1022 small events), so a thread takes the
# Python path for a new chunk once per ~500 slices (with 4 KiB chunks, once per ~70:
# that turnover was a fifth of a slice's cost).
SMB_SIZE_KB = 8192
PAGE_SIZE_KB = 32


class Runtime(Protocol):
    """What the data source needs of tracebus/_runtime.py's Runtime (no import of it:
    the runtime imports this module)."""

    producer_name: str

    def add_instance(self, instance: Any) -> None: ...
    def remove_instance(self, instance: Any) -> None: ...
    def count_error(self, kind: str, error: BaseException | None = None) -> None: ...
    def data_source_registered(self) -> None: ...


class TrackEventDataSource(DataSource):
    """Perfetto's TrackEvent, fed by the tracebus API (see the module docstring)."""

    name = "track_event"
    handles_incremental_state_clear = True  # the writers' flag is all our sequences need
    runtime: ClassVar[Runtime]  # set on the subclass make_producer registers

    @classmethod
    def on_registered(cls) -> None:
        cls.runtime.data_source_registered()  # ends the default startup wait (_runtime.py)

    def on_setup(self, config: Any) -> None:
        # The API never blocks: whatever the config asks, our writers drop when the
        # SMB is full (the host reads the policy from this config for each writer).
        config.buffer_exhausted_policy = int(BufferExhaustedPolicy.DROP)
        te_config = config.track_event_config if config.HasField("track_event_config") else None
        self.instance = TrackEventInstance(
            self.writer,
            CategoryFilter.from_config(te_config),
            self.runtime.producer_name,
            os.getpid(),
            release_writer=self.release_writer,
        )

    def on_start(self, config: Any) -> None:
        self.runtime.add_instance(self.instance)

    def on_stop(self) -> None:
        self.runtime.remove_instance(self.instance)
        if not self.instance.stop():
            self.runtime.count_error("stop (a write still in progress)")


def make_producer(name: str, endpoint: str | None, runtime: Runtime) -> Producer:
    """A producer named `name` hosting track_event for `runtime`, not started."""
    cls = type(TrackEventDataSource.__name__, (TrackEventDataSource,), {"runtime": runtime})
    producer = Producer(name, endpoint=endpoint, smb_size_kb=SMB_SIZE_KB, page_size_kb=PAGE_SIZE_KB)
    producer.register(cls)
    return producer
