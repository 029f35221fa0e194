"""This server beside the servers its users would pick instead, on the same model.onnx and the same v2 requests.

Peers, each from its own virtual environment (`make bench` builds them from bench/peer_apps/requirements-*.txt):
- KServe's ModelServer (bench/peer_apps/kserve_model.py, `--workers 2`: KServe's uvicorn workers, one per core);
- Seldon MLServer (bench/peer_apps/mlserver_model.py, `parallel_workers: 2`, one inference process per core;
  its REST side has no binary tensor extension, so it runs v2 JSON only).
This server runs as `make serve` does, with WORKERS=2 so every server has two processes on the model.
All serve the same file: the repository's newest version of `--model` (the default model) unless
`--version` names one. wrk sends the same v2 infer request (JSON, and Triton's binary extension where
the peer takes it) from `--connections` connections; over gRPC (v2 ModelInfer, the tensor as raw
bytes, as tritonclient.grpc sends it) this server and KServe's gRPC server (which KServe runs in its
main process whatever `--workers` says) take the same numbers of streams from bench/grpc_http.py's
client processes. The servers take turns, `--rounds` times, one server running at a time.
Prints JSON and, with --out, writes it (`make bench`: docs/results/benchmarks-peers.json, shown in
docs/results/benchmarks.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from bench import grpc_http
from harness import bodies
from harness.loadgen import run_wrk
from harness.procs import ServerTree, free_port, model_server
from server.runtime.layout import latest_model_file, model_path

ROOT = Path(__file__).resolve().parents[1]

PEERS_DIR = ROOT / "bench" / "peer_apps"
KSERVE_PYTHON = ROOT / ".venv-bench-kserve" / "bin" / "python"
MLSERVER_BIN = ROOT / ".venv-bench-mlserver" / "bin" / "mlserver"
WORKERS = 2


def kserve(model_dir: Path, name: str, probe: bodies.RequestSpec) -> ServerTree:
    server = ServerTree("peer-kserve", [], probe, cwd=PEERS_DIR)
    server.argv = [str(KSERVE_PYTHON), "kserve_model.py", "--model_dir", str(model_dir), "--model_name", name,
                   "--http_port", str(server.port), "--grpc_port", str(server.port + 1), "--workers", str(WORKERS)]
    return server


def mlserver(model_file: Path, name: str, probe: bodies.RequestSpec, scratch: Path) -> ServerTree:
    server = ServerTree("peer-mlserver", [], probe, cwd=PEERS_DIR, env={"PYTHONPATH": str(PEERS_DIR)})
    folder = scratch / "mlserver"
    (folder / name).mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({
        "http_port": server.port, "grpc_port": server.port + 1, "metrics_port": server.port + 2,
        "parallel_workers": WORKERS}))
    (folder / name / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "mlserver_model.OnnxModel", "parameters": {"uri": str(model_file)}}))
    server.argv = [str(MLSERVER_BIN), "start", str(folder)]
    return server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--version", default="", help="version served by every server; empty = the newest")
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 32], help="also the gRPC streams")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2, help="turns of every server")
    parser.add_argument("--peers", nargs="+", default=["server", "kserve", "mlserver"])
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repository = args.repository.resolve()
    model_file = (model_path(repository, args.model, args.version) if args.version
                  else latest_model_file(repository, args.model))
    if model_file is None or not model_file.exists():
        raise SystemExit(f"error: no model file for {args.model} version {args.version or '(newest)'} in {repository}")
    specs = {s.name: s for s in bodies.server_requests(args.model, "input", "probabilities")}
    requests = {"server": ["v2_infer_json", "v2_infer_binary", "v2_infer_grpc"],
                "kserve": ["v2_infer_json", "v2_infer_binary", "v2_infer_grpc"], "mlserver": ["v2_infer_json"]}
    runs: dict = {}
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for round_number in range(args.rounds):
            for peer in args.peers:
                probe = specs["v2_infer_json"]
                if peer == "server":
                    # The newest version of the model only, as the peers load it (and 8001 may be taken).
                    grpc_port = free_port()
                    server = model_server(repository, name="peer-server", probe=probe,
                                          env={"WORKERS": str(WORKERS), "GRPC_PORT": str(grpc_port)})
                elif peer == "kserve":
                    server = kserve(model_file.parent, args.model, probe)
                    grpc_port = server.port + 1
                else:
                    server = mlserver(model_file, args.model, probe, Path(tmp) / f"r{round_number}")
                with server:
                    server.wait_serving(timeout=180.0, patient=True)
                    for request in requests[peer]:
                        spec = specs.get(request)
                        for connections in args.connections:
                            if request == "v2_infer_grpc":
                                grpc_http.load("grpc", grpc_port, connections, args.warmup)
                                result = grpc_http.load("grpc", grpc_port, connections, args.seconds, server)
                                runs.setdefault(f"{peer}|{request}|{connections}", []).append(result)
                                continue
                            run_wrk(server.port, spec, connections=connections, seconds=args.warmup)
                            result = run_wrk(server.port, spec, connections=connections, seconds=args.seconds,
                                             server_cpu=server.cpu_seconds)
                            runs.setdefault(f"{peer}|{request}|{connections}", []).append(result)
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]
    table = []
    for key, results in runs.items():
        peer, request, connections = key.split("|")
        table.append({
            "server": peer, "request": request, "connections": int(connections),
            "rps_median": round(statistics.median(r["rps"] for r in results), 1),
            "rps_runs": [round(r["rps"], 1) for r in results],
            "p50_ms": round(statistics.median(r["latency_ms"]["p50"] for r in results), 2),
            "p99_ms": round(statistics.median(r["latency_ms"]["p99"] for r in results), 2),
            "cpu_ms_per_request": round(statistics.median(r["server_cpu_ms_per_request"] for r in results), 3),
            "errors": sum(r["errors"] for r in results),
        })
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "workers": WORKERS,
              "model_file": str(model_file.relative_to(ROOT)) if model_file.is_relative_to(ROOT) else str(model_file),
              "load_generators": {"v2_infer_json": "wrk", "v2_infer_binary": "wrk",
                                  "v2_infer_grpc": "bench/grpc_http.py's client processes"},
              "seconds": args.seconds, "rounds": args.rounds, "load_average_before": load_before,
              "load_average_after": load_after, "cpus": os.cpu_count(), "table": table}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
