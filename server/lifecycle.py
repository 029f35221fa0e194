"""The server's processes under Granian: the main process, its workers, and what each does when.

`python -m server` runs `serve()`: the main process (Granian's, embedded) prepares what the
workers share and forks them; each worker builds the Flask app
(`server:create_app`), starts its gRPC server and serves HTTP from Granian's Rust runtime.
Everything the server does at a worker's start and end lives here:

- main process, once: its ports claimed (a port another program or server holds stops the start
  with one line, `claim_ports`), temporary folders for metrics and model sync (removed at exit,
  also on a TERM while it starts, unless the operator named them), the libraries imported and
  `gc.freeze()`d before the first fork;
- main process, per worker slot: its listening socket, kept open for every worker in that slot in
  turn, so that connections queued for one that dies wait for the next (`Server`);
- main process, per worker: an age (unique for its life) and its gRPC marker `booting` before it
  forks; when it has exited, for whatever reason, its marker and its live metrics go;
- worker, at start: the app, the gRPC server over its models (marker `serving`);
- worker, told to stop while it loads the app: it exits at once (it holds no request yet);
- worker, at its end (HUP, TERM, a recycle): HTTP stops taking requests and finishes those it
  holds (Granian), then gRPC waits for a successor to listen and sees its calls off (marker
  `stopping`, server/grpc/handoff.py);
- per request (RequestGate): the body is read before the request takes one of the worker's THREADS
  (a slow body holds only a connection and an idle thread, never the app's room).

No Flask at import: the main process must not load the app (a HUP serves new server code).
"""
from __future__ import annotations

import gc
import importlib
import io
import itertools
import json
import logging
import logging.config
import math
import multiprocessing
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from . import config

log = logging.getLogger(__name__)

# The libraries are imported once, in the main process: every worker forks with them loaded (their
# pages shared until written, no import time at each start or replacement). Nothing that holds
# state is made there: onnxruntime sessions are not fork-safe and each worker builds its own, and
# server/'s app is imported by the workers, so that a HUP serves new server code (a new library
# version needs a restart). Not onnxruntime: imported before the fork, a worker that used it
# aborts at its exit (std::system_error, SIGABRT instead of its exit code).
LIBRARIES = ("numpy", "PIL.Image", "PIL.PngImagePlugin", "flask", "werkzeug", "prometheus_client",
             "google.protobuf.text_format")
# A worker told to stop (HUP, TERM, recycle) has this long to finish its HTTP requests and hand
# over and drain gRPC; then it is killed.
GRACEFUL_SECONDS = 20
# A new worker gets this long to load its models before the old one in its slot is told to stop on
# a HUP (Granian's respawn interval); meanwhile the old one keeps serving.
RESPAWN_SECONDS = 3.5
# <MODEL_SYNC_DIR>/retiring/<age>: the main process marks a worker it is about to replace gracefully
# (HUP, lifetime, memory ceiling); the worker then answers every request with `Connection: close`,
# so its keep-alive clients reconnect while it still serves, instead of sending a request on a
# connection it closes as it stops (the client would get no answer).
RETIRING = "retiring"
RETIRING_POLL_SECONDS = 0.1
# A Python thread Granian started for a request ends after this long idle (its least): each holds
# its stack's touched pages and allocator caches, some MiB a worker after a burst.
IDLE_THREAD_SECONDS = 5
# Bodies up to this size are read with no reservation (a digit PNG, a one-row v2 body): at most one
# per connection, MAX_CONNECTIONS of them. Larger ones reserve their size first (RequestGate).
PREREAD_BYTES = 64 * 1024
# A body answered unread (413, or no room) is read and dropped up to this size, so that its client,
# still sending, gets the answer (as nginx's lingering close); past it the connection just closes.
DISCARD_BYTES = 64 * 2**20
# glibc's allocator as the workers need it (read at process start, so the main process runs again
# with them set before it serves): a worker's threads share two heaps instead of one each (up to 8
# per CPU), and blocks from 1 MiB (a decoded image, a parsed body) are mapped apart and go back to
# the system when freed, instead of raising the threshold and staying in the heap (docs/memory.md).
# Granian's Rust side (request bodies as they arrive) allocates with jemalloc, whose freed pages go
# back to the system only after dirty_decay_ms (10 s by default) and only when it next allocates:
# a background thread returns them within a second, from two arenas instead of four per CPU.
MALLOC_SETTINGS = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(2**20), "MALLOC_TRIM_THRESHOLD_": str(4 * 2**20),
                   "_RJEM_MALLOC_CONF": "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2"}
LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def log_config(level: str) -> dict[str, Any]:
    """One line format for the main process, the workers, the app and Granian's own loggers."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {"_granian": {"level": "INFO"}, "granian.access": {"level": "WARNING"}},
    }


def quiet_log_records() -> None:
    """Every request logs a line: LogRecord fields the format never shows are not gathered (Python's
    logging HOWTO, "Optimization"): the caller's file and line (a walk up the stack on every call),
    the thread's and the multiprocessing process's names. 25 -> 12 µs a line."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


class SharedFolders:
    """The metrics and model-sync folders every worker of one main process uses.

    Each is the one its environment variable names, else a fresh temporary folder, set in the
    environment before anything imports prometheus_client (its multiprocess mode reads it then) and
    before the first fork, so every worker inherits it. Temporary ones go at exit."""

    def __init__(self) -> None:
        self.metrics, own_metrics = _own_temp_dir("PROMETHEUS_MULTIPROC_DIR", "mnist-serve-metrics-")
        self.sync, own_sync = _own_temp_dir("MODEL_SYNC_DIR", "mnist-serve-models-")
        self.own = [folder for folder, own in ((self.metrics, own_metrics), (self.sync, own_sync)) if own]

    def start_fresh(self) -> None:
        """Samples, loads and gRPC markers of an earlier run are stale: a start serves what is on disk."""
        from .grpc import handoff  # standard library only: the main process never loads gRPC

        self.metrics.mkdir(parents=True, exist_ok=True)
        for stale in self.metrics.glob("*.db"):
            stale.unlink()
        self.sync.mkdir(parents=True, exist_ok=True)
        (self.sync / "models.json").unlink(missing_ok=True)
        handoff.clear(self.sync)
        log.info("metrics of all workers are gathered in %s", self.metrics)
        log.info("workers share model loads and unloads through %s", self.sync)

    def remove_own(self) -> None:
        for folder in self.own:
            shutil.rmtree(folder, ignore_errors=True)


class PortTaken(RuntimeError):
    """A port the server needs is held by another program, or by another server."""


def claim_ports(settings: Mapping[str, Any]) -> list[socket.socket]:
    """Check that nothing else holds HOST:PORT and HOST:GRPC_PORT, and hold them for this server's workers.

    Our listening sockets set SO_REUSEPORT (HTTP: one per worker slot, `Server`; gRPC: one per
    worker, server/grpc/server.py), and any process of the same user may join such a port: a
    second server would silently share it, and answer for another repository. So each port is
    first bound by a socket without SO_REUSEPORT, which fails while anything else is bound there;
    then this process holds it, bound but not listening (no connection goes to it), with
    SO_REUSEPORT and without SO_REUSEADDR: our workers' sockets join it (they set SO_REUSEPORT), and
    another server's check fails on it as long as this process lives, also while no worker of ours
    listens (the first ones loading their models, a reload's hand-over). Raises PortTaken."""
    held: list[socket.socket] = []
    try:
        for setting, transport in (("PORT", "HTTP"), ("GRPC_PORT", "gRPC")):
            if settings[setting]:
                held.append(_claim(settings["HOST"], settings[setting], setting, transport))
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


def _claim(host: str, port: int, setting: str, transport: str) -> socket.socket:
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            # SO_REUSEADDR: connections of an earlier run still in TIME_WAIT do not make the port taken.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
        holder = socket.socket(family, kind, proto)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            holder.bind(address)
        except OSError:
            # Only connections in TIME_WAIT from a program that did not set SO_REUSEPORT stand in the
            # way (the probe bound): hold with SO_REUSEADDR, which our listening workers still guard.
            holder.close()
            holder = socket.socket(family, kind, proto)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(address)
    except OSError as err:
        off = " (0 = off)" if setting == "GRPC_PORT" else ""
        raise PortTaken(f"cannot listen for {transport} on {shown} ({err.strerror or err}); "
                        f"free the port or set {setting}{off}") from None
    return holder


def _stop_starting(signum: int, frame: Any) -> None:
    """TERM or INT before Granian handles them: end the start, through serve()'s clean-up."""
    raise SystemExit(0)


def _own_temp_dir(variable: str, prefix: str) -> tuple[Path, bool]:
    """The folder named by `variable`, or a fresh temporary one put there; and whether it is ours."""
    if os.environ.get(variable):
        return Path(os.environ[variable]), False
    os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
    return Path(os.environ[variable]), True


def preload_libraries(names: Iterable[str] = LIBRARIES) -> None:
    """Import `names` (those installed), then move what the process holds to the collector's
    permanent generation: the workers' collections never write to those objects, so their pages
    stay shared (Python's gc.freeze() docs, for servers that fork without exec)."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.freeze()


def forget_worker(sync_dir: Path, pid: int, age: int) -> None:
    """A worker has exited: its gRPC marker goes, and its live gauges (its counters and histograms
    still count in the totals)."""
    from prometheus_client import multiprocess

    from .grpc import handoff

    handoff.forget(sync_dir, age)
    (sync_dir / RETIRING / str(age)).unlink(missing_ok=True)
    multiprocess.mark_process_dead(pid)


# --- in a worker -------------------------------------------------------------------------------

class _Worker:
    """What this worker process started: its gRPC server, and its age (main process's count)."""

    age = 0
    grpc_server: Any = None
    settings: Mapping[str, Any] = {}


def load_worker(target: Callable[[], Any], settings: Mapping[str, Any], sync_dir: Path, age: int) -> Callable:
    """In a new worker: build the app with `target`, start its gRPC server, and return the WSGI
    callable Granian serves (the app behind `RequestGate`)."""
    _Worker.age, _Worker.settings = age, settings
    app = target()
    extensions = getattr(app, "extensions", {})
    if settings["GRPC_PORT"] and "registry" in extensions:
        from .app import start_grpc
        from .grpc import handoff

        _Worker.grpc_server = start_grpc(app)
        handoff.mark(sync_dir, age, "serving")
    # Requests with large bodies in the app at once (the large lane): those the memory budget lets
    # run at once (LARGE_REQUESTS) and the one it lets wait; more would only be refused by it (503).
    # The room for their bodies: as many at the largest size.
    large_lane = settings["LARGE_REQUESTS"] + 1
    gate = RequestGate(app, settings["THREADS"], settings["MAX_CONTENT_LENGTH"], large_lane * settings["MAX_CONTENT_LENGTH"],
                       settings["MEMORY_WAIT_SECONDS"], settings["KEEPALIVE_REQUESTS"], large_threads=large_lane)
    threading.Thread(target=_close_when_retiring, args=(gate, sync_dir / RETIRING / str(age)), daemon=True,
                     name="retiring-watch").start()
    return gate


def _close_when_retiring(gate: "RequestGate", marker: Path) -> None:
    """In a worker: once the main process marks it for replacement, every answer closes its connection."""
    while not marker.exists():
        time.sleep(RETIRING_POLL_SECONDS)
    gate.retiring = True


def stop_worker(sync_dir: Path) -> None:
    """In a worker whose HTTP serving has ended: keep gRPC's port until a successor listens (on a
    reload), then let calls in flight finish."""
    if _Worker.grpc_server is None:
        return
    from .grpc import handoff
    from .grpc.server import drain

    handoff.mark(sync_dir, _Worker.age, "stopping")
    waited = handoff.wait_for_successor(sync_dir, _Worker.age, timeout=GRACEFUL_SECONDS - 2)
    took = drain(_Worker.grpc_server, _Worker.settings["GRPC_PORT"], timeout=max(1.0, GRACEFUL_SECONDS - 2 - waited))
    log.info("gRPC stopped: %.1fs until a new worker listened, %.1fs to see clients off, %.1fs for calls in flight",
             waited, took["connections_seconds"], took["stop_seconds"])


class Lane:
    """At most `size` requests inside at once (a semaphore whose callers can also wait until one could enter)."""

    def __init__(self, size: int) -> None:
        self.size, self.inside = size, 0
        self.changed = threading.Condition()

    def wait_open(self) -> None:
        """Wait, taking nothing, until fewer than `size` are inside."""
        with self.changed:
            self.changed.wait_for(lambda: self.inside < self.size)

    def __enter__(self) -> "Lane":
        with self.changed:
            self.changed.wait_for(lambda: self.inside < self.size)
            self.inside += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        with self.changed:
            self.inside -= 1
            self.changed.notify_all()


class RequestGate:
    """The app as Granian calls it: a request's body is read first, then it runs the app in one of two lanes.

    Granian hands each request to a Python thread as soon as its headers are in, and the body is
    read there, blocking, as it arrives. Read before the request takes a slot in the app, a body
    that never finishes holds an idle thread and its connection, never the worker's room for work
    (docs/security.md). Requests small by their headers (a body of at most PREREAD_BYTES: a digit,
    a one-row v2 body) run `threads` at once; those with larger bodies (a page, a big batch) run
    in a lane of their own, `large_threads` at once, so that however long large work takes, the
    small requests never wait for a slot it holds, only for the CPU (docs/memory.md). A large
    request waits for its lane to have a free slot, holding nothing but its connection; then its
    body holds its declared size in a room of `body_room` bytes while the request lasts. One that
    does not fit waits for requests to end; only when bodies still arriving hold the room past
    `wait_seconds` (slow clients, who may never finish) is it read and dropped, then refused (503,
    Retry-After), so that no request the app would refuse for good (413) gets a 503 first. Bodies over `max_body` are left to the app, which refuses them at
    once (413; in the small lane, as they are never read); those are then read and dropped (up to
    DISCARD_BYTES), as are refused ones, so their clients get the answer.

    `keepalive_requests` > 0: about one response in that many says `Connection: close`, so
    keep-alive clients reconnect and spread over the workers (Granian does not count a
    connection's requests, so the chance stands for the count).
    """

    def __init__(self, app: Callable, threads: int, max_body: int, body_room: int, wait_seconds: float,
                 keepalive_requests: int = 0, large_threads: int | None = None) -> None:
        self.app = app
        self.lane, self.large_lane = Lane(threads), Lane(large_threads or threads)
        self.max_body, self.body_room, self.wait_seconds = max_body, body_room, wait_seconds
        self.room_used = 0
        self.room_reading = 0  # of room_used: bodies still arriving
        self.room_changed = threading.Condition()
        self.close_chance = 1 / keepalive_requests if keepalive_requests else 0.0
        self.retiring = False  # set once the main process is about to replace this worker

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        text = environ.get("CONTENT_LENGTH")
        length = int(text) if text and text.isdigit() else 0
        if not text and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            length = self.max_body + 1  # read up to the limit and one byte more: the app says 413 past it
        held = length if PREREAD_BYTES < length <= self.max_body + 1 else 0
        if held:  # its turn comes first: bodies waiting for the large lane would fill the room
            self.large_lane.wait_open()
        if held and not self._take_room(held):
            log.warning("a %d-byte body found no room in this worker within %gs: 503", length, self.wait_seconds)
            _discard(stream, length)
            return _refuse(start_response, f"no room for a {length}-byte body in this worker now; retry shortly")
        try:
            if 0 < length <= self.max_body + 1:
                try:
                    environ["wsgi.input"] = io.BytesIO(stream.read(length))
                finally:
                    if held:
                        self._done_reading(held)
            if self.retiring or (self.close_chance and random.random() < self.close_chance):
                start_response = partial(_closing, start_response)
            with self.large_lane if held else self.lane:
                answer = self.app(environ, start_response)
                if isinstance(answer, list):
                    chunks = answer
                else:
                    # Drawn here, in the slot, and handed over as a list: Granian answers a list in one write.
                    try:
                        chunks = list(answer)
                    finally:
                        if hasattr(answer, "close"):
                            answer.close()
            if length > self.max_body + 1:  # refused unread (413)
                _discard(stream, length)
            return chunks
        finally:
            if held:
                with self.room_changed:
                    self.room_used -= held
                    self.room_changed.notify_all()

    def _take_room(self, size: int) -> bool:
        """Hold `size` bytes of the room. False once `wait_seconds` have passed while bodies still
        arriving hold it (slow clients: they may never finish); while bodies already read hold it
        (their requests are running or next in the large lane), wait on: they make room when they end."""
        deadline = time.monotonic() + self.wait_seconds
        with self.room_changed:
            while self.room_used + size > self.body_room:
                left = deadline - time.monotonic()
                if left <= 0 and self.room_reading + size > self.body_room:
                    return False
                self.room_changed.wait(left if left > 0 else None)
            self.room_used += size
            self.room_reading += size
            return True

    def _done_reading(self, size: int) -> None:
        with self.room_changed:
            self.room_reading -= size
            self.room_changed.notify_all()


def _discard(stream: Any, length: int) -> None:
    """Read and drop up to DISCARD_BYTES of a body answered unread: Granian closes a connection whose
    body is left unread, and a client still sending it gets a broken pipe instead of the answer."""
    left = min(length, DISCARD_BYTES)
    while left > 0:
        chunk = stream.read(min(left, PREREAD_BYTES))
        if not chunk:
            return
        left -= len(chunk)


def _refuse(start_response: Callable, message: str) -> list[bytes]:
    """503 with Retry-After and the API's JSON error body, as an Overloaded error from the app gets."""
    body = json.dumps({"error": message}).encode()
    start_response("503 SERVICE UNAVAILABLE", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                               ("Retry-After", "1")])
    return [body]


def _closing(start_response: Callable, status: str, headers: list, exc_info: Any = None) -> Any:
    return start_response(status, [*headers, ("Connection", "close")], exc_info)


# --- the main process --------------------------------------------------------------------------

def _server_class():
    """Granian's multi-process server with the lifecycle above (imported late: granian is big)."""
    from granian.server.mp import MPServer

    class Server(MPServer):
        """Granian's server, plus an age per worker (and its gRPC marker) and the clean-up after each
        worker's exit.

        Each worker slot listens on its own SO_REUSEPORT socket, so the kernel spreads new
        connections evenly over the workers (bench/spread.py; one socket shared by all let the
        busiest worker accept most of them). Granian lets each worker make its socket on Linux,
        and a worker that dies takes it along: the connections in its accept queue are reset
        (unless net.ipv4.tcp_migrate_req=1). Here the main process makes the slot's socket and
        keeps it open; every worker in that slot (the first, its replacement, its successor on a
        HUP) inherits it, so queued connections wait for the next one instead (docs/deploy.md)."""

        def __init__(self, *args, sync_dir: Path, grpc: bool, defer_accept: int, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.sync_dir, self.grpc, self.defer_accept = sync_dir, grpc, defer_accept
            self.ages = itertools.count(1)
            self.slot_ages: dict[int, int] = {}  # the age of each slot's newest worker
            self.spec: Any = None
            self.listeners: dict[int, tuple[Any, socket.socket]] = {}

        def _init_shared_socket(self) -> None:
            super()._init_shared_socket()
            # Left set only on Linux over TCP (Granian's per-worker sockets); elsewhere Granian made
            # one socket here, which every worker inherits, and that stays.
            self.spec, self._ssp = self._ssp, None

        def _listener(self, idx: int) -> tuple[Any, socket.socket]:
            """Slot `idx`'s listening socket, made (bound with SO_REUSEPORT, listening) on first use."""
            if idx not in self.listeners:
                holder = self.spec.build()
                sock = socket.socket(fileno=holder.get_fd())
                # A connection is handed to a worker once its first bytes are in. A worker told to
                # stop closes every connection it has accepted that has no request under way yet
                # (hyper's graceful shutdown); without this, a client that connected just before a
                # replacement (HUP, lifetime, memory ceiling) and sent its request just after lost it.
                # Until its bytes come (up to about this many seconds), it waits in the slot's queue
                # for whichever worker holds the slot by then.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, self.defer_accept)
                sock.listen(self.backlog)  # from now: connections queue for whichever worker holds the slot
                sock.set_inheritable(True)
                self.listeners[idx] = (holder, sock)
            return self.listeners[idx]

        def _drop_shared_socket(self) -> None:
            super()._drop_shared_socket()
            for _, sock in self.listeners.values():
                sock.close()  # the workers (told to stop next) hold their copies until they exit
            self.listeners.clear()

        def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
            if os.getpid() != self.pid:
                # A worker forks with this handler and keeps it while it loads the app, until Granian
                # sets its own: there it would only flag this process's copy of the server, and a
                # worker told to stop while booting would be killed GRACEFUL_SECONDS later. It has
                # taken no HTTP request yet, so it stops now (_serve_worker drains gRPC if started).
                raise SystemExit(0)
            super().signal_handler_interrupt(*args, **kwargs)

        def _respawn_workers(self, workers, spawn_target, target_loader, delay: float = 0) -> None:
            """Mark the live workers about to be replaced (RETIRING) first: their keep-alive clients
            move on while they still answer."""
            retiring = self.sync_dir / RETIRING
            retiring.mkdir(exist_ok=True)
            for idx in workers:
                if idx < len(self.wrks) and self.wrks[idx].is_alive() and idx in self.slot_ages:
                    (retiring / str(self.slot_ages[idx])).touch()
            super()._respawn_workers(workers, spawn_target, target_loader, delay)

        def _spawn_worker(self, idx, target, callback_loader):
            if self.spec is not None:
                self._shd, self._sso = self._listener(idx)  # what Granian hands the worker it forks
            age = next(self.ages)
            self.slot_ages[idx] = age
            if self.grpc:
                from .grpc import handoff

                handoff.mark(self.sync_dir, age, "booting")
            worker = super()._spawn_worker(idx, target, partial(callback_loader, age=age))
            watch = worker._watcher

            def watcher() -> None:
                watch()  # returns once the process has exited
                forget_worker(self.sync_dir, worker.inner.pid, age)

            worker._watcher = watcher
            return worker

    return Server


def _serve_worker(*args: Any) -> None:
    """A worker process: Granian's WSGI worker, then our end of it (gRPC hand-over and drain)."""
    from granian.server.mp import MPServer

    try:
        MPServer._spawn_wsgi_worker(*args)
    finally:
        stop_worker(Path(os.environ["MODEL_SYNC_DIR"]))


def _app_loader(target: str, factory: bool, settings: Mapping[str, Any], age: int) -> Callable:
    """Runs in the worker: import `target` (`module:name`) and build the app from it."""
    module, _, name = target.partition(":")
    obj = getattr(importlib.import_module(module), name or "app")
    return load_worker(obj if factory else (lambda: obj), settings, Path(os.environ["MODEL_SYNC_DIR"]), age)


def exec_with_allocator_settings(argv: list[str]) -> None:
    """Run `python argv` in place of this process with MALLOC_SETTINGS in its environment, unless
    they are there already (then return: this process started with them)."""
    if all(name in os.environ for name in MALLOC_SETTINGS):
        return
    for name, value in MALLOC_SETTINGS.items():
        os.environ.setdefault(name, value)
    os.execv(sys.executable, [sys.executable, *argv])


def serve(settings: Mapping[str, Any], target: str = "server:create_app", factory: bool = True) -> int:
    """Run the server in this process (the main process) until TERM or INT; HUP replaces the workers.

    Returns 1 at once, with one line on stderr, when a port is taken (claim_ports)."""
    try:
        held = claim_ports(settings)
    except PortTaken as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for stop in (signal.SIGTERM, signal.SIGINT):  # until Granian sets its own handlers
        signal.signal(stop, _stop_starting)
    # A stop arriving while the folders are made waits until both exist, so both go.
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    folders = SharedFolders()
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        return _serve(settings, target, factory, folders)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        folders.remove_own()
        for sock in held:
            sock.close()


def _serve(settings: Mapping[str, Any], target: str, factory: bool, folders: SharedFolders) -> int:
    quiet_log_records()
    logging.config.dictConfig(log_config(settings["LOG_LEVEL"]))  # before Granian's own set-up
    log.info("%s", config.describe_box(settings))
    folders.start_fresh()
    preload_libraries()
    # What forget_worker() needs, imported now: it runs in a thread of this process while others
    # fork, and a module still being imported at a fork stays locked in the child for good.
    importlib.import_module("prometheus_client.multiprocess")
    importlib.import_module("server.grpc.handoff")
    # Workers are forked: they inherit the libraries above (Python 3.14
    # makes forkserver the default, which Granian would turn into spawn).
    multiprocessing.set_start_method("fork", force=True)
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    server = _server_class()(
        target, address=settings["HOST"], port=settings["PORT"], interface=Interfaces.WSGI,
        workers=settings["WORKERS"],
        # A Python thread per connection with a request in flight (threads start when needed and
        # end when idle); RequestGate lets THREADS of them into the app at once.
        blocking_threads=settings["MAX_CONNECTIONS"], backpressure=settings["MAX_CONNECTIONS"],
        http1_settings=HTTP1Settings(header_read_timeout=int(settings["HEADER_READ_TIMEOUT"] * 1000)),
        websockets=False, log_dictconfig=log_config(settings["LOG_LEVEL"]), log_access=False,
        blocking_threads_idle_timeout=IDLE_THREAD_SECONDS,
        respawn_failed_workers=True, respawn_interval=RESPAWN_SECONDS, workers_kill_timeout=GRACEFUL_SECONDS,
        workers_max_rss=settings["WORKER_MAX_RSS"] or None, workers_lifetime=settings["WORKER_LIFETIME"] or None,
        pid_file=Path(settings["PID_FILE"]).resolve() if settings["PID_FILE"] else None,
        sync_dir=folders.sync, grpc=bool(settings["GRPC_PORT"]),
        defer_accept=max(1, math.ceil(settings["HEADER_READ_TIMEOUT"])),
    )
    # Granian warns that MAX_CONNECTIONS Python threads may start: they do, one per request in
    # flight, by design (RequestGate lets THREADS of them into the app), so the warning says nothing.
    logging.getLogger("_granian").addFilter(lambda record: "Python threads" not in record.getMessage())
    server.serve(spawn_target=_serve_worker, target_loader=partial(_app_loader, target, factory, settings),
                 wrap_loader=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m server.lifecycle module:app`: another WSGI app (the benchmarks' trivial one) under
    exactly this launcher, settings from the environment (server/config.py)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m server.lifecycle", description=main.__doc__)
    parser.add_argument("target", help="module:name of a WSGI app, or of a factory with --factory")
    parser.add_argument("--factory", action="store_true", help="call target() for the app")
    args = parser.parse_args(argv)
    exec_with_allocator_settings(["-m", "server.lifecycle", *(argv if argv is not None else sys.argv[1:])])
    return serve(config.from_environment(), args.target, args.factory)


if __name__ == "__main__":
    sys.exit(main())
