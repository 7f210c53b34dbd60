"""Whether the compiled twins of the hot paths are used.

Each hot path compiled in C (shm/_writer.c: a TraceWriter's fast path;
tracebus/_speedups.c: the SDK's event path) has a pure-Python twin that is the
readable reference, and tests prove both write the same bytes. The package
uses the C twin whenever it was built; `TRACEBUS_PURE_PYTHON=1` in the
environment (read once, at import) forces the pure-Python twins everywhere, as
does a build without a C compiler (the extensions are optional).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_PYTHON_ENV = "TRACEBUS_PURE_PYTHON"
PURE_PYTHON = os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def compiled(module: str) -> ModuleType | None:
    """The compiled module `module`, or None if it was not built or the pure
    twins are forced."""
    if PURE_PYTHON:
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None
