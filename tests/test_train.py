"""training.train on a fake MNIST: dry run, --limit run, reproducibility, Ctrl-C, augmentation."""
from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from tests.mnist_fixture import write_fake_mnist
from training import train
from training.calibration import expected_calibration_error, fit_temperature, softmax
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import RECIPE_KEYS, TrainConfig, training_command
from training.data import Mnist, Split
from training.model import DigitNet, ModelConfig, multiply_adds

REAL_DIGITS = ROOT / "tests" / "data" / "mnist_test_2000.npz"

# MNIST alone: the real-looking share (tests/test_real_share.py) renders its pool through Pillow.
TINY = ["--stages", "4:8", "--batch-size", "64", "--threads", "1", "--device", "cpu", "--real-share", "0"]


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


def ignore_sigint() -> None:
    """In the child before exec: SIGINT ignored, as `make test &`, nohup and CI shells start jobs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("started_with_sigint_ignored", [False, True], ids=["sigint-default", "sigint-ignored"])
def test_ctrl_c_keeps_the_last_finished_epoch(fake_data: Path, tmp_path: Path, started_with_sigint_ignored: bool) -> None:
    command = [sys.executable, "-m", "training.train", "--data-dir", str(fake_data), "--out", str(tmp_path),
               "--limit", "256", "--epochs", "10000", *TINY]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=ignore_sigint if started_with_sigint_ignored else None)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "model.pt").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:  # whatever happened above, the child does not outlive the test
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    assert process.returncode == 130, output
    content = load_checkpoint(tmp_path / "model.pt")
    assert content["epoch"] >= 1 and f"kept epoch {content['epoch']}'s checkpoint" in output
    assert not list(tmp_path.glob("*.part"))


def test_without_a_terminal_training_logs_its_progress(fake_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Output to a file or a pipe shows no progress bar: a line every PROGRESS_SECONDS (0 here: every
    batch) says how far the epoch is, at how many images a second, and one line ends each epoch."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal, whatever runs the tests
    monkeypatch.setattr(train, "PROGRESS_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="training.train")
    run_training(fake_data, tmp_path, "--limit", "256", "--epochs", "1", *TINY)
    lines = [record.getMessage() for record in caplog.records]
    progress = [line for line in lines if re.fullmatch(r"epoch 1/1: \d+/256 images, \d+ img/s, train loss .* acc .*", line)]
    assert [int(line.split(": ")[1].split("/")[0]) for line in progress] == [64, 128, 192, 256], lines
    assert sum(line.startswith("epoch 1/1: train loss") for line in lines) == 1


def test_a_run_stopped_before_its_first_epoch_leaves_no_folder(fake_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "training.train", "--data-dir", str(fake_data), "--out", str(out),
               "--epochs", "1", *TINY]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = ""
        while " training " not in output and process.poll() is None:  # the line before the first epoch
            output += process.stdout.readline()
        process.send_signal(signal.SIGINT)
        output += process.communicate(timeout=60)[0]
    finally:  # whatever happened above, the child does not outlive the test
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    assert process.returncode == 130 and "Traceback" not in output, output
    assert not out.exists()


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


def test_elastic_distortion_is_smooth_local_and_per_image() -> None:
    field = train.elastic_field(64, 28, 28, torch.Generator().manual_seed(0), alpha_px=20, sigma_px=5,
                                device=torch.device("cpu"))
    pixels = field * 14  # grid units to pixels: the grid spans 2 units over 28 pixels
    assert field.shape == (64, 28, 28, 2)
    assert 0.3 < pixels.std().item() < 3 and pixels.abs().max().item() < 10  # a few pixels, not a scramble
    neighbour_step = (pixels[:, 1:] - pixels[:, :-1]).abs().mean()
    assert neighbour_step < pixels.abs().mean() / 3  # smooth: neighbours move together
    assert not torch.allclose(field[0], field[1])
    digit = torch.zeros(2, 1, 28, 28)
    digit[..., 8:20, 12:16] = 1.0
    generator = torch.Generator().manual_seed(1)
    distorted = train.random_affine(digit, generator, 0, 0, 0, elastic_px=20, elastic_sigma=5)
    assert not torch.allclose(distorted, digit, atol=1e-3)
    assert math.isclose(distorted.sum().item(), digit.sum().item(), rel_tol=0.3)  # ink moved, not lost


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
    assert result.returncode == 0 and "(default: 30)" in result.stdout and "--fast" in result.stdout


def real_digits(shift_labels: int) -> Mnist:
    """2,000 official test digits as a tiny MNIST: 1,500 to train on (labels rolled by `shift_labels`,
    so 1 pairs each image with its neighbour's label), 500 to evaluate on with their true labels."""
    with np.load(REAL_DIGITS) as sample:
        images, labels = sample["images"], sample["labels"]
    return Mnist(Split(images[:1500], np.roll(labels[:1500], shift_labels)), Split(images[1500:], labels[1500:]),
                 {"mnist_test_2000.npz": "0" * 64})


@pytest.mark.parametrize("shift_labels", [0, 1], ids=["aligned-labels", "misaligned-labels"])
def test_a_few_seconds_on_real_digits_learns_them_unless_labels_are_misaligned(tmp_path: Path,
                                                                                shift_labels: int) -> None:
    args = train.parse_args(["--out", str(tmp_path), "--stages", "8:16:32", "--epochs", "8", "--batch-size", "32",
                             "--lr", "0.1", "--dropout", "0", "--no-augment", "--teacher", "none",
                             "--calibration-images", "0", "--real-share", "0", "--threads", "1", "--device", "cpu"])
    summary = train.run(args, real_digits(shift_labels))
    assert summary["train_images"] == 1500 and summary["eval_images"] == 500
    if shift_labels:  # the negative control: the same loop learns nothing from mislabelled pairs
        assert summary["final_accuracy"] < 0.3, summary
    else:  # chance is 10 %; this run reaches ~94 %
        assert summary["final_accuracy"] > 0.8, summary


def test_recipe_keys_and_reproduce_command_come_from_the_config() -> None:
    assert set(RECIPE_KEYS) <= {f for f in TrainConfig.__dataclass_fields__}
    assert {"epochs", "lr", "seed", "teacher", "calibration_images"} <= set(RECIPE_KEYS)
    assert "out" not in RECIPE_KEYS and "data_dir" not in RECIPE_KEYS
    argv = ["--epochs", "3", "--stages", "8,8:16", "--no-augment", "--teacher", "none", "--lr", "0.05", "--separable"]
    args = train.parse_args(argv + ["--out", "runs/x"])
    command = training_command(args.to_dict())
    assert command.startswith("python -m training.train ") and "--out" not in command
    assert train.parse_args(command.split()[3:] + ["--out", "runs/x"]) == args  # the command rebuilds the run
    assert training_command(train.parse_args(["--out", "runs/y"]).to_dict()) == "python -m training.train"


def test_temperature_fit_recovers_a_known_temperature_and_lowers_ece() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 10))
    true_temperature = 2.5  # labels drawn from softmax(logits / 2.5): raw logits are overconfident
    probabilities = softmax(logits, true_temperature)
    labels = np.array([rng.choice(10, p=row) for row in probabilities])
    fitted = fit_temperature(logits, labels)
    assert abs(fitted - true_temperature) < 0.25, fitted
    assert expected_calibration_error(softmax(logits, fitted), labels) < 0.03
    assert expected_calibration_error(softmax(logits), labels) > 0.1
    # one confident right answer and one confident wrong answer: ECE is the mean gap, 0.5 + 0.5 / 2
    assert expected_calibration_error(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]), bins=15) == \
        pytest.approx(0.4)


def test_stem_stride_and_separable_blocks_cut_multiply_adds() -> None:
    plain = DigitNet(ModelConfig(stages=((16,), (32, 32))))
    for cheaper in (ModelConfig(stages=((16,), (32, 32)), stem_stride=2),
                    ModelConfig(stages=((16,), (32, 32)), separable=True)):
        model = DigitNet(cheaper).eval()
        assert multiply_adds(model) < multiply_adds(plain) / 2
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert multiply_adds(DigitNet(ModelConfig(stages=((32, 32), (64, 64), (128, 128))))) == 29_128_448  # version 1's
    assert multiply_adds(DigitNet(ModelConfig())) < 4_000_000  # version 2's lean net, the default


def test_frontier_plot_is_drawn_from_the_committed_rows(tmp_path: Path) -> None:
    from training import plots

    frontier = Path(__file__).resolve().parents[1] / "docs" / "results" / "training-frontier.json"
    assert plots.main([str(frontier), str(tmp_path / "frontier.png")]) == 0
    assert (tmp_path / "frontier.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(SystemExit) as refused:
        plots.main([str(tmp_path / "broken.json"), str(tmp_path / "x.png")])
    assert refused.value.code == 1 and not (tmp_path / "x.png").exists()
