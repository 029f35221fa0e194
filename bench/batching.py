"""Dynamic batching on against off: throughput and p99 at concurrency 16, real servers on 127.0.0.1.

Two models: a random-weight CNN the size of ResNet-18 (3x224x224 in, 1000 classes out, built here
with onnx.helper) and the small digit model. For each, two servers run side by side, identical but
for MAX_BATCH_SIZE, and wrk loads them in turn (off, on, off, on...) so both see the same machine.
Writes docs/batching.json and docs/batching.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from harness.bodies import RequestSpec
from harness.loadgen import run_wrk, wrk_version
from harness.procs import ROOT, ServerTree, model_server, send
from server.runtime.layout import latest_model_file, model_path

log = logging.getLogger("bench.batching")

COMMITTED_DIGITS = latest_model_file(ROOT / "models", "mnist") or model_path(ROOT / "models", "mnist", 1)  # the default
READY = RequestSpec("ready", "GET", "/v2/health/ready")
METRICS = RequestSpec("metrics", "GET", "/metrics")


class GraphBuilder:
    """Nodes and random initializers of a plain CNN, named in order."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list = []
        self.weights: list = []
        self.rng = np.random.default_rng(seed)

    def _name(self, prefix: str) -> str:
        return f"{prefix}{len(self.nodes)}"

    def add(self, op: str, inputs: list[str], **attributes) -> str:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attributes))
        return out

    def tensor(self, array: np.ndarray) -> str:
        name = f"w{len(self.weights)}"
        self.weights.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(self, x: str, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> str:
        # He initialisation, halved, so activations stay finite through the residual sums.
        scale = 0.5 * np.sqrt(2.0 / (cin * kernel * kernel))
        weight = self.tensor(self.rng.normal(0, scale, (cout, cin, kernel, kernel)))
        bias = self.tensor(np.zeros(cout))
        pad = kernel // 2
        y = self.add("Conv", [x, weight, bias], kernel_shape=[kernel, kernel], strides=[stride, stride],
                     pads=[pad, pad, pad, pad])
        return self.add("Relu", [y]) if relu else y

    def basic_block(self, x: str, cin: int, cout: int, stride: int) -> str:
        """ResNet's basic block (batch norm folded into the convolutions, as export does)."""
        y = self.conv(self.conv(x, cin, cout, 3, stride), cout, cout, 3, relu=False)
        shortcut = x if stride == 1 and cin == cout else self.conv(x, cin, cout, 1, stride, relu=False)
        return self.add("Relu", [self.add("Add", [y, shortcut])])

    def classifier_head(self, x: str, features: int, classes: int) -> str:
        flat = self.add("Flatten", [self.add("GlobalAveragePool", [x])], axis=1)
        weight = self.tensor(self.rng.normal(0, np.sqrt(1.0 / features), (features, classes)))
        logits = self.add("Gemm", [flat, weight, self.tensor(np.zeros(classes))])
        self.nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=1))
        return "probabilities"

    def save(self, path: Path, input_shape: list, classes: int, metadata: dict[str, str]) -> Path:
        graph = helper.make_graph(
            self.nodes, path.parent.parent.name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])], initializer=self.weights,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        helper.set_model_props(model, {"output_kind": "probabilities", **metadata})
        onnx.checker.check_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        return path


def write_resnet18(path: Path) -> Path:
    """ResNet-18's layout: 7x7 stem, four stages of two basic blocks (64-512 channels), 1000 classes."""
    build = GraphBuilder()
    x = build.add("MaxPool", [build.conv("input", 3, 64, 7, 2)], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    channels = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        x = build.basic_block(x, channels, width, stride)
        x = build.basic_block(x, width, width, 1)
        channels = width
    build.classifier_head(x, 512, 1000)
    return build.save(path, ["N", 3, 224, 224], 1000, {})


def write_digit_cnn(path: Path) -> Path:
    """A stand-in of the digit model's size when none is committed: two convolutions, 10 classes."""
    build = GraphBuilder()
    x = build.add("MaxPool", [build.conv("input", 1, 32, 3)], kernel_shape=[2, 2], strides=[2, 2])
    x = build.add("MaxPool", [build.conv(x, 32, 64, 3)], kernel_shape=[2, 2], strides=[2, 2])
    build.classifier_head(x, 64, 10)
    return build.save(path, ["N", 1, 28, 28], 10, {"labels": json.dumps([str(i) for i in range(10)])})


def single_run_ms(path: Path, shape: tuple[int, ...], runs: int = 10) -> float:
    """Median time of one batch-1 run in-process, one onnxruntime thread: what BATCH_MIN_INFERENCE_MS
    is compared with (the server takes the best of its three warm-up runs)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": np.random.default_rng(0).random(shape, dtype=np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - started) * 1000)
    return round(float(np.median(times)), 2)


def infer_request(model: str, shape: tuple[int, ...]) -> RequestSpec:
    """One v2 inference with a random binary input, as tritonclient sends it."""
    raw = np.random.default_rng(0).random(shape, dtype=np.float32).astype("<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return RequestSpec(f"infer_{model}", "POST", f"/v2/models/{model}/infer", headers, header + raw)


def batch_totals(server: ServerTree, model: str) -> tuple[float, float]:
    """(rows, runs) of `model` so far, from the server's model_batch_size histogram."""
    _, body = send(server.port, METRICS)
    text = body.decode()
    totals = []
    for suffix in ("sum", "count"):
        match = re.search(rf'^model_batch_size_{suffix}\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$', text, re.M)
        totals.append(float(match.group(1)) if match else float("nan"))
    return totals[0], totals[1]


def server_modes(args: argparse.Namespace, repository: Path) -> dict[str, dict[str, str]]:
    """Environment of each server: batching off, and on with each delay asked for."""
    # LARGE_REQUESTS: by default a worker serves one large request (>= 4 MiB of work: a resnet18
    # tensor body is one) and refuses the third with a 503, so no two resnet18 requests could ever
    # meet in a batch; here every connection may be in flight, as batching needs.
    common = {"MODEL_REPOSITORY": str(repository), "WORKERS": str(args.workers), "THREADS": str(args.threads),
              "BATCH_MIN_INFERENCE_MS": "0", "LOG_LEVEL": "warning",
              "LARGE_REQUESTS": str(max(args.concurrency))}
    modes = {"off": {**common, "MAX_BATCH_SIZE": "1"}}
    for delay in args.delays_us:
        modes[f"on, {delay} µs"] = {**common, "MAX_BATCH_SIZE": str(args.batch_size), "MAX_BATCH_DELAY_US": str(delay)}
    return modes


def measure_model(name: str, repository: Path, shape: tuple[int, ...], args: argparse.Namespace) -> dict:
    """Alternate short wrk runs between identical servers but for batching, round after round."""
    spec = infer_request(name, shape)
    servers = {mode: model_server(repository, name=f"batching-{name}-{index}", probe=READY, env=env)
               for index, (mode, env) in enumerate(server_modes(args, repository).items())}
    runs: dict[int, dict[str, list[dict]]] = {c: {mode: [] for mode in servers} for c in args.concurrency}
    try:
        for server in servers.values():
            server.start().wait_serving()
        for server in servers.values():
            status, body = send(server.port, spec, timeout=60)
            if status != 200:
                raise RuntimeError(f"{server.name}: HTTP {status}: {body[:300]!r}")
            run_wrk(server.port, spec, connections=max(args.concurrency), seconds=args.warmup, timeout_s=30)
        for round_number in range(args.rounds):
            for connections in args.concurrency:
                for mode, server in servers.items():
                    result = measure_once(server, spec, name, connections, args.seconds)
                    runs[connections][mode].append(result)
                    log.info("%s c=%d batching %s, round %d: %.1f req/s, p50 %.1f ms, p99 %.1f ms, %.2f rows/run, %d errors",
                             name, connections, mode, round_number + 1, result["rps"], result["latency_ms"]["p50"],
                             result["latency_ms"]["p99"], result["rows_per_run"], result["errors"])
    finally:
        for server in servers.values():
            server.stop()
    return {"model": name, "input_shape": list(shape), "request_bytes": len(spec.body),
            "runs": {str(c): by_mode for c, by_mode in runs.items()},
            "summary": {str(c): summarize(by_mode) for c, by_mode in runs.items()}}


def measure_once(server: ServerTree, spec: RequestSpec, model: str, connections: int, seconds: float) -> dict:
    """One wrk run, with the mean rows per onnxruntime run the server did meanwhile."""
    rows_before, runs_before = batch_totals(server, model)
    result = run_wrk(server.port, spec, connections=connections, seconds=seconds, timeout_s=30,
                     server_cpu=server.cpu_seconds)
    rows_after, runs_after = batch_totals(server, model)
    result["rows_per_run"] = round((rows_after - rows_before) / max(runs_after - runs_before, 1), 2)
    return result


def summarize(by_mode: dict[str, list[dict]]) -> dict:
    """Per mode: pooled req/s, median p50/p99 of the runs; against off: the median of the
    per-round ratios (each from runs seconds apart, so a busy spell of the machine cancels out)."""
    off = by_mode["off"]
    summary = {}
    for mode, results in by_mode.items():
        summary[mode] = {
            "rps": round(sum(r["requests"] for r in results) / sum(r["seconds"] for r in results), 1),
            "p50_ms": round(float(np.median([r["latency_ms"]["p50"] for r in results])), 1),
            "p99_ms": round(float(np.median([r["latency_ms"]["p99"] for r in results])), 1),
            "rows_per_run": round(float(np.mean([r["rows_per_run"] for r in results])), 2),
            "requests": sum(r["requests"] for r in results),
            "errors": sum(r["errors"] for r in results),
        }
        if mode != "off":
            throughput = [on["rps"] / base["rps"] for on, base in zip(results, off)]
            tail = [on["latency_ms"]["p99"] / base["latency_ms"]["p99"] for on, base in zip(results, off)]
            summary[mode]["throughput_ratio"] = ratio_summary(throughput)
            summary[mode]["p99_ratio"] = ratio_summary(tail)
    return summary


def ratio_summary(ratios: list[float]) -> dict:
    return {"median": round(float(np.median(ratios)), 2), "min": round(min(ratios), 2), "max": round(max(ratios), 2)}


def render(results: dict) -> str:
    """docs/batching.md: how it was measured and one table."""
    a = results["args"]
    lines = [
        "# Dynamic batching: measured",
        "",
        f"Generated by `python -m bench.batching` on {results['generated']} ({results['machine']}; "
        f"load average {results['load_average']} at the start). On a shared machine single runs swing "
        "widely: the servers take turns, so a busy spell hits every mode alike; read the per-round ratios.",
        "",
        f"Each model is served by {len(a['delays_us']) + 1} gunicorn servers on 127.0.0.1 "
        f"({a['workers']} workers x {a['threads']} threads, ORT_THREADS=1), identical but for batching: off "
        f"(`MAX_BATCH_SIZE=1`) or on (`MAX_BATCH_SIZE={a['batch_size']}`) with each `MAX_BATCH_DELAY_US`, all with "
        f"`LARGE_REQUESTS={max(a['concurrency'])}` (the default, 1, serves one large request per worker at a time and "
        "refuses the third with a 503: a resnet18 tensor body is large, so no two of them could meet in a batch). wrk sends "
        f"the same v2 binary-tensor request, {a['seconds']:g} s per run, to each server in turn, "
        f"{a['rounds']} rounds after a warm-up. req/s pools the rounds; p50/p99 are medians of the runs; "
        "'vs off' is the median (min-max) of the per-round ratios against the off run of the same round.",
        "",
        "| model | input | connections | batching | req/s | p50 ms | p99 ms | rows per run | req/s vs off | p99 vs off | errors |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in results["models"]:
        shape = "x".join(str(d) for d in model["input_shape"][1:])
        for connections, summary in model["summary"].items():
            for mode, s in summary.items():
                vs = [_ratio(s.get(key)) for key in ("throughput_ratio", "p99_ratio")]
                lines.append(f"| {model['model']} | {shape} | {connections} | {mode} | {s['rps']} | {s['p50_ms']} | "
                             f"{s['p99_ms']} | {s['rows_per_run']} | {vs[0]} | {vs[1]} | {s['errors']} |")
    lines += ["", "One batch-1 run in-process with one onnxruntime thread (median of 10), the time "
              "`BATCH_MIN_INFERENCE_MS` is compared with: "
              + ", ".join(f"{m['model']} {m['single_run_ms']} ms" for m in results["models"] if "single_run_ms" in m) + ".",
              "", f"Digit model: {results['models_source']}. Raw figures, every run: `docs/batching.json`.", ""]
    return "\n".join(lines)


def _ratio(ratio: dict | None) -> str:
    return "-" if ratio is None else f"{ratio['median']} ({ratio['min']}-{ratio['max']})"


def machine() -> str:
    wrk = wrk_version().split(" Copyright")[0]
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {wrk}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each measured wrk run")
    parser.add_argument("--warmup", type=float, default=3.0, help="unrecorded wrk run per server first")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of runs (every server, every concurrency)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 1], help="wrk connections, one series each")
    parser.add_argument("--workers", type=int, default=2, help="workers per server")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (the most requests a worker can batch)")
    parser.add_argument("--batch-size", type=int, default=8, help="MAX_BATCH_SIZE with batching on")
    parser.add_argument("--delays-us", type=int, nargs="+", default=[0, 2000], help="MAX_BATCH_DELAY_US of each batching server")
    parser.add_argument("--models", default="resnet18,mnist", help="comma-separated: resnet18, mnist")
    parser.add_argument("--digit-model", type=Path, default=COMMITTED_DIGITS,
                        help="the digit model's ONNX file; a random-weight stand-in when it does not exist")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "batching.json", help="JSON results")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "batching.md", help="Markdown report")
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - {"resnet18", "mnist"}
    if unknown:
        parser.error(f"unknown model(s) {', '.join(sorted(unknown))}; choose from resnet18, mnist")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = {
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "machine": machine(),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as scratch:
        for name in args.models.split(","):
            repository = Path(scratch) / name  # one repository per model: each server loads only it
            path = model_path(repository, name, 1)
            if name == "resnet18":
                write_resnet18(path)
            elif args.digit_model.is_file():
                path.parent.mkdir(parents=True)
                path.write_bytes(args.digit_model.read_bytes())
            else:
                write_digit_cnn(path)
            shape = (1, 3, 224, 224) if name == "resnet18" else (1, 1, 28, 28)
            measured = measure_model(name, repository, shape, args)
            measured["single_run_ms"] = single_run_ms(path, shape)
            results["models"].append(measured)
    results["models_source"] = (f"{args.digit_model} ({args.digit_model.stat().st_size / 1e6:.1f} MB)"
                                if args.digit_model.is_file() else
                                "a random-weight stand-in of its size (two 3x3 convolutions), none being committed yet")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.doc.write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
