"""Triton's model repository extension: list, load and unload model versions while serving.

Load and unload change what the server runs, so without API_TOKEN they answer only on a server
that listens on loopback and to a connection that came in on loopback, not through a proxy.
"""
from __future__ import annotations

import ipaddress
import json

from flask import Blueprint, current_app, jsonify, request

from ..errors import AdminRefused, InvalidInput
from .context import get_model_sync, get_registry
from .openapi import MODEL_NAME_PARAMETER, error_responses

bp = Blueprint("model_repository", __name__)

# Headers a reverse proxy adds: a request carrying one did not come from this machine's own user.
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-Ip")


@bp.post("/v2/repository/index")
def repository_index():
    ready = _json_body().get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput(f"'ready' must be true or false, received {ready!r}")
    return jsonify(get_registry().index(ready_only=ready))


@bp.post("/v2/repository/models/<name>/load")
def load_model(name: str):
    _require_admin()
    parameters = _parameters()
    if parameters:
        raise InvalidInput(
            f"load parameters {sorted(parameters)} are not supported: put the file at "
            f"<repository>/{name}/<version>/model.onnx and send an empty body or {{}}"
        )
    registry = get_registry()
    failures = registry.load_model(name)
    get_model_sync().announce(name, "load")
    serving = sorted(registry.models.get(name, {}), key=int)
    if failures:
        rejected = "; ".join(f"version {f.version}: {f.reason}" for f in failures)
        raise InvalidInput(f"failed to load model {name!r} ({rejected}); serving versions: {', '.join(serving) or 'none'}")
    return jsonify(name=name, versions=serving, default_version=serving[-1])


@bp.post("/v2/repository/models/<name>/unload")
def unload_model(name: str):
    _require_admin()
    parameters = _parameters()
    unsupported = sorted(set(parameters) - {"unload_dependents"})
    if unsupported:
        raise InvalidInput(f"unload parameters {unsupported} are not supported; only unload_dependents is")
    get_registry().unload_model(name)
    get_model_sync().announce(name, "unload")
    return jsonify(name=name, versions=[])


def _json_body() -> dict:
    """The optional JSON object body (tritonclient sends none, or JSON with no Content-Type)."""
    raw = request.get_data(cache=False)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise InvalidInput(f"the body is not JSON ({err}); send a JSON object or nothing") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"expected a JSON object, received {type(body).__name__}")
    return body


def _parameters() -> dict:
    """The body's optional `parameters` object (Triton's shape: names to values)."""
    parameters = _json_body().get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"'parameters' must be a JSON object, received {type(parameters).__name__}")
    return parameters


def _require_admin() -> None:
    """Refuse load/unload when anyone on the network could send them: no token and not loopback."""
    config = current_app.config
    if config["API_TOKEN"]:
        return  # the app already checked the bearer token
    socket = request.environ.get("gunicorn.socket")  # absent under Flask's test client
    local = socket.getsockname() if socket is not None else ("127.0.0.1",)
    local_address = local[0] if isinstance(local, tuple) else "localhost"  # a str: a unix socket
    proxied = [header for header in PROXY_HEADERS if header in request.headers]
    if _is_loopback(config["HOST"]) and _is_loopback(local_address) and not proxied:
        return
    raise AdminRefused(
        f"model load/unload refused: no API_TOKEN is set and the server listens on HOST={config['HOST']}"
        + (f" behind a proxy ({', '.join(proxied)})" if proxied else "")
        + "; set API_TOKEN to manage models over the network, or use MODEL_POLL_SECONDS"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _operation(summary: str, body: dict, response: dict, admin: bool) -> dict:
    responses = {"200": {"description": "Done", "content": {"application/json": {"schema": response}}}}
    responses.update(error_responses("400", "401", "404"))
    if admin:
        responses["403"] = {
            "description": "No API_TOKEN is set and the server is reachable beyond loopback",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return {
        "summary": summary,
        "tags": ["model repository"],
        "requestBody": {"required": False, "content": {"application/json": {"schema": body}}},
        "responses": responses,
    }


_LOADED = {"type": "object", "required": ["name", "versions"], "properties": {
    "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
    "default_version": {"type": "string"}}}
_PARAMETERS = {"type": "object", "properties": {"parameters": {"type": "object"}}}

OPENAPI_PATHS: dict = {
    "/v2/repository/index": {"post": _operation(
        "Every model version on disk or served: name, version, state (READY/UNAVAILABLE), reason",
        {"type": "object", "properties": {"ready": {"type": "boolean", "description": "only READY ones"}}},
        {"type": "array", "items": {"type": "object", "required": ["name", "version", "state", "reason"],
                                    "properties": {k: {"type": "string"} for k in ("name", "version", "state", "reason")}}},
        admin=False,
    )},
    "/v2/repository/models/{name}/load": {"parameters": [MODEL_NAME_PARAMETER], "post": _operation(
        "Load new or changed versions of a model, warm them up, then switch to them in every worker",
        _PARAMETERS, _LOADED, admin=True,
    )},
    "/v2/repository/models/{name}/unload": {"parameters": [MODEL_NAME_PARAMETER], "post": _operation(
        "Stop serving every version of a model, in every worker", _PARAMETERS, _LOADED, admin=True,
    )},
}
