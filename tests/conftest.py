"""Shared fixtures: model repositories built in tmp_path, the Flask app and client, live gunicorn."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.onnx_factory import write_classifier

ROOT = Path(__file__).resolve().parents[1]
SERVE_VENV = ROOT / ".venv-serve"
COMMITTED_REPOSITORY = ROOT / "models"
COMMITTED_MNIST = COMMITTED_REPOSITORY / "mnist" / "1" / "model.onnx"
# The first 200 official MNIST test images and labels (docs/training.md says how it was written).
MNIST_SAMPLE = ROOT / "tests" / "data" / "mnist_test_sample.npz"
# Server logs stay after a run for CI to show; the folder is gitignored.
LOG_DIR = ROOT / "tests" / "artifacts" / "logs"


@pytest.fixture
def random_repository(tmp_path: Path) -> Path:
    """A repository holding a random-weight `mnist`-shaped classifier as version 1."""
    repo = tmp_path / "models"
    write_classifier(repo / "digits" / "1" / "model.onnx", labels=[str(i) for i in range(10)])
    return repo


@pytest.fixture
def app(random_repository: Path):
    from server import create_app

    return create_app({"TESTING": True, "MODEL_REPOSITORY": str(random_repository)})


@pytest.fixture
def client(app):
    return app.test_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A real gunicorn process on 127.0.0.1, started from the serve environment."""

    def __init__(self, repository: Path, env: dict[str, str] | None = None, python: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "MODEL_REPOSITORY": str(repository),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WORKERS": "1",
            "THREADS": "4",
            "LOG_LEVEL": "info",
            **(env or {}),
        }
        self.python = python or (SERVE_VENV / "bin" / "python" if SERVE_VENV.exists() else Path(sys.executable))
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"gunicorn-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "LiveServer":
        self.log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(self.python), "-m", "server"], cwd=ROOT, env=self.env,
            stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                requests.get(self.url + "/v2/health/live", timeout=1)
                return self
            except (requests.ConnectionError, requests.Timeout):  # bound but still loading
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log_file", None):
            self.log_file.close()


@pytest.fixture
def live_server_factory():
    """Start real gunicorn servers on free ports; every one is stopped at the end of the test."""
    servers: list[LiveServer] = []

    def start(repository: Path, **env: str) -> LiveServer:
        server = LiveServer(repository, {k: str(v) for k, v in env.items()}).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def live_server(live_server_factory, random_repository: Path) -> LiveServer:
    """gunicorn serving the random-weight repository."""
    return live_server_factory(random_repository)
