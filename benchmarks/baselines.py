"""The two ways people trace across processes without an SMB, measured end to end.

    python -m benchmarks.baselines        # prints both figures for a 30-byte payload

mp_queue_ns(payload, n)   one record per multiprocessing.Queue.put
zmq_push_ns(payload, n)   one msgpack record per ZeroMQ PUSH send, PULL over ipc://

Each is a producer (this process) and a consumer (a spawned process). A record is
what a tracer would send per event: a monotonic timestamp taken at the event and
the payload ((ts, payload) for the queue, msgpack {"ts": ts, "data": payload} for
ZeroMQ), the same per-event work our producer does (clock read, encode, hand
off). The clock starts at the first put/send, once the consumer is up and waiting,
and stops when the consumer has received and decoded all n records; the figure is
that time divided by n, in ns per record. Both sides use CLOCK_MONOTONIC
(time.monotonic_ns), which is system-wide on Linux, so the consumer's end time
and the producer's start time compare directly.

Each library runs with its defaults and nothing slowed down: Queue is unbounded
(its feeder thread pickles and writes each record), ZeroMQ keeps its default
high-water marks (1000 messages each side) and copies small frames. Nothing is
dropped silently: a PUSH socket at its high-water mark *blocks* the sender (it
never drops, unlike PUB), and the consumer checks that it got exactly n records
and that the last one is the last one sent. A consumer that does not finish
within the deadline raises instead of hanging.

Processes, queues, sockets and the ipc:// socket file (in a private temporary
directory) are cleaned up on every path, including failures.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import tempfile
import time

import msgpack
import zmq

DEADLINE_S = 60.0
_CTX = mp.get_context("spawn")  # the consumer inherits no threads, sockets or zmq context


def _check_args(payload: bytes, n: int) -> None:
    if not isinstance(payload, bytes | bytearray):
        raise TypeError("payload must be bytes")
    if n <= 0:
        raise ValueError("n must be positive")


def _stop(proc) -> None:
    if proc.is_alive():
        proc.kill()
    proc.join(10)


def _result(results, proc, what: str):
    """The consumer's next message; raises if it dies first or misses the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        alive = proc.is_alive()
        try:
            return results.get(timeout=0.2 if alive else 1.0)
        except queue.Empty:
            if not alive:
                raise RuntimeError(
                    f"the consumer exited (code {proc.exitcode}) before it could {what}"
                ) from None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the consumer did not {what} within {DEADLINE_S:.0f} s"
                ) from None


# -- multiprocessing.Queue --------------------------------------------------------------------


def _queue_consumer(records, results, n: int) -> None:
    results.put(("ready", os.getpid()))
    get = records.get
    last = None
    for _ in range(n):
        last = get()
    end = time.monotonic_ns()
    results.put(("done", end, last[0], len(last[1])))


def mp_queue_ns(payload: bytes, n: int) -> float:
    """ns per record from the first Queue.put until a consumer process got all n."""
    _check_args(payload, n)
    payload = bytes(payload)
    records, results = _CTX.Queue(), _CTX.Queue()
    consumer = _CTX.Process(target=_queue_consumer, args=(records, results, n), daemon=True)
    ok = False
    try:
        consumer.start()
        _result(results, consumer, "start")
        put, now = records.put, time.monotonic_ns
        start = now()
        ts = start
        for _ in range(n):
            ts = now()
            put((ts, payload))
        kind, end, last_ts, last_len = _result(results, consumer, f"receive {n} records")
        if (kind, last_ts, last_len) != ("done", ts, len(payload)):
            raise RuntimeError("the consumer's last record is not the last one sent")
        ok = True
        return (end - start) / n
    finally:
        _stop(consumer)
        for q in (records, results):
            if not ok:
                q.cancel_join_thread()  # a dead consumer leaves the pipe full
            q.close()
            if ok:
                q.join_thread()


# -- ZeroMQ PUSH/PULL ------------------------------------------------------------------------


def _zmq_consumer(endpoint: str, results, n: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    try:
        sock.setsockopt(zmq.RCVTIMEO, int(DEADLINE_S * 1000))  # a dead producer ends us
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        results.put(("ready", os.getpid()))
        recv, unpackb = sock.recv, msgpack.unpackb
        last = None
        try:
            for _ in range(n):
                last = unpackb(recv())
        except zmq.Again:
            results.put(("timeout", 0, None, 0))
            return
        end = time.monotonic_ns()
        results.put(("done", end, last["ts"], len(last["data"])))
    finally:
        sock.close()
        ctx.term()


def zmq_push_ns(payload: bytes, n: int) -> float:
    """ns per record from the first PUSH send until a PULL consumer process got all n."""
    _check_args(payload, n)
    payload = bytes(payload)
    rundir = tempfile.mkdtemp(prefix="tb-bl-")
    endpoint = f"ipc://{rundir}/pull.sock"
    results = _CTX.Queue()
    consumer = _CTX.Process(target=_zmq_consumer, args=(endpoint, results, n), daemon=True)
    ctx = sock = None
    ok = False
    try:
        consumer.start()
        _result(results, consumer, "bind")
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDTIMEO, int(DEADLINE_S * 1000))  # blocks at HWM, never drops
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        send, pack, now = sock.send, msgpack.Packer().pack, time.monotonic_ns
        start = now()
        ts = start
        try:
            for _ in range(n):
                ts = now()
                send(pack({"ts": ts, "data": payload}))
        except zmq.Again:
            raise TimeoutError(
                f"PUSH blocked at its high-water mark for {DEADLINE_S:.0f} s: "
                "the consumer stopped receiving"
            ) from None
        kind, end, last_ts, last_len = _result(results, consumer, f"receive {n} records")
        if (kind, last_ts, last_len) != ("done", ts, len(payload)):
            raise RuntimeError(f"the consumer reported {kind!r}, not the last record sent")
        ok = True
        return (end - start) / n
    finally:
        if sock is not None:
            sock.close()
        if ctx is not None:
            ctx.term()
        _stop(consumer)
        if not ok:
            results.cancel_join_thread()
        results.close()
        if ok:
            results.join_thread()
        shutil.rmtree(rundir, ignore_errors=True)


def main() -> None:
    payload = b"x" * 30
    n = 200_000
    print(f"baselines, {len(payload)}-byte payload, {n} records, {os.cpu_count()} cpus")
    print(f"mp_queue_ns  {mp_queue_ns(payload, n):8.0f} ns/record  (multiprocessing.Queue)")
    print(
        f"zmq_push_ns  {zmq_push_ns(payload, n):8.0f} ns/record  (ZeroMQ PUSH/PULL ipc://, msgpack)"
    )


if __name__ == "__main__":
    main()
