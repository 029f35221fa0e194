"""The HTTP layer under Flask, A/B: gunicorn (the layer before, bench/gunicorn_conf.py) against Granian (the server's own, server/lifecycle.py).

The same code and model under each, taking turns in one run: the trivial Flask app
(bench/trivial_app.py) and this server (`server:create_app`), 2 workers each, gRPC off (gunicorn
had no gRPC in its A/B), every request kind the server is measured with (/predict PNG and pixels,
v2 binary and JSON) under wrk (32 connections). Per layer: server CPU per request (main process +
workers), requests/s, cold start (start to the first 200), RSS and PSS of the main process and of
each idle worker. gunicorn runs from .venv-bench-gunicorn (the serving packages plus gunicorn,
bench/peer_apps/requirements-gunicorn.txt); Granian is the serving environment's own.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from harness import bodies
from harness.loadgen import run_wrk
from harness.procs import GUNICORN_PYTHON, SERVE_PYTHON, ServerTree, gunicorn_app, memory_kib, model_server, wait_idle, wsgi_app
from server.runtime.layout import latest_model_file

ROOT = Path(__file__).resolve().parents[1]

WORKERS = 2
LAYERS = ("gunicorn", "granian")


def launch(layer: str, app: str, repository: Path, probe: bodies.RequestSpec, gunicorn_python: Path) -> ServerTree:
    """`app` ("trivial" or "server") under `layer`, not yet started."""
    env = {"WORKERS": str(WORKERS), "GRPC_PORT": "0", "MODEL_REPOSITORY": str(repository)}
    if layer == "granian":
        if app == "server":
            return model_server(repository, name="layer-granian", probe=probe, env=env)
        return wsgi_app("layer-granian", "bench.trivial_app:app", probe, env)
    target = "server:create_app()" if app == "server" else "bench.trivial_app:app"
    return gunicorn_app("layer-gunicorn", target, probe, env, python=gunicorn_python)


def measure(server: ServerTree, specs: list[bodies.RequestSpec], seconds: float, key: str, samples: dict) -> None:
    """Start `server`, note its cold start and idle memory, load it with each request in turn, add the runs to `samples`."""
    with server:
        cold = server.wait_serving()
        workers = wait_idle(server, WORKERS)
        samples.setdefault(f"cold start {key}", []).append({"seconds": cold})
        samples.setdefault(f"memory {key}", []).append({"main": memory_kib(server.process.pid), "workers": workers})
        for spec in specs:
            run_wrk(server.port, spec, connections=32, seconds=1)  # warm-up
            samples.setdefault(f"{spec.name} {key.split()[-1]}", []).append(
                run_wrk(server.port, spec, connections=32, seconds=seconds, server_cpu=server.cpu_seconds))


def summarise(samples: dict) -> dict:
    rows: dict = {}
    for key, runs in samples.items():
        if key.startswith("cold start"):
            rows[key] = {"seconds": round(statistics.median(r["seconds"] for r in runs), 2)}
        elif key.startswith("memory"):
            last = runs[-1]
            rows[key] = {"main_rss_mib": round(last["main"].get("rss", 0) / 1024, 1),
                         "main_pss_mib": round(last["main"].get("pss", 0) / 1024, 1),
                         "worker_rss_mib": [round(w.get("rss", 0) / 1024, 1) for w in last["workers"]],
                         "worker_pss_mib": [round(w.get("pss", 0) / 1024, 1) for w in last["workers"]]}
        else:
            rows[key] = {"cpu_ms_per_request": round(statistics.median(r["server_cpu_ms_per_request"] for r in runs), 3),
                         "rps": round(statistics.median(r["rps"] for r in runs)),
                         "errors": sum(r["errors"] for r in runs), "tries": len(runs)}
    names = {key.rsplit(" ", 1)[0] for key in rows if not key.startswith(("cold start", "memory"))}
    for name in sorted(names):
        a, b = rows.get(f"{name} gunicorn"), rows.get(f"{name} granian")
        if a and b and a["cpu_ms_per_request"]:
            rows[f"{name} granian/gunicorn"] = {"cpu_ratio": round(b["cpu_ms_per_request"] / a["cpu_ms_per_request"], 2),
                                                "rps_ratio": round(b["rps"] / a["rps"], 2) if a["rps"] else None}
    return rows


def markdown(report: dict) -> str:
    """The run as a short dated document: ratios first, then the figures they come from."""
    rows = report["rows"]
    lines = [f"# The HTTP layer under Flask: gunicorn against Granian ({report['date']})", "",
             f"Written by `python -m bench.http_layer` (part of `make bench`); every figure is from that one run "
             f"({report['workers']} workers per server, wrk with 32 connections, load average at the end "
             f"{', '.join(f'{x:.1f}' for x in report['load_average_at_end'])}; the raw tries are in "
             "[benchmarks-http-layer.json](benchmarks-http-layer.json)). Same code, same model; gunicorn with "
             "bench/gunicorn_conf.py (gthread, the connection-spreading worker), Granian with server/lifecycle.py.", "",
             "| request | CPU ms/request, gunicorn | Granian | Granian / gunicorn | req/s, gunicorn | Granian |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, row in rows.items():
        if key.endswith("granian/gunicorn"):
            name = key.rsplit(" ", 1)[0]
            a, b = rows[f"{name} gunicorn"], rows[f"{name} granian"]
            lines.append(f"| {name} | {a['cpu_ms_per_request']} | {b['cpu_ms_per_request']} | **{row['cpu_ratio']}** "
                         f"| {a['rps']} | {b['rps']} |")
    lines += ["", "| app, layer | cold start s | main process RSS / PSS MiB | each idle worker RSS / PSS MiB |",
              "| --- | ---: | ---: | ---: |"]
    for app in ("trivial", "server"):
        for layer in LAYERS:
            cold, memory = rows.get(f"cold start {app} {layer}"), rows.get(f"memory {app} {layer}")
            if cold and memory:
                workers = ", ".join(f"{r} / {p}" for r, p in zip(memory["worker_rss_mib"], memory["worker_pss_mib"]))
                lines.append(f"| {app}, {layer} | {cold['seconds']} | {memory['main_rss_mib']} / {memory['main_pss_mib']} | {workers} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--rounds", type=int, default=2, help="turns per layer")
    parser.add_argument("--seconds", type=float, default=4.0, help="wrk run per request and turn")
    parser.add_argument("--gunicorn-python", type=Path, default=GUNICORN_PYTHON,
                        help="a Python with the serving packages and gunicorn")
    parser.add_argument("--out", type=Path, help="also write the rows and every try here as JSON, and a .md beside it")
    args = parser.parse_args(argv)
    if not args.gunicorn_python.exists():
        parser.exit(1, f"error: no {args.gunicorn_python}: make .venv-bench-gunicorn/.stamp\n")
    model_file = latest_model_file(args.repository, args.model)
    apps = {"trivial": [bodies.trivial()]}
    if model_file is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        apps["server"] = bodies.server_requests(args.model, session.get_inputs()[0].name, session.get_outputs()[0].name)
    samples: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for app, specs in apps.items():
            for layer in LAYERS:
                server = launch(layer, app, args.repository, specs[0], args.gunicorn_python)
                measure(server, specs, args.seconds, f"{app} {layer}", samples)
    rows = summarise(samples)
    for key, row in rows.items():
        print(json.dumps({"row": key, **row}))
    if args.out:
        report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "serve_python": str(SERVE_PYTHON), "gunicorn_python": str(args.gunicorn_python),
                  "workers": WORKERS, "load_average_at_end": os.getloadavg(), "rows": rows, "tries": samples}
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
