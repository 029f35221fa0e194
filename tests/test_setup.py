"""The skeleton: pinned requirements, a serve environment without torch, make serve's clear failure."""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from server import config
from tests.conftest import NO_TORCHVISION, ROOT, SERVE_VENV, run_make

SERVE_PYTHON = SERVE_VENV / "bin" / "python"
FORBIDDEN_TOP_LEVEL = ("torch", "torchvision", "training", "export")
# Flask and what it imports, granian, onnxruntime, numpy, Pillow, prometheus-client, protobuf
# (`google`: Triton's config.pbtxt, server/runtime/model_config.py, and the gRPC messages), the server, and
# the gRPC transport's grpcio (with typing_extensions and its compiled Cython module's runtime
# modules, cython_runtime and _cython_<version>).
ALLOWED_TOP_LEVEL = {
    "flask", "werkzeug", "jinja2", "markupsafe", "itsdangerous", "click", "blinker",
    "granian", "onnxruntime", "numpy", "PIL", "prometheus_client", "google", "server",
    "grpc", "typing_extensions", "cython_runtime", "orjson",
}


def requirement_lines(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


@pytest.mark.parametrize("name", ["requirements-serve.txt", "requirements-train.txt", "requirements-dev.txt",
                                  "requirements-torch.txt", "requirements-torch-cpu.txt"])
def test_requirements_are_pinned(name: str) -> None:
    for line in requirement_lines(name):
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[A-Za-z0-9_,\-]+\])?==[0-9][0-9A-Za-z.+]*", line), line


def test_serve_requirements_name_no_training_framework() -> None:
    names = {line.split("==")[0].lower() for line in requirement_lines("requirements-serve.txt")}
    assert names.isdisjoint({"torch", "torchvision", "onnx", "onnxscript"})


def test_serve_environment_has_no_torch() -> None:
    listed = subprocess.run(
        [str(SERVE_PYTHON), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    installed = {line.split("==")[0] for line in listed.splitlines()}
    assert "flask" in installed and "onnxruntime" in installed
    assert not installed & {"torch", "torchvision", "triton"}, installed


def test_the_server_imports_only_its_own_stack() -> None:
    """Every module of server/, imported and answering a request, loads only the allowed packages."""
    code = (
        "import importlib, json, pkgutil, sys, server\n"
        "for module in pkgutil.walk_packages(server.__path__, 'server.'):\n"
        "    importlib.import_module(module.name)\n"
        "client = server.create_app({'MODEL_REPOSITORY': 'models'}).test_client()\n"
        "assert client.post('/predict', json={'pixels': [[0.5] * 28] * 28}).status_code == 200\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names))))"
    )
    out = subprocess.run([str(SERVE_PYTHON), "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    # __mp_main__: multiprocessing's name for __main__; _distutils_hack: setuptools' .pth hook.
    loaded = set(json.loads(out.stdout)) - {"__main__", "__mp_main__", "_distutils_hack"}
    loaded = {name for name in loaded if not name.startswith("_cython_")}
    assert {"server", "onnxruntime"} <= loaded
    assert loaded <= ALLOWED_TOP_LEVEL, loaded - ALLOWED_TOP_LEVEL
    assert loaded.isdisjoint(FORBIDDEN_TOP_LEVEL)


def test_help_lists_every_setting() -> None:
    out = subprocess.run([str(SERVE_PYTHON), "-m", "server", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for setting in config.SETTINGS:
        assert "--" + setting.name.lower().replace("_", "-") in out.stdout
        assert setting.name in out.stdout


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        ({"PORT": "abc"}, [], "environment variable PORT: received 'abc'; expected an integer from 1 to 65535"),
        ({"LOG_LEVEL": "loud"}, [], "LOG_LEVEL: received 'loud'; expected one of debug"),
        ({"MODEL_POLL_SECONDS": "-1"}, [], "MODEL_POLL_SECONDS: received '-1'"),
        ({}, ["--workers", "0"], "argument --workers: received '0'; expected an integer from 1 to 64"),
        ({}, ["--max-content-length", "1e6"], "received '1e6'; expected an integer from 1 up"),
    ],
)
def test_a_bad_setting_is_one_clear_error(env: dict, flags: list, message: str) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in config.BY_NAME}
    out = subprocess.run([str(SERVE_PYTHON), "-m", "server", "--check", *flags], cwd=ROOT,
                         env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert message in out.stderr.splitlines()[-1], out.stderr


def test_make_serve_without_a_model_says_what_is_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty-repository"
    empty.mkdir()
    out = run_make("serve", f"MODEL_REPOSITORY={empty}", timeout=120)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"no model in {empty}/" in errors[0] and "make train && make export VERSION=1" in errors[0]


def test_the_live_server_serves_health(live_server) -> None:
    assert requests.get(live_server.url + "/v2/health/live", timeout=5).json() == {"live": True}
    ready = requests.get(live_server.url + "/v2/health/ready", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert "Spawning worker-1 with PID" in live_server.log()


def make_dry_run(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The commands `make` would run, printed and not run (-n), as if every target were out of date (-B)."""
    return run_make("-n", "-B", *args, **env)


def planned_install(planned: subprocess.CompletedProcess) -> str:
    """The one `pip install` line of a dry run."""
    install = [line for line in planned.stdout.splitlines() if "pip install" in line]
    assert len(install) == 1, planned.stdout + planned.stderr
    return install[0]


def test_torch_cpu_installs_the_cpu_build_from_the_wheel_folder(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    install = planned_install(make_dry_run(".venv-dev/.stamp-cpu", "TORCH=cpu", f"TORCH_WHEELS={wheels}"))
    assert f"--find-links {wheels}" in install and "-r requirements-torch-cpu.txt" in install
    assert "requirements-torch.txt" not in install and "--quiet" not in install
    assert (ROOT / "requirements-torch-cpu.txt").read_text().count("+cpu") == 1


def test_torch_cuda_is_the_pinned_pypi_build_and_pip_shows_progress() -> None:
    install = planned_install(make_dry_run(".venv-dev/.stamp", "TORCH=cuda"))
    assert "-r requirements-torch.txt" in install
    assert "--quiet" not in install and "--find-links" not in install
    assert "torch==2.14.1" in requirement_lines("requirements-torch.txt")


def test_a_make_run_by_a_test_ignores_the_outer_makes_variables(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """`make test TORCH=cpu` hands TORCH=cpu to its recipes (MAKEFLAGS and the environment): a make
    that a test runs must still see the Makefile's own defaults and the test's arguments."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".stamp").touch()  # a cuda environment, up to date
    monkeypatch.setenv("MAKEFLAGS", " -- TORCH=cpu PYTEST_ARGS=-x")
    monkeypatch.setenv("MAKELEVEL", "1")
    monkeypatch.setenv("TORCH", "cpu")
    planned = run_make("-n", "train", f"DEV_VENV={venv}")
    assert planned.returncode == 0 and "pip install" not in planned.stdout, planned.stdout + planned.stderr
    assert f"{venv}/bin/python -m training.train" in planned.stdout
    assert "-r requirements-torch.txt" in planned_install(make_dry_run(".venv-dev/.stamp"))


def machine_default_torch() -> str:
    """What the README promises for a fresh clone: cuda with an NVIDIA GPU or where PyTorch has no
    CPU build to pin, else cpu."""
    cpu_build = platform.system() == "Linux" and platform.machine() in ("x86_64", "aarch64")
    return "cuda" if shutil.which("nvidia-smi") or not cpu_build else "cpu"


def test_a_fresh_clone_installs_the_torch_this_machine_can_use(tmp_path: Path) -> None:
    venv = tmp_path / "venv"  # no dev environment yet
    planned = run_make("-n", "train", f"DEV_VENV={venv}")
    expected = {"cpu": "-r requirements-torch-cpu.txt", "cuda": "-r requirements-torch.txt"}
    assert expected[machine_default_torch()] in planned_install(planned)
    assert f"{venv}/bin/python -m training.train" in planned.stdout
    # An NVIDIA GPU (nvidia-smi on PATH) means PyPI's CUDA build.
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (tools / "nvidia-smi").chmod(0o755)
    with_gpu = run_make("-n", "train", f"DEV_VENV={venv}", PATH=f"{tools}:{os.environ['PATH']}")
    assert "-r requirements-torch.txt" in planned_install(with_gpu)


@pytest.mark.parametrize(("built", "stamp", "other", "other_requirements"), [
    ("cpu", ".stamp-cpu", "cuda", "requirements-torch.txt"),
    ("cuda", ".stamp", "cpu", "requirements-torch-cpu.txt"),
])
def test_the_torch_a_dev_environment_was_built_with_stays_chosen(tmp_path: Path, built: str, stamp: str,
                                                                 other: str, other_requirements: str) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / stamp).touch()  # newer than every requirements file: up to date
    for target in ("train", "test", "export VERSION=9 CHECKPOINT=runs/x/model.pt"):
        planned = run_make("-n", *target.split(), f"DEV_VENV={venv}")
        assert planned.returncode == 0 and "pip install" not in planned.stdout, planned.stdout
        assert f"rm -rf {venv}" not in planned.stdout
    # Another TORCH, given explicitly (argument or environment), replaces it.
    for planned in (run_make("-n", "train", f"DEV_VENV={venv}", f"TORCH={other}"),
                    run_make("-n", "train", f"DEV_VENV={venv}", TORCH=other)):
        assert f"rm -rf {venv}" in planned.stdout and f"-r {other_requirements}" in planned_install(planned)
        assert f"in place of its TORCH={built} build" in planned.stdout


def test_the_shared_dev_environment_is_reused_as_it_is() -> None:
    """After `make test` (whichever TORCH built it), a plain `make train` plans no reinstall."""
    assert (ROOT / ".venv-dev" / ".stamp").exists() or (ROOT / ".venv-dev" / ".stamp-cpu").exists()
    planned = run_make("-n", "train")
    assert planned.returncode == 0 and "rm -rf" not in planned.stdout and "pip install" not in planned.stdout, planned.stdout


def pytest_without_torchvision(*args: str) -> subprocess.CompletedProcess:
    """pytest ARGS in a child process where torchvision cannot be imported (tests/without_torchvision.py)."""
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.without_torchvision", "-p", "no:cacheprovider",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_without_torchvision_every_test_file_is_collected() -> None:
    """`make test TORCH=cpu`, CI-sized: PyTorch's CPU build has no torchvision, and every test file
    must still be collected (a module-level import of it stopped the whole run)."""
    out = pytest_without_torchvision("--collect-only", "-q", "tests", "bench/tests")
    assert out.returncode == 0 and "error" not in out.stdout.splitlines()[-1], out.stdout[-3000:] + out.stderr[-3000:]
    collected = {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}
    assert collected == {str(path.relative_to(ROOT)) for folder in ("tests", "bench/tests")
                         for path in (ROOT / folder).glob("test_*.py")}


def test_without_torchvision_its_reference_tests_skip_saying_why_and_the_rest_run() -> None:
    out = pytest_without_torchvision("-q", "-rs", "tests/test_presets.py")
    summary = out.stdout.splitlines()[-1]
    assert out.returncode == 0 and "passed" in summary and "skipped" in summary, out.stdout[-3000:]
    assert NO_TORCHVISION in out.stdout


def test_an_unknown_torch_choice_is_one_clear_error() -> None:
    planned = make_dry_run("test", "TORCH=gpu")
    assert planned.returncode != 0 and "TORCH=gpu: expected cuda or cpu" in planned.stderr
