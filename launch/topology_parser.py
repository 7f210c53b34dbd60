"""The topology parser: topology.yaml text in, a checked `Topology` out.

load_topology(path) reads a file, parse_topology(text, path) checks text as if
read from path, and parse_producer_group(data, base_dir) checks one producer
group sent at runtime (`launch.ctl attach`). Every problem is a TopologyError
naming the file, the line and the key; nothing is started and no socket is
opened (the supervisor acts on the result).

The file format is documented in docs/topology.md. SECTION_KEYS below is the
one list of the keys each section accepts: the parser refuses every other
key, and tests/test_topology.py checks that the reference documents exactly
these keys, section by section, so that neither can change without the other.
"""

from __future__ import annotations

import io
import re
import shlex
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from actors.core.configs import TEXT_SUFFIXES, looks_like_textproto, textproto_error
from actors.core.limits import limit_names
from actors.output_paths import not_regular, written_path
from launch.topology import (
    HOST_MACHINE,
    PROBES,
    ConsumerSpec,
    ConsumerStart,
    ProducerGroup,
    RelaySpec,
    RestartKind,
    RestartPolicy,
    ServiceSpec,
    Topology,
    TopologyError,
    split_tcp,
)
from launch.yaml_reader import (
    BoundedLoader,
    YamlReader,
    choices_text,
    join_key,
    line_of,
    one_line,
    syntax_error,
)

STOP_WHEN = ("consumers_done", "never")
CONSUMER_STARTS: tuple[ConsumerStart, ...] = ("after_producers", "before_producers")
POLICIES = ("drop", "stall", "stall_then_drop")  # actors.producer.POLICIES
RESTART_POLICIES: tuple[RestartKind, ...] = ("never", "on-failure", "always")
DEFAULT_MAX_RESTARTS = 5
MAX_COUNT = 256
PAGE_SIZES_KB = (4, 8, 16, 32)  # shm.abi.PAGE_SIZES
DEFAULT_PAGE_SIZE_KB = 4  # shm.abi.DEFAULT_PAGE_SIZE
MAX_SMB_SIZE_KB = 32 * 1024  # shm.abi.MAX_SMB_SIZE
RESERVED_NAMES = ("service", "supervisor", "relay")  # the supervisors' own actors
WILDCARD_HOSTS = ("0.0.0.0", "*", "[::]")  # bind to every address: nothing to connect to
RESERVED_ENV_PREFIX = "TRACEBUS_"
MAX_IPC_PATH = 107  # bytes of sun_path, less its NUL
SOCKET_NAME_ROOM = 24  # bytes runtime_dir keeps free for "/<socket name>"
MAX_TOPOLOGY_BYTES = 16 << 20  # far above any real topology; a device or a huge file is not one
MAX_CONFIG_BYTES = 4 << 20  # protos.framing.MAX_FRAME_BYTES: one request carries the config

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
DATA_SOURCE_RE = re.compile(r"\S+")

TOP_KEYS = ("runtime_dir", "stop_when", "service", "relays", "producers", "consumers")
RELAY_PORT_KEYS = (  # each a flag of actors.service
    "relay_endpoint",
    "relay_key",
    "relay_clients",
    "relay_insecure",
    "relay_timeout_s",
)
PERFETTO_KEYS = (  # the Perfetto sockets, each a flag of actors.service
    "perfetto_sockets",
    "perfetto_producer_socket",
    "perfetto_consumer_socket",
)
SERVICE_KEYS = (
    "producer_endpoint",
    "consumer_endpoint",
    "log",
    "ready_timeout_s",
    "stop_timeout_s",
    "limits",
    "allow_other_users",
    *RELAY_PORT_KEYS,
    *PERFETTO_KEYS,
)
RELAY_KEYS = (  # the relay's flags, and where its machine's supervisor keeps its sockets
    "name",
    "service",
    "key",
    "service_key",
    "insecure",
    "send_queue_mb",
    "clock_sync_interval_s",
    "link_timeout_s",
    "restart",
    "runtime_dir",
    "log",
)
LIMIT_KEYS = (*limit_names(), "peer_send_timeout_s")  # each a flag of actors.service
PRODUCER_KINDS = ("builtin", "module", "command")
PRODUCER_KEYS = (
    "name",
    *PRODUCER_KINDS,
    "count",
    "smb_size_kb",
    "page_size_kb",
    "policy",
    "env",
    "restart",
    "pythonpath",
    "log",
    "machine",
)
PRODUCER_ONLY_KEYS = ("smb_size_kb", "page_size_kb", "policy")  # not for command groups
RESTART_KEYS = ("policy", "max_restarts")
CONSUMER_KINDS = ("script", "config", "config_text")
CONSUMER_KEYS = ("name", *CONSUMER_KINDS, "output", "start", "env", "pythonpath", "log")

# The keys each section accepts, by the name docs/topology.md gives the section
# (the parser checks each mapping against its tuple; the doc's tables must match).
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "top level": TOP_KEYS,
    "service": SERVICE_KEYS,
    "service.limits": LIMIT_KEYS,
    "relays[]": RELAY_KEYS,
    "producers[]": PRODUCER_KEYS,
    "producers[].restart": RESTART_KEYS,
    "consumers[]": CONSUMER_KEYS,
}


def load_topology(path: str | Path) -> Topology:
    """Read and check a topology file; TopologyError says what is wrong with it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOPOLOGY_BYTES + 1)
    except OSError as e:
        raise TopologyError(f"cannot read: {e.strerror or e}", file=str(path)) from None
    if len(data) > MAX_TOPOLOGY_BYTES:
        limit = MAX_TOPOLOGY_BYTES >> 20
        raise TopologyError(f"larger than {limit} MiB: not a topology", file=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TopologyError(
            f"not UTF-8 text (byte 0x{data[e.start]:02x})", file=str(path), line=line
        ) from None
    return parse_topology(text, path)


def parse_topology(text: str, path: Path) -> Topology:
    """Check topology text as if read from `path` (named in errors; relative paths in
    the text resolve against its directory, which need not exist)."""
    path = Path(path)
    try:
        loader = BoundedLoader(text)  # the reader checks the characters here
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        raise syntax_error(e, str(path)) from None
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        problem = f"invalid YAML: {e.reason} (character #x{e.character:04x})"
        raise TopologyError(problem, file=str(path), line=line) from None
    except yaml.YAMLError as e:  # pragma: no cover - every PyYAML parse error has a mark
        raise TopologyError(f"invalid YAML: {one_line(str(e))}", file=str(path)) from None
    source = path.expanduser().resolve()
    parser = TopologyParser(loader, str(path), source.parent)
    try:
        return parser.topology(root, source)
    finally:
        loader.dispose()


def parse_producer_group(
    data: Mapping[str, Any], base_dir: Path, *, taken: Iterable[str] = ()
) -> ProducerGroup:
    """A producer group from a plain mapping (what `launch.ctl attach` sends), checked
    like a topology entry; relative paths resolve against `base_dir`, and the name may
    not be one of `taken`. Errors name the key only: `count: expected ...`."""
    try:
        node = yaml.SafeDumper(io.StringIO()).represent_data(dict(data))  # no stream used
    except yaml.representer.RepresenterError as e:
        raise TopologyError(f"cannot represent {e.args[1]!r}") from None
    parser = TopologyParser(yaml.SafeLoader(""), None, Path(base_dir).expanduser().resolve())
    for name in taken:
        parser.names[name] = ("an existing actor", None)
    return parser.producer(node, "")


def check_part(topology: Topology, machine: str | None) -> None:
    """What one part of the topology needs on the machine that runs it, checked before
    anything starts: the relay called `machine` exists (None: the central part), and
    the key files of its relay link load (the service's relay_key and relay_clients,
    or the relay's key and service_key). Key files are not checked at parse time: each
    machine holds only its own secret key. TopologyError names the key."""
    # zmq.auth reads the files: imported here, the parser's own imports stay pure.
    from actors.relay_keys import KeyFileError, load_directory, load_pair, load_public

    file = str(topology.source)
    keys: list[tuple[str, Path | None, Callable[[Path], object]]]
    if machine is None:
        service = topology.service
        keys = [("service.relay_key", service.relay_key, load_pair)]
        keys.append(("service.relay_clients", service.relay_clients, load_directory))
    else:
        names = [r.name for r in topology.relays]
        if machine not in names:
            known = choices_text(names) if names else "none (the file has no relays)"
            raise TopologyError(f"no relay named {machine!r}; relays: {known}", file=file)
        i = names.index(machine)
        relay = topology.relays[i]
        keys = [(f"relays[{i}].key", relay.key, load_pair)]
        keys.append((f"relays[{i}].service_key", relay.service_key, load_public))
    for key, path, load in keys:
        if path is not None:
            try:
                load(path)
            except KeyFileError as e:
                raise TopologyError(str(e), file=file, key=key) from None


class TopologyParser(YamlReader):
    """The topology's schema over YamlReader; remembers the names and outputs it has
    seen (they must be unique across the file)."""

    def __init__(self, loader: yaml.SafeLoader, file: str | None, base_dir: Path) -> None:
        super().__init__(loader, file, base_dir)
        self.names: dict[str, tuple[str, int | None]] = {}  # name -> (key, line)
        self.outputs: dict[Path, tuple[str, int | None]] = {}
        self.runtime_dirs: dict[Path, str] = {}  # runtime_dir -> its key
        self.machines: dict[str, int | None] | None = None  # relay name -> line; None: attach

    def name(self, node: Node, key: str) -> str:
        value = self.string(node, key, "a name")
        if not NAME_RE.fullmatch(value):
            self.fail(
                node,
                key,
                f"invalid name {value!r}: use 1 to 64 letters, digits, '_', '.' or '-' "
                "(the supervisor adds '#k' to tell instances apart)",
            )
        if value in RESERVED_NAMES:
            self.fail(node, key, f"{value!r} is reserved; choose another name")
        if value in self.names:
            other, line = self.names[value]
            at = f" at line {line}" if line is not None else ""
            self.fail(node, key, f"duplicate name {value!r} (also {other}{at})")
        self.names[value] = (key.rsplit(".", 1)[0], line_of(node))
        return value

    # -- the document ------------------------------------------------------------------------

    def topology(self, root: Node | None, source: Path) -> Topology:
        if root is None:
            raise TopologyError(
                "empty file; expected a mapping with service, producers and consumers",
                file=self.file,
                line=1,
            )
        if not isinstance(root, MappingNode):
            got = self.describe(root, "")
            self.fail(root, "", f"expected a mapping at the top level, got {got}")
        keys = self.mapping(root, "", TOP_KEYS)
        topo: dict[str, Any] = {}
        if "runtime_dir" in keys:
            topo["runtime_dir"] = self.runtime_dir(keys["runtime_dir"][1], "runtime_dir")
        if "stop_when" in keys:
            topo["stop_when"] = self.choice(keys["stop_when"][1], "stop_when", STOP_WHEN)
        if "service" in keys:
            topo["service"] = self.service(keys["service"][1], "service")
        self.machines = {}
        if "relays" in keys:  # before the producers: their `machine` names a relay
            topo["relays"] = self.relays(keys["relays"][1], "relays", topo.get("service"))
        producers: list[ProducerGroup] = []
        if "producers" in keys:
            items = self.sequence(keys["producers"][1], "producers", "a list of producer groups")
            producers = [self.producer(item, f"producers[{i}]") for i, item in enumerate(items)]
        consumers: list[ConsumerSpec] = []
        if "consumers" in keys:
            items = self.sequence(keys["consumers"][1], "consumers", "a list of consumers")
            consumers = [self.consumer(item, f"consumers[{i}]") for i, item in enumerate(items)]
        if topo.get("stop_when", "consumers_done") == "consumers_done" and not consumers:
            where = keys.get("stop_when", keys.get("consumers", (root, root)))[0]
            key = "stop_when" if "stop_when" in keys else "consumers"
            self.fail(
                where,
                key,
                "stop_when is consumers_done but there is no consumer; "
                "add one or set stop_when: never",
            )
        return Topology(
            source=source,
            base_dir=self.base_dir,
            producers=tuple(producers),
            consumers=tuple(consumers),
            **topo,
        )

    def runtime_dir(self, node: Node, key: str) -> Path:
        path = self.path(node, key)
        mode = self.mode(node, key, path)
        if mode is not None and not stat.S_ISDIR(mode):
            self.fail(node, key, f"not a directory: {path}")
        if path in self.runtime_dirs:  # two parts run on one machine in a test, or by mistake
            other = self.runtime_dirs[path]
            self.fail(node, key, f"the same directory as {other}: each part needs its own")
        self.runtime_dirs[path] = key
        room = MAX_IPC_PATH - SOCKET_NAME_ROOM
        size = len(str(path).encode())
        if size > room:
            self.fail(
                node, key, f"too long for ipc socket paths ({size} bytes, at most {room}): {path}"
            )
        return path

    def service(self, node: Node, key: str) -> ServiceSpec:
        keys = self.mapping(node, key, SERVICE_KEYS)
        spec: dict[str, Any] = {}
        for name, (_knode, vnode) in keys.items():
            child = join_key(key, name)
            if name == "relay_endpoint":
                spec[name] = self.tcp_endpoint(vnode, child, connect=False)
            elif name in ("relay_key", "relay_clients"):
                spec[name] = self.path(vnode, child)  # checked where it runs (check_part)
            elif name.endswith("_endpoint"):
                spec[name] = self.endpoint(vnode, child)
            elif name == "log":
                spec[name] = self.writable_path(vnode, child)
            elif name == "limits":
                spec[name] = self.limits(vnode, child)
            elif name in ("perfetto_producer_socket", "perfetto_consumer_socket"):
                spec[name] = self.writable_path(vnode, child)
            elif name in ("allow_other_users", "relay_insecure", "perfetto_sockets"):
                spec[name] = self.boolean(vnode, child)
            else:
                spec[name] = self.seconds(vnode, child)
        producer, consumer = spec.get("producer_endpoint"), spec.get("consumer_endpoint")
        if producer is not None and producer == consumer:
            self.fail(
                keys["consumer_endpoint"][1],
                join_key(key, "consumer_endpoint"),
                "the same endpoint as producer_endpoint; the two ports need their own sockets",
            )
        self.relay_port(node, key, keys, spec)
        return ServiceSpec(**spec)

    def relay_port(
        self, node: Node, key: str, keys: Mapping[str, tuple[Node, Node]], spec: Mapping[str, Any]
    ) -> None:
        """The relay port's keys need relay_endpoint, and CURVE keys or relay_insecure."""
        if "relay_endpoint" not in keys:
            given = next((k for k in RELAY_PORT_KEYS if k in keys), None)
            if given is not None:
                self.fail(keys[given][0], join_key(key, given), "needs relay_endpoint")
            return
        self.link_security(node, key, keys, spec, ("relay_key", "relay_clients"), "relay_insecure")

    def link_security(
        self,
        node: Node,
        key: str,
        keys: Mapping[str, tuple[Node, Node]],
        spec: Mapping[str, Any],
        curve: tuple[str, str],
        insecure: str,
    ) -> None:
        """A relay link is CURVE (both `curve` keys) or plain TCP (`insecure`: true),
        never both and never neither: plain TCP only when the file says so."""
        given = [k for k in curve if k in keys]
        if spec.get(insecure):
            if given:
                self.fail(
                    keys[given[0]][0],
                    join_key(key, given[0]),
                    f"cannot be combined with {insecure}: true (plain TCP uses no keys)",
                )
            return
        missing = [k for k in curve if k not in keys]
        if missing:
            self.fail(
                node,
                key,
                f"missing {' and '.join(missing)}: the relay link needs CURVE keys "
                f"({curve[0]} and {curve[1]}), or {insecure}: true on a trusted network",
            )

    def tcp_endpoint(self, node: Node, key: str, *, connect: bool) -> str:
        value = self.string(node, key, "a tcp://HOST:PORT endpoint")
        try:
            host, _port = split_tcp(value)
        except ValueError as e:
            self.fail(node, key, str(e))
        if connect and host in WILDCARD_HOSTS:
            self.fail(node, key, f"{host} is not an address to connect to: give the service's host")
        return value

    # -- relays ------------------------------------------------------------------------------

    def relays(self, node: Node, key: str, service: ServiceSpec | None) -> tuple[RelaySpec, ...]:
        items = self.sequence(node, key, "a list of relays")
        if not items:
            return ()
        if service is None or service.relay_endpoint is None:
            self.fail(
                node,
                key,
                "relays need service.relay_endpoint (the port where the service accepts them)",
            )
        return tuple(self.relay(item, f"{key}[{i}]", service) for i, item in enumerate(items))

    def relay(self, node: Node, key: str, service: ServiceSpec) -> RelaySpec:
        keys = self.mapping(node, key, RELAY_KEYS, "a relay (a mapping)")
        if "name" not in keys:
            self.fail(node, key, "missing required key 'name' (its machine's name)")
        spec: dict[str, Any] = {"name": self.machine_name(keys["name"][1], join_key(key, "name"))}
        readers: dict[str, Callable[[Node, str], Any]] = {
            "service": lambda n, k: self.tcp_endpoint(n, k, connect=True),
            "key": self.path,  # checked where it runs (check_part)
            "service_key": self.path,
            "insecure": self.boolean,
            "send_queue_mb": lambda n, k: self.integer(n, k, "a positive integer (MiB)", 1),
            "clock_sync_interval_s": self.seconds,
            "link_timeout_s": self.seconds,
            "restart": self.restart,
            "runtime_dir": self.runtime_dir,
            "log": self.writable_path,
        }
        for name, (_knode, vnode) in keys.items():
            if name != "name":
                spec[name] = readers[name](vnode, join_key(key, name))
        spec.setdefault("service", service.relay_service_endpoint())
        self.link_security(node, key, keys, spec, ("key", "service_key"), "insecure")
        if spec.get("insecure", False) != service.relay_insecure:
            where = keys["insecure"][1] if "insecure" in keys else node
            plain = "plain TCP (relay_insecure)" if service.relay_insecure else "CURVE"
            self.fail(where, join_key(key, "insecure"), f"the service's relay port uses {plain}")
        return RelaySpec(**spec)

    def machine_name(self, node: Node, key: str) -> str:
        value = self.string(node, key, "a machine name")
        if not NAME_RE.fullmatch(value):
            self.fail(node, key, f"invalid machine name {value!r}: use 1 to 64 letters, "
                      "digits, '_', '.' or '-'")  # fmt: skip
        if value == HOST_MACHINE:
            self.fail(node, key, f"{value!r} names the service's own machine in "
                      "machine_name_filter; choose another name")  # fmt: skip
        assert self.machines is not None, "relays are read in a topology file only"
        if value in self.machines:
            self.fail(node, key, f"duplicate relay {value!r} (also at line {self.machines[value]})")
        self.machines[value] = line_of(node)
        return value

    def machine_ref(self, node: Node, key: str) -> str:
        """A producer group's `machine`: a relay of this file."""
        value = self.string(node, key, "a relay's name")
        if self.machines is None:
            self.fail(node, key, "a group attached at runtime runs on its supervisor's machine")
        if value not in self.machines:
            known = choices_text(list(self.machines)) if self.machines else "none: add relays"
            self.fail(node, key, f"no relay named {value!r} (relays: {known})")
        return value

    def boolean(self, node: Node, key: str) -> bool:
        value = self.value(node, key)
        if not isinstance(value, bool):
            self.expected(node, key, "true or false")
        return value

    def limits(self, node: Node, key: str) -> tuple[tuple[str, int], ...]:
        keys = self.mapping(node, key, LIMIT_KEYS)
        return tuple(
            (name, self.integer(vnode, join_key(key, name), "a positive integer", 1))
            for name, (_knode, vnode) in keys.items()
        )

    def endpoint(self, node: Node, key: str) -> str:
        value = self.string(node, key, "an ipc:// endpoint")
        if not value.startswith("ipc://"):
            self.fail(
                node,
                key,
                f"expected an ipc:// endpoint, got {value!r} (the service takes peer "
                "credentials from the socket and hands producers their SMB over a UNIX "
                "socket beside it)",
            )
        rest = value[len("ipc://") :]
        if not rest.strip():
            self.fail(node, key, "expected a socket path after ipc://")
        if rest.startswith("@"):  # Linux abstract socket: no file, nothing to resolve
            return value
        path = self.resolve(node, key, rest)
        size = len(str(path).encode())
        if size > MAX_IPC_PATH:
            self.fail(
                node, key, f"socket path too long ({size} bytes, at most {MAX_IPC_PATH}): {path}"
            )
        return f"ipc://{path}"

    def env(self, node: Node, key: str) -> tuple[tuple[str, str], ...]:
        keys = self.mapping(node, key, None, "a mapping of environment variables", raw_keys=True)
        env: list[tuple[str, str]] = []
        for name, (knode, vnode) in keys.items():
            child = join_key(key, name)
            if not ENV_NAME_RE.fullmatch(name):
                self.fail(knode, child, "invalid variable name: use letters, digits and '_'")
            if name.startswith(RESERVED_ENV_PREFIX):
                self.fail(knode, child, f"reserved: {RESERVED_ENV_PREFIX}* variables are ours")
            if not isinstance(vnode, ScalarNode) or self.value(vnode, child) is None:
                self.expected(vnode, child, "a string")
            value = self.value(vnode, child)
            env.append((name, value if isinstance(value, str) else vnode.value))
        return tuple(env)

    def pythonpath(self, node: Node, key: str) -> tuple[Path, ...]:
        items = [(node, key)]
        if isinstance(node, SequenceNode):
            items = [(item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        paths = []
        for item, child in items:
            path = self.path(item, child)
            mode = self.mode(item, child, path)
            if mode is None or not stat.S_ISDIR(mode):
                self.fail(item, child, f"no such directory: {path}")
            paths.append(path)
        return tuple(paths)

    # -- producers ---------------------------------------------------------------------------

    def producer(self, node: Node, key: str) -> ProducerGroup:
        keys = self.mapping(node, key, PRODUCER_KEYS, "a producer group (a mapping)")
        spec: dict[str, Any] = {"name": self.entry_name(node, key, keys)}
        spec["kind"] = kind = self.start_kind(node, key, keys, PRODUCER_KINDS, " (how to start it)")
        for name, (knode, vnode) in keys.items():
            if name != "name":
                spec.update(self.producer_option(name, knode, vnode, join_key(key, name), kind))
        if "smb_size_kb" in keys:
            page = spec.get("page_size_kb") or DEFAULT_PAGE_SIZE_KB
            self.smb_fits(keys["smb_size_kb"][1], join_key(key, "smb_size_kb"), page)
        if PROBES in spec.get("data_sources", ()):
            self.probes_alone(keys, key, spec)
        return ProducerGroup(**spec)

    def probes_alone(
        self, keys: Mapping[str, tuple[Node, Node]], key: str, spec: Mapping[str, Any]
    ) -> None:
        """`builtin: [probes]` runs actors.probes, one process of it: other names
        would need actors.producer, and two probes processes would record every
        system event twice."""
        knode, vnode = keys["builtin"]
        if len(spec["data_sources"]) > 1:
            self.fail(
                vnode,
                join_key(key, "builtin"),
                f"{PROBES!r} runs the system probes process (actors.probes), which hosts "
                "no other data source: give it a group of its own",
            )
        if spec.get("count", 1) != 1:
            self.fail(
                keys["count"][1],
                join_key(key, "count"),
                f"a {PROBES!r} group runs one process (two would record the system twice)",
            )

    def entry_name(self, node: Node, key: str, keys: Mapping[str, tuple[Node, Node]]) -> str:
        """The required `name` of a producer group or a consumer."""
        if "name" not in keys:
            self.fail(node, key, "missing required key 'name'")
        return self.name(keys["name"][1], join_key(key, "name"))

    def start_kind(
        self,
        node: Node,
        key: str,
        keys: Mapping[str, tuple[Node, Node]],
        kinds: Sequence[str],
        hint: str = "",
    ) -> str:
        """The one key of `kinds` an entry has (how it starts, or where its config is)."""
        given = [k for k in keys if k in kinds]
        if not given:
            self.fail(node, key, f"expected one of {choices_text(kinds)}{hint}")
        if len(given) > 1:
            self.fail(
                keys[given[1]][0],
                join_key(key, given[1]),
                f"cannot be combined with {given[0]}; give exactly one of {choices_text(kinds)}",
            )
        return given[0]

    def producer_option(
        self, option: str, knode: Node, vnode: Node, key: str, kind: str
    ) -> dict[str, Any]:
        """The ProducerGroup field that one key of a group (not `name`) sets."""
        if option in PRODUCER_ONLY_KEYS and kind == "command":
            self.fail(
                knode,
                key,
                "only for builtin and module producers (options of actors.producer); "
                "a command chooses its own",
            )
        readers: dict[str, Callable[[Node, str], Any]] = {
            "builtin": self.data_sources,
            "module": self.modules,
            "command": self.command,
            "count": self.count,
            "page_size_kb": self.page_size,
            "smb_size_kb": lambda n, k: self.integer(n, k, "a positive integer (KiB)", 1),
            "policy": lambda n, k: self.choice(n, k, POLICIES),
            "env": self.env,
            "restart": self.restart,
            "pythonpath": self.pythonpath,
            "log": self.writable_path,
            "machine": self.machine_ref,
        }
        field = {"builtin": "data_sources", "module": "modules"}.get(option, option)
        return {field: readers[option](vnode, key)}

    def count(self, node: Node, key: str) -> int:
        count = self.integer(node, key, "a positive integer", 1)
        if count > MAX_COUNT:
            self.fail(node, key, f"at most {MAX_COUNT} instances, got {count}")
        return count

    def page_size(self, node: Node, key: str) -> int:
        value = self.value(node, key)
        if type(value) is not int or value not in PAGE_SIZES_KB:
            self.expected(node, key, choices_text([str(p) for p in PAGE_SIZES_KB]))
        return value

    def smb_fits(self, node: Node, key: str, page: int) -> None:
        """The SMB size rules of shm/abi.py, said here instead of silently defaulted."""
        smb = self.value(node, key)
        if smb > MAX_SMB_SIZE_KB:
            self.fail(node, key, f"at most {MAX_SMB_SIZE_KB} (32 MiB), got {smb}")
        if smb % page:
            self.fail(node, key, f"expected a multiple of the page size ({page}), got {smb}")

    def data_sources(self, node: Node, key: str) -> tuple[str, ...]:
        if isinstance(node, ScalarNode) and self.value(node, key) is None:
            return ()
        items = self.sequence(node, key, "a list of data source names")
        names: list[str] = []
        for i, item in enumerate(items):
            name = self.string(item, f"{key}[{i}]", "a data source name")
            if not DATA_SOURCE_RE.fullmatch(name):
                self.fail(item, f"{key}[{i}]", f"invalid data source name {name!r}")
            if name in names:
                self.fail(item, f"{key}[{i}]", f"{name!r} is listed twice")
            names.append(name)
        return tuple(names)

    def modules(self, node: Node, key: str) -> tuple[str, ...]:
        items = [(node, key)]
        if isinstance(node, SequenceNode):
            items = [(item, f"{key}[{i}]") for i, item in enumerate(node.value)]
            if not items:
                self.fail(node, key, "expected at least one module")
        modules = []
        for item, child in items:
            module = self.string(item, child, "a module name (pkg.mod)")
            if not MODULE_RE.fullmatch(module):
                self.fail(item, child, f"expected a module name like pkg.mod, got {module!r}")
            modules.append(module)
        return tuple(modules)

    def command(self, node: Node, key: str) -> tuple[str, ...]:
        if isinstance(node, SequenceNode):
            argv = [self.string(item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        else:
            line = self.string(node, key, "a command line or a list of arguments")
            try:
                argv = shlex.split(line)
            except ValueError as e:
                self.fail(node, key, f"cannot split the command line: {e}")
        if not argv:
            self.fail(node, key, "expected a command line, got an empty one")
        return tuple(argv)

    def restart(self, node: Node, key: str) -> RestartPolicy:
        if not isinstance(node, MappingNode):
            if not isinstance(node, ScalarNode):
                self.expected(node, key, f"{choices_text(RESTART_POLICIES)}, or a mapping")
            policy = self.choice(node, key, RESTART_POLICIES)
            return RestartPolicy(policy, 0 if policy == "never" else DEFAULT_MAX_RESTARTS)
        keys = self.mapping(node, key, RESTART_KEYS)
        if "policy" not in keys:
            self.fail(node, key, "missing required key 'policy'")
        policy = self.choice(keys["policy"][1], join_key(key, "policy"), RESTART_POLICIES)
        cap = 0 if policy == "never" else DEFAULT_MAX_RESTARTS
        if "max_restarts" in keys:
            child = join_key(key, "max_restarts")
            cap = self.integer(keys["max_restarts"][1], child, "a non-negative integer", 0)
            if policy == "never" and cap:
                self.fail(keys["max_restarts"][1], child, "needs policy on-failure or always")
        return RestartPolicy(policy, cap)

    # -- consumers ---------------------------------------------------------------------------

    def consumer(self, node: Node, key: str) -> ConsumerSpec:
        keys = self.mapping(node, key, CONSUMER_KEYS, "a consumer (a mapping)")
        spec: dict[str, Any] = {"name": self.entry_name(node, key, keys)}
        kind = self.start_kind(node, key, keys, CONSUMER_KINDS)
        spec["kind"] = "script" if kind == "script" else "config"
        for name, (_knode, vnode) in keys.items():
            child = join_key(key, name)
            if name == "script":
                spec[name] = self.existing_file(vnode, child)
            elif name == "config":
                spec[name] = self.existing_file(vnode, child)
                spec["config_is_text"] = self.config_file(vnode, child, spec[name])
            elif name == "config_text":
                spec[name] = self.config_text(vnode, child)
            elif name == "output":
                spec[name] = self.output(vnode, child)
            elif name == "start":
                spec[name] = self.choice(vnode, child, CONSUMER_STARTS)
            elif name == "env":
                spec[name] = self.env(vnode, child)
            elif name == "pythonpath":
                spec[name] = self.pythonpath(vnode, child)
            elif name == "log":
                spec[name] = self.writable_path(vnode, child)
        if spec["kind"] == "config" and "output" not in keys:
            self.fail(node, key, "missing required key 'output' (the trace file to write)")
        return ConsumerSpec(**spec)

    def output(self, node: Node, key: str) -> Path:
        path = self.writable_path(node, key)
        problem = not_regular(written_path(path))  # a trace replaces only a regular file
        if problem:
            self.fail(node, key, f"{path}: {problem}")
        blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocked is not None:  # the supervisor makes the missing directories
            self.fail(node, key, f"{path}: {blocked} is not a directory")
        if path in self.outputs:
            other, line = self.outputs[path]
            self.fail(node, key, f"{other} at line {line} writes the same file: {path}")
        self.outputs[path] = (key, line_of(node))
        return path

    def config_file(self, node: Node, key: str, path: Path) -> bool:
        """Whether the config file is a textproto; it must parse either way."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as e:
            self.fail(node, key, f"cannot read {path}: {e.strerror or e}")
        if len(data) > MAX_CONFIG_BYTES:  # it could never reach the service
            self.fail(node, key, f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, not a config")
        is_text = path.suffix in TEXT_SUFFIXES
        if is_text:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                self.fail(node, key, f"{path}: not UTF-8 text (a binary config needs another name)")
            error = textproto_error(text)
            if error is not None:
                line, column, message = error
                at = f"{path}:{line}:{column}" if line is not None else str(path)
                self.fail(node, key, f"{at}: {one_line(message)}")
            return True
        if looks_like_textproto(data):
            suffixes = choices_text(TEXT_SUFFIXES)
            self.fail(node, key, f"{path}: a textproto needs a {suffixes} name")
        try:
            pb.TraceConfig.FromString(data)
        except DecodeError as e:
            self.fail(node, key, f"{path}: not a binary TraceConfig ({e})")
        return False

    def config_text(self, node: Node, key: str) -> str:
        value = self.value(node, key)
        if not isinstance(value, str):
            self.expected(node, key, "a TraceConfig textproto")
        error = textproto_error(value)
        if error is not None:
            line, column, message = error
            where: Node | int = node
            block = isinstance(node, ScalarNode) and node.style == "|"
            if block and line is not None and node.start_mark is not None:
                # A literal block: its text starts on the line after the '|'.
                where = node.start_mark.line + 1 + line
            at = f" (line {line}:{column})" if line is not None else ""
            self.fail(where, key, f"invalid TraceConfig textproto{at}: {one_line(message)}")
        return value
