"""Cold start and worker memory, before and after a change to server/: fresh servers, taking turns.

Each start is timed from the process's start to the first 200 from `/predict` (PNG); then, once the
workers' memory settles and after some requests, each worker's RSS and PSS (shared pages split
between the processes that share them) and the master's. Trees as in bench/ab.py: a git revision's
server/ against the working tree.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from harness import bodies
from bench.ab import extract, short_hash
from harness.procs import memory_kib, model_server, send, wait_idle

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--before", default="HEAD", help="git revision without the change")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=200, help="requests sent before memory is read")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = bodies.server_requests("mnist", "input", "probabilities")[0]  # /predict PNG
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp:
        trees = {"before": extract(args.before, Path(tmp) / "before"), "after": ROOT}
        for _ in range(args.rounds):
            for label, tree in trees.items():
                with model_server(ROOT / "models", name=f"coldstart-{label}", probe=spec,
                                  env={"WORKERS": str(args.workers)}, cwd=tree) as server:
                    seconds = server.wait_serving()
                    wait_idle(server, args.workers)
                    for _ in range(args.requests):
                        send(server.port, spec)
                    workers = server.worker_memory()
                    runs[label].append({"cold_start_s": round(seconds, 3), "workers_kib": workers,
                                        "master_kib": memory_kib(server.process.pid)})
    summary = {}
    for label, items in runs.items():
        summary[label] = {
            "cold_start_s_median": statistics.median(r["cold_start_s"] for r in items),
            "cold_start_s": [r["cold_start_s"] for r in items],
            "worker_rss_mib_median": round(statistics.median(w["rss"] for r in items for w in r["workers_kib"]) / 1024, 1),
            "worker_pss_mib_median": round(statistics.median(w["pss"] for r in items for w in r["workers_kib"]) / 1024, 1),
            "master_rss_mib_median": round(statistics.median(r["master_kib"]["rss"] for r in items) / 1024, 1),
            "master_pss_mib_median": round(statistics.median(r["master_kib"]["pss"] for r in items) / 1024, 1),
            "total_pss_mib_median": round(statistics.median(
                sum(w["pss"] for w in r["workers_kib"]) + r["master_kib"]["pss"] for r in items) / 1024, 1),
        }
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    result = {"before": short_hash(args.before), "after": f"working tree on {short_hash('HEAD')}",
              "workers": args.workers, "load_average": load, "summary": summary, "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"summary": summary, "load_average": load}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
