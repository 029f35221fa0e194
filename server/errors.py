"""Error classes that carry an HTTP status, and the one JSON handler that answers them."""
from __future__ import annotations

import logging

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A client-facing error: `status` is the HTTP status, the message says what was wrong."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class Unprocessable(ApiError):
    status = 422


class NotReady(ApiError):
    status = 503


def register_error_handlers(app: Flask) -> None:
    """Answer every error as `{"error": "..."}` JSON; never leak a traceback."""

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return jsonify(error=err.message), err.status

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(err: RequestEntityTooLarge):
        limit, size = request.max_content_length, request.content_length
        if limit is not None and size is not None and size > limit:
            return jsonify(error=f"received a body of {size} bytes; the limit is {limit} bytes (MAX_CONTENT_LENGTH)"), 413
        return jsonify(error=f"request too large: {err.description} (body limit {limit} bytes, MAX_CONTENT_LENGTH)"), 413

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        response = jsonify(error=f"{err.name}: {err.description}")
        # Keep werkzeug's own headers (Allow on a 405, as RFC 9110 requires) but not its HTML type.
        response.headers.extend((k, v) for k, v in err.get_headers() if k.lower() != "content-type")
        return response, err.code

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        request_id = g.get("request_id", "-")
        log.exception("unexpected error, request id %s", request_id)
        return jsonify(error=f"internal server error (request id {request_id})"), 500
