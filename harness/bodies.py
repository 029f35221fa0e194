"""The request bodies the benchmarks send: one real MNIST test digit in every form the server takes."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MNIST_SAMPLE = ROOT / "tests" / "data" / "mnist_test_sample.npz"
BOUNDARY = "----bench-boundary-7MA4YWxkTrZu0gW"


@dataclass(frozen=True)
class RequestSpec:
    """One HTTP request, sent unchanged again and again by the load generator."""

    name: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def mnist_digit(index: int = 0) -> tuple[np.ndarray, int]:
    """A real MNIST test image (uint8 28x28, white on black) and its label."""
    with np.load(MNIST_SAMPLE) as sample:
        return sample["images"][index], int(sample["labels"][index])


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(field_name: str, filename: str, content_type: str, data: bytes) -> tuple[str, bytes]:
    """A multipart/form-data body holding one file, as `curl -F field=@file` sends it."""
    head = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{filename}\"\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return f"multipart/form-data; boundary={BOUNDARY}", head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def predict_png(image: np.ndarray, path: str = "/predict") -> RequestSpec:
    content_type, body = multipart("image", "digit.png", "image/png", png_bytes(image))
    return RequestSpec("predict_png", "POST", path, {"Content-Type": content_type}, body)


def predict_pixels(image: np.ndarray, path: str = "/predict") -> RequestSpec:
    body = json.dumps({"pixels": image.astype(int).tolist()}, separators=(",", ":")).encode()
    return RequestSpec("predict_pixels", "POST", path, {"Content-Type": "application/json"}, body)


def v2_tensor(image: np.ndarray) -> np.ndarray:
    """The model's input: float32 [1, 1, 28, 28] in [0, 1]."""
    return (image.astype(np.float32) / 255.0).reshape(1, 1, *image.shape)


def v2_infer_json(image: np.ndarray, model: str, input_name: str, output_name: str) -> RequestSpec:
    tensor = v2_tensor(image)
    request = {
        "inputs": [{"name": input_name, "shape": list(tensor.shape), "datatype": "FP32",
                    "data": tensor.ravel().tolist()}],
        "outputs": [{"name": output_name}],
    }
    body = json.dumps(request, separators=(",", ":")).encode()
    return RequestSpec("v2_infer_json", "POST", f"/v2/models/{model}/infer",
                       {"Content-Type": "application/json"}, body)


def v2_infer_binary(image: np.ndarray, model: str, input_name: str, output_name: str) -> RequestSpec:
    """The binary tensor data extension, as tritonclient sends it (binary input and output)."""
    raw = v2_tensor(image).astype("<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": input_name, "shape": [1, 1, *image.shape], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
    }, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(header))}
    return RequestSpec("v2_infer_binary", "POST", f"/v2/models/{model}/infer", headers, header + raw)


def trivial() -> RequestSpec:
    return RequestSpec("trivial", "GET", "/")


def server_requests(model: str, input_name: str, output_name: str, index: int = 0) -> list[RequestSpec]:
    """The four requests this server is measured with, all carrying the same MNIST test digit."""
    image, _ = mnist_digit(index)
    return [
        predict_png(image),
        predict_pixels(image),
        v2_infer_binary(image, model, input_name, output_name),
        v2_infer_json(image, model, input_name, output_name),
    ]
