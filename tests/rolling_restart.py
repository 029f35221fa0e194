"""A rolling restart rehearsed on one machine: what a Deployment's rolling update does to its pods.

Two `python -m server` instances (127.0.0.1, ports of their own, gRPC ports apart) behind the repo's
nginx site (deploy/nginx/mnist-serve.conf, its upstream of two, TLS on a loopback port), under
steady, bounded load of the four request kinds `make bench` measures. Then: TERM the first (what the
kubelet and `docker stop` send), wait for it to exit, start it again, wait until nginx sends it
requests again; the same for the second. Every answer must be a 200.

    python -m tests.rolling_restart                 # the site as committed (second server a backup)
    python -m tests.rolling_restart --equal         # both servers share the load, as pods do

tests/test_rolling_restart.py runs it; docs/deploy.md quotes a run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import requests

from harness import bodies
from harness.loadgen import ClientThreads
from harness.procs import SERVE_PYTHON, free_port, model_server
from tests.conftest import COMMITTED_REPOSITORY, LOG_DIR, LiveServer, wait_until
from tests.nginx import nginx_config, running_nginx, self_signed_certificate

READY = bodies.RequestSpec("ready", "GET", "/v2/health/ready")
# Under the site's per-client limit (20 requests/s, bursts of 40): the load comes from one address.
CLIENTS, RATE_PER_CLIENT = 4, 3.0
INSTANCE_SETTINGS = {"WORKERS": "1", "THREADS": "4", "LOG_LEVEL": "info"}


class Load(ClientThreads):
    """`clients` threads, each sending the next of `specs` `rate` times a second through `base`, until stopped."""

    join_seconds = 60.0  # a request in flight has 30 s

    def __init__(self, base: str, cert: Path, specs: list[bodies.RequestSpec], clients: int = CLIENTS,
                 rate: float = RATE_PER_CLIENT, limit_s: float = 300.0) -> None:
        self.base, self.cert, self.specs, self.rate, self.limit_s = base, str(cert), specs, rate, limit_s
        self.answers: list[tuple[float, str, int | str]] = []  # (seconds since start, kind, status or error)
        self.offsets = itertools.count()  # each client thread takes the next: its place in the rotation
        super().__init__(clients)

    def client(self) -> None:
        offset = next(self.offsets)
        start = time.monotonic()
        with requests.Session() as session:
            for i in range(offset, 10**9):
                due = start + (i - offset) / self.rate + offset / (self.rate * len(self.threads))
                if self.stop.wait(max(0.0, due - time.monotonic())) or time.monotonic() - start > self.limit_s:
                    return
                spec = self.specs[i % len(self.specs)]
                try:
                    answer = session.request(spec.method, self.base + spec.path, data=spec.body or None,
                                             headers=spec.headers, verify=self.cert, timeout=30)
                    outcome: int | str = answer.status_code
                except requests.RequestException as error:
                    outcome = type(error).__name__
                self.answers.append((time.monotonic() - start, spec.name, outcome))

    def failures(self) -> list[tuple[float, str, int | str]]:
        return [answer for answer in self.answers if answer[2] != 200]


def instance(repository: Path, port: int, grpc_port: int, name: str) -> LiveServer:
    return model_server(repository, name=name, port=port, log_dir=LOG_DIR, probe=READY, python=SERVE_PYTHON,
                        env={**INSTANCE_SETTINGS, "GRPC_PORT": str(grpc_port)})


def requests_served(server: LiveServer) -> int:
    """Requests this run of `server` logged (one line each, with its request id)."""
    return len(re.findall(r"\b(?:GET|POST) /(?:predict|v2/models)\S* \d{3}\b", server.log()))


def restart(server: LiveServer, events: list[dict], clock) -> LiveServer:
    """TERM the master (as the kubelet does to PID 1), wait for its exit, start it again; return the new one."""
    events.append({"at_s": clock(), "event": f"TERM {server.name}"})
    os.kill(server.process.pid, signal.SIGTERM)
    code = server.process.wait(timeout=60)
    events.append({"at_s": clock(), "event": f"{server.name} exited {code}", "served": requests_served(server)})
    server.stop()  # its log is closed; nothing is left of its group
    again = instance(Path(server.env["MODEL_REPOSITORY"]), server.port, int(server.env["GRPC_PORT"]), server.name)
    again.serve(timeout=120)
    events.append({"at_s": clock(), "event": f"{server.name} ready again"})
    return again


def rehearse(folder: Path, repository: Path = COMMITTED_REPOSITORY, equal: bool = False, settle_s: float = 2.0,
             clients: int = CLIENTS, rate: float = RATE_PER_CLIENT, least_requests: int = 100) -> dict:
    """The rehearsal; returns its figures ("failed" must be 0). The load runs `settle_s` after the
    restarts and until `least_requests` have been answered, however quickly the instances restart."""
    specs = bodies.server_requests("mnist", "input", "probabilities")
    cert, key = self_signed_certificate(folder)
    ports = [(free_port(), free_port()) for _ in range(2)]
    https_port = free_port()
    base = f"https://127.0.0.1:{https_port}"
    conf = nginx_config(folder, ports[0][0], free_port(), https_port, cert, key, second_port=ports[1][0], backup=not equal)
    events: list[dict] = []
    with ExitStack() as stack:
        servers = [instance(repository, http, grpc, f"rolling-{'ab'[i]}-{http}") for i, (http, grpc) in enumerate(ports)]
        for server in servers:
            stack.callback(lambda s=server: s.stop())
            server.serve(timeout=120)
        stack.enter_context(running_nginx(conf, folder, base, cert))
        load = stack.enter_context(Load(base, cert, specs, clients, rate))
        began = time.monotonic()
        clock = lambda: round(time.monotonic() - began, 2)  # noqa: E731
        time.sleep(settle_s)
        for i in range(2):
            servers[i] = restart(servers[i], events, clock)
            stack.callback(lambda s=servers[i]: s.stop())
            # Back in nginx's rotation before the next one stops (a backup gets requests only while
            # the first is out, so there the first is awaited).
            back = servers[i] if equal else servers[0]
            if not wait_until(lambda: requests_served(back) > 0, timeout=30):
                raise RuntimeError(f"nginx sent nothing to {back.name} within 30 s of its restart")
            events.append({"at_s": clock(), "event": f"{back.name} answering through nginx"})
        time.sleep(settle_s)
        wait_until(lambda: len(load.answers) >= least_requests, timeout=60)
        load.__exit__(None, None, None)
        served = {server.name: requests_served(server) for server in servers}
    statuses = Counter(str(answer[2]) for answer in load.answers)
    return {
        "mode": "equal" if equal else "backup", "clients": clients, "rate_per_s": clients * rate,
        "seconds": round(load.answers[-1][0], 1) if load.answers else 0, "requests": len(load.answers),
        "failed": len(load.failures()), "statuses": dict(statuses), "failures": load.failures()[:10],
        "kinds": dict(Counter(answer[1] for answer in load.answers)), "events": events,
        "served_after_restart": served,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.rolling_restart", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--equal", action="store_true", help="both upstream servers share the load (no backup)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="client threads")
    parser.add_argument("--rate", type=float, default=RATE_PER_CLIENT,
                        help="requests a second per client (the site lets one address send 20 a second, bursts of 40)")
    parser.add_argument("--repository", type=Path, default=COMMITTED_REPOSITORY, help="the model repository both serve")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        result = rehearse(Path(folder), args.repository, equal=args.equal, clients=args.clients, rate=args.rate)
    print(json.dumps(result, indent=1))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
