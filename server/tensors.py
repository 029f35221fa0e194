"""Open Inference Protocol (v2) tensors: JSON and binary request bodies in, response bodies out.

Pure functions with no Flask in them. Everything a client sends is checked against the model's
`TensorSpec`s and answered with an `InvalidInput` naming what was received and what was expected.
"""
from __future__ import annotations

import gzip
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import jsonio
from .errors import InvalidInput, TooLarge, UnsupportedFormat
from .model import NUMPY_DTYPES, TensorSpec

INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
BYTES_LENGTH = struct.Struct("<I")
# The v2 datatype of each numpy type (the first name listed where two share one).
DATATYPES = {dtype: name for name, dtype in reversed(NUMPY_DTYPES.items())}
# No real tensor has a side this long; numpy cannot even shape an empty array past 2**63.
MAX_DIMENSION = 2**31 - 1


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for: in binary or JSON, and top-k classes when `classification`."""

    name: str
    binary: bool
    classification: int = 0


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo `Content-Encoding: gzip|deflate` (as tritonclient sends it), refusing more than `limit` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedFormat(f"Content-Encoding {encoding!r} is not supported; expected gzip, deflate or none")
    # wbits 16+ reads the gzip wrapper, plain MAX_WBITS the zlib one that HTTP calls deflate.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise InvalidInput(f"body is not valid {encoding} data: {err}") from None
    if len(data) > limit:
        raise TooLarge(f"decompressed body is over the {limit}-byte limit")
    if not inflater.eof:
        raise InvalidInput(f"body is truncated {encoding} data")
    return data


def compress(body: bytes, encoding: str | None) -> bytes:
    """Compress a response body with `gzip` or `deflate` (zlib-wrapped, as HTTP means it); None: as is."""
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=6)
    if encoding == "deflate":
        return zlib.compress(body, 6)
    return body


def parse_header_length(header_length: str | None) -> int | None:
    """`Inference-Header-Content-Length` as a number, None when absent; anything else is a 400."""
    if header_length is None:
        return None
    text = header_length.strip()
    if not text.isdigit() or not text.isascii():
        raise InvalidInput(f"Inference-Header-Content-Length must be a non-negative integer, got {header_length[:40]!r}")
    return int(text)


def split_body(body: bytes, header_length: int | None) -> tuple[dict, bytes]:
    """Split a request into its JSON header and the binary tensor data after it.

    `header_length` is `Inference-Header-Content-Length` as `parse_header_length` read it; without it
    the whole body is JSON, as the protocol says.
    """
    if header_length is None:
        size = len(body)
    else:
        size = header_length
        if size == 0 or size > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {size} but the body holds {len(body)} bytes; "
                "expected the length of the JSON header, between 1 and the body size"
            )
    try:
        header = jsonio.loads(body[:size])
    except RecursionError:
        raise InvalidInput("JSON header is nested too deeply") from None
    except ValueError as err:
        hint = "" if header_length is not None else " (binary tensor data needs Inference-Header-Content-Length)"
        raise InvalidInput(f"request body is not valid JSON: {err}{hint}") from None
    if not isinstance(header, dict):
        raise InvalidInput(f"inference request must be a JSON object, got {type(header).__name__}")
    return header, body[size:]


def request_fields(header: dict) -> tuple[str | None, dict]:
    """The request `id` (to echo) and its `parameters` object, both checked."""
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {type(request_id).__name__}")
    parameters = _object(header.get("parameters"), "request 'parameters'")
    _bool_parameter(parameters, "binary_data_output", "request")
    return request_id, parameters


def decode_inputs(
    header: dict, binary: bytes | Sequence[bytes | np.ndarray], specs: Sequence[TensorSpec],
    left_out: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Every input of `header['inputs']` as an array, checked against the model's input `specs`.

    `binary` is one buffer, from which binary inputs take their bytes in the order they are listed
    and which they must use up (HTTP), or one entry per input: its raw bytes, or an array already
    made from typed values (gRPC). `left_out` ({name: ONNX type}) are the graph's inputs v2 cannot
    carry: naming one is refused.
    """
    tensors = header.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    by_name = {spec.name: spec for spec in specs}
    per_input = not isinstance(binary, (bytes, bytearray, memoryview))
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for position, tensor in enumerate(tensors):
        spec = _input_spec(position, tensor, by_name, arrays, left_out or {})
        shape = _checked_shape(tensor, spec)
        size = _binary_size(tensor, spec.name)
        if size is None:
            arrays[spec.name] = from_json(tensor.get("data"), spec.datatype, shape, spec.name)
            continue
        if per_input:
            chunk = binary[position]
            arrays[spec.name] = (from_values(chunk, spec.datatype, shape, spec.name) if isinstance(chunk, np.ndarray)
                                 else from_binary(chunk, spec.datatype, shape, spec.name))
            continue
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {spec.name!r} binary_data_size is {size} but only {len(binary) - offset} bytes of "
                "binary data are left after the JSON header"
            )
        arrays[spec.name] = from_binary(binary[offset:offset + size], spec.datatype, shape, spec.name)
        offset += size
    if not per_input and offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary) - offset} bytes after the JSON header and the binary inputs; "
            "expected the binary_data_size values to add up to the rest of the body"
        )
    missing = [spec.name for spec in specs if spec.name not in arrays]
    if missing:
        raise InvalidInput(f"missing inputs {missing}; the model needs {[spec.name for spec in specs]}")
    return arrays


def requested_outputs(
    header: dict, parameters: dict, specs: Sequence[TensorSpec], left_out: Mapping[str, str] | None = None
) -> list[RequestedOutput]:
    """The outputs to answer with, in binary or JSON: all of them unless `outputs` names some.

    `left_out` ({name: ONNX type}) are the graph's outputs v2 cannot carry: never sent, and
    refused when named.
    """
    default_binary = bool(parameters.get("binary_data_output", False))
    tensors = header.get("outputs")
    if tensors is None:
        return [RequestedOutput(spec.name, default_binary) for spec in specs]
    if not isinstance(tensors, list):
        raise InvalidInput(f"'outputs' must be a list, got {type(tensors).__name__}")
    names = [spec.name for spec in specs]
    wanted: list[RequestedOutput] = []
    for position, tensor in enumerate(tensors):
        name = tensor.get("name") if isinstance(tensor, dict) else None
        if isinstance(name, str) and name in (left_out or {}):
            raise InvalidInput(not_carried("output", name, left_out[name], names))
        if name not in names:
            raise InvalidInput(f"outputs[{position}] names {_short(name)}; the model's outputs are {names}")
        if any(output.name == name for output in wanted):
            raise InvalidInput(f"output {name!r} is requested twice")
        params = _object(tensor.get("parameters"), f"output {name!r} 'parameters'")
        if "shared_memory_region" in params:
            raise InvalidInput("shared memory is not supported; ask for the output in JSON or binary")
        binary = _bool_parameter(params, "binary_data", f"output {name!r}")
        top = params.get("classification", 0)
        if isinstance(top, bool) or not isinstance(top, int) or top < 0:
            raise InvalidInput(f"output {name!r} classification must be a non-negative integer, got {_short(top)}")
        wanted.append(RequestedOutput(name, default_binary if binary is None else binary, top))
    return wanted


def from_json(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A tensor from its JSON `data` (flat or nested, row-major), checked against datatype and shape."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r} needs 'data' as a (flat or nested) list, or binary_data_size")
    if datatype == "BYTES":
        array = _json_strings(data, name)
    else:
        array = _json_numbers(data, datatype, name)
    count = math.prod(shape)
    if array.size != count:
        raise InvalidInput(f"input {name!r} has {array.size} values in 'data' but shape {list(shape)} needs {count}")
    return array.reshape(shape)


def from_binary(chunk: bytes, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A tensor from its binary data: little-endian row-major values, or length-prefixed BYTES."""
    count = math.prod(shape)
    if datatype == "BYTES":
        items = deserialize_bytes(chunk, name)
        if len(items) != count:
            raise InvalidInput(f"input {name!r} holds {len(items)} BYTES elements but shape {list(shape)} needs {count}")
        return np.array(items, dtype=object).reshape(shape)
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    if len(chunk) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r} binary_data_size is {len(chunk)} bytes but shape {list(shape)} of {datatype} "
            f"needs {count * dtype.itemsize}"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape).astype(NUMPY_DTYPES[datatype], copy=False)


def from_values(values: np.ndarray, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A tensor from a flat array of typed values (gRPC's typed contents), checked against its shape."""
    count = math.prod(shape)
    if values.size != count:
        itemsize = NUMPY_DTYPES[datatype].itemsize
        raise InvalidInput(
            f"input {name!r} holds {values.size} values ({values.size * itemsize} bytes) but shape {list(shape)} "
            f"of {datatype} needs {count * itemsize} bytes ({count} values)"
        )
    return values.astype(NUMPY_DTYPES[datatype], copy=False).reshape(shape)


def deserialize_bytes(chunk: bytes, name: str) -> list[str]:
    """BYTES elements as Triton serializes them: a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(chunk):
        if offset + BYTES_LENGTH.size > len(chunk):
            raise InvalidInput(f"input {name!r} BYTES data ends inside an element's 4-byte length")
        (length,) = BYTES_LENGTH.unpack_from(chunk, offset)
        offset += BYTES_LENGTH.size
        if offset + length > len(chunk):
            raise InvalidInput(f"input {name!r} BYTES element claims {length} bytes but {len(chunk) - offset} are left")
        items.append(_utf8(chunk[offset:offset + length], name))
        offset += length
    return items


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES elements, row-major, each as a 4-byte little-endian length and its bytes."""
    parts = []
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(BYTES_LENGTH.pack(len(raw)) + raw)
    return b"".join(parts)


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype name of an output array."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    name = DATATYPES.get(array.dtype)
    if name is None:
        raise ValueError(f"no v2 datatype for numpy dtype {array.dtype}")
    return name


def top_classes(array: np.ndarray, top: int, labels: Sequence[str] | None) -> np.ndarray:
    """Triton's classification extension: the `top` largest values per batch row as BYTES
    `"value:index[:label]"`, highest first (the first axis is the batch when there are two or more)."""
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"classification needs a numeric output, got {datatype_of(array)}")
    batched = array.ndim >= 2
    rows = array.reshape(array.shape[0] if batched else 1, math.prod(array.shape[1:]) if batched else array.size)
    top = min(top, rows.shape[1])
    # Sort float64 keys: negating unsigned or boolean values would wrap around or fail.
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :top]
    result = np.empty(order.shape, dtype=object)
    for row, indices in enumerate(order):
        for column, index in enumerate(indices):
            text = f"{float(rows[row, index]):f}:{index}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            result[row, column] = text
    return result if batched else result.reshape(-1)


def encode_outputs(
    header: dict, outputs: Iterable[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length.

    `header` gets an `outputs` list; binary outputs carry `parameters.binary_data_size` and their
    bytes follow the JSON in the same order, as the binary tensor data extension lays them out.
    """
    entries, chunks = [], []
    finite = True  # no NaN or infinity among the values written in JSON
    for name, array, binary in outputs:
        datatype = datatype_of(array)
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = to_json(array, datatype)
            finite = finite and (array.dtype.kind != "f" or bool(np.isfinite(array).all()))
        entries.append(entry)
    text = jsonio.dumps({**header, "outputs": entries}, finite)
    if not chunks:
        return text, None
    return text + b"".join(chunks), len(text)


def to_binary(array: np.ndarray, datatype: str) -> bytes:
    """An output's raw bytes, as binary tensor data and gRPC's raw_output_contents carry them."""
    return serialize_bytes(array) if datatype == "BYTES" else _little_endian(array).tobytes()


def to_json(array: np.ndarray, datatype: str) -> list:
    """Flat row-major JSON values of an output, as Triton answers them."""
    if datatype == "BYTES":
        return [item.decode(errors="replace") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
    return array.reshape(-1).tolist()


def not_carried(kind: str, name: str, onnx_type: str, carried: Sequence[str]) -> str:
    """Why a graph input or output cannot be asked for over v2."""
    return (
        f"{kind} {name!r} is of ONNX type {onnx_type}, which the v2 protocol cannot carry (it has tensors "
        f"only), so this server leaves it out; the model's {kind}s it serves are {list(carried)}"
    )


def _input_spec(
    position: int, tensor: Any, by_name: dict[str, TensorSpec], seen: dict, left_out: Mapping[str, str]
) -> TensorSpec:
    """The model input that `inputs[position]` names, given once."""
    if not isinstance(tensor, dict):
        raise InvalidInput(f"inputs[{position}] must be an object, got {type(tensor).__name__}")
    name = tensor.get("name")
    if isinstance(name, str) and name in left_out:
        raise InvalidInput(not_carried("input", name, left_out[name], sorted(by_name)))
    if not isinstance(name, str) or name not in by_name:
        raise InvalidInput(f"inputs[{position}] has name {_short(name)}; the model's inputs are {sorted(by_name)}")
    if name in seen:
        raise InvalidInput(f"input {name!r} is given twice")
    return by_name[name]


def _binary_size(tensor: dict, name: str) -> int | None:
    """The input's `binary_data_size` (None when its data is JSON), checked."""
    parameters = _object(tensor.get("parameters"), f"input {name!r} 'parameters'")
    if "shared_memory_region" in parameters:
        raise InvalidInput("shared memory is not supported; send the data in JSON or as binary tensor data")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(f"input {name!r} binary_data_size must be a non-negative integer, got {_short(size)}")
    if "data" in tensor:
        raise InvalidInput(f"input {name!r} has both 'data' and binary_data_size; send one of them")
    return size


def _checked_shape(tensor: dict, spec: TensorSpec) -> tuple[int, ...]:
    name, shape, datatype = spec.name, tensor.get("shape"), tensor.get("datatype")
    if datatype != spec.datatype:
        raise InvalidInput(f"input {name!r} has datatype {_short(datatype)}; the model expects {spec.datatype}")
    if datatype not in NUMPY_DTYPES:
        raise InvalidInput(f"input {name!r} has datatype {datatype}, which this server cannot send to onnxruntime")
    if not isinstance(shape, list):
        raise InvalidInput(f"input {name!r} shape must be a list of non-negative integers, got {_described(shape)}")
    for index, dimension in enumerate(shape):
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 0:
            kind = ", not an integer" if isinstance(dimension, (bool, float)) else ""
            raise InvalidInput(f"input {name!r} shape must be a list of non-negative integers; element {index} is "
                               f"{_described(dimension)}{kind}")
    if any(d > MAX_DIMENSION for d in shape):
        raise InvalidInput(f"input {name!r} has a dimension over {MAX_DIMENSION}: {_short(shape)}")
    fits = len(shape) == len(spec.shape) and all(want < 0 or want == got for want, got in zip(spec.shape, shape))
    if not fits:
        shown = shape if len(shape) <= 8 else f"of {len(shape)} dimensions"
        raise InvalidInput(f"input {name!r} has shape {shown}; the model expects {list(spec.shape)} (-1: any size)")
    return tuple(shape)


def _json_numbers(data: list, datatype: str, name: str) -> np.ndarray:
    if datatype in INT_TYPES:
        return _json_integers(data, datatype, name)
    parsed = _regular(data, None, name)
    expected = "b" if datatype == "BOOL" else "iuf"
    if parsed.size and parsed.dtype.kind not in expected:
        wanted = "true/false" if datatype == "BOOL" else "numbers"
        raise InvalidInput(f"input {name!r} is {datatype} so 'data' must hold only {wanted}, got {_kind_name(parsed.dtype.kind)}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            return parsed.astype(NUMPY_DTYPES[datatype])
    except FloatingPointError:
        raise InvalidInput(f"input {name!r} has values outside the {datatype} range") from None


def _json_integers(data: list, datatype: str, name: str) -> np.ndarray:
    # Python ints one by one: numpy would turn integers beyond int64 into inexact floats.
    parsed = _regular(data, object, name)
    if not all(type(item) is int for item in parsed.reshape(-1)):
        raise InvalidInput(f"input {name!r} is {datatype} so 'data' must hold only integers")
    try:
        return parsed.astype(NUMPY_DTYPES[datatype])
    except OverflowError:
        limits = np.iinfo(NUMPY_DTYPES[datatype])
        raise InvalidInput(f"input {name!r} has values outside the {datatype} range [{limits.min}, {limits.max}]") from None


def _regular(data: list, dtype: type | None, name: str) -> np.ndarray:
    try:
        return np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInput(f"input {name!r} 'data' is not a regular (non-ragged) array of values") from None


def _json_strings(data: list, name: str) -> np.ndarray:
    parsed = _regular(data, object, name)
    if not all(isinstance(item, str) for item in parsed.reshape(-1)):
        raise InvalidInput(f"input {name!r} is BYTES so 'data' must hold only strings")
    return parsed


def _little_endian(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def _utf8(raw: bytes, name: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name!r} has a BYTES element that is not UTF-8, which onnxruntime strings need") from None


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _bool_parameter(parameters: dict, key: str, owner: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"{owner} parameter {key!r} must be true or false, got {_short(value)}")
    return value


def _kind_name(kind: str) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "non-integer numbers", "U": "strings"}.get(kind, "mixed or non-numeric values")


def _described(value: Any) -> str:
    """A received value for an error message: its JSON type and, when short, the value itself."""
    if isinstance(value, str):
        return f"a JSON string {_short(value)}"
    if value is None:
        return "null"
    return _short(value)


def _short(value: Any) -> str:
    """A received value, cut short for an error message."""
    if isinstance(value, (list, dict)):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
