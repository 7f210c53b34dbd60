"""write_into_file: the service drains a session's buffers into its trace file
every file_write_period_ms, in bounded slices between other work, and writes
the last drain and trace_stats when the session ends (file_sink.py holds the
records and the bytes; the shell does the file I/O).

    enable ──open──► drain every period ──────────────────► last drain, trace_stats,
                     (from the start until the stop acks)       CloseFile, end reply

A drain is a readback.PendingRead whose sink is the file: continue_reads
takes one slice of each drain under way per loop turn, as for a consumer's
read. The session's end reply (the second EnableTracingResponse) waits for
the file to be closed, so a consumer that hears "disabled" finds the file
complete. max_file_size_bytes: the drain that reaches it writes the whole
packets that fit, closes the file and disables the session. A session freed
(its consumer gone or given up on, the service shutting down) is stopped at
once and its last drain and trace_stats are written in full (finish_now)
before its buffers are dropped and its file closed.
"""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core import compression, readback, trigger_modes
from actors.core.file_sink import SessionFile, output_path, trace_bytes, write_period_ns
from actors.core.lifecycle import TAKING_DATA_SESSION, SessionEvent, can_apply
from actors.core.service_context import ServiceContext
from actors.core.session_control import SessionControl
from actors.core.sessions import Session

_TO_THE_END = readback.SliceBudget()  # finish_now's slices: no time limit


class FileWrites:
    def __init__(self, ctx: ServiceContext, control: SessionControl) -> None:
        self._ctx = ctx
        self._control = control

    def open(self, requested_path: str, config: pb.TraceConfig) -> tuple[int, str]:
        """(file id, error) of the file a write_into_file session is enabled with."""
        path, error = output_path(requested_path, config)
        if error:
            return 0, error
        try:
            return self._ctx.open_file(path), ""
        except OSError as e:
            return 0, f"cannot open the output file {path}: {e.strerror or e}"

    def attach(self, session: Session, file_id: int, now: int) -> None:
        config = session.config
        period = write_period_ns(config)
        file = SessionFile(file_id, config.max_file_size_bytes, period, now + period)
        self._ctx.files[session.id] = file

    # -- drains --------------------------------------------------------------------------------

    def on_timer(self, session: Session, now: int) -> None:
        """Start the periodic drain that is due (one at a time; a drain that
        outlasts its period is not doubled)."""
        file = self._ctx.files.get(session.id)
        if file is None or file.next_drain is None or file.next_drain > now:
            return
        file.next_drain = now + file.period_ns  # from now: a late timer must not burst
        if file.read is None and session.state in TAKING_DATA_SESSION:
            file.start_read(session.id)

    def deadlines(self) -> list[int]:
        return [f.next_drain for f in self._ctx.files.values() if f.next_drain is not None]

    def pending(self) -> bool:
        return any(f.read is not None or f.end_due for f in self._ctx.files.values())

    def continue_drains(self, budget: readback.SliceBudget, now: int) -> None:
        """The next slice of each drain under way, until time_up(); and the end
        replies due (file_sink.SessionFile.end_due)."""
        for session_id, file in list(self._ctx.files.items()):
            if file.end_due:
                self._tell_ended(self._ctx.sessions[session_id], file)
            if file.read is None:
                continue
            self._next_slice(session_id, file, budget, now)
            if budget.time_up():
                return

    def _next_slice(
        self, session_id: int, file: SessionFile, budget: readback.SliceBudget, now: int
    ) -> None:
        ctx = self._ctx
        session = ctx.sessions[session_id]  # a freed session's file is forgotten (forget)
        read = file.read
        assert read is not None  # continue_drains passes files with a drain under way
        framing = readback.TRACE_FILE
        if trigger_modes.withholds_data(session):  # no trigger yet: nothing goes into the file
            self._drain_done(session, file)
            return
        records, done = readback.read_slice(
            read, session, ctx.buffers, ctx.uid, ctx.service_pid, budget, framing,
            system_info=ctx.system_info, boottime_ns=ctx.clocks.boottime(),
            machines=ctx.machine_packets, machine_of=ctx.machine_of,
        )  # fmt: skip
        if done and file.final_read:  # after the buffers, so that it counts what was read
            records += framing.frame(ctx.trace_stats_packet(session))
        records = compression.compress(session.config, records, framing)
        if not self._write(file, records):
            self._file_full(session, file, now)
        elif done:
            self._drain_done(session, file)

    def _write(self, file: SessionFile, records: list[bytes]) -> bool:
        """Append the packets of `records`; False when max_file_size_bytes cut them."""
        room = file.max_bytes - file.written if file.max_bytes else None
        data, fits = trace_bytes(records, room)
        self._ctx.out.append_to_file(file.file_id, data)
        file.written += len(data)
        return fits

    def _drain_done(self, session: Session, file: SessionFile) -> None:
        file.read = None
        if file.ending is None:
            return
        if not file.final_read:  # it began before the stop: one more, from after it
            file.start_read(session.id)
            return
        self._close(file)
        file.end_due = True

    def _tell_ended(self, session: Session, file: SessionFile) -> None:
        file.end_due = False
        assert file.ending is not None  # end_due is set only once the session ended
        self._control.tell_ended(session, file.ending.stop_timed_out)

    def _file_full(self, session: Session, file: SessionFile, now: int) -> None:
        """max_file_size_bytes reached: nothing more is written; the session ends."""
        self._close(file)
        if file.ending is not None:  # it had ended already: the consumer waits for this
            file.end_due = True
        elif can_apply(session, SessionEvent.DISABLE):
            self._control.disable(session, now)

    def _close(self, file: SessionFile) -> None:
        file.read = None
        file.next_drain = None
        file.closed = True
        self._ctx.out.close_file(file.file_id)

    def finish_now(self, session: Session, now: int) -> None:
        """The session is being freed (its consumer gone or given up on, the service
        shutting down) and is stopped: its last drain and trace_stats go into the
        file now, in full, before its buffers are dropped. Unbounded in time, but
        bounded by the size of the session's buffers: nothing else can add to them."""
        file = self._ctx.files.get(session.id)
        while file is not None and file.read is not None and not file.closed:
            self._next_slice(session.id, file, _TO_THE_END, now)

    def failed(self, file_id: int, error: str, now: int) -> None:
        """The shell could not write a file (and closed it): no more drains into
        it; its session ends with the error (now, or when its stop acks are in)."""
        found = [(i, f) for i, f in self._ctx.files.items() if f.file_id == file_id]
        if not found:
            return  # its session was freed: nobody waits for its end
        session_id, file = found[0]
        if file.error or (file.closed and file.ending is not None and not file.end_due):
            return  # the first error is the one told; an end told already stands
        file.read = None
        file.next_drain = None
        file.closed = True
        file.error = f"writing the trace file failed: {error}"
        if file.ending is not None:  # stopped already: the consumer waits for the end
            file.end_due = True
        else:  # (a session waiting for its stop acks ends when they are in)
            self._control.disable(self._ctx.sessions[session_id], now)

    def forget(self, session: Session) -> None:
        """The session is freed: close its file (if still open: finish_now wrote
        its last drain) and answer a consumer that waits for the end."""
        file = self._ctx.files.get(session.id)
        if file is None:
            return
        if not file.closed:
            self._close(file)
            file.end_due = file.ending is not None
        if file.end_due:  # (before the file leaves: tell_ended reads its error)
            self._tell_ended(session, file)
        del self._ctx.files[session.id]
