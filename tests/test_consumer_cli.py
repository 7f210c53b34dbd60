"""The consumer shell: `python -m actors.consumer` as a real subprocess, and the Consumer
API in this process, each against a fake consumer port: a ROUTER socket in a thread
that answers with scripted replies. Nothing here needs the real service.

Files and the fake port live in the process harness's runtime (tests/processes.py,
fixture `rt`): its directory, its consumer endpoint, and its cleanup, which reaps
every CLI it started and fails the test if anything is left behind.
"""

from __future__ import annotations

import collections
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from google.protobuf import text_format
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.consumer import Consumer, TraceFile, load_config
from actors.core.configs import textproto_error
from actors.core.consumer_core import (
    ConfigError,
    ProtocolMismatch,
    RequestTimeout,
    ServiceError,
    SessionError,
    frame_packet,
)
from launch.script_runner import Tracing
from protos import framing
from protos import tracebus_ipc_pb2 as ipc
from tests.processes import REPO, Proc, Runtime

pytestmark = pytest.mark.timeout(60)

CONFIGS = REPO / "examples" / "configs"
CONFIG_TEXT = """
buffers { size_kb: 256 fill_policy: RING_BUFFER }
buffers { size_kb: 64 fill_policy: DISCARD }
data_sources { config { name: "tracebus.synthetic" for_testing { message_count: 10 } } }
duration_ms: 100
"""


def make_packets() -> list[bytes]:
    """A service packet, two producers' packets (one with a loss mark) and a big one."""
    service = pb.TracePacket(trusted_pid=1, trusted_uid=0, trusted_packet_sequence_id=1)
    service.trace_config.duration_ms = 100
    packets = [service.SerializeToString()]
    for i in range(40):
        pid, seq = (101, 2) if i % 2 else (202, 3)
        packet = pb.TracePacket(trusted_pid=pid, trusted_uid=1000, trusted_packet_sequence_id=seq)
        packet.for_testing.counter = i
        packet.previous_packet_dropped = int(i == 7)
        packets.append(packet.SerializeToString())
    big = pb.TracePacket(trusted_pid=101, trusted_uid=1000, trusted_packet_sequence_id=2)
    big.for_testing.str = "z" * 100_000
    packets.append(big.SerializeToString())
    return packets


def read_replies(packets: list[bytes]) -> list[dict]:
    """Slices over several replies: small packets whole, the big one in three slices
    over three replies, then an empty last reply."""
    *small, big = packets
    cut = len(big) // 3
    whole = [{"data": p, "last_slice_for_packet": True} for p in small]
    return [
        {"slices": whole[:20], "has_more": True},
        {"slices": whole[20:] + [{"data": big[:cut]}], "has_more": True},
        {"slices": [{"data": big[cut : 2 * cut]}], "has_more": True},
        {"slices": [{"data": big[2 * cut :], "last_slice_for_packet": True}], "has_more": True},
        {"slices": [], "has_more": False},
    ]


def make_stats() -> pb.TraceStats:
    stats = pb.TraceStats(invalid_packets=1)
    stats.buffer_stats.add(buffer_size=262144, chunks_written=12, chunks_overwritten=2)
    stats.buffer_stats.add(buffer_size=65536, chunks_written=1)
    return stats


class FakeService:
    """A scripted consumer port. Hooks run in its thread when a request arrives."""

    def __init__(self, endpoint: str, **script) -> None:
        self.endpoint = endpoint
        self.packets = script.get("packets", make_packets())
        self.ends_by_itself = script.get("ends_by_itself", True)
        self.enable_error = script.get("enable_error", "")
        self.vanish_after_start = script.get("vanish_after_start", False)
        # Send this many read replies (the last one cuts the big packet), then go away.
        self.vanish_mid_read: int | None = script.get("vanish_mid_read")
        self.silent_mid_read = script.get("silent_mid_read", False)  # ... or stop answering
        self.protocol_version = script.get("protocol_version", ipc.PROTOCOL_VERSION)
        self.unsupported = script.get("unsupported", ["trace_filter"])
        self.hooks: dict[str, Callable[[], None]] = script.get("hooks", {})
        self.requests: list[str] = []
        self.seen: dict[str, threading.Event] = collections.defaultdict(threading.Event)
        self.config: pb.TraceConfig | None = None
        self.error: BaseException | None = None
        self._enable_id = 0
        self._stop = threading.Event()
        self._sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(endpoint)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeService:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if not self._sock.closed:
            self._sock.close(linger=0)
        if self.error is not None:
            raise self.error

    def _serve(self) -> None:
        try:
            while not self._stop.is_set() and not self._sock.closed:
                if self._sock.poll(50):
                    identity, *frames = self._sock.recv_multipart()
                    self._handle(identity, framing.decode_from_consumer(frames))
        except BaseException as e:  # surfaced by __exit__
            self.error = e

    def _send(self, identity: bytes, request_id: int, **fields) -> None:
        message = ipc.ServiceToConsumer(request_id=request_id, **fields)
        self._sock.send_multipart(framing.encode_routed(identity, message))

    def _handle(self, identity: bytes, message: ipc.ConsumerToService) -> None:
        which, rid = message.WhichOneof("msg"), message.request_id
        self.requests.append(which)
        if which in self.hooks:
            self.hooks[which]()
        send = lambda **fields: self._send(identity, rid, **fields)  # noqa: E731
        if which == "hello":
            send(hello={"protocol_version": self.protocol_version})
        elif which == "enable_tracing":
            self._enable(identity, rid, message.enable_tracing.trace_config)
        elif which == "flush":
            send(flush={"success": True})
        elif which == "disable_tracing":
            send(ack={})
            self._send(identity, self._enable_id, enable_tracing={"disabled": True})
        elif which == "read_buffers":
            replies = read_replies(self.packets)
            for r in replies[: self.vanish_mid_read]:
                send(read_buffers=r)
            if self.vanish_mid_read is not None and not self.silent_mid_read:
                self._sock.close(linger=5000)  # what was sent still arrives, then it is gone
        elif which == "get_trace_stats":
            send(trace_stats={"trace_stats": make_stats().SerializeToString()})
        elif which == "query_service_state":
            producers = [{"id": 1, "name": "alpha", "pid": 101}, {"id": 2, "name": "beta"}]
            send(service_state={"producers": producers})
        elif which == "observe_events":
            send(ack={})
            send(events={"all_data_sources_started": True})
        elif which in ("free_buffers", "start_tracing"):
            send(ack={})
        self.seen[which].set()

    def _enable(self, identity: bytes, rid: int, config: bytes) -> None:
        self.config = pb.TraceConfig.FromString(config)
        if self.enable_error:
            reply = {"disabled": True, "error": self.enable_error}
            self._send(identity, rid, enable_tracing=reply)
            return
        self._enable_id = rid
        first = {"started": True, "session_id": 7, "unsupported_fields": self.unsupported}
        self._send(identity, rid, enable_tracing=first)
        if self.vanish_after_start:
            self._sock.close(linger=0)
        elif self.ends_by_itself:  # as if duration_ms passed
            self._send(identity, rid, enable_tracing={"disabled": True})


def run_cli(rt: Runtime, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `python -m actors.consumer ARGS` in the runtime (no TRACEBUS_* variable but
    those in `env`) to its end: its exit code and stderr."""
    return finish(rt, rt.start_consumer_cli(*args, env=env))


def finish(rt: Runtime, proc: Proc) -> tuple[int, str]:
    """Wait for the CLI to exit (killed after 30 s): its exit code and stderr."""
    _, err = rt.communicate(proc, timeout=30)
    return proc.returncode, err


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def write_config(directory: Path, text: str = CONFIG_TEXT, name: str = "cfg.pbtxt") -> Path:
    path = directory / name
    path.write_text(text)
    return path


# -- the CLI ---------------------------------------------------------------------------------------


def test_records_a_session_and_replaces_the_output_only_at_the_end(rt: Runtime):
    out = rt.dir / "trace.pftrace"
    out.write_bytes(b"old trace")
    config = write_config(rt.dir)

    at_free: list[tuple[bytes, list[str]]] = []  # the output and temp files, at the end

    def on_free() -> None:
        at_free.append((out.read_bytes(), temp_files(rt.dir)))

    with FakeService(rt.consumer_endpoint, hooks={"free_buffers": on_free}) as fake:
        env = {"TRACEBUS_CONSUMER_SOCK": rt.consumer_endpoint}
        code, err = run_cli(rt, "-c", str(config), "--txt", "-o", str(out), env=env)
    assert code == 0, err
    [(old, temps)] = at_free
    assert old == b"old trace", "the existing output is replaced only at the end"
    assert len(temps) == 1 and temps[0].startswith(".trace.pftrace."), temps
    assert temp_files(rt.dir) == []
    packets = make_packets()
    data = out.read_bytes()
    assert data == b"".join(map(frame_packet, packets))
    trace = pb.Trace.FromString(data)
    assert [p.SerializeToString() for p in trace.packet] == packets
    assert fake.config == load_config(config)
    assert fake.requests[:2] == ["hello", "enable_tracing"]
    assert fake.requests[-1] == "free_buffers" and "flush" not in fake.requests
    assert "read_buffers" in fake.requests and "get_trace_stats" in fake.requests
    assert "does not implement these config fields: trace_filter" in err
    assert f"wrote {len(packets)} packets" in err and "session 7" in err
    assert re.search(r"read back [\d.]+ KiB in [\d.]+ s", err), err
    assert "alpha" in err and "(producer gone)" in err and "(tracing service)" in err
    assert "buffer 0: chunks_overwritten 2" in err and "invalid_packets 1" in err
    assert "previous_packet_dropped: 1 packets" in err
    assert "#1 DISCARD" in err


def test_binary_config_and_endpoint_flag(rt: Runtime):
    config = rt.dir / "cfg.bin"
    config.write_bytes(load_config(CONFIG_TEXT).SerializeToString())
    out = rt.dir / "t.pftrace"
    with FakeService(rt.consumer_endpoint, unsupported=[]):
        code, err = run_cli(
            rt, "-c", str(config), "-o", str(out), "--consumer-endpoint", rt.consumer_endpoint
        )
    assert code == 0, err
    assert len(pb.Trace.FromString(out.read_bytes()).packet) == len(make_packets())
    assert "does not implement" not in err


@pytest.mark.parametrize(
    "text, txt, expected",
    [
        ("buffers { size_kb: 64 }\nbufers: 3\n", True, 'cfg.pbtxt:2:1: Message type "perfetto'),
        ("duration_ms: 'soon'\n", True, "cfg.pbtxt:1:14:"),
        ("buffers { size_kb: 64 }\n", False, "pass --txt"),
    ],
)
def test_bad_config_exits_2_with_the_parser_message(rt: Runtime, text, txt, expected):
    out = rt.dir / "t.pftrace"
    out.write_bytes(b"old")
    args = ["-c", str(write_config(rt.dir, text)), "-o", str(out)] + (["--txt"] if txt else [])
    code, err = run_cli(rt, *args)
    assert code == 2, err
    assert expected in err
    assert out.read_bytes() == b"old" and temp_files(rt.dir) == []


def test_usage_errors_exit_2(rt: Runtime):
    code, err = run_cli(rt, "-c", str(write_config(rt.dir)))
    assert code == 2 and "-o" in err
    missing_dir = rt.dir / "nope" / "t.pftrace"
    code, err = run_cli(rt, "-c", str(write_config(rt.dir)), "--txt", "-o", str(missing_dir))
    assert code == 2 and "cannot write" in err and str(missing_dir) in err


def test_unreachable_service_exits_1_naming_the_endpoint(rt: Runtime):
    out = rt.dir / "t.pftrace"
    started = time.monotonic()
    env = {"TRACEBUS_CONNECT_TIMEOUT": "0.3", "TRACEBUS_CONSUMER_SOCK": rt.consumer_endpoint}
    code, err = run_cli(rt, "-c", str(write_config(rt.dir)), "--txt", "-o", str(out), env=env)
    assert code == 1, err
    assert f"no tracing service answered at {rt.consumer_endpoint} within 0.3 s" in err
    assert time.monotonic() - started < 15
    assert not out.exists() and temp_files(rt.dir) == []


def test_refused_session_exits_1_and_keeps_the_old_output(rt: Runtime):
    out = rt.dir / "t.pftrace"
    out.write_bytes(b"old")
    with FakeService(rt.consumer_endpoint, enable_error="too many sessions (limit 15)") as fake:
        args = ["-c", str(write_config(rt.dir)), "--txt", "-o", str(out)]
        code, err = run_cli(rt, *args, "--consumer-endpoint", rt.consumer_endpoint)
    assert code == 1, err
    assert "too many sessions (limit 15)" in err
    assert out.read_bytes() == b"old" and temp_files(rt.dir) == []
    assert "read_buffers" not in fake.requests


def test_service_going_away_mid_session_exits_1(rt: Runtime):
    out = rt.dir / "t.pftrace"
    with FakeService(rt.consumer_endpoint, vanish_after_start=True):
        args = ["-c", str(write_config(rt.dir)), "--txt", "-o", str(out)]
        code, err = run_cli(rt, *args, "--consumer-endpoint", rt.consumer_endpoint)
    assert code == 1, err
    assert f"the tracing service at {rt.consumer_endpoint} went away" in err
    assert not out.exists() and temp_files(rt.dir) == []


def test_service_going_away_mid_read_keeps_every_whole_packet_received(rt: Runtime):
    out = rt.dir / "t.pftrace"
    out.write_bytes(b"old")
    with FakeService(rt.consumer_endpoint, vanish_mid_read=2):  # the big packet is cut
        args = ["-c", str(write_config(rt.dir)), "--txt", "-o", str(out)]
        code, err = run_cli(rt, *args, "--consumer-endpoint", rt.consumer_endpoint)
    assert code == 1, err
    assert f"the tracing service at {rt.consumer_endpoint} went away" in err
    small = make_packets()[:-1]
    assert out.read_bytes() == b"".join(map(frame_packet, small)), "whole packets only"
    assert [p.SerializeToString() for p in pb.Trace.FromString(out.read_bytes()).packet] == small
    assert f"wrote {len(small)} packets" in err and "INCOMPLETE trace" in err
    assert temp_files(rt.dir) == []


def test_service_silent_mid_read_keeps_what_was_received_after_the_idle_timeout(rt: Runtime):
    out = rt.dir / "t.pftrace"
    script = {"vanish_mid_read": 1, "silent_mid_read": True}
    with FakeService(rt.consumer_endpoint, **script):
        args = ["-c", str(write_config(rt.dir)), "--txt", "-o", str(out)]
        args += ["--read-timeout", "1"]
        code, err = run_cli(rt, *args, "--consumer-endpoint", rt.consumer_endpoint)
    assert code == 1, err
    assert "no reply to read_buffers within 1 s" in err
    first = make_packets()[:20]
    assert out.read_bytes() == b"".join(map(frame_packet, first))
    assert "INCOMPLETE trace" in err and temp_files(rt.dir) == []


def test_sigint_flushes_disables_and_writes_what_was_read(rt: Runtime):
    out = rt.dir / "t.pftrace"
    config = write_config(rt.dir, CONFIG_TEXT.replace("duration_ms: 100", ""))
    with FakeService(rt.consumer_endpoint, ends_by_itself=False) as fake:
        proc = rt.start_consumer_cli(
            "-c", str(config), "--txt", "-o", str(out), "--consumer-endpoint", rt.consumer_endpoint
        )
        # The CLI asks for the service state once its session is set up.
        assert fake.seen["query_service_state"].wait(timeout=20), proc.stderr
        proc.send_signal(signal.SIGINT)
        code, err = finish(rt, proc)
    assert code == 130, err
    assert "SIGINT: flushing, stopping and reading back" in err
    requests = fake.requests
    assert requests.index("flush") < requests.index("disable_tracing")
    assert requests.index("disable_tracing") < requests.index("read_buffers")
    assert requests[-1] == "free_buffers"
    assert out.read_bytes() == b"".join(map(frame_packet, make_packets()))
    assert temp_files(rt.dir) == []


# -- example configs ------------------------------------------------------------------------------


def test_example_configs_parse_with_the_official_schema():
    found = sorted(CONFIGS.glob("*.pbtxt"))
    assert {p.name for p in found} >= {"synthetic.pbtxt", "demo_timeline.pbtxt"}
    for path in found:
        config = text_format.Parse(path.read_text(), pb.TraceConfig())
        assert config.buffers and config.data_sources, path
        # Each runs for its duration_ms, but the pipeline's, which ends with the app
        # (tracebus run, or its topology's consumer).
        assert config.duration_ms or path.name == "job_pipeline.pbtxt", path


def test_synthetic_example_has_two_buffers_and_two_sources():
    config = text_format.Parse((CONFIGS / "synthetic.pbtxt").read_text(), pb.TraceConfig())
    policy = pb.TraceConfig.BufferConfig.FillPolicy
    assert [b.fill_policy for b in config.buffers] == [policy.RING_BUFFER, policy.DISCARD]
    synthetic, track_event = (d.config for d in config.data_sources)
    assert (synthetic.name, synthetic.target_buffer) == ("tracebus.synthetic", 0)
    testing = synthetic.for_testing
    assert testing.message_count and testing.message_size and testing.seed
    assert testing.max_messages_per_second
    assert (track_event.name, track_event.target_buffer) == ("tracebus.demo_timeline", 1)
    assert 1000 <= config.duration_ms <= 5000


# -- the Consumer API, in this process ------------------------------------------------------------


def test_api_session_end_to_end(rt: Runtime):
    with FakeService(rt.consumer_endpoint, ends_by_itself=False) as fake:
        with Consumer.connect(rt.consumer_endpoint, timeout=5) as c:
            c.observe()
            result = c.enable(CONFIG_TEXT)
            assert (result.session_id, result.unsupported_fields) == (7, ("trace_filter",))
            assert c.next_event(timeout=5).all_data_sources_started
            assert c.flush(timeout=1.0) is True
            with pytest.raises(RequestTimeout, match="did not end within 0.05 s"):
                c.wait_disabled(timeout=0.05)
            c.disable()
            c.wait_disabled(timeout=5)
            assert c.session_ended and c.session_error == ""
            assert list(c.read_buffers()) == make_packets()
            assert c.last_read is not None, "read_buffers() sets it"
            assert c.last_read.replies == 5 and c.last_read.incomplete_bytes == 0
            assert c.stats().buffer_stats[0].chunks_overwritten == 2
            assert c.query_state().producers[0].name == "alpha"
            saved = c.save(rt.dir / "saved.pftrace")
            assert saved.packets == len(make_packets())
            c.free()
    assert pb.Trace.FromString((rt.dir / "saved.pftrace").read_bytes()).packet[-1].for_testing.str
    assert fake.config is not None, "the fake saw enable_tracing"
    assert fake.config.duration_ms == 100


def test_api_save_keeps_what_was_read_when_the_service_goes_away(rt: Runtime):
    out = rt.dir / "saved.pftrace"
    with (
        FakeService(rt.consumer_endpoint, vanish_mid_read=2),
        Consumer.connect(rt.consumer_endpoint, timeout=5) as c,
    ):
        c.enable(CONFIG_TEXT)
        c.wait_disabled(timeout=5)
        with pytest.raises(ServiceError, match="went away") as raised:
            c.save(out)
    small = make_packets()[:-1]
    assert out.read_bytes() == b"".join(map(frame_packet, small))
    assert c.last_saved == out
    assert f"the {len(small)} packets read before were saved" in raised.value.__notes__[0]
    assert temp_files(rt.dir) == []


def test_script_save_lists_the_partial_trace_it_kept(rt: Runtime):
    out = rt.dir / "script.pftrace"
    with (
        FakeService(rt.consumer_endpoint, vanish_mid_read=2),
        Tracing.connect(rt.consumer_endpoint, timeout=5) as tracing,
    ):
        tracing.enable(CONFIG_TEXT)
        tracing.wait_disabled(timeout=5)
        with pytest.raises(ServiceError, match="went away"):
            tracing.save(out)
    assert tracing.saved == [str(out.resolve())], "the supervisor's summary names it"
    assert pb.Trace.FromString(out.read_bytes()).packet


def test_api_abandoned_read_does_not_disturb_the_next_request(rt: Runtime):
    with (
        FakeService(rt.consumer_endpoint) as fake,
        Consumer.connect(rt.consumer_endpoint, timeout=5) as c,
    ):
        c.enable(load_config(CONFIG_TEXT))
        c.wait_disabled(timeout=5)
        first = next(iter(c.read_packets()))
        assert first.trusted_packet_sequence_id == 1
        assert list(c.read_buffers()) == make_packets()  # the first read's tail is dropped
        c.free()
    assert fake.requests.count("read_buffers") == 2


def test_a_textproto_error_names_its_place_as_topology_files_see_it():
    text = "buffers {\n  size_kb: 64\n}\nbufers: 1\n"
    line, column, message = textproto_error(text)
    assert (line, column) == (4, 1) and "bufers" in message
    with pytest.raises(ConfigError) as raised:
        load_config(text)
    assert str(raised.value) == f"<config>:4:1: {message}"


def test_api_errors_are_clear(rt: Runtime):
    with pytest.raises(ConfigError, match="bufers"):
        load_config("bufers: 1")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(rt.dir / "missing.pbtxt")
    with FakeService(rt.consumer_endpoint, protocol_version=99):
        with pytest.raises(ProtocolMismatch, match="protocol 99"):
            Consumer.connect(rt.consumer_endpoint, timeout=5)
    with FakeService(rt.consumer_endpoint, enable_error="no such buffer") as fake:
        with Consumer.connect(rt.consumer_endpoint, timeout=5) as c:
            with pytest.raises(SessionError, match="no such buffer"):
                c.enable(CONFIG_TEXT)
    assert fake.requests == ["hello", "enable_tracing"]
    with (
        FakeService(rt.consumer_endpoint, vanish_after_start=True),
        Consumer.connect(rt.consumer_endpoint) as c,
    ):
        c.enable(CONFIG_TEXT)
        with pytest.raises(SessionError, match="went away"):
            c.wait_disabled(timeout=10)
        with pytest.raises(ServiceError, match="went away"):
            c.stats()


def test_trace_file_discards_unless_committed(rt: Runtime):
    out = rt.dir / "t.pftrace"
    out.write_bytes(b"old")
    with TraceFile(out) as f:
        f.write_all([b"abc"])
    assert out.read_bytes() == b"old" and temp_files(rt.dir) == []
    with TraceFile(out) as f:
        f.write_all([b"abc", b""])
        f.commit()
    assert out.read_bytes() == b"\x0a\x03abc\x0a\x00"
    assert temp_files(rt.dir) == []


def test_api_close_frees_a_session_still_held(rt: Runtime):
    with FakeService(rt.consumer_endpoint, ends_by_itself=False) as fake:
        with Consumer.connect(rt.consumer_endpoint, timeout=5) as c:
            c.enable(CONFIG_TEXT)
        assert fake.seen["free_buffers"].wait(timeout=5)
    assert fake.requests == ["hello", "enable_tracing", "free_buffers"]
