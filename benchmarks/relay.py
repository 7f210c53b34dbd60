"""Relay throughput: producers behind a relay, over loopback TCP with CURVE, into
a central service; the same producers against the service directly, in the same run.

    python -m benchmarks.relay [--quick] [--json FILE]

Scenario, twice: PRODUCERS producers (`python -m actors.producer`, the built-in
synthetic source writing PACKET_BYTES packets flat out, stall policy, the
default SMB) write into one RING_BUFFER of BUFFER_MIB of a session this process
holds (the Consumer API; TraceConfig.trace_all_machines). Once WARMUP_S have
passed, the buffer's bytes_written (trace_stats) is read at the start and the
end of WINDOW_S. First the producers connect to a relay (`python -m
actors.relay`, CURVE keys made for the run), which forwards to the service's
relay endpoint on 127.0.0.1; then new producers connect to the service's own
producer port.

Figures (one table; --json writes exactly these keys):
  relay_mb_s      MiB/s of chunks landing in the central buffer through the relay
  local_mb_s      the same with the producers on the service's producer port
  relay_vs_local  relay_mb_s / local_mb_s
  relay_lossless  nothing was dropped on the relay path: the stall policy makes
                  producers wait, the trace_stats' chunks_discarded stays 0
  calibration_ns  benchmarks/calibration.py, measured in this run; the MiB/s target
                  is stated for 55 ns and scales with it
"""

from __future__ import annotations

import argparse
import platform
import socket
import sys
import time
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors import relay_keys
from actors.consumer import Consumer, ConsumerError
from benchmarks.calibration import calibration_ns, save_json, scaled_target
from benchmarks.readback import Runtime

PRODUCERS = 2
PACKET_BYTES = 64 * 1024
BUFFER_MIB = 64
WARMUP_S = 1.5
WINDOW_S = 4.0
SOURCE = "tracebus.synthetic"
TARGETS = {"relay_mb_s": (">=", 50.0), "relay_vs_local": (">=", 0.5)}
READY_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_config() -> pb.TraceConfig:
    config = pb.TraceConfig(trace_all_machines=True)
    config.buffers.add(
        size_kb=BUFFER_MIB * 1024, fill_policy=pb.TraceConfig.BufferConfig.RING_BUFFER
    )
    ds = config.data_sources.add()
    ds.config.name = SOURCE
    ds.config.for_testing.message_count = 1 << 31
    ds.config.for_testing.message_size = PACKET_BYTES
    return config


def _wait(condition, what: str, rt: Runtime) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}:\n{rt.logs()}")
        time.sleep(0.05)  # polling a condition, not synchronizing


def _registered(control: Consumer, prefix: str) -> int:
    state = control.query_state(timeout=10)
    ids = {p.id for p in state.producers if p.name.startswith(prefix)}
    return len({d.producer_id for d in state.data_sources if d.descriptor.name == SOURCE} & ids)


def measure(rt: Runtime, endpoint: str, prefix: str, window_s: float) -> tuple[float, int]:
    """(MiB/s landing in the buffer, chunks discarded) with PRODUCERS producers on
    `endpoint`, the service's or a relay's producer port."""
    control = Consumer.connect(rt.consumer_endpoint, 5, name=f"bench-{prefix}")
    try:
        for i in range(PRODUCERS):
            argv = ["-m", "actors.producer", "--name", f"{prefix}{i}", "--policy", "stall"]
            rt.spawn(f"{prefix}{i}", [*argv, "--producer-endpoint", endpoint])
        _wait(lambda: _registered(control, prefix) == PRODUCERS, f"{prefix} producers", rt)
        control.enable(session_config())
        time.sleep(WARMUP_S)  # the load reaches its steady state; a measured warm-up
        start, t0 = _bytes_written(control), time.monotonic()
        time.sleep(window_s)  # the measured window
        end, t1 = _bytes_written(control), time.monotonic()
        discarded = _chunks_discarded(control)
        control.disable()
        return (end - start) / (1 << 20) / (t1 - t0), discarded
    finally:
        control.close()


def _bytes_written(control: Consumer) -> int:
    return sum(b.bytes_written for b in control.stats().buffer_stats)


def _chunks_discarded(control: Consumer) -> int:
    stats = control.stats()
    return stats.chunks_discarded + sum(b.chunks_discarded for b in stats.buffer_stats)


def run(quick: bool) -> dict[str, float | bool]:
    window = WINDOW_S / 2 if quick else WINDOW_S
    cal = calibration_ns()
    rt = Runtime()
    try:
        keys = rt.dir / "keys"
        relay_keys.generate(keys, "service")
        relay_keys.generate(keys / "relays", "relay")
        port = free_port()
        endpoint = f"tcp://127.0.0.1:{port}"
        argv = ["-m", "actors.service", "--producer-endpoint", rt.producer_endpoint]
        argv += ["--consumer-endpoint", rt.consumer_endpoint, "--relay-endpoint", endpoint]
        argv += ["--relay-key", str(keys / "service.key_secret")]
        argv += ["--relay-clients", str(keys / "relays")]
        rt.spawn("service", argv)
        _wait(lambda: _answers(rt.consumer_endpoint), "the service", rt)
        relay_producers = f"ipc://{rt.dir}/relay-p"
        argv = ["-m", "actors.relay", "--service", endpoint, "--machine-name", "bench-relay"]
        argv += ["--key", str(keys / "relays" / "relay.key_secret")]
        argv += ["--service-key", str(keys / "service.key"), "--producer-endpoint", relay_producers]
        rt.spawn("relay", argv)
        _wait(lambda: Path(relay_producers[len("ipc://") :]).exists(), "the relay", rt)
        relay_mb_s, discarded = measure(rt, relay_producers, "relayed", window)
        local_mb_s, _ = measure(rt, rt.producer_endpoint, "local", window)
    finally:
        rt.close()
    return {
        "relay_mb_s": relay_mb_s,
        "local_mb_s": local_mb_s,
        "relay_vs_local": relay_mb_s / local_mb_s if local_mb_s else 0.0,
        "relay_lossless": discarded == 0,
        "calibration_ns": cal,
    }


def _answers(endpoint: str) -> bool:
    try:
        Consumer.connect(endpoint, 0.5, name="bench-probe").close()
    except ConsumerError:
        return False
    return True


def print_table(r: dict[str, float | bool]) -> None:
    cal = float(r["calibration_ns"])
    load = f"{PRODUCERS} producers of {PACKET_BYTES >> 10} KiB packets"
    print(f"relay benchmark ({platform.machine()}, {load})")
    print(f"{'figure':<16}{'value':>12}   target")
    for key, unit in (("relay_mb_s", "MiB/s"), ("local_mb_s", "MiB/s"), ("relay_vs_local", "")):
        target = ""
        if key in TARGETS:
            op, value = TARGETS[key]
            scaled = scaled_target(op, value, cal) if unit else value
            target = f"{op} {scaled:.2f}" + (f" (at cal {cal:.0f} ns)" if unit else "")
        print(f"{key:<16}{float(r[key]):>12.2f}   {target}")
    print(f"{'relay_lossless':<16}{str(r['relay_lossless']):>12}")
    print(f"{'calibration_ns':<16}{cal:>12.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.relay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a shorter window")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    r = run(args.quick)
    print_table(r)
    if args.json:
        save_json(str(args.json), r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
