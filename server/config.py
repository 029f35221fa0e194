"""Every server setting in one place: its default, its environment variable and its flag."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .limits import box as _box


@dataclass(frozen=True)
class Setting:
    """One setting; `name` is both the environment variable and the Flask config key."""

    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str


class ConfigError(ValueError):
    """A setting's value that cannot be used; the message names the setting and what it expects."""


def _number(kind: type, low: float, high: float | None = None) -> Callable[[str], Any]:
    """A parser for an int or float between `low` and `high`, saying so when the text is not."""
    expected = f"{'an integer' if kind is int else 'a number'} from {low}" + (f" to {high}" if high else " up")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"received {text!r}; expected {expected}") from None
        if value < low or (high is not None and value > high) or value != value:
            raise ValueError(f"received {text!r}; expected {expected}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _log_level(text: str) -> str:
    if text.strip().lower() not in LOG_LEVELS:
        raise ValueError(f"received {text!r}; expected one of {', '.join(LOG_LEVELS)}")
    return text.strip().lower()


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool(text: str) -> bool:
    word = text.strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise ValueError(f"received {text!r}; expected one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")
    return word in TRUE_WORDS


# The box this process starts on (its cgroup's memory limit and CPU quota, else the machine's):
# WORKERS and the memory budget derive from it. On a 1 GB / 1 CPU box: two workers of a few
# threads each, one onnxruntime thread per session so workers do not fight over the core.
BOX = _box.detect()
# Rows onnxruntime runs at once: its arena keeps the peak of the largest run (~30 MiB a worker after
# 64-row runs of the digit CNN, ~10 MiB after 16-row ones; docs/memory.md).
CHUNK_ROWS = 16

SETTINGS: tuple[Setting, ...] = (
    Setting("MODEL_REPOSITORY", "models", str, "folder holding <name>/<version>/model.onnx"),
    Setting("HOST", "127.0.0.1", str, "address to bind; 0.0.0.0 exposes the server to the network"),
    Setting("PORT", 8000, _number(int, 1, 65535), "TCP port to bind"),
    Setting("GRPC_PORT", 8001, _number(int, 0, 65535), "TCP port of the v2 gRPC service (tritonclient.grpc's), on HOST; 0 = off"),
    Setting("WORKERS", _box.default_workers(BOX), _number(int, 1, 64),
            "worker processes (default: one per CPU plus one, as many as the memory fits)"),
    Setting("THREADS", 4, _number(int, 1, 256), "requests each worker runs at once (its Python threads in the app)"),
    # Granian's backpressure: a connection holds one of these from accept to close, whatever it
    # sends, so slow clients are bounded by this and by the header timeout (docs/security.md).
    Setting("MAX_CONNECTIONS", 256, _number(int, 1, 65536),
            "connections each worker holds at once, idle and slow ones included; more wait in the listen queue"),
    Setting("HEADER_READ_TIMEOUT", 10.0, _number(float, 0.1, 3600),
            "seconds a connection has to send a request's headers (the whole head); then it is closed"),
    # All workers accept from one socket and a keep-alive connection stays with the worker that
    # accepted it: a burst of connects can pin most of them to one worker for good. Closing each
    # connection after about this many requests (nginx's keepalive_requests) lets clients reconnect
    # and the kernel hand them to whichever worker accepts first, the less busy one.
    Setting("KEEPALIVE_REQUESTS", 1000, _number(int, 0),
            "requests on one keep-alive connection, on average, before the server closes it (spreads connections over workers); 0 = no limit"),
    Setting("WORKER_MAX_RSS", 0, _number(int, 0),
            "MiB of resident memory a worker may reach before it is replaced (checked every 30 s, gracefully); 0 = never"),
    Setting("WORKER_LIFETIME", 0, _number(int, 0),
            "seconds after which a worker is replaced (gracefully; from 60); 0 = never"),
    Setting("PID_FILE", "", str, "write the main process's pid here (for kill -HUP / -TERM); empty = none"),
    Setting("MAX_CONTENT_LENGTH", 8 * 1024 * 1024, _number(int, 1), "largest request body in bytes (413 above)"),
    Setting("MAX_IMAGE_PIXELS", 25_000_000, _number(int, 1), "largest image, width x height, checked before decoding"),
    Setting("MAX_IMAGES_PER_REQUEST", 64, _number(int, 1), "most images in one /predict request"),
    Setting("MAX_REQUEST_PIXELS", 100_000_000, _number(int, 1),
            "most decoded pixels in one request, all its images together (413 above; JPEGs count at their reduced decoding size)"),
    Setting("REQUEST_CPU_SECONDS", 30.0, _number(float, 0, 3600),
            "CPU seconds one request's images may take to decode and preprocess, checked between images (413 past it); 0 = no limit"),
    Setting("MEMORY_BUDGET", 0, _number(int, 0),
            "bytes of large work (decoded images, big tensor bodies) each worker holds at once; 0 = its share of the box's memory"),
    Setting("LARGE_REQUESTS", 1, _number(int, 1, 256),
            "large requests (a big body, a decoded page) each worker serves at once; one more waits, others get 503"),
    Setting("MEMORY_WAIT_SECONDS", 5.0, _number(float, 0, 600),
            "how long a large request waits for its worker's memory budget before a 503 with Retry-After"),
    Setting("INFER_CHUNK_ROWS", CHUNK_ROWS, _number(int, 1),
            "most rows onnxruntime runs at once: larger batches (v2, or many images) run in chunks of this many rows"),
    Setting("ORT_THREADS", 1, _number(int, 0, 256), "onnxruntime intra-op threads per session"),
    Setting("API_TOKEN", "", str, "bearer token required on every endpoint but health; empty = none"),
    Setting("LOG_LEVEL", "info", _log_level, "debug, info, warning or error"),
    Setting("MODEL_POLL_SECONDS", 0.0, _number(float, 0), "rescan the repository this often for new, changed or removed versions; 0 = off"),
    # Triton's --strict-readiness, on by default as there: a model none of whose versions loads
    # makes the server not ready. Off, readiness ignores failed models (the index still lists them).
    Setting("STRICT_READINESS", True, _bool, "ready only when no model failed to load entirely; off: ready while any model serves"),
    Setting("MODEL_SYNC_DIR", "", str, "folder where workers tell each other of model loads; empty = a temporary one per server"),
    Setting("MODEL_SYNC_TIMEOUT", 30.0, _number(float, 0, 3600),
            "seconds a load or unload waits for every worker to apply it before answering 504 (they still will)"),
    # Off by default (docs/batching.md): on this 2-core machine a ResNet-18-sized model gained 1.02x
    # throughput and lost 1.2-1.3x on p99 in two quiet runs; the digit model gained nothing.
    Setting("MAX_BATCH_SIZE", 1, _number(int, 1), "dynamic batching: most rows in one run (a model's max_batch_size metadata wins); 1 = off"),
    # When on: no wait (requests that arrive during a run form the next batch), and only for models
    # slow enough that runs overlap arrivals (the digit model is not).
    Setting("MAX_BATCH_DELAY_US", 0, _number(int, 0, 10_000_000), "dynamic batching: longest wait for more requests, in microseconds"),
    Setting("BATCH_MIN_INFERENCE_MS", 5.0, _number(float, 0), "batch only models whose single run takes at least this long (unless their metadata says)"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return every setting, taking each from the environment when set there."""
    environ = os.environ if environ is None else environ
    values = {}
    for setting in SETTINGS:
        raw = environ.get(setting.name)
        try:
            values[setting.name] = setting.default if raw in (None, "") else setting.parse(raw)
        except ValueError as err:
            raise ConfigError(f"environment variable {setting.name}: {err}") from None
    return values


def batch_defaults(values: Mapping[str, Any]) -> tuple[int, int, float]:
    """(max batch size, max delay in µs, least single-run ms) for models whose file says nothing."""
    return values["MAX_BATCH_SIZE"], values["MAX_BATCH_DELAY_US"], values["BATCH_MIN_INFERENCE_MS"]


def memory_budget(values: Mapping[str, Any]) -> int:
    """Bytes of large work per worker: MEMORY_BUDGET, or the worker's share of the box when 0."""
    return values["MEMORY_BUDGET"] or _box.default_memory_budget(BOX, values["WORKERS"])


def describe_box(values: Mapping[str, Any]) -> str:
    """One line for the log at start: the box, and what the settings made of it."""
    return (f"box: {BOX.describe()}; {values['WORKERS']} workers x {values['THREADS']} threads, "
            f"{values['LARGE_REQUESTS']} large request(s) at once in {memory_budget(values) / 2**20:.0f} MiB per worker, "
            f"{values['MAX_REQUEST_PIXELS']} decoded pixels per request, onnxruntime runs of at most "
            f"{values['INFER_CHUNK_ROWS']} rows")
