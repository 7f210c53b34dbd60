# The C twin of shm.writer_core.WriterCore (shm/_writer.c).
from typing import Any

class WriterCore:
    _buf: Any
    _wptr: int
    _end: int
    _fast_limit: int
    _finished: int
    _hdr_word: int
    _hdr_hi: int
    incremental_state_invalid: bool
    def write_packet(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def _write_chunks(self, data: bytes | memoryview, /) -> int: ...

_C_API: object
