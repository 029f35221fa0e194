"""Liveness and readiness, as the Open Inference Protocol (v2) defines them."""
from __future__ import annotations

from flask import Blueprint, jsonify

from ..app import get_repository

bp = Blueprint("health", __name__)


@bp.get("/v2/health/live")
def live():
    return jsonify(live=True)


@bp.get("/v2/health/ready")
def ready():
    ready = get_repository().ready
    return jsonify(ready=ready), (200 if ready else 503)
