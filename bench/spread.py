"""How wrk's keep-alive connections spread over gunicorn's workers, try after try, before and after a change.

Each try is a fresh wrk run (new connections) against a running server; half-way through it the
established connections are counted per worker (`ss -tnp`) and each worker's CPU is read. A try
whose busiest worker holds most of the connections serves about one worker's throughput. The two
trees (a git revision's server/ and the working tree, as bench/ab.py does) alternate, one server
each, so the machine's load falls on both alike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import bodies
from bench.ab import extract, short_hash
from harness.loadgen import run_wrk
from harness.procs import cpu_seconds, model_server, wait_idle

ROOT = Path(__file__).resolve().parents[1]


def connections_by_pid(port: int) -> dict[int, int]:
    """Established connections on the server's side of `port`, by the pid holding them."""
    done = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                          capture_output=True, text=True, check=True)
    counts: dict[int, int] = {}
    for line in done.stdout.splitlines():
        for part in line.split("pid=")[1:]:
            pid = int(part.split(",")[0])
            counts[pid] = counts.get(pid, 0) + 1
    return counts


def one_try(server, spec, connections: int, seconds: float) -> dict:
    workers = server.workers()
    cpu_before = {pid: cpu_seconds(pid) for pid in workers}
    result: dict = {}
    load = threading.Thread(target=lambda: result.update(
        run_wrk(server.port, spec, connections=connections, seconds=seconds)))
    load.start()
    time.sleep(seconds / 2)
    counts = connections_by_pid(server.port)
    load.join()
    by_worker = [counts.get(pid, 0) for pid in workers]
    cpu = [round(cpu_seconds(pid) - cpu_before[pid], 2) for pid in workers]
    return {"rps": round(result["rps"], 1), "errors": result["errors"], "connections_by_worker": by_worker,
            "busiest_share": round(max(by_worker) / max(1, sum(by_worker)), 2), "cpu_s_by_worker": cpu}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--before", default="HEAD", help="git revision without the change")
    parser.add_argument("--request", default="v2_infer_binary",
                        choices=("predict_png", "predict_pixels", "v2_infer_binary", "v2_infer_json"))
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--tries", type=int, default=8, help="wrk runs per server and round")
    parser.add_argument("--rounds", type=int, default=2, help="before/after alternations")
    parser.add_argument("--setting", action="append", default=["WORKERS=2"], metavar="NAME=VALUE")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = {s.name: s for s in bodies.server_requests("mnist", "input", "probabilities")}[args.request]
    settings = dict(item.split("=", 1) for item in args.setting)
    tries: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="bench-spread-") as tmp:
        trees = {"before": extract(args.before, Path(tmp) / "before"), "after": ROOT}
        for _ in range(args.rounds):
            for label, tree in trees.items():
                with model_server(ROOT / "models", name=f"spread-{label}", probe=spec, env=settings, cwd=tree) as server:
                    server.wait_serving()
                    wait_idle(server, int(settings.get("WORKERS", 2)))
                    run_wrk(server.port, spec, connections=args.connections, seconds=1)
                    for _ in range(args.tries):
                        tries[label].append(one_try(server, spec, args.connections, args.seconds))
    summary = {}
    for label, runs in tries.items():
        rps = [t["rps"] for t in runs]
        summary[label] = {
            "rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "tries_with_busiest_worker_over_75pct": sum(t["busiest_share"] > 0.75 for t in runs),
            "tries": len(runs), "errors": sum(t["errors"] for t in runs),
        }
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    result = {"before": short_hash(args.before), "after": f"working tree on {short_hash('HEAD')}",
              "request": args.request, "connections": args.connections, "seconds": args.seconds,
              "settings": args.setting, "load_average": load, "summary": summary, "tries": tries}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps({"summary": summary, "load_average": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
