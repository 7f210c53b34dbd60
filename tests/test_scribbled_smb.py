"""A producer that scribbles on its own SMB while its threads write (issue 11,
item 2): real processes (the `rt` harness). The SMB is the producer's own
memory, so any code of it may overwrite page bitmaps, chunk headers and
payloads. Its writer threads never raise (the app exits 0 without a traceback),
the service stays up and answers, the losses show (a gap flagged or counted),
and the trace read back parses as a whole with the official schema.
"""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from shm.protozero import varint
from tests.processes import Runtime
from tests.test_sdk_processes import app_env
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

CONFIG = """
buffers { size_kb: 32768 fill_policy: RING_BUFFER }
data_sources { config { name: "track_event" } }
flush_timeout_ms: 5000
data_source_stop_timeout_ms: 5000
"""

# Writer threads, and a thread that overwrites the process's own SMB (found in
# /proc/self/maps) with random words at page-header offsets and random bytes
# anywhere, in bursts until the writers are done.
SCRIBBLING_APP = """
import ctypes, random, sys, threading, time, tracebus

tracebus.init(name="scribbler", wait_for_start=30)
tracebus.instant("mapped")  # the SMB is mapped once the first event is written

def smb():
    for line in open("/proc/self/maps"):
        if "/memfd:tracebus-smb" in line:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            return lo, hi - lo
    sys.exit("no SMB mapped")

base, size = smb()
done = threading.Event()
scribbles = 0

def scribble(seed):
    global scribbles
    rnd = random.Random(seed)
    while not done.is_set():
        for _ in range(200):
            if rnd.random() < 0.6:  # a page bitmap (any page size is a multiple of 4 KiB)
                word = rnd.choice([0, 0x10000001, 0x10000002, 0x10000003, rnd.getrandbits(32)])
                step = rnd.choice([4096, 32768])  # the SDK's pages are 32 KiB
                at = base + rnd.randrange(size // step) * step
                ctypes.c_uint32.from_address(at).value = word
            else:  # a chunk header or payload
                n = rnd.randrange(1, 16)
                at = rnd.randrange(size - n)
                ctypes.memmove(base + at, rnd.randbytes(n), n)
            scribbles += 1
        time.sleep(0.002)  # pacing only: some chunks must make it through

def enough(i):
    # However fast the writers, enough scribbles; and on until a scribble cost the
    # writers something (bounded: a loaded machine may land them all on idle pages).
    if i < 15000 or scribbles < 1000:
        return False
    return i >= 300000 or (i % 200 == 0 and tracebus.stats()["dropped_packets"] > 0)

def write(k):
    i = 0
    while not enough(i):
        i += 1
        with tracebus.slice("work", args={"k": k, "i": i, "text": "x" * (i % 300)}):
            tracebus.counter("depth", i)
        if i % 500 == 0:
            tracebus.instant("big", args={"blob": "y" * 40000})  # spans chunks

scribbler = threading.Thread(target=scribble, args=(1,))
scribbler.start()
threads = [threading.Thread(target=write, args=(k,)) for k in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
done.set()
scribbler.join()
stats = tracebus.stats()
print("scribbles", scribbles, "errors", stats["errors"], "dropped", stats["dropped_packets"],
      stats["errors_by_kind"], flush=True)
"""


@pytest.fixture
def rt():
    with Runtime() as runtime:
        yield runtime


def test_a_producer_scribbling_on_its_own_smb_loses_data_but_nobody_dies(rt):
    rt.start_service()
    consumer = rt.consumer()
    consumer.enable(text_format.Parse(CONFIG, pb.TraceConfig()))
    path = rt.write_file("scribbling.py", SCRIBBLING_APP)
    app = rt.spawn("scribbling", [str(path)], app_env(rt))
    assert rt.finish(app, timeout=150) == 0
    log = (rt.dir / "scribbling.log").read_text()
    assert "Traceback" not in log and "scribbles" in log, log
    counts = log.split("scribbles")[1].split()
    assert int(counts[0]) >= 1000, log  # it did scribble
    # No writer gave up on an exception (the SDK would have counted it and
    # stopped that thread's tracing), and the writers counted what they lost.
    assert counts[1:5] == ["errors", "0", "dropped", counts[4]] and int(counts[4]) > 0, log

    def gone() -> bool:
        return app.pid not in {p.pid for p in rt.control.query_state(timeout=5).producers}

    wait_for(gone, 30, "the app to leave the service")
    consumer.flush()
    consumer.disable()
    raw = list(consumer.read_buffers())
    stats = consumer.stats()
    rt.assert_running(rt.service, "the service")
    assert rt.control.query_state(timeout=5) is not None  # it still answers

    # The whole trace parses with the official schema, as a file would.
    trace = pb.Trace()
    trace.ParseFromString(b"".join(b"\x0a" + varint(len(p)) + p for p in raw))
    mine = [p for p in trace.packet if p.trusted_pid == app.pid]
    assert any(p.HasField("track_event") for p in mine), "some events made it through"
    flagged = any(p.previous_packet_dropped for p in mine)
    counted = sum(
        b.chunks_discarded + b.abi_violations + b.patches_failed + b.trace_writer_packet_loss
        for b in stats.buffer_stats
    )
    counted += stats.invalid_packets if stats.HasField("invalid_packets") else 0
    assert flagged or counted, "the losses show in the trace or its stats"
