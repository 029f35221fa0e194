"""The Open Inference Protocol (v2) without its transport: metadata, readiness and inference.

What KServe's and Triton's v2 APIs answer, computed from the registry and the models; the HTTP
routes (`server/api/v2.py`) put it in JSON or binary, and a second transport could reuse it as is.
Works for any ONNX model: inputs, outputs, datatypes and shapes come from the graph.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from . import tensors
from .budget import MemoryBudget, run_in_chunks
from .config import CHUNK_ROWS
from .errors import InvalidInput, ModelNotReady
from .model import OnnxModel
from .registry import ModelRegistry

log = logging.getLogger(__name__)

SERVER_NAME = "mnist-serve"
SERVER_VERSION = "0.1.0"
PLATFORM = "onnxruntime_onnx"
# Extensions as Triton names them; `model_repository` is added where its calls are served.
EXTENSIONS = ("binary_tensor_data", "classification", "statistics", "model_configuration")
# onnxruntime's own errors for inputs it refuses at run time (they are not RuntimeError subclasses).
ORT_INPUT_ERRORS = (InvalidArgument, Fail, RuntimeException)

Output = tuple[str, np.ndarray, bool]  # (name, array, send in binary)


@dataclass(frozen=True)
class InferLimits:
    """What one inference request may take, read from the settings once per worker, not per request."""

    memory: MemoryBudget  # this worker's share of the box's memory
    chunk_rows: int  # rows per model run (INFER_CHUNK_ROWS)
    max_body_bytes: int  # largest body, also once decompressed (MAX_CONTENT_LENGTH)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], memory: MemoryBudget) -> "InferLimits":
        return cls(memory, settings["INFER_CHUNK_ROWS"], settings["MAX_CONTENT_LENGTH"])


class InferRequest(NamedTuple):
    """A v2 inference request as a transport read it: the JSON header (as a dict) and the tensor
    data after it, one buffer in input order (HTTP's binary extension) or one entry per input
    (gRPC: raw bytes, or an array already made from typed contents)."""

    header: dict
    binary: bytes | Sequence[bytes | np.ndarray]


@dataclass(frozen=True)
class InferResponse:
    """A v2 inference answer before a transport encodes it."""

    model_name: str
    model_version: str
    id: str | None  # the request's own id, echoed
    outputs: list[Output]


def server_metadata(repository_extension: bool) -> dict:
    """The server's name, version and the protocol extensions it serves."""
    extensions = list(EXTENSIONS) + (["model_repository"] if repository_extension else [])
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": extensions}


def model_metadata(registry: ModelRegistry, name: str, version: str | None = None) -> dict:
    """A model's platform, versions, inputs and outputs (the highest version unless one is named)."""
    model = registry.get(name, version)
    versions = [version] if version else sorted(registry.models.get(name, {}), key=int)
    return {
        "name": model.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [spec.as_dict() for spec in model.inputs],
        "outputs": [spec.as_dict() for spec in model.outputs],
    }


def model_ready(registry: ModelRegistry, name: str, version: str | None = None) -> bool:
    """Whether the model (version) serves; unknown ones raise ModelNotFound."""
    try:
        return registry.get(name, version).ready
    except ModelNotReady:
        return False


def model_config(registry: ModelRegistry, name: str, version: str | None = None):
    """The configuration a model (version) is served with, an `inference.ModelConfig` message."""
    return registry.get(name, version).served_config


def statistics_versions(registry: ModelRegistry, name: str = "", version: str | None = None) -> list[tuple[str, str]]:
    """The (model, version) pairs a statistics request covers: every loaded version of every model
    when `name` is empty, of one model when `version` is None; an unknown one raises, as in Triton."""
    if not name:
        return [(model, v) for model, versions in sorted(registry.models.items()) for v in sorted(versions, key=int)]
    model = registry.get(name, version)
    if version is not None:
        return [(model.name, model.version)]
    return [(model.name, v) for v in sorted(registry.models.get(model.name, {}), key=int)]


def request_rows(model: OnnxModel, inputs: dict[str, np.ndarray]) -> int:
    """The inferences one request holds, as Triton counts them: its rows when the model batches, else 1."""
    if not model.batchable or not inputs:
        return 1
    first = next(iter(inputs.values()))
    return first.shape[0] if first.ndim else 1


def decode_request(model: OnnxModel, header: dict, binary: bytes | Sequence[bytes | np.ndarray]) -> tuple[str | None, dict[str, np.ndarray], list[tensors.RequestedOutput]]:
    """A v2 inference request for `model` (its JSON header and the binary tensor data after it), checked:
    its own `id` (to echo), the input arrays and the outputs asked for. Both transports read requests
    through here; they let the request's bytes go before `infer` runs the model on the arrays."""
    request_id, parameters = tensors.request_fields(header)
    inputs = tensors.decode_inputs(header, binary, model.inputs, model.left_out_inputs)
    wanted = tensors.requested_outputs(header, parameters, model.outputs, model.left_out_outputs)
    return request_id, inputs, wanted


def infer(model: OnnxModel, inputs: dict[str, np.ndarray], wanted: list[tensors.RequestedOutput],
          request_id: str = "-", chunk_rows: int = CHUNK_ROWS) -> list[Output]:
    """Run the model on decoded inputs, `chunk_rows` rows at a time; the outputs asked for, top-k
    classified where asked. More rows than the model's max_batch_size is InvalidInput, as in Triton."""
    check_rows(model, inputs)
    results = run(model, inputs, request_id, chunk_rows)
    return [
        (output.name, _classified(model, results[output.name], output.classification), output.binary)
        for output in wanted
    ]


def check_rows(model: OnnxModel, inputs: dict[str, np.ndarray]) -> None:
    """Refuse more rows than the model's `max_batch_size` (config.pbtxt's, else its metadata's), in Triton's words."""
    if model.max_rows is None or not inputs:
        return
    rows = max(array.shape[0] if array.ndim else 1 for array in inputs.values())
    if rows > model.max_rows:
        raise InvalidInput(f"inference request batch-size must be <= {model.max_rows} for {model.name!r}: it takes "
                           f"at most {model.max_rows} rows per request (its max_batch_size), got {rows}")


def run(model: OnnxModel, inputs: dict[str, np.ndarray], request_id: str = "-",
        chunk_rows: int | None = None) -> dict[str, np.ndarray]:
    """Run the model (in chunks of `chunk_rows` rows when its tensors are all batch-first);
    onnxruntime refusing the inputs is InvalidInput."""
    try:
        if chunk_rows and model.batchable:
            return run_in_chunks(model.predict, inputs, chunk_rows)
        return model.predict(inputs)
    except ORT_INPUT_ERRORS as err:
        # onnxruntime's text names its source files and kernels: log it, tell the client what to check.
        log.info("model %s refused inputs, request id %s: %s", model.name, request_id, str(err).splitlines()[:1])
        raise InvalidInput(
            f"onnxruntime could not run model {model.name!r} on these inputs: their values or shapes do not "
            f"fit the graph together (e.g. different batch sizes); details in the server log, request id {request_id}"
        ) from None


def _classified(model: OnnxModel, array: np.ndarray, top: int) -> np.ndarray:
    return tensors.top_classes(array, top, model.labels) if top else array
