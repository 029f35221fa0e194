"""Slim Flask + onnxruntime model server. It never imports torch, `training` or `export`."""
from .app import create_app

__all__ = ["create_app"]
