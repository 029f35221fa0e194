"""What every request goes through: its request id, the bearer token check, and its log line."""
from __future__ import annotations

import logging
import re
import time

from flask import current_app, g, request

from ..access import check_token, request_id

log = logging.getLogger(__name__)

# Endpoints that answer without a token: health, so load balancers and orchestrators can probe
# it, and the drawing page's own files, which hold no data (a browser cannot send a bearer token
# when it opens a page; the page asks for the token and sends it with its API calls).
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/", "/docs", "/docs/")
OPEN_PREFIXES = ("/static/", "/docs/swagger-ui/")
# The path is logged percent-decoded: a %0A in the URL must not start a new, forged log line.
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def start_request() -> None:
    """before_request: give the request an id, start its clock, check the token when one is set."""
    g.request_id = request_id(request.headers.get("X-Request-Id"))
    g.started = time.perf_counter()
    if request.path not in OPEN_PATHS and not request.path.startswith(OPEN_PREFIXES):
        check_token(current_app.config["API_TOKEN"], request.headers.get("Authorization"))


def log_request(response):
    """after_request: one log line per request, and its id in the X-Request-Id header."""
    elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    response.headers["X-Request-Id"] = g.get("request_id", "-")
    log.info(
        "%s %s %s %.1fms id=%s", request.method, printable(request.path), response.status_code, elapsed_ms,
        g.get("request_id", "-"),
    )
    return response


def printable(text: str) -> str:
    """`text` with control characters escaped (\\n, \\x1b...), safe to put on one log line."""
    return UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
