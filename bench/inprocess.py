"""The compute floor: the CNN run in-process with no HTTP, in microseconds per image.

`--engine ort` runs the served ONNX file through server.runtime.model.OnnxModel (the server's own session
options); `--engine torch` runs DigitNet in the torch baseline's environment, built as the torch
app builds it (bench/torch_app.load_model). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from server.runtime.layout import latest_model_file, model_path

ROOT = Path(__file__).resolve().parents[1]
MNIST_SAMPLE = ROOT / "tests" / "data" / "mnist_test_sample.npz"


def time_calls(call: Callable[[], object], seconds: float, warmup: int = 5) -> list[float]:
    """Call `call` for about `seconds` after `warmup` calls; return each call's duration."""
    for _ in range(warmup):
        call()
    durations = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        call()
        durations.append(time.perf_counter() - started)
    return durations


def batch_of_digits(size: int) -> np.ndarray:
    with np.load(MNIST_SAMPLE) as sample:
        images = sample["images"][:size].astype(np.float32) / 255.0
    return images[:, None, :, :]


def ort_runner(model_path: str, threads: int) -> Callable[[np.ndarray], object]:
    from server.runtime.model import OnnxModel

    model = OnnxModel("mnist", "1", Path(model_path), ort_threads=threads)
    model.load()
    name = model.inputs[0].name
    return lambda batch: model.predict({name: batch})


def torch_runner(checkpoint: str, threads: int, model_config: str = "") -> Callable[[np.ndarray], object]:
    import torch

    from bench.torch_app import load_model

    model = load_model(checkpoint, threads, model_config)

    def run(batch: np.ndarray):
        with torch.inference_mode():
            return torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()

    return run


def measure(runner: Callable[[np.ndarray], object], batches: list[int], seconds: float) -> list[dict]:
    results = []
    for size in batches:
        batch = batch_of_digits(size)
        durations = time_calls(lambda: runner(batch), seconds)
        median = statistics.median(durations)
        results.append({
            "batch": size,
            "calls": len(durations),
            "us_per_call_p50": round(median * 1e6, 1),
            "us_per_image_p50": round(median * 1e6 / size, 1),
            "images_per_s": round(size / median, 1),
        })
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--engine", choices=("ort", "torch"), default="ort")
    served = latest_model_file(ROOT / "models", "mnist") or model_path(ROOT / "models", "mnist", 1)
    parser.add_argument("--model", default=str(served),
                        help="ONNX file (ort engine)")
    parser.add_argument("--checkpoint", default="", help="training checkpoint (torch engine); empty = random weights")
    parser.add_argument("--model-config", default="",
                        help="torch engine: the served ONNX file's model_config metadata (JSON), the architecture "
                             "built with random weights when there is no checkpoint (empty: DigitNet's default)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts to try")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per batch size")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    for threads in args.threads:
        if args.engine == "ort":
            runner = ort_runner(args.model, threads)
        else:
            runner = torch_runner(args.checkpoint, threads, args.model_config)
        results.append({"threads": threads, "batches": measure(runner, args.batches, args.seconds)})
    print(json.dumps({"engine": args.engine, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
