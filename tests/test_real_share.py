"""training.real_share and its use in training: the real-looking pool is exactly what the server feeds
the model, its renders never meet the evaluation's, every batch carries its share, and the moving
average of the weights is evaluated beside them."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from server.image.classifier import ImageClassifier
from server.runtime.registry import ModelRegistry
from tests.conftest import COMMITTED_REPOSITORY
from tests.test_train import real_digits
from training import real_share, train
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.model import DigitNet, ModelConfig
from training.photo_pages import TRAINING_SEEDS, make_sample, restroke

POOL_SIZE = 16  # two of each kind
POOL_SEED = 3


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding one rendered (and cached) pool of POOL_SIZE inputs."""
    root = tmp_path_factory.mktemp("data")
    real_share.load_pool(real_digits(0), POOL_SIZE, POOL_SEED, root)
    return root


def test_the_pool_is_the_servers_own_preprocessing_of_rendered_training_digits(pool_dir: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    mnist = real_digits(0)
    monkeypatch.setattr(real_share, "render", lambda *args: pytest.fail("the cached pool was rendered again"))
    pool = real_share.load_pool(mnist, POOL_SIZE, POOL_SEED, pool_dir)
    assert len(pool) == POOL_SIZE and sorted(pool.kinds) == sorted(list(range(len(real_share.POOL_KINDS))) * 2)
    registry = ModelRegistry(str(COMMITTED_REPOSITORY))
    registry.load_all()
    classifier = ImageClassifier.of(registry.get("mnist"))
    plan = real_share.plan(POOL_SIZE, POOL_SEED, len(mnist.train.labels))
    for n, (kind, source, index, stroke) in enumerate(plan):
        name = real_share.POOL_KINDS[kind]
        assert (pool.kinds[n], pool.sources[n], pool.labels[n]) == (kind, source, mnist.train.labels[source])
        # Rendered again here and sent through the classifier's own preparation, as a request would be.
        sample = make_sample(name, mnist.train.images[source], int(pool.labels[n]), TRAINING_SEEDS + POOL_SEED, index,
                             stroke if name == "canvas" else 0)
        served = classifier.prepare([sample.data], max_pixels=real_share.MAX_PIXELS)[0][0]
        np.testing.assert_array_equal(pool.images[n], np.round(served * 255).astype(np.uint8), err_msg=name)
        assert pool.images[n].max() > 200 and pool.images[n][:2].max() < 128, name  # a centred digit, white on black


def test_canvas_strokes_of_other_widths() -> None:
    alpha = np.zeros((60, 40), np.float32)
    alpha[10:50, 18:23] = 1  # a 5-pixel bar
    thicker, thinner = restroke(alpha, 3), restroke(alpha, -1)
    assert thicker.shape == (66, 46) and thicker.sum() > alpha.sum() > thinner.sum() > 0
    assert (thicker > 0.5).sum(axis=1).max() == 11 and (thinner > 0.5).sum(axis=1).max() == 3
    assert restroke(alpha, -4) is alpha  # a brush so thin the digit would vanish leaves it as it was


def test_the_pool_leaves_out_what_training_holds_out(pool_dir: Path) -> None:
    pool = real_share.load_pool(real_digits(0), POOL_SIZE, POOL_SEED, pool_dir)
    held_out = pool.sources[:3]
    kept = pool.without(held_out)
    assert len(kept) == POOL_SIZE - len(set(held_out.tolist())) and not np.isin(kept.sources, held_out).any()


def test_every_batch_carries_its_share_and_an_epoch_keeps_its_steps() -> None:
    args = train.parse_args(["--out", "unused", "--real-share", "0.25", "--batch-size", "32", "--epochs", "1",
                             "--ema-decay", "0", "--device", "cpu"])
    images, labels = torch.zeros(1000, 28, 28, dtype=torch.uint8), torch.arange(1000) % 10
    pool_images, pool_labels = torch.full((50, 28, 28), 255, dtype=torch.uint8), torch.arange(50) % 10
    model = DigitNet(ModelConfig(stages=((4,), (8,))))
    trainer = train.Trainer(args, torch.device("cpu"), model, images, labels, torch.Generator().manual_seed(0), None,
                            None, pool_images, pool_labels)
    batches = trainer.batch_indices()
    assert len(batches) == math.ceil(1000 / 32)  # as many steps as without the share
    mnist_seen = torch.cat([b[b < 1000] for b in batches])
    assert len(set(mnist_seen.tolist())) == len(mnist_seen)  # no MNIST image twice in an epoch
    for index in batches:
        assert len(index) == 32 and int((index >= 1000).sum()) == 8 and int(index.max()) < 1050
        pixels = trainer.batch(index)
        assert pixels.shape == (32, 1, 28, 28)
    assert trainer.train_labels[1000:].tolist() == pool_labels.tolist()
    plain = train.Trainer(train.parse_args(["--out", "unused", "--batch-size", "32", "--real-share", "0"]),
                          torch.device("cpu"), model, images, labels, torch.Generator().manual_seed(0), None, None,
                          pool_images, pool_labels)
    assert all(int(b.max()) < 1000 for b in plain.batch_indices())  # --real-share 0: MNIST alone


def test_a_run_with_the_share_records_raw_and_averaged_weights(pool_dir: Path, tmp_path: Path) -> None:
    args = train.parse_args(["--out", str(tmp_path), "--data-dir", str(pool_dir), "--stages", "8:16", "--epochs", "2",
                             "--batch-size", "32", "--real-share", "0.25", "--real-pool", str(POOL_SIZE),
                             "--real-seed", str(POOL_SEED), "--ema-decay", "0.9", "--calibration-images", "100",
                             "--threads", "1", "--device", "cpu"])
    summary = train.run(args, real_digits(0))
    assert 0 < summary["real_looking_images"] <= POOL_SIZE
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for row in metrics["epochs"]:
        assert 0 <= row["ema_eval_accuracy"] <= 1 and row["ema_temperature"] > 0 and 0 <= row["ema_eval_ece"] <= 1
    assert metrics["final_ema_accuracy"] == metrics["epochs"][-1]["ema_eval_accuracy"]
    content = load_checkpoint(tmp_path / "model.pt")
    assert content["ema_test_accuracy"] == summary["final_ema_accuracy"] and content["args"]["real_share"] == 0.25
    averaged = model_from_checkpoint({**content, "state_dict": content["ema_state_dict"]})
    raw = model_from_checkpoint(content)
    assert not torch.equal(averaged.head[-1].weight, raw.head[-1].weight)  # an average, not a copy
