"""In-process benchmark of the service's read path (ServiceCore, no sockets).

    python -m benchmarks.readback_core [--mib N] [--json FILE]

A session's buffer is filled (without wrapping) with ~100-byte TrackEvent
packets in real 4 KiB chunks written by TraceWriters, then read back through
ServiceCore exactly as the shell drives it: handle_consumer(read_buffers), then
continue_reads() while pending_work() (one call per loop turn, with the
shell's slice budget: 1 MiB or READ_SLICE_NS, whichever comes first). Figures:
  core_readback_mb_s   MiB of packet data out (ReadBuffers slices) per second
  core_max_stall_ms    the longest single call into the core during the read
  core_peak_alloc_mib  peak Python allocations during a second, identical read
                       (tracemalloc; the buffers themselves are allocated before)
  calibration_ns       see benchmarks/calibration.py
The end-to-end figure with real processes is benchmarks/readback.py's.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable

from actors.core.service_core import Clocks, Peer, ServiceCore, SliceBudget
from actors.service import READ_SLICE_NS
from benchmarks.calibration import calibration_ns, save_json
from protos import tracebus_ipc_pb2 as ipc
from shm.abi import CHUNK_HEADER, CHUNK_HEADER_SIZE, SharedMemoryABI, resolve_geometry
from shm.arbiter import SharedMemoryArbiter
from shm.commits import CommitBatch
from shm.protozero import varint
from shm.region import InProcessRegion
from shm.writer import BufferExhaustedPolicy

CONSUMER = Peer(b"bench-consumer", 77, 1000)
PRODUCER_ID, PRODUCER_UID, PRODUCER_PID = 1, 1000, 4242


def track_event_packet(i: int) -> bytes:
    """A TracePacket {timestamp, track_event {SLICE_BEGIN, track_uuid, name}, flags}:
    about 100 bytes."""
    name = f"readback-benchmark-slice-{i & 1023:04d}-with-a-longer-name".encode()
    body = b"\x48\x01" + b"\x58" + varint(0x4000_0000_0000_0000 | (i & 7))
    body += b"\xba\x01" + varint(len(name)) + name  # TrackEvent.name (23)
    return b"\x40" + varint(10**15 + i * 1000) + b"\x5a" + varint(len(body)) + body + b"\x68\x02"


def chunks_of(total_bytes: int, writers: int = 4) -> list[tuple[int, int, int, int, bytes]]:
    """(writer, chunk_id, count, flags, payload) of real 4 KiB chunks."""
    geometry = resolve_geometry(256 * 1024, 4096)
    abi = SharedMemoryABI(InProcessRegion(geometry.size).buf, geometry)
    chunks: list[tuple[int, int, int, int, bytes]] = []

    def collect(batch: CommitBatch) -> None:
        for move in batch.chunks_to_move:
            ref = abi.try_acquire_for_reading(move.page, move.chunk)
            assert ref is not None
            chunk_id, writer_id, packets = CHUNK_HEADER.unpack_from(abi.buf, ref.offset)
            payload = bytes(abi.buf[ref.offset + CHUNK_HEADER_SIZE : ref.offset + ref.size])
            chunks.append((writer_id, chunk_id, packets & 0x3FF, packets >> 10, payload))
            abi.release_as_free(ref)

    arbiter = SharedMemoryArbiter(abi, collect, sleep=time.sleep)
    ws = [arbiter.create_trace_writer(1, BufferExhaustedPolicy.STALL) for _ in range(writers)]
    i = 0
    while len(chunks) * 4096 < total_bytes:
        ws[i % writers].write_packet(track_event_packet(i))
        i += 1
    for w in ws:
        w.flush()
    return chunks


def filled_core(buffer_kib: int, fill_bytes: int) -> ServiceCore:
    """A ServiceCore with one session whose one buffer holds fill_bytes of chunks."""
    clocks = Clocks(lambda: [(6, 1), (3, 1)], lambda: 1)
    core = ServiceCore(lambda geometry: None, clocks, 0, 100)  # type: ignore[arg-type,return-value]
    config = ipc.EnableTracingRequest()
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    cfg = pb.TraceConfig()
    cfg.buffers.add(size_kb=buffer_kib, fill_policy=pb.TraceConfig.BufferConfig.DISCARD)
    config.trace_config = cfg.SerializeToString()
    core.handle_consumer(CONSUMER, ipc.ConsumerToService(request_id=1, enable_tracing=config), 0)
    (buffer,) = core.buffers.values()
    for writer_id, chunk_id, count, flags, payload in chunks_of(fill_bytes):
        buffer.copy_chunk_untrusted(
            PRODUCER_ID,
            PRODUCER_UID,
            PRODUCER_PID,
            writer_id,
            chunk_id,
            count,
            flags,
            True,
            payload,
        )
    return core


def deadline(end_ns: int) -> Callable[[], bool]:
    return lambda: time.monotonic_ns() >= end_ns


def read_all(core: ServiceCore) -> tuple[int, int, float, float]:
    """(packets, packet bytes, seconds in the core, longest call in seconds) of
    one whole read; the replies are counted outside the timed calls."""
    msg = ipc.ConsumerToService(request_id=2, read_buffers=ipc.ReadBuffersRequest())
    start = time.perf_counter()
    outputs = core.handle_consumer(CONSUMER, msg, 0)
    calls = [time.perf_counter() - start]
    packets = nbytes = 0
    while True:
        done = False
        for out in outputs:
            assert isinstance(out.msg, ipc.ServiceToConsumer)
            reply = out.msg.read_buffers
            nbytes += sum(len(s.data) for s in reply.slices)
            packets += sum(s.last_slice_for_packet for s in reply.slices)
            done |= out.msg.HasField("read_buffers") and not reply.has_more
        if done or not core.pending_work():
            break
        start = time.perf_counter()
        budget = SliceBudget(time_up=deadline(time.monotonic_ns() + READ_SLICE_NS))
        outputs = core.continue_reads(time.monotonic_ns(), budget)
        calls.append(time.perf_counter() - start)
    print("slowest calls (ms):", " ".join(f"{c * 1e3:.1f}" for c in sorted(calls)[-5:]))
    return packets, nbytes, sum(calls), max(calls)


def run(mib: int) -> dict[str, float]:
    core = filled_core(mib * 1024 + 1024, mib << 20)
    packets, nbytes, seconds, longest = read_all(core)
    core = filled_core(mib * 1024 + 1024, mib << 20)
    tracemalloc.start()
    read_all(core)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    results = {
        "core_readback_mb_s": nbytes / seconds / (1 << 20),
        "core_max_stall_ms": longest * 1e3,
        "core_peak_alloc_mib": peak / (1 << 20),
        "packets": packets,
        "calibration_ns": calibration_ns(),
    }
    print(f"read {packets} packets, {nbytes / (1 << 20):.1f} MiB in {seconds:.2f} s")
    for key, value in results.items():
        print(f"{key:<22}{value:>12.2f}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16, help="MiB of chunks in the buffer")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    results = run(args.mib)
    save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
