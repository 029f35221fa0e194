"""Open Inference Protocol (v2) over Flask's test client and a real live, checked against onnxruntime."""
from __future__ import annotations

import gzip
import http.client
import json
import math
import shutil
import socket
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from server import create_app
from server.v2 import tensors
from server.errors import ServingError
from server.runtime.tensor_types import TensorSpec
from tests.conftest import LiveServer
from tests.v2_repository import (
    COMMITTED_MNIST, COMMITTED_REPOSITORY, DIGIT_LABELS, NUMPY_TYPES, OTHER, V2_ONNX_TYPES, binary_request,
    committed_digit_models, decode_response, mnist_sample, run_directly, sample_values, write_repository,
)

DATATYPES = list(V2_ONNX_TYPES)
needs_committed_model = pytest.mark.skipif(
    not COMMITTED_MNIST.exists(), reason="models/mnist/1/model.onnx is not committed yet"
)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return write_repository(tmp_path_factory.mktemp("v2") / "models")


@pytest.fixture(scope="module")
def v2_client(repository: Path):
    return create_app({"TESTING": True, "MODEL_REPOSITORY": str(repository)}).test_client()


@pytest.fixture(scope="module")
def live(module_servers, repository: Path):
    return module_servers(repository)


def model_file(repository: Path, name: str, version: str) -> Path:
    return repository / name / version / "model.onnx"


def classifier_input(name: str, rows: int = 2, seed: int = 0) -> tuple[str, np.ndarray]:
    """The input name and a random float32 batch for the `mnist` or the `other` classifier."""
    shape = (1, 28, 28) if name == "mnist" else OTHER["input_shape"][1:]
    rng = np.random.default_rng(seed)
    return ("input" if name == "mnist" else OTHER["input_name"]), rng.random((rows, *shape), dtype=np.float32)


def json_tensor(name: str, array: np.ndarray, datatype: str, nested: bool = False) -> dict:
    values = array.tolist() if nested else array.reshape(-1).tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": values}


def binary_tensor(name: str, array: np.ndarray, datatype: str) -> tuple[dict, bytes]:
    if datatype == "BYTES":
        raw = b"".join(len(s.encode()).to_bytes(4, "little") + s.encode() for s in array.reshape(-1))
    else:
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    tensor = {"name": name, "shape": list(array.shape), "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}
    return tensor, raw


def post(client, path: str, body: bytes, headers: dict | None = None):
    """POST raw bytes with no Content-Type, as tritonclient does; returns (status, headers, body)."""
    response = client.post(path, data=body, headers=headers or {})
    return response.status_code, response.headers, response.data


# ---------------------------------------------------------------- metadata and readiness


def test_server_metadata_names_the_extensions(v2_client):
    answer = v2_client.get("/v2").get_json()
    assert answer["name"] and answer["version"]
    assert "binary_tensor_data" in answer["extensions"] and "classification" in answer["extensions"]


@pytest.mark.parametrize("name", ["mnist", "other", "typed"])
def test_model_metadata_comes_from_the_graph(v2_client, repository, name):
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file(repository, name, "1")), providers=["CPUExecutionProvider"])
    answer = v2_client.get(f"/v2/models/{name}").get_json()
    assert answer["name"] == name and answer["platform"] == "onnxruntime_onnx"
    assert answer["versions"] == (["1", "2"] if name == "mnist" else ["1"])
    assert [t["name"] for t in answer["inputs"]] == [n.name for n in session.get_inputs()]
    assert [t["name"] for t in answer["outputs"]] == [n.name for n in session.get_outputs()]
    for tensor, node in zip(answer["inputs"] + answer["outputs"], session.get_inputs() + session.get_outputs()):
        assert tensor["shape"] == [d if isinstance(d, int) else -1 for d in node.shape]
    if name == "other":
        assert answer["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]
        assert answer["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 5]}]
    if name == "typed":
        assert {t["datatype"] for t in answer["inputs"]} == set(DATATYPES)


def test_versioned_metadata_and_readiness(v2_client):
    assert v2_client.get("/v2/models/mnist/versions/1").get_json()["versions"] == ["1"]
    for path in ("/v2/models/mnist/ready", "/v2/models/mnist/versions/1/ready", "/v2/models/other/ready"):
        response = v2_client.get(path)
        assert response.status_code == 200 and response.get_json()["ready"] is True


# ---------------------------------------------------------------- inference


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("name", ["mnist", "other"])
def test_json_inference_matches_onnxruntime(v2_client, repository, name, nested):
    input_name, batch = classifier_input(name, rows=3)
    request = {"id": "req-7", "inputs": [json_tensor(input_name, batch, "FP32", nested)]}
    status, headers, body = post(v2_client, f"/v2/models/{name}/infer", json.dumps(request).encode())
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert "Inference-Header-Content-Length" not in headers
    answer = json.loads(body)
    version = "2" if name == "mnist" else "1"  # the highest version serves by default
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (name, version, "req-7")
    expected = run_directly(model_file(repository, name, version), {input_name: batch})
    np.testing.assert_allclose(decode_response(body, None)[OTHER["output_name"] if name == "other" else "probabilities"],
                               next(iter(expected.values())), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["mnist", "other"])
def test_binary_inference_matches_onnxruntime(v2_client, repository, name):
    input_name, batch = classifier_input(name, rows=4, seed=3)
    tensor, raw = binary_tensor(input_name, batch, "FP32")
    body, headers = binary_request({"inputs": [tensor], "parameters": {"binary_data_output": True}}, [raw])
    status, answer_headers, answer = post(v2_client, f"/v2/models/{name}/versions/1/infer", body, headers)
    assert status == 200 and answer_headers["Content-Type"] == "application/octet-stream"
    header_length = answer_headers["Inference-Header-Content-Length"]
    header = json.loads(answer[:int(header_length)])
    assert "id" not in header and header["model_version"] == "1"
    classes = OTHER["num_classes"] if name == "other" else 10
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 4 * batch.shape[0] * classes}
    expected = run_directly(model_file(repository, name, "1"), {input_name: batch})
    outputs = decode_response(answer, header_length)
    assert outputs.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(outputs[key], value)  # same file, same runtime: bit for bit


def test_each_version_answers_at_its_own_path(v2_client, repository):
    _, batch = classifier_input("mnist")
    request = json.dumps({"inputs": [json_tensor("input", batch, "FP32")]}).encode()
    for version in ("1", "2"):
        status, _, body = post(v2_client, f"/v2/models/mnist/versions/{version}/infer", request)
        expected = run_directly(model_file(repository, "mnist", version), {"input": batch})["probabilities"]
        np.testing.assert_allclose(decode_response(body, None)["probabilities"], expected, rtol=1e-6)
    assert not np.allclose(
        run_directly(model_file(repository, "mnist", "1"), {"input": batch})["probabilities"],
        run_directly(model_file(repository, "mnist", "2"), {"input": batch})["probabilities"],
    ), "the two versions must differ for this test to mean anything"


@pytest.mark.parametrize("inputs_binary", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("outputs_binary", [False, True], ids=["json-out", "binary-out"])
def test_every_datatype_round_trips_exactly(v2_client, inputs_binary, outputs_binary):
    arrays = {datatype: sample_values(datatype, rows=2, seed=5) for datatype in DATATYPES}
    tensors, chunks = [], []
    for datatype, array in arrays.items():
        if inputs_binary:
            tensor, raw = binary_tensor(f"in_{datatype}", array, datatype)
            tensors.append(tensor)
            chunks.append(raw)
        else:
            tensors.append(json_tensor(f"in_{datatype}", array, datatype, nested=True))
    body, headers = binary_request({"inputs": tensors, "parameters": {"binary_data_output": outputs_binary}}, chunks)
    status, answer_headers, answer = post(v2_client, "/v2/models/typed/infer", body, headers if inputs_binary else {})
    assert status == 200, answer
    outputs = decode_response(answer, answer_headers.get("Inference-Header-Content-Length"))
    for datatype, array in arrays.items():
        got = outputs[f"out_{datatype}"]
        if datatype == "BYTES":
            got = np.vectorize(lambda item: item.decode() if isinstance(item, bytes) else item, otypes=[object])(got)
        else:
            assert got.dtype == array.dtype, datatype
        np.testing.assert_array_equal(got, array, err_msg=datatype)


def test_output_selection_and_per_output_binary(v2_client, repository):
    arrays = {datatype: sample_values(datatype, rows=1) for datatype in DATATYPES}
    request = {
        "inputs": [json_tensor(f"in_{dt}", a, dt) for dt, a in arrays.items()],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "out_INT64", "parameters": {"binary_data": False}}, {"name": "out_FP32"}],
    }
    status, headers, body = post(v2_client, "/v2/models/typed/infer", json.dumps(request).encode())
    assert status == 200
    header = json.loads(body[:int(headers["Inference-Header-Content-Length"])])
    assert [o["name"] for o in header["outputs"]] == ["out_INT64", "out_FP32"]
    assert header["outputs"][0]["data"] == arrays["INT64"].reshape(-1).tolist()
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 12} and "data" not in header["outputs"][1]
    outputs = decode_response(body, headers["Inference-Header-Content-Length"])
    np.testing.assert_array_equal(outputs["out_FP32"], arrays["FP32"])


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json", "application/octet-stream"])
def test_body_is_read_whatever_the_content_type(v2_client, content_type):
    _, batch = classifier_input("mnist", rows=1)
    headers = {"Content-Type": content_type} if content_type else {}
    status, _, body = post(v2_client, "/v2/models/mnist/infer", json.dumps({"inputs": [json_tensor("input", batch, "FP32")]}).encode(), headers)
    assert status == 200 and len(json.loads(body)["outputs"][0]["data"]) == 10


@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_request_bodies(v2_client, repository, encoding, compress):
    _, batch = classifier_input("mnist", rows=2)
    tensor, raw = binary_tensor("input", batch, "FP32")
    body, headers = binary_request({"inputs": [tensor]}, [raw])
    status, _, answer = post(v2_client, "/v2/models/mnist/infer", compress(body), {**headers, "Content-Encoding": encoding})
    assert status == 200
    expected = run_directly(model_file(repository, "mnist", "2"), {"input": batch})["probabilities"]
    np.testing.assert_allclose(decode_response(answer, None)["probabilities"], expected, rtol=1e-6)


@pytest.mark.parametrize("accept, encoding, decompress", [
    ("gzip, deflate", "gzip", gzip.decompress), ("deflate", "deflate", zlib.decompress), ("identity", None, bytes),
])
def test_responses_compressed_when_accepted(v2_client, repository, accept, encoding, decompress):
    _, batch = classifier_input("mnist", rows=2)
    tensor, raw = binary_tensor("input", batch, "FP32")
    body, headers = binary_request({"inputs": [tensor], "parameters": {"binary_data_output": True}}, [raw])
    status, answer_headers, answer = post(v2_client, "/v2/models/mnist/infer", body, {**headers, "Accept-Encoding": accept})
    assert status == 200 and answer_headers.get("Content-Encoding") == encoding
    # Inference-Header-Content-Length counts the JSON before compression, as tritonclient reads it.
    outputs = decode_response(decompress(answer), answer_headers["Inference-Header-Content-Length"])
    expected = run_directly(model_file(repository, "mnist", "2"), {"input": batch})["probabilities"]
    np.testing.assert_array_equal(outputs["probabilities"], expected)


@pytest.mark.parametrize("name, labels", [("mnist", DIGIT_LABELS), ("other", None)])
def test_classification_extension(v2_client, repository, name, labels):
    input_name, batch = classifier_input(name, rows=2, seed=9)
    output = "probabilities" if name == "mnist" else OTHER["output_name"]
    request = {"inputs": [json_tensor(input_name, batch, "FP32")], "outputs": [{"name": output, "parameters": {"classification": 3}}]}
    status, _, body = post(v2_client, f"/v2/models/{name}/versions/1/infer", json.dumps(request).encode())
    assert status == 200
    answer = json.loads(body)["outputs"][0]
    assert (answer["datatype"], answer["shape"]) == ("BYTES", [2, 3])
    scores = run_directly(model_file(repository, name, "1"), {input_name: batch})[output]
    for row, entries in enumerate(np.array(answer["data"]).reshape(2, 3)):
        top = np.argsort(-scores[row])[:3]
        parts = [entry.split(":") for entry in entries]
        assert [int(p[1]) for p in parts] == top.tolist()
        np.testing.assert_allclose([float(p[0]) for p in parts], scores[row][top], atol=1e-6)
        assert [p[2:] for p in parts] == ([[labels[i]] for i in top] if labels else [[], [], []])


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_empty_batch(v2_client, binary):
    empty = np.zeros((0, 1, 28, 28), np.float32)
    tensor, raw = binary_tensor("input", empty, "FP32") if binary else (json_tensor("input", empty, "FP32"), b"")
    outputs = [{"name": "probabilities", "parameters": {"binary_data": binary}},
               {"name": "probabilities", "parameters": {"classification": 3}}]
    for output in outputs:
        body, headers = binary_request({"inputs": [tensor], "outputs": [output]}, [raw])
        status, answer_headers, answer = post(v2_client, MNIST, body, headers if binary else {})
        assert status == 200, answer
        result = decode_response(answer, answer_headers.get("Inference-Header-Content-Length"))["probabilities"]
        assert result.shape == ((0, 3) if "classification" in output["parameters"] else (0, 10))


@pytest.mark.parametrize("values, expected", [
    (np.array([[1, 200, 3]], np.uint8), [["200.000000:1", "3.000000:2"]]),
    (np.array([[False, True, True]]), [["1.000000:1", "1.000000:2"]]),
    (np.array([0.1, 0.7, 0.2], np.float32), ["0.700000:1:b", "0.200000:2:c"]),
])
def test_classify_orders_every_numeric_type(values, expected):
    assert tensors.top_classes(values, 2, ["a", "b", "c"] if values.ndim == 1 else None).tolist() == expected


def test_openapi_documents_every_v2_route(v2_client):
    document = v2_client.get("/openapi.json").get_json()
    rules = [rule for rule in v2_client.application.url_map.iter_rules() if rule.endpoint.startswith("v2.")]
    assert len(rules) == 12
    for rule in rules:
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = document["paths"][path][method.lower()]
            assert operation["responses"]["200"]["content"]
            assert {p["name"] for p in document["paths"][path].get("parameters", [])} == set(rule.arguments)


def test_statistics_in_one_process_read_its_own_registry(v2_client):
    """Without PROMETHEUS_MULTIPROC_DIR (Flask's test client) the statistics come from this process's samples."""
    def stats():
        return v2_client.get("/v2/models/other/versions/1/stats").get_json()["model_stats"][0]

    before = stats()
    input_name, batch = classifier_input("other", rows=3)
    for _ in range(2):
        post(v2_client, "/v2/models/other/infer", json.dumps({"inputs": [json_tensor(input_name, batch, "FP32")]}).encode())
    after = stats()
    assert after["inference_count"] - before["inference_count"] == 6
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 2
    assert after["execution_count"] - before["execution_count"] >= 2
    assert after["last_inference"] > 0


def test_inference_is_counted_in_metrics(v2_client):
    labels = {"model": "other", "version": "1"}
    before = REGISTRY.get_sample_value("model_batch_size_sum", labels) or 0
    input_name, batch = classifier_input("other", rows=3)
    post(v2_client, "/v2/models/other/infer", json.dumps({"inputs": [json_tensor(input_name, batch, "FP32")]}).encode())
    assert REGISTRY.get_sample_value("model_batch_size_sum", labels) == before + 3


# ---------------------------------------------------------------- errors


def mnist_body(**tensor_changes) -> bytes:
    tensor = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784, **tensor_changes}
    return json.dumps({"inputs": [tensor]}).encode()


def typed_body(datatype: str, **tensor_changes) -> bytes:
    tensors = [json_tensor(f"in_{dt}", sample_values(dt, rows=1), dt) for dt in DATATYPES]
    for tensor in tensors:
        if tensor["name"] == f"in_{datatype}":
            tensor.update(tensor_changes)
    return json.dumps({"inputs": tensors}).encode()


def with_binary(tensor_changes: dict, chunk: bytes, header_length: str | None = "auto", extra: bytes = b"") -> tuple[bytes, dict]:
    tensor = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", **tensor_changes}
    body, headers = binary_request({"inputs": [tensor]}, [chunk + extra])
    if header_length is None:
        headers = {}
    elif header_length != "auto":
        headers = {"Inference-Header-Content-Length": header_length}
    return body, headers


def typed_bytes_binary(chunk: bytes, shape: list[int]) -> tuple[bytes, dict]:
    tensors = [json_tensor(f"in_{dt}", sample_values(dt, rows=1), dt) for dt in DATATYPES if dt != "BYTES"]
    tensors.append({"name": "in_BYTES", "shape": shape, "datatype": "BYTES", "parameters": {"binary_data_size": len(chunk)}})
    return binary_request({"inputs": tensors}, [chunk])


IMAGE_BYTES = np.zeros((1, 1, 28, 28), np.float32).tobytes()
MNIST = "/v2/models/mnist/infer"
TYPED = "/v2/models/typed/infer"
ERROR_CASES = [
    # (id, method, path, body, headers, status, fragment of the message)
    ("unknown model", "POST", "/v2/models/nope/infer", mnist_body(), {}, 404, "unknown model 'nope'"),
    ("unknown version", "POST", "/v2/models/mnist/versions/9/infer", mnist_body(), {}, 404, "no version '9'"),
    ("non-numeric version", "POST", "/v2/models/mnist/versions/v1/infer", mnist_body(), {}, 404, "versions are numeric"),
    ("dot-dot name", "POST", "/v2/models/../infer", mnist_body(), {}, 404, ""),
    ("encoded dot-dot name", "POST", "/v2/models/%2e%2e/infer", mnist_body(), {}, 404, ""),
    ("encoded slashes in name", "POST", "/v2/models/..%2F..%2Fmnist/infer", mnist_body(), {}, 404, ""),
    ("encoded slashes in version", "POST", "/v2/models/mnist/versions/1%2F..%2F2/infer", mnist_body(), {}, 404, ""),
    ("metadata of unknown model", "GET", "/v2/models/nope", b"", {}, 404, "unknown model"),
    ("readiness of unknown version", "GET", "/v2/models/mnist/versions/7/ready", b"", {}, 404, "no version '7'"),
    ("GET on infer", "GET", MNIST, b"", {}, 405, ""),
    ("empty body", "POST", MNIST, b"", {}, 400, "not valid JSON"),
    ("not JSON", "POST", MNIST, b"hello", {}, 400, "not valid JSON"),
    ("JSON array", "POST", MNIST, b"[1, 2]", {}, 400, "must be a JSON object"),
    ("deeply nested JSON", "POST", MNIST, b"[" * 100_000 + b"]" * 100_000, {}, 400, "nested too deeply"),
    ("no inputs", "POST", MNIST, b"{}", {}, 400, "'inputs' must be a non-empty list"),
    ("empty inputs", "POST", MNIST, b'{"inputs": []}', {}, 400, "'inputs' must be a non-empty list"),
    ("input not an object", "POST", MNIST, b'{"inputs": [1]}', {}, 400, "inputs[0] must be an object"),
    ("unknown input name", "POST", MNIST, mnist_body(name="image"), {}, 400, "the model's inputs are ['input']"),
    ("input name a list", "POST", MNIST, mnist_body(name=["input"]), {}, 400, "has name a JSON array"),
    ("output name a list", "POST", MNIST, json.dumps({**json.loads(mnist_body()), "outputs": [{"name": ["x"]}]}).encode(), {}, 400, "names a JSON array"),
    ("input twice", "POST", MNIST, b'{"inputs": [%s, %s]}' % ((json.dumps(json.loads(mnist_body())["inputs"][0]).encode(),) * 2), {}, 400, "given twice"),
    ("missing input", "POST", TYPED, json.dumps({"inputs": [json_tensor("in_FP32", np.zeros((1, 3), np.float32), "FP32")]}).encode(), {}, 400, "missing inputs"),
    ("wrong datatype", "POST", MNIST, mnist_body(datatype="FP64"), {}, 400, "datatype 'FP64'; the model expects FP32"),
    ("unknown datatype", "POST", MNIST, mnist_body(datatype="FLOAT"), {}, 400, "the model expects FP32"),
    ("wrong rank", "POST", MNIST, mnist_body(shape=[1, 784]), {}, 400, "the model expects [-1, 1, 28, 28]"),
    ("thousand dimensions", "POST", MNIST, mnist_body(shape=[1] * 1000), {}, 400, "has shape of 1000 dimensions"),
    ("wrong fixed dimension", "POST", MNIST, mnist_body(shape=[1, 1, 28, 27]), {}, 400, "has shape [1, 1, 28, 27]"),
    ("negative dimension", "POST", MNIST, mnist_body(shape=[-1, 1, 28, 28]), {}, 400, "non-negative integers; element 0 is -1"),
    ("float dimension", "POST", MNIST, mnist_body(shape=[1.0, 1, 28, 28]), {}, 400, "non-negative integers; element 0 is 1.0, not an integer"),
    ("boolean dimension", "POST", MNIST, mnist_body(shape=[True, 1, 28, 28]), {}, 400, "non-negative integers; element 0 is true, not an integer"),
    ("shape not a list", "POST", MNIST, mnist_body(shape="1x1x28x28"), {}, 400, "non-negative integers, got a JSON string '1x1x28x28'"),
    ("nested dimension", "POST", MNIST, mnist_body(shape=[1, [1], 28, 28]), {}, 400, "non-negative integers; element 1 is a JSON array"),
    ("string dimension", "POST", MNIST, mnist_body(shape=[1, 1, "28", 28]), {}, 400, "non-negative integers; element 2 is a JSON string '28'"),
    ("huge shape", "POST", MNIST, mnist_body(shape=[10**9, 1, 28, 28]), {}, 400, "needs 784000000000"),
    ("huge dimension", "POST", MNIST, mnist_body(shape=[10**12, 1, 28, 28]), {}, 400, "dimension over 2147483647"),
    ("huge empty shape", "POST", "/v2/models/adder/infer", json.dumps({"inputs": [
        {"name": n, "datatype": "FP32", "shape": [0, 10**19], "data": []} for n in ("a", "b")]}).encode(),
     {}, 400, "dimension over 2147483647"),
    ("too few values", "POST", MNIST, mnist_body(data=[0.0] * 783), {}, 400, "783 values"),
    ("ragged data", "POST", MNIST, mnist_body(data=[[0.0] * 783, [0.0]]), {}, 400, "not a regular"),
    ("strings as FP32", "POST", MNIST, mnist_body(data=["0.5"] * 784), {}, 400, "only numbers, got strings"),
    ("booleans as FP32", "POST", MNIST, mnist_body(data=[True] * 784), {}, 400, "only numbers, got booleans"),
    ("null in FP32", "POST", MNIST, mnist_body(data=[None] * 784), {}, 400, "only numbers"),
    ("FP32 overflow", "POST", MNIST, mnist_body(data=[1e300] * 784), {}, 400, "outside the FP32 range"),
    ("no data", "POST", MNIST, mnist_body(data=None), {}, 400, "needs 'data'"),
    ("data not a list", "POST", MNIST, mnist_body(data=0.5), {}, 400, "needs 'data'"),
    ("floats as INT64", "POST", TYPED, typed_body("INT64", data=[1.5, 2, 3]), {}, 400, "only integers"),
    ("INT8 out of range", "POST", TYPED, typed_body("INT8", data=[300, 0, 0]), {}, 400, "outside the INT8 range"),
    ("negative UINT8", "POST", TYPED, typed_body("UINT8", data=[-1, 0, 0]), {}, 400, "outside the UINT8 range"),
    ("UINT64 overflow", "POST", TYPED, typed_body("UINT64", data=[2**64, 0, 0]), {}, 400, "outside the UINT64 range"),
    ("integers as BOOL", "POST", TYPED, typed_body("BOOL", data=[1, 0, 1]), {}, 400, "only true/false"),
    ("numbers as BYTES", "POST", TYPED, typed_body("BYTES", data=[1, 2, 3]), {}, 400, "only strings"),
    ("inputs disagree with each other", "POST", "/v2/models/adder/infer", json.dumps({"inputs": [
        json_tensor("a", np.zeros((2, 3), np.float32), "FP32"), json_tensor("b", np.zeros((3, 3), np.float32), "FP32")]}).encode(),
     {}, 400, "could not run model 'adder' on these inputs"),
    ("id not a string", "POST", MNIST, json.dumps({**json.loads(mnist_body()), "id": 5}).encode(), {}, 400, "'id' must be a string"),
    ("parameters not an object", "POST", MNIST, json.dumps({**json.loads(mnist_body()), "parameters": [1]}).encode(), {}, 400, "must be a JSON object"),
    ("binary_data_output not boolean", "POST", MNIST, json.dumps({**json.loads(mnist_body()), "parameters": {"binary_data_output": "yes"}}).encode(), {}, 400, "must be true or false"),
    ("negative binary_data_size", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": -4}}, IMAGE_BYTES), 400, "non-negative integer"),
    ("string binary_data_size", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": "3136"}}, IMAGE_BYTES), 400, "non-negative integer"),
    ("boolean binary_data_size", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": True}}, IMAGE_BYTES), 400, "non-negative integer"),
    ("huge binary_data_size", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": 10**15}}, IMAGE_BYTES), 400, "only 3136 bytes"),
    ("binary_data_size disagrees with shape", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": 3132}}, IMAGE_BYTES[:-4]), 400, "needs 3136"),
    ("binary size and data", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": 3136}, "data": [0.0] * 784}, IMAGE_BYTES), 400, "both 'data' and binary_data_size"),
    ("bytes left over", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": 3136}}, IMAGE_BYTES, extra=b"\0" * 4), 400, "4 bytes after"),
    ("binary without header length", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": 3136}}, IMAGE_BYTES, header_length=None), 400, "needs Inference-Header-Content-Length"),
    ("header length not a number", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": 3136}}, IMAGE_BYTES, "abc"), 400, "non-negative integer, got 'abc'"),
    ("negative header length", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": 3136}}, IMAGE_BYTES, "-5"), 400, "non-negative integer"),
    ("zero header length", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": 3136}}, IMAGE_BYTES, "0"), 400, "between 1 and the body size"),
    ("huge header length", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": 3136}}, IMAGE_BYTES, str(10**15)), 400, "between 1 and the body size"),
    ("header length cuts the JSON", "POST", MNIST, *with_binary({"parameters": {"binary_data_size": 3136}}, IMAGE_BYTES, "20"), 400, "not valid JSON"),
    ("BYTES length cut short", "POST", TYPED, *typed_bytes_binary(b"\x01\x00", [1, 3]), 400, "ends inside an element's 4-byte length"),
    ("BYTES element too long", "POST", TYPED, *typed_bytes_binary(b"\xff\x00\x00\x00ab", [1, 3]), 400, "claims 255 bytes"),
    ("BYTES element not UTF-8", "POST", TYPED, *typed_bytes_binary(b"\x01\x00\x00\x00\xff" * 3, [1, 3]), 400, "not UTF-8"),
    ("BYTES element count", "POST", TYPED, *typed_bytes_binary(b"\x01\x00\x00\x00a", [1, 3]), 400, "holds 1 BYTES elements"),
    ("outputs not a list", "POST", MNIST, json.dumps({**json.loads(mnist_body()), "outputs": {"name": "probabilities"}}).encode(), {}, 400, "'outputs' must be a list"),
    ("unknown output", "POST", MNIST, json.dumps({**json.loads(mnist_body()), "outputs": [{"name": "logits"}]}).encode(), {}, 400, "the model's outputs are ['probabilities']"),
    ("output twice", "POST", MNIST, json.dumps({**json.loads(mnist_body()), "outputs": [{"name": "probabilities"}] * 2}).encode(), {}, 400, "requested twice"),
    ("binary_data not boolean", "POST", MNIST, json.dumps({**json.loads(mnist_body()), "outputs": [{"name": "probabilities", "parameters": {"binary_data": 1}}]}).encode(), {}, 400, "must be true or false"),
    ("negative classification", "POST", MNIST, json.dumps({**json.loads(mnist_body()), "outputs": [{"name": "probabilities", "parameters": {"classification": -1}}]}).encode(), {}, 400, "non-negative integer"),
    ("classification of BYTES", "POST", TYPED, json.dumps({**json.loads(typed_body("BYTES")), "outputs": [{"name": "out_BYTES", "parameters": {"classification": 1}}]}).encode(), {}, 400, "numeric output"),
    ("shared memory input", "POST", MNIST, mnist_body(parameters={"shared_memory_region": "r"}), {}, 400, "shared memory is not supported"),
    ("shared memory output", "POST", MNIST, json.dumps({**json.loads(mnist_body()), "outputs": [{"name": "probabilities", "parameters": {"shared_memory_region": "r"}}]}).encode(), {}, 400, "shared memory is not supported"),
    ("unknown Content-Encoding", "POST", MNIST, mnist_body(), {"Content-Encoding": "br"}, 415, "Content-Encoding 'br'"),
    ("corrupt gzip", "POST", MNIST, b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    ("truncated gzip", "POST", MNIST, gzip.compress(mnist_body())[:-12], {"Content-Encoding": "gzip"}, 400, "truncated gzip"),
    ("gzip bomb", "POST", MNIST, gzip.compress(b" " * (9 * 1024 * 1024)), {"Content-Encoding": "gzip"}, 413, "over the"),
    ("body over MAX_CONTENT_LENGTH", "POST", MNIST, b" " * (9 * 1024 * 1024), {}, 413, ""),
]


def check_error(status: int, headers, body: bytes, expected_status: int, fragment: str) -> None:
    assert status == expected_status, body[:300]
    assert headers["Content-Type"].startswith("application/json")
    message = json.loads(body)["error"]
    assert isinstance(message, str) and fragment in message
    assert "Traceback" not in message and "onnxruntime_src" not in message  # no internals


@pytest.mark.parametrize("method, path, body, headers, status, fragment",
                         [pytest.param(*case[1:], id=case[0]) for case in ERROR_CASES])
def test_client_errors_over_flask(v2_client, method, path, body, headers, status, fragment):
    response = v2_client.open(path, method=method, data=body, headers=headers)
    check_error(response.status_code, response.headers, response.data, status, fragment)


def test_wrong_method_lists_the_allowed_ones(v2_client):
    response = v2_client.get(MNIST)
    allowed = {method.strip() for method in response.headers["Allow"].split(",")}
    assert response.status_code == 405 and "POST" in allowed and "GET" not in allowed
    assert "error" in response.get_json()


def send_raw(server: LiveServer, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """Send the path byte for byte (no client-side normalisation of `..` or `%2F`) and read the answer,
    even when the server answers (413) and closes before the whole body is sent."""
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", f"Content-Length: {len(body)}",
            "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the answer is already on its way back
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.headers, response.read()


@pytest.mark.parametrize("method, path, body, headers, status, fragment",
                         [pytest.param(*case[1:], id=case[0]) for case in ERROR_CASES])
def test_client_errors_over_http(live, method, path, body, headers, status, fragment):
    check_error(*send_raw(live, method, path, body, headers), status, fragment)


def test_the_live_server_stays_healthy_after_every_error(live, repository):
    for _, method, path, body, headers, status, _ in ERROR_CASES:
        assert send_raw(live, method, path, body, headers)[0] == status
    assert send_raw(live, "GET", "/v2/health/ready")[0] == 200
    _, batch = classifier_input("mnist", rows=2)
    tensor, raw = binary_tensor("input", batch, "FP32")
    body, headers = binary_request({"inputs": [tensor], "parameters": {"binary_data_output": True}}, [raw])
    status, answer_headers, answer = send_raw(live, "POST", MNIST, body, headers)
    assert status == 200
    expected = run_directly(model_file(repository, "mnist", "2"), {"input": batch})["probabilities"]
    np.testing.assert_array_equal(decode_response(answer, answer_headers["Inference-Header-Content-Length"])["probabilities"], expected)
    assert "Traceback" not in live.log() and " 500 " not in live.log()


def test_json_round_trip_over_http(live, repository):
    input_name, batch = classifier_input("other", rows=2)
    body = json.dumps({"id": "g1", "inputs": [json_tensor(input_name, batch, "FP32", nested=True)]}).encode()
    status, headers, answer = send_raw(live, "POST", "/v2/models/other/infer", body)
    assert status == 200 and json.loads(answer)["id"] == "g1"
    expected = run_directly(model_file(repository, "other", "1"), {input_name: batch})["scores"]
    np.testing.assert_allclose(decode_response(answer, None)["scores"], expected, rtol=1e-6)


def test_unready_model_answers_503(tmp_path):
    repository = write_repository(tmp_path / "models")
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repository)}).test_client()
    for path in ("/v2/models/broken", "/v2/models/broken/versions/1"):
        check_error(*_flask(client.get(path)), 503, "not ready")
    response = client.get("/v2/models/broken/ready")
    assert (response.status_code, response.get_json()) == (503, {"name": "broken", "ready": False})
    check_error(*_flask(client.post("/v2/models/broken/infer", data=mnist_body())), 503, "not ready")
    assert client.get("/v2/models/mnist/ready").status_code == 200  # the others still serve


def _flask(response) -> tuple[int, dict, bytes]:
    return response.status_code, response.headers, response.data


FUZZ_SPECS = (TensorSpec("input", "FP32", (-1, 1, 2, 2)), TensorSpec("ids", "INT64", (-1, 3)),
              TensorSpec("flags", "BOOL", (2,)), TensorSpec("text", "BYTES", (-1,)),
              TensorSpec("half", "FP16", (-1,)), TensorSpec("big", "UINT64", (-1,)))
FUZZ_VALUES = {
    "FP32": st.floats(width=32), "FP16": st.floats(width=16), "INT64": st.integers(-2**63, 2**63 - 1),
    "UINT64": st.integers(0, 2**64 - 1), "BOOL": st.booleans(), "BYTES": st.text(max_size=3),
}
SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=4)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=12)


def maybe(strategy):
    """The well-formed `strategy` or, about as often, any JSON value in its place."""
    return strategy | JSON_VALUES


@st.composite
def fuzz_requests(draw) -> tuple[TensorSpec, dict, bytes]:
    """A model input and a request for it: well-formed at first, with any part possibly replaced."""
    spec = draw(st.sampled_from(FUZZ_SPECS))
    shape = [draw(st.integers(0, 3)) if dim < 0 else dim for dim in spec.shape]
    values = draw(st.lists(FUZZ_VALUES[spec.datatype], min_size=math.prod(shape), max_size=math.prod(shape)))
    tensor = {"name": draw(maybe(st.just(spec.name))), "datatype": draw(maybe(st.just(spec.datatype))),
              "shape": draw(maybe(st.just(shape)))}
    binary = b""
    if draw(st.booleans()):
        binary = binary_tensor(spec.name, np.array(values, dtype=NUMPY_TYPES[spec.datatype]).reshape(shape), spec.datatype)[1]
        tensor["parameters"] = draw(maybe(st.just({"binary_data_size": len(binary)})))
        binary = draw(st.just(binary) | st.binary(max_size=24))
    else:
        tensor["data"] = draw(maybe(st.just(values)))
    request = {"inputs": draw(maybe(st.just([tensor]))), "id": draw(maybe(st.just("r1"))),
               "parameters": draw(maybe(st.just({"binary_data_output": draw(st.booleans())}))),
               "outputs": draw(maybe(st.just([{"name": "probabilities", "parameters": {"classification": draw(st.integers(0, 3))}}])))}
    return spec, request, binary


@settings(max_examples=300, deadline=None)
@given(fuzz_requests())
def test_decoding_any_request_gives_arrays_or_a_client_error(case):
    """No request, however malformed, leaves the tensor functions as anything but a ServingError."""
    spec, request, binary = case
    text = json.dumps(request).encode()
    try:
        parsed, rest = tensors.split_body(text + binary, len(text) if binary else None)
        _, parameters = tensors.request_fields(parsed)
        arrays = tensors.decode_inputs(parsed, rest, [spec])
        for output in tensors.requested_outputs(parsed, parameters, [TensorSpec("probabilities", "FP32", (-1, 10))]):
            tensors.top_classes(np.ones((2, 10), np.float32), output.classification, None)
    except ServingError:
        return
    assert arrays[spec.name].shape == tuple(request["inputs"][0]["shape"])
    for binary_output in (False, True):
        tensors.encode_outputs({}, [(spec.name, arrays[spec.name], binary_output)])


# ---------------------------------------------------------------- the committed model


def test_only_models_git_tracks_count_as_committed(tmp_path):
    """A model exported into models/ after the clone (the README's `make export VERSION=1
    NAME=mnist-fast`) is not checked as a committed one."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    for name in ("mnist", "mnist-fast"):
        (tmp_path / "models" / name / "1").mkdir(parents=True)
        shutil.copyfile(COMMITTED_MNIST, tmp_path / "models" / name / "1" / "model.onnx")
    subprocess.run([*git, "add", "models/mnist"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "the model"], cwd=tmp_path, check=True)
    assert [(name, version) for name, version, _ in committed_digit_models(tmp_path)] == [("mnist", "1")]
    assert [path.parent.parent.name for path in sorted((tmp_path / "models").glob("*/*/model.onnx"))] == ["mnist", "mnist-fast"]


@needs_committed_model
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("name, version, path", [pytest.param(*m, id=f"{m[0]}/{m[1]}") for m in committed_digit_models()])
def test_committed_models_over_v2(name, version, path, binary):
    """Every committed digit model through v2, as onnxruntime computes it, and right on real digits."""
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(COMMITTED_REPOSITORY)}).test_client()
    images, labels = mnist_sample(50)
    if binary:
        tensor, raw = binary_tensor("input", images, "FP32")
        body, headers = binary_request({"inputs": [tensor], "parameters": {"binary_data_output": True}}, [raw])
    else:
        body, headers = json.dumps({"inputs": [json_tensor("input", images, "FP32", nested=True)]}).encode(), {}
    status, answer_headers, answer = post(client, f"/v2/models/{name}/versions/{version}/infer", body, headers)
    assert status == 200
    probabilities = decode_response(answer, answer_headers.get("Inference-Header-Content-Length"))["probabilities"]
    np.testing.assert_allclose(probabilities, run_directly(path, {"input": images})["probabilities"], rtol=1e-6, atol=1e-7)
    assert (probabilities.argmax(axis=1) == labels).sum() >= 49
