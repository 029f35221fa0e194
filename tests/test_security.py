"""The bearer token, one log line per request, and unexpected errors answered as a bare 500."""
from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2

from server import config, create_app
from server.__main__ import parse_args
from server.api.hooks import OPEN_PATHS, OPEN_PREFIXES
from server.grpc.service import SERVICE, InferenceService
from tests.api_client import png
from tests.conftest import MNIST_SAMPLE, ROOT, SERVE_VENV
from tests.onnx_factory import write_classifier

TOKEN = "s3cret-token-for-tests"
DIGITS = np.load(MNIST_SAMPLE)["images"][:2]
DIGIT_PNG = png(DIGITS[0])
# What a 500 answer must never show.
INTERNALS = ("Traceback", "onnxruntime", "Reshape", "File \"", ".py", "RuntimeError", "INVALID_ARGUMENT")


def write_single_image_model(path: Path) -> Path:
    """A model that declares a dynamic batch but reshapes to exactly one image: two images crash it."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "one_image"], ["flat"]),
            helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "single_image",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializer=[
            numpy_helper.from_array(np.array([1, 784], np.int64), "one_image"),
            numpy_helper.from_array(rng.normal(0, 0.05, (784, 10)).astype(np.float32), "weight"),
            numpy_helper.from_array(np.zeros(10, np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"preprocessing": "mnist-digit", "output_kind": "probabilities"})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("security") / "models"
    write_classifier(repo / "mnist" / "1" / "model.onnx", labels=[str(i) for i in range(10)])
    write_single_image_model(repo / "fragile" / "1" / "model.onnx")
    return repo


@pytest.fixture(scope="module")
def server(module_servers, repository: Path):
    return module_servers(repository, API_TOKEN=TOKEN)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def every_operation(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every URL rule, path parameters filled with `mnist` and `1`."""
    operations = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?version>", "1", rule.rule)
        path = re.sub(r"<(?:[a-z]+:)?[A-Za-z_]+>", "mnist", path)
        operations += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return operations


# --------------------------------------------------------------------------- the token


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param(bearer("wrong"), id="wrong"),
        pytest.param(bearer(TOKEN[:-1]), id="prefix"),
        pytest.param(bearer(TOKEN + "x"), id="longer"),
        pytest.param({"Authorization": TOKEN}, id="no-scheme"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, id="basic"),
        pytest.param(bearer("tøken"), id="non-ascii"),
    ],
)
def test_every_endpoint_but_health_and_the_page_needs_the_token(repository: Path, headers: dict) -> None:
    app = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repository), "API_TOKEN": TOKEN})
    client = app.test_client()
    operations = every_operation(app)
    assert ("POST", "/predict") in operations and ("GET", "/metrics") in operations
    for method, path in operations:
        response = client.open(path, method=method, headers=headers, follow_redirects=True)  # /docs/ -> /docs
        if path in OPEN_PATHS:
            assert response.status_code == 200, (method, path)
        elif path.startswith(OPEN_PREFIXES):  # the pages' own files: no token, whatever else they answer
            assert response.status_code != 401, (method, path)
        else:
            assert response.status_code == 401, (method, path, response.status_code)
            assert "missing or wrong bearer token" in response.get_json()["error"]


@pytest.mark.parametrize("metadata", [pytest.param((), id="none"), pytest.param((("authorization", "Bearer wrong"),), id="wrong"),
                                      pytest.param((("authorization", TOKEN),), id="no-scheme")])
def test_every_grpc_method_but_health_needs_the_token(server, metadata: tuple) -> None:
    """Every method of Triton's service, tried on the wire with an empty request: health answers,
    every method this server serves says UNAUTHENTICATED, the rest UNIMPLEMENTED."""
    served = {name for name in dir(InferenceService) if hasattr(getattr(InferenceService, name), "types")}
    assert {"ModelMetadata", "ModelInfer", "RepositoryModelLoad", "ServerLive"} <= served
    methods = [method.name for method in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]
    assert served <= set(methods)
    codes = {}
    with grpc.insecure_channel(f"127.0.0.1:{server.env['GRPC_PORT']}") as channel:
        for name in methods:
            try:
                channel.unary_unary(f"/{SERVICE}/{name}")(b"", metadata=metadata, timeout=10)
                codes[name] = grpc.StatusCode.OK
            except grpc.RpcError as err:
                codes[name] = err.code()
    expected = {name: grpc.StatusCode.OK if name in ("ServerLive", "ServerReady")
                else grpc.StatusCode.UNAUTHENTICATED if name in served else grpc.StatusCode.UNIMPLEMENTED
                for name in methods}
    assert codes == expected


def test_the_right_token_opens_every_grpc_method(server) -> None:
    served = sorted(name for name in dir(InferenceService) if hasattr(getattr(InferenceService, name), "types"))
    with grpc.insecure_channel(f"127.0.0.1:{server.env['GRPC_PORT']}") as channel:
        for name in served:
            try:
                channel.unary_unary(f"/{SERVICE}/{name}")(b"", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
            except grpc.RpcError as err:  # an empty request may be invalid; it is no longer refused for the token
                assert err.code() != grpc.StatusCode.UNAUTHENTICATED, (name, err.details())


def test_the_right_token_opens_every_endpoint(repository: Path) -> None:
    app = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repository), "API_TOKEN": TOKEN})
    client = app.test_client()
    for method, path in every_operation(app):
        assert client.open(path, method=method, headers=bearer()).status_code != 401, (method, path)
    answer = client.post("/predict", data=DIGIT_PNG, content_type="image/png", headers=bearer())
    assert answer.status_code == 200


def test_no_token_configured_means_no_token_needed(repository: Path) -> None:
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repository), "API_TOKEN": ""}).test_client()
    assert client.post("/predict", data=DIGIT_PNG, content_type="image/png").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status_without", "status_with"),
    [
        ("GET", "/v2/health/live", 200, 200),
        ("GET", "/v2/health/ready", 200, 200),
        ("POST", "/predict", 401, 200),
        ("GET", "/metrics", 401, 200),
        ("GET", "/openapi.json", 401, 200),
        ("GET", "/v2/models/mnist", 401, 200),
        ("GET", "/no/such/path", 401, 404),
        ("GET", "/docs", 200, 200),  # the API page asks for the token itself (tests/test_page.py)
        ("GET", "/docs/swagger-ui/swagger-ui-bundle.js", 200, 200),
        ("GET", "/docs/", 200, 200),  # redirected to /docs
    ],
)
def test_the_live_server_checks_the_token(server, method: str, path: str, status_without: int, status_with: int) -> None:
    body = {"data": DIGIT_PNG, "headers": {"Content-Type": "image/png"}} if method == "POST" else {"headers": {}}
    without = requests.request(method, server.url + path, timeout=10, **body)
    body["headers"] = {**body["headers"], **bearer()}
    with_token = requests.request(method, server.url + path, timeout=10, **body)
    assert (without.status_code, with_token.status_code) == (status_without, status_with)
    assert without.headers["Content-Type"] == "application/json" or path.startswith("/docs")


# --------------------------------------------------------------------------- one log line per request


def log_lines(server, request_id: str) -> list[str]:
    return [line for line in server.log().splitlines() if f"id={request_id}" in line]


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("POST", "/predict", {"Content-Type": "image/png", **bearer()}, 200),
        ("POST", "/predict", {"Content-Type": "text/plain", **bearer()}, 415),
        ("GET", "/metrics", {}, 401),
        ("GET", "/v2/health/live", {}, 200),
        ("GET", "/nothing/here", bearer(), 404),
    ],
)
def test_one_log_line_per_request(server, method: str, path: str, headers: dict, status: int) -> None:
    request_id = f"test-{method}-{status}-{abs(hash(path)) % 10_000}"
    answer = requests.request(
        method, server.url + path, data=DIGIT_PNG if method == "POST" else None,
        headers={**headers, "X-Request-Id": request_id}, timeout=10,
    )
    assert answer.status_code == status
    assert answer.headers["X-Request-Id"] == request_id
    (line,) = log_lines(server, request_id)
    assert re.search(rf"INFO server\.api\.hooks: {method} {re.escape(path)} {status} \d+\.\dms id={request_id}$", line), line


def test_a_request_id_is_made_when_none_is_sent(server) -> None:
    answer = requests.get(server.url + "/v2/health/live", timeout=10)
    request_id = answer.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{16}", request_id)
    assert len(log_lines(server, request_id)) == 1


def test_the_token_is_never_logged(server) -> None:
    requests.post(server.url + "/predict", data=DIGIT_PNG, headers={"Content-Type": "image/png", **bearer()}, timeout=10)
    requests.get(server.url + "/metrics", headers=bearer("guess-" + TOKEN), timeout=10)
    assert TOKEN not in server.log()


def test_a_path_cannot_forge_log_lines(server) -> None:
    forged = "INFO server.api.hooks: GET /admin 200 1.0ms id=forged"
    path = "/v2/models/x%0D%0A2026-01-01%2000:00:00,000%201%20" + forged.replace(" ", "%20") + "/ready"
    answer = requests.get(server.url + path, headers={**bearer(), "X-Request-Id": "forge-1"}, timeout=10)
    assert answer.status_code == 404
    (line,) = log_lines(server, "forge-1")
    assert "/v2/models/x\\r\\n2026-01-01 00:00:00,000 1 INFO" in line
    assert not any(logged.startswith("2026-01-01") for logged in server.log().splitlines())


# --------------------------------------------------------------------------- unexpected errors


def two_images() -> dict:
    return {"images": [base64.b64encode(png(digit)).decode() for digit in DIGITS]}


def test_an_unexpected_error_is_a_bare_500_logged_with_its_request_id(server) -> None:
    answer = requests.post(
        server.url + "/models/fragile/predict", json=two_images(), headers={**bearer(), "X-Request-Id": "boom-1"}, timeout=10
    )
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal server error (request id boom-1)"}
    assert not any(word in answer.text for word in INTERNALS)
    log = server.log()
    assert "unexpected error, request id boom-1" in log and "Traceback" in log
    assert re.search(r"POST /models/fragile/predict 500 \d+\.\dms id=boom-1$", log, re.MULTILINE)
    # One image is fine, and the server keeps serving.
    single = requests.post(server.url + "/models/fragile/predict", data=DIGIT_PNG,
                           headers={**bearer(), "Content-Type": "image/png"}, timeout=10)
    assert single.status_code == 200


def test_the_test_client_answers_the_same_500(repository: Path, caplog) -> None:
    client = create_app({"TESTING": False, "MODEL_REPOSITORY": str(repository)}).test_client()
    answer = client.post("/models/fragile/predict", json=two_images(), headers={"X-Request-Id": "boom-2"})
    assert answer.status_code == 500
    assert answer.get_json() == {"error": "internal server error (request id boom-2)"}
    assert "unexpected error, request id boom-2" in caplog.text


# --------------------------------------------------------------------------- where it listens


def test_binds_localhost_by_default(monkeypatch) -> None:
    monkeypatch.delenv("HOST", raising=False)
    assert config.from_environment({})["HOST"] == "127.0.0.1"
    assert parse_args([]).HOST == "127.0.0.1"


def test_the_live_server_listens_where_it_says(server) -> None:
    assert f"Listening at: http://127.0.0.1:{server.port}" in server.log()


@pytest.mark.parametrize("sent", ["", "x" * 65, "a b", "id=1 GET /admin 200", "é"])
def test_a_client_request_id_that_could_forge_log_lines_is_replaced(client, sent: str) -> None:
    answer = client.get("/v2/health/live", headers={"X-Request-Id": sent})
    assert answer.headers["X-Request-Id"] != sent and len(answer.headers["X-Request-Id"]) == 16


def test_a_plain_client_request_id_is_kept(client) -> None:
    answer = client.get("/v2/health/live", headers={"X-Request-Id": "req-42.a_b"})
    assert answer.headers["X-Request-Id"] == "req-42.a_b"
