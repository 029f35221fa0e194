"""Start, probe, measure and stop a server's process tree (a main process and its workers): cold start, RSS per worker, CPU time.

The one launcher of real servers: the benchmarks use it, and so do the tests (tests/conftest.py).
"""
from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.bodies import RequestSpec

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Settings the benchmarks leave at their defaults, as `make serve` does, whatever the caller's shell says.
SERVER_SETTINGS = ("WORKERS", "THREADS", "ORT_THREADS", "API_TOKEN", "LOG_LEVEL", "MAX_CONTENT_LENGTH")
LIVE = RequestSpec("live", "GET", "/v2/health/live")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def send(port: int, spec: RequestSpec, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send `spec` once to 127.0.0.1:`port`; return (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(spec.method, spec.path, body=spec.body or None, headers=spec.headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (the workers, for a server's main process)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces or parentheses: fields start after the last ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return sorted(kids)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by `pid` itself."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """Rss and Pss (proportional: shared pages split between sharers) of `pid`, in KiB."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key.lower()] = int(rest.split()[0])
    except OSError:
        pass
    return values


@dataclass
class ServerTree:
    """A server's process tree (main process and workers) on 127.0.0.1, with a probe that says when it serves."""

    name: str
    argv: list[str]
    probe: RequestSpec
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path = ROOT / "bench" / "out"
    cwd: Path = ROOT
    port: int = field(default_factory=free_port)
    stop_timeout: float = 30.0  # longer than a worker's graceful stop (server/lifecycle.py): past it the group is killed
    process: subprocess.Popen | None = None
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerTree":
        environ = {k: v for k, v in os.environ.items() if k not in SERVER_SETTINGS}
        environ.update({"HOST": "127.0.0.1", "PORT": str(self.port), **self.env})
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}.log"
        self._log = open(self.log_path, "ab")
        self._log_offset = self._log.tell()  # log() shows this run's lines only
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            self.argv, cwd=self.cwd, env=environ, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_serving(self, timeout: float = 120.0, patient: bool = False) -> float:
        """Poll with the probe request until it gets a 200; return seconds since start().

        Another answer is an error, unless `patient`: then it only means "not yet" (MLServer answers
        400 while its model loads)."""
        deadline = self.started_at + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            try:
                status, body = send(self.port, self.probe, timeout=5)
            except OSError:
                status, body = 0, b""
            if status == 200:
                return time.perf_counter() - self.started_at
            if status and not patient:
                raise RuntimeError(f"{self.name}: probe {self.probe.path} answered {status}: {body[:300]!r}")
            time.sleep(0.2 if patient else 0.01)
        raise RuntimeError(f"{self.name} did not serve within {timeout}s:\n{self.log()[-5000:]}")

    def serve(self, timeout: float = 120.0) -> "ServerTree":
        """start() and wait_serving(); the process is stopped when it does not come up."""
        self.start()
        try:
            self.wait_serving(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def log(self) -> str:
        """What this run wrote to its log so far (stdout and stderr of every process)."""
        with open(self.log_path, "rb") as log_file:
            log_file.seek(self._log_offset)
            return log_file.read().decode(errors="replace")

    def workers(self) -> list[int]:
        return children(self.process.pid)

    def cpu_seconds(self) -> float:
        """CPU time of the master and every current worker."""
        return sum(cpu_seconds(pid) for pid in [self.process.pid, *self.workers()])

    def worker_memory(self) -> list[dict[str, int]]:
        return [memory_kib(pid) for pid in self.workers()]

    def stop(self) -> None:
        """SIGTERM to the whole process group (master and workers), SIGKILL to it when that hangs.

        A group outlives its leader: workers orphaned by a dead master are killed too.
        """
        if self.process:
            if self.process.poll() is None:
                signal_group(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %.0f s of SIGTERM: killing its process group", self.name,
                                self.stop_timeout)
            signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "ServerTree":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def signal_group(pgid: int, signum: int) -> None:
    """Send `signum` to every process of group `pgid`; a group already gone is no error."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


GUNICORN_PYTHON = ROOT / ".venv-bench-gunicorn" / "bin" / "python"


def wsgi_app(name: str, target: str, probe: RequestSpec, env: dict[str, str] | None = None,
             python: Path = SERVE_PYTHON) -> ServerTree:
    """A WSGI app (`module:name`) under the server's own launcher (`python -m server.lifecycle`,
    Granian with server/lifecycle.py), not yet started: how the benchmarks run other apps beside the server.
    No gRPC (GRPC_PORT=0): the launcher would claim its port for an app that serves none."""
    return ServerTree(name, [str(python), "-m", "server.lifecycle", target], probe, env={"GRPC_PORT": "0", **(env or {})})


def gunicorn_app(name: str, target: str, probe: RequestSpec, env: dict[str, str] | None = None,
                 python: Path = GUNICORN_PYTHON) -> ServerTree:
    """A WSGI app (`module:app`, or `module:factory()`) under gunicorn with bench/gunicorn_conf.py
    (the HTTP layer before Granian, gRPC off), not yet started: the benchmarks' A/B of the layer."""
    return ServerTree(name, [str(python), "-m", "gunicorn", "--config", "bench/gunicorn_conf.py", target], probe,
                      env={**(env or {}), "GRPC_PORT": "0"})


def model_server(repository: Path, *, name: str = "server", probe: RequestSpec = LIVE, env: dict[str, str] | None = None,
                 python: Path = SERVE_PYTHON, **options) -> ServerTree:
    """This project's server (`python -m server`, as `make serve` runs it: Granian) on `repository`, not yet started.

    gRPC on a free port unless `env` names one: a server refuses to start on a taken GRPC_PORT, and
    the default 8001 may be another server's."""
    return ServerTree(name, [str(python), "-m", "server"], probe,
                      env={"MODEL_REPOSITORY": str(repository), "GRPC_PORT": str(free_port()), **(env or {})}, **options)


def wait_idle(server: ServerTree, workers: int, settle: float = 1.0, timeout: float = 60.0) -> list[dict[str, int]]:
    """Wait until `workers` workers run and their memory stops changing; return it per worker."""
    deadline = time.perf_counter() + timeout
    previous: list[dict[str, int]] = []
    while time.perf_counter() < deadline:
        current = server.worker_memory()
        steady = len(current) == workers and len(previous) == workers and all(
            abs(a.get("rss", 0) - b.get("rss", 0)) <= 0.01 * b.get("rss", 1) for a, b in zip(current, previous)
        )
        if steady:
            return current
        previous = current
        time.sleep(settle)
    raise RuntimeError(f"{server.name}: {workers} workers did not settle within {timeout}s")
