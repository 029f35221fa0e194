"""Export a training checkpoint to a checked, self-describing ONNX file in the model repository."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export import card, quantize
from export.onnx_export import (PARITY_IMAGES, ExportError, check_parity, check_structure, labels_json,
                                onnx_accuracy, session, set_metadata, to_onnx)
from training import train
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.data import DEFAULT_DATA_DIR, DataError, ensure_mnist, load_mnist, sha256_file
from training.model import parameter_count

log = logging.getLogger(__name__)

RECIPE_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "rotation", "scale",
               "shift", "no_augment", "seed", "precision", "threads", "fast", "limit", "validation")


@dataclass(frozen=True)
class ExportResult:
    """Where the file went and what was measured."""

    path: Path
    test_accuracy: float
    parity: dict
    card: Path


def training_command(args: dict) -> str:
    """The `python -m training.train` command line that differs from the defaults as this run did."""
    defaults = train.plain_args(train.parse_args([]))
    flags = []
    for key, value in args.items():
        default = defaults.get(key)
        if key in ("out", "data_dir") or key not in defaults or json.dumps(value) == json.dumps(default):
            continue
        if isinstance(value, bool):
            flags.append(f"--{key.replace('_', '-')}")
        elif key == "stages":
            flags.append("--stages " + ":".join(",".join(str(w) for w in stage) for stage in value))
        else:
            flags.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(["python -m training.train", *flags])


def base_metadata(content: dict, checkpoint: Path, network: torch.nn.Module, export_command: str) -> dict[str, str]:
    """What the server needs (labels, preprocessing, output kind) and where the model came from."""
    classes = network.config.num_classes
    args = content.get("args", {})
    return {
        "labels": labels_json(classes),
        "preprocessing": "mnist-digit",
        "output_kind": "probabilities",
        "architecture": "DigitNet (training/model.py): 3x3 conv-BN-ReLU stages, max-pool, global average pool, linear",
        "model_config": json.dumps(content["model_config"]),
        "parameters": str(parameter_count(network)),
        "training_args": json.dumps({k: args[k] for k in RECIPE_KEYS if k in args}),
        "training_seconds": str(content.get("training_s", "")),
        "training_device": str(content.get("device", "")),
        "training_precision": str(content.get("precision", "")),
        "train_images": str(content.get("train_images", "")),
        "epochs_trained": str(content.get("epoch", "")),
        "training_data_sha256": str(content.get("dataset_sha256", "")),
        "training_data_files": json.dumps(content["data_sha256"], sort_keys=True),
        "checkpoint_sha256": sha256_file(checkpoint),
        "torch_test_accuracy": str(content.get("test_accuracy")),
        "torch_version": str(content["torch_version"]),
        "onnxruntime_version": ort.__version__,
        "reproduce": f"{training_command(args)}\n{export_command}",
    }


def input_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] → float32 [N, 1, 28, 28] in [0, 1], the graph's input."""
    return (images.astype(np.float32) / 255.0)[:, None]


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary name beside `path`, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def int8_variant(model: onnx.ModelProto, metadata: dict[str, str], calibration: np.ndarray, pixels: np.ndarray,
                 labels: np.ndarray, size: int, classes: int) -> tuple[onnx.ModelProto | None, str]:
    """Quantize, measure against fp32, and return the int8 model when it earns shipping, plus the verdict."""
    int8 = quantize.quantize(model, calibration)
    measurement = quantize.measure(model, int8, pixels, labels)
    log.info("int8: %s", measurement.describe())
    if not measurement.ship:
        return None, measurement.describe()
    set_metadata(int8, {**metadata, "test_accuracy": f"{measurement.int8_accuracy:.4f}",
                        "quantization": "int8 static QDQ, per-channel weights, MinMax calibration on "
                                        f"{len(calibration)} training images",
                        "int8_measurement": measurement.describe()})
    check_structure(int8, size, classes)
    return int8, measurement.describe()


def export_checkpoint(checkpoint: Path, name: str, version: int, repo: Path, data_dir: Path = DEFAULT_DATA_DIR,
                      force: bool = False, parity_images: int = PARITY_IMAGES, int8: bool = False) -> ExportResult:
    """Build, check and write `repo/name/version/model.onnx` and the card; nothing is written on failure."""
    target = repo / name / str(version) / "model.onnx"
    if target.exists() and not force:
        raise ExportError(f"{target} already exists; pass --force to replace it")
    content = load_checkpoint(checkpoint)
    network = model_from_checkpoint(content, checkpoint)
    ensure_mnist(data_dir)
    mnist = load_mnist(data_dir)
    test = mnist.test
    model = to_onnx(network)
    command = f"python -m export --checkpoint {checkpoint} --name {name} --version {version} --repo {repo}"
    metadata = base_metadata(content, checkpoint, network, command + (" --int8" if int8 else ""))
    set_metadata(model, metadata)
    size, classes = network.config.image_size, network.config.num_classes
    check_structure(model, size, classes)
    runtime = session(model.SerializeToString())
    pixels = input_pixels(test.images)
    parity = check_parity(runtime, network, pixels[:parity_images]).to_dict()
    accuracy = onnx_accuracy(runtime, pixels, test.labels)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    metadata.update({"test_accuracy": f"{accuracy:.4f}", "parity": json.dumps(parity), "opset": str(opset),
                     "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    set_metadata(model, metadata)
    quantized = None
    if int8:
        calibration = input_pixels(mnist.train.images[:quantize.CALIBRATION_IMAGES])
        quantized, metadata["int8_measurement"] = int8_variant(model, metadata, calibration, pixels, test.labels,
                                                                size, classes)
        set_metadata(model, metadata)
    check_structure(model, size, classes)
    write_atomically(target, model.SerializeToString())
    if quantized is not None:
        write_atomically(repo / f"{name}-int8" / str(version) / "model.onnx", quantized.SerializeToString())
        card.write_model_card(repo / f"{name}-int8")
    log.info("wrote %s: test accuracy %.4f, parity %s", target, accuracy, parity)
    return ExportResult(target, accuracy, parity, card.write_model_card(repo / name))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; every default shows in --help."""
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="runs/<run>/model.pt")
    parser.add_argument("--name", default="mnist", help="model name in the repository")
    parser.add_argument("--version", type=int, default=1, help="numeric version folder")
    parser.add_argument("--repo", type=Path, default=Path("models"), help="model repository root")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST root (test images)")
    parser.add_argument("--parity-images", type=int, default=PARITY_IMAGES,
                        help="test images compared against PyTorch at batch sizes 1, 7 and 64")
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    parser.add_argument("--int8", action="store_true",
                        help="also quantize (int8 QDQ); ship it as <name>-int8 only if faster and <= 0.1 pt less "
                             "accurate, else record the measurement in the model card")
    args = parser.parse_args(argv)
    if args.version < 1:
        parser.error(f"--version must be a positive integer, got {args.version}")
    if not args.name or not args.name.replace("-", "").replace("_", "").isalnum():
        parser.error(f"--name must be letters, digits, '-' or '_', got {args.name!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m export`; a failed check is one line on stderr and exit status 1."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = export_checkpoint(args.checkpoint, args.name, args.version, args.repo, args.data_dir,
                                   args.force, args.parity_images, args.int8)
    except (ExportError, CheckpointError, DataError) as error:
        print(f"error: {error} (nothing written)", file=sys.stderr)
        return 1
    print(f"{result.path}: test accuracy {100 * result.test_accuracy:.2f} % (onnxruntime), "
          f"max abs diff vs torch {result.parity['max_abs_diff']:.2e}; model card {result.card}")
    return 0
