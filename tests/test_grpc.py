"""The v2 gRPC transport (server/grpc/) driven by the real `tritonclient.grpc` against a real server.

tritonclient sends every tensor in `raw_input_contents`; typed `contents` and malformed requests go
through the generated stub that ships with tritonclient (`tritonclient.grpc.service_pb2_grpc`).
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton
from onnx import TensorProto, helper
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from harness.loadgen import ClientThreads
from server.grpc.service import STATUS_CODES, peer_host, status_code
from tests.conftest import LiveServer, start_server, wait_until
from tests.onnx_factory import write_classifier
from tests.v2_repository import (
    DIGIT_LABELS, OTHER, V2_ONNX_TYPES, _save, run_directly, sample_values, write_identity, write_repository,
)

Code = grpc.StatusCode
TOKEN = "s3cret-token"
# Every datatype that has a typed contents field (FP16 travels only raw).
TYPED_CONTENTS = [datatype for datatype in V2_ONNX_TYPES if datatype != "FP16"]


def grpc_port(server: LiveServer) -> int:
    """The gRPC port tests/conftest.py gave the test server (each has its own)."""
    return int(server.env["GRPC_PORT"])


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """tests/v2_repository.py's models, and `typed_contents`: an identity of every TYPED_CONTENTS type."""
    root = write_repository(tmp_path_factory.mktemp("grpc") / "models")
    write_identity(root / "typed_contents" / "1" / "model.onnx", TYPED_CONTENTS)
    return root


@pytest.fixture(scope="module")
def served(repository: Path, module_servers):
    server = module_servers(repository)
    return server, grpc_port(server)


@pytest.fixture(scope="module")
def client(served):
    connection = triton.InferenceServerClient(url=f"127.0.0.1:{served[1]}")
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def channel(served):
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel):
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def infer_input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def digits(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 28, 28), dtype=np.float32)


def typed_input(name: str, array: np.ndarray, datatype: str) -> pb.ModelInferRequest.InferInputTensor:
    """An input with its values in the typed `contents` field the protocol names for its datatype."""
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=array.shape)
    field = {"BOOL": "bool", "INT8": "int", "INT16": "int", "INT32": "int", "INT64": "int64", "UINT8": "uint",
             "UINT16": "uint", "UINT32": "uint", "UINT64": "uint64", "FP32": "fp32", "FP64": "fp64", "BYTES": "bytes"}[datatype]
    values = [item.encode() for item in array.reshape(-1)] if datatype == "BYTES" else array.reshape(-1).tolist()
    getattr(tensor.contents, f"{field}_contents").extend(values)
    return tensor


def raw_output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    """An output of a stub's response, read from raw_output_contents as tritonclient reads it."""
    result = triton.InferResult(response)
    return result.as_numpy(name)


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()


# ----------------------------------------------------------------------------- health and metadata

def test_health_and_readiness(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist") and client.is_model_ready("mnist", "1") and client.is_model_ready("other")
    # As Triton: an unknown model, version or name is "not ready", not an error.
    assert not client.is_model_ready("nope") and not client.is_model_ready("mnist", "9")
    assert not client.is_model_ready("bad$name") and not client.is_model_ready("mnist", "x")


def test_server_metadata_is_the_http_one(client, served):
    metadata = client.get_server_metadata()
    http = requests.get(served[0].url + "/v2", timeout=5).json()
    assert (metadata.name, metadata.version, list(metadata.extensions)) == (http["name"], http["version"], http["extensions"])
    assert {"binary_tensor_data", "classification", "model_repository"} <= set(metadata.extensions)


@pytest.mark.parametrize("name, version", [("other", "1"), ("mnist", ""), ("typed", "")])
def test_model_metadata_is_the_http_one(client, served, name, version):
    metadata = client.get_model_metadata(name, version)
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "")
    http = requests.get(served[0].url + path, timeout=5).json()

    def tensors(entries) -> list[dict]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in entries]

    assert {"name": metadata.name, "versions": list(metadata.versions), "platform": metadata.platform,
            "inputs": tensors(metadata.inputs), "outputs": tensors(metadata.outputs)} == http


# ----------------------------------------------------------------------------- inference

def test_infer_raw_matches_onnxruntime(client, repository):
    batch = digits(3, seed=1)
    result = client.infer("mnist", [infer_input("input", batch, "FP32")], model_version="1", request_id="tc-1")
    expected = run_directly(repository / "mnist" / "1" / "model.onnx", {"input": batch})["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("tc-1", "mnist", "1")
    assert len(response.raw_output_contents) == 1  # outputs come back raw, as Triton sends them


def test_infer_typed_contents_matches_onnxruntime(stub, repository):
    batch = digits(2, seed=2)
    request = pb.ModelInferRequest(model_name="mnist", id="typed-1", inputs=[typed_input("input", batch, "FP32")])
    response = stub.ModelInfer(request)
    expected = run_directly(repository / "mnist" / "2" / "model.onnx", {"input": batch})["probabilities"]
    np.testing.assert_allclose(raw_output(response, "probabilities"), expected, rtol=1e-6, atol=1e-7)
    assert (response.id, response.model_version) == ("typed-1", "2")


def test_second_model_with_another_input_name_shape_and_classes(client, repository):
    pixels = np.random.default_rng(2).random((2, *OTHER["input_shape"][1:]), dtype=np.float32)
    result = client.infer("other", [infer_input("pixels", pixels, "FP32")])
    expected = run_directly(repository / "other" / "1" / "model.onnx", {"pixels": pixels})["scores"]
    np.testing.assert_allclose(result.as_numpy("scores"), expected, rtol=1e-6)


def test_every_datatype_raw(client):
    arrays = {datatype: sample_values(datatype, rows=2, seed=4) for datatype in V2_ONNX_TYPES}
    inputs = [infer_input(f"in_{dt}", array, dt) for dt, array in arrays.items()]
    result = client.infer("typed", inputs, outputs=[triton.InferRequestedOutput(f"out_{dt}") for dt in arrays])
    for datatype, array in arrays.items():
        got = result.as_numpy(f"out_{datatype}")
        if datatype == "BYTES":
            got = np.vectorize(lambda item: item.decode(), otypes=[object])(got)
        np.testing.assert_array_equal(got, array, err_msg=datatype)


def test_every_datatype_typed(stub):
    """Every datatype with a typed contents field (all but FP16, which only travels raw)."""
    arrays = {datatype: sample_values(datatype, rows=2, seed=5) for datatype in TYPED_CONTENTS}
    request = pb.ModelInferRequest(model_name="typed_contents", inputs=[typed_input(f"in_{dt}", a, dt) for dt, a in arrays.items()],
                                   outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=f"out_{dt}") for dt in arrays])
    response = stub.ModelInfer(request)
    for datatype, array in arrays.items():
        got = raw_output(response, f"out_{datatype}")
        if datatype == "BYTES":
            got = np.vectorize(lambda item: item.decode(), otypes=[object])(got)
        np.testing.assert_array_equal(got, array, err_msg=datatype)


def test_classification(client, repository):
    batch = digits(2, seed=6)
    result = client.infer("mnist", [infer_input("input", batch, "FP32")],
                          outputs=[triton.InferRequestedOutput("probabilities", class_count=3)])
    classes = result.as_numpy("probabilities")
    expected = run_directly(repository / "mnist" / "2" / "model.onnx", {"input": batch})["probabilities"]
    assert classes.shape == (2, 3)
    for row, entries in enumerate(classes):
        value, index, label = entries[0].decode().split(":")
        assert int(index) == expected[row].argmax() and label == DIGIT_LABELS[int(index)]
        assert float(value) == pytest.approx(expected[row].max(), abs=1e-6)


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_async_and_compressed_infer(client, repository, compression):
    batches = [digits(1, seed=seed) for seed in range(6)]
    answers, done = [], threading.Event()

    def collect(result, error):
        answers.append((result, error))
        if len(answers) == len(batches):
            done.set()

    for batch in batches:
        client.async_infer("mnist", [infer_input("input", batch, "FP32")], collect, compression_algorithm=compression)
    assert done.wait(30)
    model = repository / "mnist" / "2" / "model.onnx"
    got = sorted((result.as_numpy("probabilities").tobytes() for result, error in answers if error is None))
    want = sorted(run_directly(model, {"input": batch})["probabilities"].tobytes() for batch in batches)
    assert len(got) == len(batches)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.frombuffer(a, np.float32), np.frombuffer(b, np.float32), rtol=1e-6)


# ----------------------------------------------------------------------------- errors

ZEROS = np.zeros((1, 1, 28, 28), np.float32)


@pytest.mark.parametrize("call, code, fragment", [
    (lambda c: c.infer("mnist", [infer_input("input", np.zeros((1, 1, 28, 27), np.float32), "FP32")]), Code.INVALID_ARGUMENT, "the model expects [-1, 1, 28, 28]"),
    (lambda c: c.infer("mnist", [infer_input("input", ZEROS.astype(np.float64), "FP64")]), Code.INVALID_ARGUMENT, "the model expects FP32"),
    (lambda c: c.infer("mnist", [infer_input("image", ZEROS, "FP32")]), Code.INVALID_ARGUMENT, "the model's inputs are ['input']"),
    (lambda c: c.infer("mnist", [infer_input("input", ZEROS, "FP32")], outputs=[triton.InferRequestedOutput("logits")]), Code.INVALID_ARGUMENT, "the model's outputs are ['probabilities']"),
    (lambda c: c.infer("adder", [infer_input("a", np.zeros((2, 3), np.float32), "FP32"), infer_input("b", np.zeros((3, 3), np.float32), "FP32")]), Code.INVALID_ARGUMENT, "onnxruntime could not run model 'adder'"),
    (lambda c: c.infer("nope", [infer_input("input", ZEROS, "FP32")]), Code.NOT_FOUND, "unknown model 'nope'"),
    (lambda c: c.infer("mnist", [infer_input("input", ZEROS, "FP32")], model_version="9"), Code.NOT_FOUND, "no version '9'"),
    (lambda c: c.get_model_metadata("nope"), Code.NOT_FOUND, "unknown model"),
], ids=["shape", "datatype", "input name", "output name", "run-time shapes", "model", "version", "metadata"])
def test_errors_reach_the_client(client, call, code, fragment):
    with pytest.raises(InferenceServerException) as raised:
        call(client)
    assert raised.value.status() == str(code) and fragment in raised.value.message(), raised.value.message()
    assert client.is_server_ready()


def one_input(**fields) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(**{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], **fields})


RAW_DIGIT = ZEROS.tobytes()
BAD_REQUESTS = [
    ("no inputs", pb.ModelInferRequest(model_name="mnist"), "'inputs' must be a non-empty list"),
    ("raw count", pb.ModelInferRequest(model_name="mnist", inputs=[one_input()], raw_input_contents=[RAW_DIGIT, RAW_DIGIT]),
     "raw_input_contents holds 2 tensors but the request has 1 inputs"),
    ("raw and typed", pb.ModelInferRequest(model_name="mnist", inputs=[one_input(contents=pb.InferTensorContents(fp32_contents=[0.0] * 784))],
                                           raw_input_contents=[RAW_DIGIT]), "both contents and raw_input_contents"),
    ("raw size", pb.ModelInferRequest(model_name="mnist", inputs=[one_input()], raw_input_contents=[RAW_DIGIT[:-4]]),
     "binary_data_size is 3132 bytes but shape [1, 1, 28, 28] of FP32 needs 3136"),
    ("typed count", pb.ModelInferRequest(model_name="mnist", inputs=[one_input(contents=pb.InferTensorContents(fp32_contents=[0.0] * 783))]),
     "needs 3136"),
    ("wrong field", pb.ModelInferRequest(model_name="mnist", inputs=[one_input(contents=pb.InferTensorContents(int_contents=[0] * 784))]),
     "its values go in contents.fp32_contents, not int_contents"),
    ("no data", pb.ModelInferRequest(model_name="mnist", inputs=[one_input()]), "needs 3136"),
    ("negative shape", pb.ModelInferRequest(model_name="mnist", inputs=[one_input(shape=[-1, 1, 28, 28])], raw_input_contents=[RAW_DIGIT]),
     "shape must be a list of non-negative integers; element 0 is -1"),
    ("huge shape", pb.ModelInferRequest(model_name="mnist", inputs=[one_input(shape=[2**62, 1, 28, 28])], raw_input_contents=[RAW_DIGIT]),
     "has a dimension over"),
    ("twice", pb.ModelInferRequest(model_name="mnist", inputs=[one_input(), one_input()], raw_input_contents=[RAW_DIGIT, RAW_DIGIT]),
     "given twice"),
    ("unknown datatype", pb.ModelInferRequest(model_name="mnist", inputs=[one_input(datatype="FP8")], raw_input_contents=[RAW_DIGIT]),
     "has datatype 'FP8'; the model expects FP32"),
    ("FP16 typed", pb.ModelInferRequest(model_name="typed", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="in_FP16", datatype="FP16", shape=[1, 3], contents=pb.InferTensorContents(fp32_contents=[1.0, 2.0, 3.0]))]),
     "no typed contents field: send its data in raw_input_contents"),
    ("INT8 range", pb.ModelInferRequest(model_name="typed_contents", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="in_INT8", datatype="INT8", shape=[1, 3], contents=pb.InferTensorContents(int_contents=[1, 200, 3]))]),
     "outside the INT8 range [-128, 127]"),
    ("UINT16 range", pb.ModelInferRequest(model_name="typed_contents", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="in_UINT16", datatype="UINT16", shape=[1, 3], contents=pb.InferTensorContents(uint_contents=[1, 70000, 2]))]),
     "outside the UINT16 range"),
    ("BYTES not UTF-8", pb.ModelInferRequest(model_name="typed_contents", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="in_BYTES", datatype="BYTES", shape=[1, 3], contents=pb.InferTensorContents(bytes_contents=[b"a", b"\xff\xfe", b"c"]))]),
     "not UTF-8"),
    ("BYTES raw truncated", pb.ModelInferRequest(model_name="typed_contents", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="in_BYTES", datatype="BYTES", shape=[1, 3])], raw_input_contents=[b"\x09\x00\x00\x00abc"]), "claims 9 bytes"),
    ("shared memory", pb.ModelInferRequest(model_name="mnist", inputs=[one_input(parameters={
        "shared_memory_region": pb.InferParameter(string_param="r")})], raw_input_contents=[RAW_DIGIT]), "shared memory is not supported"),
    ("classification", pb.ModelInferRequest(model_name="mnist", inputs=[one_input()], raw_input_contents=[RAW_DIGIT], outputs=[
        pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities", parameters={
            "classification": pb.InferParameter(string_param="three")})]), "classification must be a non-negative integer"),
    ("output twice", pb.ModelInferRequest(model_name="mnist", inputs=[one_input()], raw_input_contents=[RAW_DIGIT], outputs=[
        pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")] * 2), "requested twice"),
]


@pytest.mark.parametrize("request_message, fragment", [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_are_invalid_argument(stub, request_message, fragment):
    code, details = status_of(lambda: stub.ModelInfer(request_message))
    assert code == Code.INVALID_ARGUMENT and fragment in details, details


def test_bytes_that_are_no_message_are_invalid_argument_and_unknown_calls_unimplemented(channel, stub, served):
    garbage = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
    code, details = status_of(lambda: garbage(b"\xff\xff\xff\xff not protobuf"))
    assert code == Code.INVALID_ARGUMENT and "not a valid inference.ModelInferRequest message" in details
    code, _ = status_of(lambda: stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()))
    assert code == Code.UNIMPLEMENTED
    # Nothing above crashed or replaced the worker.
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    log = served[0].log()
    assert log.count("Spawning worker") == 1 and "Traceback" not in log


def test_status_codes_follow_the_http_statuses():
    assert [status_code(s) for s in (400, 401, 403, 404, 413, 415, 422, 503, 500, 418)] == [
        Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED, Code.PERMISSION_DENIED, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED,
        Code.INVALID_ARGUMENT, Code.INVALID_ARGUMENT, Code.UNAVAILABLE, Code.INTERNAL, Code.INVALID_ARGUMENT]
    assert set(STATUS_CODES) >= {400, 401, 403, 404, 413, 503}


@pytest.mark.parametrize("peer, host", [
    ("ipv4:127.0.0.1:5000", "127.0.0.1"), ("ipv6:%5B::1%5D:5000", "::1"), ("ipv6:[::1]:5000", "::1"),
    ("unix:/run/x.sock", "localhost"), ("ipv4:203.0.113.9:1", "203.0.113.9"),
])
def test_peer_addresses(peer, host):
    assert peer_host(peer) == host


# ----------------------------------------------------------------------------- security and limits

def test_token_limits_and_metrics(repository):
    """API_TOKEN as `authorization: Bearer` metadata; messages over MAX_CONTENT_LENGTH refused;
    calls counted in /metrics with transport="grpc"."""
    server = start_server(repository, {"API_TOKEN": TOKEN, "MAX_CONTENT_LENGTH": 100_000})
    port = grpc_port(server)
    connection = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    token = {"authorization": f"Bearer {TOKEN}"}
    try:
        assert connection.is_server_live() and connection.is_server_ready()  # health needs no token
        for call in (lambda: connection.infer("mnist", [infer_input("input", digits(1), "FP32")]),
                     lambda: connection.is_model_ready("mnist"),
                     lambda: connection.get_model_repository_index(),
                     lambda: connection.infer("mnist", [infer_input("input", digits(1), "FP32")], headers={"authorization": "Bearer wrong"})):
            with pytest.raises(InferenceServerException) as raised:
                call()
            assert raised.value.status() == str(Code.UNAUTHENTICATED) and "bearer token" in raised.value.message()
        assert connection.is_model_ready("mnist", headers=token)
        assert connection.infer("mnist", [infer_input("input", digits(1), "FP32")], headers=token).as_numpy("probabilities").shape == (1, 10)
        # 31 digits are 97,216 bytes of tensor data: under the limit with the message around them; 32 are over.
        assert connection.infer("mnist", [infer_input("input", digits(31), "FP32")], headers=token).as_numpy("probabilities").shape == (31, 10)
        with pytest.raises(InferenceServerException) as raised:
            connection.infer("mnist", [infer_input("input", digits(32), "FP32")], headers=token)
        assert raised.value.status() == str(Code.RESOURCE_EXHAUSTED)
        # The limit holds for the message as it is once decompressed, not as it travels.
        zeros = np.zeros((32, 1, 28, 28), np.float32)
        with pytest.raises(InferenceServerException) as raised:
            connection.infer("mnist", [infer_input("input", zeros, "FP32")], headers=token, compression_algorithm="gzip")
        assert raised.value.status() == str(Code.RESOURCE_EXHAUSTED)
        assert connection.is_server_ready()
        # The call's log line carries the client's x-request-id, or a fresh one for one that could forge lines.
        connection.is_model_ready("mnist", headers={**token, "x-request-id": "grpc-call-7"})
        connection.is_model_ready("mnist", headers={**token, "x-request-id": "a b"})
        assert wait_until(lambda: "GRPC ModelReady OK" in server.log() and "id=grpc-call-7" in server.log(), timeout=10)
        assert "id=a b" not in server.log()

        page = requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).text
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for family in text_string_to_metric_families(page) for s in family.samples}

        def count(method: str, status: str) -> float:
            labels = {"route": f"/inference.GRPCInferenceService/{method}", "method": "POST", "status": status, "transport": "grpc"}
            return samples.get(("http_requests_total", frozenset(labels.items())), 0.0)

        assert count("ModelInfer", "OK") == 2 and count("ModelInfer", "UNAUTHENTICATED") == 2
        assert count("ServerLive", "OK") == 1 and count("ModelReady", "UNAUTHENTICATED") == 1
        assert count("ModelReady", "OK") == 3
        assert TOKEN not in server.log()
    finally:
        connection.close()
        server.stop()


# ----------------------------------------------------------------------------- the repository extension

@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_classifier(root / "mnist" / "1" / "model.onnx", labels=DIGIT_LABELS, seed=1)
    return root


def add_version(repo: Path, version: str, seed: int) -> None:
    staging = repo.parent / f"staging-{version}"
    write_classifier(staging / "model.onnx", labels=DIGIT_LABELS, seed=seed)
    os.rename(staging, repo / "mnist" / version)


def served_version(client: triton.InferenceServerClient, version: str = "") -> str:
    return client.infer("mnist", [infer_input("input", ZEROS, "FP32")], model_version=version).get_response().model_version


def index(client) -> list[tuple[str, str, str, str]]:
    return [(m.name, m.version, m.state, m.reason) for m in client.get_model_repository_index().models]


@pytest.mark.slow
def test_repository_calls_behave_as_the_http_ones(repo, live_server_factory):
    """The expectations of tests/test_lifecycle.py's HTTP tests, over gRPC."""
    server = live_server_factory(repo)
    port = grpc_port(server)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        add_version(repo, "2", seed=2)
        client.load_model("mnist")
        assert served_version(client) == "2" and served_version(client, "1") == "1"
        assert index(client) == [("mnist", "1", "READY", ""), ("mnist", "2", "READY", "")]
        # A corrupt new version: rejected, the others keep serving, the index says why.
        (repo / "mnist" / "3").mkdir()
        (repo / "mnist" / "3" / "model.onnx").write_bytes(b"\x08\x07not an onnx graph" * 64)
        with pytest.raises(InferenceServerException) as raised:
            client.load_model("mnist")
        assert raised.value.status() == str(Code.INVALID_ARGUMENT)
        assert "version 3" in raised.value.message() and "serving versions: 1, 2" in raised.value.message()
        rows = index(client)
        assert [row[:3] for row in rows] == [("mnist", "1", "READY"), ("mnist", "2", "READY"), ("mnist", "3", "UNAVAILABLE")]
        assert "Protobuf parsing failed" in rows[2][3]
        ready_only = client._client_stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
        assert [(m.version, m.state) for m in ready_only.models] == [("1", "READY"), ("2", "READY")]
        assert served_version(client) == "2" and client.is_server_ready()
        # Unload, then load again; HTTP sees what gRPC did.
        client.unload_model("mnist")
        assert not client.is_model_ready("mnist")
        with pytest.raises(InferenceServerException) as raised:
            served_version(client)
        assert raised.value.status() == str(Code.UNAVAILABLE) and "unloaded" in raised.value.message()
        assert requests.post(server.url + "/v2/models/mnist/infer", json={"inputs": [
            {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}, timeout=10).status_code == 503
        assert {row[3] for row in index(client)} == {"unloaded"}
        shutil_remove(repo / "mnist" / "3")
        client.load_model("mnist")
        assert served_version(client) == "2"
    finally:
        client.close()


def shutil_remove(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


REPOSITORY_ERRORS = [
    ("load unknown", lambda s: s.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nosuch")), Code.NOT_FOUND, "no model 'nosuch'"),
    ("unload unknown", lambda s: s.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="nosuch")), Code.NOT_FOUND, "unknown model 'nosuch'"),
    ("bad name", lambda s: s.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="bad$name")), Code.NOT_FOUND, "names are letters"),
    ("empty name", lambda s: s.RepositoryModelLoad(pb.RepositoryModelLoadRequest()), Code.NOT_FOUND, "names are letters"),
    ("load config", lambda s: s.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist", parameters={
        "config": pb.ModelRepositoryParameter(string_param="{}")})), Code.INVALID_ARGUMENT, "not supported"),
    ("unload force", lambda s: s.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mnist", parameters={
        "force": pb.ModelRepositoryParameter(bool_param=True)})), Code.INVALID_ARGUMENT, "not supported"),
    ("other repository", lambda s: s.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="elsewhere")), Code.INVALID_ARGUMENT, "one repository"),
    ("proxied load", lambda s: s.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist"), metadata=[("x-forwarded-for", "203.0.113.9")]),
     Code.PERMISSION_DENIED, "API_TOKEN"),
]


@pytest.mark.parametrize("call, code, fragment", [case[1:] for case in REPOSITORY_ERRORS], ids=[case[0] for case in REPOSITORY_ERRORS])
def test_repository_errors(stub, call, code, fragment):
    got, details = status_of(lambda: call(stub))
    assert got == code and fragment in details, details


def test_unload_with_unload_dependents_and_load_with_the_token_over_the_network_rule(repo, live_server_factory):
    port = grpc_port(live_server_factory(repo, API_TOKEN=TOKEN))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as opened:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(opened)
        token = [("authorization", f"Bearer {TOKEN}")]
        code, _ = status_of(lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mnist")))
        assert code == Code.UNAUTHENTICATED
        # With the token, proxy metadata does not matter (as over HTTP).
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mnist", parameters={
            "unload_dependents": pb.ModelRepositoryParameter(bool_param=False)}), metadata=token + [("x-forwarded-for", "203.0.113.9")])
        assert not stub.ModelReady(pb.ModelReadyRequest(name="mnist"), metadata=token).ready
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist"), metadata=token)
        assert stub.ModelReady(pb.ModelReadyRequest(name="mnist"), metadata=token).ready


# ----------------------------------------------------------------------------- the process model

def write_slow_model(path: Path, steps: int = 12, side: int = 1024) -> Path:
    """x [N, side] multiplied `steps` times by one [side, side] matrix: a run long enough to be in flight."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [side, side], (np.eye(side, dtype=np.float32) * 0.5).reshape(-1).tolist())
    nodes, name = [], "x"
    for step in range(steps):
        nodes.append(helper.make_node("MatMul", [name, "w"], [f"h{step}"]))
        name = f"h{step}"
    nodes.append(helper.make_node("Identity", [name], ["y"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", side])], initializer=[weight])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


class GrpcTraffic(ClientThreads):
    """Threads, each with its own channel (so connections spread over workers), sending inferences."""

    def __init__(self, port: int, threads: int = 6, limit_seconds: float = 40.0) -> None:
        super().__init__(threads)
        self.port, self.deadline = port, time.monotonic() + limit_seconds
        self.answers: list[str] = []
        self.errors: list[str] = []

    def client(self) -> None:
        connection = triton.InferenceServerClient(url=f"127.0.0.1:{self.port}")
        try:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                try:
                    result = connection.infer("mnist", [infer_input("input", ZEROS, "FP32")], client_timeout=20)
                    self.answers.append(result.get_response().model_version)
                except InferenceServerException as err:
                    self.errors.append(f"{err.status()} {err.message()}")
        finally:
            connection.close()


@pytest.mark.slow
def test_hup_reload_under_grpc_load_loses_no_call(repo, live_server_factory):
    """Two workers, each listening on the gRPC port; two HUPs replace them all while six clients call."""
    server = live_server_factory(repo, WORKERS=2)
    port = grpc_port(server)
    assert wait_until(lambda: server.log().count("gRPC (inference.GRPCInferenceService) listening") == 2), server.log()
    with GrpcTraffic(port) as traffic:
        for round_ in (1, 2):
            answered = len(traffic.answers)
            assert wait_until(lambda: len(traffic.answers) >= answered + 50), traffic.errors[:5]
            booted = server.log().count("gRPC (inference.GRPCInferenceService) listening")
            os.kill(server.process.pid, signal.SIGHUP)
            assert wait_until(lambda: server.log().count("gRPC (inference.GRPCInferenceService) listening") == booted + 2), server.log()[-4000:]
            assert wait_until(lambda: server.log().count("gRPC stopped") == 2 * round_), server.log()[-4000:]
        answered = len(traffic.answers)
        assert wait_until(lambda: len(traffic.answers) >= answered + 50), traffic.errors[:5]  # the new workers answer
    assert traffic.errors == [], traffic.errors[:5]
    assert len(traffic.answers) > 150 and set(traffic.answers) == {"1"}
    assert "Traceback" not in server.log()


@pytest.mark.slow
def test_term_lets_a_call_in_flight_finish(tmp_path, live_server_factory):
    repo = tmp_path / "models"
    write_slow_model(repo / "slow" / "1" / "model.onnx")
    server = live_server_factory(repo)
    port = grpc_port(server)
    connection = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    x = np.ones((256, 1024), np.float32)
    started = time.monotonic()
    connection.infer("slow", [infer_input("x", x, "FP32")])
    run_seconds = time.monotonic() - started
    answers: list = []
    caller = threading.Thread(target=lambda: answers.append(connection.infer("slow", [infer_input("x", x, "FP32")]).as_numpy("y")))
    caller.start()
    time.sleep(min(0.3, run_seconds / 3))  # the call is in the worker now
    server.process.send_signal(signal.SIGTERM)
    caller.join(timeout=30)
    try:
        assert len(answers) == 1, server.log()[-3000:]
        np.testing.assert_allclose(answers[0], x * 0.5 ** 12)
        assert server.process.wait(timeout=30) == 0
        # Once stopped, the port is closed: a new call is refused, not left hanging.
        with pytest.raises(InferenceServerException) as raised:
            connection.is_server_live(client_timeout=5)
        assert raised.value.status() in (str(Code.UNAVAILABLE), str(Code.DEADLINE_EXCEEDED))
    finally:
        connection.close()
    assert re.search(r"Stopping worker-1\n.*gRPC stopped", server.log(), re.S)


def test_a_clean_stop_logs_no_grpc_error(repo, live_server_factory):
    """SIGTERM after a client called: the worker drains its gRPC server, and gRPC logs no error line
    (E<date> ...: closing the listener under it logged "Failed accept4" on every clean stop)."""
    server = live_server_factory(repo)
    connection = triton.InferenceServerClient(url=f"127.0.0.1:{grpc_port(server)}")
    try:
        assert connection.is_server_live()
    finally:
        connection.close()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    log = server.log()
    assert "gRPC stopped" in log and not re.findall(r"^[EF]\d{4} .*", log, re.M), log[-3000:]


def test_grpc_port_zero_serves_no_grpc(repo, live_server_factory):
    server = live_server_factory(repo, GRPC_PORT=0)
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
    assert "gRPC" not in server.log()  # a worker that serves it logs where it listens


def test_a_taken_grpc_port_stops_the_server_with_one_clear_line(repo):
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RuntimeError, match="exited with") as raised:
            start_server(repo, {"GRPC_PORT": taken.getsockname()[1]})
    assert "cannot listen for gRPC on 127.0.0.1:" in str(raised.value) and "GRPC_PORT" in str(raised.value)


def test_a_second_server_on_the_same_grpc_port_stops_and_the_first_keeps_it(repo, live_server_factory, tmp_path):
    """Our workers' gRPC sockets set SO_REUSEPORT, which any process of the same user may join: a
    second server (another PORT, the same GRPC_PORT) must refuse to start, not share the port."""
    first = live_server_factory(repo)
    port = grpc_port(first)
    try:
        second = start_server(repo, {"GRPC_PORT": port, "TMPDIR": tmp_path})
    except RuntimeError as refused:
        log = str(refused)
    else:
        second.stop()
        pytest.fail(f"a second server started on the first's gRPC port {port}")
    assert "exited with 1" in log, log
    assert f"error: cannot listen for gRPC on 127.0.0.1:{port} (" in log and "GRPC_PORT" in log, log
    assert "Traceback" not in log and "Spawning worker" not in log, log
    assert not list(tmp_path.glob("mnist-serve-*"))  # a failed start leaves no folder behind
    connection = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        assert connection.is_model_ready("mnist")  # the first server still answers there
    finally:
        connection.close()


# ----------------------------------------------------------------------------- the benchmark's load generator

@pytest.mark.slow
def test_the_benchmark_load_reaches_both_transports(served):
    """harness/streams.py (bench/grpc_http.py's load) gets answers from both transports (a short run, not a measurement).

    Each stream sends at least 3 requests whatever the time: on a loaded machine a stream may start
    after its half second is over (it once sent none)."""
    from harness.streams import load

    server, port = served
    for transport, target in (("http", server.port), ("grpc", port)):
        result = load(transport, target, streams=2, seconds=0.5, least=3)
        assert result["requests"] >= 2 * 3 and result["errors"] == 0, result


def test_kserve_shaped_load_and_unload(repo, live_server_factory):
    """KServe's grpc_predict_v2.proto puts the model name in field 1 of RepositoryModelLoad/Unload
    (Triton's repository_name) and answers model_name (1) and isLoaded/isUnloaded (2)."""
    port = grpc_port(live_server_factory(repo))
    kserve_request = b"\x0a\x05mnist"  # KServe's RepositoryModelLoadRequest(model_name="mnist")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as opened:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(opened)
        for method, ready in (("RepositoryModelUnload", False), ("RepositoryModelLoad", True)):
            answer = opened.unary_unary(f"/inference.GRPCInferenceService/{method}")(kserve_request)
            assert answer == b"\x0a\x05mnist\x10\x01"
            assert stub.ModelReady(pb.ModelReadyRequest(name="mnist")).ready is ready
        # Triton's message with a repository name beside the model is still refused.
        code, details = status_of(lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(repository_name="x", model_name="mnist")))
        assert code == Code.INVALID_ARGUMENT and "one repository" in details


def test_the_messages_come_from_the_committed_proto_and_stay_out_of_the_default_pool():
    """server/grpc/schema.py builds every message of server/proto/grpc_service.proto in a pool of its
    own, beside the copies tritonclient.grpc (imported here) put in protobuf's default pool."""
    from google.protobuf import descriptor_pool

    from server.grpc import schema

    proto = (schema.DESCRIPTOR_SET.parent / "grpc_service.proto").read_text()
    declared = set(re.findall(r"^message (\w+)", proto, flags=re.MULTILINE))
    compiled = set(schema.ModelInferRequest.DESCRIPTOR.file.message_types_by_name)
    assert declared == compiled and "ModelInferRequest" in compiled
    assert schema.ModelInferRequest.DESCRIPTOR.file.pool is not descriptor_pool.Default()
    assert descriptor_pool.Default().FindMessageTypeByName("inference.ModelInferRequest")  # tritonclient's
    # The two agree on the wire: a request written by one is read by the other.
    ours = schema.ModelInferRequest(model_name="m", id="7", raw_input_contents=[b"\x01\x02"],
                                    inputs=[schema.ModelInferRequest.InferInputTensor(name="x", datatype="UINT8", shape=[2])])
    theirs = pb.ModelInferRequest.FromString(ours.SerializeToString())
    assert (theirs.model_name, theirs.id, theirs.inputs[0].name, list(theirs.inputs[0].shape)) == ("m", "7", "x", [2])


def test_tensors_v2_cannot_carry_are_left_out_as_over_http(tmp_path, live_server_factory):
    """skl2onnx's ZipMap output (a sequence of maps): left out of the metadata, refused by name."""
    from tests.converted_models import sklearn_classifier

    repo = tmp_path / "models"
    features = sklearn_classifier(repo, "sk-zipmap", zipmap=True)["X"]
    port = grpc_port(live_server_factory(repo))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as opened:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(opened)
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="sk-zipmap"))
        assert [t.name for t in metadata.outputs] == ["output_label"]
        inputs = [pb.ModelInferRequest.InferInputTensor(name="X", datatype="FP32", shape=features.shape)]
        answer = stub.ModelInfer(pb.ModelInferRequest(model_name="sk-zipmap", inputs=inputs, raw_input_contents=[features.tobytes()]))
        assert [t.name for t in answer.outputs] == ["output_label"] and raw_output(answer, "output_label").shape == (len(features),)
        code, details = status_of(lambda: stub.ModelInfer(pb.ModelInferRequest(
            model_name="sk-zipmap", inputs=inputs, raw_input_contents=[features.tobytes()],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="output_probability")])))
        assert code == Code.INVALID_ARGUMENT and "seq(map(int64,tensor(float)))" in details and "cannot carry" in details


def test_inference_holds_the_workers_memory_budget_as_over_http(repo, live_server_factory):
    """A message whose parsing would need more than MEMORY_BUDGET is refused before it is decoded,
    with the HTTP side's 413 as RESOURCE_EXHAUSTED, and the worker keeps serving."""
    server = live_server_factory(repo, MEMORY_BUDGET=16 * 2**20)
    connection = triton.InferenceServerClient(url=f"127.0.0.1:{grpc_port(server)}")
    try:
        with pytest.raises(InferenceServerException) as raised:
            connection.infer("mnist", [infer_input("input", digits(700), "FP32")])  # 2.2 MB: ~30 MiB to parse
        assert raised.value.status() == str(Code.RESOURCE_EXHAUSTED) and "MEMORY_BUDGET" in raised.value.message()
        assert connection.infer("mnist", [infer_input("input", digits(2), "FP32")]).as_numpy("probabilities").shape == (2, 10)
        over_http = requests.post(server.url + "/v2/models/mnist/infer", data=b"x" * (2200 * 1024), timeout=10)
        assert over_http.status_code == 413 and "MEMORY_BUDGET" in over_http.json()["error"]
    finally:
        connection.close()
