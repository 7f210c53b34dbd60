"""The supervisor's control channel: msgpack maps over a ZeroMQ ROUTER socket.

It is not part of the tracing ABI (design.md, section 2): a private channel
between one supervisor and the tools of the user who started it, so a plain
map per message is enough and easier to evolve than a .proto.

Requests are maps with a "cmd" and its fields, replies are maps with "ok",
"error" (empty when ok) and the command's result::

    {"cmd": "attach", "name": "extra", "builtin": [], "module": null,
     "command": null, "count": 1, "smb_size_kb": 0, "page_size_kb": 0,
     "policy": null, "data_sources": [], "restart": null, "max_restarts": null,
     "cwd": "/home/me", "wait": true}
        -> {"ok": true, "error": "", "instances": ["extra#1"], "pids": [4242]}
    {"cmd": "list"}
        -> {"ok": true, "error": "", "actors": [{"name": "service", "kind": "service",
            "pid": 4200, "state": "running", "restarts": 0, "exit": null}, ...],
            # once relays of other machines connected to the service:
            "machines": [{"id": 7, "name": "robot1", "connected": true, "producers": 2}],
            "producers": [{"id": 3, "name": "camera", "pid": 901, "machine": "robot1"}],
            # from the supervisor of a relay's machine (--machine robot1), with what
            # its relay last said of its link:
            "machine": "robot1", "link": "link up: machine id 7"}
    {"cmd": "detach", "name": "extra" | "extra#1"}
        -> {"ok": true, "error": "", "detached": ["extra#1"]}
    {"cmd": "stop"} -> {"ok": true, "error": ""}
    {"cmd": "endpoints"} -> {"ok": true, "error": "", "endpoints":
        {"TRACEBUS_PRODUCER_SOCK": "ipc://...", "TRACEBUS_CONSUMER_SOCK": "ipc://...",
         "TRACEBUS_CONTROL": "ipc://..."}}

Every message also carries an "id" the reply repeats, so a client that gave up
on a request never takes its late reply for the answer to the next one. An
attach is checked by the topology's own rules (attach_entry turns it into a
topology.yaml producer entry); with "wait" the reply comes once every instance
registered with the service (or one exited first: an error), a detach reply
once the instances exited (SIGTERM, SIGKILL after 10 s). Actor states: starting
(not registered yet), running, restarting, stopped, detached, exited, failed,
gave up; "exit" is the last exit code or signal name, null while it runs.

The socket is `ipc://<runtime dir>/control.sock`, owner-only (attach runs
commands). Clients find it with `--control`, else $TRACEBUS_CONTROL (which the
supervisor exports to every child), else `ipc://<user runtime dir>/control.sock`
($XDG_RUNTIME_DIR/tracebus, else /tmp/tracebus-<uid>): a symlink the supervisor
points at its own socket while it runs, unless a live supervisor holds it.
"""

from __future__ import annotations

import builtins
import itertools
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import zmq

CONTROL_ENV = "TRACEBUS_CONTROL"
CONTROL_SOCKET = "control.sock"
DEFAULT_TIMEOUT = 10.0
ATTACH_TIMEOUT = 30.0  # the supervisor replies once the producers registered
POLICIES = ("drop", "stall", "stall_then_drop")
RESTART_POLICIES = ("never", "on-failure", "always")

_OPTIONAL_STR = (str, type(None))
_STR_LIST = (list, tuple)
# cmd -> {field: (accepted types, default)}
FIELDS: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    "attach": {
        "name": ((str,), None),
        "builtin": (_STR_LIST + (type(None),), None),
        "module": (_OPTIONAL_STR, None),
        "command": (_OPTIONAL_STR, None),
        "count": ((int,), 1),
        "smb_size_kb": ((int,), 0),
        "page_size_kb": ((int,), 0),
        "policy": (_OPTIONAL_STR, None),
        "data_sources": (_STR_LIST + (type(None),), None),
        "restart": (_OPTIONAL_STR, None),
        "max_restarts": ((int, type(None)), None),
        "cwd": (_OPTIONAL_STR, None),
        "wait": ((bool,), True),
    },
    "list": {},
    "detach": {"name": ((str,), None)},
    "stop": {},
    "endpoints": {},
}


class ControlError(Exception):
    """A malformed message, an error reply, or no supervisor answering in time."""

    request_id: Any = None  # of a malformed request, so that its error reply reaches the client


# -- encoding ----------------------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> bytes:
    return msgpack.packb(dict(message), use_bin_type=True)


def _decode_map(data: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as e:
        raise ControlError(f"not a msgpack message: {e}") from None
    if not isinstance(message, dict) or not all(isinstance(k, str) for k in message):
        raise ControlError("a control message is a map with string keys")
    return message


def request(cmd: str, **fields: Any) -> dict[str, Any]:
    """A validated request map, defaults filled in (what decode_request returns)."""
    return validate_request({"cmd": cmd, **fields})


def validate_request(message: Mapping[str, Any]) -> dict[str, Any]:
    cmd = message.get("cmd")
    if cmd not in FIELDS:
        raise ControlError(f"unknown command {cmd!r} (expected one of {', '.join(FIELDS)})")
    spec = FIELDS[cmd]
    unknown = sorted(set(message) - set(spec) - {"cmd", "id"})
    if unknown:
        raise ControlError(f"{cmd}: unknown field {unknown[0]!r}")
    out: dict[str, Any] = {"cmd": cmd, "id": message.get("id", 0)}
    for field, (types, default) in spec.items():
        value = message.get(field, default)
        if value is None and default is None and type(None) not in types:
            raise ControlError(f"{cmd}: {field} is required")
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ControlError(f"{cmd}: {field}: unexpected {type(value).__name__} {value!r}")
        if isinstance(value, list | tuple):
            if not all(isinstance(v, str) for v in value):
                raise ControlError(f"{cmd}: {field}: expected a list of strings")
            value = list(value)
        out[field] = value
    return out


def attach_entry(req: Mapping[str, Any]) -> dict[str, Any]:
    """An attach request as a topology.yaml producer entry, for
    launch.topology_parser.parse_producer_group to check like any other (one set of rules)."""
    entry: dict[str, Any] = {"name": req["name"], "count": req["count"]}
    extra = list(req.get("data_sources") or [])
    kinds = [k for k in ("builtin", "module", "command") if req.get(k)]
    if len(kinds) > 1:
        raise ControlError(f"attach: give one of --builtin, --module, --command, not {kinds}")
    if req.get("module"):
        entry["module"] = req["module"]
    elif req.get("command"):
        entry["command"] = req["command"]
    else:
        entry["builtin"] = list(req.get("builtin") or []) + extra
        extra = []
    if extra:
        raise ControlError("attach: data_sources: only for builtin producers")
    for key in ("smb_size_kb", "page_size_kb"):
        if req.get(key):
            entry[key] = req[key]
    if req.get("policy"):
        entry["policy"] = req["policy"]
    if req.get("restart"):
        restart: dict[str, Any] = {"policy": req["restart"]}
        if req.get("max_restarts") is not None:
            restart["max_restarts"] = req["max_restarts"]
        entry["restart"] = restart
    return entry


def decode_request(data: bytes) -> dict[str, Any]:
    message = _decode_map(data)
    try:
        return validate_request(message)
    except ControlError as e:
        e.request_id = message.get("id")
        raise


def reply(ok: bool = True, error: str = "", **fields: Any) -> dict[str, Any]:
    return {"ok": ok, "error": error, **fields}


def decode_reply(data: bytes) -> dict[str, Any]:
    message = _decode_map(data)
    if not isinstance(message.get("ok"), bool):
        raise ControlError("a reply without a boolean 'ok'")
    message.setdefault("error", "")
    return message


# -- tables ------------------------------------------------------------------------------------


def format_table(rows: Sequence[Sequence[object]], indent: str = "") -> str:
    """Left-aligned columns; the first row is the header."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join(
        indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def format_actors(actors: Sequence[Mapping[str, Any]], indent: str = "") -> str:
    """The `list` table (and the summary's): one row per actor, in start order."""
    rows: list[Sequence[object]] = [("actor", "kind", "pid", "state", "exit", "restarts")]
    for a in actors:
        exit_ = a.get("exit")
        rows.append(
            (
                a.get("name", "?"),
                a.get("kind", ""),
                a.get("pid") or "-",
                a.get("state", ""),
                "-" if exit_ is None else exit_,
                a.get("restarts", 0),
            )
        )
    return format_table(rows, indent)


def format_listing(listing: Mapping[str, Any]) -> str:
    """The `list` reply: the actors, then the service's machines and its producers with
    their machine when it has relays; on a relay's machine, which machine it is."""
    parts = []
    if listing.get("machine"):
        parts.append(f"machine {listing['machine']}: {listing.get('link', '?')}")
    parts.append(format_actors(listing.get("actors", [])))
    machines = listing.get("machines") or []
    if machines:
        rows: list[Sequence[object]] = [("machine", "id", "connected", "producers")]
        for m in machines:
            connected = "yes" if m.get("connected") else "no"
            rows.append((m.get("name", "?"), m.get("id", "?"), connected, m.get("producers", 0)))
        parts.append(format_table(rows))
        rows = [("producer", "id", "pid", "machine")]
        for p in listing.get("producers") or []:
            rows.append((p.get("name", "?"), p.get("id", "?"), p.get("pid") or "-",
                         p.get("machine", "?")))  # fmt: skip
        parts.append(format_table(rows))
    return "\n\n".join(parts)


# -- finding the supervisor --------------------------------------------------------------------


def default_control_endpoint() -> str:
    """$TRACEBUS_CONTROL, else the per-user default (a symlink to a running supervisor)."""
    from actors.endpoints import runtime_dir

    return os.environ.get(CONTROL_ENV) or f"ipc://{runtime_dir() / CONTROL_SOCKET}"


# -- the client --------------------------------------------------------------------------------


class SupervisorClient:
    """A blocking client: one request at a time, each with a timeout.

    A DEALER (not a REQ) so that a request that timed out does not wedge the
    socket; replies are matched by id and stale ones dropped.
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint or default_control_endpoint()
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.connect(self.endpoint)
        except zmq.ZMQError as e:
            self._sock.close()
            raise ControlError(f"bad control endpoint {self.endpoint!r}: {e}") from None

    def call(self, cmd: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request; the reply map, or ControlError (error reply or timeout)."""
        message = request(cmd, **fields)
        message["id"] = next(self._ids)
        timeout = self.timeout if timeout is None else timeout
        self._sock.send_multipart([b"", encode(message)])
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000) + 1):
                raise ControlError(
                    f"no supervisor answered {cmd!r} at {self.endpoint} within {timeout:g} s"
                    f" (is `python -m launch.supervisor` running? set --control or {CONTROL_ENV})"
                )
            frames = self._sock.recv_multipart()
            answer = decode_reply(frames[-1])
            if answer.get("id") == message["id"]:
                break
        if not answer["ok"]:
            raise ControlError(answer["error"] or f"{cmd} failed")
        return answer

    def attach(
        self,
        name: str,
        *,
        builtin: Sequence[str] | None = None,
        module: str | None = None,
        command: str | None = None,
        count: int = 1,
        smb_size_kb: int = 0,
        page_size_kb: int = 0,
        policy: str | None = None,
        data_sources: Sequence[str] | None = None,
        restart: str | None = None,
        max_restarts: int | None = None,
        wait: bool = True,
        timeout: float = ATTACH_TIMEOUT,
    ) -> list[str]:
        """Start a producer group NAME (NAME#1..count), checked like a topology.yaml
        entry (relative paths resolve against our working directory); with wait, return
        once every instance registered with the service. The instances' names."""
        answer = self.call(
            "attach",
            timeout=timeout,
            name=name,
            builtin=list(builtin) if builtin is not None else None,
            module=module,
            command=command,
            count=count,
            smb_size_kb=smb_size_kb,
            page_size_kb=page_size_kb,
            policy=policy,
            data_sources=list(data_sources) if data_sources is not None else None,
            restart=restart,
            max_restarts=max_restarts,
            cwd=os.getcwd(),
            wait=wait,
        )
        return list(answer.get("instances", []))

    # In the class body below this method, `list` names it: annotations say builtins.list.
    def list(self) -> builtins.list[dict[str, Any]]:
        """Every actor: name, kind, pid, state, restarts, exit."""
        return list(self.call("list")["actors"])

    def listing(self) -> dict[str, Any]:
        """The whole `list` reply: the actors, and the machines and the service's
        producers when relays connected (format_listing prints it)."""
        return self.call("list")

    def detach(self, name: str, *, timeout: float = 30.0) -> builtins.list[str]:
        """Stop a producer group or one instance NAME#k; returns once they exited."""
        return list(self.call("detach", timeout=timeout, name=name).get("detached", []))

    def stop(self) -> None:
        """Ask the supervisor to shut the topology down (it replies before it does)."""
        self.call("stop")

    def endpoints(self) -> dict[str, str]:
        """The topology's endpoints, by the environment variable its actors get them in."""
        endpoints = self.call("endpoints").get("endpoints")
        if not isinstance(endpoints, dict):
            raise ControlError("the supervisor's endpoints reply holds no endpoints")
        return {str(k): str(v) for k, v in endpoints.items()}

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> SupervisorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
