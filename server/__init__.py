"""Slim Flask + onnxruntime model server. It never imports torch, `training` or `export`."""
from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazily, so that the main process (server/lifecycle.py, which reads server.config) never loads
    # the app or onnxruntime: workers are forked from it and build the app themselves.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
