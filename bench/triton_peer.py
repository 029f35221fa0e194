"""Triton as a benchmark peer: its HTTP frontend with the STAND-IN onnxruntime backend, beside this server.

`python -m bench.triton_peer` (needs `.venv-triton`: `make triton-test` builds it) serves the
committed `models/` (copied; no config.pbtxt, so Triton auto-completes: max_batch_size 4 with
dynamic batching, two CPU instances) with nvidia-pytriton's `tritonserver` 2.51, and this server
(gunicorn, the `make serve` settings) beside it, and loads both with the same v2 requests (binary
and JSON, one MNIST digit) under wrk, in alternating rounds, so both see the same moments of a
shared machine. Ratios are per round (Triton / this server), then their median.

What the Triton row measures: Triton's HTTP frontend, its scheduler and its Python backend around
the same onnxruntime release, one intra-op thread per instance as here. It is NOT NVIDIA's C++
onnxruntime backend (not installable from PyPI), which skips the Python stub's shared-memory hop
and was not measured; label the row so wherever it is shown.

`triton_peer_row(result)` is the row for `make bench`'s peer table; the whole run is written to
bench/out/triton-peer.json and printed as Markdown.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import bodies
from harness.loadgen import run_wrk
from harness.procs import ServerTree, free_port, memory_kib, send, wait_idle
from harness.triton_server import TRITON_VENV, find_install, layout_backends, triton_argv, triton_env
from server.config import BY_NAME
from server.runtime.layout import latest_model_file

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench.triton_peer")

SERVE_VENV = ROOT / ".venv-serve"
CONCURRENCY = (1, 8, 32)
LABEL = "Triton 2.51 HTTP, stand-in Python onnxruntime backend (not the C++ one)"
CONFIGS = {
    "auto": "no config.pbtxt: Triton's auto-complete, max_batch_size 4 with dynamic batching",
    "written": "config.pbtxt from export/triton_config.py: max_batch_size 64, no dynamic batching",
}


@dataclass
class TritonProcess(ServerTree):
    """tritonserver under the benchmarks' process handling: probe, CPU time, memory (server + stubs)."""

    grpc_port: int = 0

    def configure(self, repository: Path, backends: Path) -> "TritonProcess":
        install = find_install(TRITON_VENV)
        self.grpc_port = free_port()
        self.argv = triton_argv(install, repository, backends, self.port, self.grpc_port, explicit=False)
        self.env = triton_env(install)
        return self

    def worker_memory(self) -> list[dict[str, int]]:
        """The server process and each Python backend stub (one per model instance)."""
        return [memory_kib(pid) for pid in [self.process.pid, *self.workers()]]


def rss_mib(entries: list[dict[str, int]], key: str = "pss") -> float:
    return round(sum(entry.get(key, 0) for entry in entries) / 1024, 1)


def measure(args: argparse.Namespace) -> dict:
    """Cold starts, memory and the alternating load rounds of both servers."""
    image, _ = bodies.mnist_digit(0)
    specs = [bodies.v2_infer_binary(image, args.model, "input", "probabilities"),
             bodies.v2_infer_json(image, args.model, "input", "probabilities")]
    scratch = Path(tempfile.mkdtemp(prefix="triton-peer-"))
    try:
        repository = scratch / "models"
        shutil.copytree(args.repository, repository)
        if args.config == "written":
            from export.triton_config import write_triton_config  # imports torch: only when asked

            write_triton_config(repository / args.model, latest_model_file(repository, args.model))
        backends = layout_backends(scratch / "backends", find_install(TRITON_VENV))

        def triton() -> TritonProcess:
            return TritonProcess("triton", [], specs[0], cwd=scratch).configure(repository, backends)

        def server() -> ServerTree:
            return ServerTree("server", [str(SERVE_VENV / "bin" / "python"), "-m", "server"], specs[0],
                            env={"MODEL_REPOSITORY": str(repository)})

        result: dict = {"label": f"{LABEL}; {CONFIGS[args.config]}", "config": args.config, "apps": {}}
        for name, make in (("server", server), ("triton", triton)):
            starts = []
            for _ in range(args.cold_starts):
                with make() as app:
                    starts.append(round(app.wait_serving(), 3))
            result["apps"][name] = {"cold_start_s": starts, "cold_start_s_median": statistics.median(starts)}
        with server() as ours, triton() as theirs:
            apps = {"server": ours, "triton": theirs}
            for name, app in apps.items():
                app.wait_serving()
                idle = wait_idle(app, BY_NAME["WORKERS"].default) if name == "server" else _settle(app)
                result["apps"][name]["memory_idle_mib"] = {"pss": rss_mib(idle), "rss": rss_mib(idle, "rss"),
                                                           "processes": len(idle)}
                for spec in specs:
                    status, body = send(app.port, spec)
                    if status != 200:
                        raise RuntimeError(f"{name} {spec.name}: HTTP {status}: {body[:300]!r}")
                    run_wrk(app.port, spec, connections=8, seconds=args.warmup)
            rounds: dict = {name: {spec.name: {c: [] for c in CONCURRENCY} for spec in specs} for name in apps}
            for round_index in range(args.rounds):
                for spec in specs:
                    for connections in CONCURRENCY:
                        order = list(apps.items()) if round_index % 2 == 0 else list(apps.items())[::-1]
                        for name, app in order:
                            run = run_wrk(app.port, spec, connections=connections, seconds=args.seconds,
                                          server_cpu=app.cpu_seconds)
                            rounds[name][spec.name][connections].append(run)
                            log.info("round %d %s %s c=%d: %.0f req/s, p99 %.2f ms, %d errors", round_index, name,
                                     spec.name, connections, run["rps"], run["latency_ms"]["p99"], run["errors"])
            for name, app in apps.items():
                result["apps"][name]["memory_after_mib"] = {"pss": rss_mib(app.worker_memory()),
                                                            "rss": rss_mib(app.worker_memory(), "rss")}
                result["apps"][name]["load"] = rounds[name]
        result["ratios"] = {
            spec.name: {str(c): _ratios(rounds["triton"][spec.name][c], rounds["server"][spec.name][c])
                        for c in CONCURRENCY} for spec in specs}
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _settle(app: TritonProcess, seconds: float = 2.0) -> list[dict[str, int]]:
    """Triton's memory once its stubs have started and it has sat idle a moment."""
    time.sleep(seconds)
    return app.worker_memory()


def _ratios(triton_runs: list[dict], server_runs: list[dict]) -> dict:
    """Per-round Triton / server for req/s, p99 and CPU ms a request; their medians, and the errors."""
    def per_round(key) -> list[float]:
        return [round(key(t) / key(s), 3) for t, s in zip(triton_runs, server_runs) if key(s)]
    rps = per_round(lambda run: run["rps"])
    p99 = per_round(lambda run: run["latency_ms"]["p99"])
    cpu = per_round(lambda run: run.get("server_cpu_ms_per_request") or 0)
    return {
        "rps": statistics.median(rps) if rps else None, "rps_rounds": rps,
        "p99": statistics.median(p99) if p99 else None,
        "cpu_ms_per_request": statistics.median(cpu) if cpu else None,
        "triton_rps_best": max(run["rps"] for run in triton_runs),
        "server_rps_best": max(run["rps"] for run in server_runs),
        "errors": {"triton": sum(r["errors"] for r in triton_runs), "server": sum(r["errors"] for r in server_runs)},
    }


def triton_peer_row(result: dict, spec: str = "v2_infer_binary", connections: int = 32) -> dict:
    """The peer table's row: label, req/s against this server, memory, cold start."""
    ratio = result["ratios"][spec][str(connections)]
    triton, server = result["apps"]["triton"], result["apps"]["server"]
    return {
        "peer": result["label"], "request": spec, "connections": connections,
        "rps_vs_server": ratio["rps"], "p99_vs_server": ratio["p99"],
        "cpu_ms_per_request_vs_server": ratio["cpu_ms_per_request"],
        "memory_idle_pss_mib": triton["memory_idle_mib"]["pss"],
        "memory_vs_server": round(triton["memory_after_mib"]["pss"] / server["memory_after_mib"]["pss"], 2),
        "cold_start_s": triton["cold_start_s_median"],
        "cold_start_vs_server": round(triton["cold_start_s_median"] / server["cold_start_s_median"], 2),
    }


def markdown(result: dict) -> str:
    """The comparison as a Markdown table: per request and concurrency, medians of per-round ratios."""
    triton, server = result["apps"]["triton"], result["apps"]["server"]
    lines = [f"**{result['label']}** against this server, {result['rounds']} alternating rounds of "
             f"{result['seconds']:g} s (Triton / this server, median of per-round ratios):", "",
             "| request | connections | req/s | p99 | CPU ms a request | best req/s, Triton : server | errors |",
             "|---|---:|---:|---:|---:|---|---|"]
    for spec, by_c in result["ratios"].items():
        for connections, ratio in by_c.items():
            lines.append(f"| {spec} | {connections} | {ratio['rps']:.2f}x | {ratio['p99']:.2f}x | "
                         f"{ratio['cpu_ms_per_request']:.2f}x | {ratio['triton_rps_best']:,.0f} : "
                         f"{ratio['server_rps_best']:,.0f} | {ratio['errors']['triton']} : {ratio['errors']['server']} |")
    lines += ["", f"Memory (PSS, every process) idle: Triton {triton['memory_idle_mib']['pss']} MiB in "
              f"{triton['memory_idle_mib']['processes']} processes, this server {server['memory_idle_mib']['pss']} "
              f"MiB in {server['memory_idle_mib']['processes']} workers; after the load: "
              f"{triton['memory_after_mib']['pss']} against {server['memory_after_mib']['pss']} MiB. "
              f"Cold start to the first answer: Triton {triton['cold_start_s_median']} s, this server "
              f"{server['cold_start_s_median']} s (medians)."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.triton_peer", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "models", help="model repository served (copied)")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk duration per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (each: every request and concurrency)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unrecorded wrk warm-up per app and request")
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="auto",
                        help="; ".join(f"{k}: {v}" for k, v in CONFIGS.items()))
    parser.add_argument("--out", type=Path, default=None, help="default bench/out/triton-peer-<config>.json")
    parser.add_argument("--quick", action="store_true", help="1 s runs, 1 round, 1 cold start: checks the machinery")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.warmup, args.cold_starts = 1.0, 1, 1.0, 1
    args.out = args.out or ROOT / "bench" / "out" / f"triton-peer-{args.config}.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        result = measure(args)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    result.update({"rounds": args.rounds, "seconds": args.seconds, "row": None})
    result["row"] = triton_peer_row(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
