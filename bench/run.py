"""`make bench`: every serving benchmark in one run, written to docs/results/benchmarks.json + .md + plots.

Side by side on this machine: this server under wrk (/predict with a PNG and with pixels, v2 infer
binary and JSON) at several concurrencies; a trivial constant-JSON Flask app under the same
launcher (Granian, server/lifecycle.py: the floor); the same CNN in PyTorch inside Flask (the
baseline, the served file's architecture); the server's CPU per request against e301823's
(bench/before_after.py); onnxruntime and torch in-process with no HTTP; environment sizes, RSS per
worker and cold starts; a soak. docs/benchmarks.md is the reference page that quotes it.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import before_after, footprint, profile, recovery, report, soak, torch_app
from harness import bodies
from harness.loadgen import run_wrk, send_many, wrk_version
from harness.procs import ServerTree, memory_kib, model_server, send, wait_idle, wsgi_app
from server.config import BY_NAME
from server.runtime.layout import latest_model_file, model_path as model_path_of

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench")

SERVE_VENV, TORCH_VENV, DEV_VENV = ROOT / ".venv-serve", ROOT / ".venv-bench-torch", ROOT / ".venv-dev"
RESULTS = ROOT / "docs" / "results"  # dated run records; docs/benchmarks.md is the reference page
CONCURRENCY = (1, 8, 32)
WORKERS = BY_NAME["WORKERS"].default
VERSIONED = ("flask", "granian", "gunicorn", "onnxruntime", "numpy", "pillow", "torch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "models", help="model repository served")
    parser.add_argument("--model", default="mnist", help="model name in the repository")
    parser.add_argument("--checkpoint", default="auto",
                        help="training checkpoint for the torch baseline; 'auto' finds the one the ONNX file "
                             "was exported from under runs/, '' uses random weights")
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk duration per try")
    parser.add_argument("--tries", type=int, default=3, help="wrk runs per endpoint and concurrency; the best is kept")
    parser.add_argument("--warmup", type=float, default=3.0, help="wrk warm-up per endpoint, not recorded")
    parser.add_argument("--rss-requests", type=int, default=10_000, help="requests before the loaded RSS is taken")
    parser.add_argument("--cold-starts", type=int, default=3, help="cold starts timed per app")
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument("--soak-warmup", type=float, default=10.0)
    parser.add_argument("--inprocess-seconds", type=float, default=2.0, help="per batch size and thread count")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where benchmarks.json/.md and plots go")
    parser.add_argument("--before", default=before_after.BEFORE,
                        help="revision whose server the CPU per request is compared with; '' skips it")
    parser.add_argument("--quick", action="store_true",
                        help="seconds-long runs to check the machinery; writes to bench/out/quick unless --out")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rss_requests, args.cold_starts, args.tries = 1.0, 1.0, 300, 1, 1
        args.soak_seconds, args.soak_warmup, args.inprocess_seconds = 2.0, 1.0, 0.3
        if args.out == RESULTS:
            args.out = ROOT / "bench" / "out" / "quick"
    return args


# --------------------------------------------------------------------------- what ran where


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    meminfo = Path("/proc/meminfo").read_text().split()
    return {
        "cpu_model": model, "cores": os.cpu_count(), "memory_gib": round(int(meminfo[1]) / 2**20, 1),
        "avx512": any(flag.startswith("avx512") for flag in flags), "amx": "amx_tile" in flags,
        "kernel": platform.release(), "python": platform.python_version(), "load_average_at_start": os.getloadavg(),
    }


def venv_versions(venv: Path) -> dict:
    code = ("import importlib.metadata as m, json\nout = {}\nfor n in %r:\n    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\nprint(json.dumps(out))" % (VERSIONED,))
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def model_info(path: Path) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return {
        "path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size,
        "input": session.get_inputs()[0].name, "output": session.get_outputs()[0].name,
        "metadata": {k: v for k, v in metadata.items() if k != "labels"},
    }


def find_checkpoint(choice: str, model: dict) -> str:
    """The checkpoint the ONNX file came from (its sha256 is in the metadata), when on disk."""
    if choice != "auto":
        return choice
    wanted = {v for k, v in model["metadata"].items() if "checkpoint" in k and "sha256" in k}
    for candidate in sorted((ROOT / "runs").glob("**/*.pt"), key=lambda p: -p.stat().st_mtime):
        if hashlib.sha256(candidate.read_bytes()).hexdigest() in wanted:
            return str(candidate)
    log.warning("no checkpoint matching %s under runs/: the torch baseline uses random weights", wanted or "?")
    return ""


# --------------------------------------------------------------------------- the apps


def server_app(args: argparse.Namespace, probe: bodies.RequestSpec) -> ServerTree:
    return model_server(args.repository, probe=probe, python=SERVE_VENV / "bin" / "python")


def trivial_app(args: argparse.Namespace) -> ServerTree:
    return wsgi_app("trivial", "bench.trivial_app:app", bodies.trivial(), {"MODEL_REPOSITORY": str(args.repository)},
                    python=SERVE_VENV / "bin" / "python")


def answer_label(body: bytes) -> str | None:
    """The predicted label in a /predict answer (None for other endpoints)."""
    try:
        return json.loads(body)["predictions"][0]["label"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def load_series(server: ServerTree, specs: list[bodies.RequestSpec], args: argparse.Namespace) -> dict:
    """Each request at every concurrency, after one checked request and an unrecorded warm-up."""
    series = {}
    for spec in specs:
        status, body = send(server.port, spec)
        if status != 200:
            raise RuntimeError(f"{server.name} {spec.name}: HTTP {status}: {body[:300]!r}")
        run_wrk(server.port, spec, connections=8, seconds=args.warmup)
        runs = []
        for connections in CONCURRENCY:
            runs.append(best_try([run_wrk(server.port, spec, connections=connections, seconds=args.seconds,
                                          server_cpu=server.cpu_seconds) for _ in range(args.tries)]))
            log.info("%s %s c=%d: %.0f req/s (tries %s), p50 %.2f ms, p99 %.2f ms, %d errors", server.name,
                     spec.name, connections, runs[-1]["rps"], runs[-1]["tries_rps"], runs[-1]["latency_ms"]["p50"],
                     runs[-1]["latency_ms"]["p99"], runs[-1]["errors"])
        series[spec.name] = {"request_bytes": len(spec.body), "response_bytes": len(body),
                             "label": answer_label(body), "runs": runs}
    return series


def best_try(tries: list[dict]) -> dict:
    """The try with the most requests/s, with every try's req/s and the errors of all of them.

    wrk opens its connections at once and a keep-alive connection stays with the worker that
    accepted it: in a try where one worker took (nearly) all of them, one core idles and the rate
    halves. The best try is the app with its load spread over both workers.
    """
    best = dict(max(tries, key=lambda run: run["rps"]))
    best["tries_rps"] = [run["rps"] for run in tries]
    best["errors"] = sum(run["errors"] for run in tries)
    return best


def cold_starts(make, trials: int) -> list[float]:
    """Seconds from process start to the first successful probe, each from a fresh process."""
    times = []
    for _ in range(trials):
        with make() as server:
            times.append(round(server.wait_serving(), 3))
    return times


def bench_app(make, specs: list[bodies.RequestSpec], args: argparse.Namespace, memory: bool = True) -> dict:
    """Cold starts, idle RSS, RSS after `rss_requests` /predict requests, then the load series."""
    result: dict = {"cold_start_s": cold_starts(make, args.cold_starts)}
    result["cold_start_s_median"] = statistics.median(result["cold_start_s"])
    with make() as server:
        server.wait_serving()
        result["rss_idle_kib"] = wait_idle(server, WORKERS)
        if memory:
            result["rss_load"] = send_many(server.port, specs[0], args.rss_requests, concurrency=8)
            result["rss_after_kib"] = server.worker_memory()
            result["master_kib_after"] = memory_kib(server.process.pid)
        result["load"] = load_series(server, specs, args)
        result["rss_end_kib"] = server.worker_memory()
        result["requests_served"] = (args.rss_requests if memory else 0) + sum(
            run["requests"] for series in result["load"].values() for run in series["runs"])
        result["log_errors"] = sum(" ERROR " in line for line in server.log_path.read_text(errors="replace").splitlines())
    return result


def inprocess(args: argparse.Namespace, model_path: Path, int8_path: Path | None) -> dict:
    common = ["-m", "bench.inprocess", "--seconds", str(args.inprocess_seconds)]
    runs = {"ort": [SERVE_VENV, "--engine", "ort", "--model", str(model_path)],
            "torch": [TORCH_VENV, "--engine", "torch", "--checkpoint", args.checkpoint,
                      "--model-config", args.model_config]}
    if int8_path:
        runs["ort_int8"] = [SERVE_VENV, "--engine", "ort", "--model", str(int8_path)]
    results = {}
    for name, (venv, *options) in runs.items():
        done = subprocess.run([str(venv / "bin" / "python"), *common, *options], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        results[name] = json.loads(done.stdout)
    return results


def sizes() -> dict:
    return {
        "serve": footprint.venv_report(SERVE_VENV),
        "torch": footprint.venv_report(TORCH_VENV),
        "torch_cpu_closure": footprint.closure_bytes(TORCH_VENV, "torch"),
        "torch_pinned_closure": footprint.closure_bytes(DEV_VENV, "torch") if DEV_VENV.exists() else None,
    }


def training_metrics(checkpoint: str) -> dict | None:
    """The training run's metrics.json: beside the checkpoint, else committed in docs/, else the newest run."""
    candidates = [Path(checkpoint).with_name("metrics.json")] if checkpoint else []
    candidates += sorted((ROOT / "docs").glob("training*.json")) + sorted(
        (ROOT / "runs").glob("*/metrics.json"), key=lambda p: -p.stat().st_mtime)
    for path in candidates:
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(content, dict) and content.get("epochs") and "time_to_accuracy" in content:
            return {"source": os.path.relpath(path, ROOT), **content}
    return None


def container_image() -> dict | None:
    """What the container helper measured (make image-test writes docs/image-size.json)."""
    try:
        content = json.loads((ROOT / "docs" / "image-size.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict):
        return None
    size, smoke = content.get("size", {}), content.get("smoke", {})
    return {"image": content.get("image"), "measured_at": content.get("measured_at"),
            "size_bytes": size.get("size_bytes"), "compressed_bytes": size.get("compressed_bytes"),
            "ready_seconds": smoke.get("ready_seconds"), "worker_rss_mib": smoke.get("memory", {}).get("worker_rss_mib"),
            "fraction_of_slimmest_big_server": size.get("fraction_of_slimmest_big_server"),
            "big_servers": content.get("big_servers") or []}


def profile_server(args: argparse.Namespace, spec: bodies.RequestSpec) -> dict | None:
    """py-spy's view of the workers under load of `spec`, when py-spy is installed."""
    if not profile.PY_SPY.exists():
        log.warning("no %s: skipping the profile", profile.PY_SPY)
        return None
    with server_app(args, spec) as server:
        server.wait_serving()
        wait_idle(server, WORKERS)
        return profile.profile(server, spec, seconds=max(2, round(args.seconds)))


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    model_path = latest_model_file(args.repository, args.model)
    if model_path is None:
        raise SystemExit(f"error: no {model_path_of(args.repository, args.model, '<version>')} to benchmark")
    int8_path = latest_model_file(args.repository, f"{args.model}-int8")
    model = model_info(model_path)
    args.checkpoint = find_checkpoint(args.checkpoint, model)
    # The torch baseline runs the served architecture: the checkpoint's, else this one with random weights.
    args.model_config = model["metadata"].get("model_config", "")
    specs = bodies.server_requests(args.model, model["input"], model["output"])
    png, pixels = specs[0], specs[1]
    image, label = bodies.mnist_digit()
    if int8_path:
        specs.append(dataclasses.replace(png, name="predict_png_int8", path=f"/models/{args.model}-int8/predict"))
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "versions": {"serve": venv_versions(SERVE_VENV), "torch_baseline": venv_versions(TORCH_VENV),
                     "wrk": wrk_version()},
        "settings": {name: BY_NAME[name].default for name in ("WORKERS", "THREADS", "ORT_THREADS")},
        "method": {"seconds": args.seconds, "tries": args.tries, "warmup": args.warmup, "concurrency": list(CONCURRENCY),
                   "rss_requests": args.rss_requests, "cold_starts": args.cold_starts, "wrk_threads": 1,
                   "digit_label": label, "quick": args.quick},
        "model": model, "int8_model": model_info(int8_path) if int8_path else None, "torch_checkpoint": os.path.relpath(args.checkpoint, ROOT) if args.checkpoint else None,
        "torch_model_config": json.loads(args.model_config) if args.model_config else None,
    }
    log.info("in-process compute"); results["inprocess"] = inprocess(args, model_path, int8_path)
    log.info("trivial app"); results["trivial"] = bench_app(lambda: trivial_app(args), [bodies.trivial()], args, memory=False)
    log.info("this server"); results["server"] = bench_app(lambda: server_app(args, png), specs, args)
    if args.before:
        log.info("CPU per request against %s", args.before)
        results["before_after"] = before_after.run(
            args.repository, args.model, args.before, rounds=1 if args.quick else 2,
            seconds=1.0 if args.quick else 5.0, warmup=1.0 if args.quick else 2.0)
    log.info("torch baseline"); results["torch"] = bench_app(
        lambda: torch_app.gunicorn(png, args.checkpoint, args.model_config), [png, pixels], args)
    log.info("soak")
    with soak.serve(args.repository) as server:
        server.wait_serving()
        wait_idle(server, WORKERS)
        results["soak"] = soak.soak(server, png, seconds=args.soak_seconds, warmup=args.soak_warmup, connections=32)
    log.info("a worker killed under load"); results["recovery"] = recovery.run(args.repository)
    log.info("profile"); results["profile"] = profile_server(args, png)
    log.info("profile of v2 binary"); results["profile_v2_binary"] = profile_server(args, specs[2])
    results["sizes"] = sizes()
    results["training"] = training_metrics(args.checkpoint)
    results["container_image"] = container_image()
    ab_path = args.out / "benchmarks-ab.json"
    results["ab"] = json.loads(ab_path.read_text()) if ab_path.exists() else {}
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    results = run(args)
    report.write(results, args.out)
    log.info("wrote %s in %.0f s", args.out / "benchmarks.md", results["elapsed_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
