"""Repository faults: each bad model is skipped with one clear log line; the others serve."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
from onnx import TensorProto, helper, numpy_helper

from server.runtime.registry import ModelRegistry
from tests.onnx_factory import write_classifier


def write_unsupported_operator(path: Path) -> None:
    """A valid ONNX file using an operator of a custom domain onnxruntime cannot run."""
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example.unknown")
    graph = helper.make_graph(
        [node], "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.unknown", 1)]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def faulty_repository(root: Path, outside: Path) -> Path:
    """One good model beside every kind of fault the repository must survive."""
    repo = root / "models"
    good = write_classifier(repo / "good" / "1" / "model.onnx")
    truncated = repo / "truncated" / "1" / "model.onnx"
    truncated.parent.mkdir(parents=True)
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = repo / "corrupt" / "1" / "model.onnx"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"this is not an onnx file at all\x00\xff" * 10)
    write_unsupported_operator(repo / "unsupported" / "1" / "model.onnx")
    write_classifier(repo / "good" / "latest" / "model.onnx")  # non-numeric version folder
    write_classifier(outside / "escaped" / "model.onnx")
    (repo / "linked" ).mkdir()
    (repo / "linked" / "1").symlink_to(outside / "escaped", target_is_directory=True)
    return repo


@pytest.fixture
def faulty(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    return faulty_repository(tmp_path, outside)


def test_faults_are_skipped_with_one_line_each(faulty: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="server")
    repository = ModelRegistry(faulty)
    repository.load_all()
    assert set(repository.models) == {"good"} and list(repository.models["good"]) == ["1"]
    assert {name for name, _ in repository.failures} == {"truncated", "corrupt", "unsupported"}
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    for fault in ("truncated", "corrupt", "unsupported", "latest", "linked"):
        lines = [r.getMessage() for r in problems if fault in r.getMessage()]
        assert len(lines) == 1, (fault, lines)
        assert "\n" not in lines[0]
    assert not repository.ready


def test_failed_model_reports_not_ready_and_others_serve(faulty: Path, live_server_factory) -> None:
    server = live_server_factory(faulty)
    assert requests.get(server.url + "/v2/health/live", timeout=5).status_code == 200
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 503
    assert requests.get(server.url + "/v2/models/corrupt/ready", timeout=5).status_code == 503
    answer = requests.post(server.url + "/models/good/predict", json={"pixels": [[0.5] * 28] * 28}, timeout=10)
    assert answer.status_code == 200 and len(answer.json()["predictions"][0]["probabilities"]) == 10
    assert "model corrupt version 1 failed to load" in server.log()
    assert "Traceback" not in server.log()


def test_a_bad_new_version_beside_a_good_one_keeps_the_server_ready(tmp_path: Path, live_server_factory) -> None:
    """Started (or HUP'd) with a corrupt v2 on disk, the model serves v1 and the server stays ready."""
    repo = tmp_path / "models"
    write_classifier(repo / "digits" / "1" / "model.onnx")
    (repo / "digits" / "2").mkdir()
    (repo / "digits" / "2" / "model.onnx").write_bytes(b"not onnx")
    server = live_server_factory(repo)
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
    assert requests.get(server.url + "/v2/models/digits/versions/2/ready", timeout=5).status_code == 503
    error = requests.get(server.url + "/v2/models/digits/versions/2", timeout=5).json()["error"]
    assert "digits/2/model.onnx" in error and str(tmp_path) not in error
    answer = requests.post(server.url + "/models/digits/predict", json={"pixels": [[0.5] * 28] * 28}, timeout=10)
    assert answer.status_code == 200 and answer.json()["version"] == "1"


def write_free_size_conv(path: Path) -> Path:
    """A 7x7 convolution then 4x4 max-pool over [N, 3, H, W]: zeros of 1x1 cannot run through it."""
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 7, 7)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["features"]),
         helper.make_node("MaxPool", ["features"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
         helper.make_node("GlobalAveragePool", ["pooled"], ["scores"])],
        "free_size", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4, 1, 1])], initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_string_identity(path: Path) -> Path:
    """A model of one string input [N] returned as it came."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])], "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["N"])],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_models_that_zeros_of_side_one_cannot_warm_still_load(tmp_path: Path) -> None:
    conv = write_free_size_conv(tmp_path / "models" / "conv" / "1" / "model.onnx")
    write_string_identity(tmp_path / "models" / "strings" / "1" / "model.onnx")
    repository = ModelRegistry(tmp_path / "models")
    repository.load_all()
    assert not repository.failures and set(repository.models) == {"conv", "strings"}
    image = np.random.default_rng(1).random((2, 3, 40, 40), dtype=np.float32)
    expected = ort.InferenceSession(str(conv), providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]
    got = repository.get("conv").predict({"image": image})["scores"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_loading_a_model_not_on_disk_names_no_server_path(faulty: Path) -> None:
    from server.errors import ModelNotFound

    repository = ModelRegistry(faulty)
    with pytest.raises(ModelNotFound) as error:
        repository.load_model("nope")
    assert error.value.status == 404 and "nope/<version>/model.onnx" in error.value.message
    assert str(faulty) not in error.value.message
