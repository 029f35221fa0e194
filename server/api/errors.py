"""Every error answered as `{"error": "..."}` JSON with its HTTP status; never a traceback.

The one place where errors meet HTTP: serving errors carry their status, werkzeug's keep theirs,
and `ERROR_ANSWERS` names each status's shared answer in the OpenAPI document.
"""
from __future__ import annotations

import logging
import re

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from ..errors import Overloaded, ServingError

log = logging.getLogger(__name__)

# Each error status: the name of its shared answer in the OpenAPI document, and what it means.
ERROR_ANSWERS: dict[str, tuple[str, str]] = {
    "400": ("BadRequest", "Malformed request: undecodable image, bad JSON, wrong pixel array"),
    "401": ("Unauthorized", "API_TOKEN is set and the bearer token is missing or wrong"),
    "404": ("NotFound", "Unknown model or version"),
    "413": ("PayloadTooLarge",
            "Body over MAX_CONTENT_LENGTH, image over MAX_IMAGE_PIXELS, more images than MAX_IMAGES_PER_REQUEST, "
            "more decoded pixels than MAX_REQUEST_PIXELS, more CPU time than REQUEST_CPU_SECONDS for its images, "
            "or more memory than a worker's MEMORY_BUDGET"),
    "415": ("UnsupportedMediaType", "Content-Type (or data: URL type) not accepted"),
    "422": ("Unprocessable", "The image decoded but holds no digit (blank)"),
    "503": ("NotReady", "The model is in the repository but failed to load, or the worker is busy with "
            "large requests (then with Retry-After)"),
    "504": ("NotEveryWorker", "A load or unload done in the worker that answered, which the other workers "
            "did not apply within MODEL_SYNC_TIMEOUT (they still will)"),
}


# The image routes, whose 405 says how to call them: a browser's GET is the usual first try.
IMAGE_ROUTE = re.compile(r"/(?:models/[^/]+/)?predict")


def register_error_handlers(app: Flask) -> None:
    """Answer every error of `app` as JSON with the right status."""
    app.register_error_handler(ServingError, _serving_error)
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    app.register_error_handler(MethodNotAllowed, _wrong_method)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def _serving_error(err: ServingError):
    response = jsonify(error=err.message)
    if isinstance(err, Overloaded):  # when to come back, as RFC 9110 lets a 503 say
        response.headers["Retry-After"] = str(err.retry_after)
    return response, err.status


def _too_large(err: RequestEntityTooLarge):
    limit, size = request.max_content_length, request.content_length
    if limit is not None and size is not None and size > limit:
        return jsonify(error=f"received a body of {size} bytes; the limit is {limit} bytes (MAX_CONTENT_LENGTH)"), 413
    return jsonify(error=f"request too large: {err.description} (body limit {limit} bytes, MAX_CONTENT_LENGTH)"), 413


def _wrong_method(err: MethodNotAllowed):
    allowed = [method for method in err.valid_methods or () if method not in ("HEAD", "OPTIONS")]
    message = f"{err.name}: {request.method} {request.path:.100} is not allowed; it takes {', '.join(allowed) or 'no method'}"
    if "POST" in allowed and IMAGE_ROUTE.fullmatch(request.path):
        message += (f". POST an image to it, e.g. curl -F image=@digit.png {request.host_url}{request.path[1:]}; "
                    "in a browser, draw a digit at / or try the API at /docs")
    return _http_error(err, message)


def _http_error(err: HTTPException, message: str | None = None):
    response = jsonify(error=message or f"{err.name}: {err.description}")
    # Keep werkzeug's own headers (Allow on a 405, as RFC 9110 requires) but not its HTML type.
    response.headers.extend((k, v) for k, v in err.get_headers() if k.lower() != "content-type")
    return response, err.code


def _unexpected(err: Exception):
    request_id = g.get("request_id", "-")
    log.exception("unexpected error, request id %s", request_id)
    return jsonify(error=f"internal server error (request id {request_id})"), 500
