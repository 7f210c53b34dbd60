"""Per-writer histograms of chunk payload sizes: TraceStats.writer_stats.

Perfetto's TraceBuffer counts every chunk a writer commits into a histogram of
its payload size (the bytes of the fragments the chunk holds, each with its
length header), per {producer, writer}; the service reports one WriterStats
per writer sequence at the end of a read, and the buckets' upper bounds once,
in TraceStats.chunk_payload_histogram_def. A writer whose chunks are mostly
small is one that flushes too often (or commits half-empty chunks).

    bucket     0    1    2     3     4      5      6      7      8       9      10
    payload   <=8  <=32 <=128 <=512 <=1024 <=2048 <=4096 <=8192 <=12288 <=16384 >16384
    chunk_payload_histogram_def = [8, 32, ..., 16384]: the bounds, none for the last

Counted where Perfetto's V2 buffer counts them: on each chunk copied in, once it
is measured and fits the buffer (so a recommit counts again, as there), before
its chunk id is checked. Pure and cheap (a dict lookup and a bisect per chunk).

Bounded: at most MAX_WRITERS_PER_BUFFER histograms per buffer (a producer
chooses its writer ids); the chunks of writers beyond that are counted in
`untracked_chunks` only (the buffer's own stats still count them).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import NamedTuple

# Perfetto's TraceBuffer_WriterStats::WriterBuckets thresholds (trace_buffer.h).
CHUNK_PAYLOAD_THRESHOLDS = (8, 32, 128, 512, 1024, 2048, 4096, 8192, 12288, 16384)
NUM_BUCKETS = len(CHUNK_PAYLOAD_THRESHOLDS) + 1  # and the overflow bucket
MAX_WRITERS_PER_BUFFER = 4096


class WriterHistogram(NamedTuple):
    """One writer's chunks: count and sum of payload bytes per bucket."""

    producer_id: int
    writer_id: int
    counts: list[int]
    sums: list[int]


class WriterStats:
    """The histograms of one buffer, by writer (keyed producer_id << 16 | writer_id,
    as the buffer keys its sequences), in the order writers first committed."""

    __slots__ = ("_hists", "untracked_chunks")

    def __init__(self) -> None:
        # key -> [count per bucket ..., sum per bucket ...]: one list, one lookup.
        self._hists: dict[int, list[int]] = {}
        self.untracked_chunks = 0

    def add(self, key: int, payload: int) -> None:
        """Count a chunk of `payload` bytes (measured by the buffer) for writer `key`."""
        hist = self._hists.get(key)
        if hist is None:
            if len(self._hists) >= MAX_WRITERS_PER_BUFFER:
                self.untracked_chunks += 1
                return
            hist = self._hists[key] = [0] * (2 * NUM_BUCKETS)
        bucket = bisect_left(CHUNK_PAYLOAD_THRESHOLDS, payload)  # first bound >= payload
        hist[bucket] += 1
        hist[NUM_BUCKETS + bucket] += payload

    def __len__(self) -> int:
        return len(self._hists)

    def __iter__(self) -> Iterator[WriterHistogram]:
        for key, hist in self._hists.items():
            counts, sums = hist[:NUM_BUCKETS], hist[NUM_BUCKETS:]
            yield WriterHistogram(key >> 16, key & 0xFFFF, counts, sums)

    def copy(self) -> WriterStats:
        """An independent copy (a cloned buffer's, say)."""
        other = WriterStats()
        other._hists = {key: list(hist) for key, hist in self._hists.items()}
        other.untracked_chunks = self.untracked_chunks
        return other
