"""Throughput through a worker's death: 2 workers under load, one killed, the rate before and after.

A test (tests/test_reliability.py) holds what must be true (only the killed worker's requests are
lost, a replacement serves); how fast the throughput comes back is measured here, by `make bench`
or alone: `python -m bench.recovery [--repository models]`. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from harness.loadgen import PredictLoad
from harness.procs import ROOT, ServerTree, children, model_server


def measure(server: ServerTree, clients: int = 8, before_s: float = 3.0, after_s: float = 7.0) -> dict:
    """Kill one of `server`'s workers after `before_s` of load; the rate around it, per second."""
    workers = server.workers()
    with PredictLoad(server.url + "/predict", clients=clients) as load:
        time.sleep(before_s)
        killed_at = time.monotonic()
        os.kill(workers[0], signal.SIGKILL)
        time.sleep(after_s)
    before = load.rate(killed_at - 2, killed_at)
    # One slow second proves nothing on a shared machine: the best whole second 1-5 s after the kill.
    recovered = max(load.rate(killed_at + k, killed_at + k + 1) for k in range(1, 5))
    return {
        "clients": clients, "rate_before_per_s": round(before, 1), "best_second_after_per_s": round(recovered, 1),
        "recovered_fraction": round(recovered / before, 3) if before else None, "goal_fraction": 0.7,
        "per_second_from_3_s_before": [round(load.rate(killed_at + k, killed_at + k + 1)) for k in range(-3, 7)],
        "lost": sum(1 for _, ok in load.results if not ok),
        "replaced": len(set(children(server.process.pid)) - set(workers)) == 1,
    }


def run(repository: Path) -> dict:
    """A 2-worker server on `repository`, its workers up, then measure()."""
    with model_server(repository, name="recovery", env={"WORKERS": "2", "THREADS": "4"}) as server:
        server.wait_serving()
        deadline = time.monotonic() + 60
        while len(server.workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        return measure(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "models", help="model repository to serve")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.repository), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
