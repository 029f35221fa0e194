"""The request parsers under generated bodies (issue 28): only domain errors, never a 5xx, memory bounded.

Each parser gets bytes or text that start from a well-formed request and are then damaged (bytes
flipped, cut, inserted), or are plain noise: the v2 JSON decoder, the binary extension's
Inference-Header-Content-Length and split, multipart forms, base64 and `pixels` bodies,
`config.pbtxt` text and the gRPC inference message. Each one must answer or raise its domain error
(ServingError, ModelConfigError), and hold no more memory than a small multiple of its input.

About 4,000 examples in all, a few seconds of `make test`; `make fuzz` runs FUZZ_SCALE (default 50)
times as many.
"""
from __future__ import annotations

import base64
import io
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from urllib3 import encode_multipart_formdata

from server import create_app
from server.v2 import tensors
from server.api.images import decode_base64
from server.api.multipart import file_views, parse_form
from server.image.decoding import pixels_to_array
from server.errors import ServingError
from server.grpc import messages
from server.grpc import schema as pb
from server.grpc.service import parse
from server.runtime.tensor_types import TensorSpec
from server.runtime.model_config import ModelConfigError, parse_model_config
from tests.onnx_factory import write_classifier

SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
# What a parser may hold at its peak: a small multiple of what it was given, plus room for the
# interpreter's own bookkeeping. A shape that asks for gigabytes must be refused before allocating.
MEMORY_PER_INPUT_BYTE = 64
MEMORY_BASE = 2 * 2**20


def fuzz(examples: int):
    """Hypothesis settings for `examples` examples (times FUZZ_SCALE), no deadline (the machine is shared)."""
    return settings(max_examples=examples * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(parse_it: Callable[[], Any], size: int, errors: tuple[type[BaseException], ...] = (ServingError,)) -> Any:
    """`parse_it()`'s answer, or None when it raised one of `errors`; any other exception fails the
    test, and so does a traced memory peak over MEMORY_BASE + MEMORY_PER_INPUT_BYTE x `size`."""
    tracemalloc.start()
    try:
        return parse_it()
    except errors:
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= MEMORY_BASE + MEMORY_PER_INPUT_BYTE * size, f"peak {peak} bytes for {size} bytes of input"


@st.composite
def damaged(draw, valid: bytes) -> bytes:
    """`valid` with a few bytes replaced, cut short, or with bytes inserted; or, now and then, as is."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if action == "flip":
            data[where] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[where:]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b"-1", b"1e999", b"[", b"]", b"{", b"}", b'"', b"\\", b"null", b"99999999999999999999"]))
        else:
            del data[where:where + draw(st.integers(1, 8))]
    return bytes(data)


def bytes_like(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A well-formed body damaged, or noise."""
    return valid.flatmap(damaged) | st.binary(max_size=256)


# --------------------------------------------------------------------------- v2 over HTTP: JSON and the binary extension

SPECS = (TensorSpec("input", "FP32", (-1, 1, 2, 2)), TensorSpec("ids", "INT64", (-1, 3)),
         TensorSpec("text", "BYTES", (-1,)), TensorSpec("half", "FP16", (-1,)))
OUTPUTS = (TensorSpec("probabilities", "FP32", (-1, 10)),)
VALUES = {"FP32": st.floats(width=32, allow_nan=False), "INT64": st.integers(-2**63, 2**63 - 1),
          "BYTES": st.text(max_size=3), "FP16": st.floats(width=16, allow_nan=False)}
NUMPY = {"FP32": np.float32, "INT64": np.int64, "FP16": np.float16}


@st.composite
def v2_requests(draw) -> tuple[bytes, int | None]:
    """A v2 inference body for SPECS and its Inference-Header-Content-Length (None: all JSON)."""
    inputs, chunks = [], []
    for spec in draw(st.permutations(SPECS)):
        shape = [draw(st.integers(0, 2)) if dim < 0 else dim for dim in spec.shape]
        values = draw(st.lists(VALUES[spec.datatype], min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": shape}
        if draw(st.booleans()) and spec.datatype != "BYTES":
            chunk = np.array(values, dtype=NUMPY[spec.datatype]).astype(np.dtype(NUMPY[spec.datatype]).newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif spec.datatype == "FP16":  # FP16 travels only in binary
            chunk = np.array(values, dtype=np.float16).astype("<f2").tobytes()
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = values
        inputs.append(tensor)
    request = {"inputs": inputs, "outputs": [{"name": "probabilities", "parameters": {
        "binary_data": draw(st.booleans()), "classification": draw(st.integers(0, 3))}}]}
    if draw(st.booleans()):
        request["id"] = "r1"
    header = json.dumps(request).encode()
    return header + b"".join(chunks), len(header) if chunks else None


def decode_v2(body: bytes, header_length: int | None) -> dict:
    """What the v2 route does with a body before the model runs (server/api/v2.py's order)."""
    header, binary = tensors.split_body(body, header_length)
    _, parameters = tensors.request_fields(header)
    arrays = tensors.decode_inputs(header, binary, SPECS)
    tensors.requested_outputs(header, parameters, OUTPUTS)
    return arrays


@fuzz(600)
@given(request=v2_requests().flatmap(lambda r: st.tuples(damaged(r[0]), st.just(r[1]))) | st.tuples(st.binary(max_size=256), st.none()))
def test_v2_json_decoder(request) -> None:
    body, header_length = request
    header_length = header_length if header_length is None or header_length <= len(body) else len(body)
    arrays = outcome(lambda: decode_v2(body, header_length), len(body))
    for array in (arrays or {}).values():
        assert isinstance(array, np.ndarray)


@fuzz(600)
@given(request=v2_requests(), header=st.one_of(st.none(), st.text(max_size=12), st.integers(-5, 10**6).map(str)),
       extra=st.binary(max_size=16))
def test_binary_extension_header_and_split(request, header, extra) -> None:
    """Any Inference-Header-Content-Length text and any body after the JSON: a number or a 400, then arrays or a 400."""
    body, _ = request
    body += extra
    length = outcome(lambda: tensors.parse_header_length(header), len(header or ""))
    if length is None and header is not None:
        return
    outcome(lambda: decode_v2(body, length), len(body))


# --------------------------------------------------------------------------- the image API's bodies

def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, format="PNG")
    return buffer.getvalue()


PNGS = st.sampled_from([_png(1), _png(28), _png(40)])


@st.composite
def forms(draw) -> tuple[bytes, str]:
    """A multipart body as requests and curl send it, and its boundary."""
    fields = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(["image", "return_input", "x", "名"]))
        if draw(st.booleans()):
            fields.append((name, (draw(st.sampled_from(["d.png", "", "a b.png"])), draw(PNGS | st.binary(max_size=32)), "image/png")))
        else:
            fields.append((name, draw(st.sampled_from(["1", "0", "yes", "ü"]))))
    body, content_type = encode_multipart_formdata(fields)
    return body, content_type.split("boundary=")[1]


@fuzz(600)
@given(form=forms().flatmap(lambda f: st.tuples(damaged(f[0]), st.just(f[1]))) | st.tuples(st.binary(max_size=256), st.text(max_size=8)))
def test_multipart_reader(form) -> None:
    """The lean reader answers a form or None (werkzeug's turn); the views see the same files, copying nothing."""
    body, boundary = form
    parsed = outcome(lambda: parse_form(body, boundary), len(body), errors=())
    views = outcome(lambda: file_views(body, boundary, "image"), len(body), errors=())
    assert (parsed is None) == (views is None)
    if parsed is not None:
        assert [bytes(view) for view in views] == parsed[0].get("image", [])
        assert all(view.obj is body for view in views)


BASE64_TEXT = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())


@fuzz(400)
@given(text=st.one_of(
    BASE64_TEXT, BASE64_TEXT.map(lambda t: "data:image/png;base64," + t), st.text(max_size=40),
    st.tuples(st.sampled_from(["data:", "DATA:image/png,", "data:;base64,", "data:image/png;base64"]), st.text(max_size=20)).map("".join),
    st.integers(), st.none(), st.lists(st.integers(), max_size=2)))
def test_base64_images(text) -> None:
    data = outcome(lambda: decode_base64(text, "'image'"), len(str(text)))
    assert data is None or isinstance(data, bytes)


NUMBERS = st.one_of(st.integers(-300, 300), st.floats(), st.booleans(), st.none(), st.text(max_size=2),
                    st.integers(-2**80, 2**80))
ROWS = st.lists(st.lists(NUMBERS, min_size=3, max_size=5) | NUMBERS, min_size=3, max_size=5)


@fuzz(400)
@given(value=ROWS | NUMBERS | st.lists(st.lists(st.integers(0, 255), min_size=4, max_size=4), min_size=4, max_size=4))
def test_pixels_bodies(value) -> None:
    array = outcome(lambda: pixels_to_array(value, (4, 4)), len(json.dumps(value, default=str)))
    if array is not None:
        assert array.shape == (4, 4) and array.dtype == np.float32 and 0 <= array.min() <= array.max() <= 1


@pytest.fixture(scope="module")
def image_client(tmp_path_factory):
    repo = tmp_path_factory.mktemp("fuzz") / "models"
    write_classifier(repo / "digits" / "1" / "model.onnx", labels=[str(i) for i in range(10)])
    return create_app({"TESTING": True, "MODEL_REPOSITORY": str(repo)}).test_client()


JSON_BODIES = st.fixed_dictionaries({}, optional={
    "image": BASE64_TEXT | PNGS.map(lambda p: base64.b64encode(p).decode()) | st.integers(),
    "images": st.lists(PNGS.map(lambda p: "data:image/png;base64," + base64.b64encode(p).decode()) | st.text(max_size=4), max_size=3),
    "pixels": st.lists(st.lists(st.integers(0, 255), min_size=28, max_size=28), min_size=27, max_size=28) | NUMBERS,
    "return_input": st.booleans() | st.text(max_size=3),
    "other": st.integers(),
}).map(lambda body: json.dumps(body).encode())


# werkzeug's own multipart parser, on a damaged body, drops a half-written spooled file unclosed
# (Python closes it when collecting it, and warns): its behaviour, not this server's.
@pytest.mark.filterwarnings("ignore:Exception ignored in. <function SpooledTemporaryFile.__del__:pytest.PytestUnraisableExceptionWarning")
@fuzz(200)
@given(body=st.one_of(
    st.tuples(forms().flatmap(lambda f: st.tuples(damaged(f[0]), st.just(f[1])))).map(lambda t: (t[0][0], f"multipart/form-data; boundary={t[0][1]}")),
    st.tuples(JSON_BODIES.flatmap(damaged) | JSON_BODIES, st.just("application/json")),
    st.tuples(PNGS.flatmap(damaged), st.sampled_from(["image/png", "application/octet-stream"]))))
def test_predict_bodies_over_http(image_client, body) -> None:
    """The whole route: multipart, JSON (base64 images, pixels) and raw bodies, damaged: 200 or a JSON 4xx."""
    data, content_type = body
    answer = image_client.post("/predict", data=data, content_type=content_type)
    assert answer.status_code < 500, answer.get_json()
    assert answer.status_code == 200 or "error" in answer.get_json()


# --------------------------------------------------------------------------- config.pbtxt

TOKENS = st.sampled_from([
    "name:", "platform:", "backend:", "max_batch_size:", "input", "output", "[", "]", "{", "}", ",", ":",
    '"mnist"', '"onnxruntime_onnx"', '"onnxruntime"', "data_type:", "TYPE_FP32", "TYPE_INT64", "TYPE_STRING",
    "dims:", "-1", "0", "1", "28", "99999999999999999999", "version_policy:", "latest", "all", "specific",
    "num_versions:", "versions:", "dynamic_batching", "max_queue_delay_microseconds:", "preferred_batch_size:",
    "label_filename:", '"labels.txt"', "reshape", "shape:", "sequence_batching", "default_model_filename:",
    '"model.onnx"', "#", "\n", "instance_group", "count:", "kind:", "KIND_CPU", '"\\x00"', "'", "1.5",
])
VALID_CONFIG = ('name: "mnist" platform: "onnxruntime_onnx" max_batch_size: 8 input [ { name: "input" '
                'data_type: TYPE_FP32 dims: [ 1, 28, 28 ] } ] output [ { name: "probabilities" '
                'data_type: TYPE_FP32 dims: [ 10 ] } ] version_policy: { latest { num_versions: 2 } }')


@fuzz(500)
@given(text=st.lists(TOKENS, max_size=40).map(" ".join)
       | damaged(VALID_CONFIG.encode()).map(lambda b: b.decode("utf-8", "replace"))
       | st.text(max_size=80))
def test_config_pbtxt_text(text, tmp_path_factory) -> None:
    model_dir = Path(tmp_path_factory.getbasetemp()) / "mnist"
    outcome(lambda: parse_model_config(text, model_dir), len(text.encode()), errors=(ModelConfigError,))


# --------------------------------------------------------------------------- gRPC

GRPC_SPECS = SPECS[:2]

@st.composite
def grpc_requests(draw) -> bytes:
    """A ModelInferRequest for SPECS, its data raw (as tritonclient sends it) or in typed contents."""
    request = pb.ModelInferRequest(model_name="m", id=draw(st.sampled_from(["", "r1"])))
    raw = draw(st.booleans())
    for spec in draw(st.permutations(GRPC_SPECS)):
        shape = [draw(st.integers(0, 2)) if dim < 0 else dim for dim in spec.shape]
        values = draw(st.lists(VALUES[spec.datatype], min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        tensor = request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
        if raw:
            request.raw_input_contents.append(np.array(values, dtype=NUMPY[spec.datatype]).astype(
                np.dtype(NUMPY[spec.datatype]).newbyteorder("<")).tobytes())
        elif spec.datatype == "FP32":
            tensor.contents.fp32_contents.extend(values)
        else:
            tensor.contents.int64_contents.extend(values)
    request.outputs.add(name="probabilities")
    return request.SerializeToString()


def decode_grpc(data: bytes) -> dict:
    """What ModelInfer does with a message before the model runs (server/grpc/service.py's order)."""
    header, binary = messages.infer_request(parse(pb.ModelInferRequest, data))
    _, parameters = tensors.request_fields(header)
    arrays = tensors.decode_inputs(header, binary, GRPC_SPECS)
    tensors.requested_outputs(header, parameters, OUTPUTS)
    return arrays


@fuzz(600)
@given(data=bytes_like(grpc_requests()))
def test_grpc_message_decoder(data) -> None:
    arrays = outcome(lambda: decode_grpc(data), len(data))
    for array in (arrays or {}).values():
        assert isinstance(array, np.ndarray)


@settings(max_examples=10, deadline=None)
@given(v2=v2_requests(), grpc_message=grpc_requests())
def test_the_fuzzing_starts_from_requests_that_decode(v2, grpc_message) -> None:
    """The generators' well-formed requests decode to every input: the damage, not the start, makes the errors."""
    assert set(decode_v2(*v2)) == {spec.name for spec in SPECS}
    assert set(decode_grpc(grpc_message)) == {spec.name for spec in GRPC_SPECS}
    assert parse_model_config(VALID_CONFIG).max_batch_size == 8


def test_a_multipart_part_without_a_name_is_a_400(image_client) -> None:
    """Found by test_predict_bodies_over_http: werkzeug names such a part None, and listing the
    received fields beside text names raised TypeError (a 500)."""
    body = (b"--b\r\nContent-Disposition: form-data; filename=\"d.png\"\r\n\r\nxx\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n")
    answer = image_client.post("/predict", data=body, content_type="multipart/form-data; boundary=b")
    assert answer.status_code == 400 and "no file in field 'image'" in answer.get_json()["error"], answer.get_json()
