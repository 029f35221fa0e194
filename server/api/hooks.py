"""What every request goes through: its request id, the bearer token check, its count and time in the metrics, and its log line."""
from __future__ import annotations

import logging
import re
import time

from flask import current_app, g, request

from .. import metrics
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
    started = time.perf_counter()
    req, context = request._get_current_object(), g._get_current_object()  # one proxy lookup each
    context.request_id = request_id(req.headers.get("X-Request-Id"))
    context.started = started
    path = req.path
    if path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
        check_token(current_app.config["API_TOKEN"], req.headers.get("Authorization"))


def finish_request(response):
    """after_request: count and time the request by its route (the URL rule), send its id in the
    X-Request-Id header, and log its one line."""
    req, context = request._get_current_object(), g._get_current_object()
    started = context.get("started")
    seconds = time.perf_counter() - started if started is not None else None
    rule = req.url_rule
    status = response.status_code
    metrics.observe_request(rule.rule if rule is not None else None, req.method, status, seconds)
    the_id = context.get("request_id", "-")
    response.headers["X-Request-Id"] = the_id
    log.info("%s %s %s %.1fms id=%s", req.method, printable(req.path), status, (seconds or 0.0) * 1000, the_id)
    return response


def printable(text: str) -> str:
    """`text` with control characters escaped (\\n, \\x1b...), safe to put on one log line."""
    return UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
