"""The connected producers, by connection and by producer id.

A producer is known by its ROUTER identity (what a message arrives with) and
by the producer id the service gave it (what instances, flushes and buffer
records name). Both indexes live here and change together in `add` and
`remove`, the only places a producer enters or leaves. Producer ids come from
a u16 pool (actors/core/ids.py); they are not process ids.

The table also remembers the last MAX_DEPARTED producers that left (id, name,
uid, pid), so that a consumer can still name the producer of data it reads
after that producer exited, and answers what the limits ask: how many
producers a uid has connected, how many SMB bytes a uid or a process holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from actors.core.ids import IdPool
from actors.core.producers import ProducerEntry

MAX_PRODUCER_ID = 0xFFFF
MAX_DEPARTED = 1024


@dataclass(frozen=True)
class DepartedProducer:
    """A producer that left: who it was, for consumers naming its data."""

    id: int  # its producer id then; the pool may have given it to another since
    name: str
    uid: int
    pid: int  # from the kernel
    machine_id: int = 0  # 0: this machine; else the relay's machine it came through


class ProducerTable:
    def __init__(self) -> None:
        self._by_identity: dict[bytes, ProducerEntry] = {}
        self._by_id: dict[int, ProducerEntry] = {}
        self._ids = IdPool(MAX_PRODUCER_ID)
        self._departed: deque[DepartedProducer] = deque(maxlen=MAX_DEPARTED)
        self._per_uid: dict[tuple[int, int], int] = {}  # connected, by (machine id, uid)

    def add(
        self, identity: bytes, name: str, pid: int, uid: int, shm_size_hint: int,
        shm_page_hint: int, machine_id: int = 0,
    ) -> ProducerEntry | None:  # fmt: skip
        """A new producer with a fresh producer id, or None when every id is in use.
        `pid` is its process id (from the kernel of its machine: a relay's, or ours)."""
        producer_id = self._ids.allocate()
        if producer_id is None:
            return None
        producer = ProducerEntry(
            producer_id, identity, name, pid, uid, shm_size_hint, shm_page_hint
        )
        producer.machine_id = machine_id
        self._by_identity[identity] = producer
        self._by_id[producer_id] = producer
        key = (machine_id, uid)
        self._per_uid[key] = self._per_uid.get(key, 0) + 1
        return producer

    def remove(self, identity: bytes) -> ProducerEntry | None:
        producer = self._by_identity.pop(identity, None)
        if producer is not None:
            del self._by_id[producer.id]
            self._ids.release(producer.id)
            key = (producer.machine_id, producer.uid)
            left = self._per_uid.pop(key) - 1
            if left:
                self._per_uid[key] = left
            self._departed.append(
                DepartedProducer(
                    producer.id, producer.name, producer.uid, producer.pid, producer.machine_id
                )
            )
        return producer

    def count_of_uid(self, uid: int, machine_id: int = 0) -> int:
        """How many producers of `uid` are connected (uids are per machine: a relay's
        machine has its own users)."""
        return self._per_uid.get((machine_id, uid), 0)

    def smb_bytes(self, *, uid: int | None = None, pid: int | None = None) -> int:
        """The size of the SMBs held by the producers of `uid`, or of process `pid`."""
        return sum(
            p.abi.geometry.size
            for p in self._by_identity.values()
            if p.abi is not None and (uid is None or p.uid == uid) and (pid is None or p.pid == pid)
        )

    def departed(self) -> list[DepartedProducer]:
        """The producers that left, oldest first (the last MAX_DEPARTED)."""
        return list(self._departed)

    def by_id(self, producer_id: int) -> ProducerEntry | None:
        return self._by_id.get(producer_id)

    def get(self, identity: bytes) -> ProducerEntry | None:
        return self._by_identity.get(identity)

    def __getitem__(self, identity: bytes) -> ProducerEntry:
        return self._by_identity[identity]

    def __contains__(self, identity: object) -> bool:
        return identity in self._by_identity

    def __len__(self) -> int:
        return len(self._by_identity)

    def __iter__(self) -> Iterator[ProducerEntry]:
        return iter(list(self._by_identity.values()))

    def values(self) -> list[ProducerEntry]:
        return list(self._by_identity.values())
