"""A raw producer for hostile tests: speaks the protocol over its own ZeroMQ
DEALER sockets, without the SDK, and does what its steps say.

    python -m tests.raw_producer ENDPOINT STEP...

Steps, in order, each printing one line when done (the test reads stdout):
  register:NAME  connect, initialize, register data source NAME -> "registered"
  start          wait for a StartDataSource                     -> "started BUFFER"
  stubborn:NAME  connect under a 256-character name, register NAME with
                 will_notify_on_stop, never ack a stop; read and drop
                 whatever the service sends from now on        -> "registered"
  churn:N        unregister and register its data source N times -> "churned"
  flushwait      wait for a FlushRequest         -> "flush instances COUNT"
  u64stats       two writers on that buffer report 2^64-1 dropped packets and
                 bytes                                          -> "sent u64stats"
  flood:N        N commits naming 300,000 chunks each           -> "sent flood"
  many:N         connect, register N data sources of 256-character names
                                           -> "registered OK refused REFUSED"
  badnames       connect under an unprintable 1000-character name; register three
                 bad names and one descriptor padded with 1 MiB of unknown fields
                                           -> "badnames refused N padded ok|refused"
  twosmbs        two connections of this process ask for 32 MiB SMBs and register
                 raw.ds (-> "registered"); then wait for a session's SetupTracing or
                 error on each                  -> "smbs SETUPS error LIMIT"
  connections:N  N connections initialize       -> "connections OK refused N LIMIT"
Then it prints "done" and stays connected until its stdin closes.
"""

from __future__ import annotations

import re
import sys
import threading

import zmq
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from protos import framing
from protos import tracebus_ipc_pb2 as ipc

TIMEOUT_MS = 30_000
U64_MAX = (1 << 64) - 1
LIMIT = re.compile(r"max_\w+")


class Connection:
    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.request_id = 0

    def send(self, **msg: object) -> None:
        self.request_id += 1
        envelope = ipc.ProducerToService(request_id=self.request_id, **msg)  # type: ignore[arg-type]
        self.sock.send_multipart(framing.encode(envelope))

    def recv(self, *kinds: str) -> ipc.ServiceToProducer:
        """The next message of one of `kinds` (an error always counts)."""
        while True:
            if not self.sock.poll(TIMEOUT_MS):
                raise SystemExit(f"nothing of {kinds} from the service")
            msg = framing.decode_to_producer(self.sock.recv_multipart())
            if msg.WhichOneof("msg") in (*kinds, "error"):
                return msg

    def initialize(self, name: str, shm_size: int = 1 << 20) -> str:
        """'' once initialized, else the service's error."""
        hello = ipc.Hello(protocol_version=ipc.PROTOCOL_VERSION)
        init = ipc.InitializeConnectionRequest(
            hello=hello, producer_name=name, shm_size_hint_bytes=shm_size
        )
        self.send(initialize_connection=init)
        reply = self.recv("initialize_connection")
        return reply.error.message or reply.initialize_connection.hello.error

    def register(self, desc: ipc.DataSourceDescriptor) -> str:
        self.send(register_data_source=ipc.RegisterDataSourceRequest(descriptor=desc))
        reply = self.recv("register_data_source")
        return reply.error.message or reply.register_data_source.error


def connect(ctx: zmq.Context, endpoint: str, name: str = "raw", shm_size: int = 1 << 20):
    conn = Connection(ctx, endpoint)
    error = conn.initialize(name, shm_size)
    if error:
        raise SystemExit(f"initialize: {error}")
    return conn


def stubborn(ctx: zmq.Context, endpoint: str, name: str) -> Connection:
    conn = connect(ctx, endpoint, "s" * 256)
    error = conn.register(ipc.DataSourceDescriptor(name=name, will_notify_on_stop=True))
    if error:
        raise SystemExit(f"{name} refused: {error}")

    def drain() -> None:  # the socket is this thread's from now on
        while True:
            conn.sock.recv_multipart()

    threading.Thread(target=drain, daemon=True).start()
    return conn


def many(ctx: zmq.Context, endpoint: str, n: int, keep: list[Connection]) -> str:
    conn = connect(ctx, endpoint, "hog")
    keep.append(conn)  # connected until the end: the service ends a producer with its connection
    refused = 0
    for first in range(0, n, 500):  # in batches: the replies must be read as they come
        batch = range(first, min(n, first + 500))
        for i in batch:
            name = f"{i:06d}." + "n" * 249
            desc = ipc.DataSourceDescriptor(name=name)
            conn.send(register_data_source=ipc.RegisterDataSourceRequest(descriptor=desc))
        for _ in batch:
            reply = conn.recv("register_data_source")
            refused += bool(reply.error.message or reply.register_data_source.error)
    return f"registered {n - refused} refused {refused}"


def badnames(ctx: zmq.Context, endpoint: str, keep: list[Connection]) -> str:
    conn = connect(ctx, endpoint, "evil\x1b[31m\n" + "x" * 1000)
    keep.append(conn)
    refused = 0
    for name in ("bad\nname", "", "x" * 257):
        refused += bool(conn.register(ipc.DataSourceDescriptor(name=name)))
    unknown = b"\xa2\x06" + b"\x80\x80\x40" + b"u" * (1 << 20)  # field 100, 1 MiB
    padded = ipc.DataSourceDescriptor.FromString(
        ipc.DataSourceDescriptor(name="padded").SerializeToString() + unknown
    )
    padded_ok = "refused" if conn.register(padded) else "ok"
    return f"badnames refused {refused} padded {padded_ok}"


def churn(conn: Connection, times: int) -> str:
    for _ in range(times):
        conn.send(unregister_data_source=ipc.UnregisterDataSourceRequest(name="raw.ds"))
        if conn.register(ipc.DataSourceDescriptor(name="raw.ds")):
            raise SystemExit("raw.ds refused")
    return "churned"


def u64stats(conn: Connection, buffer_id: int) -> str:
    stats = []
    for writer_id in (1, 2):
        conn.send(register_trace_writer=dict(writer_id=writer_id, target_buffer=buffer_id))
        stats.append(
            dict(
                writer_id=writer_id,
                target_buffer=buffer_id,
                dropped_packets=U64_MAX,
                dropped_bytes=U64_MAX,
            )
        )
    conn.send(commit_data=dict(writer_stats=stats))
    return "sent u64stats"


FLOOD_MOVES = 300_000  # about 2.5 MB a request, under the frame cap


def flood(conn: Connection, buffer_id: int, commits: int) -> str:
    req = ipc.CommitDataRequest()
    for i in range(FLOOD_MOVES):
        req.chunks_to_move.add(page=i % 7, chunk=i % 3, target_buffer=buffer_id)
    for _ in range(commits):
        conn.send(commit_data=req)
    return "sent flood"


def twosmbs(ctx: zmq.Context, endpoint: str) -> list[Connection]:
    conns = [connect(ctx, endpoint, f"smb{i}", shm_size=32 << 20) for i in (1, 2)]
    for conn in conns:
        if conn.register(ipc.DataSourceDescriptor(name="raw.ds")):
            raise SystemExit("raw.ds refused")
    return conns


def smb_outcomes(conns: list[Connection]) -> str:
    setups, limits = 0, []
    for conn in conns:
        msg = conn.recv("setup_tracing")
        if msg.WhichOneof("msg") == "setup_tracing":
            setups += 1
        else:
            limits += LIMIT.findall(msg.error.message)
    return f"smbs {setups} error {' '.join(limits)}"


def connections(ctx: zmq.Context, endpoint: str, n: int, keep: list[Connection]) -> str:
    limits = []
    for i in range(n):
        conn = Connection(ctx, endpoint)
        error = conn.initialize(f"conn{i}")
        limits += LIMIT.findall(error)
        keep.append(conn)
    return f"connections {n - len(limits)} refused {len(limits)} {' '.join(sorted(set(limits)))}"


def main(argv: list[str]) -> None:
    endpoint, steps = argv[0], argv[1:]
    ctx = zmq.Context()
    conn: Connection | None = None
    keep: list[Connection] = []
    buffer_id = 0
    for step in steps:
        kind, _, arg = step.partition(":")
        if kind == "register":
            conn = connect(ctx, endpoint)
            error = conn.register(ipc.DataSourceDescriptor(name=arg))
            line = f"refused {error}" if error else "registered"
        elif kind == "stubborn":
            conn = stubborn(ctx, endpoint, arg)
            line = "registered"
        elif kind == "start":
            assert conn is not None, "register first"
            start = conn.recv("start_data_source").start_data_source
            buffer_id = pb.DataSourceConfig.FromString(start.data_source_config).target_buffer
            line = f"started {buffer_id}"
        elif kind == "churn":
            assert conn is not None, "register first"
            line = churn(conn, int(arg))
        elif kind == "flushwait":
            assert conn is not None, "register first"
            line = f"flush instances {len(conn.recv('flush').flush.instance_ids)}"
        elif kind == "u64stats":
            assert conn is not None, "register first"
            line = u64stats(conn, buffer_id)
        elif kind == "flood":
            assert conn is not None, "register first"
            line = flood(conn, buffer_id, int(arg))
        elif kind == "many":
            line = many(ctx, endpoint, int(arg), keep)
        elif kind == "badnames":
            line = badnames(ctx, endpoint, keep)
        elif kind == "twosmbs":
            keep = twosmbs(ctx, endpoint)
            print("registered", flush=True)
            line = smb_outcomes(keep)
        elif kind == "connections":
            line = connections(ctx, endpoint, int(arg), keep)
        else:
            raise SystemExit(f"unknown step {step!r}")
        print(line, flush=True)
    print("done", flush=True)
    sys.stdin.read()  # connected until the test closes our stdin (or stops us)


if __name__ == "__main__":
    main(sys.argv[1:])
