"""The application factory: all the wiring of the server in one place."""
from __future__ import annotations

from typing import Any, Mapping

from flask import Flask

from . import config as settings
from . import metrics
from .api import api_page, context, errors, health, hooks, images, model_repository, openapi, page, v2
from .api import metrics as metrics_api
from .budget import MemoryBudget
from .model_sync import ModelSync
from .protocol import InferLimits
from .registry import ModelRegistry


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from environment settings, overridden by `config`; load every model."""
    app = Flask(__name__)
    app.config.from_mapping(settings.from_environment())
    if config:
        app.config.from_mapping(config)
    app.json.sort_keys = False

    # The models: every version in the repository, loaded now; metrics hear of runs and failures.
    registry = ModelRegistry(
        app.config["MODEL_REPOSITORY"], ort_threads=app.config["ORT_THREADS"],
        batch_defaults=settings.batch_defaults(app.config),
        on_run=metrics.observe_inference, on_load_failure=metrics.count_load_failure,
        strict_readiness=app.config["STRICT_READINESS"],
    )
    registry.load_all()
    # Other workers' loads and unloads, and the optional poll of the repository.
    sync = ModelSync(registry, app.config["MODEL_SYNC_DIR"], app.config["MODEL_POLL_SECONDS"], app.config["MODEL_SYNC_TIMEOUT"])
    context.init_app(app, registry, sync)
    # Large work (decoded images, big tensor bodies) holds this worker's share of the box's memory.
    app.extensions["memory_budget"] = MemoryBudget(
        settings.memory_budget(app.config), app.config["MEMORY_WAIT_SECONDS"], app.config["LARGE_REQUESTS"])
    # v2 inference's limits, read from the settings here rather than key by key in each request.
    app.extensions["infer_limits"] = InferLimits.from_settings(app.config, app.extensions["memory_budget"])

    errors.register_error_handlers(app)
    app.before_request(hooks.start_request)
    app.after_request(hooks.finish_request)  # counted, timed and logged in one hook

    for blueprint in (health.bp, images.bp, model_repository.bp, openapi.bp, page.bp, api_page.bp, v2.bp, metrics_api.bp):
        app.register_blueprint(blueprint)

    sync.start()
    return app


def start_grpc(app: Flask) -> Any:
    """The v2 gRPC service over `app`'s models, in this process: a worker, after the fork
    (server/lifecycle.py's load_worker). Returns the running grpc.Server, or None when GRPC_PORT is 0."""
    if not app.config["GRPC_PORT"]:
        return None
    from .grpc import server  # here, not at the top: only a process that serves gRPC loads it

    return server.start(app.extensions["registry"], app.extensions["model_sync"], app.extensions["memory_budget"], app.config)
