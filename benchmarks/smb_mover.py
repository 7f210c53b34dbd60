"""A stand-in for the service's commit path, for benchmarks: another process maps
the producer's SMB, receives commit batches over ZeroMQ and moves each chunk
out (COMPLETE -> BEING_READ, copy the payload, -> FREE), as the service does.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from collections.abc import Callable

import msgpack
import zmq

from shm.abi import CHUNK_HEADER_SIZE, Geometry, SharedMemoryABI
from shm.commits import CommitBatch
from shm.region import MemfdRegion

DONE = b"done"


def _mover_main(region_path: str, geometry: tuple[int, int], endpoint: str, result) -> None:
    region = MemfdRegion.attach_path(region_path, geometry[0])
    abi = SharedMemoryABI(region.buf, Geometry(*geometry))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.connect(endpoint)
    result.send("ready")
    chunks = payload_bytes = failed = 0
    try:
        while True:
            msg = sock.recv()
            if msg == DONE:
                break
            for page, chunk, _target in msgpack.unpackb(msg):
                ref = abi.try_acquire_for_reading(page, chunk)
                if ref is None:
                    failed += 1
                    continue
                payload = bytes(abi.buf[ref.offset + CHUNK_HEADER_SIZE : ref.offset + ref.size])
                payload_bytes += len(payload)
                abi.release_as_free(ref)
                chunks += 1
    finally:
        sock.close(linger=0)
        ctx.term()
        region.close()
    result.send((chunks, payload_bytes, failed))


class Mover:
    """Runs the mover process; `on_commit` is the arbiter's callback."""

    def __init__(self, region: MemfdRegion, geometry: Geometry) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="tb-bench-")
        endpoint = f"ipc://{self._dir.name}/commits"
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.bind(endpoint)
        spawn = mp.get_context("spawn")
        self._result, child_end = spawn.Pipe(duplex=False)
        path = f"/proc/{os.getpid()}/fd/{region.fd}"
        self._proc = spawn.Process(
            target=_mover_main,
            args=(path, (geometry.size, geometry.page_size), endpoint, child_end),
            daemon=True,
        )
        self._proc.start()
        child_end.close()
        if not self._result.poll(30) or self._result.recv() != "ready":
            self.close()
            raise RuntimeError("the mover process did not start")
        self.on_commit: Callable[[CommitBatch], None] = self._send

    def _send(self, batch: CommitBatch) -> None:
        moves = [(m.page, m.chunk, m.target_buffer) for m in batch.chunks_to_move]
        if moves:
            self._sock.send(msgpack.packb(moves), copy=False)

    def finish(self, timeout: float = 60.0) -> tuple[int, int, int]:
        """(chunks moved, payload bytes moved, chunks it could not move)."""
        self._sock.send(DONE)
        if not self._result.poll(timeout):
            raise RuntimeError("the mover process did not finish")
        return self._result.recv()

    def close(self) -> None:
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._sock.close(linger=0)
        self._ctx.term()
        self._dir.cleanup()

    def __enter__(self) -> Mover:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
