"""The 1 GB / 1 CPU promise under a real limit (issue 15): no valid request may take the box down.

`python -m server` from the serve environment with its default settings, as `make serve` runs it,
inside a cgroup of 1 GiB of memory and one CPU, gets for `SECONDS` seconds a stream of normal
requests and, at the same time, the largest request of every kind the limits allow, again and again.
Then: no OOM kill in the cgroup, no worker died, every normal request answered 200, every large one
200 or a JSON 4xx/503 (none dropped or reset), and the server healthy and back near its idle memory.
Each kind of large request is first sent alone and must get what it is built to get (200, or its
413 / 400); under the mix each must get that or a 503 with Retry-After, and a request that can
never be served (the 413 kind) gets 413 every time, never 503. The normal requests' latency under
the mix (p50, p99, slowest; each stream's p50 and p99) is in the summary and printed: reported, not
asserted (the target, p99 <= 1 s, and the figures are in docs/memory.md).

A minute or two long, so not part of `make test`: `make memory-test` runs it (`-m memory_limit`).
Needs root and a writable cgroup v1 `memory` and `cpu` hierarchy, or cgroup v2 with both
controllers; skips saying why elsewhere. Traffic goes to 127.0.0.1 only, bounded in count and time.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.bodies import RequestSpec
from harness.memory import largest_requests, normal_requests, repository_without_row_limit
from harness.procs import children
from server.limits.box import cgroup_paths
from server.lifecycle import IDLE_THREAD_SECONDS
from tests.conftest import LOG_DIR, ROOT, SERVE_VENV, free_port

pytestmark = pytest.mark.memory_limit

# MEMORY_TEST_MIB tries another box, e.g. 700 for the systemd unit's MemoryMax=700M.
MEMORY_LIMIT = int(os.environ.get("MEMORY_TEST_MIB", "1024")) * 2**20
SECONDS = 40.0
CGROUP = Path("/sys/fs/cgroup")
# Settings left at their defaults, as `make serve` does, whatever the caller's shell says.
SERVER_SETTINGS = ("WORKERS", "THREADS", "ORT_THREADS", "API_TOKEN", "LOG_LEVEL", "MAX_CONTENT_LENGTH",
                   "MAX_IMAGE_PIXELS", "MAX_IMAGES_PER_REQUEST", "MAX_REQUEST_PIXELS", "MEMORY_BUDGET",
                   "MEMORY_WAIT_SECONDS", "LARGE_REQUESTS", "INFER_CHUNK_ROWS", "MAX_BATCH_SIZE", "REQUEST_CPU_SECONDS")
# After the load each worker's anonymous memory must be back within this of its idle figure: what
# stays is onnxruntime's arena at the size of one INFER_CHUNK_ROWS run (~10 MiB; 64-row runs left
# ~30 MiB and failed here) and the allocators' slack.
IDLE_SLACK_PER_WORKER_MIB = 16


@pytest.fixture(autouse=True)
def only_when_asked(request):
    if "memory_limit" not in (request.config.option.markexpr or ""):
        pytest.skip("a minute or two under a cgroup: run by `make memory-test` (pytest -m memory_limit)")


# --------------------------------------------------------------------------- the cgroup


class Cgroup:
    """A cgroup of MEMORY_LIMIT bytes and one CPU, made under this process's own cgroup (v1 or v2)."""

    def __init__(self) -> None:
        self.name = f"mnist-memory-test-{uuid.uuid4().hex[:8]}"
        self.folders: list[Path] = []
        self.version = 0

    def create(self) -> "Cgroup":
        own = cgroup_paths()
        v1_memory, v1_cpu = CGROUP / "memory", CGROUP / "cpu"
        if (v1_memory / "memory.limit_in_bytes").exists() and (v1_cpu / "cpu.cfs_quota_us").exists():
            self.version = 1
            memory = self._mkdir(v1_memory / own.get("memory", "/").strip("/") / self.name)
            cpu = self._mkdir(v1_cpu / own.get("cpu", "/").strip("/") / self.name)
            _write(memory / "memory.limit_in_bytes", MEMORY_LIMIT)
            if (memory / "memory.memsw.limit_in_bytes").exists():  # no swap to hide in
                _write(memory / "memory.memsw.limit_in_bytes", MEMORY_LIMIT)
            _write(cpu / "cpu.cfs_period_us", 100_000)
            _write(cpu / "cpu.cfs_quota_us", 100_000)
        elif (CGROUP / "cgroup.controllers").exists():
            self.version = 2
            parent = CGROUP / own.get("", "/").strip("/")
            if not {"memory", "cpu"} <= set((parent / "cgroup.controllers").read_text().split()):
                pytest.skip(f"cgroup v2 at {parent} lacks the memory and cpu controllers")
            try:
                _write(parent / "cgroup.subtree_control", "+memory +cpu")
            except OSError as err:
                pytest.skip(f"cannot enable memory and cpu for child cgroups of {parent}: {err}")
            group = self._mkdir(parent / self.name)
            _write(group / "memory.max", MEMORY_LIMIT)
            if (group / "memory.swap.max").exists():
                _write(group / "memory.swap.max", 0)
            _write(group / "cpu.max", "100000 100000")
        else:
            pytest.skip("no cgroup v1 memory+cpu hierarchy and no cgroup v2 under /sys/fs/cgroup")
        return self

    def _mkdir(self, folder: Path) -> Path:
        try:
            folder.mkdir()
        except OSError as err:
            self.remove()
            pytest.skip(f"cannot create a cgroup at {folder} ({err.strerror}): needs root and a writable cgroup")
        self.folders.append(folder)
        return folder

    def enter_command(self) -> str:
        """Shell words that move the shell itself into the cgroup (then it execs the server)."""
        return " && ".join(f"echo $$ > {folder / 'cgroup.procs'}" for folder in self.folders)

    @property
    def memory_folder(self) -> Path:
        return self.folders[0]

    def oom_kills(self) -> dict[str, int]:
        """The OOM counters: v1 memory.oom_control's oom_kill and under_oom, and failcnt; v2 memory.events."""
        folder = self.memory_folder
        if self.version == 1:
            counters = _pairs((folder / "memory.oom_control").read_text())
            counters["failcnt"] = int((folder / "memory.failcnt").read_text())
            counters["max_usage_mib"] = int((folder / "memory.max_usage_in_bytes").read_text()) >> 20
            return counters
        return _pairs((folder / "memory.events").read_text())

    def anon_mib(self) -> float:
        """The cgroup's anonymous memory (the processes' own, not the page cache), in MiB."""
        stat = _pairs((self.memory_folder / "memory.stat").read_text())
        return (stat.get("total_rss", stat.get("rss", 0)) if self.version == 1 else stat.get("anon", 0)) / 2**20

    def pids(self) -> list[int]:
        pids: set[int] = set()
        for folder in self.folders:
            try:
                pids |= {int(line) for line in (folder / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return sorted(pids)

    def remove(self) -> None:
        """Kill anything left inside (by pid), then remove the cgroup's folders."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for folder in reversed(self.folders):
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        self.folders = []


def _write(path: Path, value: object) -> None:
    path.write_text(f"{value}\n")


def _pairs(text: str) -> dict[str, int]:
    return {key: int(value) for key, value in (line.split() for line in text.splitlines() if line.strip())}


# --------------------------------------------------------------------------- traffic


@dataclass
class Tally:
    """What a stream of requests got back: statuses, and failures (no answer, or a non-JSON error)."""

    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    by_name: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int | None, note: str, seconds: float, name: str = "") -> None:
        with self.lock:
            self.statuses[status] += 1
            self.seconds.append(seconds)
            self.by_name.setdefault(name, []).append(seconds)
            if note:
                self.failures.append(note)


def send(port: int, spec: RequestSpec, timeout: float) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(spec.method, spec.path, body=spec.body or None, headers=spec.headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def stream(port: int, specs: list[RequestSpec], allowed: set[int], tally: Tally, deadline: float,
           timeout: float, pause: float = 0.0) -> None:
    """Send `specs` in turn until `deadline`; each answer must be one of `allowed`, errors in JSON."""
    turn = 0
    while time.monotonic() < deadline:
        spec = specs[turn % len(specs)]
        turn += 1
        started = time.monotonic()
        try:
            status, headers, body = send(port, spec, timeout)
        except (OSError, http.client.HTTPException) as err:
            tally.record(None, f"{spec.name}: no answer ({type(err).__name__}: {err})", time.monotonic() - started, spec.name)
            continue
        note = ""
        if status not in allowed:
            note = f"{spec.name}: {status} {body[:200]!r}"
        elif status != 200:
            try:
                json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                note = f"{spec.name}: {status} without a JSON error: {body[:200]!r}"
            if status == 503 and "retry-after" not in {name.lower() for name in headers}:  # names are case-blind
                note = f"{spec.name}: 503 without Retry-After"
        tally.record(status, note, time.monotonic() - started, spec.name)
        if pause:
            time.sleep(pause)


# --------------------------------------------------------------------------- the test


def test_largest_requests_under_1_gib_and_one_cpu(tmp_path: Path) -> None:
    largest = largest_requests()  # built before the clock starts: a few seconds of Pillow work
    normal = list(normal_requests())
    cgroup = Cgroup().create()
    port = free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"memory-limit-{port}.log"
    env = {k: v for k, v in os.environ.items() if k not in SERVER_SETTINGS}
    # The committed models, mnist taking as many rows as the body limit holds (its config.pbtxt's 64
    # would refuse the largest v2 bodies with a cheap 400 before they cost anything).
    repository = repository_without_row_limit(tmp_path)
    # A gRPC port of its own: the default 8001 may be another server's, and a taken port stops the start.
    env.update({"HOST": "127.0.0.1", "PORT": str(port), "GRPC_PORT": str(free_port()), "MODEL_REPOSITORY": str(repository)})
    python = SERVE_VENV / "bin" / "python"
    server = None
    try:
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                ["sh", "-c", f"{cgroup.enter_command()} && exec {python} -m server"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        ready = _wait_ready(port, server, log_path)
        workers_before = children(server.pid)
        # Idle means serving normal traffic with nothing large in flight: the first requests of a
        # worker allocate what every later one reuses (Flask's and the JSON and metrics machinery).
        for _ in range(20):
            for spec in normal:
                assert send(port, spec, 30)[0] == 200
        time.sleep(2)
        idle = cgroup.anon_mib()

        alone = {}  # each kind with the server to itself: what it is built to get
        for item in largest:
            started = time.monotonic()
            alone[item.kind] = (send(port, item.spec, 300)[0], round(time.monotonic() - started, 1))

        normal_tally, large_tally = Tally(), Tally()
        by_kind = {item.kind: Tally() for item in largest}
        deadline = time.monotonic() + SECONDS
        threads = [threading.Thread(target=stream, args=(port, normal, {200}, normal_tally, deadline, 60.0, 0.05))
                   for _ in range(2)]
        for item in largest:
            threads.append(threading.Thread(target=stream, args=(
                port, [item.spec], _under_the_mix(item), by_kind[item.kind], deadline, 120.0)))
        page = next(item for item in largest if item.spec.name.startswith("page"))
        threads += [threading.Thread(target=stream, args=(port, [page.spec], _under_the_mix(page), by_kind[page.kind], deadline, 120.0))
                    for _ in range(2)]
        peak_anon = [idle]
        sampler = threading.Thread(target=_sample_anon, args=(cgroup, peak_anon, deadline + 150, threads))
        for thread in threads:
            thread.start()
        sampler.start()
        for thread in threads:
            thread.join(timeout=max(1.0, deadline + 150 - time.monotonic()))
        stuck = sum(thread.is_alive() for thread in threads)
        sampler.join(timeout=5)

        for tally in by_kind.values():
            large_tally.statuses.update(tally.statuses)
            large_tally.failures += tally.failures
            large_tally.seconds += tally.seconds
        # The last answers' memory is freed and the workers settle: the Python threads Granian started
        # for the requests end after IDLE_THREAD_SECONDS idle, taking their stacks and allocator caches
        # (one run measured 147 MiB 3 s after the load, the next 125: threads still alive). Memory that
        # is not given back by then (a leak) still fails the bound below.
        allowed = idle + IDLE_SLACK_PER_WORKER_MIB * len(workers_before)
        settled_by = time.monotonic() + IDLE_THREAD_SECONDS + 5
        while (after := cgroup.anon_mib()) > allowed and time.monotonic() < settled_by:
            time.sleep(0.5)
        health = send(port, RequestSpec("ready", "GET", "/v2/health/ready"), 10)[0]
        counters = cgroup.oom_kills()
        workers_after = children(server.pid)
        log_text = log_path.read_text(errors="replace")
        summary = {
            "memory_limit_mib": MEMORY_LIMIT >> 20, "ready_s": round(ready, 1), "idle_anon_mib": round(idle), "peak_anon_mib": round(max(peak_anon)),
            "after_anon_mib": round(after), "seconds": SECONDS,
            "cgroup": counters, "cgroup_version": cgroup.version,
            "normal": dict(normal_tally.statuses), "normal_max_s": round(max(normal_tally.seconds, default=0), 1),
            "normal_p50_s": _percentile(normal_tally.seconds, 0.5), "normal_p99_s": _percentile(normal_tally.seconds, 0.99),
            "normal_by_request": {name: {"count": len(seconds), "p50_s": _percentile(seconds, 0.5),
                                         "p99_s": _percentile(seconds, 0.99)} for name, seconds in normal_tally.by_name.items()},
            "large": dict(large_tally.statuses), "large_max_s": round(max(large_tally.seconds, default=0), 1),
            "alone": {kind: {"status": status, "seconds": seconds} for kind, (status, seconds) in alone.items()},
            "by_kind": {kind: dict(tally.statuses) for kind, tally in by_kind.items()},
            "box": next((line.split("INFO", 1)[-1].strip() for line in log_text.splitlines() if "box:" in line), "?"),
        }
        print("memory-limit summary:", json.dumps(summary))
        # Reported, not asserted (speed goals are measured, never timed assertions): the target is
        # p99 <= 1 s for each normal stream while the largest requests flow (docs/memory.md).
        for name, figures in summary["normal_by_request"].items():
            print(f"normal {name} under the mix: {figures['count']} answered, p50 {figures['p50_s']} s, p99 {figures['p99_s']} s")
        (LOG_DIR / "memory-limit-summary.json").write_text(json.dumps(summary, indent=1) + "\n")

        assert stuck == 0, f"{stuck} client threads still waiting for answers"
        assert counters.get("oom_kill", 0) == 0 and counters.get("oom", 0) == 0, f"OOM in the cgroup: {summary}"
        assert counters.get("under_oom", 0) == 0, summary
        assert workers_after == workers_before, f"workers changed {workers_before} -> {workers_after}:\n{log_text[-3000:]}"
        # Granian's words for a worker that died (an OOM kill among them) or had to be killed.
        for sign in ("Unexpected exit from worker", "refused to gracefully stop", "Traceback"):
            assert sign not in log_text, f"{sign!r} in the server log:\n{log_text[-3000:]}"
        assert normal_tally.failures == [] and set(normal_tally.statuses) == {200}, (summary, normal_tally.failures[:10])
        assert large_tally.failures == [], (summary, large_tally.failures[:10])
        for item in largest:  # alone, each kind gets what it is built to get: a 200, or its refusal
            assert alone[item.kind][0] in item.expected, (item.kind, alone[item.kind], summary)
        assert large_tally.statuses[200] > 0, summary
        assert health == 200, summary
        assert after <= allowed, f"anonymous memory {after:.0f} MiB after, {idle:.0f} MiB idle: {summary}"
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        cgroup.remove()


def _under_the_mix(item) -> set[int]:
    """What a kind may get while the others flow: its own answer, or a 503 (with Retry-After) when it
    could fit but the worker is busy; a request that can never fit (413) gets 413, never a 503."""
    return set(item.expected) if item.expected == (413,) else {*item.expected, 503}


def _percentile(seconds: list[float], q: float) -> float | None:
    ordered = sorted(seconds)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else None


def _sample_anon(cgroup: Cgroup, peak: list[float], until: float, threads: list[threading.Thread]) -> None:
    """Keep the highest anonymous memory of the cgroup seen every 0.1 s while the clients run."""
    while time.monotonic() < until and any(thread.is_alive() for thread in threads):
        peak.append(max(peak.pop(), cgroup.anon_mib()))
        time.sleep(0.1)


def _wait_ready(port: int, server: subprocess.Popen, log_path: Path, timeout: float = 90.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.poll() is not None:
            pytest.fail(f"server exited with {server.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if send(port, RequestSpec("ready", "GET", "/v2/health/ready"), 2)[0] == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready within {timeout} s:\n{log_path.read_text(errors='replace')[-3000:]}")
