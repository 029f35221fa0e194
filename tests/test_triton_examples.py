"""The call sequences of Triton's own example clients, made with the real tritonclient against a real server.

Triton's Python examples (github.com/triton-inference-server/client, src/python/examples) are not
vendored here: tests/triton_examples.py makes the same calls in the same order, with the same
checks, as each example it names, and image_client.py's flow is below (docs/api.md lists which
examples are covered and which do not apply).
The models are the ones those examples expect, built in tmp_path (tests/onnx_factory.py), each with
a config.pbtxt: `simple`, `simple_string` (a Cast a made-up warm-up on empty strings cannot run),
`simple_identity`, and a small image classifier for `image_client.py`'s flow. The server runs two
workers, so the statistics are checked to be the same whichever worker answers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as mc
import tritonclient.http as httpclient
from google.protobuf import json_format
from PIL import Image
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from tests.onnx_factory import write_classifier, write_simple, write_simple_identity
from tests.triton_examples import EXAMPLES
from tests.v2_repository import run_directly

CLASSES = ["cat", "dog", "fox", "owl", "yak"]
CLASSIFIER_CONFIG = """name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "pixels" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 16, 16 ] } ]
output [ { name: "scores" data_type: TYPE_FP32 dims: [ 5 ] label_filename: "labels.txt" } ]
parameters { key: "preprocessing" value { string_value: "imagenet" } }
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("triton-examples") / "models"
    write_simple(root)
    write_simple(root, "simple_string", strings=True)
    write_simple_identity(root)
    # An image classifier whose ONNX file names no preset: config.pbtxt names it, and the labels.
    folder = root / "classifier"
    write_classifier(folder / "1" / "model.onnx", input_name="pixels", input_shape=("N", 3, 16, 16),
                     num_classes=len(CLASSES), output_name="scores", preprocessing=None, seed=3)
    (folder / "config.pbtxt").write_text(CLASSIFIER_CONFIG)
    (folder / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    # A model without config.pbtxt: its configuration is completed from the graph.
    write_classifier(root / "bare" / "1" / "model.onnx", input_shape=("N", 1, 28, 28), preprocessing=None)
    return root


@pytest.fixture(scope="module")
def server(module_servers, repository):
    return module_servers(repository, WORKERS="2")


@pytest.fixture(scope="module")
def http_url(server) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def grpc_url(server) -> str:
    return f"127.0.0.1:{server.env['GRPC_PORT']}"


@pytest.fixture
def http(http_url):
    client = httpclient.InferenceServerClient(url=http_url)
    yield client
    client.close()


@pytest.fixture
def grpc_client(grpc_url):
    client = grpcclient.InferenceServerClient(url=grpc_url)
    yield client
    client.close()


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_example_client_sequence(example, http_url, grpc_url):
    EXAMPLES[example](http_url, grpc_url)


def image_client_model(metadata, config) -> tuple:
    """image_client.py's parse_model on dicts (HTTP) or messages (gRPC): what it needs to preprocess."""
    field = (lambda item, key: item[key]) if isinstance(metadata, dict) else getattr
    inputs, outputs = field(metadata, "inputs"), field(metadata, "outputs")
    assert len(inputs) == 1 and len(outputs) == 1 and len(field(config, "input")) == 1
    input_metadata, input_config, output_metadata = inputs[0], field(config, "input")[0], outputs[0]
    assert field(output_metadata, "datatype") == "FP32"
    batching = field(config, "max_batch_size") > 0
    assert sum(1 for dim in list(field(output_metadata, "shape"))[int(batching):] if dim > 1) <= 1  # a vector
    shape = list(field(input_metadata, "shape"))
    assert len(shape) == 3 + int(batching)
    image_format = field(input_config, "format")
    if isinstance(image_format, str):
        image_format = dict(mc.ModelInput.Format.items())[image_format]
    assert image_format in (mc.ModelInput.FORMAT_NCHW, mc.ModelInput.FORMAT_NHWC)
    c, h, w = shape[1:] if image_format == mc.ModelInput.FORMAT_NCHW else (shape[3], shape[1], shape[2])
    return field(config, "max_batch_size"), field(input_metadata, "name"), field(output_metadata, "name"), \
        c, h, w, image_format, field(input_metadata, "datatype")


def image_client_preprocess(image: Image.Image, image_format: int, datatype: str, c: int, h: int, w: int) -> np.ndarray:
    """image_client.py's preprocess with --scaling NONE: resize, cast, channels first for NCHW."""
    resized = np.array(image.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR))
    if resized.ndim == 2:
        resized = resized[:, :, np.newaxis]
    typed = resized.astype(triton_to_np_dtype(datatype))
    return np.transpose(typed, (2, 0, 1)) if image_format == mc.ModelInput.FORMAT_NCHW else typed


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for seed in range(3):
        pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
        paths.append(folder / f"photo{seed}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_client(protocol, http_url, grpc_url, repository, photos):
    client_module = grpcclient if protocol == "grpc" else httpclient
    client = client_module.InferenceServerClient(url=grpc_url if protocol == "grpc" else http_url)
    try:
        metadata = client.get_model_metadata(model_name="classifier", model_version="")
        config = client.get_model_config(model_name="classifier", model_version="")
        config = config.config if protocol == "grpc" else config
        max_batch_size, input_name, output_name, c, h, w, image_format, datatype = image_client_model(metadata, config)
        assert (max_batch_size, input_name, output_name, c, h, w) == (8, "pixels", "scores", 3, 16, 16)
        batch = np.stack([image_client_preprocess(Image.open(path), image_format, datatype, c, h, w) for path in photos])
        tensor = client_module.InferInput(input_name, list(batch.shape), datatype)
        tensor.set_data_from_numpy(batch)
        result = client.infer("classifier", [tensor], request_id="1", model_version="",
                              outputs=[client_module.InferRequestedOutput(output_name, class_count=1)])
    finally:
        client.close()
    classes = result.as_numpy(output_name)
    expected = run_directly(repository / "classifier" / "1" / "model.onnx", {"pixels": batch})["scores"]
    assert classes.shape == (len(photos), 1)
    for row, (entry,) in enumerate(classes):
        value, index, label = entry.decode().split(":")
        assert int(index) == expected[row].argmax() and label == CLASSES[int(index)]
        assert float(value) == pytest.approx(expected[row].max(), abs=1e-6)


def test_image_api_takes_its_preset_from_config_pbtxt_parameters(server, photos):
    answer = requests.post(f"{server.url}/models/classifier/predict", data=photos[0].read_bytes(),
                           headers={"Content-Type": "image/png"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] in CLASSES


def test_model_configuration_http_and_grpc_agree(http, grpc_client):
    served = http.get_model_config("classifier")
    assert served["name"] == "classifier" and served["backend"] == "onnxruntime" and served["max_batch_size"] == 8
    assert served["input"][0]["format"] == "FORMAT_NCHW" and served["input"][0]["dims"] == [3, 16, 16]
    assert served["output"][0]["label_filename"] == "labels.txt"
    assert served["parameters"] == {"preprocessing": {"string_value": "imagenet"}}
    assert http.get_model_config("classifier", "1") == served
    message = grpc_client.get_model_config("classifier").config
    assert json_format.MessageToDict(message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True,
                                     unquote_int64_if_possible=True) == served


def test_model_configuration_is_completed_from_the_graph_without_config_pbtxt(http, grpc_client):
    served = http.get_model_config("bare")
    assert (served["name"], served["platform"], served["backend"]) == ("bare", "onnxruntime_onnx", "onnxruntime")
    assert served["max_batch_size"] == 0  # no row limit stated: the batch axis stays in dims
    assert [(t["name"], t["data_type"], t["dims"]) for t in served["input"]] == [("input", "TYPE_FP32", [-1, 1, 28, 28])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in served["output"]] == [("probabilities", "TYPE_FP32", [-1, 10])]
    assert served["version_policy"] == {"all": {}}  # without config.pbtxt every version on disk serves
    assert grpc_client.get_model_config("bare").config.input[0].dims == [-1, 1, 28, 28]


def test_unknown_models_have_no_statistics_or_configuration(http, grpc_client):
    for call in (lambda: http.get_model_config("nope"), lambda: http.get_inference_statistics("nope"),
                 lambda: http.get_inference_statistics("simple", "9")):
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == "404"
    with pytest.raises(InferenceServerException) as raised:
        grpc_client.get_inference_statistics("nope")
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as raised:
        grpc_client.get_model_config("nope")
    assert raised.value.status() == "StatusCode.NOT_FOUND"


def fresh_statistics(server, path: str = "/v2/models/simple_identity/stats") -> dict:
    """Statistics over a new connection each time, so that either worker may answer."""
    answer = requests.get(f"{server.url}{path}", headers={"Connection": "close"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_statistics_count_every_worker_the_same_whichever_answers(server, grpc_url):
    before = fresh_statistics(server)["model_stats"][0]
    sent = 12
    body = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [2, 3], "data": ["a", "b", "c", "d", "e", "f"]}]}
    for _ in range(sent):  # a new connection each: both workers take some
        answer = requests.post(f"{server.url}/v2/models/simple_identity/infer", json=body,
                               headers={"Connection": "close"}, timeout=30)
        assert answer.status_code == 200, answer.text
    bad = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 1], "data": [1]}]}
    assert requests.post(f"{server.url}/v2/models/simple_identity/infer", json=bad, timeout=30).status_code == 400
    answers = [fresh_statistics(server) for _ in range(8)]
    assert all(answer == answers[0] for answer in answers)
    # Both workers took requests (the log names each line's process), so the counts below are sums.
    workers = {line.split()[2] for line in server.log().splitlines() if "POST /v2/models/simple_identity/infer" in line}
    assert len(workers) == 2, workers
    after = answers[0]["model_stats"][0]
    assert (after["name"], after["version"]) == ("simple_identity", "1")
    stats, old = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] - old["success"]["count"] == sent
    assert stats["fail"]["count"] - old["fail"]["count"] == 1
    assert after["inference_count"] - before["inference_count"] == 2 * sent  # two rows a request
    assert after["execution_count"] - before["execution_count"] == sent
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[phase]["count"] - old[phase]["count"] == sent
    assert stats["success"]["ns"] > stats["compute_infer"]["ns"] > 0
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 1.7e12  # ms since the epoch
    # gRPC answers the same numbers, in the same shape.
    client = grpcclient.InferenceServerClient(url=grpc_url)
    try:
        over_grpc = client.get_inference_statistics("simple_identity", as_json=True)
    finally:
        client.close()
    assert json.loads(json.dumps(over_grpc))["model_stats"][0]["inference_count"] in (
        str(after["inference_count"]), after["inference_count"])


def test_statistics_of_every_model(server):
    stats = fresh_statistics(server, "/v2/models/stats")["model_stats"]
    assert [(row["name"], row["version"]) for row in stats] == [
        ("bare", "1"), ("classifier", "1"), ("simple", "1"), ("simple_identity", "1"), ("simple_string", "1")]
    assert fresh_statistics(server, "/v2/models/simple/versions/1/stats")["model_stats"][0]["name"] == "simple"


def test_statistics_and_configuration_need_the_token(repository, live_server_factory):
    server = live_server_factory(repository, API_TOKEN="s3cret-token")
    for path in ("/v2/models/stats", "/v2/models/simple/stats", "/v2/models/simple/config"):
        assert requests.get(f"{server.url}{path}", timeout=30).status_code == 401
        assert requests.get(f"{server.url}{path}", headers={"Authorization": "Bearer s3cret-token"}, timeout=30).ok
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.env['GRPC_PORT']}")
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.get_inference_statistics("simple")
        assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
        assert client.get_model_config("simple", headers={"authorization": "Bearer s3cret-token"}).config.name == "simple"
    finally:
        client.close()
