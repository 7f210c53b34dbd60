"""Topologies over several machines (issue 14): `relays:`, the service's relay port and
`machine:` on producer groups, parsed into launch/topology.py's model, turned into the
argv of actors.service and actors.relay, checked per part (check_part), and the
supervisor's part of one machine (`--machine NAME`) run with real processes.

The parsing and argv cases run in one process; the supervisor cases start a relay and
producers (and a service) and skip only while actors/relay.py (actors/relay_port.py for
the central part) is not in the tree yet.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.consumer import Consumer
from actors.relay_keys import generate, load_pair
from launch.control import SupervisorClient
from launch.topology import RelaySpec, RestartPolicy, ServiceSpec, TopologyError, split_tcp
from launch.topology_parser import check_part, load_topology, parse_topology
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from tests.processes import Proc, Runtime
from tests.test_topology_hostile import TOKENS
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "topology.md"
PY = sys.executable

CURVE_SERVICE = """\
    service:
      relay_endpoint: tcp://0.0.0.0:7010
      relay_key: keys/service.key_secret
      relay_clients: keys/relays
"""
CURVE_RELAY = "{name: %s, key: keys/%s.key_secret, service_key: keys/service.key}"


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path.resolve()


@pytest.fixture
def keys(base: Path) -> Path:
    """keys/service.*, keys/robot1.*, keys/robot2.*, and keys/relays/ with robot1.key."""
    directory = base / "keys"
    for name in ("service", "robot1", "robot2"):
        generate(directory, name)
    (directory / "relays").mkdir()
    (directory / "relays" / "robot1.key").write_bytes((directory / "robot1.key").read_bytes())
    return directory


def write(base: Path, text: str) -> Path:
    path = base / "topology.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    return str(info.value).removeprefix(f"{path}:")


def curve(base: Path, *relays: str, producers: str = "") -> Path:
    """stop_when never, a CURVE relay port, `relays` (names), and `producers` (YAML)."""
    items = "\n".join("  - " + CURVE_RELAY % (r, r) for r in relays)
    text = "stop_when: never\n" + textwrap.dedent(CURVE_SERVICE) + "relays:\n" + items + "\n"
    return write(base, text + textwrap.dedent(producers))


# -- the model ---------------------------------------------------------------------------------


def test_a_curve_topology_parses_into_its_parts(base: Path) -> None:
    path = curve(
        base,
        "robot1",
        "robot2",
        producers="""\
        producers:
          - {name: planner, builtin: []}
          - {name: camera, builtin: [], machine: robot1, count: 2}
          - {name: arm, module: arm.sources, machine: robot2}
        """,
    )
    topo = load_topology(path)
    assert topo.service.relay_endpoint == "tcp://0.0.0.0:7010"
    assert topo.service.relay_key == base / "keys" / "service.key_secret"
    assert topo.service.relay_clients == base / "keys" / "relays"
    assert topo.relays == (
        RelaySpec(
            "robot1",
            "tcp://127.0.0.1:7010",
            key=base / "keys" / "robot1.key_secret",
            service_key=base / "keys" / "service.key",
        ),
        RelaySpec(
            "robot2",
            "tcp://127.0.0.1:7010",
            key=base / "keys" / "robot2.key_secret",
            service_key=base / "keys" / "service.key",
        ),
    )
    assert [g.name for g in topo.groups_on(None)] == ["planner"]
    assert [g.name for g in topo.groups_on("robot1")] == ["camera"]
    assert [g.name for g in topo.groups_on("robot2")] == ["arm"]
    assert topo.relay("robot2").name == "robot2"
    with pytest.raises(KeyError):
        topo.relay("planner")


def test_every_relay_key_and_the_service_argv(base: Path) -> None:
    path = write(
        base,
        """\
        stop_when: never
        runtime_dir: run
        service:
          relay_endpoint: tcp://[::]:7010
          relay_insecure: true
          relay_timeout_s: 2.5
        relays:
          - name: robot1
            service: tcp://base.lan:7011
            insecure: true
            send_queue_mb: 4
            clock_sync_interval_s: 0.5
            link_timeout_s: 3
            restart: {policy: on-failure, max_restarts: 2}
            runtime_dir: run-robot1
            log: logs/robot1.log
          - {name: robot2, insecure: true}
        """,
    )
    topo = load_topology(path)
    robot1, robot2 = topo.relays
    assert robot1 == RelaySpec(
        "robot1",
        "tcp://base.lan:7011",
        insecure=True,
        send_queue_mb=4,
        clock_sync_interval_s=0.5,
        link_timeout_s=3.0,
        restart=RestartPolicy("on-failure", 2),
        runtime_dir=base / "run-robot1",
        log=base / "logs" / "robot1.log",
    )
    assert robot2.service == "tcp://[::1]:7010"  # the wildcard made loopback
    argv = topo.service.argv(PY, "ipc:///r/p.sock", "ipc:///r/c.sock")
    assert argv[argv.index("--relay-endpoint") :] == [
        "--relay-endpoint", "tcp://[::]:7010", "--relay-insecure", "--relay-timeout-s", "2.5",
    ]  # fmt: skip
    assert robot1.argv(PY, "ipc:///m/producer.sock") == [
        PY, "-m", "actors.relay", "--service", "tcp://base.lan:7011",
        "--machine-name", "robot1", "--producer-endpoint", "ipc:///m/producer.sock",
        "--insecure", "--send-queue-mb", "4", "--clock-sync-interval-s", "0.5",
        "--link-timeout-s", "3",
    ]  # fmt: skip


def test_curve_argv_passes_the_key_files(base: Path) -> None:
    topo = load_topology(curve(base, "robot1"))
    argv = topo.service.argv(PY, "ipc:///r/p.sock", "ipc:///r/c.sock")
    keys = base / "keys"
    assert argv[argv.index("--relay-endpoint") :] == [
        "--relay-endpoint", "tcp://0.0.0.0:7010",
        "--relay-key", str(keys / "service.key_secret"),
        "--relay-clients", str(keys / "relays"),
    ]  # fmt: skip
    assert topo.relay("robot1").argv(PY, "ipc:///m/p.sock") == [
        PY, "-m", "actors.relay", "--service", "tcp://127.0.0.1:7010",
        "--machine-name", "robot1", "--producer-endpoint", "ipc:///m/p.sock",
        "--key", str(keys / "robot1.key_secret"), "--service-key", str(keys / "service.key"),
    ]  # fmt: skip


def test_an_empty_relays_list_needs_no_relay_port(base: Path) -> None:
    assert load_topology(write(base, "stop_when: never\nrelays: []\n")).relays == ()


def test_a_service_without_a_relay_port_passes_no_relay_flag() -> None:
    argv = ServiceSpec().argv(PY, "ipc:///p", "ipc:///c")
    assert not [a for a in argv if a.startswith("--relay")]


@pytest.mark.parametrize(
    ("endpoint", "parts"),
    [
        ("tcp://127.0.0.1:1", ("127.0.0.1", 1)),
        ("tcp://base.lan:65535", ("base.lan", 65535)),
        ("tcp://[::1]:7010", ("[::1]", 7010)),
    ],
)
def test_split_tcp(endpoint: str, parts: tuple[str, int]) -> None:
    assert split_tcp(endpoint) == parts


@pytest.mark.parametrize(
    "endpoint",
    ["ipc:///x", "tcp://host", "tcp://:7010", "tcp://h:0", "tcp://h:65536", "tcp://h:x",
     "tcp://[::1:7010", "tcp://h/x:7010"],
)  # fmt: skip
def test_split_tcp_refuses(endpoint: str) -> None:
    with pytest.raises(ValueError):
        split_tcp(endpoint)


# -- what the parser refuses -------------------------------------------------------------------

INSECURE = (
    "stop_when: never\nservice:\n  relay_endpoint: tcp://0.0.0.0:7010\n  relay_insecure: true\n"
)
C = "stop_when: never\n" + textwrap.dedent(CURVE_SERVICE)

REFUSED = [
    ("plain-tcp-without-the-flag", "stop_when: never\nservice: {relay_endpoint: 'tcp://0.0.0.0:7010'}\n",
     "2: service: missing relay_key and relay_clients: the relay link needs CURVE keys "
     "(relay_key and relay_clients), or relay_insecure: true on a trusted network"),
    ("service-half-the-keys", "stop_when: never\nservice:\n  relay_endpoint: tcp://0.0.0.0:7010\n"
     "  relay_key: k.key_secret\n",
     "3: service: missing relay_clients: the relay link needs CURVE keys (relay_key and "
     "relay_clients), or relay_insecure: true on a trusted network"),
    ("service-insecure-with-a-key", INSECURE + "  relay_key: k.key_secret\n",
     "5: service.relay_key: cannot be combined with relay_insecure: true (plain TCP uses no keys)"),
    ("relay-key-without-a-port", "stop_when: never\nservice: {relay_insecure: true}\n",
     "2: service.relay_insecure: needs relay_endpoint"),
    ("relay-endpoint-ipc", "stop_when: never\nservice: {relay_endpoint: 'ipc:///x'}\n",
     "2: service.relay_endpoint: not a tcp:// endpoint: 'ipc:///x'"),
    ("relay-endpoint-no-port", INSECURE.replace(":7010", ""),
     "3: service.relay_endpoint: expected tcp://HOST:PORT with a port 1-65535, got "
     "'tcp://0.0.0.0'"),
    ("relays-without-a-port", "stop_when: never\nrelays: [{name: a, insecure: true}]\n",
     "2: relays: relays need service.relay_endpoint (the port where the service accepts them)"),
    ("relay-without-keys", C + "relays:\n  - {name: a}\n",
     "7: relays[0]: missing key and service_key: the relay link needs CURVE keys (key and "
     "service_key), or insecure: true on a trusted network"),
    ("relay-insecure-with-a-key", INSECURE + "relays:\n  - {name: a, insecure: true, key: k}\n",
     "6: relays[0].key: cannot be combined with insecure: true (plain TCP uses no keys)"),
    ("relay-insecure-against-curve", C + "relays:\n  - {name: a, insecure: true}\n",
     "7: relays[0].insecure: the service's relay port uses CURVE"),
    ("relay-curve-against-insecure", INSECURE + "relays:\n  - {name: a, key: k, service_key: s}\n",
     "6: relays[0].insecure: the service's relay port uses plain TCP (relay_insecure)"),
    ("relay-duplicate",
     INSECURE + "relays:\n  - {name: a, insecure: true}\n  - {name: a, insecure: true}\n",
     "7: relays[1].name: duplicate relay 'a' (also at line 6)"),
    ("relay-named-host", INSECURE + "relays:\n  - {name: host, insecure: true}\n",
     "6: relays[0].name: 'host' names the service's own machine in machine_name_filter; "
     "choose another name"),
    ("relay-bad-name", INSECURE + "relays:\n  - {name: 'a#1', insecure: true}\n",
     "6: relays[0].name: invalid machine name 'a#1': use 1 to 64 letters, digits, '_', '.' or '-'"),
    ("relay-without-a-name", INSECURE + "relays:\n  - {insecure: true}\n",
     "6: relays[0]: missing required key 'name' (its machine's name)"),
    ("relay-service-wildcard", INSECURE + "relays:\n  - {name: a, insecure: true, service: 'tcp://0.0.0.0:1'}\n",
     "6: relays[0].service: 0.0.0.0 is not an address to connect to: give the service's host"),
    ("relay-zero-queue", INSECURE + "relays:\n  - {name: a, insecure: true, send_queue_mb: 0}\n",
     "6: relays[0].send_queue_mb: expected a positive integer (MiB), got 0"),
    ("relay-same-runtime-dir", "runtime_dir: run\n" + INSECURE
     + "relays:\n  - {name: a, insecure: true, runtime_dir: ./run}\n",
     "7: relays[0].runtime_dir: the same directory as runtime_dir: each part needs its own"),
    ("relay-unknown-key", INSECURE + "relays:\n  - {name: a, insecure: true, servce: b}\n",
     "6: relays[0].servce: unknown key; did you mean 'service'?"),
    ("machine-names-no-relay", INSECURE + "relays:\n  - {name: a, insecure: true}\n"
     "producers:\n  - {name: p, builtin: [], machine: b}\n",
     "8: producers[0].machine: no relay named 'b' (relays: a)"),
    ("machine-without-relays",
     "stop_when: never\nproducers:\n  - {name: p, builtin: [], machine: b}\n",
     "3: producers[0].machine: no relay named 'b' (relays: none: add relays)"),
    ("relay-is-a-reserved-actor-name",
     "stop_when: never\nproducers:\n  - {name: relay, builtin: []}\n",
     "3: producers[0].name: 'relay' is reserved; choose another name"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused(base: Path, text: str, message: str) -> None:
    assert error_of(write(base, text)) == message


def test_a_group_attached_at_runtime_names_no_machine(base: Path) -> None:
    from launch.topology_parser import parse_producer_group

    with pytest.raises(TopologyError) as e:
        parse_producer_group({"name": "p", "builtin": [], "machine": "robot1"}, base)
    assert str(e.value) == ("machine: a group attached at runtime runs on its supervisor's machine")


def test_the_reference_example_for_several_machines_parses(base: Path) -> None:
    example = REFERENCE.read_text().split("## Several machines", 1)[1]
    example = example.split("```yaml\n", 1)[1].split("```", 1)[0]
    topo = load_topology(write(base, example))
    assert [r.name for r in topo.relays] == ["robot1"]
    assert [g.name for g in topo.groups_on("robot1")] == ["camera"]
    assert topo.relay("robot1").service == "tcp://base.lan:7010"


MACHINES_EXAMPLE = (
    REFERENCE.read_text().split("## Several machines", 1)[1].split("```yaml\n", 1)[1]
).split("```", 1)[0]
EDIT = st.tuples(
    st.integers(0, len(MACHINES_EXAMPLE)),
    st.sampled_from([*TOKENS, "relays", "machine: ", "insecure: true", "tcp://", ":0", "host"]),
    st.integers(0, 20),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(EDIT, min_size=1, max_size=6))
def test_a_mutated_multi_machine_topology_is_a_topology_or_one_line_error(edits: list) -> None:
    text = MACHINES_EXAMPLE
    for position, token, cut in edits:
        position = min(position, len(text))
        text = text[:position] + token + text[position + cut :]
    try:
        topo = parse_topology(text, REPO / "examples" / "mutated.yaml")
    except TopologyError as e:
        assert "\n" not in str(e)
        return
    for relay in topo.relays:  # what parsed builds argv and names its part
        relay.argv(PY, "ipc:///m/p.sock")
        assert topo.part(relay.name).relays == (relay,)
    topo.service.argv(PY, "ipc:///r/p", "ipc:///r/c")


# -- the files of one part ---------------------------------------------------------------------


def test_each_part_loads_only_its_own_key_files(base: Path, keys: Path) -> None:
    topo = load_topology(curve(base, "robot1", "robot2"))
    check_part(topo, None)
    check_part(topo, "robot1")
    (keys / "robot2.key_secret").unlink()  # robot2's secret lives on robot2 only
    check_part(topo, None)
    check_part(topo, "robot1")
    with pytest.raises(TopologyError) as e:
        check_part(topo, "robot2")
    assert re.fullmatch(
        rf"{base}/topology.yaml: relays\[1\].key: cannot read the key file "
        rf"{keys}/robot2.key_secret: .*",
        str(e.value),
    )


def test_a_public_key_where_the_secret_belongs_is_refused(base: Path, keys: Path) -> None:
    text = curve(base, "robot1").read_text().replace("service.key_secret", "service.key")
    topo = load_topology(write(base, text))
    with pytest.raises(TopologyError) as e:
        check_part(topo, None)
    assert str(e.value) == (
        f"{base}/topology.yaml: service.relay_key: {keys}/service.key holds no secret key "
        "(use the .key_secret file)"
    )


def test_a_machine_that_names_no_relay(base: Path, keys: Path) -> None:
    topo = load_topology(curve(base, "robot1", "robot2"))
    with pytest.raises(TopologyError) as e:
        check_part(topo, "robot3")
    assert (
        str(e.value) == f"{base}/topology.yaml: no relay named 'robot3'; relays: robot1 or robot2"
    )


# -- one part, in this process -----------------------------------------------------------------


def test_each_part_is_a_topology_of_its_own(base: Path) -> None:
    path = curve(
        base,
        "robot1",
        "robot2",
        producers="""\
        producers:
          - {name: planner, builtin: []}
          - {name: camera, builtin: [], machine: robot1}
        consumers:
          - {name: all, config_text: 'duration_ms: 1', output: out.pftrace}
        """,
    )
    topo = load_topology(path)
    central = topo.part(None)
    assert [g.name for g in central.producers] == ["planner"]
    assert [c.name for c in central.consumers] == ["all"]
    assert central.service == topo.service
    robot1 = topo.part("robot1")
    assert [g.name for g in robot1.producers] == ["camera"]
    assert (robot1.consumers, robot1.relays, robot1.stop_when) == ((), (topo.relays[0],), "never")
    assert robot1.service == ServiceSpec()  # no service of its own: none of its endpoints
    assert topo.part("robot2").producers == ()
    with pytest.raises(KeyError):
        topo.part("robot3")


def test_a_relay_machine_runtime_names_the_relay_port_and_no_consumer_port(tmp_path: Path) -> None:
    from actors.endpoints import CONSUMER_ENV, PRODUCER_ENV
    from launch.control import CONTROL_ENV
    from launch.runtime import Runtime

    runtime = Runtime(tmp_path / "run", ServiceSpec(producer_endpoint="ipc:///elsewhere/p"),
                      relay=True)  # fmt: skip
    runtime.prepare()
    try:
        assert runtime.endpoints == {
            PRODUCER_ENV: f"ipc://{tmp_path}/run/producer.sock",
            CONTROL_ENV: f"ipc://{tmp_path}/run/control.sock",
        }
        assert CONSUMER_ENV not in runtime.endpoints
    finally:
        runtime.remove(control_bound=False, service_started=True)
    assert not (tmp_path / "run").exists()


def test_a_machine_parts_actors_point_at_its_relay(base: Path) -> None:
    """The relay serves the part's producer socket; the groups find it there, as they
    would find a service (TRACEBUS_PRODUCER_SOCK and --producer-endpoint)."""
    from actors.endpoints import PRODUCER_ENV
    from launch.children import producer_actors, relay_actor
    from launch.control import CONTROL_ENV

    path = curve(base, "robot1", producers="producers:\n  - {name: camera, builtin: [], "
                 "machine: robot1, count: 2}\n")  # fmt: skip
    part = load_topology(path).part("robot1")
    endpoints = {PRODUCER_ENV: "ipc:///m/producer.sock", CONTROL_ENV: "ipc:///m/control.sock"}
    relay = relay_actor(part.relays[0], endpoints, {"PATH": "/bin"}, str(base))
    assert (relay.name, relay.kind) == ("relay", "relay")
    assert relay.argv[:3] == [sys.executable, "-m", "actors.relay"]
    assert relay.argv[relay.argv.index("--producer-endpoint") + 1] == "ipc:///m/producer.sock"
    cameras = producer_actors(part.producers[0], endpoints, {"PATH": "/bin"}, str(base))
    assert [a.name for a in cameras] == ["camera#1", "camera#2"]
    for actor in cameras:
        assert actor.env[PRODUCER_ENV] == "ipc:///m/producer.sock"
        assert actor.argv[-2:] == ["--producer-endpoint", "ipc:///m/producer.sock"]


def service_state() -> Any:
    from protos import tracebus_ipc_pb2 as ipc

    state = ipc.QueryServiceStateResponse()
    state.machines.add(id=7, name="robot1", connected=True, producers=1)
    state.machines.add(id=9, name="robot2", connected=False, producers=0)
    state.producers.add(id=1, name="planner", pid=100)
    state.producers.add(id=2, name="camera", pid=200, machine_id=7)
    state.producers.add(id=3, name="ghost", pid=300, machine_id=11)  # a machine not listed
    return state


def test_list_shows_the_machines_and_each_producers_machine() -> None:
    from launch.control import format_listing
    from launch.control_server import service_listing

    listing = service_listing(service_state())
    assert listing == {
        "machines": [
            {"id": 7, "name": "robot1", "connected": True, "producers": 1},
            {"id": 9, "name": "robot2", "connected": False, "producers": 0},
        ],
        "producers": [
            {"id": 1, "name": "planner", "pid": 100, "machine": "host"},
            {"id": 2, "name": "camera", "pid": 200, "machine": "robot1"},
            {"id": 3, "name": "ghost", "pid": 300, "machine": "#11"},
        ],
    }
    actors = [{"name": "service", "kind": "service", "pid": 42, "state": "running"}]
    assert format_listing({"actors": actors, **listing}).splitlines() == [
        "actor    kind     pid  state    exit  restarts",
        "service  service  42   running  -     0",
        "",
        "machine  id  connected  producers",
        "robot1   7   yes        1",
        "robot2   9   no         0",
        "",
        "producer  id  pid  machine",
        "planner   1   100  host",
        "camera    2   200  robot1",
        "ghost     3   300  #11",
    ]


def test_list_without_machines_is_the_actors_alone() -> None:
    from launch.control import format_actors, format_listing
    from launch.control_server import service_listing
    from protos import tracebus_ipc_pb2 as ipc

    state = ipc.QueryServiceStateResponse()
    state.producers.add(id=1, name="planner", pid=100)
    assert service_listing(state) == {} == service_listing(None)
    actors = [{"name": "relay", "kind": "relay", "pid": 5, "state": "running"}]
    assert format_listing({"actors": actors}) == format_actors(actors)
    link = {"machine": "robot1", "link": "link down: no message from the service in 5 s"}
    assert format_listing({"actors": actors, **link}).splitlines()[0] == (
        "machine robot1: link down: no message from the service in 5 s"
    )


@pytest.mark.parametrize(
    ("line", "link"),
    [
        (b"[relay] link up: machine id 7", "link up: machine id 7"),
        (b"[relay] link down: the service sent 'unknown relay'\r", "link down: the service "
         "sent 'unknown relay'"),
        (b"[relay] listening: producers on ipc:///m/p, service tcp://h:1", None),
        (b"[relay] linked: x", None),
        (b"camera says [relay] link up", None),
    ],
)  # fmt: skip
def test_the_relays_link_state_comes_from_its_log_lines(line: bytes, link: str | None) -> None:
    from launch.children import relay_link

    assert relay_link(line) == link


class FakeSupervisor:
    """What Commands needs to answer `list` (launch.control_server.Supervising)."""

    def __init__(self, topology: Any, machine: str | None) -> None:
        self.topology, self.machine = topology, machine
        self.link: str | None = None
        self.actors: list[Any] = []
        self.asked = 0

    def service_state(self) -> Any:
        self.asked += 1
        return service_state()


def test_the_list_command_asks_the_service_only_with_a_relay_port(base: Path) -> None:
    from launch.control_server import Commands

    topo = load_topology(curve(base, "robot1"))
    central = FakeSupervisor(topo.part(None), None)
    reply = Commands(cast(Any, central)).on_list({"cmd": "list", "id": 1})
    assert central.asked == 1
    assert [m["name"] for m in reply["machines"]] == ["robot1", "robot2"]
    machine = FakeSupervisor(topo.part("robot1"), "robot1")
    reply = Commands(cast(Any, machine)).on_list({"cmd": "list", "id": 1})
    assert (machine.asked, reply["machine"], "machines" in reply) == (0, "robot1", False)
    assert reply["link"] == "link not up yet"
    machine.link = "link up: machine id 7"
    assert Commands(cast(Any, machine)).on_list({"cmd": "list", "id": 2})["link"] == machine.link
    plain = FakeSupervisor(load_topology(write(base, "stop_when: never\n")), None)
    reply = Commands(cast(Any, plain)).on_list({"cmd": "list", "id": 1})
    assert (plain.asked, "machines" in reply) == (0, False)


# -- supervisors with real processes -----------------------------------------------------------

HAVE_RELAY = (REPO / "actors" / "relay.py").exists()  # the RELAY part of issue 14
HAVE_RELAY_PORT = (REPO / "actors" / "relay_port.py").exists()  # the SERVICE part
needs_relay = pytest.mark.skipif(not HAVE_RELAY, reason="actors/relay.py is not in the tree yet")
needs_both = pytest.mark.skipif(
    not (HAVE_RELAY and HAVE_RELAY_PORT),
    reason="actors/relay.py or actors/relay_port.py is not in the tree yet",
)

MACHINE_TOPOLOGY = """\
stop_when: never
runtime_dir: run
service:
  relay_endpoint: tcp://127.0.0.1:{port}
  relay_key: keys/service.key_secret
  relay_clients: keys/relays
relays:
  - name: robot1
    key: keys/robot1.key_secret
    service_key: keys/service.key
    runtime_dir: run-robot1
    link_timeout_s: 60
producers:
  - {{name: planner, builtin: []}}
  - {{name: camera, builtin: [], machine: robot1}}
"""


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime() as runtime:
        yield runtime


def rt_keys(rt: Runtime) -> Path:
    directory = rt.dir / "keys"
    for name in ("service", "robot1", "robot2"):
        generate(directory, name)
    (directory / "relays").mkdir()
    for name in ("robot1", "robot2"):
        (directory / "relays" / f"{name}.key").write_bytes((directory / f"{name}.key").read_bytes())
    return directory


class FakeService:
    """The central service's relay port as a relay sees it: a CURVE ROUTER on a random
    loopback port, answering InitRelay and heartbeats, keeping what the relay sent."""

    def __init__(self, keys: Path) -> None:
        public, secret = load_pair(keys / "service.key_secret")
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.curve_server = True
        self.sock.curve_publickey, self.sock.curve_secretkey = public, secret
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.machines: dict[bytes, str] = {}  # relay routing id -> machine name
        self.producers: list[str] = []  # names in InitializeConnection, per channel

    def serve_until(self, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            assert left > 0, f"the relay did not get there: {self.machines}, {self.producers}"
            if self.sock.poll(int(left * 1000) + 1):
                self._on_message(self.sock.recv_multipart())

    def _on_message(self, frames: list[bytes]) -> None:
        relay, (channel, envelope) = frames[0], framing.split_channel(frames[1:])
        if channel:
            msg = framing.decode_relayed_producer(envelope)
            if msg.HasField("initialize_connection"):
                self.producers.append(msg.initialize_connection.producer_name)
            return
        control = framing.decode_from_relay(envelope)
        answer = ipc.ServiceToRelay(request_id=control.request_id)
        if control.HasField("init_relay"):
            self.machines[relay] = control.init_relay.machine_name
            hello = ipc.HelloReply(protocol_version=ipc.PROTOCOL_VERSION)
            answer.init_relay.CopyFrom(ipc.InitRelayResponse(hello=hello, machine_id=7))
        elif control.HasField("heartbeat"):
            answer.heartbeat.SetInParent()
        else:
            return
        self.sock.send_multipart([relay, *framing.encode_channel(0, answer)])

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def start_machine(rt: Runtime, port: int, machine: str = "robot1") -> Proc:
    path = rt.write_file("topology.yaml", MACHINE_TOPOLOGY.format(port=port))
    return rt.start_supervisor(path, "--machine", machine)


def listing(rt: Runtime, part: str) -> dict[str, Any]:
    with SupervisorClient(f"ipc://{rt.dir}/{part}/control.sock") as client:
        return client.listing()


@needs_relay
def test_a_machine_part_runs_its_relay_and_its_groups_behind_it(rt: Runtime) -> None:
    fake = FakeService(rt_keys(rt))
    try:
        sup = start_machine(rt, fake.port)
        rt.wait_output(sup, r"supervisor \| relay ready on ipc://.*/run-robot1/producer.sock$")
        fake.serve_until(lambda: "camera" in fake.producers, 30)
        assert list(fake.machines.values()) == ["robot1"]  # over CURVE, with the name
        up = wait_for(lambda: listing(rt, "run-robot1")["link"].startswith("link up"), 30, "up")
        answer = listing(rt, "run-robot1")
        assert up and answer["link"] == "link up: machine id 7"  # the fake's id
        states = {a["name"]: (a["kind"], a["state"]) for a in answer["actors"]}
        assert states == {"relay": ("relay", "running"), "camera#1": ("producer", "running")}
        assert answer["machine"] == "robot1"  # and planner is the central part's
        with SupervisorClient(f"ipc://{rt.dir}/run-robot1/control.sock") as client:
            client.stop()
        assert rt.finish(sup) == 0
    finally:
        fake.close()
    out = rt.output(sup)
    assert "the relay exited" not in out
    assert not (rt.dir / "run-robot1" / "producer.sock").exists()


@needs_relay
def test_a_relay_that_restarts_on_failure_gets_its_producers_back(rt: Runtime) -> None:
    """relays[].restart: the relay SIGKILLed is started again on the same socket; the
    service sees a new InitRelay and camera's producer connect again through it."""
    fake = FakeService(rt_keys(rt))
    try:
        text = MACHINE_TOPOLOGY.format(port=fake.port).replace(
            "    link_timeout_s: 60\n", "    link_timeout_s: 60\n    restart: on-failure\n"
        )
        sup = rt.start_supervisor(rt.write_file("topology.yaml", text), "--machine", "robot1")
        fake.serve_until(lambda: fake.producers == ["camera"], 30)
        relay_pid = {a["name"]: a["pid"] for a in listing(rt, "run-robot1")["actors"]}["relay"]
        os.kill(relay_pid, signal.SIGKILL)
        rt.wait_output(sup, r"restarting relay in [\d.]+ s \(restart 1 of 5\)")
        fake.serve_until(lambda: fake.producers == ["camera", "camera"], 60)
        assert len(fake.machines) == 2  # two relay processes, two routing ids
        actors = {a["name"]: a for a in listing(rt, "run-robot1")["actors"]}
        assert (actors["relay"]["state"], actors["relay"]["restarts"]) == ("running", 1)
        assert actors["relay"]["pid"] != relay_pid
        assert actors["camera#1"]["restarts"] == 0  # the producer itself kept running
        with SupervisorClient(f"ipc://{rt.dir}/run-robot1/control.sock") as client:
            client.stop()
        assert rt.finish(sup) == 0
    finally:
        fake.close()


@needs_relay
def test_the_relay_dying_ends_its_machine_part(rt: Runtime) -> None:
    fake = FakeService(rt_keys(rt))
    try:
        sup = start_machine(rt, fake.port)
        rt.wait_output(sup, r"camera#1 \(pid \d+\)|started camera#1")
        relay_pid = {a["name"]: a["pid"] for a in listing(rt, "run-robot1")["actors"]}["relay"]
        os.kill(relay_pid, signal.SIGKILL)
        assert rt.finish(sup) == 1
    finally:
        fake.close()
    out = rt.output(sup)
    assert "stopping (the relay exited)" in out
    assert re.search(r"relay .* exited: killed by SIGKILL", out)


def test_a_machine_that_names_no_relay_starts_nothing(rt: Runtime) -> None:
    rt_keys(rt)
    path = rt.write_file("topology.yaml", MACHINE_TOPOLOGY.format(port=7010))
    result = rt.run_supervisor(path, "--machine", "robot3")
    assert result.returncode == 2
    assert result.stderr.strip() == f"{path}: no relay named 'robot3'; relays: robot1"
    assert not (rt.dir / "run").exists() and not (rt.dir / "run-robot1").exists()


def test_a_part_without_its_key_file_starts_nothing(rt: Runtime) -> None:
    keys = rt_keys(rt)
    (keys / "robot1.key_secret").unlink()  # on the central machine: not needed there
    path = rt.write_file("topology.yaml", MACHINE_TOPOLOGY.format(port=7010))
    result = rt.run_supervisor(path, "--machine", "robot1")
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: relays[0].key: cannot read the key file ")
    assert not (rt.dir / "run-robot1").exists()
    (keys / "service.key_secret").write_text("not a certificate\n")
    result = rt.run_supervisor(path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: service.relay_key: ")
    assert not (rt.dir / "run").exists()


CENTRAL_TOPOLOGY = MACHINE_TOPOLOGY.replace("    link_timeout_s: 60\n", "")
ALL_MACHINES = """\
buffers { size_kb: 4096 }
data_sources {
  config { name: "tracebus.synthetic" for_testing { message_count: 20 message_size: 64 } }
}
trace_all_machines: true
duration_ms: 1500
"""


def free_port() -> int:
    """A loopback TCP port free now (the service CLI binds no port 0); a test retries
    when another process took it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_central(rt: Runtime) -> tuple[Proc, Path]:
    """The central part on a free port, once its service answers and planner registered."""
    for _attempt in range(3):
        path = rt.write_file("topology.yaml", CENTRAL_TOPOLOGY.format(port=free_port()))
        sup = rt.start_supervisor(path)
        match = rt.wait_output(sup, r"planner#1 registered|stopping \(.*\)$", timeout=60)
        if match.group(0).startswith("planner"):
            return sup, path
        code = rt.finish(sup)
        assert "Address already in use" in rt.output(sup), f"exit {code}: {rt.output(sup)}"
    raise AssertionError("no free port for the relay endpoint in three tries")


@needs_both
def test_one_topology_on_two_machines_records_both(rt: Runtime) -> None:
    """The central part and robot1's part of one file, each with its supervisor (on one
    host here): camera's packets reach the central trace stamped with robot1's machine
    id, planner's carry none; ctl list shows the machine and where each producer runs."""
    rt_keys(rt)
    central, path = start_central(rt)
    machine = rt.start_supervisor(path, "--machine", "robot1")

    def connected() -> dict[str, Any] | None:
        answer = listing(rt, "run")
        on = {p["name"]: p["machine"] for p in answer.get("producers", [])}
        return answer if on.get("camera") == "robot1" else None

    answer = wait_for(connected, 60, "camera connected through robot1's relay")
    (robot1,) = answer["machines"]
    assert (robot1["name"], robot1["connected"], robot1["producers"]) == ("robot1", True, 1)
    ctl = [sys.executable, "-m", "launch.ctl", "--control", f"ipc://{rt.dir}/run/control.sock"]
    shown = rt.run([*ctl, "list"])
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"^robot1 +{robot1['id']} +yes +1$", shown.stdout, re.MULTILINE)
    assert re.search(r"^camera +\d+ +\d+ +robot1$", shown.stdout, re.MULTILINE)
    assert re.search(r"^planner +\d+ +\d+ +host$", shown.stdout, re.MULTILINE)

    config = rt.write_file("all.cfg", ALL_MACHINES)
    out = rt.dir / "all.pftrace"
    consumer = [sys.executable, "-m", "actors.consumer", "-c", str(config), "--txt", "-o", str(out)]
    recorded = rt.run([*consumer, "--consumer-endpoint", f"ipc://{rt.dir}/run/consumer.sock"])
    assert recorded.returncode == 0, recorded.stderr
    trace = pb.Trace.FromString(out.read_bytes())
    pids = {p["name"]: p["pid"] for p in answer["producers"]}
    tests = [p for p in trace.packet if p.HasField("for_testing")]
    camera = [p for p in tests if p.trusted_pid == pids["camera"]]
    planner = [p for p in tests if p.trusted_pid == pids["planner"]]
    assert len(camera) == 20 and len(planner) == 20
    assert {p.machine_id for p in camera} == {robot1["id"]}
    assert not any(p.HasField("machine_id") for p in planner)

    for part, proc in (("run-robot1", machine), ("run", central)):
        with SupervisorClient(f"ipc://{rt.dir}/{part}/control.sock") as client:
            client.stop()
        assert rt.finish(proc) == 0, rt.output(proc)


@needs_both
def test_a_machine_whose_key_the_service_does_not_accept_ends_with_why(rt: Runtime) -> None:
    """robot1's public key is not in relay_clients: its relay is refused, says which
    list to put it in and exits, so robot1's part ends (exit 1); the service counts it
    and keeps running."""
    keys = rt_keys(rt)
    (keys / "relays" / "robot1.key").unlink()
    central, path = start_central(rt)
    machine = rt.start_supervisor(path, "--machine", "robot1")
    assert rt.finish(machine) == 1
    out = rt.output(machine)
    assert "refused this relay's key" in out and "stopping (the relay exited)" in out
    with Consumer.connect(f"ipc://{rt.dir}/run/consumer.sock", timeout=10) as consumer:
        state = consumer.query_state(timeout=10)
    assert state.refusals["relay_key_not_accepted"] >= 1
    assert not state.machines  # never connected: no machine
    with SupervisorClient(f"ipc://{rt.dir}/run/control.sock") as client:
        client.stop()
    assert rt.finish(central) == 0, rt.output(central)
