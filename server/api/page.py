"""The drawing page (`GET /`) and the list of image classifiers it offers (`GET /models`)."""
from __future__ import annotations

from flask import Blueprint, jsonify, render_template

from ..image import classifier
from ..errors import ModelNotFound
from ..runtime.model import OnnxModel
from .context import get_registry

bp = Blueprint("page", __name__)

# The page loads its script and style from this server only; the policy makes the browser refuse
# anything else, so the page works offline and a stray external URL shows up as an error in tests.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@bp.get("/")
def index():
    html = render_template("index.html")
    return html, 200, {"Content-Security-Policy": CONTENT_SECURITY_POLICY}


@bp.get("/models")
def image_classifiers():
    """Every model `POST /predict` can feed, and which one it uses when none is named."""
    registry = get_registry()
    # One snapshot: loading and unloading replace the dict, never edit it.
    listed = [describe(model, versions) for model, versions in classifier.image_classifiers(registry.models)]
    try:
        default = classifier.default_model_name(registry)
    except ModelNotFound:  # several classifiers and no `mnist`: the page must name one
        default = None
    return jsonify(models=listed, default=default)


def describe(model: OnnxModel, versions: list[str]) -> dict:
    """What the page needs to know about one classifier: names, labels and preprocessing."""
    return {
        "name": model.name,
        "version": model.version,
        "versions": versions,
        "labels": model.labels,
        "preprocessing": model.preprocessing,
    }


_MODEL_SCHEMA = {
    "type": "object",
    "required": ["name", "version", "versions", "labels", "preprocessing"],
    "properties": {
        "name": {"type": "string", "example": "mnist"},
        "version": {"type": "string", "description": "the version served by default (the highest)"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "labels": {"type": "array", "items": {"type": "string"}, "nullable": True},
        "preprocessing": {"type": "string", "example": "mnist-digit"},
    },
}

OPENAPI_PATHS: dict = {
    "/": {
        "get": {
            "summary": "The drawing page: draw or upload a digit and see the prediction",
            "tags": ["page"],
            "responses": {
                "200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
            },
        }
    },
    "/models": {
        "get": {
            "summary": "List the image classifiers: the models POST /predict and /models/{name}/predict can feed",
            "tags": ["page"],
            "responses": {
                "200": {
                    "description": "The image classifiers, by name",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["models", "default"],
                                "properties": {
                                    "models": {"type": "array", "items": _MODEL_SCHEMA},
                                    "default": {
                                        "type": "string",
                                        "nullable": True,
                                        "description": "the model POST /predict uses; null when it needs a name",
                                    },
                                },
                            }
                        }
                    },
                }
            },
        }
    },
}
