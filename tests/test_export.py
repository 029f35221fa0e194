"""export: a random-weight checkpoint through every check into a tmp repository; the committed model."""
from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import ExportResult, export_checkpoint, main, parse_args, quantize
from export.onnx_export import ExportError, ProbabilityModel, check_parity, session, to_onnx
from export.pipeline import set_metadata
from server.runtime.layout import NAME_RULE
from tests.conftest import ROOT
from tests.mnist_fixture import real_test_sample, write_fake_mnist
from training.checkpoint import save_checkpoint
from training.data import sha256_file
from training.model import DigitNet, ModelConfig

COMMITTED = ROOT / "models" / "mnist"
TEST_SLICE = ROOT / "tests" / "data" / "mnist_test_2000.npz"


@dataclass
class Exported:
    """One random-weight export shared by the tests of this module."""

    result: ExportResult
    checkpoint: Path
    repo: Path
    data_dir: Path


def random_checkpoint(path: Path, seed: int = 0, **fields: object) -> Path:
    """A checkpoint of an untrained, small DigitNet with the fields training writes."""
    torch.manual_seed(seed)
    model = DigitNet(ModelConfig(stages=((8,), (16,))))
    fields = {"args": {"epochs": 0, "seed": seed}, "test_accuracy": None, **fields}
    save_checkpoint(path, model, epoch=0, data_sha256={"fake": "0" * 64}, dataset_sha256="0" * 64, training_s=0.0,
                    **fields)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp("export")
    write_fake_mnist(root / "data")
    checkpoint = random_checkpoint(root / "model.pt")
    result = export_checkpoint(checkpoint, "digits", 3, root / "models", root / "data", parity_images=70)
    return Exported(result, checkpoint, root / "models", root / "data")


def test_random_weight_export_runs_at_batch_1_and_5(exported: Exported) -> None:
    path = exported.repo / "digits" / "3" / "model.onnx"
    assert exported.result.path == path
    runtime = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (graph_input,), (graph_output,) = runtime.get_inputs(), runtime.get_outputs()
    assert (graph_input.name, graph_input.type, graph_input.shape) == ("input", "tensor(float)", ["N", 1, 28, 28])
    assert (graph_output.name, graph_output.shape) == ("probabilities", ["N", 10])
    images, _ = real_test_sample()
    for batch in (1, 5):
        pixels = (images[:batch, None] / 255).astype(np.float32)
        (probabilities,) = runtime.run(None, {"input": pixels})
        assert probabilities.shape == (batch, 10)
        np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    assert exported.result.parity["class_mismatches"] == 0
    assert exported.result.parity["max_abs_diff"] <= 1e-5
    assert exported.result.parity["batch_sizes"] == [1, 7, 64] and exported.result.parity["images"] == 70


def test_file_is_self_contained_and_self_describing(exported: Exported) -> None:
    path = exported.result.path
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no external .data file
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["labels"]) == [str(d) for d in range(10)]
    assert meta["preprocessing"] == "mnist-digit" and meta["output_kind"] == "probabilities"
    assert meta["checkpoint_sha256"] == sha256_file(exported.checkpoint)
    assert meta["training_data_sha256"] == "0" * 64
    assert 0 <= float(meta["test_accuracy"]) <= 1 and json.loads(meta["parity"])["images"] == 70
    assert json.loads(meta["model_config"])["stages"] == [[8], [16]]


def test_model_card_lists_the_file_hash(exported: Exported) -> None:
    card = exported.result.card.read_text()
    assert exported.result.card == exported.repo / "digits" / "README.md"
    assert sha256_file(exported.result.path) in card and "## Version 3" in card


def test_export_writes_a_triton_config_that_reads_back_and_fits_the_graph(exported: Exported) -> None:
    """make export also writes config.pbtxt and labels.txt, so Triton serves the labels this server does."""
    from server.runtime.model import OnnxModel
    from server.runtime.model_config import graph_mismatches, read_model_config

    config = read_model_config(exported.repo / "digits")
    assert exported.result.triton_config == exported.repo / "digits" / "config.pbtxt"
    assert config is not None and config.max_batch_size == 64 and list(config.labels) == [str(i) for i in range(10)]
    model = OnnxModel("digits", "3", exported.result.path)
    model.load()
    graph = {spec.name: (spec.datatype, spec.shape) for spec in model.inputs}
    answers = {spec.name: (spec.datatype, spec.shape) for spec in model.outputs}
    assert graph_mismatches(config, graph, answers) == []


def test_existing_version_is_not_overwritten_without_force(exported: Exported) -> None:
    before = exported.result.path.read_bytes()
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_checkpoint(exported.checkpoint, "digits", 3, exported.repo, exported.data_dir)
    assert exported.result.path.read_bytes() == before


def test_corrupted_checkpoint_is_one_clear_error_and_writes_nothing(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    checkpoint = random_checkpoint(tmp_path / "model.pt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    code = main(["--checkpoint", str(checkpoint), "--repo", str(tmp_path / "models"), "--data-dir",
                 str(tmp_path / "no-data")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert re.match(rf"error: {re.escape(str(checkpoint))}: not a readable PyTorch checkpoint .*nothing written", err)
    assert not (tmp_path / "models").exists()


def test_parity_check_refuses_a_graph_that_differs_from_the_network() -> None:
    torch.manual_seed(0)
    network, other = DigitNet(ModelConfig(stages=((4,),))).eval(), DigitNet(ModelConfig(stages=((4,),))).eval()
    runtime = session(to_onnx(other).SerializeToString())
    images, _ = real_test_sample()
    with pytest.raises(ExportError, match="onnxruntime disagrees with PyTorch"):
        check_parity(runtime, network, (images[:8, None] / 255).astype(np.float32), batch_sizes=(1,))


def test_committed_model_matches_its_card_and_classifies_the_test_slice() -> None:
    path = COMMITTED / "1" / "model.onnx"
    assert sha256_file(path) in (COMMITTED / "README.md").read_text()
    runtime = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with np.load(TEST_SLICE) as data:
        images, labels = data["images"], data["labels"]
    assert len(labels) == 2000
    (probabilities,) = runtime.run(["probabilities"], {"input": (images[:, None] / 255).astype(np.float32)})
    accuracy = float((probabilities.argmax(1) == labels).mean())
    assert accuracy >= 0.99, accuracy
    meta = runtime.get_modelmeta().custom_metadata_map
    assert float(meta["test_accuracy"]) >= 0.996 and meta["preprocessing"] == "mnist-digit"


def test_int8_variant_runs_and_ships_only_when_faster_and_as_accurate(exported: Exported) -> None:
    model = onnx.load(str(exported.result.path))
    images, labels = real_test_sample()
    pixels = (images[:, None] / 255).astype(np.float32)
    int8 = quantize.quantize(model, pixels[:64])
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in int8.graph.node}
    (probabilities,) = session(int8.SerializeToString()).run(["probabilities"], {"input": pixels[:5]})
    assert probabilities.shape == (5, 10)
    measured = quantize.measure(model, int8, pixels, labels)
    assert set(measured.latency_ms["int8"]) == {1, 64} and "batch 64: fp32" in measured.describe()
    fast = {"fp32": {1: 1.0, 64: 10.0}, "int8": {1: 0.5, 64: 12.0}}
    slow = {"fp32": {1: 1.0, 64: 10.0}, "int8": {1: 1.5, 64: 12.0}}
    assert quantize.Int8Measurement(0.9960, 0.9950, fast).ship
    assert not quantize.Int8Measurement(0.9960, 0.9948, fast).ship  # loses 0.12 pt
    assert not quantize.Int8Measurement(0.9960, 0.9960, slow).ship


def test_export_refuses_to_make_a_less_accurate_model_the_default_unless_told(
        exported: Exported, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    repo = tmp_path / "models"
    better = onnx.load(str(exported.result.path))
    meta = {p.key: p.value for p in better.metadata_props}
    set_metadata(better, {**meta, "test_accuracy": "0.9968"})
    (repo / "digits" / "1").mkdir(parents=True)
    onnx.save(better, str(repo / "digits" / "1" / "model.onnx"))
    checkpoint = random_checkpoint(tmp_path / "model.pt", temperature=2.5)
    common = ["--checkpoint", str(checkpoint), "--name", "digits", "--version", "2", "--repo", str(repo),
              "--data-dir", str(exported.data_dir), "--parity-images", "16"]
    assert main(common) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "would replace digits/1 (99.68 %) as the default" in err
    assert "--allow-less-accurate" in err and not (repo / "digits" / "2").exists()
    caplog.set_level(logging.INFO)
    assert main([*common, "--allow-less-accurate"]) == 0
    assert (repo / "digits" / "2" / "model.onnx").is_file()
    # the exporter's optimiser chatter ("Removed 38 unused nodes", ...) stays out of the output
    assert not [r for r in caplog.records if r.name.split(".")[0] in ("onnxscript", "onnx_ir")]
    assert "unused nodes" not in capsys.readouterr().out


def test_export_refuses_from_the_checkpoints_recorded_accuracy_and_evaluates_only_when_it_could_win(
        exported: Exported, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    repo = tmp_path / "models"
    (repo / "digits" / "1").mkdir(parents=True)
    better = onnx.load(str(exported.result.path))
    set_metadata(better, {**{p.key: p.value for p in better.metadata_props}, "test_accuracy": "0.9968"})
    onnx.save(better, str(repo / "digits" / "1" / "model.onnx"))
    common = ["--name", "digits", "--version", "2", "--repo", str(repo), "--data-dir", str(exported.data_dir),
              "--parity-images", "16"]
    # 8.92 % on the whole test set, as training recorded it: refused before any export or evaluation.
    low = random_checkpoint(tmp_path / "low.pt", test_accuracy=0.0892, args={"epochs": 2, "limit": 0})
    assert main(["--checkpoint", str(low), *common]) == 1
    err = capsys.readouterr().err
    assert "version 2 (8.92 % on the test set as its checkpoint records) would replace digits/1 (99.68 %)" in err
    assert "--allow-less-accurate" in err and not (repo / "digits" / "2").exists()
    # 98 % on one batch of a --dry-run could be 99.7 % on all 10,000: evaluated, then refused on the full result.
    dry = random_checkpoint(tmp_path / "dry.pt", test_accuracy=0.98, args={"dry_run": True, "batch_size": 128})
    assert main(["--checkpoint", str(dry), *common]) == 1
    err = capsys.readouterr().err
    assert "would replace digits/1 (99.68 %)" in err and "as its checkpoint records" not in err
    assert "on the test set) would replace" in err and not (repo / "digits" / "2").exists()


def test_temperature_is_folded_into_the_graph(tmp_path: Path) -> None:
    network = DigitNet(ModelConfig(stages=((8,), (16,)))).eval()
    torch.nn.init.normal_(network.head[-1].weight, std=3.0)  # confident logits, so the temperature shows
    model = to_onnx(network, temperature=2.5)
    assert "Div" not in {node.op_type for node in model.graph.node[-3:]}  # no extra operator at the end
    images, _ = real_test_sample()
    pixels = (images[:16, None] / 255).astype(np.float32)
    (served,) = session(model.SerializeToString()).run(["probabilities"], {"input": pixels})
    with torch.no_grad():
        logits = network(torch.from_numpy(pixels))
    np.testing.assert_allclose(served, torch.softmax(logits / 2.5, 1).numpy(), atol=1e-6)
    assert not np.allclose(served, torch.softmax(logits, 1).numpy(), atol=1e-3)
    assert ProbabilityModel(network, 2.5)(torch.from_numpy(pixels)).shape == (16, 10)


def test_an_export_without_torchvision_logs_no_torchvision_skips(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """PyTorch's CPU build has no torchvision; its exporter then warns about each torchvision operator
    ("torchvision is not installed. Skipping torchvision::nms") on every export, ops no DigitNet has."""
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed (tests/without_torchvision.py)
    caplog.set_level(logging.INFO)
    model = to_onnx(DigitNet(ModelConfig(stages=((8,), (16,)))).eval())
    assert model.graph.output[0].name == "probabilities"
    assert not [r.getMessage() for r in caplog.records if "torchvision" in r.getMessage()]


def test_model_names_follow_the_repository_rule(capsys: pytest.CaptureFixture) -> None:
    assert parse_args(["--checkpoint", "x.pt", "--name", "digits.v2"]).name == "digits.v2"  # as the server
    for bad in ("../up", "a/b", ".hidden", "a..b"):
        with pytest.raises(SystemExit):
            parse_args(["--checkpoint", "x.pt", "--name", bad])
        assert NAME_RULE in capsys.readouterr().err


def test_weights_ema_exports_the_moving_average_with_its_own_temperature(exported: Exported, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(5)
    averaged = DigitNet(ModelConfig(stages=((8,), (16,)))).eval()
    torch.nn.init.normal_(averaged.head[-1].weight, std=3.0)
    checkpoint = random_checkpoint(tmp_path / "model.pt", temperature=1.0, ema_temperature=2.0,
                                   ema_state_dict=averaged.state_dict())
    result = export_checkpoint(checkpoint, "digits", 1, tmp_path / "models", exported.data_dir, parity_images=16,
                               weights="ema")
    served = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    images, _ = real_test_sample()
    pixels = (images[:8, None] / 255).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(averaged(torch.from_numpy(pixels)) / 2.0, 1).numpy()
    np.testing.assert_allclose(served.run(["probabilities"], {"input": pixels})[0], expected, atol=1e-5)
    meta = served.get_modelmeta().custom_metadata_map
    assert meta["temperature"] == "2" and "moving average" in meta["weights"] and "--weights ema" in meta["reproduce"]
    plain = random_checkpoint(tmp_path / "plain.pt")  # trained without a moving average
    assert main(["--checkpoint", str(plain), "--name", "digits", "--version", "2", "--repo", str(tmp_path / "models"),
                 "--data-dir", str(exported.data_dir), "--weights", "ema"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no moving average" in err


def test_a_new_export_keeps_the_folders_version_policy(exported: Exported, tmp_path: Path) -> None:
    from export.triton_config import write_triton_config
    from server.runtime.model_config import VersionPolicy, read_model_config

    repo = tmp_path / "models"
    (repo / "digits" / "1").mkdir(parents=True)
    (repo / "digits" / "1" / "model.onnx").write_bytes(exported.result.path.read_bytes())
    write_triton_config(repo / "digits", repo / "digits" / "1" / "model.onnx", version_policy=VersionPolicy("latest", 1))
    export_checkpoint(exported.checkpoint, "digits", 2, repo, exported.data_dir, parity_images=16,
                      allow_less_accurate=True)
    config = read_model_config(repo / "digits")
    assert config.version_policy == VersionPolicy("latest", 1) and len(config.labels) == 10
    export_checkpoint(exported.checkpoint, "fresh", 1, repo, exported.data_dir, parity_images=16)
    assert read_model_config(repo / "fresh").version_policy.kind == "all"  # no config before: every version serves
