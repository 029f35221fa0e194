"""The Open Inference Protocol (v2, KServe/Triton REST): metadata, readiness and inference.

Works for any ONNX model in the repository: inputs, outputs, datatypes and shapes come from the
graph. Speaks Triton's binary tensor data extension, so `tritonclient.http` works unchanged.
"""
from __future__ import annotations

import logging

import numpy as np
from flask import Blueprint, Response, current_app, g, jsonify, request
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from .. import tensors
from ..app import get_repository
from ..errors import BadRequest, NotReady
from ..model import OnnxModel
from ..openapi import API_VERSION, MODEL_NAME_PARAMETER, MODEL_VERSION_PARAMETER, error_responses

log = logging.getLogger(__name__)
bp = Blueprint("v2", __name__)

SERVER_NAME = "mnist-serve"
PLATFORM = "onnxruntime_onnx"
# Extensions as Triton names them; `model_repository` is listed once its routes are registered.
EXTENSIONS = ("binary_tensor_data", "classification")
REPOSITORY_INDEX_RULE = "/v2/repository/index"
# onnxruntime's own errors for inputs it refuses at run time (they are not RuntimeError subclasses).
ORT_INPUT_ERRORS = (InvalidArgument, Fail, RuntimeException)


@bp.get("/v2")
def server_metadata():
    extensions = list(EXTENSIONS)
    if any(rule.rule == REPOSITORY_INDEX_RULE for rule in current_app.url_map.iter_rules()):
        extensions.append("model_repository")
    return jsonify(name=SERVER_NAME, version=API_VERSION, extensions=extensions)


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    repository = get_repository()
    model = repository.get(name, version)
    versions = [version] if version else sorted(repository.models.get(name, {}), key=int)
    return jsonify(
        name=model.name,
        versions=versions,
        platform=PLATFORM,
        inputs=[spec.as_dict() for spec in model.inputs],
        outputs=[spec.as_dict() for spec in model.outputs],
    )


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    try:
        model = get_repository().get(name, version)
    except NotReady:
        return jsonify(name=name, ready=False), 503
    return jsonify(name=model.name, ready=model.ready), (200 if model.ready else 503)


@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    model = get_repository().get(name, version)
    body = tensors.decompress(
        request.get_data(cache=False), request.headers.get("Content-Encoding"),
        current_app.config["MAX_CONTENT_LENGTH"],
    )
    header, binary = tensors.split_body(body, request.headers.get("Inference-Header-Content-Length"))
    request_id, parameters = tensors.request_fields(header)
    inputs = tensors.decode_inputs(header, binary, model.inputs)
    wanted = tensors.requested_outputs(header, parameters, model.outputs)
    results = _run(model, inputs)
    answer = {"model_name": model.name, "model_version": model.version}
    if request_id is not None:
        answer["id"] = request_id
    outputs = [
        (output.name, _classified(model, results[output.name], output.classification), output.binary)
        for output in wanted
    ]
    return _response(*tensors.encode_outputs(answer, outputs))


def _response(payload: bytes, header_length: int | None) -> Response:
    """JSON, or a JSON header and binary outputs; compressed when the client accepts it, as Triton does."""
    encoding = request.accept_encodings.best_match(["gzip", "deflate"])
    response = Response(
        tensors.compress(payload, encoding),
        content_type="application/json" if header_length is None else "application/octet-stream",
    )
    response.vary.add("Accept-Encoding")
    if encoding:
        response.headers["Content-Encoding"] = encoding
    if header_length is not None:  # the JSON's length before compression, as tritonclient reads it
        response.headers["Inference-Header-Content-Length"] = str(header_length)
    return response


def _run(model: OnnxModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the model (it records its own metrics); onnxruntime refusing the inputs is a 400."""
    try:
        return model.predict(inputs)
    except ORT_INPUT_ERRORS as err:
        # onnxruntime's text names its source files and kernels: log it, tell the client what to check.
        request_id = g.get("request_id", "-")
        log.info("model %s refused inputs, request id %s: %s", model.name, request_id, str(err).splitlines()[:1])
        raise BadRequest(
            f"onnxruntime could not run model {model.name!r} on these inputs: their values or shapes do not "
            f"fit the graph together (e.g. different batch sizes); details in the server log, request id {request_id}"
        ) from None


def _classified(model: OnnxModel, array: np.ndarray, top: int) -> np.ndarray:
    return tensors.classify(array, top, model.labels) if top else array


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
    server = {"/v2": {"get": {
        "summary": "Server metadata: name, version and the protocol extensions served",
        "tags": ["v2"],
        "responses": {"200": _json({"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        }}, "Server metadata"), **error_responses("401")},
    }}}
    return {**server, **metadata, **ready, **infer}


OPENAPI_PATHS: dict = _openapi_paths()
