"""gunicorn for the benchmarks' torch baseline (bench/torch_app.py): the server's process shape
(bench/gunicorn_shape.py), none of its hooks (that app has no metrics, model sync or gRPC)."""
from bench.gunicorn_shape import *  # noqa: F401,F403  (gunicorn reads the settings from this module)
