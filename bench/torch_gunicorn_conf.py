"""gunicorn for the benchmarks' torch baseline (bench/torch_app.py): the server's process shape
(WORKERS x THREADS from server/config.py, the same connection-spreading worker and logging), none
of its hooks (no metrics, model sync or gRPC in that app)."""
from server import lifecycle as _lifecycle
from server.config import from_environment as _from_environment

_settings = _from_environment()
_lifecycle.quiet_log_records()

bind = f"{_settings['HOST']}:{_settings['PORT']}"
workers = _settings["WORKERS"]
threads = _settings["THREADS"]
worker_class = "bench.gunicorn_worker.SpreadingThreadWorker"
preload_app = False
timeout = 30
graceful_timeout = _lifecycle.GRACEFUL_SECONDS
keepalive = 5
control_socket_disable = True
accesslog = None
loglevel = _settings["LOG_LEVEL"]
logconfig_dict = {**_lifecycle.log_config(_settings["LOG_LEVEL"]),
                  "loggers": {"gunicorn.error": {"level": "INFO"}, "gunicorn.access": {"level": "WARNING"}}}
