"""`make bench-smoke`: a CI guard against gross slowdowns of the request path, in well under a minute.

It starts the real server (`python -m server` from .venv-serve on the committed models, as `make
serve` runs it) and the trivial Flask app under the same launcher (bench/trivial_app.py), sends a
short bounded load from Python client threads on 127.0.0.1, and reads the server's CPU time (main
process + workers, from /proc, as `make bench` does) per answered request for the trivial endpoint,
v2 infer binary and /predict PNG. The three kinds take turns, `--rounds` times; each figure is the
median of its rounds.

What it compares is a ratio measured within one run, so a slower or busier machine cancels out:
the CPU per request of v2 binary and of /predict PNG divided by the trivial endpoint's. It fails
(one line, exit 1) when either ratio is more than `--factor` (2) times the ratio recorded in
bench/smoke-baseline.json; `--update` (make bench-smoke UPDATE=1) records this run's ratios there.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from harness import bodies
from harness.loadgen import send_many
from harness.procs import SERVE_PYTHON, ServerTree, model_server, wait_idle, wsgi_app

ROOT = Path(__file__).resolve().parents[1]

BASELINE = Path(__file__).with_name("smoke-baseline.json")
WORKERS = 2
TRIVIAL_SHARE = 3  # trivial requests per request of the other kinds
GUARDED = ("v2_infer_binary", "predict_png")  # measured against "trivial"
LABELS = {"trivial": "trivial endpoint", "v2_infer_binary": "v2 infer binary", "predict_png": "/predict PNG"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "models", help="model repository served")
    parser.add_argument("--model", default="mnist", help="model the v2 and /predict requests name")
    parser.add_argument("--requests", type=int, default=1500, help="requests per kind and round (the trivial endpoint gets 3 x as many)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of the three kinds")
    parser.add_argument("--clients", type=int, default=4, help="client threads (keep-alive connections)")
    parser.add_argument("--factor", type=float, default=2.0, help="fail above this multiple of the recorded ratio")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="the recorded ratios")
    parser.add_argument("--update", action="store_true", help="record this run's ratios in --baseline; never fails")
    parser.add_argument("--python", type=Path, default=SERVE_PYTHON, help="the interpreter the servers run under")
    return parser.parse_args(argv)


def cpu_ms_per_request(server: ServerTree, spec: bodies.RequestSpec, requests: int, clients: int) -> float:
    """Server CPU (main process + workers) per request over `requests` requests from `clients` threads."""
    before = server.cpu_seconds()
    sent = send_many(server.port, spec, requests, concurrency=clients)
    used = server.cpu_seconds() - before
    if sent["failures"]:
        raise RuntimeError(f"{server.name} {spec.name}: {sent['failures']} of {requests} requests failed "
                           f"({', '.join(sent['failure_kinds'])})")
    return 1000 * used / requests


def measure(args: argparse.Namespace) -> dict:
    """CPU ms per request of each kind, per round, with both servers up (the idle one costs next to nothing)."""
    png, _, binary, _ = bodies.server_requests(args.model, "input", "probabilities")
    specs = {"trivial": bodies.trivial(), "v2_infer_binary": binary, "predict_png": png}
    env = {"WORKERS": str(WORKERS), "LOG_LEVEL": "warning"}
    trivial = wsgi_app("smoke-trivial", "bench.trivial_app:app", specs["trivial"], env, python=args.python)
    server = model_server(args.repository.resolve(), name="smoke-server", probe=binary, env=env, python=args.python)
    rounds: dict[str, list[float]] = {name: [] for name in specs}
    with trivial, server:
        for tree in (trivial, server):
            tree.wait_serving()
            wait_idle(tree, WORKERS, settle=0.3)
        for name, spec in specs.items():  # warm-up: lazy imports, onnxruntime's first runs, both workers
            send_many((trivial if name == "trivial" else server).port, spec, 200, concurrency=args.clients)
        for _ in range(args.rounds):
            for name, spec in specs.items():
                tree = trivial if name == "trivial" else server
                # The trivial request is cheap: more of them, so the clock's 10 ms ticks stay a small part.
                count = args.requests * (TRIVIAL_SHARE if name == "trivial" else 1)
                rounds[name].append(round(cpu_ms_per_request(tree, spec, count, args.clients), 4))
    return {name: {"cpu_ms_per_request": round(statistics.median(values), 4), "rounds": values}
            for name, values in rounds.items()}


def ratios(measured: dict) -> dict[str, float]:
    trivial = measured["trivial"]["cpu_ms_per_request"]
    return {name: round(measured[name]["cpu_ms_per_request"] / trivial, 3) for name in GUARDED}


def worst_regression(now: dict[str, float], recorded: dict[str, float], factor: float) -> str | None:
    """The guarded request whose ratio grew the most past `factor` x its recorded one, or None."""
    failed = [name for name in GUARDED if now[name] > factor * recorded[name]]
    return max(failed, key=lambda n: now[n] / recorded[n]) if failed else None


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        measured = measure(args)
    except (RuntimeError, OSError) as err:
        print(f"bench-smoke: could not measure: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    now = ratios(measured)
    trivial = measured["trivial"]["cpu_ms_per_request"]
    for name in ("trivial", *GUARDED):
        figure = measured[name]
        tail = "" if name == "trivial" else f" = {now[name]:.2f} x trivial's"
        print(f"bench-smoke: {LABELS[name]}: {figure['cpu_ms_per_request']:.3f} ms server CPU per request"
              f" (rounds {', '.join(f'{v:.3f}' for v in figure['rounds'])}){tail}")
    if args.update:
        record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit(),
                  "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                  "method": {"workers": WORKERS, "requests": args.requests, "rounds": args.rounds,
                             "clients": args.clients},
                  "cpu_ms_per_request": {name: measured[name]["cpu_ms_per_request"] for name in measured},
                  "ratio_to_trivial": now}
        args.baseline.write_text(json.dumps(record, indent=1) + "\n")
        print(f"bench-smoke: recorded these ratios in {args.baseline.relative_to(ROOT)} ({time.perf_counter() - started:.0f} s)")
        return 0
    try:
        recorded = json.loads(args.baseline.read_text())["ratio_to_trivial"]
    except (OSError, ValueError, KeyError) as err:
        print(f"bench-smoke: no recorded ratios in {args.baseline} ({err}): run make bench-smoke UPDATE=1", file=sys.stderr)
        return 1
    name = worst_regression(now, recorded, args.factor)
    if name:
        print(f"bench-smoke: FAILED: {LABELS[name]} costs {now[name]:.2f} x the trivial endpoint's server CPU per "
              f"request ({measured[name]['cpu_ms_per_request']:.3f} ms / {trivial:.3f} ms), more than {args.factor:g} x "
              f"the recorded {recorded[name]:.2f} x ({args.baseline.name})", file=sys.stderr)
        return 1
    print("bench-smoke: ok: " + ", ".join(f"{LABELS[n]} {now[n]:.2f} x trivial (recorded {recorded[n]:.2f} x, "
                                         f"limit {args.factor * recorded[n]:.2f} x)" for n in GUARDED)
          + f" in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
