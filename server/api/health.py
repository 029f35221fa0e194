"""Liveness and readiness, as the Open Inference Protocol (v2) defines them."""
from __future__ import annotations

from flask import Blueprint, jsonify

from .context import get_registry

bp = Blueprint("health", __name__)


@bp.get("/v2/health/live")
def live():
    return jsonify(live=True)


@bp.get("/v2/health/ready")
def ready():
    ready = get_registry().ready
    return jsonify(ready=ready), (200 if ready else 503)


def _health_operation(summary: str, key: str, codes: dict[str, str]) -> dict:
    schema = {"type": "object", "required": [key], "properties": {key: {"type": "boolean"}}}
    return {
        "get": {
            "summary": summary,
            "tags": ["health"],
            "responses": {
                code: {"description": text, "content": {"application/json": {"schema": schema}}}
                for code, text in codes.items()
            },
        }
    }


OPENAPI_PATHS: dict = {
    "/v2/health/live": _health_operation(
        "Liveness: the server process answers (never needs the token)", "live", {"200": "Alive"}
    ),
    "/v2/health/ready": _health_operation(
        "Readiness: at least one model serves and, with STRICT_READINESS on (the default), no model "
        "failed to load entirely (never needs the token)",
        "ready", {"200": "Ready", "503": "Not ready: no model serves, or (strict) one failed to load"},
    ),
}
