"""ProducerShell: the I/O of a producer process around its ProducerHost.

A ZeroMQ DEALER to the service's producer port on the shared poll loop
(actors/loop.py; other threads hand the host's deliveries over with
Loop.call_soon), the commit timer (pending chunks are committed every
COMMIT_PERIOD_S while data source instances exist; IDLE_TICK_S otherwise, so
that a producer waiting for its service or a session costs next to nothing), signals (only when run
on the main thread), and the reconnects the core asks for. Sends never block: a
full queue counts the message as lost (a handshake is retried on the next tick
instead).

Logging while no service answers: the first failed attempt is logged once, the
retries at DEBUG, and the connection at INFO when it comes; a service lost
later is logged again once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import zmq

from actors.core import producer_core as core
from actors.loop import Loop
from actors.producer_host import ProducerHost
from actors.producer_sdk import DataSource
from actors.smb_handoff import receive_smb
from protos import framing
from protos import tracebus_ipc_pb2 as ipc

COMMIT_PERIOD_S = 0.02
IDLE_TICK_S = 0.1  # the tick without instances: handshake retries and heartbeats only
LINGER_MS = 1000  # how long the last messages may take to leave once run() ends
SEND_HWM = 100_000  # control messages queued for the service before sends fail (and are counted)


class ProducerShell:
    """The I/O: a DEALER on the shared loop, timers, signals. Create it on the
    thread that will call run(): the host takes it as its loop thread."""

    def __init__(
        self,
        producer_core: core.ProducerCore,
        data_sources: dict[str, type[DataSource]],
        endpoint: str,
        log: logging.LoggerAdapter | logging.Logger,
        loop: Loop | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.log = log
        self.loop = loop if loop is not None else Loop()
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.exit_code = 0
        self.send_failures = 0
        self._unsent_init: ipc.ProducerToService | None = None
        self._deliver_pending = False  # a host.deliver() is queued on the loop
        self._quiet = False  # a failed attempt was logged: retries at DEBUG
        self._ever_connected = False
        self.host = ProducerHost(
            producer_core,
            data_sources,
            send=self._send,
            wake=self._wake,
            attach_region=lambda cmd: receive_smb(cmd.socket, cmd.token, cmd.size),
            log=log,
            on_connection_event=self._on_connection_event,
        )

    def run(self, until: Callable[[], bool] | None = None) -> int:
        """Serve until a signal, a fatal refusal, loop.stop() or `until()`; then stop
        the data sources and close everything (the loop too). The socket lingers
        up to LINGER_MS so that the last commits and acks reach the service."""
        if threading.current_thread() is threading.main_thread():
            self.loop.stop_on_signals()
        self.log.info("connecting to %s", self.endpoint)
        try:
            self._open()
            self.loop.call_later(COMMIT_PERIOD_S, self._tick)
            self.loop.run(until=until)
            self.loop.run_queued_calls()  # what other threads asked before the stop (triggers)
            self.log.info("stopping")
            self.host.shutdown()
        finally:
            self._close(linger_ms=LINGER_MS)
            self.loop.close()
            self.ctx.term()
        return self.exit_code

    # -- the socket ------------------------------------------------------------------------

    def _open(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a service that is not there
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)  # an open socket would hang ctx.term() in run()
            raise
        self.sock = sock
        self.loop.add_socket(sock, self._on_readable)
        self.host.connect(self.loop.now())

    def _close(self, linger_ms: int) -> None:
        if self.sock is not None:
            self.loop.remove(self.sock)
            self.sock.close(linger=linger_ms)
            self.sock = None
        self._unsent_init = None

    def _send(self, msg: ipc.ProducerToService) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send_multipart(framing.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            kind = msg.WhichOneof("msg")
            if kind == "initialize_connection":
                self._unsent_init = msg  # not connected yet: retried on the next tick
                return
            if kind == "heartbeat":
                return  # a probe, not data: the service is away (the core's liveness rule)
            self.send_failures += 1
            if self.send_failures in (1, 10, 100) or self.send_failures % 1000 == 0:
                self.log.warning("%d messages to the service could not be sent", self.send_failures)

    def _on_readable(self) -> None:
        while self.sock is not None:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = framing.decode_to_producer(frames)
            except framing.FramingError as e:
                self.log.warning("dropping an undecodable message from the service: %s", e)
                continue
            self.host.on_message(msg, self.loop.now())

    # -- wake-ups, timers, connection events ---------------------------------------------

    def _wake(self) -> None:
        """Any thread: have the loop thread deliver what the host queued. One
        delivery queued at a time (a second wake while one waits is free)."""
        if not self._deliver_pending:
            self._deliver_pending = True
            self.loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._deliver_pending = False  # before delivering: later posts wake again
        self.host.deliver()

    def _tick(self) -> None:
        if self._unsent_init is not None and self.sock is not None:
            msg, self._unsent_init = self._unsent_init, None
            self._send(msg)
        self.host.tick(self.loop.now())
        period = COMMIT_PERIOD_S if self.host.serving() else IDLE_TICK_S
        self.loop.call_later(period, self._tick)

    def _on_connection_event(self, out: core.Output) -> None:
        if isinstance(out, core.Connected):
            self._quiet = False
            self._ever_connected = True
        elif isinstance(out, core.Reconnect):
            self._log_retry(out)
            self._close(linger_ms=0)
            self.loop.call_later(out.delay_s, self._open)
        elif isinstance(out, core.Fatal):
            self.log.error("%s", out.reason)
            self.exit_code = 1
            self.loop.stop()

    def _log_retry(self, out: core.Reconnect) -> None:
        if self._quiet:
            what = "service at %s: %s; retrying in %g s"
            self.log.debug(what, self.endpoint, out.reason, out.delay_s)
            return
        self._quiet = True
        if self._ever_connected:
            what = "lost the tracing service at %s (%s); retrying quietly until it is back"
        else:
            what = "no tracing service at %s yet (%s); retrying quietly until one appears"
        self.log.warning(what, self.endpoint, out.reason)
