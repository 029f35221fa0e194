"""The baseline this project replaces: the same CNN run in-process by PyTorch inside Flask.

Same app design as the server (create_app, thin route, server.digit, server.api.errors, one log
line per request) and the same gunicorn settings (server/gunicorn_conf.py), but torch instead of
onnxruntime. It runs from its own environment (.venv-bench-torch: flask, gunicorn, numpy, Pillow,
CPU torch), which has no onnxruntime: `python -m bench.torch_app` imports only the server's modules
that need none (settings, decoding, the digit pipeline, errors), never its app factory.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = [str(digit) for digit in range(10)]
PROBABILITY_DIGITS = 6

log = logging.getLogger(__name__)


def use_server_modules_without_onnxruntime() -> None:
    """Register `server` as a bare package, so its leaf modules import without the app factory."""
    if "server" not in sys.modules:
        package = types.ModuleType("server")
        package.__path__ = [str(ROOT / "server")]
        sys.modules["server"] = package


def load_model(checkpoint: str, threads: int):
    """DigitNet from training/model.py with the checkpoint's weights, or random ones without it."""
    import torch

    from training.model import DigitNet

    torch.set_num_threads(threads)
    if not checkpoint:
        log.warning("no TORCH_CHECKPOINT: random weights (same compute, meaningless answers)")
        return DigitNet().eval()
    from training.checkpoint import load_checkpoint, model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(Path(checkpoint)), checkpoint)


def create_app(config: dict | None = None):
    """The torch app: POST /predict with a multipart image or JSON pixels, answered as the server does."""
    import numpy as np
    import torch
    from flask import Flask, g, jsonify, request

    use_server_modules_without_onnxruntime()
    from server import config as settings, decoding, digit
    from server.api.errors import register_error_handlers
    from server.errors import InvalidInput

    app = Flask(__name__)
    app.json.sort_keys = False
    app.config.from_mapping(settings.from_environment())
    app.config["TORCH_CHECKPOINT"] = os.environ.get("TORCH_CHECKPOINT", "")
    app.config.from_mapping(config or {})
    model = load_model(app.config["TORCH_CHECKPOINT"], app.config["ORT_THREADS"])
    with torch.inference_mode():
        model(torch.zeros(1, 1, 28, 28))  # warm-up, as the server warms its sessions
    register_error_handlers(app)

    @app.before_request
    def _start():
        g.started = time.perf_counter()

    @app.after_request
    def _log(response):
        log.info("%s %s %s %.1fms", request.method, request.path, response.status_code,
                 (time.perf_counter() - g.started) * 1000)
        return response

    @app.post("/predict")
    def predict():
        max_pixels = app.config["MAX_IMAGE_PIXELS"]
        if request.mimetype == "multipart/form-data":
            files = request.files.getlist("image")
            if not files:
                raise InvalidInput("multipart body has no file in field 'image'")
            images = [digit.mnist_digit(decoding.decode_image(f.read(), max_pixels)) for f in files]
        else:
            body = request.get_json(silent=True)
            if not isinstance(body, dict) or "pixels" not in body:
                raise InvalidInput("expected multipart field 'image' or JSON {\"pixels\": [[...]]}")
            images = [decoding.pixels_to_array(body["pixels"])]
        batch = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
        with torch.inference_mode():
            probabilities = torch.softmax(model(batch), dim=1).numpy().astype(np.float64)
        return jsonify(model="mnist", version="torch", predictions=[_prediction(p) for p in probabilities])

    return app


def _prediction(probabilities) -> dict:
    index = int(probabilities.argmax())
    return {
        "label": LABELS[index],
        "index": index,
        "confidence": round(float(probabilities[index]), PROBABILITY_DIGITS),
        "probabilities": [round(float(p), PROBABILITY_DIGITS) for p in probabilities],
    }


def main() -> None:
    """Run this app under gunicorn with the server's own configuration file."""
    use_server_modules_without_onnxruntime()
    from gunicorn.app.wsgiapp import run

    sys.argv = ["gunicorn", "--config", str(ROOT / "server" / "gunicorn_conf.py"), "bench.torch_app:create_app()"]
    run()


if __name__ == "__main__":
    main()
