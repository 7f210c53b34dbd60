"""topology.yaml: one file that describes a tracing topology, parsed into frozen dataclasses.

`python -m launch.supervisor topology.yaml` runs what the file describes: the
tracing service, groups of producer processes, and consumers. This module only
reads and checks the file (it starts nothing, opens no socket and reads no
clock); the supervisor acts on the `Topology` it returns.

Example (every key shown; only `name` and one start kind per producer, and one
config kind per consumer, are required)::

    runtime_dir: ./run              # sockets live here; default: a fresh short dir under
                                    # /tmp that the supervisor creates (None in the model)
    stop_when: consumers_done       # or never (default consumers_done)

    service:
      producer_endpoint: ipc://run/producer.sock   # default: ipc://<runtime_dir>/producer.sock
      consumer_endpoint: ipc://run/consumer.sock   # default: ipc://<runtime_dir>/consumer.sock
      log: ./logs/service.log       # also write the service's output lines here
      ready_timeout_s: 10           # how long its ports may take to answer
      stop_timeout_s: 5             # SIGTERM to SIGKILL at shutdown (both default:
                                    # the supervisor's own)
      limits:                       # the service's limits (Perfetto's by default)
        max_sessions: 15
        max_sessions_per_uid: 5
        max_buffers_per_session: 128

    producers:
      - name: sensors               # what the instances register as; see "Names" below
        builtin: [tracebus.synthetic, track_event, sensors.extra]
        count: 2                    # instances sensors#1 and sensors#2 (default 1)
        smb_size_kb: 256            # SMB hints (default: the service's, 256 and 4)
        page_size_kb: 4
        policy: drop                # drop | stall | stall_then_drop (default drop)
        env: {SENSOR_RATE: 100}     # added to the instances' environment
        restart: on-failure         # never | on-failure | always (default never)
        log: ./logs/sensors.log
      - name: app
        module: my_pkg.my_sources   # or a list of modules
        pythonpath: [./lib]         # prepended to PYTHONPATH
        restart: {policy: always, max_restarts: 10}
      - name: legacy
        command: "python legacy_app.py --fast"   # or a list: [python, legacy_app.py, --fast]

    consumers:
      - name: recorder
        script: ./record.py         # a consumer actor script defining main(tracing)
        output: ./out/recorder.pftrace   # optional for scripts
      - name: cli
        config: ./configs/synthetic.pbtxt
        output: ./out/cli.pftrace
      - name: inline
        config_text: |
          buffers { size_kb: 1024 }
          data_sources { config { name: "track_event" } }
          duration_ms: 2000
        output: ./out/inline.pftrace

Top level: `runtime_dir`, `stop_when`, `service`, `producers`, `consumers`, all
optional. `producers` and `consumers` are lists and either may be empty (or
absent): producers can be attached at runtime through the supervisor's control
channel. With `stop_when: consumers_done` (the default) the topology ends when
its last consumer finishes, so it needs at least one consumer; with `never` it
runs until Ctrl-C, SIGTERM or `python -m launch.ctl stop`.

Paths: every relative path (runtime_dir, log, pythonpath, script, config,
output, and the path of a relative `ipc://` endpoint) is resolved against the
directory of the topology file, not the current directory; `~` is expanded.
In the model they are absolute. Scripts and config files must exist; pythonpath
entries must be existing directories; an output or log path need not exist yet,
nor need its directory, but it may not be a directory.

Names: producer group and consumer names share one namespace, must be unique,
match [A-Za-z0-9_.-]{1,64} (so never contain '#') and may not be `service` or
`supervisor`. Every instance of a group registers with the service under the
group's name, so a TraceConfig's producer_name_filter selects a whole group;
the supervisor tells the instances apart as NAME#1..NAME#count.

service: endpoints must be `ipc://` (the service takes peer pids and uids from
the socket, and producers map their SMB through /proc); a relative socket path
is resolved like any other path, an abstract one (`ipc://@name`) is kept, and a
path must fit in sun_path (at most 107 bytes). The two endpoints must differ.
The supervisor's timeouts for the service (ready_timeout_s, stop_timeout_s) are
positive numbers; `limits` sets the service's own limits (positive integers,
passed as flags of actors.service; unset ones keep Perfetto's 15 sessions, 5
per uid and 128 buffers per session).

producers: exactly one start kind per group:
- `builtin: [DSNAME, ...]` runs `python -m actors.producer`, which always hosts
  `tracebus.synthetic` and `track_event`; every other name listed is the
  synthetic data source under that name (`--data-source`). `builtin: []` or
  `builtin:` with no value: just the two built-in data sources.
- `module: pkg.mod` (or a list) runs `python -m actors.producer --module pkg.mod`,
  which hosts the DataSource subclasses the module defines (see actors/producer.py),
  besides the built-in ones.
- `command: "..."` (split like a shell would, no shell involved) or a list of
  arguments runs any program; a first argument `python` or `python3` is the
  supervisor's own interpreter. It finds the service through
  TRACEBUS_PRODUCER_SOCK and should register as TRACEBUS_PRODUCER_NAME (both in
  the environment ProducerGroup.environment() builds). SMB hints and policy are
  options of actors.producer, so a command group may not set smb_size_kb,
  page_size_kb or policy.
count: a positive integer, at most 256 (booleans are not integers).
SMB hints are checked here with the service's rules (shm/abi.py) instead of
being silently replaced by the defaults as the service would: page_size_kb is
4, 8, 16 or 32; smb_size_kb is a positive multiple of the page size (4 when
page_size_kb is not given) and at most 32768 (32 MiB).
env: a mapping of variable names ([A-Za-z_][A-Za-z0-9_]*) to scalars, kept as
written (`RATE: 010` is "010", `ON: yes` is "yes"); names starting with
TRACEBUS_ are reserved for the supervisor. pythonpath: a directory or a list.
restart: `never`, `on-failure` (restart after a non-zero exit or a signal) or
`always` (also after exit 0), or a mapping `{policy: ..., max_restarts: N}`;
the cap N (a non-negative integer) defaults to 5 and is 0 for never.

consumers: exactly one of
- `script: path`: a consumer actor script defining `main(tracing)`; `output`
  is optional and is the default path for the script's trace.
- `config: path`: a TraceConfig file, with `output` (required): the trace file
  to write, as `python -m actors.consumer -c CONFIG [--txt] -o OUTPUT` does. A
  .pbtxt, .txt, .textproto or .cfg file is a textproto, any other a binary
  TraceConfig (actors.consumer's rule); either must parse.
- `config_text: textproto`: the TraceConfig inline, with `output` (required);
  it must parse (a block scalar `|` gets errors at their line in this file).
Consumers also take `env`, `pythonpath` and `log` like producers. Two
consumers may not write the same output.

Errors: a bad file raises TopologyError, whose str() is one line naming the
file, the line and the key, e.g.
`topology.yaml:12: producers[1].count: expected a positive integer, got 'three'`
(list indexes count from 0). Unknown keys are errors, with the closest valid
key suggested; so are duplicate keys. YAML anchors, aliases and merge keys
work; define an anchor where a key is allowed anyway, e.g. on the first producer
(`- &defaults {...}`, then `- {<<: *defaults, name: other}`), since unknown
top-level keys are errors. YAML 1.1 reads unquoted yes/no/on/off as booleans
and 010 as a number: quote names and values that look like them (messages say
so).

Public API: load_topology(path), parse_topology(text, path),
parse_producer_group(data, base_dir) (for runtime attach), the dataclasses
Topology, ServiceSpec, ProducerGroup, RestartPolicy, ConsumerSpec, and
TopologyError.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml
from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from actors.core.configs import TEXT_SUFFIXES, looks_like_textproto, textproto_error

StopWhen = Literal["consumers_done", "never"]
ProducerKind = Literal["builtin", "module", "command"]
ConsumerKind = Literal["script", "config"]
RestartKind = Literal["never", "on-failure", "always"]

STOP_WHEN = ("consumers_done", "never")
POLICIES = ("drop", "stall", "stall_then_drop")  # actors.producer.POLICIES
RESTART_POLICIES = ("never", "on-failure", "always")
DEFAULT_MAX_RESTARTS = 5
MAX_COUNT = 256
PAGE_SIZES_KB = (4, 8, 16, 32)  # shm.abi.PAGE_SIZES
DEFAULT_PAGE_SIZE_KB = 4  # shm.abi.DEFAULT_PAGE_SIZE
MAX_SMB_SIZE_KB = 32 * 1024  # shm.abi.MAX_SMB_SIZE
BUILTIN_DATA_SOURCES = ("tracebus.synthetic", "track_event")  # actors.data_sources
RESERVED_NAMES = ("service", "supervisor")
RESERVED_ENV_PREFIX = "TRACEBUS_"
MAX_IPC_PATH = 107  # bytes of sun_path, less its NUL
SOCKET_NAME_ROOM = 24  # bytes runtime_dir keeps free for "/<socket name>"
PRODUCER_SOCK_ENV = "TRACEBUS_PRODUCER_SOCK"  # actors.endpoints.PRODUCER_ENV
CONSUMER_SOCK_ENV = "TRACEBUS_CONSUMER_SOCK"  # actors.endpoints.CONSUMER_ENV
PRODUCER_NAME_ENV = "TRACEBUS_PRODUCER_NAME"

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
DATA_SOURCE_RE = re.compile(r"\S+")
MERGE_TAG = "tag:yaml.org,2002:merge"
# What str.splitlines() splits on, shown escaped so that a message stays one line.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}

TOP_KEYS = ("runtime_dir", "stop_when", "service", "producers", "consumers")
SERVICE_KEYS = (
    "producer_endpoint",
    "consumer_endpoint",
    "log",
    "ready_timeout_s",
    "stop_timeout_s",
    "limits",
)
LIMIT_KEYS = ("max_sessions", "max_sessions_per_uid", "max_buffers_per_session")
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
)
PRODUCER_ONLY_KEYS = ("smb_size_kb", "page_size_kb", "policy")  # not for command groups
RESTART_KEYS = ("policy", "max_restarts")
CONSUMER_KINDS = ("script", "config", "config_text")
CONSUMER_KEYS = ("name", *CONSUMER_KINDS, "output", "env", "pythonpath", "log")


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


# -- the model ---------------------------------------------------------------------------------


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

    def argv(self, python: str, producer_endpoint: str, consumer_endpoint: str) -> list[str]:
        """`python -m actors.service` with both endpoints and the limits set."""
        argv = [python, "-m", "actors.service"]
        argv += ["--producer-endpoint", producer_endpoint, "--consumer-endpoint", consumer_endpoint]
        for name, value in self.limits:
            argv += ["--" + name.replace("_", "-"), str(value)]
        return argv


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
    policy: str = "drop"
    env: tuple[tuple[str, str], ...] = ()
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    pythonpath: tuple[Path, ...] = ()
    log: Path | None = None

    def instance_names(self) -> list[str]:
        """["NAME#1", ..., "NAME#count"]: how the supervisor names the instances."""
        return [f"{self.name}#{i}" for i in range(1, self.count + 1)]

    def producer_argv(self, python: str, endpoint: str) -> list[str]:
        """`python -m actors.producer ...` for a builtin or module group."""
        if self.kind == "command":
            raise ValueError(f"producer group {self.name!r} runs a command, not actors.producer")
        argv = [python, "-m", "actors.producer", "--name", self.name]
        if self.smb_size_kb is not None:
            argv += ["--smb-size-kb", str(self.smb_size_kb)]
        if self.page_size_kb is not None:
            argv += ["--page-size-kb", str(self.page_size_kb)]
        argv += ["--policy", self.policy]
        for name in self.data_sources:
            if name not in BUILTIN_DATA_SOURCES:
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

    def environment(self, base: Mapping[str, str], endpoint: str) -> dict[str, str]:
        """An instance's environment: `base` (usually os.environ), then `env`, with
        `pythonpath` prepended to PYTHONPATH, TRACEBUS_PRODUCER_SOCK and
        TRACEBUS_PRODUCER_NAME."""
        env = _environment(base, self.env, self.pythonpath)
        env[PRODUCER_SOCK_ENV] = endpoint
        env[PRODUCER_NAME_ENV] = self.name
        return env


@dataclass(frozen=True)
class ConsumerSpec:
    """A consumer process. kind script: `script` is set and `output` is optional; kind
    config: exactly one of `config` (a file; `config_is_text` says whether it is a
    textproto) and `config_text` (an inline textproto) is set, and `output` is."""

    name: str
    kind: ConsumerKind
    script: Path | None = None
    config: Path | None = None
    config_text: str | None = None
    config_is_text: bool = True
    output: Path | None = None
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


# -- entry points ------------------------------------------------------------------------------


def load_topology(path: str | Path) -> Topology:
    """Read and check a topology file; TopologyError says what is wrong with it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TopologyError(f"cannot read: {e.strerror or e}", file=str(path)) from None
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
        loader = yaml.SafeLoader(text)  # the reader checks the characters here
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        raise _syntax_error(e, str(path)) from None
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        problem = f"invalid YAML: {e.reason} (character #x{e.character:04x})"
        raise TopologyError(problem, file=str(path), line=line) from None
    except yaml.YAMLError as e:  # pragma: no cover - every PyYAML parse error has a mark
        raise TopologyError(f"invalid YAML: {_one_line(str(e))}", file=str(path)) from None
    source = path.expanduser().resolve()
    parser = _Parser(loader, str(path), source.parent)
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
        node = yaml.SafeDumper(None).represent_data(dict(data))
    except yaml.representer.RepresenterError as e:
        raise TopologyError(f"cannot represent {e.args[1]!r}") from None
    parser = _Parser(yaml.SafeLoader(""), None, Path(base_dir).expanduser().resolve())
    for name in taken:
        parser.names[name] = ("an existing actor", None)
    return parser.producer(node, "")


# -- the checker -------------------------------------------------------------------------------


def _syntax_error(e: yaml.MarkedYAMLError, file: str) -> TopologyError:
    mark = e.problem_mark or e.context_mark
    problem = f"invalid YAML at column {mark.column + 1}: " if mark else "invalid YAML: "
    if e.context and e.problem and not e.context.startswith("while"):
        problem += _one_line(f"{e.context}, {e.problem}")  # "expected a single document..."
    else:
        problem += _one_line(e.problem or e.context or "")
        if e.context and e.problem:  # "while parsing a flow sequence", where it started
            where = f" at line {e.context_mark.line + 1}" if e.context_mark else ""
            problem += f" ({_one_line(e.context)}{where})"
    return TopologyError(problem, file=file, line=mark.line + 1 if mark else None)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _join(key: str, child: str) -> str:
    return f"{key}.{child}" if key else child


def _line(node: Node) -> int | None:
    return node.start_mark.line + 1 if node.start_mark is not None else None


def _choices(values: Sequence[str]) -> str:
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


class _Parser:
    def __init__(self, loader: yaml.SafeLoader, file: str | None, base_dir: Path) -> None:
        self.loader = loader
        self.file = file
        self.base_dir = base_dir
        self.names: dict[str, tuple[str, int | None]] = {}  # name -> (key, line)
        self.outputs: dict[Path, tuple[str, int | None]] = {}

    # -- reporting and scalars ---------------------------------------------------------------

    def fail(self, where: Node | int | None, key: str, problem: str) -> NoReturn:
        """Raise the error; `where` is the node at fault, or a line number."""
        line = _line(where) if isinstance(where, Node) else where
        raise TopologyError(problem, file=self.file, line=line, key=key)

    def value(self, node: Node, key: str) -> Any:
        """A scalar's value; collections come back as list / dict markers for messages."""
        if isinstance(node, MappingNode):
            return {}
        if isinstance(node, SequenceNode):
            return []
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as e:  # an unknown tag
            self.fail(node, key, f"invalid YAML value: {_one_line(e.problem or str(e))}")
        except Exception as e:  # `!!int three`, `2001-13-45`, `!!timestamp x`: anything
            self.fail(node, key, f"invalid YAML value {node.value!r}: {_one_line(str(e))}")

    def describe(self, node: Node, key: str) -> str:
        """How an unexpected value reads in a message."""
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        value = self.value(node, key)
        if value is None:
            return "nothing (null)"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        text = value if isinstance(value, str) else node.value
        return repr(text if len(text) <= 40 else text[:37] + "...")

    def expected(self, node: Node, key: str, what: str, hint: str = "") -> NoReturn:
        self.fail(node, key, f"expected {what}, got {self.describe(node, key)}{hint}")

    def string(self, node: Node, key: str, what: str = "a string") -> str:
        value = self.value(node, key)
        if isinstance(value, str) and value.strip():
            return value
        hint = ""
        if isinstance(node, ScalarNode) and node.style is None and value is not None:
            hint = f" (quote it to mean the string '{node.value}')"
        self.expected(node, key, what, hint)

    def choice(self, node: Node, key: str, choices: Sequence[str]) -> str:
        value = self.value(node, key)
        if isinstance(value, str) and value in choices:
            return value
        problem = f"expected {_choices(choices)}, got {self.describe(node, key)}"
        if isinstance(value, str):
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
            if close:
                problem += f"; did you mean '{close[0]}'?"
        self.fail(node, key, problem)

    def integer(self, node: Node, key: str, what: str, minimum: int) -> int:
        value = self.value(node, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.expected(node, key, what)
        return value

    def seconds(self, node: Node, key: str) -> float:
        value = self.value(node, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            self.expected(node, key, "a positive number of seconds")
        if value == float("inf"):
            self.expected(node, key, "a finite number of seconds")
        return float(value)

    def sequence(self, node: Node, key: str, what: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self.expected(node, key, what)
        return list(node.value)

    def mapping(
        self,
        node: Node,
        key: str,
        allowed: Sequence[str] | None,
        what: str = "a mapping",
        *,
        raw_keys: bool = False,
    ) -> dict[str, tuple[Node, Node]]:
        """The keys of a mapping node: key -> (key node, value node). Keys not `allowed`
        (None: any string) and duplicate keys are errors. Merge keys (<<) are applied,
        and the mapping's own keys override merged ones, as YAML says. With `raw_keys`,
        scalar keys are taken as written (an environment variable `ON` is not true)."""
        if not isinstance(node, MappingNode):
            self.expected(node, key, what)
        own = sum(1 for k, _v in node.value if k.tag != MERGE_TAG)
        try:
            self.loader.flatten_mapping(node)  # merged pairs first, then the node's own
        except yaml.constructor.ConstructorError as e:
            self.fail(node, key, f"invalid merge (<<): {_one_line(e.problem or str(e))}")
        merged = len(node.value) - own
        found: dict[str, tuple[Node, Node]] = {}
        own_keys: dict[str, Node] = {}
        for i, (knode, vnode) in enumerate(node.value):
            raw = raw_keys and isinstance(knode, ScalarNode)
            name = knode.value if raw else self.value(knode, key)
            if not isinstance(name, str):
                self.fail(knode, key, f"keys are strings, got {self.describe(knode, key)}")
            child = _join(key, name)
            if allowed is not None and name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
                if close:
                    self.fail(knode, child, f"unknown key; did you mean '{close[0]}'?")
                self.fail(knode, child, f"unknown key; expected one of: {', '.join(allowed)}")
            if i >= merged:
                if name in own_keys:
                    first = _line(own_keys[name])
                    self.fail(knode, child, f"duplicate key (first at line {first})")
                own_keys[name] = knode
            found[name] = (knode, vnode)
        return found

    def path(self, node: Node, key: str) -> Path:
        value = self.string(node, key, "a path")
        return self.resolve(node, key, value)

    def resolve(self, node: Node, key: str, value: str) -> Path:
        """An absolute path: `~` expanded, relative to the topology file's directory."""
        try:
            return (self.base_dir / Path(value).expanduser()).resolve()
        except RuntimeError as e:  # ~user of an unknown user, or no home directory
            self.fail(node, key, f"cannot expand {value!r}: {e}")

    def existing_file(self, node: Node, key: str) -> Path:
        path = self.path(node, key)
        if not path.exists():
            self.fail(node, key, f"no such file: {path}")
        if not path.is_file():
            self.fail(node, key, f"not a file: {path}")
        return path

    def writable_path(self, node: Node, key: str) -> Path:
        path = self.path(node, key)
        if path.is_dir():
            self.fail(node, key, f"is a directory, expected a file path: {path}")
        return path

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
        self.names[value] = (key.rsplit(".", 1)[0], _line(node))
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
        if path.exists() and not path.is_dir():
            self.fail(node, key, f"not a directory: {path}")
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
            child = _join(key, name)
            if name.endswith("_endpoint"):
                spec[name] = self.endpoint(vnode, child)
            elif name == "log":
                spec[name] = self.writable_path(vnode, child)
            elif name == "limits":
                spec[name] = self.limits(vnode, child)
            else:
                spec[name] = self.seconds(vnode, child)
        producer, consumer = spec.get("producer_endpoint"), spec.get("consumer_endpoint")
        if producer is not None and producer == consumer:
            self.fail(
                keys["consumer_endpoint"][1],
                _join(key, "consumer_endpoint"),
                "the same endpoint as producer_endpoint; the two ports need their own sockets",
            )
        return ServiceSpec(**spec)

    def limits(self, node: Node, key: str) -> tuple[tuple[str, int], ...]:
        keys = self.mapping(node, key, LIMIT_KEYS)
        return tuple(
            (name, self.integer(vnode, _join(key, name), "a positive integer", 1))
            for name, (_knode, vnode) in keys.items()
        )

    def endpoint(self, node: Node, key: str) -> str:
        value = self.string(node, key, "an ipc:// endpoint")
        if not value.startswith("ipc://"):
            self.fail(
                node,
                key,
                f"expected an ipc:// endpoint, got {value!r} (the service takes peer "
                "credentials from the socket and producers map their SMB through /proc)",
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
            child = _join(key, name)
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
            if not path.is_dir():
                self.fail(item, child, f"no such directory: {path}")
            paths.append(path)
        return tuple(paths)

    # -- producers ---------------------------------------------------------------------------

    def producer(self, node: Node, key: str) -> ProducerGroup:
        keys = self.mapping(node, key, PRODUCER_KEYS, "a producer group (a mapping)")
        if "name" not in keys:
            self.fail(node, key, "missing required key 'name'")
        spec: dict[str, Any] = {"name": self.name(keys["name"][1], _join(key, "name"))}
        kinds = [k for k in keys if k in PRODUCER_KINDS]
        if not kinds:
            self.fail(node, key, f"expected one of {_choices(PRODUCER_KINDS)} (how to start it)")
        if len(kinds) > 1:
            self.fail(
                keys[kinds[1]][0],
                _join(key, kinds[1]),
                f"cannot be combined with {kinds[0]}; give exactly one of "
                f"{_choices(PRODUCER_KINDS)}",
            )
        spec["kind"] = kind = kinds[0]
        for name, (knode, vnode) in keys.items():
            child = _join(key, name)
            if name == "builtin":
                spec["data_sources"] = self.data_sources(vnode, child)
            elif name == "module":
                spec["modules"] = self.modules(vnode, child)
            elif name == "command":
                spec["command"] = self.command(vnode, child)
            elif name == "count":
                spec[name] = self.integer(vnode, child, "a positive integer", 1)
                if spec[name] > MAX_COUNT:
                    self.fail(vnode, child, f"at most {MAX_COUNT} instances, got {spec[name]}")
            elif name in PRODUCER_ONLY_KEYS and kind == "command":
                self.fail(
                    knode,
                    child,
                    "only for builtin and module producers (options of actors.producer); "
                    "a command chooses its own",
                )
            elif name == "page_size_kb":
                value = self.value(vnode, child)
                if type(value) is not int or value not in PAGE_SIZES_KB:
                    self.expected(vnode, child, _choices([str(p) for p in PAGE_SIZES_KB]))
                spec[name] = value
            elif name == "smb_size_kb":
                spec[name] = self.integer(vnode, child, "a positive integer (KiB)", 1)
            elif name == "policy":
                spec[name] = self.choice(vnode, child, POLICIES)
            elif name == "env":
                spec[name] = self.env(vnode, child)
            elif name == "restart":
                spec[name] = self.restart(vnode, child)
            elif name == "pythonpath":
                spec[name] = self.pythonpath(vnode, child)
            elif name == "log":
                spec[name] = self.writable_path(vnode, child)
        smb = spec.get("smb_size_kb")
        if smb is not None:
            page = spec.get("page_size_kb") or DEFAULT_PAGE_SIZE_KB
            vnode = keys["smb_size_kb"][1]
            child = _join(key, "smb_size_kb")
            if smb > MAX_SMB_SIZE_KB:
                self.fail(vnode, child, f"at most {MAX_SMB_SIZE_KB} (32 MiB), got {smb}")
            if smb % page:
                self.fail(vnode, child, f"expected a multiple of the page size ({page}), got {smb}")
        return ProducerGroup(**spec)

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
                self.expected(node, key, f"{_choices(RESTART_POLICIES)}, or a mapping")
            policy = self.choice(node, key, RESTART_POLICIES)
            return RestartPolicy(policy, 0 if policy == "never" else DEFAULT_MAX_RESTARTS)
        keys = self.mapping(node, key, RESTART_KEYS)
        if "policy" not in keys:
            self.fail(node, key, "missing required key 'policy'")
        policy = self.choice(keys["policy"][1], _join(key, "policy"), RESTART_POLICIES)
        cap = 0 if policy == "never" else DEFAULT_MAX_RESTARTS
        if "max_restarts" in keys:
            child = _join(key, "max_restarts")
            cap = self.integer(keys["max_restarts"][1], child, "a non-negative integer", 0)
            if policy == "never" and cap:
                self.fail(keys["max_restarts"][1], child, "needs policy on-failure or always")
        return RestartPolicy(policy, cap)

    # -- consumers ---------------------------------------------------------------------------

    def consumer(self, node: Node, key: str) -> ConsumerSpec:
        keys = self.mapping(node, key, CONSUMER_KEYS, "a consumer (a mapping)")
        if "name" not in keys:
            self.fail(node, key, "missing required key 'name'")
        spec: dict[str, Any] = {"name": self.name(keys["name"][1], _join(key, "name"))}
        kinds = [k for k in keys if k in CONSUMER_KINDS]
        if not kinds:
            self.fail(node, key, f"expected one of {_choices(CONSUMER_KINDS)}")
        if len(kinds) > 1:
            self.fail(
                keys[kinds[1]][0],
                _join(key, kinds[1]),
                f"cannot be combined with {kinds[0]}; give exactly one of "
                f"{_choices(CONSUMER_KINDS)}",
            )
        spec["kind"] = "script" if kinds[0] == "script" else "config"
        for name, (_knode, vnode) in keys.items():
            child = _join(key, name)
            if name == "script":
                spec[name] = self.existing_file(vnode, child)
            elif name == "config":
                spec[name] = self.existing_file(vnode, child)
                spec["config_is_text"] = self.config_file(vnode, child, spec[name])
            elif name == "config_text":
                spec[name] = self.config_text(vnode, child)
            elif name == "output":
                spec[name] = self.output(vnode, child)
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
        if path in self.outputs:
            other, line = self.outputs[path]
            self.fail(node, key, f"{other} at line {line} writes the same file: {path}")
        self.outputs[path] = (key, _line(node))
        return path

    def config_file(self, node: Node, key: str, path: Path) -> bool:
        """Whether the config file is a textproto; it must parse either way."""
        try:
            data = path.read_bytes()
        except OSError as e:
            self.fail(node, key, f"cannot read {path}: {e.strerror or e}")
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
                self.fail(node, key, f"{at}: {_one_line(message)}")
            return True
        if looks_like_textproto(data):
            suffixes = _choices(TEXT_SUFFIXES)
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
            if node.style == "|" and line is not None and node.start_mark is not None:
                # A literal block: its text starts on the line after the '|'.
                where = node.start_mark.line + 1 + line
            at = f" (line {line}:{column})" if line is not None else ""
            self.fail(where, key, f"invalid TraceConfig textproto{at}: {_one_line(message)}")
        return value
