"""`GET /openapi.json`: a valid OpenAPI 3 document describing every route the app serves."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import requests
import schemathesis

from server import create_app
from server.api.hooks import OPEN_PATHS
from tests.api_client import png
from tests.conftest import MNIST_SAMPLE
from tests.onnx_factory import write_classifier

DIGIT = np.load(MNIST_SAMPLE)["images"][0]
TOKEN = "open-sesame"
# Methods Flask adds to every rule by itself.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def app(tmp_path: Path):
    repo = tmp_path / "models"
    write_classifier(repo / "mnist" / "1" / "model.onnx", labels=[str(i) for i in range(10)])
    return create_app({"TESTING": True, "MODEL_REPOSITORY": str(repo)})


@pytest.fixture
def document(app) -> dict:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def refs(node) -> list[str]:
    """Every `$ref` anywhere in a JSON document."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


def resolve(document: dict, ref: str):
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def documented_operations(document: dict) -> set[tuple[str, str]]:
    methods = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
    return {(path, m.upper()) for path, item in document["paths"].items() for m in methods if m in item}


def served_operations(app) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every URL rule of the app, `<x>` and `<int:x>` written `{x}`."""
    return {
        (re.sub(r"<(?:[a-z]+:)?([A-Za-z_]+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - IMPLICIT_METHODS
    }


def test_document_is_valid_openapi(document: dict) -> None:
    assert document["openapi"].startswith("3.")
    assert schemathesis.openapi.from_dict(document).validate() is None


def test_the_validator_catches_an_invalid_document(document: dict) -> None:
    document["paths"]["/predict"]["post"]["responses"]["200"].pop("description", None)
    document["paths"]["/predict"]["post"]["responses"]["200"]["$ref"] = 7
    with pytest.raises(Exception, match="not valid"):
        schemathesis.openapi.from_dict(document).validate()


def test_every_reference_resolves(document: dict) -> None:
    found = refs(document)
    assert "#/components/schemas/PredictResponse" in found and "#/components/schemas/Error" in found
    for ref in found:
        assert isinstance(resolve(document, ref), dict), ref


def test_every_route_is_documented_and_nothing_else(app, document: dict) -> None:
    served, documented = served_operations(app), documented_operations(document)
    assert served - documented == set(), "routes missing from the document"
    assert documented - served == set(), "documented operations the app does not serve"
    for path in ("/predict", "/models/{name}/predict", "/metrics", "/openapi.json", "/v2/health/live"):
        assert path in document["paths"]


def test_return_input_is_documented(document: dict) -> None:
    operation = document["paths"]["/predict"]["post"]
    json_body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert all(option["properties"]["return_input"]["type"] == "boolean" for option in json_body["oneOf"])
    assert "return_input" in operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert "input" in document["components"]["schemas"]["Prediction"]["properties"]


def test_token_is_declared_when_set_and_health_stays_open(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_classifier(repo / "mnist" / "1" / "model.onnx")
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repo), "API_TOKEN": TOKEN}).test_client()
    document = client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
    assert document["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, method in documented_operations(document):
        operation = document["paths"][path][method.lower()]
        if path in OPEN_PATHS:
            assert operation["security"] == [] and "401" not in operation["responses"]
        else:
            assert operation["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}
    assert schemathesis.openapi.from_dict(document).validate() is None


@pytest.mark.parametrize(
    ("call", "status"),
    [
        pytest.param({"json": {"image": None, "return_input": True}}, 400, id="400"),
        pytest.param({"data": b"x", "content_type": "text/csv"}, 415, id="415"),
        pytest.param({"data": png(np.zeros((28, 28), np.uint8)), "content_type": "image/png"}, 422, id="422"),
        pytest.param({"data": png(DIGIT), "content_type": "image/png"}, 200, id="200"),
        pytest.param({"json": {"pixels": DIGIT.tolist(), "return_input": True}}, 200, id="200-with-input"),
    ],
)
def test_answers_match_the_document(app, document: dict, call: dict, status: int) -> None:
    operation = schemathesis.openapi.from_dict(document)["/predict"]["POST"]
    response = app.test_client().post("/predict", **call)
    assert response.status_code == status
    assert str(status) in document["paths"]["/predict"]["post"]["responses"]
    operation.validate_response(response)  # raises when the body does not match its schema


def test_the_live_server_serves_the_same_document(live_server, app, document: dict) -> None:
    served = requests.get(live_server.url + "/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == document
