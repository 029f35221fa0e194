"""Prometheus metrics: requests by route and status, latency, inference time and batch size, load failures;
and Triton's statistics extension, read from the same samples.

No web framework here: `create_app` hands `observe_inference` and `count_load_failure` to the model
registry and counts requests with `observe_request`. Under `python -m server` every worker writes its samples
to files in PROMETHEUS_MULTIPROC_DIR (set up by server/lifecycle.py before any worker starts)
and `exposition()` adds up all workers; without that variable (Flask's test client, `flask run`)
the process's own registry is served.

The statistics extension (`model_statistics`) has no store of its own: it reads these samples as
`/metrics` does, so every worker answers the same numbers, summed over all workers.
"""
from __future__ import annotations

import glob
import os
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, TypeVar

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
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
# Triton's statistics extension, per v2 inference request that reached a model (both transports):
# count and total time by outcome, of its phases, rows of the successful ones, and the last one's time.
INFER_REQUEST_SECONDS = Summary(
    "model_infer_request_duration_seconds", "v2 inference requests that reached a model, by outcome (success, fail): "
    "count and total seconds", ["model", "version", "outcome"],
)
# A counter, not a summary: each phase's count is the success count (half the writes per request).
INFER_PHASE_SECONDS = Counter(
    "model_infer_phase_seconds", "Seconds successful v2 inference requests spent, by phase: queue (waiting "
    "for a batch), compute_input (decoding), compute_infer (the model), compute_output (encoding)",
    ["model", "version", "phase"],
)
INFERENCES = Counter(
    "model_inferences", "Inferences (rows of batched requests) in successful v2 inference requests",
    ["model", "version"],
)
LAST_INFERENCE = Gauge(
    "model_last_inference_timestamp_seconds", "When the last successful v2 inference request of the model ended",
    ["model", "version"], multiprocess_mode="max",
)
T = TypeVar("T")
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
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


class InferenceStatistics:
    """One v2 inference request of a model, timed by phase; on leaving, counted a success or a
    failure in Triton's statistics (a request that raised is a failure)."""

    def __init__(self, model: str, version: str) -> None:
        self.labels = (model, version)
        self.rows = 0
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._mark = self._started = time.perf_counter()

    def __enter__(self) -> "InferenceStatistics":
        return self

    def end_phase(self, phase: str) -> None:
        """The time since the last phase ended (or the request started) belongs to `phase`."""
        now = time.perf_counter()
        self.seconds[phase] += now - self._mark
        self._mark = now

    def run(self, model: Any, call: Callable[[], T]) -> T:
        """End compute_input, then `call()` (the model's run) as compute_infer, less the time
        `model`'s batcher kept this thread waiting for a batch (`take_queue_seconds()`), as queue."""
        self.end_phase("compute_input")
        model.take_queue_seconds()  # only this request's wait from here on
        result = call()
        self.end_phase("compute_infer")
        self.waited(model.take_queue_seconds())
        return result

    def waited(self, seconds: float) -> None:
        """`seconds` of compute_infer were spent waiting for a batch: count them as queue time."""
        seconds = min(seconds, self.seconds["compute_infer"])
        self.seconds["compute_infer"] -= seconds
        self.seconds["queue"] += seconds

    def __exit__(self, kind, error, traceback) -> bool:
        elapsed = time.perf_counter() - self._started
        model, version = self.labels
        outcome = "success" if kind is None else "fail"
        _child(INFER_REQUEST_SECONDS, _INFER_REQUEST_BY_LABELS, model, version, outcome).observe(elapsed)
        if kind is None:
            for phase, seconds in self.seconds.items():
                if seconds:  # each write to the shared files costs about 2 µs
                    _child(INFER_PHASE_SECONDS, _INFER_PHASE_BY_LABELS, model, version, phase).inc(seconds)
            _child(INFERENCES, _INFERENCES_BY_LABELS, model, version).inc(self.rows)
            _child(LAST_INFERENCE, _LAST_INFERENCE_BY_LABELS, model, version).set(time.time())
        return False


_INFER_REQUEST_BY_LABELS: dict = {}
_INFER_PHASE_BY_LABELS: dict = {}
_INFERENCES_BY_LABELS: dict = {}
_LAST_INFERENCE_BY_LABELS: dict = {}


def model_statistics(versions: Iterable[tuple[str, str]]) -> list[dict]:
    """Triton's statistics (`GET /v2/models/stats`'s `model_stats`) of each (model, version), in that
    order, from the samples of every worker: counts, durations in ns, the last inference in ms
    since the epoch."""
    totals: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in _registry().collect():
        for sample in family.samples:
            labels = sample.labels
            if "model" not in labels or "version" not in labels:
                continue
            key = _statistic_key(sample.name, labels)
            if key:
                totals[(labels["model"], labels["version"])][key] += sample.value
    return [_triton_statistics(name, version, totals.get((name, version), {})) for name, version in versions]


def _statistic_key(sample: str, labels: dict) -> str | None:
    """Which statistic a sample adds to: `success_count`, `queue_ns`, `execution_count`..."""
    if sample.startswith("model_infer_request_duration_seconds_"):
        return f"{labels['outcome']}_{sample.rsplit('_', 1)[1]}"
    if sample == "model_infer_phase_seconds_total":
        return f"{labels['phase']}_sum"
    return {"model_inferences_total": "inference_count", "model_inference_duration_seconds_count": "execution_count",
            "model_last_inference_timestamp_seconds": "last_inference"}.get(sample)


def _triton_statistics(name: str, version: str, totals: dict[str, float]) -> dict:
    def duration(what: str, count: str | None = None) -> dict:
        return {"count": int(totals.get(f"{count or what}_count", 0)), "ns": int(totals.get(f"{what}_sum", 0) * 1e9)}

    return {
        "name": name,
        "version": version,
        "last_inference": int(totals.get("last_inference", 0) * 1000),
        "inference_count": int(totals.get("inference_count", 0)),
        "execution_count": int(totals.get("execution_count", 0)),
        "inference_stats": {
            "success": duration("success"), "fail": duration("fail"),
            **{phase: duration(phase, count="success") for phase in PHASES},  # every success has each phase
            "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0},
        },
        "response_stats": {},
        "batch_stats": [],
        "memory_usage": [],
    }


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


def _registry():
    """Every worker's samples (PROMETHEUS_MULTIPROC_DIR's files) when there is that folder, else this process's."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(WorkerFilesCollector(folder))
    return registry


def exposition() -> bytes:
    """Every metric in Prometheus' text format, summed over all workers when there are several."""
    return generate_latest(_registry())
