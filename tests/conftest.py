"""Shared fixtures: model repositories built in tmp_path, the Flask app and client, live server."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from harness.procs import SERVE_PYTHON, free_port, model_server
from harness.procs import ServerTree as LiveServer  # noqa: F401  (the type of a running test server)
from server.runtime.layout import latest_model_file, model_path
from tests.onnx_factory import write_classifier

ROOT = Path(__file__).resolve().parents[1]
SERVE_VENV = ROOT / ".venv-serve"
COMMITTED_REPOSITORY = ROOT / "models"
# The committed default digit model: mnist's highest version (older ones stay on disk, unserved).
COMMITTED_MNIST = latest_model_file(COMMITTED_REPOSITORY, "mnist") or model_path(COMMITTED_REPOSITORY, "mnist", 1)
# The first 200 official MNIST test images and labels (docs/training.md says how it was written).
MNIST_SAMPLE = ROOT / "tests" / "data" / "mnist_test_sample.npz"
# Server logs stay after a run for CI to show; the folder is gitignored.
LOG_DIR = ROOT / "tests" / "artifacts" / "logs"


# The CPU build of PyTorch (make TORCH=cpu) comes without torchvision: tests comparing against it skip.
NO_TORCHVISION = "no torchvision (the TORCH=cpu environment has none: requirements-torch-cpu.txt)"


def torchvision_transforms():
    """torchvision.transforms, a reference some tests compare against; the test skips without it."""
    return pytest.importorskip("torchvision.transforms", reason=NO_TORCHVISION)


# What an outer make passes to a make run inside a test: its flags and command-line variables
# (`make test TORCH=cpu` puts TORCH=cpu in MAKEFLAGS and in the environment).
MAKE_CONTROL = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS", "MAKEFILES")


def make_environment() -> dict[str, str]:
    """os.environ without what an outer make put there: its control variables and every variable the
    Makefile sets, so a make a test runs sees the Makefile's own defaults, as on a fresh shell."""
    assigned = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*[:?+]?=", (ROOT / "Makefile").read_text(), re.M))
    return {key: value for key, value in os.environ.items() if key not in {*MAKE_CONTROL, *assigned}}


def run_make(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """`make --no-print-directory ARGS` in the checkout, in make_environment() plus `env`; output captured."""
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env={**make_environment(), **env},
                          capture_output=True, text=True, timeout=timeout)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-docs", action="store_true",
                     help="write the answers the documents' examples gave into README.md and docs/ (tests/doc_examples.py)")


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


# One launcher for benchmarks and tests (harness/procs.py); tests use it with these settings unless told.
TEST_SETTINGS = {"WORKERS": "1", "THREADS": "4", "LOG_LEVEL": "info"}
START_TIMEOUT_S = 60.0


def start_server(repository: Path, env: dict[str, str] | None = None, python: Path | None = None) -> LiveServer:
    """A real server (`python -m server` from the serve environment) on 127.0.0.1, once it answers.

    Its log goes to tests/artifacts/logs/server-<port>.log, kept for CI to show.
    """
    port = free_port()
    server = model_server(
        repository, name=f"server-{port}", port=port, log_dir=LOG_DIR,
        # A gRPC port of its own (server.env["GRPC_PORT"]): the default 8001 would be shared (SO_REUSEPORT)
        # by every test server on the machine.
        env={**TEST_SETTINGS, "GRPC_PORT": str(free_port()), **{key: str(value) for key, value in (env or {}).items()}},
        python=python or (SERVE_PYTHON if SERVE_PYTHON.exists() else Path(sys.executable)),
    )
    return server.serve(timeout=START_TIMEOUT_S)


class Servers:
    """Start real servers; close() stops every one, whatever happened in between."""

    def __init__(self) -> None:
        self.started: list[LiveServer] = []

    def __call__(self, repository: Path, **env: str) -> LiveServer:
        server = start_server(repository, env)
        self.started.append(server)
        return server

    def close(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def live_server_factory():
    """Start real servers on free ports; every one is stopped at the end of the test."""
    servers = Servers()
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def module_servers():
    """The same for a whole test module: servers started once, stopped at the module's end."""
    servers = Servers()
    yield servers
    servers.close()


@pytest.fixture
def live_server(live_server_factory, random_repository: Path) -> LiveServer:
    """The live server serving the random-weight repository."""
    return live_server_factory(random_repository)


def wait_until(condition: Callable[[], object], timeout: float = 60.0) -> bool:
    """Poll `condition` every 0.05 s until it holds or `timeout` passes; return whether it held.

    Tests wait for events (a log line, a worker, an answer) this way; `timeout` only bounds a hang.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
