"""Where the server's workers spend their time under load: py-spy samples while wrk runs.

Starts this server (or the torch baseline) as `make serve` does, puts `/predict` PNG (or another
bench request) under wrk at 32 connections, samples every worker with py-spy, and prints or writes
the functions that hold the most samples, inclusive and self. Needs py-spy (.venv-bench-tools).
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import threading
from pathlib import Path

from bench import torch_app
from harness import bodies
from harness.loadgen import run_wrk
from harness.procs import ServerTree, model_server, wait_idle
from server.config import BY_NAME
from server.runtime.layout import latest_model_file

ROOT = Path(__file__).resolve().parents[1]

PY_SPY = ROOT / ".venv-bench-tools" / "bin" / "py-spy"
REQUESTS = ("predict_png", "predict_pixels", "v2_infer_binary", "v2_infer_json")


def frame_name(frame: str) -> str:
    """`function (path/file.py)` with the folder shortened to the package."""
    name, _, where = frame.partition(" (")
    return f"{name} ({'/'.join(where.rstrip(')').split('/')[-2:])})" if where else name


def summarize(raw: str, top: int) -> dict:
    """Inclusive and self sample shares per function from py-spy's collapsed stacks."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [frame_name(f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for name in set(frames):
            inclusive[name] += int(count)
    share = lambda counter: [[name, round(n / total, 4)] for name, n in counter.most_common(top)]  # noqa: E731
    return {"samples": total, "inclusive": share(inclusive), "self": share(own)}


def profile(server: ServerTree, spec: bodies.RequestSpec, seconds: int, top: int = 25) -> dict:
    """Sample the workers of `server` for `seconds` while wrk loads it with `spec`."""
    raw_path = server.log_dir / f"profile-{server.name}-{spec.name}.txt"
    run_wrk(server.port, spec, connections=32, seconds=2)  # warm-up: lazy imports, first-request costs
    load: dict = {}
    wrk = threading.Thread(target=lambda: load.update(
        run_wrk(server.port, spec, connections=32, seconds=seconds + 2, server_cpu=server.cpu_seconds)))
    wrk.start()
    subprocess.run([str(PY_SPY), "record", "--pid", str(server.process.pid), "--subprocesses", "--nonblocking",
                    "--nolineno", "--gil", "--format", "raw", "--duration", str(seconds), "--output", str(raw_path)],
                   check=True, capture_output=True, timeout=seconds + 60)
    wrk.join()
    return {"app": server.name, "request": spec.name, "seconds": seconds, "load": load,
            **summarize(raw_path.read_text(), top)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--app", choices=("server", "torch"), default="server")
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--checkpoint", default="",
                        help="torch baseline weights ('' = random, in the architecture of the repository's mnist model)")
    parser.add_argument("--request", choices=REQUESTS, default="predict_png")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not PY_SPY.exists():
        print(f"error: {PY_SPY} missing; make bench installs it", file=sys.stderr)
        return 1
    spec = {s.name: s for s in bodies.server_requests("mnist", "input", "probabilities")}[args.request]
    if args.app == "server":
        server = model_server(args.repository, probe=spec)
    else:
        served = latest_model_file(args.repository, "mnist")
        server = torch_app.gunicorn(spec, args.checkpoint, torch_app.served_model_config(served) if served else "")
    with server:
        server.wait_serving()
        wait_idle(server, BY_NAME["WORKERS"].default)
        print(json.dumps(profile(server, spec, args.seconds, args.top), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
