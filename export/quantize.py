"""Optional int8 static quantization (QDQ, calibrated on training images), measured against fp32."""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.onnx_export import INPUT_NAME, OUTPUT_NAME, onnx_accuracy

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 1024
MAX_ACCURACY_LOSS = 0.001  # 0.1 percentage point


class Calibration(CalibrationDataReader):
    """Feeds training images, 64 at a time, to the calibrator."""

    def __init__(self, pixels: np.ndarray, batch: int = 64) -> None:
        self.batches = iter([pixels[i:i + batch] for i in range(0, len(pixels), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration batch, or None when done."""
        chunk = next(self.batches, None)
        return None if chunk is None else {INPUT_NAME: chunk}


@dataclass(frozen=True)
class Int8Measurement:
    """Accuracy and median latency (1 onnxruntime thread) of fp32 vs int8."""

    fp32_accuracy: float
    int8_accuracy: float
    latency_ms: dict[str, dict[int, float]]

    @property
    def faster(self) -> bool:
        """int8 beats fp32 at batch 1 or at batch 64."""
        return any(self.latency_ms["int8"][b] < self.latency_ms["fp32"][b] for b in self.latency_ms["fp32"])

    @property
    def ship(self) -> bool:
        """The rule of the issue: faster, and at most 0.1 point less accurate."""
        return self.faster and self.fp32_accuracy - self.int8_accuracy <= MAX_ACCURACY_LOSS + 1e-9  # float slack

    def describe(self) -> str:
        """One line for the model card."""
        times = "; ".join(f"batch {b}: fp32 {self.latency_ms['fp32'][b]:.3f} ms, int8 {self.latency_ms['int8'][b]:.3f} ms"
                          for b in self.latency_ms["fp32"])
        verdict = "shipped" if self.ship else "not shipped (needs faster at batch 1 or 64 and <= 0.1 pt loss)"
        return (f"test accuracy fp32 {100 * self.fp32_accuracy:.2f} %, int8 {100 * self.int8_accuracy:.2f} %; "
                f"median latency, 1 thread: {times}; {verdict}")


def quantize(model: onnx.ModelProto, calibration_pixels: np.ndarray) -> onnx.ModelProto:
    """QDQ int8 model (per-channel weights, MinMax activations) calibrated on the given images."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared, int8 = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(model, str(fp32))
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8), Calibration(calibration_pixels), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return onnx.load(str(int8))


def median_latency_ms(model_bytes: bytes, pixels: np.ndarray, batch: int, runs: int = 50) -> float:
    """Median wall time of one run at `batch`, on one thread (as the server runs)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    runtime = ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    feed = {INPUT_NAME: pixels[:batch]}
    for _ in range(5):
        runtime.run([OUTPUT_NAME], feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        runtime.run([OUTPUT_NAME], feed)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def measure(fp32: onnx.ModelProto, int8: onnx.ModelProto, pixels: np.ndarray, labels: np.ndarray) -> Int8Measurement:
    """Full-test-set accuracy and latency at batch 1 and 64 of both models."""
    models = {"fp32": fp32.SerializeToString(), "int8": int8.SerializeToString()}
    accuracy = {kind: onnx_accuracy(ort.InferenceSession(data, providers=["CPUExecutionProvider"]), pixels, labels)
                for kind, data in models.items()}
    latency = {kind: {b: median_latency_ms(data, pixels, b) for b in (1, 64)} for kind, data in models.items()}
    return Int8Measurement(accuracy["fp32"], accuracy["int8"], latency)
