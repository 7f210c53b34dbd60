"""The consumer actor of examples/job_pipeline.yaml: records
configs/job_pipeline.pbtxt while the pipeline runs, and stops the session once
every instance of the `pipeline` producer group has exited."""

import time
from pathlib import Path

CONFIG = Path(__file__).parent / "configs" / "job_pipeline.pbtxt"
GROUP = "pipeline"
LIMIT_S = 120.0  # a pipeline that never ends still gets its trace written


def until_the_pipeline_exits(tracing):
    started, deadline = False, time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        mine = [a for a in tracing.supervisor.list() if a["name"].startswith(f"{GROUP}#")]
        running = [a for a in mine if a["state"] in ("new", "starting", "running")]
        started = started or bool(mine)
        if started and not running:
            return
        tracing.wait(0.1)
    print(f"{GROUP} still running after {LIMIT_S:g} s: stopping the session")


def main(tracing):
    # duration_s=0: the session ends when `during` returns, with the pipeline.
    result = tracing.record(CONFIG, duration_s=0, during=until_the_pipeline_exits)
    print(f"recorded {result.packets} packets ({result.bytes} bytes)")
