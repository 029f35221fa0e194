"""Checkpoint → ONNX bytes, and the checks a file must pass before it is written."""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import shape_inference

from training.calibration import expected_calibration_error
from training.model import DigitNet

log = logging.getLogger(__name__)

OPSET = 18
MIN_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "N"
PARITY_BATCH_SIZES = (1, 7, 64)
PARITY_IMAGES = 1008
PARITY_TOLERANCE = 1e-5


class ExportError(Exception):
    """A check failed; nothing was written."""


# Loggers of the exporter's graph optimiser, which log a dozen INFO lines per export
# ("Removed 38 unused nodes", "Skipping constant folding ..."): progress that is not ours to report.
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


class ProbabilityModel(torch.nn.Module):
    """The trained network with a temperature-scaled softmax appended: the graph outputs probabilities."""

    def __init__(self, network: DigitNet, temperature: float = 1.0) -> None:
        super().__init__()
        self.network = network
        self.temperature = temperature

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class probabilities [N, classes] for [0, 1] pixels [N, 1, 28, 28]."""
        logits = self.network(pixels)
        return torch.softmax(logits if self.temperature == 1.0 else logits / self.temperature, dim=1)


def fold_temperature(network: DigitNet, temperature: float) -> DigitNet:
    """A copy of `network` whose logits are already divided by `temperature`: the final linear
    layer's weight and bias are scaled, so the calibration costs no extra operator in the graph."""
    folded = copy.deepcopy(network).eval()
    if temperature != 1.0:
        linear = folded.head[-1]
        with torch.no_grad():
            linear.weight.div_(temperature)
            linear.bias.div_(temperature)
    return folded


# Where torch has no torchvision (the CPU build, make TORCH=cpu), its op registry warns once per
# torchvision operator on every export ("torchvision is not installed. Skipping torchvision::nms"):
# operators a DigitNet never uses.
REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


def not_a_torchvision_skip(record: logging.LogRecord) -> bool:
    """A logging filter: false for the registry's "torchvision is not installed" lines."""
    return not record.getMessage().startswith("torchvision is not installed")


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings, its optimiser's INFO logging and its registry's torchvision
    skips for the duration."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    registry = logging.getLogger(REGISTRY_LOGGER)
    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        registry.addFilter(not_a_torchvision_skip)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        registry.removeFilter(not_a_torchvision_skip)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def to_onnx(network: DigitNet, temperature: float = 1.0) -> onnx.ModelProto:
    """Export with torch's dynamo exporter: one file, dynamic batch axis named N, the softmax
    temperature folded into the last layer."""
    wrapper = ProbabilityModel(fold_temperature(network, temperature)).eval()
    size = network.config.image_size
    example = torch.rand(2, 1, size, size)
    with quiet_exporter():
        program = torch.onnx.export(
            wrapper, (example,), None, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={"pixels": {0: torch.export.Dim(BATCH_DIM, min=1)}},
            opset_version=OPSET, external_data=False, verbose=False)
    model = program.model_proto
    model.producer_name = "mnist-serve export"
    return model


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace the file's metadata_props with `metadata` (all values strings)."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {key: str(value) for key, value in metadata.items()})


def dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    """A tensor's shape: ints for fixed axes, names for symbolic ones."""
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_structure(model: onnx.ModelProto, image_size: int, classes: int) -> None:
    """Full checker, strict shape inference, the interface contract, and no external data."""
    try:
        onnx.checker.check_model(model, full_check=True)
        shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, shape_inference.InferenceError) as error:
        raise ExportError(f"ONNX check failed: {error}") from None
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    float_type = onnx.TensorProto.FLOAT
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    expected = {
        "opset >= 17": opset >= MIN_OPSET,
        f"input {INPUT_NAME} float32 [{BATCH_DIM},1,{image_size},{image_size}]":
            graph_input.name == INPUT_NAME and graph_input.type.tensor_type.elem_type == float_type
            and dims(graph_input) == [BATCH_DIM, 1, image_size, image_size],
        f"output {OUTPUT_NAME} float32 [{BATCH_DIM},{classes}]":
            graph_output.name == OUTPUT_NAME and graph_output.type.tensor_type.elem_type == float_type
            and dims(graph_output) == [BATCH_DIM, classes],
        "no external data": not any(t.data_location == onnx.TensorProto.EXTERNAL
                                    for t in model.graph.initializer),
    }
    failed = [name for name, ok in expected.items() if not ok]
    if failed:
        raise ExportError(f"exported graph does not meet: {', '.join(failed)} "
                          f"(got input {dims(graph_input)}, output {dims(graph_output)}, opset {opset})")


def session(model_bytes: bytes) -> ort.InferenceSession:
    """A CPU onnxruntime session for the serialized model."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Parity:
    """How closely onnxruntime matched PyTorch."""

    images: int
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    class_mismatches: int

    def to_dict(self) -> dict:
        """JSON-able figures for metadata and the model card."""
        return {"images": self.images, "batch_sizes": list(self.batch_sizes),
                "max_abs_diff": self.max_abs_diff, "class_mismatches": self.class_mismatches}


@torch.no_grad()
def check_parity(runtime: ort.InferenceSession, network: DigitNet, pixels: np.ndarray,
                 batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
                 tolerance: float = PARITY_TOLERANCE, temperature: float = 1.0) -> Parity:
    """onnxruntime vs PyTorch (fp32, softmax of logits / temperature) probabilities at each batch
    size; raise unless they agree."""
    wrapper = ProbabilityModel(network, temperature).eval()
    worst, mismatches = 0.0, 0
    for batch in batch_sizes:
        for start in range(0, len(pixels), batch):
            chunk = pixels[start:start + batch]
            expected = wrapper(torch.from_numpy(chunk)).numpy()
            (actual,) = runtime.run([OUTPUT_NAME], {INPUT_NAME: chunk})
            worst = max(worst, float(np.abs(actual - expected).max()))
            mismatches += int((actual.argmax(1) != expected.argmax(1)).sum())
    parity = Parity(len(pixels), tuple(batch_sizes), worst, mismatches)
    if mismatches or worst > tolerance:
        raise ExportError(f"onnxruntime disagrees with PyTorch: {mismatches} different classes, "
                          f"max abs difference {worst:.3g} (allowed {tolerance:g})")
    return parity


def onnx_probabilities(runtime: ort.InferenceSession, pixels: np.ndarray, batch: int = 500) -> np.ndarray:
    """The graph's probabilities for every image, run in batches."""
    return np.concatenate([runtime.run([OUTPUT_NAME], {INPUT_NAME: pixels[i:i + batch]})[0]
                           for i in range(0, len(pixels), batch)])


def onnx_accuracy(runtime: ort.InferenceSession, pixels: np.ndarray, labels: np.ndarray,
                  batch: int = 500) -> float:
    """Fraction of images whose most probable class (per onnxruntime) is the label."""
    return float((onnx_probabilities(runtime, pixels, batch).argmax(1) == labels).mean())


@dataclass(frozen=True)
class Converted:
    """A checked ONNX model (no metadata yet) and what onnxruntime measured on it."""

    model: onnx.ModelProto
    parity: Parity
    accuracy: float
    ece: float
    opset: int


def convert(network: DigitNet, temperature: float, parity_pixels: np.ndarray, test_pixels: np.ndarray,
            test_labels: np.ndarray) -> Converted:
    """Export, check the graph's structure and its parity with PyTorch, and measure test accuracy
    and calibration through onnxruntime; any failed check raises ExportError."""
    model = to_onnx(network, temperature)
    size, classes = network.config.image_size, network.config.num_classes
    check_structure(model, size, classes)
    runtime = session(model.SerializeToString())
    parity = check_parity(runtime, network, parity_pixels, temperature=temperature)
    probabilities = onnx_probabilities(runtime, test_pixels)
    accuracy = float((probabilities.argmax(1) == test_labels).mean())
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return Converted(model, parity, accuracy, expected_calibration_error(probabilities, test_labels), opset)


def labels_json(classes: int) -> str:
    """The class labels as the JSON list the server reads: "0".."9" for digits."""
    return json.dumps([str(c) for c in range(classes)])
