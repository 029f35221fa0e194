"""The HTTP layer under Flask, measured (issue 19, point 6): gunicorn against Granian, same apps.

Runs the trivial Flask app (bench/trivial_app.py) and this server (`server:create_app`) under
gunicorn with the server's own server/gunicorn_conf.py (WORKERS=2) and under Granian's WSGI
interface (2 workers, Rust HTTP, from `.venv-bench-granian`, built from bench/peers/requirements-granian.txt),
taking turns, and prints the server CPU per request and requests/s of each under wrk (32 connections).
Granian here serves the app without gunicorn_conf.py's hooks (no metrics folder shared by the
workers, no model sync, no gRPC): a measurement of the layer, not a deployment.
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import bodies  # noqa: E402
from bench.loadgen import run_wrk  # noqa: E402
from bench.procs import ServerTree, gunicorn_app  # noqa: E402
from server.layout import latest_model_file  # noqa: E402

GRANIAN_PYTHON = ROOT / ".venv-bench-granian" / "bin" / "python"
WORKERS = 2


def granian(target: str, probe: bodies.RequestSpec, env: dict[str, str], factory: bool, metrics_dir: str) -> ServerTree:
    """`target` under Granian's WSGI interface, its workers writing metrics into `metrics_dir`, not yet started."""
    server = ServerTree("layer-granian", [], probe, env={**env, "PROMETHEUS_MULTIPROC_DIR": metrics_dir})
    server.argv = [str(GRANIAN_PYTHON), "-m", "granian", "--interface", "wsgi", "--workers", str(WORKERS),
                   "--host", "127.0.0.1", "--port", str(server.port), "--no-ws", *(["--factory"] if factory else []),
                   target]
    return server


def measure(server: ServerTree, specs: list[bodies.RequestSpec], seconds: float, layer: str,
            samples: dict[str, list[dict]]) -> None:
    """Start `server`, load it with each request in turn (after a warm-up) and add the runs to `samples`."""
    with server:
        server.wait_serving()
        for spec in specs:
            run_wrk(server.port, spec, connections=32, seconds=1)  # warm-up
            samples.setdefault(f"{spec.name} {layer}", []).append(
                run_wrk(server.port, spec, connections=32, seconds=seconds, server_cpu=server.cpu_seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--rounds", type=int, default=2, help="turns per layer")
    parser.add_argument("--seconds", type=float, default=4.0, help="wrk run per request and turn")
    parser.add_argument("--out", type=Path, help="also write the rows and every try here as JSON")
    args = parser.parse_args(argv)
    if not GRANIAN_PYTHON.exists():
        parser.exit(1, f"error: no {GRANIAN_PYTHON}: python3 -m venv .venv-bench-granian && "
                       ".venv-bench-granian/bin/pip install -r bench/peers/requirements-granian.txt\n")
    model_file = latest_model_file(args.repository, args.model)
    env = {"GRPC_PORT": "0", "MODEL_REPOSITORY": str(args.repository)}
    apps = {"trivial": ("bench.trivial_app:app", False, [bodies.trivial()])}
    if model_file is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        specs = bodies.server_requests(args.model, session.get_inputs()[0].name, session.get_outputs()[0].name)
        apps["server"] = ("server:create_app", True, specs)
    samples: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for target, factory, specs in apps.values():
            server = gunicorn_app("layer-gunicorn", target + ("()" if factory else ""), specs[0],
                                  {**env, "WORKERS": str(WORKERS)})
            measure(server, specs, args.seconds, "gunicorn", samples)
            # gunicorn_conf.py makes the workers' metrics folder under gunicorn; Granian's gets this one.
            with tempfile.TemporaryDirectory(prefix="layer-metrics-") as metrics_dir:
                measure(granian(target, specs[0], env, factory, metrics_dir), specs, args.seconds, "granian", samples)
    rows = {}
    for key, runs in samples.items():
        rows[key] = {"cpu_ms_per_request": round(statistics.median(r["server_cpu_ms_per_request"] for r in runs), 3),
                     "rps": round(statistics.median(r["rps"] for r in runs)),
                     "errors": sum(r["errors"] for r in runs), "tries": len(runs)}
        print(json.dumps({"request_layer": key, **rows[key]}))
    if args.out:
        args.out.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                        "load_average_at_end": os.getloadavg(), "rows": rows, "tries": samples},
                                       indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
