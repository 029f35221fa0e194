"""gunicorn settings for production, taken from the same environment variables as the app."""
# gunicorn reads every top-level name here as a setting: keep helpers private.
import gc as _gc
import logging as _logging
import os as _os
import shutil as _shutil
import tempfile as _tempfile
from pathlib import Path as _Path


def _own_temp_dir(variable: str, prefix: str) -> tuple[_Path, bool]:
    """The folder named by `variable`, or a fresh temporary one put there; and whether it is ours.

    gunicorn reads this file again on HUP, when the folder is already in the environment: ours is
    recognised by its name, so it is still removed at exit (and its content survives the HUP).
    """
    if not _os.environ.get(variable):
        _os.environ[variable] = _tempfile.mkdtemp(prefix=prefix)
    folder = _Path(_os.environ[variable])
    return folder, folder.name.startswith(prefix) and folder.parent == _Path(_tempfile.gettempdir())


# /metrics adds up every worker's samples (prometheus-client's multiprocess mode). The folder must
# be in the environment before anything imports prometheus_client, so it is chosen here, in the
# master, before the server package is imported; workers inherit it.
_METRICS_DIR, _OWN_METRICS_DIR = _own_temp_dir("PROMETHEUS_MULTIPROC_DIR", "mnist-serve-metrics-")
# Workers tell each other of model loads and unloads through a file in this folder (see
# server/model_sync.py and docs/models.md).
_SYNC_DIR, _OWN_SYNC_DIR = _own_temp_dir("MODEL_SYNC_DIR", "mnist-serve-models-")

from gunicorn.glogging import Logger as _GunicornLogger  # noqa: E402
from server.config import describe_box as _describe_box  # noqa: E402 (after the env is set)
from server.config import from_environment as _from_environment  # noqa: E402

_settings = _from_environment()

# The libraries are imported here, once, in the master: every worker forks with them loaded (their
# pages shared until written, no import time at each start or replacement). Nothing that holds
# state is made here: onnxruntime sessions are not fork-safe and each worker builds its own after
# the fork (preload_app stays off), and server/ itself is imported by the workers, so that a HUP
# still serves new server code (a new library version needs a restart). Not onnxruntime: imported
# before the fork, a worker that used it aborts at its exit (std::system_error, SIGABRT instead of
# its exit code), so each worker imports it itself.
_LIBRARIES = ("numpy", "PIL.Image", "PIL.PngImagePlugin", "flask", "werkzeug", "prometheus_client",
              "google.protobuf.text_format")


def _import_libraries() -> None:
    import importlib

    for name in _LIBRARIES:
        try:
            importlib.import_module(name)
        except ImportError:  # the benchmarks' torch baseline runs under these settings without some
            pass


_import_libraries()
# What the master holds now moves to the collector's permanent generation: the workers' collections
# never write to those objects, so their pages stay shared (Python's gc.freeze() docs, for servers
# that fork without exec).
_gc.freeze()

bind = f"{_settings['HOST']}:{_settings['PORT']}"
workers = _settings["WORKERS"]
threads = _settings["THREADS"]
worker_class = "server.gunicorn_worker.SpreadingThreadWorker"
# Each worker loads its own onnxruntime sessions after the fork (no preload): sessions are not
# fork-safe, and a crashed worker is replaced with a fresh copy.
preload_app = False
timeout = 30
graceful_timeout = 20
keepalive = 5
limit_request_line = 8190
# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl) shared by
# every gunicorn that user runs; the server needs none, and HUP/TERM do the same by signal.
control_socket_disable = True
accesslog = None  # the app logs one line per request itself, with its request id


class _NoAccessLog(_GunicornLogger):
    """gunicorn's logger without its access line: with a logging config set, gunicorn would still
    gather each request's access-log fields (1.5 % of a worker's time under load, py-spy) to log
    nothing."""

    def access(self, resp, req, environ, request_time) -> None:
        return None


logger_class = _NoAccessLog
# Every request logs a line: LogRecord fields that the format below never shows are not gathered
# (Python's logging HOWTO, "Optimization"): the caller's file and line (a walk up the stack on
# every call), the thread's and the multiprocessing process's names. 25 -> 12 µs a line.
_logging._srcfile = None
_logging.logThreads = False
_logging.logMultiprocessing = False
loglevel = _settings["LOG_LEVEL"]
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "root": {"level": _settings["LOG_LEVEL"].upper(), "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
    },
}


def pre_request(worker, req):
    """Answer the connection's KEEPALIVE_REQUESTS-th request with `Connection: close` (see server/config.py)."""
    if _settings["KEEPALIVE_REQUESTS"] and req.req_number >= _settings["KEEPALIVE_REQUESTS"]:
        req.must_close = True


def on_starting(server):
    """Start the metrics from zero: samples left by an earlier run in the folder are stale."""
    _METRICS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in _METRICS_DIR.glob("*.db"):
        stale.unlink()
    server.log.info("%s", _describe_box(_settings))
    server.log.info("metrics of all workers are gathered in %s", _METRICS_DIR)
    # Loads and unloads of an earlier run are stale too: a restart serves what is on disk.
    _SYNC_DIR.mkdir(parents=True, exist_ok=True)
    (_SYNC_DIR / "models.json").unlink(missing_ok=True)
    server.log.info("workers share model loads and unloads through %s", _SYNC_DIR)
    from server.grpc import handoff  # standard library only: the master never loads gRPC

    handoff.clear(_SYNC_DIR)


# gRPC (server/grpc/): each worker opens its own server after the fork, once its models are
# loaded; server/grpc/handoff.py keeps the port served while a HUP replaces the workers.
def pre_fork(server, worker):
    if _settings["GRPC_PORT"]:
        from server.grpc import handoff

        handoff.mark(_SYNC_DIR, worker.age, "booting")


def post_worker_init(worker):
    """Start this worker's gRPC server over the models it has just loaded."""
    if not _settings["GRPC_PORT"] or "registry" not in getattr(worker.wsgi, "extensions", {}):
        return  # gRPC off, or another app under these settings (the benchmarks' torch baseline)
    from server.app import start_grpc
    from server.grpc import handoff

    worker.grpc_server = start_grpc(worker.wsgi)
    handoff.mark(_SYNC_DIR, worker.age, "serving")


def worker_exit(server, worker):
    """Stop this worker's gRPC server: once a successor listens (on a reload), then let calls in flight finish."""
    grpc_server = getattr(worker, "grpc_server", None)
    if grpc_server is None:
        return
    from server.grpc import handoff

    from server.grpc.server import drain

    handoff.mark(_SYNC_DIR, worker.age, "stopping")
    waited = handoff.wait_for_successor(_SYNC_DIR, worker.age, timeout=graceful_timeout)
    took = drain(grpc_server, _settings["GRPC_PORT"], timeout=max(1.0, graceful_timeout - waited))
    server.log.info("gRPC stopped: %.1fs until a new worker listened, %.1fs to see clients off, %.1fs for calls in flight",
                    waited, took["connections_seconds"], took["stop_seconds"])


def child_exit(server, worker):
    """Let the dead worker's live gauges go; its counters and histograms still count in the totals."""
    from server.grpc import handoff

    handoff.forget(_SYNC_DIR, worker.age)
    try:
        from prometheus_client import multiprocess
    except ModuleNotFoundError:  # the benchmarks' torch baseline runs under these settings without it
        return
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:
        _shutil.rmtree(_METRICS_DIR, ignore_errors=True)
    if _OWN_SYNC_DIR:
        _shutil.rmtree(_SYNC_DIR, ignore_errors=True)
