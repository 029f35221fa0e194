"""`GET /openapi.json`: one OpenAPI 3.0 document merged from every blueprint module's `OPENAPI_PATHS`.

Each module that defines a blueprint also defines `OPENAPI_PATHS`, the path items of its own routes
(paths written the OpenAPI way, `/models/{name}/predict`); they may point at the shared
`#/components/...` below. A blueprint whose module has no `OPENAPI_PATHS` adds nothing.
"""
from __future__ import annotations

import copy
import sys

from flask import Blueprint, Flask, current_app, jsonify

from ..runtime.layout import MODEL_NAME, VERSION
from ..v2.protocol import SERVER_VERSION
from .errors import ERROR_ANSWERS
from .hooks import OPEN_PATHS

OPENAPI_VERSION = "3.0.3"
# The keys of a path item that are operations (others are `parameters`, `summary`...).
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

bp = Blueprint("openapi", __name__)


def error_responses(*codes: str) -> dict:
    """An operation's `responses` entries for these error statuses, pointing at the shared answers."""
    return {code: {"$ref": f"#/components/responses/{ERROR_ANSWERS[code][0]}"} for code in codes}


def parameter(name: str, where: str, pattern: str, description: str, required: bool = True) -> dict:
    """A string parameter in `where` (path or query) matching `pattern`."""
    return {"name": name, "in": where, "required": required, "description": description,
            "schema": {"type": "string", "pattern": pattern}}


MODEL_NAME_PARAMETER = parameter("name", "path", MODEL_NAME.pattern, "model name (a folder of the repository)")
MODEL_VERSION_PARAMETER = parameter("version", "path", VERSION.pattern, "model version (a numeric folder)")


def _error_response(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


COMPONENTS: dict = {
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "string",
                    "description": "what was received and what was expected",
                    "example": "unsupported Content-Type 'text/plain'; send multipart/form-data, an image or JSON",
                }
            },
        },
        "Prediction": {
            "type": "object",
            "required": ["label", "index", "confidence", "probabilities"],
            "properties": {
                "label": {"type": "string", "description": "the label of the most likely class", "example": "7"},
                "index": {"type": "integer", "minimum": 0, "description": "its class index", "example": 7},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1, "example": 0.998},
                "probabilities": {
                    "type": "array",
                    "items": {"type": "number", "minimum": 0, "maximum": 1},
                    "description": "one probability per class, in class-index order (labels from the model)",
                },
                "input": {
                    "type": "array",
                    "items": {"type": "array"},
                    "description": "only with return_input: the preprocessed image the model saw, H rows of W "
                    "floats for a one-channel model (28 x 28 for mnist, in [0, 1]), else [C][H][W] or [H][W][C] "
                    "as the model's input lays it out (the imagenet preset's values are normalised)",
                },
            },
        },
        "PredictResponse": {
            "type": "object",
            "required": ["model", "version", "predictions"],
            "properties": {
                "model": {"type": "string", "example": "mnist"},
                "version": {"type": "string", "example": "1"},
                "predictions": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/Prediction"},
                    "description": "one prediction per image, in the order the images were sent",
                },
            },
        },
    },
    "responses": {name: _error_response(description) for name, description in ERROR_ANSWERS.values()},
    "securitySchemes": {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "required on every endpoint but /v2/health/* and the drawing page when the server's API_TOKEN is set",
        }
    },
}


def collect_paths(app: Flask) -> dict:
    """Every blueprint module's `OPENAPI_PATHS`, merged and sorted by path."""
    paths: dict = {}
    for blueprint in app.blueprints.values():
        module = sys.modules[blueprint.import_name]
        for path, item in getattr(module, "OPENAPI_PATHS", {}).items():
            paths.setdefault(path, {}).update(copy.deepcopy(item))
    return dict(sorted(paths.items()))


def build_document(app: Flask) -> dict:
    """The whole OpenAPI document for `app`; bearer security is declared when API_TOKEN is set."""
    document = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "mnist-serve",
            "version": SERVER_VERSION,
            "description": "Handwritten-digit classification with ONNX models: an image API "
            "(POST /predict), the Open Inference Protocol v2 (/v2/...), metrics and a drawing page.",
        },
        "servers": [{"url": "/"}],
        "paths": collect_paths(app),
        "components": copy.deepcopy(COMPONENTS),
    }
    if app.config.get("API_TOKEN"):
        _require_token(document)
    return document


def _require_token(document: dict) -> None:
    """Declare the bearer token on every operation but the health probes, and its 401 answer."""
    document["security"] = [{"bearerAuth": []}]
    for path, item in document["paths"].items():
        for operation in (item[method] for method in HTTP_METHODS if method in item):
            if path in OPEN_PATHS:
                operation["security"] = []
            else:
                operation.setdefault("responses", {}).update(error_responses("401"))


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(build_document(current_app))


OPENAPI_PATHS: dict = {
    "/openapi.json": {
        "get": {
            "summary": "This OpenAPI 3 document, describing every endpoint",
            "tags": ["operations"],
            "responses": {
                "200": {
                    "description": "The OpenAPI document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
            },
        }
    }
}
