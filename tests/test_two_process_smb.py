"""Two processes share one sealed-memfd SMB, as a producer and the service do.

The writer process creates the SMB (MemfdRegion.create) and writes through
several TraceWriters, one per thread, with the STALL policy. Its arbiter's
on_commit sends every CommitBatch (chunks to move, patches, flush id) over a
pipe to the mover process, one message per batch. The mover maps the same
memfd through /proc/<writer pid>/fd/<n> and, for every chunk it is told about,
does what the service does: COMPLETE -> BEING_READ (CAS), copy header and
payload, BEING_READ -> FREE (CAS). It reuses tests/smb_oracle.Oracle for the
move, the patches and the reassembly, but drains it as it goes so memory stays
bounded, and checks every writer's packets against the same seeded packet plan
the writer followed: byte for byte, in order, chunk ids consecutive from 0
with none lost or duplicated.

Every chunk passes four CAS transitions (FREE -> BEING_WRITTEN -> COMPLETE on the
producer side, -> BEING_READ -> FREE on the service side). Both sides count the
transitions that succeeded; the test requires at least 100,000 of them in each
case, i.e. 25,000 chunks, and that every page bitmap is 0 at the end, read by
the parent, which maps the memfd too.

Packets are a seeded mix: tiny ones (fast path), medium ones, ones that (nearly)
fill a chunk, ones spanning several chunks, and protozero packets whose nested
messages span chunks so that their sizes travel as patches; writers flush now
and then, so partly filled chunks are moved too.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import random
import struct
import threading
import time
import traceback
from multiprocessing.connection import wait
from typing import NamedTuple

import pytest

from shm.abi import (
    CHUNK_HEADER_SIZE,
    LAST_PACKET_CONTINUES,
    NEEDS_PATCHING,
    Geometry,
    SharedMemoryABI,
    chunk_size_for,
    resolve_geometry,
)
from shm.arbiter import SharedMemoryArbiter
from shm.commits import ChunkToMove, ChunkToPatch, CommitBatch
from shm.protozero import build
from shm.region import MemfdRegion
from shm.writer import BufferExhaustedPolicy
from tests.smb_oracle import Oracle

TRANSITIONS_PER_CHUNK = 4  # FREE -> BEING_WRITTEN -> COMPLETE -> BEING_READ -> FREE
MIN_TRANSITIONS = 100_000
N_WRITERS = 3
CHUNKS_PER_WRITER = -(-MIN_TRANSITIONS // TRANSITIONS_PER_CHUNK // N_WRITERS)
DEADLINE_S = 90.0  # the whole exchange; a normal run takes a few seconds
HANDSHAKE_S = 30.0
DRAIN_AT = 256  # the mover verifies and forgets moved chunks once it holds this many
POOL_SIZE = 1 << 18
FIRST_MARK = b"\xb8\x05\x01"  # first_packet_on_sequence = true, added by the writer
MEMFD_NAME = "tracebus-two-process-smb"


class Case(NamedTuple):
    smb_size: int
    page_size: int
    layout: int  # 1, 3, 5: 1, 4, 14 chunks per page


CASES = {
    "1-chunk-per-page-32k": Case(32 * 1024, 4096, 1),
    "4-chunks-per-page-16k": Case(16 * 1024, 4096, 3),
    "14-chunks-per-page-16k": Case(16 * 1024, 4096, 5),
}


# -- the packet plan both processes follow -----------------------------------------------


class Nested(NamedTuple):
    """A protozero packet whose nested messages are big enough to span chunks."""

    index: int
    body: bytes
    tail: bytes


def _fill_nested(msg, p: Nested) -> None:
    msg.varint(8, p.index)  # timestamp
    with msg.begin_nested(900) as event:  # for_testing
        event.varint(3, p.index)
        with event.begin_nested(5) as payload:
            payload.bytes_field(1, p.body)
        event.bytes_field(1, p.tail)


def packet_plan(seed: int, payload: int):
    """Endless (packet, flush_after) pairs: packet is bytes or a Nested; `payload`
    is the chunk payload size, so sizes are relative to the chunks."""
    rng = random.Random(seed)
    pool = rng.randbytes(POOL_SIZE)
    for i in itertools.count():
        r = rng.random()
        if r < 0.05:
            body_size = rng.randint(payload // 2, 3 * payload)
            off = rng.randrange(POOL_SIZE - body_size)
            packet = Nested(i, pool[off : off + body_size], struct.pack("<IH", i, seed))
        else:
            if r < 0.40:
                n = rng.randint(1, 24)  # tiny
            elif r < 0.60:
                n = rng.randint(25, payload // 2)  # medium
            elif r < 0.80:
                n = rng.randint(payload - 24, payload)  # about one chunk
            else:
                n = rng.randint(payload + 1, 4 * payload)  # several chunks
            off = rng.randrange(POOL_SIZE - n)
            packet = (struct.pack("<IH", i, seed) + pool[off : off + n])[:n]
        yield packet, rng.random() < 0.02


def expected_packets(seed: int, payload: int):
    """The bytes the service must reassemble for the writer following packet_plan."""
    for i, (packet, _) in enumerate(packet_plan(seed, payload)):
        if isinstance(packet, Nested):
            packet = build(lambda msg, p=packet: _fill_nested(msg, p))
        yield packet + FIRST_MARK if i == 0 else packet


def _payload_size(case: Case) -> int:
    return chunk_size_for(case.page_size, case.layout) - CHUNK_HEADER_SIZE


# -- the writer process (the producer) ------------------------------------------------------


class _CountingProducerABI(SharedMemoryABI):
    """Counts the producer's successful transitions (called from several threads)."""

    def __init__(self, buf, geometry: Geometry) -> None:
        super().__init__(buf, geometry)
        self._count_lock = threading.Lock()
        self.acquired = 0  # FREE -> BEING_WRITTEN
        self.completed = 0  # BEING_WRITTEN -> COMPLETE

    def try_acquire_free_page(self, page, layout, writer_id, chunk_id):
        ref = super().try_acquire_free_page(page, layout, writer_id, chunk_id)
        if ref is not None:
            with self._count_lock:
                self.acquired += 1
        return ref

    def try_acquire_for_writing(self, page, chunk, writer_id, chunk_id):
        ref = super().try_acquire_for_writing(page, chunk, writer_id, chunk_id)
        if ref is not None:
            with self._count_lock:
                self.acquired += 1
        return ref

    def release_as_complete(self, ref) -> bool:
        ok = super().release_as_complete(ref)
        if ok:
            with self._count_lock:
                self.completed += 1
        return ok


class _TrackingArbiter(SharedMemoryArbiter):
    """Counts the chunks each writer got and checks it asked for consecutive ids."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chunks_of: dict[int, int] = {}  # writer id -> chunks acquired
        self.id_errors: list[str] = []

    def acquire_chunk(self, writer_id: int, chunk_id: int):
        ref = super().acquire_chunk(writer_id, chunk_id)
        if ref is not None:
            self._count(writer_id, chunk_id)
        return ref

    def turn_over(self, ref, packets_word: int, target_buffer: int, writer_id: int, chunk_id: int):
        new = super().turn_over(ref, packets_word, target_buffer, writer_id, chunk_id)
        if new is not None:  # a split packet's next chunk
            self._count(writer_id, chunk_id)
        return new

    def _count(self, writer_id: int, chunk_id: int) -> None:
        # only the writer's own thread touches its entry
        n = self.chunks_of.get(writer_id, 0)
        if chunk_id != n:
            self.id_errors.append(f"writer {writer_id} asked for chunk id {chunk_id}, not {n}")
        self.chunks_of[writer_id] = n + 1


def _writer_main(case: Case, commits, control) -> None:
    report: dict = {"error": None}
    try:
        _run_writer(case, commits, control, report)
    except BaseException:
        report["error"] = traceback.format_exc()
    try:
        control.send(report)
    finally:
        commits.close()
        control.close()


def _run_writer(case: Case, commits, control, report: dict) -> None:
    geometry = resolve_geometry(case.smb_size, case.page_size)
    assert (geometry.size, geometry.page_size) == (case.smb_size, case.page_size)
    region = MemfdRegion.create(geometry.size, name=MEMFD_NAME)
    abi = _CountingProducerABI(region.buf, geometry)
    sent = {"batches": 0, "moves": 0, "patch_entries": 0, "largest_batch": 0}

    def on_commit(batch: CommitBatch) -> None:  # the arbiter serializes deliveries
        moves = [tuple(m) for m in batch.chunks_to_move]
        patches = [
            (p.target_buffer, p.writer_id, p.chunk_id, p.patches, p.has_more_patches)
            for p in batch.chunks_to_patch
        ]
        commits.send(("batch", moves, patches, batch.flush_request_id))
        sent["batches"] += 1
        sent["moves"] += len(moves)
        sent["patch_entries"] += len(patches)
        sent["largest_batch"] = max(sent["largest_batch"], len(moves))

    sleeps = itertools.count()

    def sleep(seconds: float) -> None:
        next(sleeps)  # atomic under the GIL
        time.sleep(seconds)

    arbiter = _TrackingArbiter(abi, on_commit, sleep=sleep, layout=case.layout)
    writers = [
        arbiter.create_trace_writer(i + 1, BufferExhaustedPolicy.STALL) for i in range(N_WRITERS)
    ]
    seeds = {w.writer_id: 1000 * case.layout + i for i, w in enumerate(writers)}
    control.send(
        {
            "pid": os.getpid(),
            "fd": region.fd,
            "inode": os.fstat(region.fd).st_ino,
            "size": geometry.size,
            "page_size": geometry.page_size,
            "writers": [(w.writer_id, seeds[w.writer_id], w.target_buffer) for w in writers],
        }
    )
    if not control.poll(HANDSHAKE_S) or control.recv() != "go":
        raise TimeoutError("no 'go' from the test")

    payload = _payload_size(case)
    written: dict[int, int] = {}
    errors: list[str] = []

    def run(w) -> None:
        n = 0
        try:
            for packet, flush in packet_plan(seeds[w.writer_id], payload):
                if arbiter.chunks_of.get(w.writer_id, 0) >= CHUNKS_PER_WRITER:
                    break
                if isinstance(packet, Nested):
                    msg = w.new_packet()
                    _fill_nested(msg, packet)
                    msg.end()
                else:
                    w.write_packet(packet)
                n += 1
                if flush:
                    w.flush()
            w.flush()
        except BaseException:
            errors.append(traceback.format_exc())
        finally:
            written[w.writer_id] = n

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in writers]
    started = time.monotonic()
    for t in threads:
        t.start()
    deadline = started + DEADLINE_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise TimeoutError("writer threads did not finish")
    arbiter.commit()
    elapsed = time.monotonic() - started
    per_writer = {
        w.writer_id: {
            "packets": written[w.writer_id],
            "chunks": arbiter.chunks_of.get(w.writer_id, 0),
            "dropped_packets": w.dropped_packets,
            "dropped_bytes": w.dropped_bytes,
        }
        for w in writers
    }
    commits.send(("end", per_writer))
    report.update(
        per_writer=per_writer,
        thread_errors=errors,
        id_errors=arbiter.id_errors,
        acquired=abi.acquired,
        completed=abi.completed,
        stalls=next(sleeps),
        seconds=elapsed,
        **sent,
    )
    region.close()


# -- the mover process (the service's commit path) -------------------------------------------


class _CountingServiceABI(SharedMemoryABI):
    """Counts the service-side transitions and every CAS it did not win."""

    reads = frees = 0

    def __init__(self, buf, geometry: Geometry) -> None:
        super().__init__(buf, geometry)
        self.failures: list[str] = []

    def try_acquire_for_reading(self, page, chunk):
        ref = super().try_acquire_for_reading(page, chunk)
        if ref is None:
            self.failures.append(f"acquire {page}/{chunk}: bitmap {self.bitmap(page):#010x}")
        else:
            self.reads += 1
        return ref

    def release_as_free(self, ref) -> bool:
        ok = super().release_as_free(ref)
        if ok:
            self.frees += 1
        else:
            self.failures.append(f"free {ref}: bitmap {self.bitmap(ref.page):#010x}")
        return ok


class _Sequence:
    """What the mover knows about one writer's sequence so far."""

    def __init__(self, seed: int, target_buffer: int, payload: int) -> None:
        self.target_buffer = target_buffer
        self.expected = expected_packets(seed, payload)
        self.next_chunk_id = 0
        self.chunks = 0
        self.packets = 0


class StreamingVerifier:
    """An Oracle that is drained as it goes: whole packets are checked and forgotten."""

    def __init__(self, abi: SharedMemoryABI, writers, payload: int) -> None:
        self.oracle = Oracle(abi)
        self.sequences = {wid: _Sequence(seed, tb, payload) for wid, seed, tb in writers}
        self.patch_entries = 0

    def on_commit(self, batch: CommitBatch) -> None:
        self.oracle.on_commit(batch)  # asserts every acquire and free succeeded
        self.patch_entries += len(batch.chunks_to_patch)
        if len(self.oracle.chunks) >= DRAIN_AT:
            self.drain(final=False)

    def drain(self, final: bool) -> None:
        groups: dict[int, list] = {}
        for chunk in self.oracle.chunks:
            groups.setdefault(chunk.writer_id, []).append(chunk)
        keep = []
        for wid, chunks in groups.items():
            cut = len(chunks) if final else _complete_prefix(chunks)
            if cut:
                self._verify(wid, chunks[:cut])
            keep.extend(chunks[cut:])
        self.oracle.chunks = keep

    def _verify(self, wid: int, chunks) -> None:
        seq = self.sequences.get(wid)
        assert seq is not None, f"a chunk from unknown writer {wid}"
        first = chunks[0].chunk_id
        assert first == seq.next_chunk_id, (
            f"writer {wid}: chunk {first} follows chunk {seq.next_chunk_id - 1}"
            f" ({'duplicated' if first < seq.next_chunk_id else 'lost'} chunks)"
        )
        bad = [c.chunk_id for c in chunks if c.target_buffer != seq.target_buffer]
        assert not bad, f"writer {wid}: chunks {bad[:5]} moved to the wrong buffer"
        # Oracle.packets asserts consecutive ids and that every patch arrived.
        packets, aborted = Oracle(self.oracle.abi, chunks).packets(wid)
        assert aborted == 0, f"writer {wid}: {aborted} abandoned packets"
        for got in packets:
            want = next(seq.expected)
            if got != want:
                pairs = enumerate(zip(got, want, strict=False))
                at = next((i for i, (x, y) in pairs if x != y), min(len(got), len(want)))
                raise AssertionError(
                    f"writer {wid} packet {seq.packets}: {len(got)} bytes, expected"
                    f" {len(want)}, first difference at {at}"
                )
            seq.packets += 1
        seq.next_chunk_id = chunks[-1].chunk_id + 1
        seq.chunks += len(chunks)


def _complete_prefix(chunks) -> int:
    """How many leading chunks hold only whole, fully patched packets."""
    cut = 0
    for i, chunk in enumerate(chunks):
        if chunk.flags & NEEDS_PATCHING:  # its patches are still to come
            break
        if not chunk.flags & LAST_PACKET_CONTINUES:  # a packet boundary
            cut = i + 1
    return cut


def _mover_main(path: str, size: int, page_size: int, writers, payload, commits, control):
    report: dict = {"error": None}
    region = abi = None
    try:
        region = MemfdRegion.attach_path(path, size)
        abi = _CountingServiceABI(region.buf, Geometry(size, page_size))
        control.send(("attached", os.fstat(region.fd).st_ino))
        verifier = StreamingVerifier(abi, writers, payload)
        batches = 0
        deadline = time.monotonic() + DEADLINE_S
        while True:
            if not commits.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"no commit from the writer after {batches} batches")
            msg = commits.recv()
            if msg[0] == "end":
                verifier.drain(final=True)
                report["writer_end"] = msg[1]
                break
            _, moves, patches, flush_id = msg
            batch = CommitBatch(
                [ChunkToMove(*m) for m in moves], [ChunkToPatch(*p) for p in patches], flush_id
            )
            verifier.on_commit(batch)
            batches += 1
        report.update(
            batches=batches,
            patch_entries=verifier.patch_entries,
            sequences={
                wid: {"chunks": s.chunks, "packets": s.packets, "next_chunk_id": s.next_chunk_id}
                for wid, s in verifier.sequences.items()
            },
        )
    except BaseException:
        report["error"] = traceback.format_exc()
    finally:
        if abi is not None:
            report.update(reads=abi.reads, frees=abi.frees, cas_failures=abi.failures[:20])
        try:
            control.send(report)
        finally:
            commits.close()
            control.close()
            if region is not None:
                region.close()


# -- the test -----------------------------------------------------------------------------------


def _dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _mapped_memfds() -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if f"memfd:{MEMFD_NAME}" in line]


def _recv(conn, proc, what: str, timeout: float):
    """One message from a child, or fail if it dies or the deadline passes."""
    ready = wait([conn, proc.sentinel], timeout)
    if conn in ready or conn.poll():
        return conn.recv()
    if proc.sentinel in ready:
        pytest.fail(f"{what}: the child exited with code {proc.exitcode}")
    pytest.fail(f"{what}: no answer within {timeout} s")


def _collect(children: dict, deadline: float) -> dict:
    """The final report of every child; fails early when one reports an error or dies."""
    reports: dict = {}
    while len(reports) < len(children):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no report from {sorted(set(children) - set(reports))}: {reports}")
        waiting = {n: c for n, c in children.items() if n not in reports}
        ready = wait(
            [conn for conn, _ in waiting.values()] + [p.sentinel for _, p in waiting.values()],
            remaining,
        )
        for name, (conn, proc) in waiting.items():
            if conn in ready or (proc.sentinel in ready and conn.poll()):
                try:
                    reports[name] = conn.recv()
                except EOFError:
                    pytest.fail(f"the {name} exited with code {proc.exitcode} without a report")
                if reports[name]["error"]:
                    pytest.fail(f"the {name} failed:\n{reports[name]['error']}\n{reports[name]}")
            elif proc.sentinel in ready:
                pytest.fail(f"the {name} exited with code {proc.exitcode} without a report")
    return reports


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_two_processes_move_every_chunk_exactly_once(case: Case):
    shm_before = _dev_shm()
    ctx = mp.get_context("spawn")
    commits_out, commits_in = ctx.Pipe(duplex=False)  # writer -> mover, one message a batch
    writer_ctl, writer_ctl_child = ctx.Pipe()
    mover_ctl, mover_ctl_child = ctx.Pipe()
    writer = ctx.Process(
        target=_writer_main, args=(case, commits_in, writer_ctl_child), name="smb-writer"
    )
    mover = None
    region = None
    conns = [commits_out, commits_in, writer_ctl, writer_ctl_child, mover_ctl, mover_ctl_child]
    started = time.monotonic()
    try:
        writer.start()
        commits_in.close()
        writer_ctl_child.close()
        hello = _recv(writer_ctl, writer, "writer handshake", HANDSHAKE_S)
        assert "error" not in hello, hello["error"]
        path = f"/proc/{hello['pid']}/fd/{hello['fd']}"
        region = MemfdRegion.attach_path(path, case.smb_size)  # for the final bitmaps
        assert os.fstat(region.fd).st_ino == hello["inode"]
        mover = ctx.Process(
            target=_mover_main,
            args=(
                path,
                hello["size"],
                hello["page_size"],
                hello["writers"],
                _payload_size(case),
                commits_out,
                mover_ctl_child,
            ),
            name="smb-mover",
        )
        mover.start()
        commits_out.close()
        mover_ctl_child.close()
        assert _recv(mover_ctl, mover, "mover attach", HANDSHAKE_S) == ("attached", hello["inode"])
        writer_ctl.send("go")

        reports = _collect(
            {"writer": (writer_ctl, writer), "mover": (mover_ctl, mover)},
            time.monotonic() + DEADLINE_S,
        )
        for proc in (writer, mover):
            proc.join(HANDSHAKE_S)
            assert proc.exitcode == 0, f"{proc.name} exited with {proc.exitcode}"
        w, m = reports["writer"], reports["mover"]
        print(
            f"\n{case}: {time.monotonic() - started:.1f} s, writing {w['seconds']:.1f} s,"
            f" {m['reads']} chunks, {w['batches']} batches (largest {w['largest_batch']}),"
            f" {w['patch_entries']} patch entries, {w['stalls']} stall sleeps,"
            f" packets {[s['packets'] for s in w['per_writer'].values()]}"
        )

        # the producer side: nothing dropped, ids asked for in order, nothing failed
        assert w["thread_errors"] == [], "\n".join(w["thread_errors"])
        assert w["id_errors"] == []
        for wid, s in w["per_writer"].items():
            assert (s["dropped_packets"], s["dropped_bytes"]) == (0, 0), (wid, s)
            assert s["chunks"] >= CHUNKS_PER_WRITER, (wid, s)
        # the service side: every committed chunk acquired and freed, none missing
        assert m["cas_failures"] == []
        assert m["batches"] == w["batches"], "one message per CommitBatch, none lost"
        assert m["patch_entries"] == w["patch_entries"] > 0
        assert m["writer_end"] == w["per_writer"]
        for wid, s in w["per_writer"].items():
            seen = m["sequences"][wid]
            assert seen["chunks"] == seen["next_chunk_id"] == s["chunks"], (wid, seen, s)
            assert seen["packets"] == s["packets"], (wid, seen, s)
        chunks = sum(s["chunks"] for s in w["per_writer"].values())
        assert w["moves"] == chunks
        assert w["acquired"] == w["completed"] == m["reads"] == m["frees"] == chunks
        transitions = w["acquired"] + w["completed"] + m["reads"] + m["frees"]
        assert transitions == TRANSITIONS_PER_CHUNK * chunks >= MIN_TRANSITIONS

        smb = SharedMemoryABI(region.buf, Geometry(case.smb_size, case.page_size))
        bitmaps = [smb.bitmap(page) for page in range(smb.num_pages)]
        assert bitmaps == [0] * len(bitmaps), [hex(b) for b in bitmaps]
    finally:
        for proc in (writer, mover):
            if proc is None or proc.pid is None:
                continue
            if proc.is_alive():
                proc.kill()
                proc.join(10)
        for conn in conns:
            conn.close()
        if region is not None:
            region.close()
    assert not writer.is_alive() and not mover.is_alive()
    assert _mapped_memfds() == []
    assert _dev_shm() - shm_before == set()
