"""Where the service listens by default, shared by every actor.

Precedence for each endpoint: the command-line flag, then the environment
variable (TRACEBUS_PRODUCER_SOCK / TRACEBUS_CONSUMER_SOCK, a ZeroMQ endpoint
such as ``ipc:///path/to/sock``), then an ipc:// socket in the per-user runtime
directory: ``$XDG_RUNTIME_DIR/tracebus``, else ``/tmp/tracebus-<uid>``. The
directory is created 0700, and refused if someone else owns it or it is open to
others: the consumer port's security rests on it. A service that admits
producers of other users (--allow-other-users) puts its producer socket in a
shared directory instead (0755, ours; shared_producer_dir), its consumer socket
staying in the private one. Paths stay short because an
ipc:// path must fit in sun_path (about 107 bytes). socket_answers tells a live
socket from a stale file, so that nobody binds over a running peer's path.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

PRODUCER_ENV = "TRACEBUS_PRODUCER_SOCK"
CONSUMER_ENV = "TRACEBUS_CONSUMER_SOCK"
# Seconds the application SDK's first call may wait for its track_event instance
# to start (set by `tracebus run` and by topologies that record from the start).
STARTUP_WAIT_ENV = "TRACEBUS_STARTUP_WAIT_S"
PRODUCER_NAME_ENV = "TRACEBUS_PRODUCER_NAME"  # the name a producer registers (the SDK's default)
PRODUCER_SOCKET = "producer.sock"
SUN_PATH_MAX = 107  # bytes of a UNIX socket path, less its NUL
CONSUMER_SOCKET = "consumer.sock"


def runtime_dir() -> Path:
    """The per-user runtime directory, created 0700 if missing: under
    $XDG_RUNTIME_DIR when that names a directory (the spec says it exists; a stale
    one, say from another login, must not make every command fail), else in /tmp."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return own_dir(Path(xdg) / "tracebus", 0o700)
    path = Path(f"/tmp/tracebus-{os.getuid()}")
    return own_dir(path, 0o700)


def own_dir(path: Path, mode: int) -> Path:
    """`path` as a directory of ours with exactly `mode`, created if missing; one that
    is not ours or not a directory (a symlink planted in /tmp) is refused."""
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeError(f"{path} exists and is not a directory")
    if info.st_uid != os.getuid():
        raise RuntimeError(f"{path} belongs to uid {info.st_uid}, not to us")
    if info.st_mode & 0o777 != mode:
        os.chmod(path, mode)  # ours, but created under another umask
    return path


def shared_producer_dir() -> Path:
    """Where a service that admits other users' producers puts its producer socket
    by default: /run/tracebus for root (as Perfetto's system socket), else
    /tmp/tracebus-shared-<uid>. Not created here (see make_shared_dir)."""
    uid = os.getuid()
    return Path("/run/tracebus") if uid == 0 else Path(f"/tmp/tracebus-shared-{uid}")


def make_shared_dir(path: Path) -> Path:
    """Create `path` 0755 (others traverse it, only we write in it); refuse one that
    is not ours or not a directory."""
    return own_dir(path, 0o755)


def default_producer_endpoint(shared: bool = False) -> str:
    """The producer port when no flag is given: $TRACEBUS_PRODUCER_SOCK, else the
    runtime dir, or with `shared` (a service admitting other users) the shared one."""
    env = os.environ.get(PRODUCER_ENV)
    if env:
        return env
    where = make_shared_dir(shared_producer_dir()) if shared else runtime_dir()
    return f"ipc://{where / PRODUCER_SOCKET}"


def default_consumer_endpoint() -> str:
    """The consumer port when no flag is given: $TRACEBUS_CONSUMER_SOCK or the runtime dir."""
    return os.environ.get(CONSUMER_ENV) or f"ipc://{runtime_dir() / CONSUMER_SOCKET}"


def socket_answers(path: Path, kind: int = socket.SOCK_STREAM) -> bool:
    """Whether a process listens on the UNIX socket at `path`. Never blocks: a
    listener whose backlog is full (EAGAIN) answers too, so one planted there
    by another user cannot hold up our start."""
    with socket.socket(socket.AF_UNIX, kind | socket.SOCK_NONBLOCK) as probe:
        try:
            probe.connect(str(path))
        except BlockingIOError:  # EAGAIN: listening, its backlog full
            return True
        except OSError:
            return False
    return True


def claim_socket_path(path: Path, kind: int = socket.SOCK_STREAM) -> None:
    """Make `path` free for a bind: a stale socket file (no one answers) is
    removed; a live socket, or a file that is no socket, refused (RuntimeError)."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise RuntimeError(f"{path} is longer than a UNIX socket path may be")
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise RuntimeError(f"{path} exists and is not a socket")
    if socket_answers(path, kind):
        raise RuntimeError(f"{path} is in use: is another service running?")
    try:
        path.unlink()
    except PermissionError as e:  # say, another user's in sticky /tmp
        raise RuntimeError(
            f"{path} is a stale socket of uid {info.st_uid} that this user may not "
            f"remove ({e.strerror}): remove it, or choose another path"
        ) from e


def listen_unix(path: Path, mode: int, kind: int, backlog: int) -> socket.socket:
    """A non-blocking, close-on-exec listening UNIX socket of `kind` at `path`,
    its file created with `mode` (no window with a wider one); the path is
    claimed first (claim_socket_path)."""
    claim_socket_path(path, kind)
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


# -- Perfetto's sockets (actors/perfetto_port.py) ----------------------------------------

PERFETTO_PRODUCER_ENV = "PERFETTO_PRODUCER_SOCK_NAME"  # the Perfetto clients' own conventions
PERFETTO_CONSUMER_ENV = "PERFETTO_CONSUMER_SOCK_NAME"
PERFETTO_SYSTEM_DIR = Path("/run/perfetto")


@dataclass(frozen=True)
class PerfettoSockets:
    producer: Path
    consumer: Path


def default_perfetto_sockets(
    producer: str | None = None, consumer: str | None = None
) -> PerfettoSockets:
    """Where Perfetto clients look (the paths given win): $PERFETTO_PRODUCER_SOCK_NAME
    and $PERFETTO_CONSUMER_SOCK_NAME, else /run/perfetto/traced-{producer,consumer}.sock
    if /run/perfetto exists, else /tmp/perfetto-{producer,consumer}."""
    system = PERFETTO_SYSTEM_DIR.is_dir()
    paths = []
    for given, env, name in ((producer, PERFETTO_PRODUCER_ENV, "producer"),
                             (consumer, PERFETTO_CONSUMER_ENV, "consumer")):  # fmt: skip
        default = PERFETTO_SYSTEM_DIR / f"traced-{name}.sock" if system else f"/tmp/perfetto-{name}"
        path = given or os.environ.get(env) or str(default)
        if path.startswith("@"):
            raise RuntimeError(f"{path}: abstract sockets are not supported; give a path")
        paths.append(Path(path))
    return PerfettoSockets(*paths)


def requested_perfetto_sockets(
    asked: bool, producer: str | None = None, consumer: str | None = None
) -> PerfettoSockets | None:
    """Whether the Perfetto front end is served, and where (the one rule for the
    service's --perfetto-* flags and a topology's perfetto_* keys): asked for, or
    either path given (the other then has its default); None otherwise."""
    if not (asked or producer or consumer):
        return None
    return default_perfetto_sockets(producer, consumer)
