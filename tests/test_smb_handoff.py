"""The SMB handed over by fd passing (issue 11, item 1), with real processes.

- The service publishes no path to an SMB: setup_tracing carries a handoff
  socket and a one-time token; the token is good for the process the kernel
  says asked for it, once, and for nobody else.
- The service is non-dumpable: a process of its user (root without
  CAP_SYS_PTRACE when the tests run as root) cannot list or open
  /proc/<service pid>/fd, nor read its memory or maps.
- Hostile clients of the handoff socket (silent connections past the bound,
  garbage tokens) cost the service nothing lasting: it answers at once, closes
  the silent ones by their deadline, and still hands real producers their SMB.
- A producer of another uid (`nobody`) against a service started with
  --allow-other-users: it registers and records, its packets carry its uid, and
  it cannot reach the consumer port, the service's fds or an SMB not its own.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.endpoints import make_shared_dir
from actors.loop import Loop
from actors.smb_handoff import (
    MAX_PENDING,
    OFFER_TTL_S,
    PENDING_TIMEOUT_S,
    SmbHandoff,
    receive_smb,
)
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from shm.region import REQUIRED_SEALS, MemfdRegion, RegionError
from tests.processes import PYTHON, Runtime
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

RAW_CONFIG = """
buffers { size_kb: 256 }
data_sources { config { name: "raw.ds" } }
duration_ms: 120000
"""
SYNTHETIC_LONG = """
buffers { size_kb: 256 }
data_sources { config { name: "tracebus.synthetic" for_testing { message_count: 10 } } }
duration_ms: 120000
"""
NOBODY = 65534

# Run by another process: present a token on the handoff socket; print the reply.
CLAIM_SCRIPT = r"""
import sys
from actors.smb_handoff import receive_smb
from shm.region import RegionError
try:
    region = receive_smb(sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3]))
except RegionError as e:
    print("REFUSED", e)
else:
    print("MAPPED", region.size)
"""

# A process of the service's user without CAP_SYS_PTRACE (dropped if we are root):
# what of the service's /proc entries it can open.
PROBE_SCRIPT = r"""
import ctypes, json, os, sys
pid = int(sys.argv[1])
if os.geteuid() == 0:  # root bypasses the dumpable check through CAP_SYS_PTRACE: drop all
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()) != 0:
        sys.exit(f"capset: errno {ctypes.get_errno()}")
opened, listing = [], "listed"
try:
    os.listdir(f"/proc/{pid}/fd")
except OSError as e:
    listing = type(e).__name__
for n in range(256):
    try:
        os.close(os.open(f"/proc/{pid}/fd/{n}", os.O_RDWR))
        opened.append(f"fd/{n}")
    except OSError:
        pass
for name in ("mem", "maps", "map_files"):
    try:
        if name == "map_files":
            os.listdir(f"/proc/{pid}/map_files")
        else:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                f.read(1)
        opened.append(name)
    except OSError:
        pass
print(json.dumps({"opened": opened, "listing": listing}))
"""


class RawProducer:
    """A producer port connection from this test process, speaking the protocol by hand."""

    def __init__(self, endpoint: str, name: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.rid = 0
        hello = dict(protocol_version=ipc.PROTOCOL_VERSION, client_name=name)
        self.send(initialize_connection=dict(hello=hello, producer_name=name))
        assert self.recv("initialize_connection").initialize_connection.producer_id
        self.send(register_data_source=dict(descriptor=dict(name="raw.ds")))
        assert not self.recv("register_data_source").register_data_source.error

    def send(self, **msg: object) -> None:
        self.rid += 1
        env = ipc.ProducerToService(request_id=self.rid, **msg)  # type: ignore[arg-type]
        self.sock.send_multipart(framing.encode(env))

    def recv(self, kind: str, timeout: float = 15.0) -> ipc.ServiceToProducer:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            msg = framing.decode_to_producer(self.sock.recv_multipart())
            if msg.WhichOneof("msg") == kind:
                return msg
            assert msg.WhichOneof("msg") != "error", msg
        raise AssertionError(f"no {kind} from the service")

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def raw(rt: Runtime) -> Iterator[RawProducer]:
    rt.start_service()
    producer = RawProducer(rt.producer_endpoint, "raw")
    try:
        yield producer
    finally:
        producer.close()


def claim_elsewhere(rt: Runtime, setup: ipc.SetupTracing) -> str:
    """Present setup's token from another process; its one line of output."""
    argv = [PYTHON, "-c", CLAIM_SCRIPT, setup.shm_socket, setup.shm_token.hex()]
    result = rt.run([*argv, str(setup.shm_size_bytes)], timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def service_fd_count(rt: Runtime) -> int:
    return len(os.listdir(f"/proc/{rt.service.pid}/fd"))  # we are root, or its user


def test_setup_tracing_names_no_path_and_the_token_serves_its_process_once(
    rt: Runtime, raw: RawProducer
) -> None:
    rt.consumer().enable(RAW_CONFIG)
    setup = raw.recv("setup_tracing").setup_tracing
    assert setup.shm_path == "", "no path to an SMB is published"
    assert len(setup.shm_token) == 16 and setup.shm_socket == f"{rt.dir}/p.smb"
    assert (os.stat(setup.shm_socket).st_mode & 0o777) == 0o600  # its user's alone
    assert (os.stat(f"{rt.dir}/p").st_mode & 0o777) == 0o600  # so is the producer port

    region = receive_smb(setup.shm_socket, setup.shm_token, setup.shm_size_bytes)
    try:
        import fcntl

        assert region.size == setup.shm_size_bytes
        assert fcntl.fcntl(region.fd, fcntl.F_GET_SEALS) & REQUIRED_SEALS == REQUIRED_SEALS
    finally:
        region.close()
    with pytest.raises(RegionError, match="unknown, used or expired"):
        receive_smb(setup.shm_socket, setup.shm_token, setup.shm_size_bytes)  # once only


def test_a_token_presented_by_another_process_gets_no_smb(rt: Runtime, raw: RawProducer) -> None:
    rt.consumer().enable(RAW_CONFIG)
    setup = raw.recv("setup_tracing").setup_tracing
    out = claim_elsewhere(rt, setup)
    assert out.startswith("REFUSED") and "issued to another process" in out, out
    # The token leaked, so it is spent: not even its own process gets the SMB now.
    with pytest.raises(RegionError, match="unknown, used or expired"):
        receive_smb(setup.shm_socket, setup.shm_token, setup.shm_size_bytes)
    assert rt.control.query_state(timeout=5).producers, "the service lives on"
    wait_for(lambda: "refused an SMB to pid" in rt.logs(), 10, "the refusal logged")


def test_the_services_fds_memory_and_maps_are_closed_to_its_own_user(rt: Runtime) -> None:
    rt.start_service()
    producer = rt.start_producer("victim")
    rt.consumer().enable(SYNTHETIC_LONG)
    wait_for(lambda: "mapped the SMB" in rt.logs(), 30, "the victim to map its SMB")
    from tests.processes import smb_inodes_open

    assert smb_inodes_open(rt.service.pid), "the service holds the victim's memfd"
    result = rt.run([PYTHON, "-c", PROBE_SCRIPT, str(rt.service.pid)], timeout=60)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["opened"] == []
    if os.getuid() != 0:  # root (without caps) still owns the directory: it may list it
        assert probe["listing"] == "PermissionError"
    rt.assert_running(producer, "the victim")


# Another process of the user: holds many silent connections to the handoff
# socket (the service must bound them and close them by their deadline), and
# presents garbage; prints what it saw, then waits for its stdin to close.
FLOOD_SCRIPT = r"""
import json, os, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
silent = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)  # blocking: waits its turn in the backlog
    silent.append(s)
answers = []
for garbage in (b"", b"x", bytes(16), os.urandom(16), os.urandom(4096)):
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(path)
        s.settimeout(10)
        try:  # past the bounds the service closes it: at once, or while we send
            s.send(garbage) if garbage else s.shutdown(socket.SHUT_WR)
            reply, fds, _flags, _addr = socket.recv_fds(s, 256, 1)
        except (ConnectionResetError, BrokenPipeError):
            reply, fds = b"(reset)", []
        answers.append([reply.decode(errors="replace"), len(fds)])
print(json.dumps(answers), flush=True)
sys.stdin.read()
"""


def test_hostile_handoff_clients_cost_the_service_nothing_lasting(
    rt: Runtime, raw: RawProducer
) -> None:
    fds_before = service_fd_count(rt)
    flood = [PYTHON, "-c", FLOOD_SCRIPT, f"{rt.dir}/p.smb", str(MAX_PENDING * 2)]
    proc = rt.spawn("flood", flood[1:], lines=True)
    answers = json.loads(rt.wait_line(proc, prefix="[", timeout=60))
    for reply, fds in answers:  # an error, or closed unanswered: never an fd
        assert fds == 0 and (reply.startswith("error:") or reply in ("", "(reset)")), answers
    start = time.monotonic()
    rt.control.query_state(timeout=5)
    assert time.monotonic() - start < 1.0, "the service answers at once"
    assert service_fd_count(rt) <= fds_before + MAX_PENDING + 4, "pending connections bounded"
    # While the flood holds its connections, a real producer gets its SMB.
    rt.consumer().enable(RAW_CONFIG)
    setup = raw.recv("setup_tracing").setup_tracing
    receive_smb(setup.shm_socket, setup.shm_token, setup.shm_size_bytes).close()
    # Past their deadline the silent connections are closed by the service.
    wait_for(
        lambda: service_fd_count(rt) <= fds_before + 4, PENDING_TIMEOUT_S + 15,
        "the silent connections closed",
    )  # fmt: skip
    rt.assert_running(rt.service, "the service")


# -- a producer of another user ----------------------------------------------------------

OTHER_USER_SCRIPT = r"""
import json, logging, os, socket, sys
# The producer is made (its modules imported) before the privileges go: the
# checkout may not be readable by nobody (here the interpreter's library is not).
from actors.data_sources import DemoTimelineDataSource, SyntheticDataSource
from actors.producer import Producer
from actors.smb_handoff import receive_smb
from shm.region import RegionError

endpoint, consumer_path, handoff_path, service_pid, uid = sys.argv[1:6]
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
producer = Producer("other-user", endpoint=endpoint)
producer.register(SyntheticDataSource)
producer.register(DemoTimelineDataSource)
os.setgroups([])
os.setgid(int(uid))
os.setuid(int(uid))
probes = {"uid": os.getuid()}
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
    try:
        s.connect(consumer_path)
        probes["consumer"] = "connected"
    except OSError as e:
        probes["consumer"] = type(e).__name__
try:
    os.listdir(f"/proc/{service_pid}/fd")
    probes["service_fds"] = "listed"
except OSError as e:
    probes["service_fds"] = type(e).__name__
probes["fds_opened"] = []
for n in range(256):
    try:
        os.close(os.open(f"/proc/{service_pid}/fd/{n}", os.O_RDONLY))
        probes["fds_opened"].append(n)
    except OSError:
        pass
try:
    receive_smb(handoff_path, os.urandom(16), 4096)
    probes["guessed_token"] = "mapped"
except RegionError as e:
    probes["guessed_token"] = str(e)
print(json.dumps(probes), flush=True)
sys.exit(producer.run())
"""

OTHER_USER_CONFIG = """
buffers { size_kb: 256 }
data_sources { config { name: "tracebus.synthetic" for_testing { message_count: 25 } }
               producer_name_filter: "other-user" }
duration_ms: 1500
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tbs-", dir="/tmp"))
    path.chmod(0o755)  # others traverse it, as the service's shared directory would be
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.getuid() != 0, reason="running a producer as another uid needs root")
def test_a_producer_of_another_user_records_with_its_uid_and_reaches_nothing_else(
    rt: Runtime, shared_dir: Path
) -> None:
    endpoint = f"ipc://{shared_dir}/p"
    rt.start_service("--allow-other-users", "--producer-endpoint", endpoint)
    handoff = f"{shared_dir}/p.smb"
    assert (os.stat(handoff).st_mode & 0o777) == 0o666
    assert (os.stat(f"{shared_dir}/p").st_mode & 0o777) == 0o666
    consumer_path = rt.consumer_endpoint[len("ipc://") :]
    argv = ["-c", OTHER_USER_SCRIPT, endpoint, consumer_path, handoff, str(rt.service.pid)]
    proc = rt.spawn("other-user", [*argv, str(NOBODY)], lines=True)
    probes = json.loads(rt.wait_line(proc, prefix="{", timeout=30))
    assert probes["uid"] == NOBODY
    assert probes["consumer"] == "PermissionError", "the consumer port is owner-only"
    assert probes["service_fds"] == "PermissionError" and probes["fds_opened"] == []
    assert "unknown, used or expired" in probes["guessed_token"]

    def listed() -> object:
        rt.assert_running(proc, "the other user's producer")
        state = rt.control.query_state(timeout=5)
        return next((p for p in state.producers if p.pid == proc.pid), None)

    info = wait_for(listed, 30, "the other user's producer to register")
    assert info.uid == NOBODY
    result, out = rt.record(OTHER_USER_CONFIG, "other")
    assert result.returncode == 0, result.stderr
    trace = pb.Trace.FromString(out.read_bytes())
    ours = [p for p in trace.packet if p.HasField("for_testing")]
    assert len(ours) == 25, result.stderr  # its SMB was handed over to it and written
    assert {p.trusted_uid for p in ours} == {NOBODY}
    assert {p.trusted_pid for p in ours} == {proc.pid}


# -- the handoff's own rules, in one process (a loop thread serves the socket) ---------------


class Clock:
    def __init__(self) -> None:
        self.ns = time.monotonic_ns()

    def __call__(self) -> int:
        return self.ns


@pytest.fixture
def handoff(tmp_path: Path) -> Iterator[tuple[SmbHandoff, Clock]]:
    clock = Clock()
    loop = Loop(clock)
    hand = SmbHandoff(loop, tmp_path / "h.smb", lambda _text: None, others_may_connect=False)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        yield hand, clock
    finally:
        loop.call_soon(loop.stop)
        thread.join(timeout=10)
        hand.close()
        loop.close()


def test_an_expired_or_withdrawn_offer_hands_nothing_over(handoff) -> None:
    hand, clock = handoff
    with MemfdRegion.create(4096) as region:
        assert region.fd is not None
        expired = hand.offer(region.fd, os.getpid(), os.getuid())
        withdrawn = hand.offer(region.fd, os.getpid(), os.getuid())
        good = hand.offer(region.fd, os.getpid(), os.getuid())
        hand.withdraw(withdrawn)
        with pytest.raises(RegionError, match="unknown, used or expired"):
            receive_smb(str(hand.path), withdrawn, 4096)
        received = receive_smb(str(hand.path), good, 4096)
        received.close()
        clock.ns += int(OFFER_TTL_S * 1e9) + 1
        with pytest.raises(RegionError, match="unknown, used or expired"):
            receive_smb(str(hand.path), expired, 4096)


def test_a_wrong_size_or_unsealed_fd_is_not_mapped(handoff, tmp_path: Path) -> None:
    hand, _clock = handoff
    with MemfdRegion.create(8192) as region:
        assert region.fd is not None
        token = hand.offer(region.fd, os.getpid(), os.getuid())
        with pytest.raises(RegionError, match="expected 4096"):
            receive_smb(str(hand.path), token, 4096)  # the producer checks what it got
    with open(tmp_path / "plain", "wb+") as plain:
        plain.truncate(4096)
        token = hand.offer(plain.fileno(), os.getpid(), os.getuid())
        with pytest.raises(RegionError, match="sealable memfd"):
            receive_smb(str(hand.path), token, 4096)


# -- the shared producer directory (--allow-other-users) ---------------------------------------


def test_the_shared_directory_is_ours_and_traversable_only(tmp_path: Path) -> None:
    made = make_shared_dir(tmp_path / "shared")
    assert made.stat().st_mode & 0o777 == 0o755
    (tmp_path / "loose").mkdir(mode=0o777)
    (tmp_path / "loose").chmod(0o777)
    assert make_shared_dir(tmp_path / "loose").stat().st_mode & 0o777 == 0o755
    (tmp_path / "planted").symlink_to(tmp_path / "shared")  # e.g. someone's link in /tmp
    with pytest.raises(RuntimeError, match="not a directory"):
        make_shared_dir(tmp_path / "planted")


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another uid needs root")
def test_a_shared_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(RuntimeError, match=f"belongs to uid {NOBODY}"):
        make_shared_dir(theirs)
