"""shm.trace_buffer under hostile producers.

A producer controls every byte of its chunks, headers and patches. Here one
producer's valid multi-fragment chunk streams (packets split across chunks,
patches, scrapes) are mutated at random (bytes flipped, lengths broken or set
huge, counts, flags, chunk and writer ids changed, payloads cut or extended,
commits reordered, repeated or dropped, patches with any offset and size) and
interleaved with honest sequences in the same buffer. Whatever happens:

- no exception escapes;
- nothing is read outside a chunk: the honest data and the ring's stale bytes
  carry a canary that never shows up in a hostile packet;
- the honest sequences (another producer's, and another writer of the same
  producer) read back complete, intact, in order, with no loss reported;
- bad headers and bad patches move counters (checked call by call);
- the ring and the sequence index stay consistent (white-box check).

Most cases are mutations that pass header validation and reach reassembly; the
test counts them and requires at least half of them to get there. The seeded
test runs TRACEBUS_FUZZ_CASES cases (2,000 by default, the edit-test loop); the
full 20,000 run as a separate test marked `slow` (`pytest -m "not slow"` skips it).
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shm.abi import FIRST_PACKET_CONTINUES as FIRST
from shm.abi import LAST_PACKET_CONTINUES as LAST
from shm.abi import NEEDS_PATCHING, PACKET_DROPPED_SIZE, is_valid_writer_id
from shm.packets import encode_size4, parse_fragments_untrusted
from shm.trace_buffer import RECORD_HEADER, FillPolicy, TraceBuffer

CANARY = bytes(range(0xE0, 0xF0))  # 16 bytes no mutation produces by chance
HONEST_PRODUCER, HOSTILE_PRODUCER = 1, 2
HONEST_WRITERS = ((1, 1), (1, 2), (1, 3), (2, 100))  # (producer, writer)
HOSTILE_WRITER = 7
FULL_CASES = 20_000
SEED_CASES = int(os.environ.get("TRACEBUS_FUZZ_CASES", "2000"))


class ProbedBuffer(TraceBuffer):
    """Records which sequences got past header validation and into reassembly
    (reading or evicting: both join a split packet's pieces in RecordRing)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.validated: set[tuple[int, int]] = set()
        self.reassembled: set[tuple[int, int]] = set()
        ring = self._ring
        sequence, join_pieces = ring.sequence, ring.join_pieces

        def probed_sequence(producer_id, writer_id, uid, pid):
            self.validated.add((producer_id, writer_id))
            return sequence(producer_id, writer_id, uid, pid)

        def probed_join_pieces(seq, *args):
            self.reassembled.add((seq.producer_id, seq.writer_id))
            return join_pieces(seq, *args)

        ring.sequence, ring.join_pieces = probed_sequence, probed_join_pieces


# -- valid chunk streams -------------------------------------------------------------------


def split_into_chunks(rnd, packets, first_id, capacity, patchable=False):
    """Chunks (chunk_id, count, flags, payload) a writer would produce for
    `packets`, and the patches (chunk_id, offset, 4 bytes) a split packet needs
    when `patchable`: a piece's first 4 bytes are then zeroed until patched."""
    chunks, patches = [], []
    cur, count, flags, cid = bytearray(), 0, 0, first_id

    def close(last_continues):
        nonlocal cur, count, flags, cid
        if not last_continues and count and len(cur) < capacity and rnd.random() < 0.5:
            cur += b"\x00"  # the inflation byte
            count += 1
        chunks.append([cid & 0xFFFFFFFF, count, flags | (LAST if last_continues else 0), cur])
        cur, count, flags, cid = bytearray(), 0, FIRST if last_continues else 0, cid + 1

    for packet in packets:
        if count and capacity - len(cur) < 12:
            close(False)
        data = packet
        while True:
            room = capacity - len(cur) - 4
            if len(data) <= room:
                short = data is packet and len(data) < 0x80 and rnd.random() < 0.5
                cur += bytes([len(data)]) if short else encode_size4(len(data))  # pieces: 4
                cur += data
                count += 1
                break
            piece, data = data[:room], data[room:]
            start = len(cur) + 4
            cur += encode_size4(len(piece)) + piece
            count += 1
            if patchable and len(piece) >= 4 and rnd.random() < 0.5:
                patches.append((cid & 0xFFFFFFFF, start, bytes(cur[start : start + 4])))
                cur[start : start + 4] = bytes(4)
                flags |= NEEDS_PATCHING
            close(True)
    if count:
        close(False)
    return [(c, n, f, bytes(p)) for c, n, f, p in chunks], patches


def honest_packet(producer, writer, serial, size):
    head = CANARY + struct.pack("<HHI", producer, writer, serial)
    return (head + CANARY * (size // 16 + 1))[: max(size, len(head))]


def hostile_packets(rnd):
    sizes = [rnd.choice((0, 1, 5, 40, 127, 128, 300, 700)) for _ in range(rnd.randint(3, 9))]
    # Hostile bytes avoid the canary's range so a canary can only come from elsewhere.
    return [bytes(rnd.randrange(0xE0) for _ in range(size)) for size in sizes]


# -- mutations -------------------------------------------------------------------------------

BAD_IDS = (-1, 1 << 32, 1 << 40, -(1 << 31))


def length_offsets(payload):
    """Where the fragments' lengths are in a valid payload."""
    bounds, _ = parse_fragments_untrusted(payload, 0, len(payload), len(payload))
    return [0] + bounds[1:-1:2]


def mutate_payload(rnd, payload):
    data = bytearray(payload)
    kind = rnd.randrange(6)
    if kind == 0 and data:  # flip bytes
        for _ in range(rnd.randint(1, 6)):
            data[rnd.randrange(len(data))] ^= rnd.randint(1, 255)
    elif kind == 1 and data:  # a length set to something odd, mostly a real one
        heads = length_offsets(payload)
        at = rnd.choice(heads) if heads and rnd.random() < 0.7 else rnd.randrange(len(data))
        size = rnd.choice((PACKET_DROPPED_SIZE, (1 << 28) - 2, 0x3FFF, 0, rnd.randrange(1 << 16)))
        odd = rnd.choice((encode_size4(size), b"\xff\xff\xff\xff\xff", b"\x80", b"\xff\x7f"))
        data[at : at + len(odd)] = odd
    elif kind == 2:  # truncated
        del data[rnd.randrange(len(data) + 1) :]
    elif kind == 3:  # extended
        data += bytes(rnd.randrange(0xE0) for _ in range(rnd.randint(1, 64)))
    elif kind == 4 and data:  # a byte set to a continuation byte
        data[rnd.randrange(len(data))] = rnd.choice((0x80, 0xFF, 0x7F, 0x00))
    else:  # shuffled tail
        cut = rnd.randrange(len(data) + 1)
        tail = data[cut:]
        rnd.shuffle(tail)
        data[cut:] = tail
    return bytes(data)


def mutate_copy(rnd, op):
    """A copy op (kind, writer, chunk_id, count, flags, complete, payload), mutated."""
    _, writer, cid, count, flags, complete, payload = op
    kind = rnd.randrange(10)
    if kind <= 3:
        payload = mutate_payload(rnd, payload)
    elif kind == 4:
        count = rnd.choice((count + 1, count - 1, 0, 1, 1023, rnd.randrange(64), 1024, -1))
    elif kind == 5:
        flags = rnd.choice((flags ^ rnd.randint(1, 7), rnd.randrange(64), 64, -1, 255))
    elif kind == 6:
        cid = rnd.choice((cid + 1, cid - 1, cid ^ 0x80000000, rnd.randrange(1 << 32), *BAD_IDS))
    elif kind == 7:
        writer = rnd.choice((rnd.randint(1, 99), 0, 32768, -3, 1 << 20, HOSTILE_WRITER + 1))
    elif kind == 8:
        complete = not complete
    else:
        payload = payload + bytes(rnd.choice((0x10000, 70000)))  # over the 64 KiB limit
    return ("copy", writer, cid, count, flags, complete, payload)


def header_is_invalid(op):
    _, writer, cid, count, flags, _, payload = op
    return not (
        is_valid_writer_id(writer)
        and 0 <= cid < 1 << 32
        and 0 <= count <= 1023
        and 0 <= flags <= 63
        and len(payload) <= 0xFFFF
    )


def random_patch(rnd, chunk_ids):
    """A patch op (kind, writer, chunk_id, patches, has_more) aimed anywhere."""
    writer = rnd.choice((HOSTILE_WRITER, HOSTILE_WRITER, rnd.randint(1, 99), 0, 40000, -1))
    cid = rnd.choice((*chunk_ids, rnd.randrange(1 << 32), *BAD_IDS)) if chunk_ids else 0
    patches = [
        (
            rnd.choice((rnd.randrange(600), -rnd.randint(1, 8), 1 << 20, rnd.randrange(8))),
            bytes(rnd.randrange(256) for _ in range(rnd.choice((4, 4, 4, 0, 3, 5, 8)))),
        )
        for _ in range(rnd.randint(0, 4))
    ]
    return ("patch", writer, cid, patches, rnd.random() < 0.3)


def patch_must_fail(op):
    _, writer, cid, patches, _ = op
    if not (is_valid_writer_id(writer) and 0 <= cid < 1 << 32):
        return True
    return any(offset < 0 or len(data) != 4 for offset, data in patches[:1])


def hostile_ops(rnd):
    """A hostile writer's valid stream (with scrapes and patches), then 1-4 mutations."""
    first_id = rnd.choice((0, 5, 0xFFFFFFFE, rnd.randrange(1 << 32)))
    chunks, patches = split_into_chunks(
        rnd, hostile_packets(rnd), first_id, rnd.choice((64, 128, 256)), patchable=True
    )
    ops = []
    for cid, count, flags, payload in chunks:
        if rnd.random() < 0.15:  # scraped first, committed later
            ops.append(("copy", HOSTILE_WRITER, cid, count, flags, False, payload + bytes(16)))
        ops.append(("copy", HOSTILE_WRITER, cid, count, flags, True, payload))
    for cid, offset, data in patches:
        ops.append(("patch", HOSTILE_WRITER, cid, [(offset, data)], False))
    for _ in range(rnd.randint(1, 4)):
        kind = rnd.randrange(10)
        copies = [i for i, op in enumerate(ops) if op[0] == "copy"]
        if kind <= 5 and copies:
            i = rnd.choice(copies)
            ops[i] = mutate_copy(rnd, ops[i])
        elif kind == 6:
            rnd.shuffle(ops)  # commits out of order (and patches before their chunk)
        elif kind == 7 and len(ops) > 1:
            del ops[rnd.randrange(len(ops))]  # a chunk or a patch never arrives
        elif kind == 8:
            ops.insert(rnd.randrange(len(ops) + 1), rnd.choice(ops))  # sent twice
        else:
            ops.insert(rnd.randrange(len(ops) + 1), random_patch(rnd, [c[0] for c in chunks]))
    return ops


# -- the honest side -------------------------------------------------------------------------


class Honest:
    """Honest writers: what they sent, and what must come back."""

    def __init__(self) -> None:
        self.next_id = {key: 0 for key in HONEST_WRITERS}
        self.serial = 0
        self.expected: dict[tuple[int, int], list[bytes]] = {key: [] for key in HONEST_WRITERS}
        self.received: dict[tuple[int, int], list[bytes]] = {key: [] for key in HONEST_WRITERS}

    def ops(self, rnd):
        out = []
        for key in HONEST_WRITERS:
            packets = []
            for _ in range(rnd.randint(0, 3)):
                self.serial += 1
                packets.append(honest_packet(*key, self.serial, rnd.choice((20, 90, 300))))
            chunks, _ = split_into_chunks(rnd, packets, self.next_id[key], 256)
            self.next_id[key] += len(chunks)
            self.expected[key] += packets
            out += [("honest", key, c, n, f, p) for c, n, f, p in chunks]
        return out

    def check(self) -> None:
        assert self.received == self.expected
        for key in HONEST_WRITERS:
            self.expected[key].clear()
            self.received[key].clear()


# -- driving a buffer ------------------------------------------------------------------------


def apply(tb, op):
    """Run one op; checks the counters a bad header or patch must move."""
    if op[0] == "honest":
        _, (producer, writer), cid, count, flags, payload = op
        tb.copy_chunk_untrusted(
            producer, 1000 + producer, 50, writer, cid, count, flags, True, payload
        )
    elif op[0] == "copy":
        _, writer, cid, count, flags, complete, payload = op
        before = tb.stats
        tb.copy_chunk_untrusted(
            HOSTILE_PRODUCER, 2000, 66, writer, cid, count, flags, complete, memoryview(payload)
        )
        if header_is_invalid(op):  # rejected (a latched DISCARD buffer rejects first)
            after = tb.stats
            moved = after.abi_violations - before.abi_violations
            moved += after.chunks_discarded - before.chunks_discarded
            assert moved == 1 and after.chunks_written == before.chunks_written
    else:
        _, writer, cid, patches, has_more = op
        before = tb.stats.patches_failed
        ok = tb.try_patch_chunk(HOSTILE_PRODUCER, writer, cid, patches, has_more)
        assert tb.stats.patches_failed == before + (not ok)
        if patch_must_fail(op):
            assert not ok


def drain(tb, honest, rnd, partial=False):
    """Read (all, or a few packets); sort what comes out into honest and hostile."""
    tb.begin_read()
    budget = rnd.choice((1, 100, 4096, 1 << 20))
    for _ in range(rnd.randint(1, 3) if partial else 1 << 30):
        packets = [tb.read_next_packet()] if budget == 1 else tb.read_packets(budget)
        if not packets or packets == [None]:
            break
        for p in packets:
            key = (p.producer_id, p.writer_id)
            if key in honest.received:
                assert p.loss_flags == 0, p
                honest.received[key].append(p.data)
            else:
                assert p.producer_id == HOSTILE_PRODUCER and p.uid == 2000 and p.pid == 66
                assert CANARY not in p.data, "a hostile packet holds bytes from outside its chunks"


def check_invariants(tb) -> None:
    """The ring tiles [0, used) with records; each sequence lists live records of
    its own, honest ones in chunk-id order (ids a hostile producer puts 2**31
    apart cannot be ordered modulo 2**32); every live record is listed once."""
    ring = tb._ring
    buf, used, wr = ring.buf, ring.used, ring.wr
    assert used <= len(buf) and wr <= len(buf) and wr % 16 == 0
    live, starts, off = {}, set(), 0
    while off < used:
        cid, key, size, payload, unread, _ = RECORD_HEADER.unpack_from(buf, off)
        starts.add(off)
        if key:
            assert unread <= payload <= size
            live[off] = (key, cid)
        off += (16 + size + 15) & ~15
    assert off == used
    assert wr in starts or wr >= used
    listed = []
    for key, seq in ring.seqs.items():
        ids = [live[o][1] for o in seq.chunks if live.get(o, (None,))[0] == key]
        assert len(ids) == len(seq.chunks)
        if key >> 16 != HOSTILE_PRODUCER:  # hostile ids 2**31 apart have no order at all
            pairs = zip(ids, ids[1:], strict=False)
            assert all(0 < (b - a) & 0xFFFFFFFF < 1 << 31 for a, b in pairs)
        listed += seq.chunks
    assert sorted(listed) == sorted(live)


def prefill(tb, honest, rnd):
    """Cover the whole ring with honest (canary) bytes, so stale memory is marked."""
    while tb.stats.write_wrap_count == 0:
        for op in honest.ops(rnd):
            apply(tb, op)
        drain(tb, honest, rnd)
    honest.check()


def interleave(rnd, a, b):
    """a and b merged at random, each keeping its own order."""
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if j == len(b) or (i < len(a) and rnd.random() < 0.5):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


def run_case(tb, honest, rnd) -> bool:
    """One case: honest and hostile ops interleaved, reads in between, then a
    full read. True if a mutated hostile chunk got past header validation and
    its sequence reached reassembly."""
    tb.validated.clear()
    tb.reassembled.clear()
    ops = interleave(rnd, honest.ops(rnd), hostile_ops(rnd))
    for op in ops:
        apply(tb, op)
        if rnd.random() < 0.05:
            drain(tb, honest, rnd, partial=True)
    drain(tb, honest, rnd)
    drain(tb, honest, rnd)  # stalls end with the generation: anything left comes now
    honest.check()
    hostile = {key for key in tb.validated if key[0] == HOSTILE_PRODUCER}
    return bool(hostile & tb.reassembled)


def run_seeded_mutations(cases: int) -> None:
    """`cases` seeded cases on one buffer; the counters' floors scale with it."""
    rnd = random.Random(0x7B0F)
    honest = Honest()
    tb = ProbedBuffer(128 * 1024)
    prefill(tb, honest, rnd)
    deep = 0
    for case in range(cases):
        deep += run_case(tb, honest, rnd)
        if case % 500 == 0:
            check_invariants(tb)
    check_invariants(tb)
    stats = tb.stats
    per = cases / FULL_CASES  # the floors below were set for the full run
    assert deep >= cases // 2, deep
    # Counters moved instead of exceptions.
    assert stats.abi_violations > 1000 * per and stats.patches_failed > 1000 * per
    assert stats.readaheads_succeeded > 1000 * per and stats.readaheads_failed > 100 * per
    assert stats.write_wrap_count > 10 * per and stats.chunks_discarded > 100 * per
    assert stats.trace_writer_packet_loss > 10 * per and stats.chunks_rewritten > 100 * per


def test_seeded_mutations_of_valid_chunk_streams():
    run_seeded_mutations(SEED_CASES)


@pytest.mark.slow
def test_seeded_mutations_of_valid_chunk_streams_full():
    run_seeded_mutations(FULL_CASES)


@settings(max_examples=300)
@given(seed=st.integers(0, 2**32 - 1), discard=st.booleans(), size=st.sampled_from((4096, 16384)))
def test_small_buffers_both_policies(seed, discard, size):
    """Small rings wrap (or latch) within a case; honest data may then be
    overwritten or discarded, so only safety and consistency are checked."""
    rnd = random.Random(seed)
    tb = ProbedBuffer(size, FillPolicy.DISCARD if discard else FillPolicy.RING_BUFFER)
    honest = Honest()
    for _ in range(4):
        for op in interleave(rnd, honest.ops(rnd), hostile_ops(rnd)):
            apply(tb, op)
        tb.begin_read()
        while packets := tb.read_packets(rnd.choice((1, 512))):
            for p in packets:
                if p.producer_id == HOSTILE_PRODUCER and p.writer_id != 100:
                    assert CANARY not in p.data
        check_invariants(tb)
