"""The chaos soak's hostile peers on Perfetto's sockets (tests/test_chaos.py).

`python -m tests.chaos_peers perfetto-producer|perfetto-consumer SOCKET SEED COUNT`
connects to the service's Perfetto producer or consumer socket and sends COUNT
frames, then exits (the soak starts another):

- mostly InvokeMethod frames of that port's methods with valid arguments full of
  random values (commits naming random pages, chunks, buffers and patches;
  writer, instance and flush ids; names; a small session's config), sent as
  they are or mutated byte-wise (the frame or only its arguments), with random
  request, service and method ids;
- BindService for the right, a wrong or no service, now and then a second bind;
- random bytes, a truncated frame, a length header over 128 KiB (the service
  ends that connection: the peer connects again);
- an fd (a pipe's end, /dev/null) attached to one frame in ten.

A consumer peer's frame that would enable a session is sent at most once per
connection and only without an output file and with at most
MAX_CONSUMER_BUFFERS_KB of buffers (as the ZeroMQ consumer peer's). Replies are
drained as they come, never waited for.
"""

from __future__ import annotations

import os
import random
import socket
import struct

from tests.chaos_peers import MAX_CONSUMER_BUFFERS_KB, U64_MAX, mutate

FRAME_HEADER = struct.Struct("<I")
OVER_THE_CAP = 128 * 1024  # a length header the service refuses (with its own 4 bytes)


def producer_calls(rnd: random.Random) -> list[tuple[int, bytes]]:
    """(method id, args) of the producer port, valid encodings of random values."""
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    from protos import perfetto_ipc_pb2 as pf

    def big() -> int:
        return rnd.choice((0, 1, 7, 255, 1 << 16, (1 << 32) - 1))

    commit = pf.CommitDataRequest(flush_request_id=rnd.choice((0, 1, U64_MAX)))
    for _ in range(rnd.randint(0, 4)):
        commit.chunks_to_move.add(page=big(), chunk=rnd.randint(0, 15), target_buffer=big())
    if rnd.random() < 0.1:
        commit.chunks_to_move.add(page=0, chunk=0, target_buffer=1, data=rnd.randbytes(64))
    patch = commit.chunks_to_patch.add(target_buffer=big(), writer_id=big(), chunk_id=big())
    patch.patches.add(offset=big(), data=rnd.randbytes(rnd.choice((0, 4, 9))))
    name = rnd.choice(("track_event", "chaos." + "x" * rnd.choice((1, 64, 300))))
    descriptor = pb.DataSourceDescriptor(
        name=name, will_notify_on_start=rnd.random() < 0.5, will_notify_on_stop=True
    )
    init = pf.InitializeConnectionRequest(
        producer_name="chaos-perfetto",
        shared_memory_size_hint_bytes=rnd.choice((0, 4096, 1 << 20, 32 << 20, (1 << 32) - 1)),
        shared_memory_page_size_hint_bytes=rnd.choice((0, 4096, 5000, 1 << 20)),
        producer_provided_shmem=rnd.random() < 0.1,
    )
    ids = (1, 2, U64_MAX)
    return [
        (1, init.SerializeToString()),
        (
            2,
            pf.RegisterDataSourceRequest(
                data_source_descriptor=descriptor.SerializeToString()
            ).SerializeToString(),
        ),  # fmt: skip
        (3, pf.UnregisterDataSourceRequest(data_source_name=name).SerializeToString()),
        (4, commit.SerializeToString()),
        (5, b""),  # GetAsyncCommand
        (
            6,
            pf.RegisterTraceWriterRequest(
                trace_writer_id=big(), target_buffer=big()
            ).SerializeToString(),
        ),  # fmt: skip
        (7, pf.UnregisterTraceWriterRequest(trace_writer_id=big()).SerializeToString()),
        (8, pf.NotifyDataSourceStartedRequest(data_source_id=rnd.choice(ids)).SerializeToString()),
        (9, pf.NotifyDataSourceStoppedRequest(data_source_id=rnd.choice(ids)).SerializeToString()),
        (
            10,
            pf.ActivateTriggersRequest(
                trigger_names=["t" * rnd.randint(0, 300)]
            ).SerializeToString(),
        ),  # fmt: skip
        (11, b""),  # Sync
        (rnd.choice((0, 12, 99)), rnd.randbytes(8)),  # not a method of the port
    ]


def consumer_calls(rnd: random.Random) -> list[tuple[int, bytes]]:
    """(method id, args) of the consumer port, a small session's config among them."""
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    from protos import perfetto_ipc_pb2 as pf

    config = pb.TraceConfig(duration_ms=rnd.choice((0, 100, 2000)))
    config.buffers.add(size_kb=rnd.choice((4, 64, 1024)))
    config.data_sources.add().config.name = rnd.choice(("tracebus.synthetic", "track_event"))
    observe = pf.ObserveEventsRequest(events_to_observe=[rnd.choice((1, 2))])  # type: ignore[list-item]
    flush = pf.FlushRequest(timeout_ms=rnd.choice((0, 1, 100, (1 << 32) - 1)), flags=U64_MAX)
    return [
        (1, pf.EnableTracingRequest(trace_config=config.SerializeToString()).SerializeToString()),
        (2, b""),  # DisableTracing
        (3, b""),  # ReadBuffers
        (4, pf.FreeBuffersRequest(buffer_ids=[rnd.randint(0, 9)]).SerializeToString()),
        (5, flush.SerializeToString()),
        (6, b""),  # StartTracing
        (8, pf.DetachRequest(key="chaos" * rnd.randint(0, 60)).SerializeToString()),
        (9, pf.AttachRequest(key="chaos").SerializeToString()),
        (10, b""),  # GetTraceStats
        (11, observe.SerializeToString()),
        (12, pf.QueryServiceStateRequest(sessions_only=rnd.random() < 0.5).SerializeToString()),
        (13, b""),  # QueryCapabilities
        (14, b""),  # SaveTraceForBugreport
        (rnd.choice((0, 7, 15, 99)), rnd.randbytes(8)),  # not served
    ]


def session_allowed(args: bytes) -> bool:
    """Whether EnableTracing's args are a session the soak can afford: no output
    file, at most MAX_CONSUMER_BUFFERS_KB of buffers."""
    from google.protobuf.message import DecodeError
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    from protos import perfetto_ipc_pb2 as pf

    config = pb.TraceConfig()
    try:
        config.ParseFromString(pf.EnableTracingRequest.FromString(args).trace_config)
    except (DecodeError, UnicodeDecodeError):
        return True  # refused by the service as it does not parse
    total_kb = sum(b.size_kb for b in config.buffers)
    return (
        not (config.output_path or config.write_into_file) and total_kb <= MAX_CONSUMER_BUFFERS_KB
    )


class Peer:
    def __init__(self, path: str, side: str, rnd: random.Random) -> None:
        self.path, self.side, self.rnd = path, side, rnd
        self.sock: socket.socket | None = None
        self.sessions_left = 1
        self.request_id = 0

    def connect(self) -> bool:
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(0.5)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            return False
        self.sock, self.sessions_left = sock, 1
        if self.rnd.random() < 0.9:
            name = "ProducerPort" if self.side == "producer" else "ConsumerPort"
            self.send(self.bind(self.rnd.choice((name, name, name, "Nope", ""))))
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def bind(self, name: str) -> bytes:
        from protos import perfetto_ipc_pb2 as pf

        frame = pf.IPCFrame(request_id=self.next_id())
        frame.msg_bind_service.service_name = name
        return framed(frame.SerializeToString())

    def next_id(self) -> int:
        self.request_id += 1
        return self.rnd.choice((self.request_id, self.request_id, 0, U64_MAX))

    def frame(self) -> bytes:
        """The next frame's bytes, header included."""
        from protos import perfetto_ipc_pb2 as pf

        rnd = self.rnd
        roll = rnd.random()
        if roll < 0.03:
            return rnd.randbytes(rnd.randint(1, 256))
        if roll < 0.04:
            return FRAME_HEADER.pack(OVER_THE_CAP + rnd.randint(0, 1 << 20)) + rnd.randbytes(64)
        if roll < 0.06:
            return self.bind(rnd.choice(("ProducerPort", "ConsumerPort", "x" * 300)))
        calls = producer_calls(rnd) if self.side == "producer" else consumer_calls(rnd)
        method_id, args = rnd.choice(calls)
        if roll < 0.5:
            args = mutate(args, rnd)
        frame = pf.IPCFrame(request_id=self.next_id())
        call = frame.msg_invoke_method
        call.service_id = rnd.choice((1, 1, 1, 2, 0, 7)) if self.side == "producer" else (
            rnd.choice((2, 2, 2, 1, 0, 7)))  # fmt: skip
        call.method_id, call.args_proto = method_id, args
        call.drop_reply = rnd.random() < 0.3
        data = frame.SerializeToString()
        if 0.5 <= roll < 0.6:
            data = mutate(data, rnd)
        return framed(data) if self.affordable(data) else b""

    def affordable(self, data: bytes) -> bool:
        """A consumer's frame (as sent: mutated or not) that enables a session: at
        most one per connection, and one the soak can afford."""
        from google.protobuf.message import DecodeError

        from protos import perfetto_ipc_pb2 as pf

        if self.side != "consumer":
            return True
        try:
            call = pf.IPCFrame.FromString(data).msg_invoke_method
        except (DecodeError, UnicodeDecodeError):
            return True
        if call.method_id != 1:
            return True
        if self.sessions_left <= 0 or not session_allowed(call.args_proto):
            return False
        self.sessions_left -= 1
        return True

    def send(self, data: bytes) -> bool:
        """Send a frame, an fd with one in ten; False once the service closed it."""
        if self.sock is None or not data:
            return self.sock is not None
        fds: list[int] = []
        try:
            if self.rnd.random() < 0.1:
                fds = [os.open(os.devnull, os.O_RDONLY)] if self.rnd.random() < 0.5 else []
                if not fds:
                    r, w = os.pipe()
                    os.close(w)
                    fds = [r]
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.sendall(data)
            return True
        except OSError:  # reset, refused, timed out: what the service may do to such a peer
            return False
        finally:
            for fd in fds:
                os.close(fd)

    def drain(self) -> bool:
        """Read what came, without waiting; False once the service closed it."""
        if self.sock is None:
            return False
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(
                    self.sock, 1 << 16, 4, socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                return True
            except OSError:
                return False
            for fd in fds:
                os.close(fd)  # an SMB the service set up for this peer
            if not data:
                return False


def framed(payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload)) + payload


def run_perfetto_peer(side: str, path: str, seed: int, count: int) -> int:
    rnd = random.Random(seed)
    peer = Peer(path, side, rnd)
    try:
        for _ in range(count):
            if peer.sock is None and not peer.connect():
                return 0  # the service is gone (the soak ends)
            if not (peer.send(peer.frame()) and peer.drain()) or rnd.random() < 0.01:
                peer.close()  # ended by the service, or by us: connect again
    finally:
        peer.close()
    return 0
