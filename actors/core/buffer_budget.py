"""Trace buffer memory: a budget checked before anything is allocated, and an
allocation whose failure is an answer to the consumer, never a dead service.

What counts: every buffer of every session the service holds (configured,
recording, stopped but not yet freed), at the size it maps, `buffer_memory`
(size_kb * 1024 rounded up to 4 KiB), from EnableTracing until the session is
freed. Two limits (actors/core/limits.py):

    max_buffer_bytes_total     the buffers of all sessions together
    max_buffer_bytes_per_uid   the buffers of the sessions of one uid (the
                               consumer's, as the kernel reports it)

A config whose buffers would take either past its limit is refused whole, with
an error naming the limit and its value, and counted under the limit's name.
The budget counts what is mapped, not what is touched: a buffer's pages are
handed out zeroed by the kernel as records reach them (shm/buffer_records.py),
so the budget bounds what the buffers may come to hold, which is what the host
must be able to give.

Defaults (`memory_defaults`, applied by the service's main to the machine's
physical memory): half of it for all buffers, a quarter for one uid, so that
one user cannot take the share of the others, nor the service the host.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from actors.core.limits import Limits
from actors.core.sessions import Refusal, Session
from shm.trace_buffer import FillPolicy, TraceBuffer, buffer_memory

MIB = 1 << 20


def config_bytes(buffers: Iterable[pb.TraceConfig.BufferConfig]) -> int:
    """The memory the buffers of a config map."""
    return sum(buffer_memory(b.size_kb * 1024) for b in buffers)


def budget_refusal(
    config: pb.TraceConfig, sessions: Iterable[Session], uid: int, limits: Limits
) -> Refusal | None:
    """Why `config`'s buffers do not fit in what the sessions leave of the
    budget (None if they do). `config` passed check_config: its sizes are valid."""
    need = config_bytes(config.buffers)
    held = [(s.uid, config_bytes(s.config.buffers)) for s in sessions]
    total = sum(size for _, size in held)
    if total + need > limits.max_buffer_bytes_total:
        what = f"the sessions of the service hold {_mib(total)}"
        return _refusal("max_buffer_bytes_total", limits.max_buffer_bytes_total, need, what)
    mine = sum(size for owner, size in held if owner == uid)
    if mine + need > limits.max_buffer_bytes_per_uid:
        what = f"the sessions of uid {uid} hold {_mib(mine)}"
        return _refusal("max_buffer_bytes_per_uid", limits.max_buffer_bytes_per_uid, need, what)
    return None


def _refusal(limit: str, value: int, need: int, held: str) -> Refusal:
    message = (
        f"the trace buffers of this config take {_mib(need)}; {held} and {limit} is "
        f"{value} bytes ({_mib(value)}): ask for smaller buffers"
    )
    return Refusal(message, limit)


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def allocate_buffers(
    buffers: Sequence[pb.TraceConfig.BufferConfig],
) -> tuple[list[TraceBuffer], str]:
    """A TraceBuffer per entry, or ([], why) if the host refused the memory of
    one (the ones made before it are dropped with `made`, so unmapped)."""
    made: list[TraceBuffer] = []
    for i, config in enumerate(buffers):
        policy = FillPolicy.DISCARD if config.fill_policy == 2 else FillPolicy.RING_BUFFER
        size = config.size_kb * 1024
        try:
            made.append(TraceBuffer(size, policy))
        except (MemoryError, OSError) as e:  # the host's memory, not the service's fault
            return [], f"the service could not allocate buffers[{i}] ({_mib(size)}): {e}"
    return made, ""


def memory_defaults(physical_bytes: int) -> dict[str, int]:
    """The buffer memory limits for a machine of `physical_bytes` (Limits fields,
    each at least 1 MiB and a multiple of 4 KiB)."""
    return {
        "max_buffer_bytes_total": _granule(physical_bytes // 2),
        "max_buffer_bytes_per_uid": _granule(physical_bytes // 4),
    }


def _granule(n: int) -> int:
    return max(MIB, n - n % 4096)
