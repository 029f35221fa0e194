"""training.train on a fake MNIST: dry run, --limit run, reproducibility, Ctrl-C, augmentation."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.mnist_fixture import write_fake_mnist
from training import train
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.model import DigitNet, ModelConfig

TINY = ["--stages", "4:8", "--batch-size", "64", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake MNIST with the official counts; training code cannot tell it from the real one."""
    root = tmp_path_factory.mktemp("mnist")
    write_fake_mnist(root)
    return root


def run_training(data_dir: Path, out: Path, *extra: str) -> dict:
    """Train in-process with the CLI's own argument parsing; return the run summary."""
    return train.run(train.parse_args(["--data-dir", str(data_dir), "--out", str(out), *extra]))


def test_dry_run_writes_a_checkpoint_that_loads(fake_data: Path, tmp_path: Path) -> None:
    summary = run_training(fake_data, tmp_path, "--dry-run", "--threads", "1")  # the default model
    content = load_checkpoint(tmp_path / "model.pt")
    model = model_from_checkpoint(content)
    assert summary["parameters"] == sum(p.numel() for p in model.parameters()) < 300_000
    assert content["epoch"] == 1 and content["args"]["dry_run"] is True
    assert content["data_sha256"]["t10k-images-idx3-ubyte"] and content["torch_version"] == str(torch.__version__)
    probabilities = model(torch.rand(3, 1, 28, 28)).softmax(1)
    assert probabilities.shape == (3, 10)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1 and metrics["epochs"][0]["train_images_per_s"] > 0
    for plot in ("curves.png", "confusion.png", "misclassified.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_limit_run_trains_and_records_test_accuracy(fake_data: Path, tmp_path: Path) -> None:
    summary = run_training(fake_data, tmp_path, "--limit", "512", "--epochs", "2", "--lr", "0.05", *TINY)
    content = load_checkpoint(tmp_path / "model.pt")
    assert summary["train_images"] == 512 and summary["eval_set"] == "test"
    assert content["epoch"] == 2 and content["test_accuracy"] == summary["final_accuracy"]
    assert content["model_config"]["stages"] == [[4], [8]]
    epochs = json.loads((tmp_path / "metrics.json").read_text())["epochs"]
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]  # it learns the fake digits' bars


def test_validation_split_keeps_the_test_set_untouched(fake_data: Path, tmp_path: Path) -> None:
    summary = run_training(fake_data, tmp_path, "--validation", "1000", "--dry-run", "--precision", "fp32", *TINY)
    content = load_checkpoint(tmp_path / "model.pt")
    assert summary["eval_set"] == "validation" and content["test_accuracy"] is None
    assert summary["precision"] == "float32" and content["precision"] == "float32"
    assert content["validation_accuracy"] is not None


def test_same_seed_gives_identical_weights(fake_data: Path, tmp_path: Path) -> None:
    weights = []
    for run, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        run_training(fake_data, tmp_path / run, "--limit", "256", "--epochs", "1", "--seed", seed, *TINY)
        weights.append(load_checkpoint(tmp_path / run / "model.pt")["state_dict"])
    same, other = weights[0], weights[2]
    assert all(torch.equal(same[key], weights[1][key]) for key in same)
    assert not all(torch.equal(same[key], other[key]) for key in same)


def test_ctrl_c_keeps_the_last_finished_epoch(fake_data: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "training.train", "--data-dir", str(fake_data), "--out", str(tmp_path),
               "--limit", "256", "--epochs", "10000", *TINY]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "model.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    content = load_checkpoint(tmp_path / "model.pt")
    assert content["epoch"] >= 1 and f"kept epoch {content['epoch']}'s checkpoint" in output
    assert not list(tmp_path.glob("*.part"))


def test_augmentation_is_per_image_and_identity_when_disabled() -> None:
    generator = torch.Generator().manual_seed(0)
    digit = torch.zeros(1, 1, 28, 28)
    digit[..., 8:20, 12:16] = 1.0
    batch = digit.repeat(4, 1, 1, 1)
    augmented = train.random_affine(batch, generator, rotation_deg=15, scale=0.1, shift_px=2)
    assert augmented.shape == batch.shape
    assert not torch.allclose(augmented[0], augmented[1])  # each image its own transform
    assert math.isclose(augmented.sum().item() / 4, digit.sum().item(), rel_tol=0.3)
    unchanged = train.random_affine(batch, generator, rotation_deg=0, scale=0, shift_px=0)
    torch.testing.assert_close(unchanged, batch, atol=1e-5, rtol=0)


def test_model_takes_raw_pixels_and_normalises_inside() -> None:
    model = DigitNet(ModelConfig(stages=((4,), (8,)))).eval()
    config = ModelConfig.from_dict(model.config.to_dict())
    assert config == model.config and model.mean.item() == pytest.approx(0.1307)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_bad_arguments_exit_with_a_one_line_message(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--epochs", "0"])
    assert exit_info.value.code != 0
    assert "--epochs must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--stages", "32,x"])


def test_help_shows_defaults() -> None:
    result = subprocess.run([sys.executable, "-m", "training.train", "--help"], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0 and "(default: 12)" in result.stdout and "--fast" in result.stdout
