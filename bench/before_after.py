"""Server CPU per request before and after: this tree's server against an older revision's, same model file, one run.

bench/ab.py's method for the three requests issue 33 sets a goal on (v2 infer binary, v2 infer JSON,
/predict PNG): the revision's server/ is extracted with `git archive` (ab.extract), each tree runs
as its own `python -m server` did (the old tree under gunicorn from .venv-bench-gunicorn, which
holds the serving packages plus gunicorn; this tree from .venv-serve), WORKERS=2 on both, on the
same model repository, so both serve the same default model file. The two take turns, `rounds`
times; per start, each request gets a warm-up and then `seconds` under wrk at `connections`
connections, with the server's CPU time (main process + workers) per answered request. The figures
are the medians of the rounds. `make bench` runs it from bench/run.py; `python -m bench.before_after`
runs it alone and prints JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from bench import ab
from harness import bodies
from harness.loadgen import run_wrk
from harness.procs import GUNICORN_PYTHON, SERVE_PYTHON, model_server, send, wait_idle

ROOT = Path(__file__).resolve().parents[1]

BEFORE = "e301823"  # main of 2026-11-30, the last make bench before issue 33 (gunicorn, model version 1 the default)
REQUESTS = ("v2_infer_binary", "v2_infer_json", "predict_png")
WORKERS = 2
CPU_FRACTION = 0.5  # issue 33's goal: CPU per request at most this share of the before tree's


def measure_tree(tree: Path, python: Path, label: str, repository: Path, specs: dict, connections: int,
                 seconds: float, warmup: float) -> dict:
    """One start of the server in `tree`: every request under wrk, with the server's CPU per request."""
    server = model_server(repository, name=f"before-after-{label}", probe=specs[REQUESTS[0]],
                          env={"WORKERS": str(WORKERS)}, python=python, cwd=tree)
    with server:
        server.wait_serving()
        wait_idle(server, WORKERS)
        # What the tree serves as the default version: both sides must run the same model file.
        status, body = send(server.port, bodies.RequestSpec("metadata", "GET", f"/v2/models/{specs['model']}"))
        results: dict = {"served": json.loads(body) if status == 200 else {"status": status}}
        for name in REQUESTS:
            run_wrk(server.port, specs[name], connections=connections, seconds=warmup)
            results[name] = run_wrk(server.port, specs[name], connections=connections, seconds=seconds,
                                    server_cpu=server.cpu_seconds)
        return results


def run(repository: Path, model: str = "mnist", before: str = BEFORE, rounds: int = 2, seconds: float = 5.0,
        warmup: float = 2.0, connections: int = 32) -> dict:
    specs: dict = {s.name: s for s in bodies.server_requests(model, "input", "probabilities")}
    specs["model"] = model
    served: dict[str, dict] = {}
    runs: dict[str, dict[str, list[dict]]] = {side: {name: [] for name in REQUESTS} for side in ("before", "after")}
    with tempfile.TemporaryDirectory(prefix="bench-before-after-") as tmp:
        trees = {"before": (ab.extract(before, Path(tmp) / "before"), GUNICORN_PYTHON), "after": (ROOT, SERVE_PYTHON)}
        for _ in range(rounds):
            for side, (tree, python) in trees.items():
                results = measure_tree(tree, python, side, repository.resolve(), specs, connections, seconds, warmup)
                served[side] = results.pop("served")
                for name, result in results.items():
                    runs[side][name].append(result)
    table = []
    for name in REQUESTS:
        sides = {side: ab.summary(runs[side][name]) for side in runs}
        ratio = sides["after"]["cpu_ms_per_request"] / sides["before"]["cpu_ms_per_request"]
        table.append({"request": name, "before": sides["before"], "after": sides["after"], "cpu_ratio": round(ratio, 3),
                      "rps_ratio": round(sides["after"]["rps"] / sides["before"]["rps"], 3),
                      "goal": f"<= {CPU_FRACTION:g}", "met": ratio <= CPU_FRACTION})
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "before": ab.short_hash(before),
            "after": f"working tree on {ab.short_hash('HEAD')}", "workers": WORKERS, "connections": connections,
            "rounds": rounds, "seconds": seconds, "warmup": warmup,
            "pythons": {"before": str(GUNICORN_PYTHON.relative_to(ROOT)), "after": str(SERVE_PYTHON.relative_to(ROOT))},
            "served": served, "table": table}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--before", default=BEFORE, help="git revision whose server/ is the before side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    result = run(args.repository, args.model, args.before, args.rounds, args.seconds, args.warmup, args.connections)
    for row in result["table"]:
        row["before"].pop("runs"), row["after"].pop("runs")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
