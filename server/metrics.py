"""Prometheus metrics: requests by route and status, latency, inference time and batch size, load failures.

No web framework here: `create_app` hands `observe_inference` and `count_load_failure` to the model
registry and counts requests with `observe_request`. Under `python -m server` every worker writes its samples
to files in PROMETHEUS_MULTIPROC_DIR (set up by server/lifecycle.py before any worker starts)
and `exposition()` adds up all workers; without that variable (Flask's test client, `flask run`)
the process's own registry is served.
"""
from __future__ import annotations

import glob
import os

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

# The `_created` timestamps double the output and multiprocess mode cannot serve them anyway.
disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Label for requests that matched no route: the raw path would let any client mint new series.
UNMATCHED_ROUTE = "<unmatched>"

# gRPC calls are counted here too, with transport="grpc": the route is the full method name
# (/inference.GRPCInferenceService/ModelInfer), the method POST (as HTTP/2 carries every call)
# and the status the gRPC status code's name (OK, INVALID_ARGUMENT...).
REQUESTS = Counter(
    "http_requests_total", "Requests answered, by transport (http, grpc), route (the URL rule or gRPC method), method and status",
    ["route", "method", "status", "transport"],
)
REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds", "Time from the request's start to its response, by transport and route",
    ["route", "method", "transport"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
INFERENCE_SECONDS = Histogram(
    "model_inference_duration_seconds", "Time spent in the model's onnxruntime session per batch",
    ["model", "version"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_SIZE = Histogram(
    "model_batch_size", "Items (images or tensor rows) per inference batch",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
LOAD_FAILURES = Counter(
    "model_load_failures_total", "Attempts to load a model version that failed, counted in every worker that tried",
    ["model", "version"],
)


def _child(metric, cache: dict, *labels: str):
    """`metric.labels(*labels)`, looked up once: labels() takes a lock and checks every value each call."""
    child = cache.get(labels)
    if child is None:
        child = cache[labels] = metric.labels(*labels)
    return child


_REQUESTS_BY_LABELS: dict = {}
_REQUEST_SECONDS_BY_LABELS: dict = {}
_INFERENCE_SECONDS_BY_LABELS: dict = {}
_BATCH_SIZE_BY_LABELS: dict = {}


def observe_request(route: str | None, method: str, status: int | str, seconds: float | None,
                    transport: str = "http") -> None:
    """Count one answered request and, when its start is known, its duration."""
    route = route if route is not None else UNMATCHED_ROUTE
    _child(REQUESTS, _REQUESTS_BY_LABELS, route, method, str(status), transport).inc()
    if seconds is not None:
        _child(REQUEST_SECONDS, _REQUEST_SECONDS_BY_LABELS, route, method, transport).observe(seconds)


def observe_inference(model: str, version: str, batch_size: int, seconds: float) -> None:
    """Record one onnxruntime run of `model` (batched or not)."""
    _child(INFERENCE_SECONDS, _INFERENCE_SECONDS_BY_LABELS, model, version).observe(seconds)
    _child(BATCH_SIZE, _BATCH_SIZE_BY_LABELS, model, version).observe(batch_size)


def count_load_failure(model: str, version: str) -> None:
    """Record one failed attempt to load a model version."""
    LOAD_FAILURES.labels(model, version).inc()


class WorkerFilesCollector:
    """prometheus-client's multiprocess collector, minus the files it cannot read yet.

    A worker creates its file empty and sizes it just after; a scrape in between (or a worker
    killed in between, leaving the empty file for good) would make the whole scrape fail
    (prometheus/client_python#1199). Empty files hold no samples, so they are skipped.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self):
        files = [path for path in glob.glob(os.path.join(self.path, "*.db")) if _has_data(path)]
        return multiprocess.MultiProcessCollector.merge(files, accumulate=True)


def _has_data(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:  # a dead worker's live gauges, removed since the glob
        return False


def exposition() -> bytes:
    """Every metric in Prometheus' text format, summed over all workers when there are several."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        registry = CollectorRegistry()
        registry.register(WorkerFilesCollector(folder))
    else:
        registry = REGISTRY
    return generate_latest(registry)
