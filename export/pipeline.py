"""The export pipeline: checkpoint → checked ONNX file with its metadata → the model repository."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from export.card import read_metadata, write_model_card
from export.onnx_export import PARITY_IMAGES, ExportError, check_structure, convert, labels_json
from export.quantize import CALIBRATION_IMAGES, measure, quantize
from export.triton_config import write_triton_config
from server.runtime.layout import latest_model_file, model_path
from server.runtime.model_config import CONFIG_FILE, ModelConfigError, VersionPolicy, parse_model_config
from training.atomic import write_atomically
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import recipe, training_command
from training.data import DEFAULT_DATA_DIR, TEST_CLASS_COUNTS, ensure_mnist, load_mnist, sha256_file
from training.model import DigitNet, ModelConfig, multiply_adds, parameter_count

log = logging.getLogger(__name__)

WEIGHTS = {"last": "the last epoch's weights",
           "ema": "the exponential moving average of the weights (BatchNorm statistics too), as trained"}


@dataclass(frozen=True)
class ExportResult:
    """Where the files went and what was measured."""

    path: Path
    test_accuracy: float
    parity: dict
    card: Path
    triton_config: Path


def architecture(config: ModelConfig) -> str:
    """One line naming the network's shape, for the metadata and the model card."""
    convolutions = "3x3 conv-BN-ReLU" if not config.separable else \
        "a 3x3 conv-BN-ReLU stem, then depthwise-separable (3x3 depthwise + 1x1 pointwise) conv-BN-ReLU"
    stem = ", the first with stride 2" if config.stem_stride == 2 else ""
    return (f"DigitNet (training/model.py): {convolutions} stages{stem}, max-pool between stages, "
            "global average pool, linear")


def provenance(content: dict, checkpoint: Path, network: DigitNet, export_command: str) -> dict[str, str]:
    """What the server needs (labels, preprocessing, output kind) and where the model came from."""
    args = content.get("args", {})
    return {
        "labels": labels_json(network.config.num_classes),
        "preprocessing": "mnist-digit",
        "output_kind": "probabilities",
        "architecture": architecture(network.config),
        "model_config": json.dumps(content["model_config"]),
        "parameters": str(parameter_count(network)),
        "multiply_adds": str(multiply_adds(network)),
        "training_args": json.dumps(recipe(args)),
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


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace the file's metadata_props with `metadata` (all values strings)."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {key: str(value) for key, value in metadata.items()})


def default_to_beat(repo: Path, name: str, version: int) -> tuple[str, float] | None:
    """The version that `version` would replace as `name`'s default (the highest version), and the test
    accuracy recorded in its file; None when it would not become the default or nothing is recorded."""
    current = latest_model_file(repo, name)
    if current is None or int(current.parent.name) > version:
        return None
    recorded = read_metadata(current).get("test_accuracy")
    return (current.parent.name, float(recorded)) if recorded else None


def less_accurate_error(name: str, version: int, accuracy: str, current: tuple[str, float]) -> ExportError:
    """The refusal to make a less accurate version the default, saying how to export it anyway."""
    return ExportError(f"version {version} ({accuracy}) would replace {name}/{current[0]} "
                       f"({100 * current[1]:.2f} %) as the default; pass --allow-less-accurate "
                       "(make export EXPORT_ARGS=--allow-less-accurate) to export it anyway")


def kept_version_policy(model_dir: Path) -> VersionPolicy:
    """The version_policy of the folder's config.pbtxt, which a new export keeps (a repository that
    serves only its latest version stays that way); `all`, as this server serves a folder without one."""
    try:
        return parse_model_config((model_dir / CONFIG_FILE).read_text(), model_dir).version_policy
    except (OSError, ModelConfigError):
        return VersionPolicy("all")


def refuse_less_accurate_default(repo: Path, name: str, version: int, accuracy: float) -> None:
    """Raise when this version would become `name`'s default (the highest version) in place of a
    more accurate one: `make train --fast` then `make export` must not quietly demote the model."""
    current = default_to_beat(repo, name, version)
    if current and round(accuracy, 4) < current[1]:
        raise less_accurate_error(name, version, f"{100 * accuracy:.2f} % on the test set", current)


# A checkpoint's test accuracy against the exported file's: the same images, the same fp32 weights,
# only the runtime differs (argmax flips of a few of the 10,000 answers at most).
RUNTIME_MARGIN = 0.001


def checkpoint_accuracy_ceiling(content: dict) -> float | None:
    """The highest test accuracy a full evaluation of this checkpoint could plausibly find, from the
    accuracy training recorded: 4 standard errors above it when it was measured on a subset
    (--limit, --dry-run), plus RUNTIME_MARGIN. None when no test accuracy was recorded (--validation)."""
    accuracy, args = content.get("test_accuracy"), content.get("args", {})
    if accuracy is None:
        return None
    test_images = sum(TEST_CLASS_COUNTS)
    measured_on = min(test_images, args.get("batch_size", test_images) if args.get("dry_run") else args.get("limit") or test_images)
    spread = 0.0 if measured_on >= test_images else 4 * math.sqrt(max(accuracy * (1 - accuracy), 1 / measured_on) / measured_on)
    return float(accuracy) + spread + RUNTIME_MARGIN


def refuse_early(content: dict, repo: Path, name: str, version: int) -> None:
    """Refuse before exporting and evaluating (most of an export's time) when the accuracy the
    checkpoint recorded cannot reach that of the default it would replace."""
    current, ceiling = default_to_beat(repo, name, version), checkpoint_accuracy_ceiling(content)
    if current and ceiling is not None and ceiling < current[1]:
        raise less_accurate_error(name, version, f"{100 * float(content['test_accuracy']):.2f} % on the test set "
                                  "as its checkpoint records", current)


def int8_variant(model: onnx.ModelProto, metadata: dict[str, str], calibration: np.ndarray, pixels: np.ndarray,
                 labels: np.ndarray, config: ModelConfig) -> tuple[onnx.ModelProto | None, str]:
    """Quantize, measure against fp32, and return the int8 model when it earns shipping, plus the verdict."""
    int8 = quantize(model, calibration)
    measurement = measure(model, int8, pixels, labels)
    log.info("int8: %s", measurement.describe())
    if not measurement.ship:
        return None, measurement.describe()
    set_metadata(int8, {**metadata, "test_accuracy": f"{measurement.int8_accuracy:.4f}",
                        "quantization": "int8 static QDQ, per-channel weights, MinMax calibration on "
                                        f"{len(calibration)} training images",
                        "int8_measurement": measurement.describe()})
    check_structure(int8, config.image_size, config.num_classes)
    return int8, measurement.describe()


def chosen_weights(content: dict, checkpoint: Path, weights: str) -> dict:
    """The checkpoint as the export reads it: its last weights, or (`ema`) the moving average of
    them that training evaluated beside them, with that average's own temperature and accuracy."""
    if weights == "last":
        return content
    if "ema_state_dict" not in content:
        raise ExportError(f"{checkpoint}: no moving average of the weights in it (trained with --ema-decay 0?)")
    return {**content, "state_dict": content["ema_state_dict"], "temperature": content.get("ema_temperature"),
            "test_accuracy": content.get("ema_test_accuracy")}


def export_checkpoint(checkpoint: Path, name: str, version: int, repo: Path, data_dir: Path = DEFAULT_DATA_DIR,
                      force: bool = False, parity_images: int = PARITY_IMAGES, int8: bool = False,
                      allow_less_accurate: bool = False, weights: str = "last") -> ExportResult:
    """Build, check and write `repo/name/version/model.onnx` and the card; nothing is written on failure."""
    target = model_path(repo, name, version)
    if target.exists() and not force:
        raise ExportError(f"{target} already exists; pass --force to replace it")
    content = chosen_weights(load_checkpoint(checkpoint), checkpoint, weights)
    if not allow_less_accurate:
        refuse_early(content, repo, name, version)
    network = model_from_checkpoint(content, checkpoint)
    temperature = float(content.get("temperature") or 1.0)
    ensure_mnist(data_dir)
    mnist = load_mnist(data_dir)
    pixels = input_pixels(mnist.test.images)
    converted = convert(network, temperature, pixels[:parity_images], pixels, mnist.test.labels)
    if not allow_less_accurate:
        refuse_less_accurate_default(repo, name, version, converted.accuracy)
    command = f"python -m export --checkpoint {checkpoint} --name {name} --version {version} --repo {repo}"
    command += (" --int8" if int8 else "") + (" --allow-less-accurate" if allow_less_accurate else "")
    command += f" --weights {weights}" if weights != "last" else ""
    metadata = {**provenance(content, checkpoint, network, command), "weights": WEIGHTS[weights],
                "temperature": f"{temperature:g}", "test_accuracy": f"{converted.accuracy:.4f}",
                "test_ece": f"{converted.ece:.4f}", "parity": json.dumps(converted.parity.to_dict()),
                "opset": str(converted.opset), "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    model, quantized = converted.model, None
    if int8:
        calibration = input_pixels(mnist.train.images[:CALIBRATION_IMAGES])
        quantized, metadata["int8_measurement"] = int8_variant(model, metadata, calibration, pixels,
                                                                mnist.test.labels, network.config)
    set_metadata(model, metadata)
    write_atomically(target, model.SerializeToString())
    # Triton's own description of the folder (labels, max_batch_size, batching as this server does).
    write_triton_config(repo / name, target, version_policy=kept_version_policy(repo / name))
    if quantized is not None:
        write_atomically(model_path(repo, f"{name}-int8", version), quantized.SerializeToString())
        write_triton_config(repo / f"{name}-int8", model_path(repo, f"{name}-int8", version),
                            version_policy=kept_version_policy(repo / f"{name}-int8"))
        write_model_card(repo / f"{name}-int8")
    log.info("wrote %s: test accuracy %.4f, ECE %.4f at temperature %g, parity %s", target, converted.accuracy,
             converted.ece, temperature, converted.parity.to_dict())
    return ExportResult(target, converted.accuracy, converted.parity.to_dict(), write_model_card(repo / name),
                        repo / name / CONFIG_FILE)
