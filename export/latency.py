"""Side-by-side onnxruntime latency of ONNX digit models: µs per image at batch 1 and 64, 1 thread.

`python -m export.latency models/mnist/1/model.onnx models/mnist/2/model.onnx` loads every file
with the server's session options (one intra-op thread, one inter-op thread) and times them in
interleaved rounds, so that the load of a shared machine falls on all of them alike; it prints one
JSON object per file with the medians over rounds and the ratio to the first file.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "mnist_test_2000.npz"


def server_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session configured as server/runtime/model.py configures its own."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def median_call_s(runtime: ort.InferenceSession, feed: dict[str, np.ndarray], calls: int) -> float:
    """Median seconds of one run over `calls` runs, after three warm-up runs."""
    for _ in range(3):
        runtime.run(None, feed)
    durations = []
    for _ in range(calls):
        started = time.perf_counter()
        runtime.run(None, feed)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def compare(paths: list[Path], rounds: int = 7, batches: tuple[int, ...] = (1, 64)) -> list[dict]:
    """Per file: median µs per image at each batch size over `rounds` interleaved rounds."""
    with np.load(SAMPLE) as sample:
        pixels = (sample["images"][:max(batches), None] / 255).astype(np.float32)
    sessions = [server_session(path) for path in paths]
    samples: dict[tuple[int, int], list[float]] = {(i, b): [] for i in range(len(paths)) for b in batches}
    for _ in range(rounds):
        for index, runtime in enumerate(sessions):
            name = runtime.get_inputs()[0].name
            for batch in batches:
                calls = max(10, 300 // batch)
                samples[index, batch].append(median_call_s(runtime, {name: pixels[:batch]}, calls) * 1e6 / batch)
    results = []
    for index, path in enumerate(paths):
        row: dict = {"model": str(path)}
        for batch in batches:
            median = statistics.median(samples[index, batch])
            row[f"us_per_image_batch{batch}"] = round(median, 1)
            row[f"ratio_batch{batch}"] = round(median / statistics.median(samples[0, batch]), 3)
        results.append(row)
    return results


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per model."""
    parser = argparse.ArgumentParser(prog="python -m export.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="ONNX files; ratios are to the first")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median over them)")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.models if not path.is_file()]
    if missing:
        parser.exit(1, f"error: no such file: {', '.join(missing)}\n")
    for row in compare(args.models, args.rounds):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
