"""What one service allows: every bound on what its peers may ask for.

Each field of Limits is a positive integer, a flag of `python -m actors.service`
(`max_sessions` becomes `--max-sessions`) and a key of `service.limits` in a
topology (launch/topology_parser.py takes the names from here; docs/topology.md
lists them). A request refused because of a limit gets an error naming the
limit, and is counted under the limit's name (ServiceContext.refuse): the
service state's `refusals` reports the counts.

The defaults are Perfetto's where Perfetto has the limit; the shell may size the
memory ones from the machine (actors/service.py) before it builds the core.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Limits:
    max_sessions: int = 15
    max_sessions_per_uid: int = 5
    max_buffers_per_session: int = 128
    # Trace buffer memory (actors/core/buffer_budget.py): these are the shares of
    # an 8 GiB machine; the service sizes them from its own (memory_defaults).
    max_buffer_bytes_total: int = 4 << 30
    max_buffer_bytes_per_uid: int = 2 << 30
    max_producers_per_uid: int = 1024
    max_data_sources_per_producer: int = 256
    max_smb_bytes_per_process: int = 64 << 20
    max_smb_bytes_per_uid: int = 1 << 30
    max_connections_per_process: int = 64
    max_connections_per_uid: int = 1024


DEFAULT_LIMITS = Limits()

# One line per limit: the flag's help and the topology doc's description.
LIMIT_HELP: dict[str, str] = {
    "max_sessions": "tracing sessions at once",
    "max_sessions_per_uid": "sessions one user may hold",
    "max_buffers_per_session": "trace buffers in one session",
    "max_buffer_bytes_total": "bytes of trace buffers of all sessions together",
    "max_buffer_bytes_per_uid": "bytes of trace buffers of the sessions of one user",
    "max_producers_per_uid": "producers one user may have connected at once",
    "max_data_sources_per_producer": "data sources one producer may register",
    "max_smb_bytes_per_process": "bytes of shared memory buffers (SMBs) for one producer process",
    "max_smb_bytes_per_uid": "bytes of shared memory buffers (SMBs) for one user's producers",
    "max_connections_per_process": "connections one process may hold (both ports)",
    "max_connections_per_uid": "connections one user's processes may hold (both ports)",
}


def limit_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(Limits))
