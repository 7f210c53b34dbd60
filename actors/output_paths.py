"""Where a trace may be written: checked before anything is recorded.

An output (`-o OUT` of the record CLI and `tracebus run`, a topology's
`output:`, Consumer.save) names a regular file to create or replace, or `-`
for standard output, as Perfetto's CLI allows. `output_problem` says what is
wrong with one, before a session starts, so that a bad path costs a usage
error (exit 2) instead of a recording:

- an existing node that is not a regular file (a directory, a device, a FIFO,
  a socket) is refused: the trace is written to a temp file and renamed into
  place, and a rename over a device node would replace the node itself (as
  root, `-o /dev/full` turned the device into a plain file);
- a missing parent directory, a parent that is not a directory, a directory or
  an existing file we may not write are refused.

A symlink is followed (`written_path`): its target is checked and is what gets
replaced, never the link. TraceFile (actors/consumer.py) checks again when it
creates its temp file and before the rename, so a node that appears at the path
meanwhile is not replaced either.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

STDOUT = "-"

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def written_path(path: str | os.PathLike) -> Path:
    """The file a write to `path` replaces: a symlink's target, made absolute."""
    return Path(os.path.realpath(path))


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular(path: str | os.PathLike) -> str:
    """Why an existing `path` may not be replaced by a trace ("" if it may, or is absent)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # absent: the parent is checked next
        return ""
    except OSError as e:
        return f"cannot check it: {e.strerror or e}"
    if stat.S_ISREG(mode):
        return ""
    return f"{kind_of(mode)}, not a regular file"


def output_problem(out: str | os.PathLike) -> str:
    """Why a trace cannot be written to `out` ("" if it can). `-` (stdout) is fine."""
    if os.fspath(out) == STDOUT:
        return ""
    if not os.fspath(out):
        return "an empty path"
    target = written_path(out)
    problem = not_regular(target)
    if problem:
        return problem
    parent = target.parent
    if not parent.is_dir():
        missing = not parent.exists()
        return f"no such directory: {parent}" if missing else f"not a directory: {parent}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the directory {parent} is not writable"
    if target.exists() and not os.access(target, os.W_OK):
        return "the file is not writable"
    return ""
