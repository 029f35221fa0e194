"""gunicorn settings for production, taken from the same environment variables as the app."""
# gunicorn reads every top-level name here as a setting: keep helpers private.
from server.config import from_environment as _from_environment

_settings = _from_environment()

bind = f"{_settings['HOST']}:{_settings['PORT']}"
workers = _settings["WORKERS"]
threads = _settings["THREADS"]
worker_class = "gthread"
# Each worker loads its own onnxruntime sessions after the fork (no preload): sessions are not
# fork-safe, and a crashed worker is replaced with a fresh copy.
preload_app = False
timeout = 30
graceful_timeout = 20
keepalive = 5
limit_request_line = 8190
accesslog = None  # the app logs one line per request itself, with its request id
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
