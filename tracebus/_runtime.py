"""The process-wide state behind `import tracebus`: one Runtime per process.

    idle --first use--> starting --producer thread up--> running --shutdown()--> stopped
      \\--TRACEBUS_DISABLE=1--> disabled        (a start that failed --> stopped, counted)

The contract the API (tracebus/_api.py) relies on:

- `WANTED` maps a category to the track_event instances that want it (a tuple,
  empty when nobody does). An event costs one lookup there; a miss calls
  `current.resolve(category)`, which fills the entry from the live instances
  under the lock. Instances starting or stopping clear the dict (one consistent
  rebuild per category, lazily), so a reader sees either the old entry (a
  stopped instance refuses the write by itself) or the new one.
- The first use starts the producer in the background ("tracebus-start" imports
  actors.producer, the heavy part, and starts its thread); the caller never waits
  for it. While the service's ipc:// socket does not exist, that thread only
  looks for it now and then (one log line says so): an app run without a
  service pays for no import and no connection attempts.
- The startup wait: each thread's first event (not the SDK's own threads) waits,
  until a deadline, for the session to record the process, so that a process
  started under a running session is recorded from its first line. Asked for
  (TRACEBUS_STARTUP_WAIT_S or init(wait_for_start=S), a positive S): it waits up
  to S for a track_event instance to start, whatever the service says (a session
  may be enabled after the process starts). By default (neither set), it waits
  only while the producer is *starting* against a service that exists: until an
  instance starts, or the service answered the data source's registration
  without one (then REGISTERED_GRACE_S more: the instances of a running session
  follow the reply in the same turn of the service), at most
  DEFAULT_STARTUP_WAIT_S. No service socket: no wait. A wait of 0 turns it off.
  Perfetto's SDK drops what a process emits before its producer is connected
  and a session's instance started, unless the app sets up startup tracing;
  this wait is tracebus's answer for the same first events.
- No method raises into the application: internal errors are counted per kind
  (`stats()`) and each kind is logged once, on the "tracebus" logger.
- Fork: the child replaces `current` with a fresh Runtime (same init() settings)
  and keeps the inherited one referenced forever without touching it (its
  sockets, mapping, writers and threads belong to the parent: no destructor may
  run on them); the child starts a producer of its own on first use. A fork
  waits for the start thread's imports in progress (bounded): a child must not
  inherit an import lock held by a thread it does not have.
  multiprocessing children also flush from multiprocessing's finalizers, since
  fork and forkserver children end in os._exit without running atexit.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("tracebus")

DISABLE_ENV = "TRACEBUS_DISABLE"
SDK_THREAD_PREFIX = "tracebus-"  # the producer's and the start's threads
# actors.endpoints' names, copied: the first call imports nothing (a signal handler
# that calls the API mid-import would find a module half loaded).
STARTUP_WAIT_ENV = "TRACEBUS_STARTUP_WAIT_S"
PRODUCER_NAME_ENV = "TRACEBUS_PRODUCER_NAME"
SHUTDOWN_TIMEOUT_S = 5.0  # flush and detach at exit: bounded, the app is leaving
FORK_IMPORT_WAIT_S = 10.0  # a fork waits at most this for the start thread's imports
SERVICE_POLL_S = 0.25  # how often the start thread looks for the service's socket
# The default startup wait (see the module docstring): a bound that only a stuck
# service reaches, and the grace after the registration's reply.
DEFAULT_STARTUP_WAIT_S = 5.0
REGISTERED_GRACE_S = 0.2
MAX_PENDING_TRIGGERS = 256  # trigger() names kept while the producer starts
MAX_CATEGORIES = 4096  # WANTED entries before it is rebuilt (apps that make up categories)

IDLE, STARTING, RUNNING, STOPPED, DISABLED = "idle", "starting", "running", "stopped", "disabled"


class Instance(Protocol):
    """What the runtime needs of a track_event instance (tracebus/_instance.py)."""

    live: bool

    def wants(self, category: str, tags: tuple[str, ...]) -> bool: ...
    def dropped_packets(self) -> int: ...
    def abandon_own_write(self) -> bool: ...


class Producer(Protocol):
    """What the runtime needs of its producer (actors.producer.Producer)."""

    def start_thread(self) -> None: ...
    def stop(self, timeout: float | None = None) -> None: ...
    def activate_triggers(self, *names: str, ttl_s: float = ...) -> bool: ...


# name, runtime -> a producer hosting track_event for that runtime (tracebus/_data_source.py)
ProducerFactory = Callable[[str, str | None, "Runtime"], Producer]


def _default_factory(name: str, endpoint: str | None, runtime: Runtime) -> Producer:
    from tracebus import _data_source  # the heavy import, on the start thread

    return _data_source.make_producer(name, endpoint, runtime)


def service_socket_exists(endpoint: str) -> bool:
    """Whether the service may be there: the ipc:// socket file exists (any other
    transport: assume so and let the producer find out)."""
    if not endpoint.startswith("ipc://"):
        return True
    return os.path.exists(endpoint[len("ipc://") :])


class Runtime:
    """One process's SDK state; see the module docstring."""

    def __init__(
        self,
        wanted: dict[str, tuple[Any, ...]] | None = None,
        *,
        factory: ProducerFactory = _default_factory,
        environ: dict[str, str] | os._Environ[str] = os.environ,
        service_appeared: Callable[[str], bool] = service_socket_exists,
    ) -> None:
        self.wanted: dict[str, tuple[Any, ...]] = {} if wanted is None else wanted
        self.factory = factory
        self.service_appeared = service_appeared
        self.environ = environ
        # Reentrant: a signal handler may call shutdown() while its thread holds it.
        self.lock = threading.RLock()
        # Held by the start thread while it imports; a fork waits for it, or the
        # child would inherit module import locks held by a thread it does not have.
        self.importing = threading.Lock()
        self.state = IDLE
        self._entered = False  # ensure_started() is under way (a re-entry returns)
        self._calls = threading.local()  # .active: this thread is inside resolve()
        self.name: str | None = None  # init(name=)
        self.endpoint: str | None = None  # init(endpoint=)
        self.wait_s: float | None = None  # init(wait_for_start=)
        self.wait_until = 0.0  # time.monotonic() when the startup wait ends (0: none)
        self.wait_asked = False  # the wait is the one asked for, not the default one
        # Notified when the startup wait may be over: an instance started, the
        # deadline moved, the producer failed or shut down.
        self.startup_changed = threading.Condition(threading.RLock())
        self.producer_name = ""
        self.producer: Producer | None = None
        self.instances: list[Instance] = []
        self.ended: list[Instance] = []  # stopped instances: their drops still count in stats()
        self.categories: dict[str, tuple[str, ...]] = {}  # define_category(): name -> tags
        self.instance_started = threading.Event()
        self.stopped = threading.Event()  # shutdown() finished
        self.errors: Counter[str] = Counter()
        # trigger() before the producer exists: (expiry on time.monotonic(), name).
        self.pending_triggers: list[tuple[float, str]] = []
        self.triggers_dropped = 0
        self._errors_lock = threading.Lock()  # not self.lock: errors are counted under it too

    # -- first use ---------------------------------------------------------------------------

    def configure(self, name: str | None, endpoint: str | None, wait_s: float | None) -> None:
        """init()'s settings; they count only before the producer starts."""
        with self.lock:
            if self.state == IDLE:
                self.name = name if name is None else str(name)
                self.endpoint = endpoint if endpoint is None else str(endpoint)
                self.wait_s = wait_s if wait_s is None else float(wait_s)

    def ensure_started(self) -> None:
        """Start the producer in the background on first use; the first call waits
        for a track_event instance if a startup wait was asked for."""
        if self.state != IDLE:
            return
        nested = self._enter_call()
        try:
            self._ensure_started(wait=not nested)
        finally:
            self._calls.active = nested

    def _enter_call(self) -> bool:
        """Mark this thread inside resolve()/ensure_started(); True if it already was:
        a signal handler's event interrupted one, which may hold an import lock or
        the runtime's lock that the start needs, so that event must never wait."""
        nested = getattr(self._calls, "active", False)
        self._calls.active = True
        return nested

    def _ensure_started(self, wait: bool) -> None:
        with self.lock:  # reentrant: other threads wait here, this one may re-enter
            if self.state != IDLE or self._entered:
                return  # started, or re-entered by a signal handler on this thread
            self._entered = True
            if self.environ.get(DISABLE_ENV, "") not in ("", "0"):
                self.state = DISABLED
                return
            asked = self._startup_wait()
            wait_s = DEFAULT_STARTUP_WAIT_S if asked is None else asked
            self.wait_asked = asked is not None
            if wait_s > 0:  # before the state: a thread that sees STARTING sees the deadline
                self.wait_until = time.monotonic() + wait_s
            self.state = STARTING
            self.producer_name = producer_name(self.name, self.environ)
            if self.name:
                # Children started with spawn or forkserver (and subprocesses) read the
                # name from the environment: they carry the app's chosen name too.
                self.environ[PRODUCER_NAME_ENV] = self.name
        # Started outside the lock, which the start thread takes: Thread.start()
        # waits, and a signal handler that emits an event meanwhile takes the startup
        # wait on this thread; under the lock, that wait would stall the start itself.
        threading.Thread(target=self._start, name="tracebus-start", daemon=True).start()
        _register_exit_flush()
        if wait_s > 0 and wait:
            self._await_startup()

    def _startup_wait(self) -> float | None:
        """The startup wait asked for, in seconds; None: none was (the default wait)."""
        if self.wait_s is not None:
            return max(0.0, self.wait_s)
        text = self.environ.get(STARTUP_WAIT_ENV) or ""
        try:
            return max(0.0, float(text)) if text else None
        except ValueError:
            self.count_error("bad " + STARTUP_WAIT_ENV)
            return 0.0

    def _await_startup(self) -> None:
        """On an application thread: the startup wait (see the module docstring)."""
        with self.startup_changed:
            while not self.instance_started.is_set() and self.state != STOPPED:
                remaining = self.wait_until - time.monotonic()
                if remaining <= 0:
                    return
                self.startup_changed.wait(remaining)

    def _end_default_wait(self, within_s: float) -> None:
        """The default startup wait ends within `within_s` (the one asked for stays)."""
        with self.startup_changed:
            if not self.wait_asked:
                self.wait_until = min(self.wait_until, time.monotonic() + within_s)
            self.startup_changed.notify_all()

    def data_source_registered(self) -> None:
        """The producer's thread: the service accepted track_event; a running
        session's instance, if any, follows at once."""
        self._end_default_wait(REGISTERED_GRACE_S)

    def _start(self) -> None:
        """On the start thread: build the producer (imports the heavy modules) and
        start its thread, unless shutdown() came first."""
        try:
            with self.importing:
                from actors.endpoints import default_producer_endpoint

                endpoint = self.endpoint or default_producer_endpoint()
            if not self.service_appeared(endpoint):
                self._end_default_wait(0.0)  # no service: nothing to wait for
            if not self._wait_for_service(endpoint):
                return  # shut down meanwhile
            with self.importing:
                producer = self.factory(self.producer_name, endpoint, self)
            with self.lock:
                if self.state != STARTING:
                    return  # shut down meanwhile
                producer.start_thread()
                self.producer = producer
                self.state = RUNNING
                self._hand_over_triggers(producer)
        except Exception as e:
            with self.lock:
                if self.state == STARTING:
                    self.state = STOPPED
                    self.stopped.set()
            self._end_default_wait(0.0)
            self.count_error("start", e)

    def _wait_for_service(self, endpoint: str) -> bool:
        """Wait until the endpoint's socket exists; False if shut down before."""
        logged = False
        while not self.service_appeared(endpoint):
            if not logged:
                log.warning("tracebus: no tracing service at %s yet; connecting when one appears",
                            endpoint)  # fmt: skip
                logged = True
            self.stopped.wait(SERVICE_POLL_S)
            if self.state != STARTING:
                return False
        return True

    # -- triggers --------------------------------------------------------------------------------

    def trigger(self, names: tuple[str, ...], ttl_s: float) -> None:
        """Fire named triggers through this process's producer, starting it if
        needed; never waits: while the producer starts, the names are kept (up to
        MAX_PENDING_TRIGGERS) and handed over with what is left of their ttl."""
        if self.state == IDLE:
            nested = self._enter_call()
            try:
                self._ensure_started(wait=False)
            finally:
                self._calls.active = nested
        with self.lock:
            producer = self.producer if self.state == RUNNING else None
            if producer is None:
                self._keep_triggers(names, ttl_s)
                return
        if not producer.activate_triggers(*names, ttl_s=ttl_s):
            self.triggers_dropped += len(names)

    def _keep_triggers(self, names: tuple[str, ...], ttl_s: float) -> None:
        """Under the lock: keep the names for the producer to come (or drop them)."""
        if self.state != STARTING:
            self.triggers_dropped += len(names)  # disabled or shut down: no producer
            return
        room = max(0, MAX_PENDING_TRIGGERS - len(self.pending_triggers))
        expiry = time.monotonic() + ttl_s
        self.pending_triggers += [(expiry, name) for name in names[:room]]
        self.triggers_dropped += len(names) - min(room, len(names))

    def _hand_over_triggers(self, producer: Producer) -> None:
        """Under the lock, once the producer runs: the triggers kept meanwhile."""
        pending, self.pending_triggers = self.pending_triggers, []
        now = time.monotonic()
        for expiry, name in pending:
            if expiry <= now or not producer.activate_triggers(name, ttl_s=expiry - now):
                self.triggers_dropped += 1

    # -- instances (the producer's thread) ---------------------------------------------------

    def add_instance(self, instance: Instance) -> None:
        with self.lock:
            if self.state in (STOPPED, DISABLED):
                return
            instance.live = True
            self.instances.append(instance)
            self.wanted.clear()
        with self.startup_changed:
            self.instance_started.set()
            self.startup_changed.notify_all()

    def remove_instance(self, instance: Instance) -> None:
        instance.live = False
        with self.lock:
            if instance in self.instances:
                self.instances.remove(instance)
                self.ended.append(instance)
            self.wanted.clear()

    # -- categories ----------------------------------------------------------------------------

    def resolve(self, category: str) -> tuple[Any, ...]:
        """The instances that want `category`, remembered in WANTED."""
        nested = self._enter_call()
        try:
            return self._resolve(category, wait=not nested)
        finally:
            self._calls.active = nested

    def _resolve(self, category: str, wait: bool) -> tuple[Any, ...]:
        if self.state == IDLE:
            self._ensure_started(wait)
        if (
            wait
            and self.wait_until
            and not self.instance_started.is_set()
            and self.state != STOPPED
            and not threading.current_thread().name.startswith(SDK_THREAD_PREFIX)
        ):  # (the SDK's own threads start the instance: they must never wait for it)
            # Other threads' first events during the startup wait wait too (to the
            # same deadline): "from the first line" holds for every thread.
            self._await_startup()
        with self.lock:
            tags = self.categories.get(category, ())
            wanted = tuple(i for i in self.instances if i.live and i.wants(category, tags))
            if len(self.wanted) >= MAX_CATEGORIES:
                self.wanted.clear()
            self.wanted[category] = wanted
        return wanted

    def define_category(self, name: str, tags: tuple[str, ...]) -> None:
        with self.lock:
            self.categories[name] = tags
            self.wanted.clear()

    # -- errors and stats ------------------------------------------------------------------------

    def count_error(self, kind: str, error: BaseException | None = None) -> None:
        """Count an internal error; log the first of each kind (never raises)."""
        try:
            with self._errors_lock:
                self.errors[kind] += 1
                first = self.errors[kind] == 1
            if first:
                detail = f": {type(error).__name__}: {error}" if error is not None else ""
                log.warning("tracebus: %s failed%s (counted in tracebus.stats())", kind, detail)
        except Exception:  # noqa: BLE001 - a broken logging setup must not reach the app
            pass

    def stats(self) -> dict[str, Any]:
        with self.lock:
            instances = list(self.instances)
            every = instances + self.ended
        dropped = 0
        for instance in every:
            try:
                dropped += instance.dropped_packets()
            except Exception:  # noqa: BLE001 - a stats call must not raise either
                pass
        return {
            "state": self.state,
            "pid": os.getpid(),
            "producer_name": self.producer_name,
            "instances": len(instances),
            "dropped_packets": dropped,
            "triggers_dropped": self.triggers_dropped,
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
        }

    # -- the end -----------------------------------------------------------------------------------

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Stop the producer (its instances flush and commit) and stay stopped. Callers
        after the first wait for it to finish, up to `timeout`. Called by a signal
        handler that interrupted a write of its own thread, it does not wait: that
        write may hold a lock the stop needs, so the stop goes on in the background
        (and the exit flush waits for it, after the handler)."""
        with self.lock:
            first = self.state != STOPPED
            self.state = STOPPED
            producer, self.producer = self.producer, None
            instances = list(self.instances)
        self._end_default_wait(0.0)  # waiters see STOPPED
        mid_write = False
        for instance in instances:
            try:
                mid_write = bool(instance.abandon_own_write()) or mid_write
            except Exception as e:  # noqa: BLE001
                self.count_error("shutdown", e)
        if not first:
            if not mid_write:
                self.stopped.wait(timeout)
            return
        if mid_write:
            threading.Thread(
                target=self._stop_producer, args=(producer, timeout),
                name="tracebus-stop", daemon=True,
            ).start()  # fmt: skip
            return
        self._stop_producer(producer, timeout)

    def _stop_producer(self, producer: Producer | None, timeout: float) -> None:
        try:
            if producer is not None:
                producer.stop(timeout)
        except Exception as e:
            self.count_error("shutdown", e)
        finally:
            with self.lock:
                for instance in self.instances:
                    instance.live = False
                self.ended += self.instances
                self.instances.clear()
                self.wanted.clear()
            self.stopped.set()

    def forget_inherited(self) -> Runtime:
        """In a forked child: a fresh Runtime with this one's init() settings and
        categories. Only plain Python attributes of this one are read or set (in the
        child's copy of memory): its instances refuse further writes."""
        for instance in list(self.instances):
            instance.live = False
        self.wanted.clear()
        child = Runtime(
            self.wanted, factory=self.factory, environ=self.environ,
            service_appeared=self.service_appeared,
        )  # fmt: skip
        child.name, child.endpoint, child.wait_s = self.name, self.endpoint, self.wait_s
        child.categories = dict(self.categories)
        return child


def producer_name(explicit: str | None, environ: Any) -> str:
    """init(name=), else $TRACEBUS_PRODUCER_NAME, else the script's name; a
    multiprocessing child adds its process name: "app (Worker-2)"."""
    name = explicit or environ.get(PRODUCER_NAME_ENV) or script_name()
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.parent_process() is not None:
        name = f"{name} ({mp.current_process().name})"
    return name


def script_name() -> str:
    """The running script's name without .py (a package's name for `python -m pkg`);
    "python" when there is none (an interactive session, -c)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv else "")
    stem = os.path.splitext(os.path.basename(path or ""))[0]
    if stem == "__main__":
        spec = getattr(main, "__spec__", None)
        stem = spec.name.rsplit(".", 1)[0] if spec is not None else ""
    return stem if stem and stem != "-c" else "python"


# -- the process's runtime, fork and exit -------------------------------------------------------

WANTED: dict[str, tuple[Any, ...]] = {}
current = Runtime(WANTED)
_inherited: list[Runtime] = []  # forked children keep their parent's state alive, untouched
_exit_flush_registered = False


def shutdown() -> None:
    """The current runtime's shutdown (never raises)."""
    try:
        current.shutdown()
    except Exception as e:  # noqa: BLE001
        current.count_error("shutdown", e)


def _register_exit_flush() -> None:
    """atexit once per process; in a multiprocessing child also a finalizer, which
    fork and forkserver children run before os._exit (atexit they skip)."""
    global _exit_flush_registered
    if not _exit_flush_registered:
        _exit_flush_registered = True
        atexit.register(shutdown)
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.parent_process() is not None:
        from multiprocessing import util

        util.Finalize(None, shutdown, exitpriority=-100)  # after the app's own finalizers


def _before_fork() -> None:
    """Let the start thread finish an import in progress (bounded) and hold it off
    until the fork is done."""
    runtime = current
    _forking.append(runtime if runtime.importing.acquire(timeout=FORK_IMPORT_WAIT_S) else None)


def _after_fork_in_parent() -> None:
    runtime = _forking.pop() if _forking else None
    if runtime is not None:
        runtime.importing.release()


def _after_fork_in_child() -> None:
    global current
    _forking.clear()  # the locks stay with the inherited runtime, which is never used again
    _inherited.append(current)
    current = current.forget_inherited()


_forking: list[Runtime | None] = []
os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
