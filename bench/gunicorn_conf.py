"""gunicorn under the server's app, the HTTP layer before Granian: the benchmarks' A/B of the layer.

bench/http_layer.py and bench/run.py run the same apps (the server, the trivial app) under this
and under the server's own launcher (server/lifecycle.py), one after the other. The same shared
folders, preloaded libraries and clean-up of dead workers' metrics as the server's; no gRPC
(GRPC_PORT is forced to 0 by the benchmarks that use this).
"""
# gunicorn reads every top-level name here as a setting: keep helpers private.
from gunicorn.glogging import Logger as _GunicornLogger

from server import lifecycle as _lifecycle
from server.config import describe_box as _describe_box
from server.config import from_environment as _from_environment

_folders = _lifecycle.SharedFolders()  # before anything imports prometheus_client
_settings = _from_environment()
_lifecycle.preload_libraries()
_lifecycle.quiet_log_records()

bind = f"{_settings['HOST']}:{_settings['PORT']}"
workers = _settings["WORKERS"]
threads = _settings["THREADS"]
worker_class = "bench.gunicorn_worker.SpreadingThreadWorker"
# Each worker loads its own onnxruntime sessions after the fork (sessions are not fork-safe).
preload_app = False
timeout = 30
graceful_timeout = _lifecycle.GRACEFUL_SECONDS
keepalive = 5
control_socket_disable = True  # gunicorn's per-user control socket: HUP/TERM do the same by signal
accesslog = None  # the app logs one line per request itself, with its request id


class _NoAccessLog(_GunicornLogger):
    """gunicorn's logger without its access line (1.5 % of a worker's time gathering fields to log nothing)."""

    def access(self, resp, req, environ, request_time) -> None:
        return None


logger_class = _NoAccessLog
loglevel = _settings["LOG_LEVEL"]
logconfig_dict = {**_lifecycle.log_config(_settings["LOG_LEVEL"]),
                  "loggers": {"gunicorn.error": {"level": "INFO"}, "gunicorn.access": {"level": "WARNING"}}}


def pre_request(worker, req):
    """Answer the connection's KEEPALIVE_REQUESTS-th request with `Connection: close`."""
    if _settings["KEEPALIVE_REQUESTS"] and req.req_number >= _settings["KEEPALIVE_REQUESTS"]:
        req.must_close = True


def on_starting(server):
    server.log.info("%s", _describe_box(_settings))
    _folders.start_fresh()


def child_exit(server, worker):
    _lifecycle.forget_worker(_folders.sync, worker.pid, worker.age)


def on_exit(server):
    _folders.remove_own()
