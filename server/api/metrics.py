"""`GET /metrics`, and the hook that counts and times every request."""
from __future__ import annotations

import time

from flask import Blueprint, Response, g, request

from .. import metrics

bp = Blueprint("metrics", __name__)


def count_request(response):
    """after_request hook: count the request by its route (the URL rule) and time it."""
    started = g.get("started")
    route = request.url_rule.rule if request.url_rule is not None else None
    seconds = time.perf_counter() - started if started is not None else None
    metrics.observe_request(route, request.method, response.status_code, seconds)
    return response


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
