"""gRPC messages to and from what the transport-free core speaks.

An inference request becomes the same header that an HTTP request is made of, and one entry of
tensor data per input, so `tensors.decode_inputs` checks both alike: each input's
`raw_input_contents` entry, or its typed `contents` as an array (BYTES as the raw length-prefixed
layout, which is checked for UTF-8 as raw BYTES are). Outputs always go back in
`raw_output_contents`, as Triton answers.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .. import tensors
from ..protocol import InferRequest, InferResponse
from ..errors import InvalidInput
from . import schema as pb

# Which typed `contents` field holds each datatype's values, and the numpy type it is packed as
# (INT8 and INT16 travel in int_contents as int32, UINT8 and UINT16 in uint_contents as uint32).
CONTENTS_FIELDS: dict[str, tuple[str, type]] = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int8), "INT16": ("int_contents", np.int16), "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint8), "UINT16": ("uint_contents", np.uint16),
    "UINT32": ("uint_contents", np.uint32), "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32), "FP64": ("fp64_contents", np.float64),
    "BYTES": ("bytes_contents", object),
}
# The proto's own type of each numeric contents field.
FIELD_TYPES: dict[str, type] = {
    "bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64, "uint_contents": np.uint32,
    "uint64_contents": np.uint64, "fp32_contents": np.float32, "fp64_contents": np.float64,
}


def parameters(entries: Mapping[str, Any]) -> dict[str, Any]:
    """A protobuf map of InferParameter or ModelRepositoryParameter as plain Python values."""
    values = {}
    for key, parameter in entries.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def infer_request(request: pb.ModelInferRequest) -> InferRequest:
    """The request as a v2 JSON header and each input's data (one implementation of the checks for
    both transports)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents holds {len(raw)} tensors but the request has {len(request.inputs)} inputs; "
            "send every input's data there, in the order of the inputs, or use each input's contents"
        )
    inputs, chunks = [], []
    for position, tensor in enumerate(request.inputs):
        if raw and tensor.HasField("contents"):
            raise InvalidInput(f"input {tensor.name!r} has both contents and raw_input_contents; send one of them")
        chunk = raw[position] if raw else _contents(tensor)
        # The core takes each input's data as it takes HTTP's binary data: with its size stated.
        size = len(chunk) if isinstance(chunk, bytes) else chunk.nbytes
        extra = {**parameters(tensor.parameters), "binary_data_size": size}
        inputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "parameters": extra})
        chunks.append(chunk)
    header: dict[str, Any] = {"inputs": inputs, "parameters": parameters(request.parameters)}
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [{"name": output.name, "parameters": parameters(output.parameters)} for output in request.outputs]
    return InferRequest(header, chunks)


def infer_response(answer: InferResponse) -> pb.ModelInferResponse:
    """The outputs in raw_output_contents, with their names, datatypes and shapes."""
    response = pb.ModelInferResponse(model_name=answer.model_name, model_version=answer.model_version, id=answer.id or "")
    for name, array, _binary in answer.outputs:
        datatype = tensors.datatype_of(array)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(tensors.to_binary(array, datatype))
    return response


def kserve_repository_answer(model_name: str, done: bool) -> bytes:
    """KServe's RepositoryModelLoadResponse / UnloadResponse: `model_name` (1) and `isLoaded` /
    `isUnloaded` (2). Triton's messages are empty, so these bytes mean nothing to Triton's clients."""
    name = model_name.encode()
    return b"\x0a" + _varint(len(name)) + name + (b"\x10\x01" if done else b"")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def model_metadata(metadata: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """`protocol.model_metadata`'s answer as its gRPC message."""
    return pb.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"],
        inputs=[pb.ModelMetadataResponse.TensorMetadata(**spec) for spec in metadata["inputs"]],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(**spec) for spec in metadata["outputs"]],
    )


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes | np.ndarray:
    """An input's typed contents: numeric values as an array of the datatype, BYTES in the raw
    length-prefixed layout."""
    filled = [field.name for field, _ in tensor.contents.ListFields()]
    if tensor.datatype not in CONTENTS_FIELDS:
        if filled:
            raise InvalidInput(
                f"input {tensor.name!r} is {tensor.datatype or 'without a datatype'}, which has no typed contents "
                "field: send its data in raw_input_contents"
            )
        return b""  # the datatype or a missing value is reported by the core, against the model
    field, dtype = CONTENTS_FIELDS[tensor.datatype]
    others = [name for name in filled if name != field]
    if others:
        raise InvalidInput(f"input {tensor.name!r} is {tensor.datatype}: its values go in contents.{field}, not {', '.join(others)}")
    values = getattr(tensor.contents, field)
    if dtype is object:
        return b"".join(tensors.BYTES_LENGTH.pack(len(item)) + item for item in values)
    wide = np.fromiter(values, dtype=FIELD_TYPES[field], count=len(values))
    narrow = wide.astype(dtype, copy=False)
    if narrow.dtype != wide.dtype and not np.array_equal(narrow, wide):  # INT8/16, UINT8/16 from 32 bits
        limits = np.iinfo(dtype)
        raise InvalidInput(f"input {tensor.name!r} has values outside the {tensor.datatype} range [{limits.min}, {limits.max}]")
    return narrow
