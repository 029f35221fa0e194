"""The Open Inference Protocol (v2, KServe/Triton REST) over HTTP: metadata, readiness and inference.

Thin routes around `server/v2/protocol.py`: they read JSON or Triton's binary tensor data extension
(`server/v2/tensors.py`), so `tritonclient.http` works unchanged, and answer the same way.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request

from .. import metrics
from ..v2 import inference, protocol, tensors
from ..limits.budget import tensor_body_bytes
from ..runtime.model_config import ONNX_PLATFORM as PLATFORM, config_json
from .context import get_infer_limits, get_registry
from .openapi import MODEL_NAME_PARAMETER, MODEL_VERSION_PARAMETER, error_responses

bp = Blueprint("v2", __name__)

REPOSITORY_INDEX_RULE = "/v2/repository/index"


@bp.get("/v2")
def server_metadata():
    repository = any(rule.rule == REPOSITORY_INDEX_RULE for rule in current_app.url_map.iter_rules())
    return jsonify(protocol.server_metadata(repository_extension=repository))


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    return jsonify(protocol.model_metadata(get_registry(), name, version))


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    ready = protocol.model_ready(get_registry(), name, version)
    return jsonify(name=name, ready=ready), (200 if ready else 503)


@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    model = get_registry().get(name, version)
    limits = get_infer_limits()
    headers = request.headers
    encoding = headers.get("Content-Encoding")
    # A compressed body may inflate to the limit: its cost is counted at that size.
    compressed = encoding is not None and encoding.strip().lower() != "identity"
    size = limits.max_body_bytes if compressed else (request.content_length or 0)
    raw = request.get_data(cache=False)  # read before any wait: a 503 must not leave the upload unread
    header_length = tensors.parse_header_length(headers.get("Inference-Header-Content-Length"))

    def read() -> protocol.InferRequest:
        body = tensors.decompress(raw, encoding, limits.max_body_bytes)
        return protocol.InferRequest(*tensors.split_body(body, header_length))

    def encode(answer: protocol.InferResponse) -> tuple[bytes, int | None]:
        header = {"model_name": answer.model_name, "model_version": answer.model_version}
        if answer.id is not None:
            header["id"] = answer.id
        return tensors.encode_outputs(header, answer.outputs)

    return _response(*inference.infer(model, limits, tensor_body_bytes(size, header_length), read, encode,
                                      g.get("request_id", "-")))


@bp.get("/v2/models/stats")
@bp.get("/v2/models/<name>/stats")
@bp.get("/v2/models/<name>/versions/<version>/stats")
def model_statistics(name: str = "", version: str | None = None):
    """Triton's statistics extension: the same numbers whichever worker answers."""
    return jsonify(model_stats=metrics.model_statistics(protocol.statistics_versions(get_registry(), name, version)))


@bp.get("/v2/models/<name>/config")
@bp.get("/v2/models/<name>/versions/<version>/config")
def model_config(name: str, version: str | None = None):
    """Triton's model configuration extension: the configuration served, as Triton's JSON."""
    return jsonify(config_json(protocol.model_config(get_registry(), name, version)))


def _response(payload: bytes, header_length: int | None) -> Response:
    """JSON, or a JSON header and binary outputs; compressed when the client accepts it, as Triton does."""
    # Parsing Accept-Encoding costs more than the rest of this function: only when a client sends it.
    encoding = request.accept_encodings.best_match(["gzip", "deflate"]) if "HTTP_ACCEPT_ENCODING" in request.environ else None
    response = Response(
        tensors.compress(payload, encoding),
        content_type="application/json" if header_length is None else "application/octet-stream",
        headers={"Vary": "Accept-Encoding"},
    )
    if encoding:
        response.headers["Content-Encoding"] = encoding
    if header_length is not None:  # the JSON's length before compression, as tritonclient reads it
        response.headers["Inference-Header-Content-Length"] = str(header_length)
    return response


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


TENSOR_META = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "example": "FP32"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}, "description": "-1: any size"},
    },
}
TENSOR_DATA = {"type": "array", "items": {}, "description": "row-major values, flat or nested"}
PARAMETERS = {"type": "object", "additionalProperties": True}
INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string", "description": "echoed in the response"},
        "parameters": {**PARAMETERS, "description": "binary_data_output (bool): every output in binary"},
        "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                **TENSOR_META["properties"],
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "parameters": {**PARAMETERS, "description": "binary_data_size (int): bytes of this input after the JSON"},
                "data": TENSOR_DATA,
            },
        }},
        "outputs": {"type": "array", "items": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "parameters": {**PARAMETERS, "description": "binary_data (bool), classification (int: top k)"},
            },
        }},
    },
}
INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {**TENSOR_META["properties"], "data": TENSOR_DATA, "parameters": PARAMETERS},
        }},
    },
}
MODEL_METADATA = {
    "type": "object",
    "required": ["name", "versions", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string", "example": PLATFORM},
        "inputs": {"type": "array", "items": TENSOR_META},
        "outputs": {"type": "array", "items": TENSOR_META},
    },
}
DURATION = {"type": "object", "required": ["count", "ns"],
            "properties": {"count": {"type": "integer"}, "ns": {"type": "integer", "description": "total nanoseconds"}}}
MODEL_STATISTICS = {
    "type": "object",
    "required": ["model_stats"],
    "properties": {"model_stats": {"type": "array", "items": {
        "type": "object",
        "required": ["name", "version", "last_inference", "inference_count", "execution_count", "inference_stats"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "last_inference": {"type": "integer", "description": "milliseconds since the epoch, 0 before the first"},
            "inference_count": {"type": "integer", "description": "rows of successful requests (1 per request when the model does not batch)"},
            "execution_count": {"type": "integer", "description": "onnxruntime runs (a dynamic batch is one)"},
            "inference_stats": {"type": "object", "properties": {
                phase: DURATION for phase in ("success", "fail", "queue", "compute_input", "compute_infer",
                                              "compute_output", "cache_hit", "cache_miss")}},
            "batch_stats": {"type": "array", "items": {"type": "object"}, "description": "always empty here"},
            "memory_usage": {"type": "array", "items": {"type": "object"}},
            "response_stats": {"type": "object"},
        },
    }}},
}
MODEL_CONFIG = {
    "type": "object",
    "required": ["name", "platform", "backend", "max_batch_size", "input", "output"],
    "description": "Triton's inference.ModelConfig (model_config.proto) in JSON: field names as in the .proto, "
                   "every field shown, enums by name",
    "additionalProperties": True,
    "properties": {
        "name": {"type": "string"},
        "platform": {"type": "string", "example": PLATFORM},
        "backend": {"type": "string", "example": "onnxruntime"},
        "max_batch_size": {"type": "integer"},
        "input": {"type": "array", "items": {"type": "object"}},
        "output": {"type": "array", "items": {"type": "object"}},
        "parameters": {"type": "object"},
    },
}
MODEL_READY = {"type": "object", "required": ["name", "ready"],
               "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}}


def _model_paths(suffix: str, method: str, operation: dict) -> dict:
    """One operation at /v2/models/{name}<suffix> and at /v2/models/{name}/versions/{version}<suffix>."""
    pinned = {**operation, "summary": operation["summary"].replace("(highest version)", "(one version)")}
    return {
        f"/v2/models/{{name}}{suffix}": {"parameters": [MODEL_NAME_PARAMETER], method: operation},
        f"/v2/models/{{name}}/versions/{{version}}{suffix}": {"parameters": [MODEL_NAME_PARAMETER, MODEL_VERSION_PARAMETER], method: pinned},
    }


def _openapi_paths() -> dict:
    metadata = _model_paths("", "get", {
        "summary": "Model metadata (highest version): platform, versions, inputs and outputs",
        "tags": ["v2"],
        "responses": {"200": _json(MODEL_METADATA, "Model metadata"), **error_responses("401", "404", "503")},
    })
    ready = _model_paths("/ready", "get", {
        "summary": "Whether the model (highest version) is ready: 200 when it is, 503 when it failed to load",
        "tags": ["v2"],
        "responses": {"200": _json(MODEL_READY, "Ready"), "503": _json(MODEL_READY, "Not ready"),
                      **error_responses("401", "404")},
    })
    infer = _model_paths("/infer", "post", {
        "summary": "Inference (highest version), JSON tensors or the binary tensor data extension",
        "description": "The body is read whatever its Content-Type. With Inference-Header-Content-Length, "
        "the first that many bytes are the JSON request and each input with parameters.binary_data_size "
        "has its raw little-endian bytes after it, in input order. Outputs asked in binary come back the "
        "same way, with Inference-Header-Content-Length and Content-Type application/octet-stream.",
        "tags": ["v2"],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": INFER_REQUEST},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        }},
        "responses": {
            "200": {"description": "Outputs in JSON, or a JSON header followed by binary outputs", "content": {
                "application/json": {"schema": INFER_RESPONSE},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }},
            **error_responses("400", "401", "404", "413", "415", "503"),
        },
    })
    stats = _model_paths("/stats", "get", {
        "summary": "Inference statistics of the model's loaded versions (or of one), Triton's statistics "
                   "extension, summed over all workers",
        "tags": ["v2"],
        "responses": {"200": _json(MODEL_STATISTICS, "Statistics"), **error_responses("401", "404", "503")},
    })
    every_model_stats = {"/v2/models/stats": {"get": {
        "summary": "Inference statistics of every loaded model version (Triton's statistics extension)",
        "tags": ["v2"],
        "responses": {"200": _json(MODEL_STATISTICS, "Statistics"), **error_responses("401")},
    }}}
    config = _model_paths("/config", "get", {
        "summary": "Model configuration (highest version), Triton's model configuration extension: config.pbtxt "
                   "as written, completed from the graph",
        "tags": ["v2"],
        "responses": {"200": _json(MODEL_CONFIG, "Triton's ModelConfig in JSON"), **error_responses("401", "404", "503")},
    })
    server = {"/v2": {"get": {
        "summary": "Server metadata: name, version and the protocol extensions served",
        "tags": ["v2"],
        "responses": {"200": _json({"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        }}, "Server metadata"), **error_responses("401")},
    }}}
    return {**server, **metadata, **ready, **infer, **every_model_stats, **stats, **config}


OPENAPI_PATHS: dict = _openapi_paths()
