"""Soak: concurrency 32 for 60 s against the server; 0 failed requests, RSS growth <= 10 % after warm-up.

Starts the server as `make serve` does (from .venv-serve, default settings) on a free port of
127.0.0.1, warms it up under the same load, takes each worker's memory, then keeps the load on for
`--seconds` while sampling memory, and checks the workers were never replaced. Prints JSON; exits
1 when the soak fails. `make bench` runs the full one; pass small numbers for a bounded one.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from harness import bodies
from harness.loadgen import run_wrk
from harness.procs import ServerTree, model_server, wait_idle
from server.config import BY_NAME

ROOT = Path(__file__).resolve().parents[1]

MAX_RSS_GROWTH = 0.10


def total_rss_kib(server: ServerTree) -> int:
    return sum(m.get("rss", 0) for m in server.worker_memory())


def soak(server: ServerTree, spec: bodies.RequestSpec, *, seconds: float, warmup: float,
         connections: int, sample_every: float = 1.0) -> dict:
    """Warm `server` up, then load it for `seconds` while sampling its workers' RSS."""
    warm = run_wrk(server.port, spec, connections=connections, seconds=warmup)
    workers_before = server.workers()
    baseline = total_rss_kib(server)
    samples = [(0.0, baseline)]
    result: dict = {}
    load = threading.Thread(target=lambda: result.update(
        run_wrk(server.port, spec, connections=connections, seconds=seconds, server_cpu=server.cpu_seconds)))
    started = time.perf_counter()
    load.start()
    while load.is_alive():
        load.join(sample_every)
        samples.append((round(time.perf_counter() - started, 2), total_rss_kib(server)))
    if not result:
        raise RuntimeError("the load generator failed; see the messages above")
    growth = (samples[-1][1] - baseline) / baseline
    replaced = sorted(set(workers_before) ^ set(server.workers()))
    return {
        "seconds": seconds, "warmup_seconds": warmup, "connections": connections, "request": spec.name,
        "warmup_requests": warm["requests"], "load": result,
        "failed_requests": result["errors"] + warm["errors"],
        "rss_kib_after_warmup": baseline, "rss_kib_end": samples[-1][1],
        "rss_kib_max": max(kib for _, kib in samples), "rss_growth": round(growth, 4),
        "workers_replaced": replaced, "rss_samples": samples,
        "passed": result["errors"] + warm["errors"] == 0 and growth <= MAX_RSS_GROWTH and not replaced,
    }


def serve(repository: Path, name: str = "soak") -> ServerTree:
    """The server as `make serve` runs it, on a free port, probed with a PNG /predict."""
    image, _ = bodies.mnist_digit()
    return model_server(repository, name=name, probe=bodies.predict_png(image))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "models", help="model repository to serve")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured soak duration")
    parser.add_argument("--warmup", type=float, default=10.0, help="load before the baseline RSS is taken")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--json-out", type=Path, help="also write the result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seconds <= 0 or args.warmup <= 0 or args.connections < 1:
        print("error: --seconds and --warmup must be > 0 and --connections >= 1", file=sys.stderr)
        return 2
    with serve(args.repository) as server:
        server.wait_serving()
        wait_idle(server, workers=BY_NAME["WORKERS"].default)
        result = soak(server, server.probe, seconds=args.seconds, warmup=args.warmup,
                      connections=args.connections)
    text = json.dumps(result)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    print(text)
    print(f"soak {'passed' if result['passed'] else 'FAILED'}: {result['load']['requests']} requests, "
          f"{result['failed_requests']} failed, RSS growth {result['rss_growth']:+.1%} after warm-up, "
          f"workers replaced: {result['workers_replaced'] or 'none'}", file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
