"""The baseline this project replaces: the same CNN run in-process by PyTorch inside Flask.

Same app design as the server (create_app, thin route, server.image.digit, server.api.errors, one log
line per request) and the server's process shape under gunicorn (bench/torch_gunicorn_conf.py), but torch instead of
onnxruntime. It runs from its own environment (.venv-bench-torch: flask, gunicorn, numpy, Pillow,
CPU torch), which has no onnxruntime: `python -m bench.torch_app` imports only the server's modules
that need none (settings, decoding, the digit pipeline, errors), never its app factory.

Its network is the served model's: a training checkpoint's (TORCH_CHECKPOINT), else random weights
in the architecture the served ONNX file names in its `model_config` metadata (TORCH_MODEL_CONFIG,
which bench/run.py reads from the file and passes): the same compute, so the comparison holds.
"""
from __future__ import annotations

import json
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


def load_model(checkpoint: str, threads: int, model_config: str = ""):
    """DigitNet from training/model.py with the checkpoint's weights, else random ones in `model_config`'s shape.

    `model_config` is the served ONNX file's `model_config` metadata (JSON); a checkpoint whose
    architecture differs from it is refused, since the baseline must run the served network.
    """
    import torch

    from training.model import DigitNet, ModelConfig

    torch.set_num_threads(threads)
    served = ModelConfig.from_dict(json.loads(model_config)) if model_config else None
    if not checkpoint:
        if served is None:
            log.warning("no TORCH_CHECKPOINT and no TORCH_MODEL_CONFIG: DigitNet's default architecture, random weights")
            return DigitNet().eval()
        log.warning("no TORCH_CHECKPOINT: random weights in the served architecture (same compute, meaningless answers)")
        return DigitNet(served).eval()
    from training.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(Path(checkpoint)), checkpoint)
    mine, theirs = architecture(model.config.to_dict()), architecture(served.to_dict()) if served else None
    if theirs is not None and mine != theirs:
        raise ValueError(f"{checkpoint}: architecture {mine} is not the served model's {theirs}")
    return model


def architecture(config: dict) -> dict:
    """The fields of a ModelConfig's dict that decide the compute (dropout is off at inference; mean and std are
    two constants)."""
    return {key: value for key, value in config.items() if key not in ("dropout", "mean", "std")}


def create_app(config: dict | None = None):
    """The torch app: POST /predict with a multipart image or JSON pixels, answered as the server does."""
    import numpy as np
    import torch
    from flask import Flask, g, jsonify, request

    use_server_modules_without_onnxruntime()
    from server import config as settings
    from server.image import decoding, digit
    from server.api.errors import register_error_handlers
    from server.errors import InvalidInput

    app = Flask(__name__)
    app.json.sort_keys = False
    app.config.from_mapping(settings.from_environment())
    app.config["TORCH_CHECKPOINT"] = os.environ.get("TORCH_CHECKPOINT", "")
    app.config["TORCH_MODEL_CONFIG"] = os.environ.get("TORCH_MODEL_CONFIG", "")
    app.config.from_mapping(config or {})
    model = load_model(app.config["TORCH_CHECKPOINT"], app.config["ORT_THREADS"], app.config["TORCH_MODEL_CONFIG"])
    with torch.inference_mode():
        side = model.config.image_size
        model(torch.zeros(1, 1, side, side))  # warm-up, as the server warms its sessions
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


def served_model_config(model_file: Path) -> str:
    """The `model_config` metadata of the served ONNX file ('' without one); onnxruntime, so the launching side's."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map.get("model_config", "")


def gunicorn(probe, checkpoint: str, model_config: str):
    """This app under gunicorn from .venv-bench-torch, as bench/run.py and bench/profile.py start it."""
    from harness.procs import ServerTree

    return ServerTree("torch", [str(ROOT / ".venv-bench-torch" / "bin" / "python"), "-m", "bench.torch_app"], probe,
                    env={"TORCH_CHECKPOINT": checkpoint, "TORCH_MODEL_CONFIG": model_config})


def main() -> None:
    """Run this app under gunicorn with its own launcher configuration (bench/torch_gunicorn_conf.py)."""
    use_server_modules_without_onnxruntime()
    from gunicorn.app.wsgiapp import run

    sys.argv = ["gunicorn", "--config", str(ROOT / "bench" / "torch_gunicorn_conf.py"), "bench.torch_app:create_app()"]
    run()


if __name__ == "__main__":
    main()
