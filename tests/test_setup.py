"""The skeleton: pinned requirements, a serve environment without torch, make serve's clear failure."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import requests

from server import config
from tests.conftest import ROOT, SERVE_VENV

SERVE_PYTHON = SERVE_VENV / "bin" / "python"
FORBIDDEN_TOP_LEVEL = ("torch", "torchvision", "training", "export")


def requirement_lines(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


@pytest.mark.parametrize("name", ["requirements-serve.txt", "requirements-train.txt", "requirements-dev.txt"])
def test_requirements_are_pinned(name: str) -> None:
    for line in requirement_lines(name):
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.+]*", line), line


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


def test_importing_server_imports_no_training_code() -> None:
    code = (
        "import json, sys, server, server.api, server.app; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([str(SERVE_PYTHON), "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "onnxruntime" in loaded
    assert loaded.isdisjoint(FORBIDDEN_TOP_LEVEL), loaded & set(FORBIDDEN_TOP_LEVEL)


def test_help_lists_every_setting() -> None:
    out = subprocess.run([str(SERVE_PYTHON), "-m", "server", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for setting in config.SETTINGS:
        assert "--" + setting.name.lower().replace("_", "-") in out.stdout
        assert setting.name in out.stdout


def test_make_serve_without_a_model_says_what_is_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty-repository"
    empty.mkdir()
    out = subprocess.run(
        ["make", "--no-print-directory", "serve", f"MODEL_REPOSITORY={empty}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"no model in {empty}/" in errors[0] and "make train export" in errors[0]


def test_gunicorn_serves_health(live_server) -> None:
    assert requests.get(live_server.url + "/v2/health/live", timeout=5).json() == {"live": True}
    ready = requests.get(live_server.url + "/v2/health/ready", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert "[INFO] Booting worker" in live_server.log() or "Booting worker" in live_server.log()
