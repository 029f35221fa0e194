"""A fake MNIST in torchvision's raw layout with the official class counts, written in tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import MNIST_SAMPLE
from training.data import TEST_CLASS_COUNTS, TRAIN_CLASS_COUNTS, Split, write_splits


def fake_split(counts: tuple[int, ...], rng: np.random.Generator) -> Split:
    """Labels with exactly `counts` per class; each image a faint noise field with a bright bar
    whose position depends on the label, so a tiny network has something to learn."""
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int64)
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    rows = 3 + 2 * labels
    images[np.arange(len(labels)), rows, 4:24] = 255
    return Split(images, labels)


def write_fake_mnist(data_dir: Path, seed: int = 0) -> dict[str, Split]:
    """Write the four raw IDX files under data_dir/MNIST/raw; return what was written."""
    rng = np.random.default_rng(seed)
    splits = {"train": fake_split(TRAIN_CLASS_COUNTS, rng), "test": fake_split(TEST_CLASS_COUNTS, rng)}
    write_splits(splits, data_dir)
    return splits


def real_test_sample() -> tuple[np.ndarray, np.ndarray]:
    """The committed first 200 official MNIST test images and labels."""
    with np.load(MNIST_SAMPLE) as sample:
        return sample["images"], sample["labels"]
