"""Load loops: wrk with one fixed request (its summary, with the CPU time wrk itself used), client threads, a count of requests."""
from __future__ import annotations

import http.client
import itertools
import json
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import requests

from harness.bodies import RequestSpec

LUA_SCRIPT = Path(__file__).with_name("wrk_request.lua")


class ClientThreads:
    """`clients` threads each running `client()` until `stop` is set; a context manager starts and ends them."""

    join_seconds = 15.0  # how long leaving waits for each thread (a request in flight ends first)

    def __init__(self, clients: int) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]

    def client(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=self.join_seconds)


# A digit-like block of ink: /predict's JSON pixels.
DIGIT_PIXELS = [[1.0 if 9 <= col <= 18 and 5 <= row <= 22 else 0.0 for col in range(28)] for row in range(28)]


class PredictLoad(ClientThreads):
    """Client threads, each posting a digit's pixels to `url` over a fresh connection per request, recording when each ended."""

    def __init__(self, url: str, clients: int) -> None:
        super().__init__(clients)
        self.url = url
        self.results: list[tuple[float, bool]] = []

    def client(self) -> None:
        while not self.stop.is_set():
            try:
                ok = requests.post(self.url, json={"pixels": DIGIT_PIXELS}, timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            self.results.append((time.monotonic(), ok))

    def answered(self, since: float = 0.0) -> int:
        """Successful answers that ended at or after `since` (monotonic time)."""
        return sum(1 for t, ok in list(self.results) if ok and t >= since)

    def rate(self, start: float, end: float) -> float:
        return sum(1 for t, ok in list(self.results) if start <= t < end and ok) / (end - start)


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (done.stdout + done.stderr).splitlines()[0].strip()


def machine_busy_seconds() -> float:
    """CPU time all cores of the machine have spent busy since boot (from /proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of every child process this process has waited for, so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    port: int,
    spec: RequestSpec,
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    timeout_s: float = 10.0,
    server_cpu: Callable[[], float] | None = None,
) -> dict:
    """Send `spec` from `connections` keep-alive connections for `seconds` (whole, at least 1).

    The result holds requests/s, latency percentiles in milliseconds, errors (socket errors plus
    4xx/5xx answers, which wrk counts as status errors) and the CPU seconds used by wrk and, when
    `server_cpu` is given, by the server, to show which of the two was the bottleneck.
    """
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk (make bench does it as root)")
    with tempfile.NamedTemporaryFile(prefix="wrk-body-", delete=False) as body_file:
        body_file.write(spec.body)
    env = {
        **os.environ,
        "WRK_METHOD": spec.method,
        "WRK_BODY_FILE": body_file.name if spec.body else "",
        "WRK_HEADERS": "\n".join(f"{k}: {v}" for k, v in spec.headers.items()),
    }
    argv = [
        "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s:g}s", "-s", str(LUA_SCRIPT), f"http://127.0.0.1:{port}{spec.path}",
    ]
    server_before = server_cpu() if server_cpu else 0.0
    wrk_before = children_cpu_seconds()
    busy_before = machine_busy_seconds()
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(body_file.name)
    wall = time.perf_counter() - started
    wrk_cpu = children_cpu_seconds() - wrk_before
    busy = machine_busy_seconds() - busy_before
    server_used = server_cpu() - server_before if server_cpu else None
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    result = summarize(parse_wrk(done.stdout), connections, wall, wrk_cpu, server_used)
    if server_used is not None:
        # What else ran on the machine meanwhile (other processes, the kernel): it competed for the cores.
        result["other_cpu_share"] = round(max(0.0, busy - wrk_cpu - server_used) / wall, 3)
    return result


def parse_wrk(stdout: str) -> dict:
    """The JSON line printed by wrk_request.lua's done()."""
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
    raise RuntimeError(f"no WRK_JSON line in wrk's output:\n{stdout}")


def summarize(raw: dict, connections: int, wall: float, wrk_cpu: float, server_cpu: float | None) -> dict:
    seconds = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    result = {
        "connections": connections,
        "seconds": round(seconds, 3),
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds, 1),
        "latency_ms": {k: round(latency[k] / 1000, 3) for k in ("p50", "p90", "p99", "p99_9", "mean", "max")},
        "errors": sum(raw["errors"].values()),
        "error_kinds": raw["errors"],
        "wrk_cpu_s": round(wrk_cpu, 3),
        "wrk_cpu_share": round(wrk_cpu / wall, 3),
    }
    if server_cpu is not None:
        result["server_cpu_s"] = round(server_cpu, 3)
        result["server_cpu_share"] = round(server_cpu / wall, 3)
        result["server_cpu_ms_per_request"] = round(1000 * server_cpu / max(raw["requests"], 1), 3)
    return result


def send_many(port: int, spec: RequestSpec, total: int, concurrency: int = 8) -> dict:
    """Send `spec` exactly `total` times over `concurrency` keep-alive connections; count failures."""
    counter = itertools.count()
    failures: list[str] = []

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while next(counter) < total:
                try:
                    conn.request(spec.method, spec.path, body=spec.body or None, headers=spec.headers)
                    response = conn.getresponse()
                    response.read()
                    if not 200 <= response.status < 300:
                        failures.append(f"HTTP {response.status}")
                except (OSError, http.client.HTTPException) as err:
                    failures.append(type(err).__name__)
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        finally:
            conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"requests": total, "concurrency": concurrency, "failures": len(failures),
            "failure_kinds": sorted(set(failures)), "seconds": round(time.perf_counter() - started, 2)}
