"""A consumer actor script that drives a session step by step instead of
tracing.record(): it watches the data sources start, flushes on demand, looks
at the service's state and stats, then saves the trace.

    python -m launch.supervisor examples/watch.yaml
"""

from pathlib import Path

CONFIG = Path(__file__).parent / "configs" / "demo_timeline.pbtxt"


def main(tracing):
    tracing.enable(CONFIG)
    tracing.observe("all_data_sources_started")
    while not tracing.next_event(timeout=10).all_data_sources_started:
        pass
    print("all data sources started")
    for producer in tracing.query_state().producers:
        print(f"producer {producer.name}: pid {producer.pid}, uid {producer.uid}")
    tracing.wait(1.0)
    print("flush", "succeeded" if tracing.flush(timeout=5) else "timed out")
    tracing.stop()
    stats = tracing.stats()
    print(f"buffer 0: {stats.buffer_stats[0].chunks_written} chunks written")
    result = tracing.save()
    print(f"saved {result.packets} packets")
    tracing.free()
