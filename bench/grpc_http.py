"""v2 inference over gRPC beside HTTP with binary tensors: requests a second at 1, 8 and 32 streams.

One real server from .venv-serve with `make serve`'s settings (2 workers) answers both transports
on 127.0.0.1. Each stream is a thread with its own connection (a keep-alive HTTP connection, or a
gRPC channel: one HTTP/2 connection) sending one MNIST digit as raw FP32 again and again; the
streams run in up to 4 client processes so the client's GIL is not the limit. The request bodies
are made once, so the client does as little per request as it can on either side. Each point is
the best of `--tries` alternating tries of `--seconds`; the server's CPU time per request is shown
beside it (the clients share the machine's cores with the server, as wrk does in `make bench`).

Also the process model (why gRPC runs inside each worker): each worker's RSS with
GRPC_PORT=0 and with gRPC on, and gRPC throughput with one worker against two.

Writes docs/results/benchmarks-grpc.json and .md. `--seconds 1 --tries 1` for a quick look.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

from bench import footprint
from harness.procs import ROOT, ServerTree, free_port, model_server, wait_idle
from harness.streams import load

SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
STREAMS = (1, 8, 32)


def serve(name: str, **env: str) -> ServerTree:
    """The server as `make serve` runs it, on the committed models, serving; 2 workers unless `WORKERS`
    says otherwise (the default now follows the box: 3 on a 2-core machine)."""
    environment = {"LOG_LEVEL": "warning", "WORKERS": "2", **{key: str(value) for key, value in env.items()}}
    return model_server(ROOT / "models", name=name, env=environment, python=SERVE_PYTHON).serve()


def compare(seconds: float, tries: int) -> list[dict]:
    """Both transports at every stream count on one server: the best try of each."""
    grpc_port = free_port()
    server = serve("grpc-http", GRPC_PORT=grpc_port)
    try:
        wait_idle(server, workers=2)
        load("grpc", grpc_port, 8, 1.0)  # warm both transports up
        load("http", server.port, 8, 1.0)
        points = []
        for streams in STREAMS:
            runs: dict[str, list[dict]] = {"http": [], "grpc": []}
            for attempt in range(tries):
                order = ("http", "grpc") if attempt % 2 == 0 else ("grpc", "http")
                for transport in order:
                    port = server.port if transport == "http" else grpc_port
                    runs[transport].append(load(transport, port, streams, seconds, server))
            for transport, tried in runs.items():
                best = max(tried, key=lambda run: run["rps"])
                points.append({**best, "tries_rps": [run["rps"] for run in tried],
                               "errors": sum(run["errors"] for run in tried)})
                print(json.dumps({k: points[-1][k] for k in ("transport", "streams", "rps", "tries_rps", "errors")}), flush=True)
        return points
    finally:
        server.stop()


def process_model(seconds: float) -> dict:
    """RSS per worker with gRPC off and on; gRPC requests a second with one worker and with two."""
    memory = {}
    server = serve("grpc-off", GRPC_PORT=0)
    try:
        memory["grpc_off_idle_kib"] = [m.get("rss") for m in wait_idle(server, workers=2)]
    finally:
        server.stop()
    scaling = {}
    for workers in (1, 2):
        port = free_port()
        server = serve(f"grpc-{workers}", GRPC_PORT=port, WORKERS=workers)
        try:
            idle = [m.get("rss") for m in wait_idle(server, workers=workers)]
            if workers == 2:
                memory["grpc_on_idle_kib"] = idle
            load("grpc", port, 8, 1.0)
            scaling[f"workers_{workers}"] = load("grpc", port, 8, seconds, server)
            if workers == 2:
                memory["grpc_on_after_load_kib"] = [m.get("rss") for m in server.worker_memory()]
        finally:
            server.stop()
    return {"memory": memory, "grpc_8_streams": scaling}


def markdown(report: dict) -> str:
    rows = {(p["streams"], p["transport"]): p for p in report["points"]}
    lines = [
        "# v2 inference: gRPC beside HTTP (binary tensors)",
        "",
        f"`python -m bench.grpc_http` on {report['machine']}, {report['when']}: one server (Granian, 2 workers, "
        "`make serve`'s settings) answering both transports on 127.0.0.1; one MNIST digit (raw FP32) a "
        f"request; each stream its own connection; best of {report['tries']} alternating tries of "
        f"{report['seconds']} s (every try's req/s shown). The clients (Python, up to 4 processes) share "
        "the cores with the server, so the server's CPU time a request is the steadier comparison. "
        f"Load average before and after the run: {report['load_average_before']} and {report.get('load_average_after')} "
        "(other jobs on the machine swing single tries; compare the two transports' columns, not these figures with "
        "[benchmarks.md](benchmarks.md)'s).",
        "",
        "| streams | HTTP binary req/s | gRPC req/s | gRPC / HTTP | p50 ms HTTP / gRPC | p99 ms HTTP / gRPC | server CPU ms a request HTTP / gRPC | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for streams in STREAMS:
        h, g = rows[(streams, "http")], rows[(streams, "grpc")]
        lines.append(
            f"| {streams} | {h['rps']:,} ({', '.join(f'{r:,}' for r in h['tries_rps'])}) "
            f"| {g['rps']:,} ({', '.join(f'{r:,}' for r in g['tries_rps'])}) | {g['rps'] / h['rps']:.2f}x "
            f"| {h['latency_ms']['p50']} / {g['latency_ms']['p50']} | {h['latency_ms']['p99']} / {g['latency_ms']['p99']} "
            f"| {h['server_cpu_ms_per_request']} / {g['server_cpu_ms_per_request']} | {h['errors'] + g['errors']} |")
    env, closure = report.get("serve_env"), report.get("grpcio_closure")
    if env and closure:
        lines += ["", f"The serve environment ({env['path']}, without bytecode caches, as `make bench` measures it): "
                  f"{env['bytes'] / 1e6:.0f} MB, of which grpcio {closure['version']} and what it requires "
                  f"{closure['bytes'] / 1e6:.1f} MB ({', '.join(closure['largest'])})."]
    model = report.get("process_model")
    if model:
        mem = model["memory"]
        mib = lambda kib: f"{statistics.fmean(kib) / 1024:.1f}"  # noqa: E731
        one, two = model["grpc_8_streams"]["workers_1"], model["grpc_8_streams"]["workers_2"]
        lines += [
            "",
            "## Why gRPC runs in every gunicorn worker",
            "",
            f"- RSS per worker, idle: {mib(mem['grpc_off_idle_kib'])} MiB with `GRPC_PORT=0`, "
            f"{mib(mem['grpc_on_idle_kib'])} MiB with gRPC on, {mib(mem['grpc_on_after_load_kib'])} MiB after the "
            "load: gRPC in a worker costs the difference, where a gRPC process of its own would hold a whole "
            "second copy of the interpreter, onnxruntime and every model (a worker's size) and, under one GIL, "
            "one core's worth of Python.",
            f"- gRPC at 8 streams: {one['rps']:,} req/s with 1 worker, {two['rps']:,} req/s with 2 "
            f"({two['rps'] / one['rps']:.2f}x): the workers share the port (SO_REUSEPORT) and the kernel "
            "spreads the connections, so gRPC scales with `WORKERS` as HTTP does.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each try")
    parser.add_argument("--tries", type=int, default=3, help="tries per point, transports alternating")
    parser.add_argument("--skip-process-model", action="store_true", help="only the transport comparison")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "benchmarks-grpc", help="path without suffix")
    parser.add_argument("--dry-run", action="store_true", help="one short try of each point; write nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.seconds, args.tries, args.skip_process_model = 1.0, 1, True
    report = {
        "machine": f"{multiprocessing.cpu_count()} CPUs", "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_before": round(os.getloadavg()[0], 1),
        "seconds": args.seconds, "tries": args.tries, "points": compare(args.seconds, args.tries),
        "serve_env": footprint.venv_report(SERVE_PYTHON.parents[1]),
        "grpcio_closure": footprint.closure_bytes(SERVE_PYTHON.parents[1], "grpcio"),
    }
    if not args.skip_process_model:
        report["process_model"] = process_model(args.seconds)
    report["load_average_after"] = round(os.getloadavg()[0], 1)
    text = markdown(report)
    print(text)
    if not args.dry_run:
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(text)
    return 0 if all(point["errors"] == 0 for point in report["points"]) else 1


if __name__ == "__main__":
    sys.exit(main())
