"""gunicorn under the server's app, the HTTP layer before Granian: the benchmarks' A/B of the layer.

bench/http_layer.py runs the same apps (the server, the trivial app) under this and under the
server's own launcher (server/lifecycle.py), one after the other: the server's process shape
(bench/gunicorn_shape.py), the same shared folders, preloaded libraries and clean-up of dead
workers' metrics as the server's; no gRPC (the benchmarks set GRPC_PORT=0 for it).
"""
# gunicorn reads every top-level name here as a setting: keep helpers private.
from gunicorn.glogging import Logger as _GunicornLogger

from server import lifecycle as _lifecycle

_folders = _lifecycle.SharedFolders()  # before anything imports prometheus_client

from bench.gunicorn_shape import *  # noqa: E402,F401,F403
from bench.gunicorn_shape import _settings  # noqa: E402
from server.config import describe_box as _describe_box  # noqa: E402

_lifecycle.preload_libraries()


class _NoAccessLog(_GunicornLogger):
    """gunicorn's logger without its access line (1.5 % of a worker's time gathering fields to log nothing)."""

    def access(self, resp, req, environ, request_time) -> None:
        return None


logger_class = _NoAccessLog


def on_starting(server):
    server.log.info("%s", _describe_box(_settings))
    _folders.start_fresh()


def child_exit(server, worker):
    _lifecycle.forget_worker(_folders.sync, worker.pid, worker.age)


def on_exit(server):
    _folders.remove_own()
