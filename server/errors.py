"""The serving errors, named after what went wrong; each carries the HTTP status it answers with.

Plain Python: the core raises them with no web framework in sight, and `server/api/errors.py`
turns any of them into a JSON answer (and gRPC would map the same statuses to its codes).
"""
from __future__ import annotations


class ServingError(Exception):
    """A client-facing error: the message says what was received and what was expected."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidInput(ServingError):
    """The request's content cannot be used: bad JSON, an undecodable image, a wrong tensor."""

    status = 400


class Unauthorized(ServingError):
    """API_TOKEN is set and the bearer token is missing or wrong."""

    status = 401


class AdminRefused(ServingError):
    """Model load/unload asked of a server reachable from the network with no API_TOKEN set."""

    status = 403


class ModelNotFound(ServingError):
    """No such model or version in the repository."""

    status = 404


class TooLarge(ServingError):
    """More than a limit allows: bytes, pixels, images per request."""

    status = 413


class UnsupportedFormat(ServingError):
    """A content type, encoding or image format the server does not read."""

    status = 415


class NoDigitFound(ServingError):
    """The image decoded but holds nothing to classify."""

    status = 422


class ModelNotReady(ServingError):
    """The model is in the repository but is not serving (it failed to load, or was unloaded)."""

    status = 503


class Overloaded(ServingError):
    """The worker has no room for this request now (memory for large work is taken): retry later."""

    status = 503

    def __init__(self, message: str, status: int | None = None, retry_after: int = 1) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class NotEveryWorker(ServingError):
    """A load or unload done in this worker that the other workers did not apply within MODEL_SYNC_TIMEOUT."""

    status = 504
