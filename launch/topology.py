"""The topology model: what a topology.yaml describes, as frozen dataclasses.

A `Topology` holds the tracing service (`ServiceSpec`), groups of producer
processes (`ProducerGroup`, each with a `RestartPolicy`), consumers
(`ConsumerSpec`) and the relays of other machines (`RelaySpec`); every path in
it is absolute, every value checked. A topology has parts: the central part
(the service, the consumers, the groups without `machine`) and one part per
relay (the relay and the groups whose `machine` names it), each run by its own
supervisor on its own machine (`Topology.groups_on`). The
methods turn an entry into the argv and the environment of its process; they
start nothing, open no socket and read no clock (the supervisor,
launch/supervisor.py, does). `TopologyError` is how a bad file or entry is
reported: one line naming the file, the line and the key.

The file format is documented key by key in docs/topology.md; the parser that
builds these values from YAML, and checks the file against that reference, is
launch/topology_parser.py (load_topology, parse_topology, parse_producer_group).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

StopWhen = Literal["consumers_done", "never"]
ProducerKind = Literal["builtin", "module", "command"]
ConsumerKind = Literal["script", "config"]
ConsumerStart = Literal["after_producers", "before_producers"]
RestartKind = Literal["never", "on-failure", "always"]

BUILTIN_DATA_SOURCES = ("tracebus.synthetic", "tracebus.demo_timeline")  # actors.data_sources
PROBES = "probes"  # `builtin: [probes]`: the system probes process, actors.probes
PRODUCER_SOCK_ENV = "TRACEBUS_PRODUCER_SOCK"  # actors.endpoints.PRODUCER_ENV
CONSUMER_SOCK_ENV = "TRACEBUS_CONSUMER_SOCK"  # actors.endpoints.CONSUMER_ENV
HOST_MACHINE = "host"  # what machine_name_filter calls the service's own machine
PRODUCER_NAME_ENV = "TRACEBUS_PRODUCER_NAME"  # actors.endpoints.PRODUCER_NAME_ENV
STARTUP_WAIT_ENV = "TRACEBUS_STARTUP_WAIT_S"  # actors.endpoints.STARTUP_WAIT_ENV
# What str.splitlines() splits on, shown escaped so that a message stays one line.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


class TopologyError(Exception):
    """A topology that cannot run. str(e) is one line: FILE:LINE: KEY: PROBLEM (FILE and
    LINE are left out when unknown, KEY when the problem is the whole document)."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str = "",
    ) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        self.key = key
        where = "".join(f"{part}:" for part in (file, line) if part is not None)
        message = " ".join(part for part in (where, f"{key}:" if key else "", problem) if part)
        super().__init__(message.translate(_LINE_BREAKS))  # one line, whatever a value holds


@dataclass(frozen=True)
class RestartPolicy:
    """What the supervisor does when an instance exits: `never` restarts it, `on-failure`
    restarts it after a non-zero exit or a signal, `always` also after exit 0; at most
    `max_restarts` times per instance (with backoff)."""

    policy: RestartKind = "never"
    max_restarts: int = 0

    def should_restart(self, returncode: int, restarts_so_far: int) -> bool:
        """Whether an instance that exited with `returncode` (negative: killed by a
        signal) after `restarts_so_far` restarts is started again."""
        if restarts_so_far >= self.max_restarts:
            return False
        if self.policy == "always":
            return True
        return self.policy == "on-failure" and returncode != 0


@dataclass(frozen=True)
class ServiceSpec:
    """The tracing service. An endpoint of None means ipc://<runtime dir>/producer.sock
    (consumer.sock), and a timeout of None the supervisor's default: the supervisor
    fills them in."""

    producer_endpoint: str | None = None
    consumer_endpoint: str | None = None
    log: Path | None = None
    ready_timeout_s: float | None = None
    stop_timeout_s: float | None = None
    limits: tuple[tuple[str, int], ...] = ()  # (LIMIT_KEYS name, value), as written
    allow_other_users: bool = False  # producers of other uids may connect
    # The relay port (tcp://HOST:PORT) for the relays of other machines: CURVE with
    # relay_key (the service's NAME.key_secret) and relay_clients (a directory of the
    # accepted relays' NAME.key), or plain TCP with relay_insecure (the parser checks).
    relay_endpoint: str | None = None
    relay_key: Path | None = None
    relay_clients: Path | None = None
    relay_insecure: bool = False
    relay_timeout_s: float | None = None  # None: the service's default
    # Perfetto's producer and consumer sockets (actors/perfetto_port.py); whether and
    # where they are served: actors.endpoints.requested_perfetto_sockets.
    perfetto_sockets: bool = False
    perfetto_producer_socket: Path | None = None
    perfetto_consumer_socket: Path | None = None

    def argv(self, python: str, producer_endpoint: str, consumer_endpoint: str) -> list[str]:
        """`python -m actors.service` with both endpoints, the limits and the relay port."""
        argv = [python, "-m", "actors.service"]
        argv += ["--producer-endpoint", producer_endpoint, "--consumer-endpoint", consumer_endpoint]
        for name, value in self.limits:
            argv += ["--" + name.replace("_", "-"), str(value)]
        if self.allow_other_users:
            argv.append("--allow-other-users")
        return argv + self.relay_argv() + self.perfetto_argv()

    def perfetto_argv(self) -> list[str]:
        """The Perfetto sockets' flags of actors.service (none unless asked for)."""
        argv = ["--perfetto-sockets"] if self.perfetto_sockets else []
        if self.perfetto_producer_socket is not None:
            argv += ["--perfetto-producer-socket", str(self.perfetto_producer_socket)]
        if self.perfetto_consumer_socket is not None:
            argv += ["--perfetto-consumer-socket", str(self.perfetto_consumer_socket)]
        return argv

    def relay_argv(self) -> list[str]:
        """The relay port's flags of actors.service (none without relay_endpoint)."""
        if self.relay_endpoint is None:
            return []
        argv = ["--relay-endpoint", self.relay_endpoint]
        if self.relay_insecure:
            argv.append("--relay-insecure")
        if self.relay_key is not None:
            argv += ["--relay-key", str(self.relay_key)]
        if self.relay_clients is not None:
            argv += ["--relay-clients", str(self.relay_clients)]
        if self.relay_timeout_s is not None:
            argv += ["--relay-timeout-s", f"{self.relay_timeout_s:g}"]
        return argv

    def relay_service_endpoint(self) -> str | None:
        """Where a relay on another machine reaches the relay port, as far as this file
        can tell: relay_endpoint with a wildcard host (0.0.0.0, *, [::]) made loopback."""
        if self.relay_endpoint is None:
            return None
        host, port = split_tcp(self.relay_endpoint)
        loopback = {"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "[::]": "[::1]"}
        return f"tcp://{loopback.get(host, host)}:{port}"


@dataclass(frozen=True)
class RelaySpec:
    """The relay of machine `name` (`python -m actors.relay`): it connects to the
    service's relay port `service` (tcp://HOST:PORT) with CURVE, `key` being its own
    NAME.key_secret and `service_key` the service's NAME.key, or over plain TCP with
    `insecure` (the parser checks that exactly one of these holds). None: the relay's
    default. `runtime_dir` is where that machine's supervisor keeps its sockets;
    `restart` what it does when the relay exits (never: the machine's part ends)."""

    name: str
    service: str
    key: Path | None = None
    service_key: Path | None = None
    insecure: bool = False
    send_queue_mb: int | None = None
    clock_sync_interval_s: float | None = None
    link_timeout_s: float | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    runtime_dir: Path | None = None
    log: Path | None = None

    def argv(self, python: str, producer_endpoint: str) -> list[str]:
        """`python -m actors.relay` serving its machine's producers on `producer_endpoint`."""
        argv = [python, "-m", "actors.relay", "--service", self.service]
        argv += ["--machine-name", self.name, "--producer-endpoint", producer_endpoint]
        if self.insecure:
            argv.append("--insecure")
        if self.key is not None:
            argv += ["--key", str(self.key)]
        if self.service_key is not None:
            argv += ["--service-key", str(self.service_key)]
        if self.send_queue_mb is not None:
            argv += ["--send-queue-mb", str(self.send_queue_mb)]
        if self.clock_sync_interval_s is not None:
            argv += ["--clock-sync-interval-s", f"{self.clock_sync_interval_s:g}"]
        if self.link_timeout_s is not None:
            argv += ["--link-timeout-s", f"{self.link_timeout_s:g}"]
        return argv


def split_tcp(endpoint: str) -> tuple[str, int]:
    """(host, port) of tcp://HOST:PORT (an IPv6 host keeps its brackets); ValueError
    if `endpoint` is not of that form."""
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"not a tcp:// endpoint: {endpoint!r}")
    host, sep, port = endpoint[len("tcp://") :].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected tcp://HOST:PORT with a port 1-65535, got {endpoint!r}")
    if host.startswith("[") != host.endswith("]") or "/" in host:
        raise ValueError(f"expected tcp://HOST:PORT, got {endpoint!r}")
    return host, int(port)


@dataclass(frozen=True)
class ProducerGroup:
    """`count` producer processes started the same way, all registering as `name`.

    kind builtin: `data_sources` lists the names asked for (may be empty); kind module:
    `modules` (at least one); kind command: `command` is the argv (at least one item).
    `env` is a tuple of (name, value) pairs, in file order (dict(env) for a mapping);
    `pythonpath` entries are absolute directories."""

    name: str
    kind: ProducerKind
    data_sources: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    count: int = 1
    smb_size_kb: int | None = None
    page_size_kb: int | None = None
    policy: str | None = None  # None: the program's own default (drop; stall for the probes)
    env: tuple[tuple[str, str], ...] = ()
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    pythonpath: tuple[Path, ...] = ()
    log: Path | None = None
    machine: str | None = None  # a relay's name: runs on that machine, behind its relay

    def instance_names(self) -> list[str]:
        """["NAME#1", ..., "NAME#count"]: how the supervisor names the instances."""
        return [f"{self.name}#{i}" for i in range(1, self.count + 1)]

    @property
    def probes(self) -> bool:
        """`builtin: [probes]`: the group runs the system probes (actors.probes)."""
        return self.kind == "builtin" and self.data_sources == (PROBES,)

    def producer_argv(self, python: str, endpoint: str) -> list[str]:
        """`python -m actors.producer ...` for a builtin or module group (`python -m
        actors.probes ...` for `builtin: [probes]`)."""
        if self.kind == "command":
            raise ValueError(f"producer group {self.name!r} runs a command, not actors.producer")
        module = "actors.probes" if self.probes else "actors.producer"
        argv = [python, "-m", module, "--name", self.name]
        if self.smb_size_kb is not None:
            argv += ["--smb-size-kb", str(self.smb_size_kb)]
        if self.page_size_kb is not None:
            argv += ["--page-size-kb", str(self.page_size_kb)]
        if self.policy is not None:
            argv += ["--policy", self.policy]
        for name in self.data_sources:
            if name not in BUILTIN_DATA_SOURCES and not self.probes:
                argv += ["--data-source", name]
        for module in self.modules:
            argv += ["--module", module]
        return [*argv, "--producer-endpoint", endpoint]

    def argv(self, python: str, endpoint: str) -> list[str]:
        """The argv of one instance, whatever the kind: a command's `python`/`python3`
        becomes `python`; a command finds `endpoint` in its environment instead."""
        if self.kind != "command":
            return self.producer_argv(python, endpoint)
        first, *rest = self.command
        return [python if first in ("python", "python3") else first, *rest]

    def environment(
        self, base: Mapping[str, str], endpoint: str, startup_wait_s: float | None = None
    ) -> dict[str, str]:
        """An instance's environment: `base` (usually os.environ), then `env`, with
        `pythonpath` prepended to PYTHONPATH, TRACEBUS_PRODUCER_SOCK and
        TRACEBUS_PRODUCER_NAME; and TRACEBUS_STARTUP_WAIT_S if `startup_wait_s` is
        given (a session runs already: the SDK's first call may wait for it)."""
        env = _environment(base, self.env, self.pythonpath)
        env[PRODUCER_SOCK_ENV] = endpoint
        env[PRODUCER_NAME_ENV] = self.name
        if startup_wait_s is not None:
            env[STARTUP_WAIT_ENV] = f"{startup_wait_s:g}"
        return env


@dataclass(frozen=True)
class ConsumerSpec:
    """A consumer process. kind script: `script` is set and `output` is optional; kind
    config: exactly one of `config` (a file; `config_is_text` says whether it is a
    textproto) and `config_text` (an inline textproto) is set, and `output` is.
    `start` before_producers: the supervisor starts it, and waits until its session
    runs, before the producer groups (to record them from their first event)."""

    name: str
    kind: ConsumerKind
    script: Path | None = None
    config: Path | None = None
    config_text: str | None = None
    config_is_text: bool = True
    output: Path | None = None
    start: ConsumerStart = "after_producers"
    env: tuple[tuple[str, str], ...] = ()
    pythonpath: tuple[Path, ...] = ()
    log: Path | None = None

    def consumer_argv(self, python: str, endpoint: str) -> list[str]:
        """`python -m actors.consumer -c CONFIG [--txt] -o OUTPUT` for a config consumer.
        With an inline config, CONFIG is `-`: write `config_text` to its stdin."""
        if self.kind != "config" or self.output is None:
            raise ValueError(f"consumer {self.name!r} runs a script, not actors.consumer")
        argv = [python, "-m", "actors.consumer", "-c", str(self.config or "-")]
        if self.config_is_text:
            argv.append("--txt")
        return [*argv, "-o", str(self.output), "--consumer-endpoint", endpoint]

    def environment(self, base: Mapping[str, str], endpoint: str) -> dict[str, str]:
        """The process's environment: `base`, then `env`, with `pythonpath` prepended to
        PYTHONPATH, and TRACEBUS_CONSUMER_SOCK."""
        env = _environment(base, self.env, self.pythonpath)
        env[CONSUMER_SOCK_ENV] = endpoint
        return env


@dataclass(frozen=True)
class Topology:
    """A parsed topology.yaml. `source` is the file (absolute), `base_dir` its directory:
    relative paths in the file were resolved against it."""

    source: Path
    base_dir: Path
    runtime_dir: Path | None = None
    stop_when: StopWhen = "consumers_done"
    service: ServiceSpec = field(default_factory=ServiceSpec)
    producers: tuple[ProducerGroup, ...] = ()
    consumers: tuple[ConsumerSpec, ...] = ()
    relays: tuple[RelaySpec, ...] = ()

    def producer(self, name: str) -> ProducerGroup:
        """The producer group called `name` (KeyError if none)."""
        for group in self.producers:
            if group.name == name:
                return group
        raise KeyError(name)

    def consumer(self, name: str) -> ConsumerSpec:
        """The consumer called `name` (KeyError if none)."""
        for spec in self.consumers:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def relay(self, name: str) -> RelaySpec:
        """The relay of machine `name` (KeyError if none)."""
        for spec in self.relays:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def groups_on(self, machine: str | None) -> tuple[ProducerGroup, ...]:
        """The producer groups of one part: those with `machine: NAME` for a relay's
        machine, those without `machine` for the central part (None)."""
        return tuple(g for g in self.producers if g.machine == machine)

    def part(self, machine: str | None) -> Topology:
        """What one supervisor runs, as a topology: the central part (None) is this one
        without the other machines' groups; a relay's machine part has that relay
        alone, its groups, no consumer, the relay's runtime_dir, and runs until stopped
        (no service of its own: the default ServiceSpec). KeyError for no such relay."""
        if machine is None:
            return replace(self, producers=self.groups_on(None))
        relay = self.relay(machine)
        return replace(
            self,
            runtime_dir=relay.runtime_dir,
            stop_when="never",
            service=ServiceSpec(),
            producers=self.groups_on(machine),
            consumers=(),
            relays=(relay,),
        )


def _environment(
    base: Mapping[str, str], extra: Iterable[tuple[str, str]], pythonpath: Sequence[Path]
) -> dict[str, str]:
    env = dict(base)
    env.update(extra)
    if pythonpath:
        entries = [str(p) for p in pythonpath]
        if env.get("PYTHONPATH"):
            entries.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = ":".join(entries)  # Linux only, like the SMB
    return env
