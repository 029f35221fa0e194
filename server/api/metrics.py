"""`GET /metrics` (server/api/hooks.py counts and times every request)."""
from __future__ import annotations

from flask import Blueprint, Response

from .. import metrics

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics_text() -> Response:
    """Every metric in Prometheus' text format, summed over all workers."""
    return Response(metrics.exposition(), content_type=metrics.CONTENT_TYPE)


OPENAPI_PATHS: dict = {
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics: requests, latency, inference time, batch size, load failures",
            "tags": ["operations"],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format 0.0.4",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
            },
        }
    }
}
