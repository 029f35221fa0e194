"""Thin Flask blueprints around the model repository."""
from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    """Attach every blueprint of the API to `app`."""
    from .. import openapi
    from . import health, images, model_repository, page, v2

    app.register_blueprint(health.bp)
    app.register_blueprint(images.bp)
    app.register_blueprint(model_repository.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(page.bp)
    app.register_blueprint(v2.bp)
