"""The demo's consumer actor: records examples/configs/demo.pbtxt (4 s, two
buffers) and, one second in, attaches a fourth producer through the
supervisor's control channel; it joins the running session. The trace goes to
the consumer's `output:` in demo.yaml.
"""

from pathlib import Path

CONFIG = Path(__file__).parent / "configs" / "demo.pbtxt"


def attach_late_producer(tracing):
    tracing.wait(1.0)
    tracing.supervisor.attach("late", builtin=["tracebus.synthetic", "tracebus.demo_timeline"])
    print("attached producer 'late' while the session runs")


def main(tracing):
    result = tracing.record(CONFIG, during=attach_late_producer)
    print(f"recorded {result.packets} packets ({result.bytes} bytes)")
