"""gunicorn in the server's process shape, for the benchmarks' two gunicorn configurations.

WORKERS x THREADS and the rest from server/config.py, the connection-spreading threaded worker,
the server's log format: what bench/gunicorn_conf.py (this server under gunicorn) and
bench/torch_gunicorn_conf.py (the torch baseline) share. gunicorn reads every top-level name of
a configuration file as a setting: helpers stay private.
"""
from server import lifecycle as _lifecycle
from server.config import from_environment as _from_environment

_settings = _from_environment()
_lifecycle.quiet_log_records()

bind = f"{_settings['HOST']}:{_settings['PORT']}"
workers = _settings["WORKERS"]
threads = _settings["THREADS"]
worker_class = "bench.gunicorn_worker.SpreadingThreadWorker"
# Each worker builds its app after the fork (onnxruntime sessions are not fork-safe).
preload_app = False
timeout = 30
graceful_timeout = _lifecycle.GRACEFUL_SECONDS
keepalive = 5
control_socket_disable = True  # gunicorn's per-user control socket: HUP/TERM do the same by signal
accesslog = None  # the app logs one line per request itself, with its request id
loglevel = _settings["LOG_LEVEL"]
logconfig_dict = {**_lifecycle.log_config(_settings["LOG_LEVEL"]),
                  "loggers": {"gunicorn.error": {"level": "INFO"}, "gunicorn.access": {"level": "WARNING"}}}


def pre_request(worker, req):
    """Answer the connection's KEEPALIVE_REQUESTS-th request with `Connection: close`."""
    if _settings["KEEPALIVE_REQUESTS"] and req.req_number >= _settings["KEEPALIVE_REQUESTS"]:
        req.must_close = True
