"""Trace buffer memory, with a real service: a budget checked before anything is
allocated, buffers mapped rather than zero-filled (a 1 GiB buffer stalls no
one), an allocation the host refuses answered with an error, and the memory
given back when the session is freed."""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors import service
from actors.core.buffer_budget import memory_defaults
from actors.core.consumer_core import SessionError
from actors.core.limits import DEFAULT_LIMITS
from tests.processes import Runtime
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

MIB = 1 << 20
GIB = 1 << 30
MAX_BUFFER_KB = (4 << 20) - 4  # 4 GiB - 4096, the largest buffer a config may ask for
ANSWER_S = 0.5  # a query_state answer while buffers are allocated: "well under" 0.9 s


def config(*sizes_kb: int) -> pb.TraceConfig:
    cfg = pb.TraceConfig()
    for kb in sizes_kb:
        cfg.buffers.add(size_kb=kb)
    cfg.data_sources.add().config.name = "tracebus.synthetic"
    return cfg


def limit_flags(total: int, per_uid: int) -> list[str]:
    return ["--max-buffer-bytes-total", str(total), "--max-buffer-bytes-per-uid", str(per_uid)]


def status_kib(pid: int, field: str) -> int:
    """A /proc/PID/status figure (VmSize, VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def refusals(rt: Runtime) -> dict[str, int]:
    return dict(rt.control.query_state(timeout=1.0).refusals)


def test_a_config_over_the_total_budget_is_refused_before_anything_is_allocated(rt) -> None:
    service = rt.start_service(*limit_flags(total=48 * MIB, per_uid=GIB))
    first = rt.consumer()
    first.enable(config(16 * 1024, 16 * 1024))  # 32 of 48 MiB
    vm_before = status_kib(service.pid, "VmSize")
    second = rt.consumer()
    with pytest.raises(SessionError) as refused:
        second.enable(config(8 * 1024, 16 * 1024))  # 56 MiB in all
    message = str(refused.value)
    assert "max_buffer_bytes_total is 50331648 bytes" in message
    assert "take 24.0 MiB" in message and "hold 32.0 MiB" in message
    assert status_kib(service.pid, "VmSize") - vm_before < 16 * 1024  # nothing kept mapped
    assert refusals(rt) == {"max_buffer_bytes_total": 1}  # at once, and counted
    second.enable(config(16 * 1024))  # exactly what is left
    first.free()  # its 32 MiB come back to the budget
    third = rt.consumer()
    third.enable(config(32 * 1024))
    assert refusals(rt) == {"max_buffer_bytes_total": 1}


def test_one_users_buffers_are_bounded_by_the_per_uid_share(rt) -> None:
    rt.start_service(*limit_flags(total=GIB, per_uid=32 * MIB))
    first = rt.consumer()
    first.enable(config(16 * 1024))
    with pytest.raises(SessionError, match=r"uid \d+ hold 16.0 MiB and max_buffer_bytes_per_uid"):
        rt.consumer().enable(config(16 * 1024 + 4))  # 4 KiB over the share
    assert refusals(rt) == {"max_buffer_bytes_per_uid": 1}
    first.close()  # a consumer that goes away frees its session, so its buffers
    wait_for(lambda: not rt.control.query_state().sessions, 10.0, "the session freed")
    rt.consumer().enable(config(32 * 1024))


def test_the_largest_buffers_a_config_may_ask_for_are_refused_by_the_default_budget(rt) -> None:
    """128 buffers of 4 GiB - 4 KiB each, every one valid: the budget sized from
    the machine refuses their sum, and the service goes on answering."""
    service = rt.start_service()  # the limits sized from this machine's memory
    with pytest.raises(SessionError, match="max_buffer_bytes_total is"):
        rt.consumer().enable(config(*[MAX_BUFFER_KB] * 128))
    assert refusals(rt) == {"max_buffer_bytes_total": 1}
    rt.consumer().enable(config(1024))
    rt.assert_running(service, "the service")


def test_memory_the_host_refuses_is_an_error_reply_and_the_service_lives(rt) -> None:
    """With the budget out of the way, the service's address space is capped
    (RLIMIT_AS): mapping the buffers fails, the consumer is told, nothing is kept,
    and later sessions get their buffers."""
    service = rt.start_service(*limit_flags(total=1 << 50, per_uid=1 << 50))
    vm = status_kib(service.pid, "VmSize") * 1024
    cap = vm + 2 * GIB
    resource.prlimit(service.pid, resource.RLIMIT_AS, (cap, cap))
    with pytest.raises(SessionError, match=r"could not allocate buffers\[1\] \(4096.0 MiB\)"):
        rt.consumer().enable(config(GIB // 1024, *[MAX_BUFFER_KB] * 127))
    assert status_kib(service.pid, "VmSize") * 1024 - vm < 64 * MIB  # buffers[0] unmapped
    assert rt.control.query_state(timeout=1.0).sessions == []
    rt.consumer().enable(config(GIB // 1024))  # what fits is still given
    rt.assert_running(service, "the service")


def test_a_gigabyte_of_buffers_stalls_no_one_and_is_given_back(rt) -> None:
    """Four 1 GiB buffers: another consumer's query_state is answered at once all
    along (a zero-filled bytearray took ~0.9 s per GiB on the loop), the service's
    resident memory does not grow by the buffers' size, and freeing the session
    unmaps them."""
    service = rt.start_service(*limit_flags(total=8 * GIB, per_uid=8 * GIB))
    poller, owner = rt.consumer(), rt.consumer()
    vm_before, rss_before = (status_kib(service.pid, f) for f in ("VmSize", "VmRSS"))
    slowest, stop = [0.0], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            poller.query_state(timeout=10.0)
            slowest[0] = max(slowest[0], time.monotonic() - t0)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        t0 = time.monotonic()
        owner.enable(config(*[GIB // 1024] * 4))
        enable_s = time.monotonic() - t0
        vm_mapped = status_kib(service.pid, "VmSize")
        rss_mapped = status_kib(service.pid, "VmRSS")
        owner.free()
    finally:
        stop.set()
        thread.join(timeout=15)
    assert enable_s < ANSWER_S and slowest[0] < ANSWER_S, (enable_s, slowest[0])
    assert vm_mapped - vm_before >= 4 * GIB // 1024  # mapped...
    assert rss_mapped - rss_before < 64 * 1024  # ...but not touched
    assert status_kib(service.pid, "VmSize") - vm_before < 64 * 1024  # and given back


# -- the defaults, sized from the machine --------------------------------------------------------


def test_the_static_defaults_are_those_of_an_8_gib_machine() -> None:
    sized = memory_defaults(8 * GIB)
    assert sized == {"max_buffer_bytes_total": 4 * GIB, "max_buffer_bytes_per_uid": 2 * GIB}
    assert all(getattr(DEFAULT_LIMITS, name) == value for name, value in sized.items())
    odd = memory_defaults(3 * GIB + 12345)
    assert all(v % 4096 == 0 for v in odd.values())
    assert memory_defaults(1000) == {"max_buffer_bytes_total": MIB, "max_buffer_bytes_per_uid": MIB}


def test_a_cgroup_limit_below_the_physical_memory_sizes_the_budget(tmp_path, monkeypatch) -> None:
    limit = tmp_path / "memory.max"
    limit.write_text("1073741824\n")
    monkeypatch.setattr(service, "CGROUP_MEMORY_LIMITS", (str(tmp_path / "absent"), str(limit)))
    assert service.machine_memory() == GIB
    assert service.machine_limits().max_buffer_bytes_per_uid == GIB // 4
    limit.write_text("max\n")  # cgroup v2's "no limit"
    assert service.machine_memory() > GIB  # the physical memory of any machine this runs on


def test_the_service_flags_default_to_the_machine_sized_budget(monkeypatch) -> None:
    seen = {}

    class FakeShell:
        def __init__(self, producer, consumer, limits, *rest, **options) -> None:
            seen["limits"] = limits

        def run(self) -> int:
            return 0

    monkeypatch.setattr(service, "ServiceShell", FakeShell)
    monkeypatch.setattr(service, "machine_memory", lambda: 16 * GIB)
    argv = ["--producer-endpoint", "ipc:///nowhere/p", "--consumer-endpoint", "ipc:///nowhere/c"]
    assert service.main([*argv, "--max-buffer-bytes-per-uid", "12345"]) == 0
    assert seen["limits"].max_buffer_bytes_total == 8 * GIB
    assert seen["limits"].max_buffer_bytes_per_uid == 12345
