"""launch/topology_parser.py: topology.yaml parsed into the frozen dataclasses of
launch/topology.py, every way a file can be wrong, each as the exact one-line message
(file, line, key, problem), and docs/topology.md kept to what the parser accepts.

Each case writes a small YAML file (and the files it refers to) under tmp_path; nothing
else is read or written but docs/topology.md, and no process is started but one: the
purity check at the end imports the modules in a fresh interpreter.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from launch import topology as t
from launch import topology_parser as tp
from launch.topology import (
    ConsumerSpec,
    ProducerGroup,
    RestartPolicy,
    ServiceSpec,
    Topology,
    TopologyError,
)
from launch.topology_parser import load_topology, parse_producer_group, parse_topology

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "topology.md"
OK_CONFIG = (
    'buffers { size_kb: 1024 }\ndata_sources { config { name: "tracebus.demo_timeline" } }\n'
)
BAD_CONFIG = "buffers {\n  size_kb: 1024\n}\nbufers { size_kb: 4 }\n"  # line 4: no such field


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A directory with what the cases refer to; returned resolved (messages are)."""
    (tmp_path / "record.py").write_text("def main(tracing):\n    pass\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "ok.pbtxt").write_text(OK_CONFIG)
    (tmp_path / "configs" / "bad.pbtxt").write_text(BAD_CONFIG)
    (tmp_path / "configs" / "latin1.txt").write_bytes(b"duration_ms: 1 # caf\xe9\n")
    binary = pb.TraceConfig(duration_ms=2000)
    binary.buffers.add(size_kb=64)
    (tmp_path / "configs" / "binary.pb").write_bytes(binary.SerializeToString())
    (tmp_path / "configs" / "text.pb").write_text(OK_CONFIG)
    (tmp_path / "configs" / "garbage.bin").write_bytes(b"\x0a\xff\xff\xff")
    (tmp_path / "lib").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path.resolve()


def write(base: Path, text: str, name: str = "topology.yaml") -> Path:
    path = base / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    return info.value


# -- a valid topology ------------------------------------------------------------------------

FULL = """\
# The docstring's example, and then some.
runtime_dir: ./run
stop_when: consumers_done
service:
  producer_endpoint: ipc://run/p.sock
  consumer_endpoint: ipc://@tracebus-test-consumer
  log: ./logs/service.log
  ready_timeout_s: 10
  stop_timeout_s: 2.5
producers:
  - name: sensors
    builtin: [tracebus.synthetic, tracebus.demo_timeline, sensors.extra]
    count: 2
    smb_size_kb: 512
    page_size_kb: 8
    policy: stall_then_drop
    env: {RATE: 010, ON: yes, NAME: plain, EMPTY: ""}
    restart: on-failure
    log: logs/sensors.log
  - name: app
    module: my_pkg.sources
    pythonpath: [./lib]
    restart: {policy: always, max_restarts: 10}
  - name: legacy
    command: "python legacy_app.py --label 'two words'"
    env:
      PYTHONUNBUFFERED: "1"
  - name: many.modules-1
    module: [a.b, c]
    pythonpath: lib
consumers:
  - name: recorder
    script: ./record.py
    output: out/recorder.pftrace
  - name: cli
    config: configs/ok.pbtxt
    output: ./out/cli.pftrace
  - name: binary
    config: configs/binary.pb
    output: ~/binary.pftrace
  - name: inline
    config_text: |
      buffers { size_kb: 1024 }
      duration_ms: 2000
    output: out/inline.pftrace
    env: {DEBUG: 1}
"""


def test_full_topology_parses_into_the_dataclasses(base: Path) -> None:
    path = write(base, FULL)
    topo = load_topology(path)
    assert topo == Topology(
        source=path,
        base_dir=base,
        runtime_dir=base / "run",
        stop_when="consumers_done",
        service=ServiceSpec(
            producer_endpoint=f"ipc://{base}/run/p.sock",
            consumer_endpoint="ipc://@tracebus-test-consumer",
            log=base / "logs" / "service.log",
            ready_timeout_s=10.0,
            stop_timeout_s=2.5,
        ),
        producers=(
            ProducerGroup(
                name="sensors",
                kind="builtin",
                data_sources=("tracebus.synthetic", "tracebus.demo_timeline", "sensors.extra"),
                count=2,
                smb_size_kb=512,
                page_size_kb=8,
                policy="stall_then_drop",
                env=(("RATE", "010"), ("ON", "yes"), ("NAME", "plain"), ("EMPTY", "")),
                restart=RestartPolicy("on-failure", tp.DEFAULT_MAX_RESTARTS),
                log=base / "logs" / "sensors.log",
            ),
            ProducerGroup(
                name="app",
                kind="module",
                modules=("my_pkg.sources",),
                pythonpath=(base / "lib",),
                restart=RestartPolicy("always", 10),
            ),
            ProducerGroup(
                name="legacy",
                kind="command",
                command=("python", "legacy_app.py", "--label", "two words"),
                env=(("PYTHONUNBUFFERED", "1"),),
            ),
            ProducerGroup(
                name="many.modules-1",
                kind="module",
                modules=("a.b", "c"),
                pythonpath=(base / "lib",),
            ),
        ),
        consumers=(
            ConsumerSpec(
                name="recorder",
                kind="script",
                script=base / "record.py",
                output=base / "out" / "recorder.pftrace",
            ),
            ConsumerSpec(
                name="cli",
                kind="config",
                config=base / "configs" / "ok.pbtxt",
                config_is_text=True,
                output=base / "out" / "cli.pftrace",
            ),
            ConsumerSpec(
                name="binary",
                kind="config",
                config=base / "configs" / "binary.pb",
                config_is_text=False,
                output=Path("~/binary.pftrace").expanduser().resolve(),
            ),
            ConsumerSpec(
                name="inline",
                kind="config",
                config_text="buffers { size_kb: 1024 }\nduration_ms: 2000\n",
                output=base / "out" / "inline.pftrace",
                env=(("DEBUG", "1"),),
            ),
        ),
    )
    assert topo.producer("app").modules == ("my_pkg.sources",)
    assert topo.consumer("inline").kind == "config"
    with pytest.raises(KeyError):
        topo.producer("recorder")
    hash(topo)  # frozen all the way down
    with pytest.raises(dataclasses.FrozenInstanceError):
        topo.producers[0].count = 3  # type: ignore[misc]


def test_the_reference_example_parses(base: Path) -> None:
    example = REFERENCE.read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    (base / "configs" / "synthetic.pbtxt").write_text(OK_CONFIG)
    topo = load_topology(write(base, example))
    assert [g.name for g in topo.producers] == ["sensors", "app", "legacy"]
    assert [(c.name, c.kind, c.start) for c in topo.consumers] == [
        ("recorder", "script", "after_producers"),
        ("cli", "config", "before_producers"),
        ("inline", "config", "after_producers"),
    ]


def test_defaults_of_a_minimal_topology(base: Path) -> None:
    path = write(base, "consumers:\n  - {name: c, script: record.py}\n")
    topo = load_topology(path)
    assert topo == Topology(
        source=path,
        base_dir=base,
        consumers=(ConsumerSpec(name="c", kind="script", script=base / "record.py"),),
    )
    assert topo.runtime_dir is None
    assert topo.stop_when == "consumers_done"
    assert topo.service == ServiceSpec(None, None, None, None, None)


def test_allow_other_users_becomes_the_service_flag(base: Path) -> None:
    text = "service:\n  allow_other_users: true\nconsumers:\n  - {name: c, script: record.py}\n"
    service = load_topology(write(base, text)).service
    assert service.allow_other_users is True
    assert service.argv("/py", "P", "C")[-1] == "--allow-other-users"
    assert "--allow-other-users" not in ServiceSpec().argv("/py", "P", "C")


def test_a_consumer_may_start_before_the_producers(base: Path) -> None:
    text = """\
        producers:
          - {name: batch, command: "python batch.py"}
        consumers:
          - {name: early, script: record.py, start: before_producers}
          - {name: late, script: record.py, start: after_producers}
          - {name: default, script: record.py}
        """
    topo = load_topology(write(base, text))
    starts = [(c.name, c.start) for c in topo.consumers]
    assert starts == [
        ("early", "before_producers"),
        ("late", "after_producers"),
        ("default", "after_producers"),
    ]


def test_minimal_producer_group_defaults(base: Path) -> None:
    topo = load_topology(write(base, "stop_when: never\nproducers:\n  - name: p\n    builtin:\n"))
    assert topo.producers == (ProducerGroup(name="p", kind="builtin"),)
    group = topo.producers[0]
    assert (group.count, group.smb_size_kb, group.page_size_kb) == (1, None, None)
    # No policy given: the program's own default (actors.producer drops, the probes stall).
    assert group.policy is None and "--policy" not in group.producer_argv("python", "ipc://x")
    assert group.restart == RestartPolicy("never", 0)
    assert topo.consumers == ()


def test_paths_resolve_against_the_files_directory_not_the_cwd(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = base / "deep" / "er"
    sub.mkdir(parents=True)
    (sub / "s.py").write_text("def main(tracing): pass\n")
    path = write(sub, "consumers:\n  - {name: c, script: s.py, output: ../x.pftrace}\n")
    monkeypatch.chdir(base)
    topo = load_topology(Path("deep/er/topology.yaml"))  # a relative path to the file
    assert topo.source == path and topo.base_dir == sub
    assert topo.consumers[0].script == sub / "s.py"
    assert topo.consumers[0].output == base / "deep" / "x.pftrace"


def test_parse_topology_takes_text_and_a_path_that_need_not_exist(base: Path) -> None:
    topo = parse_topology(
        "stop_when: never\nruntime_dir: run\n", base / "nowhere" / "topology.yaml"
    )
    assert topo.runtime_dir == base / "nowhere" / "run"
    with pytest.raises(TopologyError) as info:
        parse_topology("stop_when: nope\n", Path("virtual.yaml"))
    assert str(info.value) == (
        "virtual.yaml:1: stop_when: expected consumers_done or never, got 'nope'"
    )


def test_anchors_aliases_and_merge_keys(base: Path) -> None:
    path = write(
        base,
        """\
        stop_when: never
        x-defaults: &defaults
          count: 3
          policy: stall
        producers:
          - name: a
            builtin: []
            <<: *defaults
          - name: b
            builtin: []
            <<: *defaults
            count: 1          # a group's own keys override merged ones
            env: &env {K: v}
          - name: c
            module: m
            env:
              <<: *env
              L: w
        """,
    )
    # x-defaults is not a topology key: anchors must live in a known place...
    assert str(error_of(path)) == (
        f"{path}:2: x-defaults: unknown key; expected one of: "
        "runtime_dir, stop_when, service, relays, producers, consumers"
    )
    # ...such as the first entry that uses them.
    path = write(
        base,
        """\
        stop_when: never
        producers:
          - &first
            name: a
            builtin: []
            count: 3
            policy: stall
            env: &env {K: v}
          - <<: *first
            name: b
            count: 1          # a group's own keys override merged ones
          - name: c
            module: m
            env:
              <<: *env
              L: w
        """,
    )
    a, b, c = load_topology(path).producers
    assert (a.name, a.count, a.policy, a.env) == ("a", 3, "stall", (("K", "v"),))
    assert (b.name, b.count, b.policy, b.env) == ("b", 1, "stall", (("K", "v"),))
    assert c.env == (("K", "v"), ("L", "w"))


def test_restart_policies() -> None:
    never, on_failure, always = (
        RestartPolicy("never", 0),
        RestartPolicy("on-failure", 2),
        RestartPolicy("always", 2),
    )
    assert not never.should_restart(1, 0)
    assert on_failure.should_restart(1, 0) and on_failure.should_restart(-9, 1)
    assert not on_failure.should_restart(0, 0)
    assert not on_failure.should_restart(1, 2)  # the cap
    assert always.should_restart(0, 1) and not always.should_restart(0, 2)


# -- what the supervisor does with the model ---------------------------------------------------


def test_instance_names_and_argv(base: Path) -> None:
    topo = load_topology(write(base, FULL))
    sensors, app, legacy, many = topo.producers
    assert sensors.instance_names() == ["sensors#1", "sensors#2"]
    assert app.instance_names() == ["app#1"]
    assert sensors.producer_argv("/py", "ipc:///r/p.sock") == [
        "/py", "-m", "actors.producer", "--name", "sensors",
        "--smb-size-kb", "512", "--page-size-kb", "8", "--policy", "stall_then_drop",
        "--data-source", "sensors.extra",
        "--producer-endpoint", "ipc:///r/p.sock",
    ]  # fmt: skip
    assert many.argv("/py", "EP") == [
        "/py", "-m", "actors.producer", "--name", "many.modules-1",
        "--module", "a.b", "--module", "c", "--producer-endpoint", "EP",
    ]  # fmt: skip
    assert legacy.argv("/py", "EP") == ["/py", "legacy_app.py", "--label", "two words"]
    with pytest.raises(ValueError, match="runs a command"):
        legacy.producer_argv("/py", "EP")
    assert ProducerGroup("x", "command", command=("./run",)).argv("/py", "EP") == ["./run"]

    recorder, cli, binary, inline = topo.consumers
    assert cli.consumer_argv("/py", "ipc:///r/c.sock") == [
        "/py", "-m", "actors.consumer", "-c", f"{base}/configs/ok.pbtxt", "--txt",
        "-o", f"{base}/out/cli.pftrace", "--consumer-endpoint", "ipc:///r/c.sock",
    ]  # fmt: skip
    assert binary.consumer_argv("/py", "EP")[3:6] == ["-c", f"{base}/configs/binary.pb", "-o"]
    assert inline.consumer_argv("/py", "EP")[3:6] == ["-c", "-", "--txt"]  # stdin
    with pytest.raises(ValueError, match="runs a script"):
        recorder.consumer_argv("/py", "EP")
    assert topo.service.argv("/py", "P", "C") == [
        "/py", "-m", "actors.service", "--producer-endpoint", "P", "--consumer-endpoint", "C",
    ]  # fmt: skip


def test_environments(base: Path) -> None:
    topo = load_topology(write(base, FULL))
    sensors, app = topo.producers[:2]
    env = sensors.environment({"HOME": "/h", "RATE": "old"}, "ipc:///p")
    assert env == {
        "HOME": "/h",
        "RATE": "010",
        "ON": "yes",
        "NAME": "plain",
        "EMPTY": "",
        "TRACEBUS_PRODUCER_SOCK": "ipc:///p",
        "TRACEBUS_PRODUCER_NAME": "sensors",
    }
    assert "TRACEBUS_STARTUP_WAIT_S" not in env
    waiting = sensors.environment({"TRACEBUS_STARTUP_WAIT_S": "1"}, "ipc:///p", 5.0)
    assert waiting["TRACEBUS_STARTUP_WAIT_S"] == "5"  # the supervisor's value wins
    assert app.environment({}, "E")["PYTHONPATH"] == f"{base}/lib"
    assert app.environment({"PYTHONPATH": "/x"}, "E")["PYTHONPATH"] == f"{base}/lib:/x"
    inline = topo.consumer("inline")
    assert inline.environment({"A": "b"}, "ipc:///c") == {
        "A": "b",
        "DEBUG": "1",
        "TRACEBUS_CONSUMER_SOCK": "ipc:///c",
    }


def test_parse_producer_group_for_runtime_attach(base: Path) -> None:
    group = parse_producer_group(
        {"name": "late", "module": "my.mod", "count": 2, "pythonpath": ["lib"]}, base
    )
    assert group == ProducerGroup(
        name="late", kind="module", modules=("my.mod",), count=2, pythonpath=(base / "lib",)
    )
    with pytest.raises(TopologyError) as info:
        parse_producer_group({"name": "late", "builtin": [], "count": "three"}, base)
    assert str(info.value) == "count: expected a positive integer, got 'three'"
    assert (info.value.file, info.value.line, info.value.key) == (None, None, "count")
    with pytest.raises(TopologyError) as info:
        parse_producer_group({"name": "sensors", "builtin": []}, base, taken=["sensors"])
    assert str(info.value) == "name: duplicate name 'sensors' (also an existing actor)"
    with pytest.raises(TopologyError) as info:
        parse_producer_group({"name": "x", "builtin": [], "policy": "dropp"}, base)
    assert str(info.value) == (
        "policy: expected drop, stall or stall_then_drop, got 'dropp'; did you mean 'drop'?"
    )


def test_error_attributes(base: Path) -> None:
    path = write(base, "stop_when: never\nproducers:\n  - {name: p, builtin: [], count: 0}\n")
    e = error_of(path)
    assert (e.file, e.line, e.key) == (str(path), 3, "producers[0].count")
    assert e.problem == "expected a positive integer, got 0"


def test_load_topology_unreadable_and_not_utf8(base: Path) -> None:
    missing = base / "missing.yaml"
    assert str(error_of(missing)) == f"{missing}: cannot read: No such file or directory"
    path = base / "latin1.yaml"
    path.write_bytes(b"stop_when: never\n# caf\xe9\n")
    assert str(error_of(path)) == f"{path}:2: not UTF-8 text (byte 0xe9)"


def test_the_file_is_named_as_given(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(base, "stop_when: 3\n")
    monkeypatch.chdir(base)
    assert str(error_of(Path("topology.yaml"))) == (
        "topology.yaml:1: stop_when: expected consumers_done or never, got 3"
    )


# -- every error message -------------------------------------------------------------------------

# A prefix that makes a topology valid without consumers, then the producer's first keys:
# the case's own lines start at line 4, indented for the producer's mapping.
P = "stop_when: never\nproducers:\n  - name: p\n"
# A producer with a start kind: the case's lines start at line 5.
PB = P + "    builtin: []\n"
# A consumer list: the case's lines start at line 3.
C = "consumers:\n  - name: c\n"
# A service mapping: the case's lines start at line 3.
S = "stop_when: never\nservice:\n"

TOP_KEYS = "runtime_dir, stop_when, service, relays, producers, consumers"
EMPTY = "empty file; expected a mapping with service, producers and consumers"
NAME_RULE = (
    "use 1 to 64 letters, digits, '_', '.' or '-' (the supervisor adds '#k' to tell "
    "instances apart)"
)
ONLY_PRODUCER = "only for builtin and module producers (options of actors.producer); " + (
    "a command chooses its own"
)
LONG = "x" * 100

CASES = [
    # -- the document
    ("syntax-flow", "producers: [1\n",
     "2: invalid YAML at column 1: expected ',' or ']', but got '<stream end>' "
     "(while parsing a flow sequence at line 1)"),
    ("syntax-mapping-values", "stop_when: never\nservice: a: b\n",
     "2: invalid YAML at column 11: mapping values are not allowed here"),
    ("syntax-tab", "stop_when: never\nservice:\n\tlog: x\n",
     "3: invalid YAML at column 1: found character '\\t' that cannot start any token "
     "(while scanning for the next token)"),
    ("syntax-unclosed-quote", 'stop_when: never\nservice:\n  log: "x\n',
     "4: invalid YAML at column 1: found unexpected end of stream "
     "(while scanning a quoted scalar at line 3)"),
    ("two-documents", "stop_when: never\n---\nstop_when: never\n",
     "2: invalid YAML at column 1: expected a single document in the stream, "
     "but found another document"),
    ("control-character", "stop_when: never\nservice: \x07\n",
     "2: invalid YAML: special characters are not allowed (character #x0007)"),
    ("empty", "", f"1: {EMPTY}"),
    ("only-comments", "# nothing here\n\n", f"1: {EMPTY}"),
    ("explicit-null", "~\n", "1: expected a mapping at the top level, got nothing (null)"),
    ("top-level-list", "- producers\n", "1: expected a mapping at the top level, got a list"),
    ("top-level-scalar", "hello\n", "1: expected a mapping at the top level, got 'hello'"),
    ("unknown-key-suggestion", "stop_when: never\nproducer: []\n",
     "2: producer: unknown key; did you mean 'producers'?"),
    ("unknown-key-no-suggestion", "stop_when: never\nzzz: 1\n",
     f"2: zzz: unknown key; expected one of: {TOP_KEYS}"),
    ("duplicate-key", "stop_when: never\nproducers: []\nstop_when: never\n",
     "3: stop_when: duplicate key (first at line 1)"),
    ("non-string-key", "stop_when: never\n1: x\n", "2: keys are strings, got 1"),
    ("unknown-tag", "stop_when: !never x\n",
     "1: stop_when: invalid YAML value: could not determine a constructor for the tag '!never'"),
    ("bad-typed-value", PB + "    count: !!int three\n",
     "5: producers[0].count: invalid YAML value 'three': invalid literal for int() with base "
     "10: 'three'"),
    ("bad-merge", PB + "    <<: 5\n",
     "3: producers[0]: invalid merge (<<): expected a mapping or list of mappings for "
     "merging, but found scalar"),
    # -- stop_when and runtime_dir
    ("stop-when-bad", "stop_when: forever\n",
     "1: stop_when: expected consumers_done or never, got 'forever'; did you mean 'never'?"),
    ("stop-when-no-suggestion", "stop_when: done\n",
     "1: stop_when: expected consumers_done or never, got 'done'"),
    ("stop-when-suggestion", "stop_when: consumer_done\n",
     "1: stop_when: expected consumers_done or never, got 'consumer_done'; "
     "did you mean 'consumers_done'?"),
    ("stop-when-bool", "stop_when: no\n",
     "1: stop_when: expected consumers_done or never, got false"),
    ("consumers-done-no-consumer", "producers: []\n",
     "1: consumers: stop_when is consumers_done but there is no consumer; add one or set "
     "stop_when: never"),
    ("consumers-done-empty-list", "producers: []\nconsumers: []\n",
     "2: consumers: stop_when is consumers_done but there is no consumer; add one or set "
     "stop_when: never"),
    ("consumers-done-explicit", "producers: []\nstop_when: consumers_done\n",
     "2: stop_when: stop_when is consumers_done but there is no consumer; add one or set "
     "stop_when: never"),
    ("runtime-dir-type", "stop_when: never\nruntime_dir: [a]\n",
     "2: runtime_dir: expected a path, got a list"),
    ("runtime-dir-file", "stop_when: never\nruntime_dir: record.py\n",
     "2: runtime_dir: not a directory: {d}/record.py"),
    ("runtime-dir-too-long", f"stop_when: never\nruntime_dir: /{LONG}\n",
     f"2: runtime_dir: too long for ipc socket paths (101 bytes, at most 83): /{LONG}"),
    # -- service
    ("service-not-mapping", "stop_when: never\nservice: yes\n",
     "2: service: expected a mapping, got true"),
    ("service-unknown-key", S + "  consumer_endpiont: ipc://c.sock\n",
     "3: service.consumer_endpiont: unknown key; did you mean 'consumer_endpoint'?"),
    ("service-unknown-key-no-suggestion", S + "  log_file: x.log\n",
     "3: service.log_file: unknown key; expected one of: producer_endpoint, "
     "consumer_endpoint, log, ready_timeout_s, stop_timeout_s, limits, allow_other_users, "
     "relay_endpoint, relay_key, relay_clients, relay_insecure, relay_timeout_s, "
     "perfetto_sockets, perfetto_producer_socket, perfetto_consumer_socket"),
    ("allow-other-users-not-bool", S + "  allow_other_users: 1\n",
     "3: service.allow_other_users: expected true or false, got 1"),
    ("endpoint-tcp", S + "  producer_endpoint: tcp://127.0.0.1:5555\n",
     "3: service.producer_endpoint: expected an ipc:// endpoint, got 'tcp://127.0.0.1:5555' "
     "(the service takes peer credentials from the socket and hands producers their SMB "
     "over a UNIX socket beside it)"),
    ("endpoint-empty-path", S + "  consumer_endpoint: ipc://\n",
     "3: service.consumer_endpoint: expected a socket path after ipc://"),
    ("endpoint-type", S + "  consumer_endpoint: 5555\n",
     "3: service.consumer_endpoint: expected an ipc:// endpoint, got 5555 "
     "(quote it to mean the string '5555')"),
    ("endpoint-too-long", S + f"  consumer_endpoint: ipc:///{LONG}/c.sock\n",
     f"3: service.consumer_endpoint: socket path too long (108 bytes, at most 107): "
     f"/{LONG}/c.sock"),
    ("endpoints-equal",
     S + "  producer_endpoint: ipc://run/s.sock\n  consumer_endpoint: ipc://./run/s.sock\n",
     "4: service.consumer_endpoint: the same endpoint as producer_endpoint; the two ports "
     "need their own sockets"),
    ("timeout-zero", S + "  ready_timeout_s: 0\n",
     "3: service.ready_timeout_s: expected a positive number of seconds, got 0"),
    ("timeout-bool", S + "  stop_timeout_s: true\n",
     "3: service.stop_timeout_s: expected a positive number of seconds, got true"),
    ("timeout-text", S + "  stop_timeout_s: 5s\n",
     "3: service.stop_timeout_s: expected a positive number of seconds, got '5s'"),
    ("timeout-inf", S + "  stop_timeout_s: .inf\n",
     "3: service.stop_timeout_s: expected a finite number of seconds, got inf"),
    ("log-is-a-directory", S + "  log: out\n",
     "3: service.log: is a directory, expected a file path: {d}/out"),
    # -- producer entries
    ("producers-not-list", "stop_when: never\nproducers: {name: p}\n",
     "2: producers: expected a list of producer groups, got a mapping"),
    ("producer-not-mapping", "stop_when: never\nproducers:\n  - sensors\n",
     "3: producers[0]: expected a producer group (a mapping), got 'sensors'"),
    ("producer-unknown-key", PB + "    cuont: 2\n",
     "5: producers[0].cuont: unknown key; did you mean 'count'?"),
    ("producer-unknown-key-no-suggestion", PB + "    zzz: 2\n",
     "5: producers[0].zzz: unknown key; expected one of: name, builtin, module, command, "
     "count, smb_size_kb, page_size_kb, policy, env, restart, pythonpath, log, machine"),
    ("producer-duplicate-key", PB + "    count: 1\n    count: 2\n",
     "6: producers[0].count: duplicate key (first at line 5)"),
    ("producer-missing-name", "stop_when: never\nproducers:\n  - builtin: []\n",
     "3: producers[0]: missing required key 'name'"),
    ("second-producer-index", PB + "  - name: q\n    builtin: []\n    count: three\n",
     "7: producers[1].count: expected a positive integer, got 'three'"),
    # -- names
    ("name-int", "stop_when: never\nproducers:\n  - name: 42\n    builtin: []\n",
     "3: producers[0].name: expected a name, got 42 (quote it to mean the string '42')"),
    ("name-empty", "stop_when: never\nproducers:\n  - name: ''\n    builtin: []\n",
     "3: producers[0].name: expected a name, got ''"),
    ("name-null", "stop_when: never\nproducers:\n  - name:\n    builtin: []\n",
     "3: producers[0].name: expected a name, got nothing (null)"),
    ("name-hash", "stop_when: never\nproducers:\n  - name: 'a#1'\n    builtin: []\n",
     f"3: producers[0].name: invalid name 'a#1': {NAME_RULE}"),
    ("name-space", "stop_when: never\nproducers:\n  - name: my app\n    builtin: []\n",
     f"3: producers[0].name: invalid name 'my app': {NAME_RULE}"),
    ("name-too-long", f"{C}    script: record.py\n  - name: {'n' * 65}\n    script: record.py\n",
     f"4: consumers[1].name: invalid name '{'n' * 65}': {NAME_RULE}"),
    ("name-reserved", "stop_when: never\nproducers:\n  - name: service\n    builtin: []\n",
     "3: producers[0].name: 'service' is reserved; choose another name"),
    ("name-duplicate-producers", PB + "  - name: p\n    module: m\n",
     "5: producers[1].name: duplicate name 'p' (also producers[0] at line 3)"),
    ("name-duplicate-across", PB + "consumers:\n  - name: p\n    script: record.py\n",
     "6: consumers[0].name: duplicate name 'p' (also producers[0] at line 3)"),
    # -- start kinds
    ("kind-none", P + "    count: 2\n",
     "3: producers[0]: expected one of builtin, module or command (how to start it)"),
    ("kind-two", PB + "    command: ./app\n",
     "5: producers[0].command: cannot be combined with builtin; give exactly one of builtin, "
     "module or command"),
    ("kind-three", P + "    module: m\n    command: x\n    builtin: []\n",
     "5: producers[0].command: cannot be combined with module; give exactly one of builtin, "
     "module or command"),
    ("builtin-string", P + "    builtin: tracebus.synthetic\n",
     "4: producers[0].builtin: expected a list of data source names, got 'tracebus.synthetic'"),
    ("builtin-item-type", P + "    builtin: [track_event, 7]\n",
     "4: producers[0].builtin[1]: expected a data source name, got 7 "
     "(quote it to mean the string '7')"),
    ("builtin-item-space", P + "    builtin: ['a b']\n",
     "4: producers[0].builtin[0]: invalid data source name 'a b'"),
    ("builtin-duplicate", P + "    builtin:\n      - track_event\n      - track_event\n",
     "6: producers[0].builtin[1]: 'track_event' is listed twice"),
    ("module-bad", P + "    module: my-pkg.x\n",
     "4: producers[0].module: expected a module name like pkg.mod, got 'my-pkg.x'"),
    ("module-empty-list", P + "    module: []\n",
     "4: producers[0].module: expected at least one module"),
    ("module-null", P + "    module:\n",
     "4: producers[0].module: expected a module name (pkg.mod), got nothing (null)"),
    ("module-list-item", P + "    module: [ok, 'no.']\n",
     "4: producers[0].module[1]: expected a module name like pkg.mod, got 'no.'"),
    ("command-empty", P + "    command: '  '\n",
     "4: producers[0].command: expected a command line or a list of arguments, got '  '"),
    ("command-empty-list", P + "    command: []\n",
     "4: producers[0].command: expected a command line, got an empty one"),
    ("command-unclosed-quote", P + "    command: \"python 'app.py\"\n",
     "4: producers[0].command: cannot split the command line: No closing quotation"),
    ("command-list-item", P + "    command: [python, 3]\n",
     "4: producers[0].command[1]: expected a string, got 3 (quote it to mean the string '3')"),
    ("command-mapping", P + "    command: {run: x}\n",
     "4: producers[0].command: expected a command line or a list of arguments, got a mapping"),
    # -- count
    ("count-word", PB + "    count: three\n",
     "5: producers[0].count: expected a positive integer, got 'three'"),
    ("count-zero", PB + "    count: 0\n",
     "5: producers[0].count: expected a positive integer, got 0"),
    ("count-negative", PB + "    count: -1\n",
     "5: producers[0].count: expected a positive integer, got -1"),
    ("count-bool", PB + "    count: true\n",
     "5: producers[0].count: expected a positive integer, got true"),
    ("count-float", PB + "    count: 2.0\n",
     "5: producers[0].count: expected a positive integer, got 2.0"),
    ("count-null", PB + "    count:\n",
     "5: producers[0].count: expected a positive integer, got nothing (null)"),
    ("count-too-many", PB + "    count: 1000\n",
     "5: producers[0].count: at most 256 instances, got 1000"),
    # -- SMB hints and policy
    ("page-size-odd", PB + "    page_size_kb: 3\n",
     "5: producers[0].page_size_kb: expected 4, 8, 16 or 32, got 3"),
    ("page-size-64", PB + "    page_size_kb: 64\n",
     "5: producers[0].page_size_kb: expected 4, 8, 16 or 32, got 64"),
    ("page-size-string", PB + "    page_size_kb: '4'\n",
     "5: producers[0].page_size_kb: expected 4, 8, 16 or 32, got '4'"),
    ("page-size-float", PB + "    page_size_kb: 4.0\n",
     "5: producers[0].page_size_kb: expected 4, 8, 16 or 32, got 4.0"),
    ("page-size-bool", PB + "    page_size_kb: true\n",
     "5: producers[0].page_size_kb: expected 4, 8, 16 or 32, got true"),
    ("smb-zero", PB + "    smb_size_kb: 0\n",
     "5: producers[0].smb_size_kb: expected a positive integer (KiB), got 0"),
    ("smb-word", PB + "    smb_size_kb: big\n",
     "5: producers[0].smb_size_kb: expected a positive integer (KiB), got 'big'"),
    ("smb-not-multiple-default-page", PB + "    smb_size_kb: 6\n",
     "5: producers[0].smb_size_kb: expected a multiple of the page size (4), got 6"),
    ("smb-not-multiple", PB + "    smb_size_kb: 20\n    page_size_kb: 8\n",
     "5: producers[0].smb_size_kb: expected a multiple of the page size (8), got 20"),
    ("smb-smaller-than-page", PB + "    page_size_kb: 32\n    smb_size_kb: 16\n",
     "6: producers[0].smb_size_kb: expected a multiple of the page size (32), got 16"),
    ("smb-too-big", PB + "    smb_size_kb: 65536\n",
     "5: producers[0].smb_size_kb: at most 32768 (32 MiB), got 65536"),
    ("smb-with-command", P + "    command: ./app\n    smb_size_kb: 256\n",
     f"5: producers[0].smb_size_kb: {ONLY_PRODUCER}"),
    ("policy-with-command", P + "    policy: drop\n    command: ./app\n",
     f"4: producers[0].policy: {ONLY_PRODUCER}"),
    ("policy-bad", PB + "    policy: block\n",
     "5: producers[0].policy: expected drop, stall or stall_then_drop, got 'block'"),
    ("policy-suggestion", PB + "    policy: stall-then-drop\n",
     "5: producers[0].policy: expected drop, stall or stall_then_drop, got 'stall-then-drop'; "
     "did you mean 'stall_then_drop'?"),
    # -- env, pythonpath, log
    ("env-list", PB + "    env: [A=1]\n",
     "5: producers[0].env: expected a mapping of environment variables, got a list"),
    ("env-bad-name", PB + "    env: {1X: a}\n",
     "5: producers[0].env.1X: invalid variable name: use letters, digits and '_'"),
    ("env-reserved", PB + "    env:\n      TRACEBUS_PRODUCER_SOCK: ipc:///x\n",
     "6: producers[0].env.TRACEBUS_PRODUCER_SOCK: reserved: TRACEBUS_* variables are ours"),
    ("env-null", PB + "    env:\n      A:\n",
     "6: producers[0].env.A: expected a string, got nothing (null)"),
    ("env-nested", PB + "    env: {A: [1, 2]}\n",
     "5: producers[0].env.A: expected a string, got a list"),
    ("env-number-name", PB + "    env: {1: a}\n",
     "5: producers[0].env.1: invalid variable name: use letters, digits and '_'"),
    ("env-non-scalar-key", PB + "    env: {[A]: a}\n",
     "5: producers[0].env: keys are strings, got a list"),
    ("pythonpath-missing", PB + "    pythonpath: [lib, ./nope]\n",
     "5: producers[0].pythonpath[1]: no such directory: {d}/nope"),
    ("pythonpath-file", PB + "    pythonpath: record.py\n",
     "5: producers[0].pythonpath: no such directory: {d}/record.py"),
    ("producer-log-dir", PB + "    log: ./out/\n",
     "5: producers[0].log: is a directory, expected a file path: {d}/out"),
    # -- restart
    ("restart-bad", PB + "    restart: sometimes\n",
     "5: producers[0].restart: expected never, on-failure or always, got 'sometimes'"),
    ("restart-suggestion", PB + "    restart: on_failure\n",
     "5: producers[0].restart: expected never, on-failure or always, got 'on_failure'; "
     "did you mean 'on-failure'?"),
    ("restart-bool", PB + "    restart: no\n",
     "5: producers[0].restart: expected never, on-failure or always, got false"),
    ("restart-list", PB + "    restart: [always]\n",
     "5: producers[0].restart: expected never, on-failure or always, or a mapping, got a list"),
    ("restart-missing-policy", PB + "    restart: {max_restarts: 3}\n",
     "5: producers[0].restart: missing required key 'policy'"),
    ("restart-unknown-key", PB + "    restart:\n      policy: always\n      max_retries: 3\n",
     "7: producers[0].restart.max_retries: unknown key; did you mean 'max_restarts'?"),
    ("restart-policy-bad", PB + "    restart: {policy: maybe}\n",
     "5: producers[0].restart.policy: expected never, on-failure or always, got 'maybe'"),
    ("restart-cap-negative", PB + "    restart: {policy: always, max_restarts: -1}\n",
     "5: producers[0].restart.max_restarts: expected a non-negative integer, got -1"),
    ("restart-cap-word", PB + "    restart: {policy: always, max_restarts: lots}\n",
     "5: producers[0].restart.max_restarts: expected a non-negative integer, got 'lots'"),
    ("restart-cap-with-never", PB + "    restart:\n      policy: never\n      max_restarts: 2\n",
     "7: producers[0].restart.max_restarts: needs policy on-failure or always"),
    # -- consumers
    ("consumers-not-list", "consumers: recorder\n",
     "1: consumers: expected a list of consumers, got 'recorder'"),
    ("consumer-not-mapping", "consumers:\n  - [record.py]\n",
     "2: consumers[0]: expected a consumer (a mapping), got a list"),
    ("consumer-unknown-key", C + "    script: record.py\n    out: x.pftrace\n",
     "4: consumers[0].out: unknown key; did you mean 'output'?"),
    ("consumer-missing-name", "consumers:\n  - script: record.py\n",
     "2: consumers[0]: missing required key 'name'"),
    ("consumer-kind-none", C + "    output: x.pftrace\n",
     "2: consumers[0]: expected one of script, config or config_text"),
    ("consumer-kind-two", C + "    script: record.py\n    config: configs/ok.pbtxt\n",
     "4: consumers[0].config: cannot be combined with script; give exactly one of script, "
     "config or config_text"),
    ("consumer-kind-two-configs",
     C + "    config: configs/ok.pbtxt\n    config_text: 'duration_ms: 1'\n",
     "4: consumers[0].config_text: cannot be combined with config; give exactly one of script, "
     "config or config_text"),
    ("script-missing", C + "    script: ./recrod.py\n",
     "3: consumers[0].script: no such file: {d}/recrod.py"),
    ("script-name-with-newline", C + '    script: "new\\nline.py"\n',
     "3: consumers[0].script: no such file: {d}/new\\nline.py"),
    ("script-directory", C + "    script: lib\n", "3: consumers[0].script: not a file: {d}/lib"),
    ("script-type", C + "    script: {path: record.py}\n",
     "3: consumers[0].script: expected a path, got a mapping"),
    ("config-missing", C + "    config: configs/nope.pbtxt\n    output: x.pftrace\n",
     "3: consumers[0].config: no such file: {d}/configs/nope.pbtxt"),
    ("config-without-output", C + "    config: configs/ok.pbtxt\n",
     "2: consumers[0]: missing required key 'output' (the trace file to write)"),
    ("config-text-without-output", C + "    config_text: 'duration_ms: 1'\n",
     "2: consumers[0]: missing required key 'output' (the trace file to write)"),
    ("config-file-bad-textproto", C + "    config: configs/bad.pbtxt\n    output: x.pftrace\n",
     "3: consumers[0].config: {d}/configs/bad.pbtxt:4:1: Message type "
     '"perfetto.protos.TraceConfig" has no field named "bufers".'),
    ("config-file-not-utf8", C + "    config: configs/latin1.txt\n    output: x.pftrace\n",
     "3: consumers[0].config: {d}/configs/latin1.txt: not UTF-8 text (a binary config needs "
     "another name)"),
    ("config-file-text-named-binary", C + "    config: configs/text.pb\n    output: x.pftrace\n",
     "3: consumers[0].config: {d}/configs/text.pb: a textproto needs a .pbtxt, .txt, "
     ".textproto or .cfg name"),
    ("config-file-garbage", C + "    config: configs/garbage.bin\n    output: x.pftrace\n",
     "3: consumers[0].config: {d}/configs/garbage.bin: not a binary TraceConfig "
     "(Error parsing message with type 'perfetto.protos.TraceConfig': Wire format was "
     "corrupt)"),
    ("config-text-literal-block",
     C + "    output: x.pftrace\n    config_text: |\n      buffers { size_kb: 64 }\n"
     "      duration_ms: soon\n",
     "6: consumers[0].config_text: invalid TraceConfig textproto (line 2:14): "
     "'duration_ms: soon': Couldn't parse integer: soon"),
    ("config-text-quoted",
     C + "    output: x.pftrace\n    config_text: 'buffers { size_kb: 64 } bufers {}'\n",
     "4: consumers[0].config_text: invalid TraceConfig textproto (line 1:25): Message type "
     '"perfetto.protos.TraceConfig" has no field named "bufers".'),
    ("config-text-mapping", C + "    output: x.pftrace\n    config_text:\n      buffers: 1\n",
     "5: consumers[0].config_text: expected a TraceConfig textproto, got a mapping"),
    ("output-directory", C + "    config: configs/ok.pbtxt\n    output: out\n",
     "4: consumers[0].output: is a directory, expected a file path: {d}/out"),
    ("output-type", C + "    config: configs/ok.pbtxt\n    output: 12\n",
     "4: consumers[0].output: expected a path, got 12 (quote it to mean the string '12')"),
    ("output-unknown-user", C + "    script: record.py\n    output: ~no_such_user_tb/t.pftrace\n",
     "4: consumers[0].output: cannot expand '~no_such_user_tb/t.pftrace': Could not determine "
     "home directory."),
    ("output-duplicate",
     C + "    config: configs/ok.pbtxt\n    output: out/t.pftrace\n"
     "  - name: d\n    script: record.py\n    output: ./out/../out/t.pftrace\n",
     "7: consumers[1].output: consumers[0].output at line 4 writes the same file: "
     "{d}/out/t.pftrace"),
    ("consumer-env-reserved", C + "    script: record.py\n    env: {TRACEBUS_CONTROL: x}\n",
     "4: consumers[0].env.TRACEBUS_CONTROL: reserved: TRACEBUS_* variables are ours"),
    ("consumer-start-typo", C + "    script: record.py\n    start: before_producer\n",
     "4: consumers[0].start: expected after_producers or before_producers, got "
     "'before_producer'; did you mean 'before_producers'?"),
    ("consumer-start-bool", C + "    script: record.py\n    start: yes\n",
     "4: consumers[0].start: expected after_producers or before_producers, got true"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_message(base: Path, text: str, expected: str) -> None:
    path = write(base, text)
    message = str(error_of(path))
    assert message == f"{path}:{expected.format(d=base)}"
    assert len(message.splitlines()) == 1


def test_every_case_id_is_unique() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("smb", "page"),
    [(4, None), (256, None), (32768, None), (8, 8), (512, 16), (32, 32), (32768, 32), (None, 8)],
)
def test_valid_smb_hints_are_what_the_service_uses(base: Path, smb, page) -> None:
    """What passes here, shm.abi's resolve_geometry takes as given (no silent fallback)."""
    from shm.abi import DEFAULT_SMB_SIZE, resolve_geometry

    text = PB + (f"    smb_size_kb: {smb}\n" if smb else "")
    text += f"    page_size_kb: {page}\n" if page else ""
    group = load_topology(write(base, text)).producers[0]
    assert (group.smb_size_kb, group.page_size_kb) == (smb, page)
    geometry = resolve_geometry((smb or 0) * 1024, (page or 0) * 1024)
    assert geometry.size == (smb * 1024 if smb else DEFAULT_SMB_SIZE)
    assert geometry.page_size == (page or tp.DEFAULT_PAGE_SIZE_KB) * 1024


# -- the constants mirror the actors ------------------------------------------------------------


def test_constants_match_the_actors() -> None:
    from actors import consumer, endpoints, producer
    from actors.data_sources import DemoTimelineDataSource, SyntheticDataSource
    from shm import abi

    assert tp.PAGE_SIZES_KB == tuple(p // 1024 for p in abi.PAGE_SIZES)
    assert tp.DEFAULT_PAGE_SIZE_KB * 1024 == abi.DEFAULT_PAGE_SIZE
    assert tp.MAX_SMB_SIZE_KB * 1024 == abi.MAX_SMB_SIZE
    assert set(tp.POLICIES) == set(producer.POLICIES)
    assert tp.TEXT_SUFFIXES == consumer.TEXT_SUFFIXES
    assert t.BUILTIN_DATA_SOURCES == (SyntheticDataSource.name, DemoTimelineDataSource.name)
    assert t.PRODUCER_SOCK_ENV == endpoints.PRODUCER_ENV
    assert t.CONSUMER_SOCK_ENV == endpoints.CONSUMER_ENV
    assert t.PRODUCER_NAME_ENV == endpoints.PRODUCER_NAME_ENV
    assert t.STARTUP_WAIT_ENV == endpoints.STARTUP_WAIT_ENV


def test_the_modules_are_pure() -> None:
    """Importing the model and its parser loads no process, socket or actor machinery
    (the pure config rules they share with the consumer live in actors.core.configs,
    the service's limits in actors.core.limits, the output checks (os.stat only) in
    actors.output_paths)."""
    probe = (
        "import json, sys; import launch.topology, launch.topology_parser; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'zmq', 'subprocess', 'socket', 'multiprocessing', 'signal', 'asyncio', 'actors', "
        "'shm'})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    pure = {"actors", "actors.core", "actors.core.configs", "actors.core.limits"}
    pure.add("actors.output_paths")
    assert [m for m in json.loads(out.stdout) if m not in pure] == []


def test_service_limits_become_service_flags(base: Path) -> None:
    path = write(
        base,
        """\
        stop_when: never
        service:
          limits:
            max_sessions: 3
            max_buffers_per_session: 8
        """,
    )
    spec = load_topology(path).service
    assert spec.limits == (("max_sessions", 3), ("max_buffers_per_session", 8))
    argv = spec.argv("py", "ipc:///p", "ipc:///c")
    assert argv[-4:] == ["--max-sessions", "3", "--max-buffers-per-session", "8"]


@pytest.mark.parametrize(
    "limits, message",
    [
        ("max_sessions: 0", "4: service.limits.max_sessions: expected a positive integer, got 0"),
        (
            "max_session: 2",
            "4: service.limits.max_session: unknown key; did you mean 'max_sessions'?",
        ),
    ],
)
def test_bad_service_limits(base: Path, limits: str, message: str) -> None:
    path = write(base, f"stop_when: never\nservice:\n  limits:\n    {limits}\n")
    assert message in str(error_of(path))


# -- docs/topology.md against the parser ---------------------------------------------------


def documented_keys() -> dict[str, list[str]]:
    """Section -> the keys of the table after its `<!-- keys: SECTION -->` marker, in
    the order the reference lists them."""
    sections: dict[str, list[str]] = {}
    lines = REFERENCE.read_text().splitlines()
    for i, line in enumerate(lines):
        marker = re.fullmatch(r"<!-- keys: (.+) -->", line.strip())
        if marker is None:
            continue
        assert marker[1] not in sections, f"two tables for {marker[1]!r}"
        rows = itertools.takewhile(lambda row: row.startswith("|"), lines[i + 1 :])
        cells = [row.split("|")[1].strip() for row in rows]
        assert cells[:2] == ["key", "---"], f"{marker[1]!r}: no table after the marker"
        keys = [re.fullmatch(r"`(\w+)`", cell) for cell in cells[2:]]
        assert all(keys), f"{marker[1]!r}: each row starts with a `key`: {cells[2:]}"
        sections[marker[1]] = [key[1] for key in keys if key is not None]
    return sections


# A mapping in each section with one key no section has: the parser's own message lists
# the keys it accepts there. Every section of SECTION_KEYS needs one.
UNKNOWN_KEY_IN = {
    "top level": "zz_unknown: 1\n",
    "service": "stop_when: never\nservice: {zz_unknown: 1}\n",
    "service.limits": "stop_when: never\nservice: {limits: {zz_unknown: 1}}\n",
    "producers[]": "stop_when: never\nproducers: [{zz_unknown: 1}]\n",
    "producers[].restart": (
        "stop_when: never\nproducers: [{name: p, builtin: [], restart: {zz_unknown: 1}}]\n"
    ),
    "consumers[]": "consumers: [{zz_unknown: 1}]\n",
    "relays[]": (
        "stop_when: never\nservice: {relay_endpoint: 'tcp://0.0.0.0:7010', relay_insecure: true}\n"
        "relays: [{zz_unknown: 1}]\n"
    ),
}


def test_the_reference_documents_every_section_the_parser_has() -> None:
    assert set(documented_keys()) == set(tp.SECTION_KEYS)
    assert set(UNKNOWN_KEY_IN) == set(tp.SECTION_KEYS)


@pytest.mark.parametrize("section", sorted(tp.SECTION_KEYS))
def test_the_reference_documents_exactly_the_keys_the_parser_accepts(
    base: Path, section: str
) -> None:
    documented = documented_keys().get(section, [])
    with pytest.raises(TopologyError) as e:
        parse_topology(UNKNOWN_KEY_IN[section], base / "topology.yaml")
    problem = e.value.problem
    assert problem.startswith("unknown key; expected one of: "), problem
    accepted = problem.removeprefix("unknown key; expected one of: ").split(", ")
    assert accepted == list(tp.SECTION_KEYS[section])  # the table is what the parser uses
    assert {
        "documented, not accepted": sorted(set(documented) - set(accepted)),
        "accepted, not documented": sorted(set(accepted) - set(documented)),
    } == {"documented, not accepted": [], "accepted, not documented": []}
    assert documented == accepted  # and in the parser's order


def test_the_readme_points_to_the_reference() -> None:
    assert "docs/topology.md" in (REPO / "README.md").read_text()
