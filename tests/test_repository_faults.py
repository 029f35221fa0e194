"""Repository faults: each bad model is skipped with one clear log line; the others serve."""
from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
import requests
from onnx import TensorProto, helper

from server.repository import ModelRepository
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
    repository = ModelRepository(faulty)
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
    assert "model corrupt version 1 failed to load" in server.log()
    assert "Traceback" not in server.log()
