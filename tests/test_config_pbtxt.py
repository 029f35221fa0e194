"""The server reads a model's Triton config.pbtxt: labels, version policy, batching, the row limit;
a bad file refuses that model's versions with the reason in the index and one log line."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from server import create_app
from server.runtime.batching import BatchPolicy
from server.runtime.registry import ModelRegistry
from tests.onnx_factory import write_classifier

PETS = ["cat", "dog", "eel"]
CONFIG = """
name: "pets"
platform: "onnxruntime_onnx"
max_batch_size: 4
version_policy: { latest: { num_versions: 2 } }
input [ { name: "input", data_type: TYPE_FP32, dims: [ 1, 28, 28 ] } ]
output [ { name: "probabilities", data_type: TYPE_FP32, dims: [ 3 ], label_filename: "pets.txt" } ]
dynamic_batching { max_queue_delay_microseconds: 300 }
instance_group [ { count: 2, kind: KIND_CPU } ]
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """`pets` (versions 1-3, config.pbtxt, labels file) beside `plain` (no config)."""
    root = tmp_path / "models"
    for version in (1, 2, 3):
        write_classifier(root / "pets" / str(version) / "model.onnx", num_classes=3, labels=["a", "b", "c"],
                         seed=version)
    (root / "pets" / "config.pbtxt").write_text(CONFIG)
    (root / "pets" / "pets.txt").write_text("".join(f"{label}\n" for label in PETS))
    write_classifier(root / "plain" / "1" / "model.onnx")
    return root


def index_of(registry: ModelRegistry, name: str) -> dict[str, tuple[str, str]]:
    return {row["version"]: (row["state"], row["reason"]) for row in registry.index() if row["name"] == name}


def rewrite(path: Path, text: str) -> None:
    """Replace a file with a stamp that differs from the last one even within the same clock tick."""
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_config_decides_versions_labels_and_batching(repo: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="server")
    registry = ModelRegistry(repo)
    registry.load_all()
    assert sorted(registry.models["pets"]) == ["2", "3"] and list(registry.models["plain"]) == ["1"]
    assert index_of(registry, "pets")["1"] == ("UNAVAILABLE", "not served: config.pbtxt version_policy latest 2")
    assert registry.ready
    model = registry.get("pets")
    assert model.version == "3" and model.labels == PETS and model.max_rows == 4
    assert model.batch_policy == BatchPolicy(4, 300)
    assert registry.get("plain").config is None and registry.get("plain").max_rows is None
    ignored = [r.getMessage() for r in caplog.records if "does not use" in r.getMessage()]
    assert ignored == ["model pets: config.pbtxt sets instance_group, which this server does not use"]
    registry.load_model("pets")  # read again: the ignored fields are not logged twice
    assert len([r for r in caplog.records if "does not use" in r.getMessage()]) == 1


def test_config_without_dynamic_batching_does_not_batch(repo: Path) -> None:
    (repo / "pets" / "config.pbtxt").write_text(CONFIG.replace("dynamic_batching { max_queue_delay_microseconds: 300 }", ""))
    registry = ModelRegistry(repo, batch_defaults=(8, 0, 0.0))  # MAX_BATCH_SIZE=8 would batch it otherwise
    registry.load_all()
    assert registry.get("pets").batch_policy == BatchPolicy(1, 0)
    assert registry.get("plain").batch_policy == BatchPolicy(8, 0)


def test_over_http_labels_row_limit_and_policy(repo: Path) -> None:
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repo)}).test_client()
    rows = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)

    def infer(batch: np.ndarray, version: str = "", **parameters):
        path = f"/v2/models/pets{f'/versions/{version}' if version else ''}/infer"
        return client.post(path, json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}],
            "outputs": [{"name": "probabilities", "parameters": parameters}]})

    answer = infer(rows, classification=1)
    assert answer.status_code == 200, answer.json
    assert {entry.split(":")[2] for entry in answer.json["outputs"][0]["data"]} <= set(PETS)
    too_many = infer(np.concatenate([rows, rows[:1]]))
    assert too_many.status_code == 400
    assert too_many.json["error"].startswith("inference request batch-size must be <= 4 for 'pets'")
    unserved = infer(rows[:1], version="1")
    assert unserved.status_code == 404 and "version_policy latest 2" in unserved.json["error"]


@pytest.mark.parametrize("text, reason", [
    ("max_batch_size: four", "config.pbtxt: not a valid model configuration: 1:17"),
    ('platform: "tensorrt_plan"', "is not ONNX"),
    (CONFIG.replace('name: "input"', 'name: "pixels"'), "model.onnx: input 'pixels' is not in the graph (it has input)"),
    (CONFIG.replace("dims: [ 3 ]", "dims: [ 10 ]"), "output 'probabilities' has dims [10] in the file, [3] in the graph"),
    (CONFIG.replace("pets.txt", "missing.txt"), "label_filename 'missing.txt' does not exist"),
    (CONFIG.replace("pets.txt", "pets\\m.txt"), "a string has an invalid escape sequence"),  # Triton refuses it too
])
def test_a_bad_config_refuses_the_model_and_the_rest_serve(repo: Path, caplog, text: str, reason: str) -> None:
    caplog.set_level(logging.INFO, logger="server")
    (repo / "pets" / "config.pbtxt").write_text(text)
    registry = ModelRegistry(repo)
    registry.load_all()
    assert "pets" not in registry.models and list(registry.models["plain"]) == ["1"]
    states = index_of(registry, "pets")
    assert {state for state, _ in states.values()} == {"UNAVAILABLE"}
    assert all(reason in why for _, why in states.values() if why != "not served: config.pbtxt version_policy latest 2"), states
    assert str(repo) not in str(states)  # clients see repository-relative paths only
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([line for line in errors if reason in line]) >= 1 and all("\n" not in line for line in errors)
    assert not registry.ready  # as a model whose every file fails: the server is not ready


def test_a_config_broken_on_reload_keeps_what_served_until_fixed(repo: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="server")
    registry = ModelRegistry(repo)
    registry.load_all()
    serving = registry.get("pets")
    config = repo / "pets" / "config.pbtxt"
    rewrite(config, "max_batch_size: [")
    failures = registry.load_model("pets")
    assert failures and all(f.from_config and f.kept_serving for f in failures)
    assert registry.get("pets") is serving and registry.ready
    assert "keep serving" in caplog.records[-1].getMessage()
    logged = len(caplog.records)
    registry.load_model("pets", retry_failed=False)  # a poll: the same bad file is not read again
    assert len(caplog.records) == logged
    rewrite(config, CONFIG.replace("num_versions: 2", "num_versions: 1"))
    assert registry.load_model("pets") == []
    assert sorted(registry.models["pets"]) == ["3"] and registry.ready
    assert index_of(registry, "pets")["2"] == ("UNAVAILABLE", "not served: config.pbtxt version_policy latest 1")


def test_a_broken_latest_version_leaves_the_one_that_served_serving(repo: Path) -> None:
    """version_policy latest 1 with a broken file dropped in as the highest version: the load is
    refused and the version that served keeps serving (as Triton does), not a model gone dark."""
    rewrite(repo / "pets" / "config.pbtxt", CONFIG.replace("num_versions: 2", "num_versions: 1"))
    registry = ModelRegistry(repo)
    registry.load_all()
    assert list(registry.models["pets"]) == ["3"]
    serving = registry.get("pets")
    (repo / "pets" / "4").mkdir()
    (repo / "pets" / "4" / "model.onnx").write_bytes(b"not an onnx file")
    failures = registry.load_model("pets")
    assert [f.version for f in failures] == ["4"] and failures[0].kept_serving
    assert registry.get("pets") is serving and list(registry.models["pets"]) == ["3"] and registry.ready
    assert index_of(registry, "pets")["3"] == ("READY", "") and index_of(registry, "pets")["4"][0] == "UNAVAILABLE"
    shutil.rmtree(repo / "pets" / "4")
    assert registry.load_model("pets") == [] and list(registry.models["pets"]) == ["3"]


def test_removing_the_config_serves_every_version_by_the_files_metadata(repo: Path) -> None:
    registry = ModelRegistry(repo)
    registry.load_all()
    (repo / "pets" / "config.pbtxt").unlink()
    shutil.rmtree(repo / "pets" / "1")
    registry.load_model("pets")
    assert sorted(registry.models["pets"]) == ["2", "3"]
    model = registry.get("pets")
    assert model.config is None and model.labels == ["a", "b", "c"] and model.max_rows is None


def _strings_file(items: list[bytes]) -> bytes:
    """Triton's raw BYTES layout: each element's 4-byte little-endian length, then its bytes."""
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


WARMUP = """
model_warmup [ {{ name: "numbers" batch_size: 2 count: 2
  inputs {{ key: "INPUT0" value {{ data_type: TYPE_STRING dims: [ 16 ] {source} }} }}
  inputs {{ key: "INPUT1" value {{ data_type: TYPE_STRING dims: [ 16 ] input_data_file: "ones" }} }} }} ]
"""


@pytest.mark.parametrize("source, loads", [('input_data_file: "numbers"', True), ("zero_data: true", False)],
                         ids=["strings-of-numbers", "empty-strings"])
def test_model_warmup_samples_warm_the_model_and_a_failing_one_refuses_it(tmp_path: Path, source: str, loads: bool,
                                                                           caplog) -> None:
    """simple_string cannot run on empty strings: its own model_warmup samples warm it up (Triton reads
    them from <model>/warmup/), and a sample that fails refuses the version, as in Triton."""
    from tests.onnx_factory import write_simple

    folder = write_simple(tmp_path / "models", "simple_string", strings=True)
    (folder / "config.pbtxt").write_text((folder / "config.pbtxt").read_text() + WARMUP.format(source=source))
    (folder / "warmup").mkdir()
    (folder / "warmup" / "numbers").write_bytes(_strings_file([str(i).encode() for i in range(16)]))
    (folder / "warmup" / "ones").write_bytes(_strings_file([b"1"] * 16))
    registry = ModelRegistry(tmp_path / "models")
    caplog.set_level(logging.WARNING, logger="server")
    registry.load_all()
    if loads:
        model = registry.get("simple_string")
        assert model.warmup_ms > 0 and not [r for r in caplog.records if "without a warm-up" in r.getMessage()]
    else:
        (row,) = registry.index()
        assert row["state"] == "UNAVAILABLE" and "config.pbtxt model_warmup 'numbers' failed" in row["reason"]


@pytest.mark.parametrize("sample, fragment", [
    ('{ name: "a" batch_size: 9 inputs { key: "input" value { data_type: TYPE_FP32 dims: [1, 28, 28] zero_data: true } } }',
     "batch_size 9 must be 1 or more, at most max_batch_size"),
    ('{ name: "a" batch_size: 1 inputs { key: "input" value { data_type: TYPE_FP32 dims: [1, 28, 28] input_data_file: "nope" } } }',
     "input_data_file 'warmup/nope' does not exist"),
    ('{ name: "a" batch_size: 1 inputs { key: "input" value { data_type: TYPE_FP32 dims: [1, 28, 28] input_data_file: "../../x" } } }',
     "points outside the model folder"),
    ('{ name: "a" batch_size: 1 inputs { key: "input" value { dims: [1, 28, 28] zero_data: true } } }',
     "needs a data_type and one of zero_data"),
], ids=["batch-size", "missing-file", "outside", "no-type"])
def test_bad_model_warmup_refuses_the_model(repo: Path, sample: str, fragment: str) -> None:
    (repo / "pets" / "config.pbtxt").write_text(CONFIG + f"model_warmup [ {sample} ]\n")
    registry = ModelRegistry(repo)
    registry.load_all()
    reasons = {row["reason"] for row in registry.index() if row["name"] == "pets"}
    assert len(reasons) == 1 and fragment in reasons.pop(), reasons
