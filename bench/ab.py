"""Before and after one server change: the same request under wrk against two versions of server/.

`before` is a git revision (its server/ is extracted with `git archive` into a temporary folder,
nothing in the checkout changes); `after` is the working tree, or another revision. The two run
alternately, `--rounds` times each, under `make serve`'s settings from .venv-serve. The result
(req/s, latency, CPU ms per request) is added under `--name` to docs/results/benchmarks-ab.json, which
docs/results/benchmarks.md shows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from harness import bodies
from harness.loadgen import run_wrk
from harness.procs import model_server, wait_idle
from server.config import BY_NAME

ROOT = Path(__file__).resolve().parents[1]

REQUESTS = ("predict_png", "predict_pixels", "v2_infer_binary", "v2_infer_json")


def extract(revision: str, into: Path) -> Path:
    """server/ as it is at `revision`, written under `into`; returns `into`."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision, "server"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def short_hash(revision: str) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def measure(tree: Path, label: str, spec: bodies.RequestSpec, args: argparse.Namespace) -> dict:
    own = args.before_setting if label == "before" else args.after_setting
    settings = dict(item.split("=", 1) for item in [*args.setting, *own])
    server = model_server(args.repository.resolve(), name=f"ab-{label}", probe=spec, env=settings, cwd=tree)
    with server:
        server.wait_serving()
        wait_idle(server, int(settings.get("WORKERS", BY_NAME["WORKERS"].default)))
        run_wrk(server.port, spec, connections=args.connections, seconds=args.warmup)
        return run_wrk(server.port, spec, connections=args.connections, seconds=args.seconds,
                       server_cpu=server.cpu_seconds)


def summary(runs: list[dict]) -> dict:
    return {
        "rps": round(statistics.median(r["rps"] for r in runs), 1),
        "p50_ms": round(statistics.median(r["latency_ms"]["p50"] for r in runs), 3),
        "p99_ms": round(statistics.median(r["latency_ms"]["p99"] for r in runs), 3),
        "cpu_ms_per_request": round(statistics.median(r["server_cpu_ms_per_request"] for r in runs), 3),
        "errors": sum(r["errors"] for r in runs),
        "runs": runs,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--name", required=True, help="what the change is, e.g. pixels-fast-path")
    parser.add_argument("--before", required=True, help="git revision without the change")
    parser.add_argument("--after", default="", help="git revision with it; empty = the working tree")
    parser.add_argument("--request", choices=REQUESTS, default="predict_png")
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2, help="before/after alternations")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a server setting for both sides, e.g. WORKERS=2 when the default differs between them")
    parser.add_argument("--before-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the before side only: with --before HEAD and no --after, an A/B of settings")
    parser.add_argument("--after-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the after side only")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "benchmarks-ab.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = {s.name: s for s in bodies.server_requests(args.model, "input", "probabilities")}[args.request]
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        trees = {"before": extract(args.before, Path(tmp) / "before"),
                 "after": extract(args.after, Path(tmp) / "after") if args.after else ROOT}
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for label, tree in trees.items():
                runs[label].append(measure(tree, label, spec, args))
    before, after = summary(runs["before"]), summary(runs["after"])
    result = {
        "name": args.name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "before": short_hash(args.before),
        "after": short_hash(args.after) if args.after else f"working tree on {short_hash('HEAD')}", "request": args.request,
        "connections": args.connections, "seconds": args.seconds, "rounds": args.rounds, "settings": args.setting,
        "before_settings": args.before_setting, "after_settings": args.after_setting,
        "result_before": before, "result_after": after,
        "rps_change": round(after["rps"] / before["rps"] - 1, 4),
        "cpu_change": round(after["cpu_ms_per_request"] / before["cpu_ms_per_request"] - 1, 4),
    }
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing[args.name] = result
    args.out.write_text(json.dumps(existing, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("result_")} | {
        "before_rps": before["rps"], "after_rps": after["rps"],
        "before_cpu_ms": before["cpu_ms_per_request"], "after_cpu_ms": after["cpu_ms_per_request"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
