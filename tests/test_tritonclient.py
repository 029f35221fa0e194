"""The real `tritonclient[http]` client against a real server: the server speaks Triton's REST dialect."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.v2_repository import (
    COMMITTED_MNIST, COMMITTED_REPOSITORY, DIGIT_LABELS, OTHER, V2_ONNX_TYPES, committed_digit_models, mnist_sample,
    run_directly, sample_values, write_repository,
)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return write_repository(tmp_path_factory.mktemp("triton") / "models")


@pytest.fixture(scope="module")
def client(module_servers, repository: Path):
    server = module_servers(repository)
    connection = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", concurrency=4)
    yield connection
    connection.close()


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def digits(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 28, 28), dtype=np.float32)


def test_health_and_readiness(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist") and client.is_model_ready("mnist", "1") and client.is_model_ready("other")
    assert not client.is_model_ready("nope") and not client.is_model_ready("mnist", "9")


def test_server_metadata(client):
    metadata = client.get_server_metadata()
    assert metadata["name"] and metadata["version"] and "binary_tensor_data" in metadata["extensions"]


def test_model_metadata(client):
    assert client.get_model_metadata("other", "1") == {
        "name": "other", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 8, 8]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 5]}],
    }
    metadata = client.get_model_metadata("mnist")
    assert metadata["versions"] == ["1", "2"] and metadata["inputs"][0]["name"] == "input"


@pytest.mark.parametrize("input_binary", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("output_binary", [True, False, None], ids=["binary-out", "json-out", "default-out"])
def test_infer_matches_onnxruntime(client, repository, input_binary, output_binary):
    batch = digits(3, seed=1)
    outputs = None if output_binary is None else [triton.InferRequestedOutput("probabilities", binary_data=output_binary)]
    result = client.infer("mnist", [infer_input("input", batch, "FP32", input_binary)], model_version="1",
                          outputs=outputs, request_id="tc-1")
    expected = run_directly(repository / "mnist" / "1" / "model.onnx", {"input": batch})["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == ("tc-1", "mnist", "1")
    binary = output_binary is not False  # tritonclient asks for binary_data_output when outputs is None
    assert ("parameters" in response["outputs"][0]) == binary and ("data" in response["outputs"][0]) == (not binary)


def test_second_model_with_another_input_name_shape_and_classes(client, repository):
    pixels = np.random.default_rng(2).random((2, *OTHER["input_shape"][1:]), dtype=np.float32)
    result = client.infer("other", [infer_input("pixels", pixels, "FP32", True)])
    expected = run_directly(repository / "other" / "1" / "model.onnx", {"pixels": pixels})["scores"]
    assert result.as_numpy("scores").shape == (2, OTHER["num_classes"])
    np.testing.assert_allclose(result.as_numpy("scores"), expected, rtol=1e-6)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype(client, binary):
    arrays = {datatype: sample_values(datatype, rows=2, seed=4) for datatype in V2_ONNX_TYPES}
    inputs = [infer_input(f"in_{dt}", array, dt, binary) for dt, array in arrays.items()]
    outputs = [triton.InferRequestedOutput(f"out_{dt}", binary_data=binary) for dt in arrays]
    result = client.infer("typed", inputs, outputs=outputs)
    for datatype, array in arrays.items():
        got = result.as_numpy(f"out_{datatype}")
        if datatype == "BYTES":  # binary BYTES arrive as bytes, JSON ones as str
            got = np.vectorize(lambda item: item.decode() if isinstance(item, bytes) else item, otypes=[object])(got)
        np.testing.assert_array_equal(got, array, err_msg=datatype)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client, repository, algorithm):
    batch = digits(2, seed=5)
    result = client.infer("mnist", [infer_input("input", batch, "FP32", True)],
                          request_compression_algorithm=algorithm, response_compression_algorithm=algorithm)
    expected = run_directly(repository / "mnist" / "2" / "model.onnx", {"input": batch})["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6)


def test_classification(client, repository):
    batch = digits(2, seed=6)
    result = client.infer("mnist", [infer_input("input", batch, "FP32", True)],
                          outputs=[triton.InferRequestedOutput("probabilities", class_count=3)])
    classes = result.as_numpy("probabilities")
    expected = run_directly(repository / "mnist" / "2" / "model.onnx", {"input": batch})["probabilities"]
    assert classes.shape == (2, 3)
    for row, entries in enumerate(classes):
        value, index, label = entries[0].decode().split(":")  # the way Triton's image_client reads them
        assert int(index) == expected[row].argmax() and label == DIGIT_LABELS[int(index)]
        assert float(value) == pytest.approx(expected[row].max(), abs=1e-6)


def test_async_infer(client, repository):
    batches = [digits(1, seed=seed) for seed in range(8)]
    pending = [client.async_infer("mnist", [infer_input("input", b, "FP32", True)]) for b in batches]
    model = repository / "mnist" / "2" / "model.onnx"
    for batch, request in zip(batches, pending):
        expected = run_directly(model, {"input": batch})["probabilities"]
        np.testing.assert_allclose(request.get_result().as_numpy("probabilities"), expected, rtol=1e-6)


@pytest.mark.parametrize("call, status, fragment", [
    (lambda c: c.infer("mnist", [infer_input("input", np.zeros((1, 1, 28, 27), np.float32), "FP32", True)]), "400", "the model expects [-1, 1, 28, 28]"),
    (lambda c: c.infer("mnist", [infer_input("input", np.zeros((1, 1, 28, 28), np.float64), "FP64", False)]), "400", "the model expects FP32"),
    (lambda c: c.infer("mnist", [infer_input("image", np.zeros((1, 1, 28, 28), np.float32), "FP32", True)]), "400", "the model's inputs are ['input']"),
    (lambda c: c.infer("mnist", [infer_input("input", np.zeros((1, 1, 28, 28), np.float32), "FP32", True)],
                       outputs=[triton.InferRequestedOutput("logits")]), "400", "the model's outputs are ['probabilities']"),
    (lambda c: c.infer("nope", [infer_input("input", np.zeros((1, 1, 28, 28), np.float32), "FP32", True)]), "404", "unknown model 'nope'"),
    (lambda c: c.infer("mnist", [infer_input("input", np.zeros((1, 1, 28, 28), np.float32), "FP32", True)], model_version="9"), "404", "no version '9'"),
    (lambda c: c.get_model_metadata("nope"), "404", "unknown model"),
], ids=["shape", "datatype", "input name", "output name", "model", "version", "metadata"])
def test_errors_reach_the_client(client, call, status, fragment):
    with pytest.raises(InferenceServerException) as raised:
        call(client)
    assert raised.value.status() == status and fragment in raised.value.message()
    assert client.is_server_ready()


def test_bearer_token_travels_in_the_client_headers(repository, live_server_factory):
    server = live_server_factory(repository, API_TOKEN="s3cret-token")
    connection = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert connection.is_server_live() and connection.is_server_ready()  # health needs no token
        digit = [infer_input("input", digits(1), "FP32", True)]
        with pytest.raises(InferenceServerException) as raised:
            connection.infer("mnist", digit)
        assert raised.value.status() == "401"
        assert not connection.is_model_ready("mnist")
        token = {"Authorization": "Bearer s3cret-token"}
        assert connection.is_model_ready("mnist", headers=token)
        assert connection.infer("mnist", digit, headers=token).as_numpy("probabilities").shape == (1, 10)
    finally:
        connection.close()


@pytest.mark.skipif(not COMMITTED_MNIST.exists(), reason="models/mnist/1/model.onnx is not committed yet")
def test_committed_models_read_real_digits(live_server_factory):
    server = live_server_factory(COMMITTED_REPOSITORY)
    connection = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        images, labels = mnist_sample(50)
        for name, version, path in committed_digit_models():
            assert connection.is_model_ready(name, version)
            result = connection.infer(name, [infer_input("input", images, "FP32", True)], model_version=version)
            probabilities = result.as_numpy("probabilities")
            expected = run_directly(path, {"input": images})["probabilities"]
            np.testing.assert_allclose(probabilities, expected, rtol=1e-6, atol=1e-7, err_msg=f"{name}/{version}")
            assert (probabilities.argmax(axis=1) == labels).sum() >= 49, f"{name}/{version}"
    finally:
        connection.close()
