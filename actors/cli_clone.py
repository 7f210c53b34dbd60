"""Clones and snapshots in the record CLI (Perfetto's `perfetto --clone`,
`--clone-by-name` and CLONE_SNAPSHOT triggers).

    python -m actors.consumer --clone SESSION_ID -o OUT
    python -m actors.consumer --clone-by-name NAME -o OUT
        copy a session of this uid (its id as `tracebus`'s query shows it, or its
        unique_session_name) into a read-only clone (actors/core/clones.py: the
        source is flushed first and goes on), read the clone into OUT, free it,
        print the summary. A refusal exits 1 naming the service's reason.

    python -m actors.consumer -c CONFIG -o OUT   (trigger_mode: CLONE_SNAPSHOT)
        the session runs to its end (trigger_timeout_ms, duration_ms, Ctrl-C);
        each time one of its triggers fires, the service sends the
        clone_trigger_hit event and the CLI writes a snapshot into a new file,
        OUT.0, OUT.1, ... (Perfetto's naming), each a clone taken and read over
        a second connection, with the trigger recorded in it. OUT gets the
        session's own read at its end: traced gives a CLONE_SNAPSHOT session's
        data only through its clones, so OUT holds no packets.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.consumer import Consumer, UnmatchedWatch, open_trace
from actors.core import trigger_modes
from actors.core.consumer_core import ConsumerError, RequestTimeout, UsageError
from actors.core.consumer_summary import (
    ProducerKey,
    SummaryInput,
    TraceSummary,
    format_summary,
    printable,
    producer_names,
)
from actors.output_paths import STDOUT
from protos import tracebus_ipc_pb2 as ipc

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CLONE_SNAPSHOT = pb.TraceConfig.TriggerConfig.CLONE_SNAPSHOT
CONFIG_SCAN = 16  # the trace_config is among the first packets of a read


def _say(message: str) -> None:
    print(f"tracebus: {printable(message, 4000)}", file=sys.stderr, flush=True)


def takes_snapshots(config: pb.TraceConfig) -> bool:
    """Whether the record CLI writes a snapshot file at each trigger of `config`."""
    return trigger_modes.mode(config) == CLONE_SNAPSHOT  # or STOP + use_clone_snapshot_...


def check_snapshot_output(out: str, config: pb.TraceConfig) -> None:
    """Snapshots go to OUT.0, OUT.1, ...: standard output cannot hold them."""
    if out == STDOUT and takes_snapshots(config):
        raise UsageError("-o -: a CLONE_SNAPSHOT session writes its snapshots to OUT.0, OUT.1, ...")


@dataclass(frozen=True)
class CloneTarget:
    """The session to clone: its id, or its unique_session_name."""

    session_id: int = 0
    unique_session_name: str = ""

    def __str__(self) -> str:
        if self.session_id:
            return f"session {self.session_id}"
        return f"session {self.unique_session_name!r}"


@dataclass
class Copied:
    """What one clone read into one file."""

    summary: TraceSummary
    session_id: int
    fill_policies: list[str]
    stats: pb.TraceStats | None
    producer_names: dict[ProducerKey, str]  # as the service named them after the read


def copy_session(
    consumer: Consumer,
    target: CloneTarget,
    out: Path,
    read_timeout: float,
    trigger: ipc.ObservableEvents.CloneTriggerHit | None = None,
) -> Copied:
    """Clone `target` on this connection, read the clone into `out`, free it.
    ConsumerError says why not (the file is then left as it was)."""
    result = consumer.clone(
        target.session_id, unique_session_name=target.unique_session_name, trigger=trigger
    )
    summary = TraceSummary()
    config: pb.TraceConfig | None = None
    with open_trace(out) as file:
        for batch in consumer.read_batches(timeout=read_timeout):
            config = config or _config_in(batch)
            file.write_all(batch)
            summary.add_all(batch)
        stats = consumer.stats()
        file.commit()
    names = _producer_names(consumer)
    consumer.free()
    return Copied(summary, result.session_id, _fill_policies(config), stats, names)


def _producer_names(consumer: Consumer) -> dict[ProducerKey, str]:
    """pid -> producer name, for the summary (connected and departed producers);
    none if the service does not say (the summary then shows pids only)."""
    try:
        return producer_names(consumer.query_state())
    except ConsumerError:
        return {}


def _config_in(batch: tuple[bytes, ...]) -> pb.TraceConfig | None:
    for data in batch[:CONFIG_SCAN]:
        packet = pb.TracePacket.FromString(data)
        if packet.HasField("trace_config"):
            return packet.trace_config
    return None


def _fill_policies(config: pb.TraceConfig | None) -> list[str]:
    policy = pb.TraceConfig.BufferConfig.FillPolicy
    buffers = config.buffers if config is not None else []
    return [policy.Name(b.fill_policy or policy.RING_BUFFER) for b in buffers]


def run_clone(
    target: CloneTarget, out: Path, endpoint: str, connect_timeout: float, read_timeout: float
) -> int:
    """`--clone` / `--clone-by-name`: the whole command; its exit code."""
    started = time.monotonic()
    try:
        with Consumer.connect(endpoint, connect_timeout, name="tracebus-cli") as consumer:
            copied = copy_session(consumer, target, out, read_timeout)
    except ConsumerError as e:
        _say(f"error: cannot clone {target}: {e}")
        return EXIT_FAILED
    except OSError as e:
        _say(f"error: cannot write {out}: {e.strerror or e}")
        return EXIT_FAILED
    info = SummaryInput(
        out_path="<stdout>" if str(out) == STDOUT else str(out),
        summary=copied.summary,
        session_id=copied.session_id,
        seconds=time.monotonic() - started,
        producer_names=copied.producer_names,
        fill_policies=copied.fill_policies,
        stats=copied.stats,
        notes=[f"a clone of {target}, which goes on"],
    )
    print(format_summary(info), file=sys.stderr, flush=True)
    return EXIT_OK


class Snapshots:
    """The snapshot files of a CLONE_SNAPSHOT session: OUT.0, OUT.1, ... one per
    clone_trigger_hit the session's consumer observes."""

    def __init__(
        self,
        out: Path,
        endpoint: str,
        connect_timeout: float,
        read_timeout: float,
        notes: list[str],
    ) -> None:
        self.out = out
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.written: list[Path] = []
        self.notes = notes  # the summary's: a snapshot that failed is named there
        self._count = 0

    @staticmethod
    def subscribe(consumer: Consumer) -> None:
        """One subscription for both (a second observe replaces the first): the
        instance events UnmatchedWatch reads, and the triggers."""
        consumer.observe("data_sources_instances", "clone_trigger_hit")

    def wait(
        self, consumer: Consumer, limit: float | None, unmatched: UnmatchedWatch | None
    ) -> None:
        """Consumer.wait_disabled(limit), taking a snapshot at each trigger meanwhile."""
        end = None if limit is None else time.monotonic() + limit
        while not consumer.session_ended:
            left = None if end is None else max(0.0, end - time.monotonic())
            if not consumer.wait_end_or_event(left):
                raise RequestTimeout(f"the session did not end within {limit:g} s")
            events = consumer.take_events()
            if unmatched is not None:
                unmatched.note(events)
            for event in events:
                if event.HasField("clone_trigger_hit"):
                    self.take(event.clone_trigger_hit, consumer.session_id)
        consumer.wait_disabled(0)  # raises SessionError if it ended in an error

    def take(self, hit: ipc.ObservableEvents.CloneTriggerHit, session_id: int) -> Path | None:
        """Clone the session into the next OUT.N, over a connection of its own (this
        one holds the session); a failure is said and noted, the session goes on."""
        path = Path(f"{self.out}.{self._count}")
        self._count += 1
        target = CloneTarget(hit.tracing_session_id or session_id)
        why = f"trigger {printable(hit.trigger_name)!r}"
        try:
            with Consumer.connect(
                self.endpoint, self.connect_timeout, name="tracebus-cli-snapshot"
            ) as consumer:
                copied = copy_session(consumer, target, path, self.read_timeout, hit)
        except (ConsumerError, OSError) as e:
            message = f"snapshot {path.name} ({why}) failed: {e}"
            _say(f"warning: {message}")
            self.notes.append(message)
            return None
        self.written.append(path)
        s = copied.summary
        _say(f"snapshot ({why}): wrote {s.packets} packets to {path}")
        return path
