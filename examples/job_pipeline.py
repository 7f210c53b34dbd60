"""A multi-process job pipeline, instrumented with the tracebus API only.

    tracebus run -- python examples/job_pipeline.py [--jobs 40] [--start-method spawn]

A source process makes jobs, four workers process them, a writer enriches the
results in an asyncio stage and writes them out; multiprocessing queues connect
them. Every job carries a flow (flow=job) from the source through a worker to
the writer, so ui.perfetto.dev draws an arrow from slice to slice across the
processes. The workers also count cache misses (instants), the source reports
the queue depth (a counter), and each worker's "dump" slice is in the
`verbose` category, which examples/configs/job_pipeline.pbtxt disables.

Nothing here knows about sessions, producers or buffers: the processes trace
when a session wants their events (`tracebus run`, or the topology
examples/job_pipeline.yaml) and cost one check per event otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import sys
from typing import Any

import tracebus

WORKERS = 4
DONE = None  # what the source puts on the queue once per worker when it has no more jobs


def source(jobs: Any, count: int) -> None:
    for job in range(count):
        with tracebus.slice("make_job", category="source", args={"job": job}, flow=job):
            payload = hashlib.sha256(str(job).encode()).digest() * (1 + job % 4)
        jobs.put((job, payload))
        tracebus.counter("jobs_made", job + 1, category="source")
    for _ in range(WORKERS):
        jobs.put(DONE)


def worker(jobs: Any, results: Any) -> None:
    # On the timeline from its start, even if the other workers take every job.
    tracebus.instant("worker_ready", category="work")
    seen: set[bytes] = set()
    while (item := jobs.get()) is not DONE:
        job, payload = item
        with tracebus.slice("process", category="work", args={"job": job}, flow=job):
            with tracebus.slice("hash", category="work", args={"bytes": len(payload)}):
                digest = payload
                for _ in range(200):
                    digest = hashlib.sha256(digest).digest()
            if digest[:1] not in seen:
                seen.add(digest[:1])
                tracebus.instant("cache_miss", category="cache", args={"job": job})
            with tracebus.slice("dump", category="verbose"):  # disabled in the config
                text = digest.hex()
        results.put((job, text))
    results.put(DONE)


async def enrich(job: int, text: str) -> str:
    """One asyncio task per job: tasks interleave, each slice on its task's track."""
    with tracebus.slice("enrich", category="async", args={"job": job}):
        await asyncio.sleep(0.005 * (1 + job % 3))
    return text.upper()


async def writer_stage(results: Any, out_path: str | None) -> int:
    loop = asyncio.get_running_loop()
    done_workers = written = 0
    batch: list[tuple[int, str]] = []
    lines: list[str] = []
    while done_workers < WORKERS:
        item = await loop.run_in_executor(None, results.get)
        if item is DONE:
            done_workers += 1
        else:
            batch.append(item)
        if len(batch) >= 8 or (done_workers == WORKERS and batch):
            with tracebus.slice("enrich_batch", category="async", args={"jobs": len(batch)}):
                texts = await asyncio.gather(*(enrich(job, text) for job, text in batch))
            for (job, _), text in zip(batch, texts, strict=True):
                with tracebus.slice("write", category="io", terminate_flow=job):
                    lines.append(f"{job} {text}")
                written += 1
            batch.clear()
    if out_path:
        with open(out_path, "w") as f:
            f.write("\n".join(lines) + "\n")
    return written


def writer(results: Any, count: int, out_path: str | None) -> None:
    written = asyncio.run(writer_stage(results, out_path))
    tracebus.instant("all_written", category="io", args={"jobs": written})
    if written != count:
        sys.exit(f"writer: {written} of {count} jobs written")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--start-method", choices=mp.get_all_start_methods(), default="fork")
    parser.add_argument("--out", help="write the results here")
    args = parser.parse_args(argv)
    ctx = mp.get_context(args.start_method)
    jobs, results = ctx.Queue(), ctx.Queue()
    with tracebus.slice("pipeline", category="main", args={"jobs": args.jobs}):
        processes = [ctx.Process(target=source, args=(jobs, args.jobs), name="source")]
        processes += [
            ctx.Process(target=worker, args=(jobs, results), name=f"worker-{i}")
            for i in range(WORKERS)
        ]
        processes.append(
            ctx.Process(target=writer, args=(results, args.jobs, args.out), name="writer")
        )
        for p in processes:
            p.start()
        for p in processes:
            p.join()
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        print(f"job_pipeline: {', '.join(failed)} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
