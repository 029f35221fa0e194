"""The app's model registry and model sync, as a Flask extension: `init_app` keeps them, routes ask.

As `db.py` in Flask's tutorial: the routes call `get_registry()` (and the repository routes
`get_model_sync()`) rather than importing the app that made them.
"""
from __future__ import annotations

from flask import Flask, current_app

from ..budget import MemoryBudget
from ..protocol import InferLimits
from ..model_sync import ModelSync
from ..registry import ModelRegistry


def init_app(app: Flask, registry: ModelRegistry, sync: ModelSync) -> None:
    """Keep `registry` and `sync` on `app` for its requests."""
    app.extensions["registry"] = registry
    app.extensions["model_sync"] = sync


def get_registry() -> ModelRegistry:
    """The model registry of the app handling the current request."""
    return current_app.extensions["registry"]


def get_model_sync() -> ModelSync:
    """The model sync of the app handling the current request (it tells other workers of loads)."""
    return current_app.extensions["model_sync"]


def get_memory_budget() -> MemoryBudget:
    """This worker's memory budget for large work (created once per worker by `create_app`)."""
    return current_app.extensions["memory_budget"]


def get_infer_limits() -> InferLimits:
    """This worker's limits for an inference request (made once per worker by `create_app`)."""
    return current_app.extensions["infer_limits"]
