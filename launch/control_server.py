"""The supervisor's end of its control channel (the messages and the client:
launch/control.py).

ControlServer binds the ROUTER socket, owner only (attach runs commands), and
answers each request with the handler its "cmd" names in an explicit table
(command name -> handler), given at construction. A handler returns the
reply, or Later(check) when the answer depends on what happens next (an
attach that waits for registration, a detach for exits): settle(), which the
supervisor calls after every exit and registration tick, sends each pending
reply once its check returns one. A request that does not decode, a command
without a handler and a handler's ControlError get an error reply; so does
every pending request when the server closes.

Commands holds the handlers of list, stop, attach and detach, and the table
naming them; it acts on the supervisor through the Supervising protocol. The
list reply also carries, when the service has relays of other machines, its
machines and its producers with their machine (service_listing).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zmq

from actors.loop import Loop
from launch import control
from launch.children import Actor, exit_text
from launch.runtime import Runtime, SetupError
from launch.shutdown import STOP_TIMEOUT
from launch.topology import HOST_MACHINE as HOST
from launch.topology import ProducerGroup, Topology, TopologyError
from launch.topology_parser import parse_producer_group
from protos import tracebus_ipc_pb2 as ipc

Reply = dict[str, Any]
Request = dict[str, Any]  # as control.decode_request returns it: checked, defaults filled


@dataclass(frozen=True)
class Later:
    """A reply that waits: check() returns it once it is ready, None until then."""

    check: Callable[[], Reply | None]


Handler = Callable[[Request], "Reply | Later"]


class ControlServer:
    def __init__(
        self,
        ctx: zmq.Context,
        loop: Loop,
        handlers: Mapping[str, Handler],
        on_later: Callable[[], None],
    ) -> None:
        self.ctx = ctx
        self.loop = loop
        self.handlers = dict(handlers)
        self.on_later = on_later  # makes sure settle() is called soon (the supervisor's tick)
        self.sock: zmq.Socket | None = None
        self.bound = False  # the socket file is ours to remove
        self.pending: list[tuple[Later, bytes, Any]] = []  # (later, identity, request id)

    def bind(self, endpoint: str) -> None:
        """Listen on `endpoint`, owner only; SetupError if it cannot be bound."""
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.LINGER, 500)  # the reply to `stop` still leaves
        old_umask = os.umask(0o077)  # attach runs commands: owner only
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as e:
            raise SetupError(f"cannot bind {endpoint}: {e}") from None
        finally:
            os.umask(old_umask)
        self.bound = True
        self.loop.add_socket(self.sock, self._on_readable)

    def _on_readable(self) -> None:
        while self.sock is not None:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, payload = frames[0], frames[-1]
            try:
                req = control.decode_request(payload)
            except control.ControlError as e:
                self._reply(identity, e.request_id, control.reply(False, str(e)))
                continue
            self._answer(identity, req)

    def _answer(self, identity: bytes, req: Request) -> None:
        handler = self.handlers.get(req["cmd"])
        try:
            if handler is None:  # control.FIELDS knows a command we have no handler for
                raise control.ControlError(f"{req['cmd']}: not supported by this supervisor")
            answer = handler(req)
        except control.ControlError as e:
            answer = control.reply(False, str(e))
        if isinstance(answer, Later):
            self.pending.append((answer, identity, req["id"]))
            self.on_later()
        else:
            self._reply(identity, req["id"], answer)

    def _reply(self, identity: bytes, request_id: Any, answer: Reply) -> None:
        if self.sock is None:
            return
        try:
            message = control.encode({**answer, "id": request_id})
            self.sock.send_multipart([identity, b"", message], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client gave up and left

    def settle(self) -> None:
        """Send every pending reply that is ready."""
        still = []
        for later, identity, request_id in self.pending:
            answer = later.check()
            if answer is None:
                still.append((later, identity, request_id))
            else:
                self._reply(identity, request_id, answer)
        self.pending = still

    def close(self) -> None:
        """Pending requests get an error reply; the socket closes."""
        if self.sock is None:
            return
        for _later, identity, request_id in self.pending:
            self._reply(identity, request_id, control.reply(False, "the topology stopped"))
        self.pending = []
        self.loop.remove(self.sock)
        self.sock.close()
        self.sock = None


# -- the commands ------------------------------------------------------------------------------


class Supervising(Protocol):
    """What the command handlers need of the supervisor (launch/supervisor.py)."""

    topology: Topology
    actors: list[Actor]
    runtime: Runtime
    machine: str | None  # the relay's machine whose part this supervisor runs
    link: str | None  # what its relay last said of its link

    def stopping(self) -> bool: ...

    def request_stop(self, reason: str) -> None: ...

    def start_producers(self, group: ProducerGroup, cwd: str) -> list[Actor]: ...

    def stop_actor(self, actor: Actor, signum: int, timeout: float) -> None: ...

    def say(self, text: str) -> None: ...

    def service_state(self) -> ipc.QueryServiceStateResponse | None: ...


class Commands:
    """One handler per command of launch/control.py."""

    def __init__(self, supervisor: Supervising) -> None:
        self.supervisor = supervisor

    def table(self) -> dict[str, Handler]:
        return {
            "list": self.on_list,
            "stop": self.on_stop,
            "attach": self.on_attach,
            "detach": self.on_detach,
            "endpoints": self.on_endpoints,
        }

    def on_list(self, _req: Request) -> Reply:
        sup = self.supervisor
        listing: Reply = {"actors": [a.describe() for a in sup.actors]}
        if sup.machine is not None:
            listing["machine"] = sup.machine
            listing["link"] = sup.link or "link not up yet"
        elif sup.topology.service.relay_endpoint is not None:  # else no machine to list
            listing.update(service_listing(sup.service_state()))
        return control.reply(**listing)

    def on_endpoints(self, _req: Request) -> Reply:
        """Where the topology's service listens (ctl's trigger fires on its consumer port)."""
        return control.reply(endpoints=dict(self.supervisor.runtime.endpoints))

    def on_stop(self, _req: Request) -> Reply:
        self.supervisor.request_stop("ctl stop")
        return control.reply()

    def on_attach(self, req: Request) -> Later:
        """Start the group now; the reply once each instance registered (with wait)."""
        sup = self.supervisor
        if sup.stopping():
            raise control.ControlError("the topology is stopping")
        cwd = req["cwd"] or str(sup.topology.base_dir)
        taken = {a.group for a in sup.actors} | {c.name for c in sup.topology.consumers}
        taken |= {g.name for g in sup.topology.producers}
        try:
            group = parse_producer_group(control.attach_entry(req), Path(cwd), taken=taken)
        except TopologyError as e:
            raise control.ControlError(f"attach: {e}") from None
        actors = sup.start_producers(group, cwd)
        names = [a.name for a in actors]
        sup.say(f"attached {', '.join(names)}")

        def check() -> Reply | None:
            if req["wait"] and any(a.state == "starting" for a in actors):
                return None
            gone = [f"{a.name} {exit_text(a.returncode)}" for a in actors if not a.alive]
            if req["wait"] and gone:
                return control.reply(False, f"exited before registering: {', '.join(gone)}")
            return control.reply(instances=names, pids=[a.pid for a in actors])

        return Later(check)

    def on_detach(self, req: Request) -> Later:
        """SIGTERM to a group or one instance; the reply once they exited."""
        name = req["name"]
        targets = [a for a in self.supervisor.actors if name in (a.name, a.group)]
        if not targets:
            raise control.ControlError(f"no actor named {name!r}")
        if any(a.kind != "producer" for a in targets):
            raise control.ControlError(f"{name} is not a producer: only producers detach")
        for actor in targets:
            actor.stop_requested = actor.detached = True
            if actor.restart_timer is not None:
                actor.restart_timer.cancel()
                actor.restart_timer = None
                actor.state = "detached"
            self.supervisor.stop_actor(actor, signal.SIGTERM, STOP_TIMEOUT)

        def check() -> Reply | None:
            if any(a.alive for a in targets):
                return None
            return control.reply(detached=[a.name for a in targets])

        return Later(check)


def service_listing(state: ipc.QueryServiceStateResponse | None) -> Reply:
    """The service's machines and producers, each producer with its machine's name
    ("host": the service's own), as list maps; nothing when no relay ever connected."""
    if state is None or not state.machines:
        return {}
    names = {m.id: m.name for m in state.machines}
    machines = [
        {"id": m.id, "name": m.name, "connected": m.connected, "producers": m.producers}
        for m in state.machines
    ]
    producers = [
        {
            "id": p.id,
            "name": p.name,
            "pid": p.pid,
            "machine": names.get(p.machine_id, f"#{p.machine_id}") if p.machine_id else HOST,
        }
        for p in state.producers
    ]
    return {"machines": machines, "producers": producers}
