"""Triton's model repository extension: list, load and unload model versions while serving.

Load and unload change what the server runs, so without API_TOKEN they answer only on a server
that listens on loopback and to a connection that came in on loopback, not through a proxy.
"""
from __future__ import annotations

import json

from flask import Blueprint, current_app, jsonify, request

from .. import access
from ..runtime import model_control
from ..errors import InvalidInput
from .context import get_model_sync, get_registry
from .openapi import MODEL_NAME_PARAMETER, error_responses

bp = Blueprint("model_repository", __name__)


@bp.post("/v2/repository/index")
def repository_index():
    return jsonify(model_control.index(get_registry(), _json_body().get("ready", False)))


@bp.post("/v2/repository/models/<name>/load")
def load_model(name: str):
    _require_admin()
    serving = model_control.load(get_registry(), get_model_sync(), name, _parameters())
    return jsonify(name=name, versions=serving, default_version=serving[-1])


@bp.post("/v2/repository/models/<name>/unload")
def unload_model(name: str):
    _require_admin()
    model_control.unload(get_registry(), get_model_sync(), name, _parameters())
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
    # Granian's environ names the bound address, not where this connection arrived; the peer's
    # tells as much: a loopback peer can only have reached a loopback socket.
    local_address = request.remote_addr or "localhost"
    proxied = [header for header in access.PROXY_HEADERS if header in request.headers]
    config = current_app.config
    access.require_admin(config["API_TOKEN"], config["HOST"], local_address, proxied)


def _operation(summary: str, body: dict, response: dict, admin: bool) -> dict:
    responses = {"200": {"description": "Done", "content": {"application/json": {"schema": response}}}}
    responses.update(error_responses("400", "401", "404"))
    if admin:
        responses.update(error_responses("504"))
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
        "Load new or changed versions of a model, warm them up, then switch to them in every worker; "
        "answers once every worker serves them",
        _PARAMETERS, _LOADED, admin=True,
    )},
    "/v2/repository/models/{name}/unload": {"parameters": [MODEL_NAME_PARAMETER], "post": _operation(
        "Stop serving every version of a model, in every worker; answers once every worker has stopped",
        _PARAMETERS, _LOADED, admin=True,
    )},
}
