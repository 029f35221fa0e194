"""Laying out and starting the real `tritonserver` from `.venv-triton` (nvidia-pytriton's wheel).

Standard library only, so both `make triton-test` (tests/triton/compare.py, in `.venv-triton`) and
the benchmark peer (bench/triton_peer.py, in `.venv-dev`) start Triton the same way. Found when it
was first tried: the backend files must be copied (Triton refuses a symbolic link that leaves the
backend folder), and the Python backend's stub finds its interpreter, hence onnxruntime, through
PATH (it ignores PYTHONPATH).

The wheel has no onnxruntime backend: `onnxruntime/model.py` in the laid-out folder is the
STAND-IN tests/triton/standin_onnxruntime/model.py, a Python-based backend, not NVIDIA's C++ one.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRITON_VENV = ROOT / ".venv-triton"
STANDIN_BACKEND = ROOT / "tests" / "triton" / "standin_onnxruntime" / "model.py"


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel put the server, its libraries, the Python backend and the venv's interpreter."""

    venv: Path
    server_dir: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs
    python_version: str  # "3.11": picks the matching backend stub

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"


def find_install(venv: Path = TRITON_VENV) -> TritonInstall:
    """The tritonserver inside `venv`; a clear error when `make triton-test` has not built it."""
    found = sorted(venv.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        raise FileNotFoundError(f"no tritonserver under {venv}: run make triton-test (it builds {venv.name})")
    server_dir = found[-1].parents[1]
    site_packages = server_dir.parents[1]
    return TritonInstall(venv, server_dir, site_packages / "nvidia_pytriton.libs",
                         site_packages.parent.name.removeprefix("python"))


def layout_backends(dest: Path, install: TritonInstall) -> Path:
    """`dest/python` (the wheel's Python backend and the stub for the venv's Python, copied) and
    `dest/onnxruntime/model.py` (the stand-in)."""
    python = dest / "python"
    python.mkdir(parents=True)
    for item in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(install.server_dir / "backends" / "python" / item, python / item)
    stub = install.server_dir / "python_backend_stubs" / install.python_version / "triton_python_backend_stub"
    shutil.copy2(stub, python / "triton_python_backend_stub")
    (dest / "onnxruntime").mkdir()
    shutil.copy2(STANDIN_BACKEND, dest / "onnxruntime" / "model.py")
    return dest


def triton_argv(install: TritonInstall, repository: Path, backends: Path, http_port: int, grpc_port: int,
                explicit: bool = True) -> list[str]:
    """tritonserver on 127.0.0.1 only, metrics off; explicit model control loading every model."""
    control = ["--model-control-mode=explicit", "--load-model=*"] if explicit else []
    return [str(install.binary), f"--model-repository={repository}", f"--backend-directory={backends}",
            *control, "--http-address=127.0.0.1", f"--http-port={http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
            "--allow-metrics=false", "--exit-on-error=true", "--log-verbose=0"]


def triton_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment: the venv's bin first on PATH (the stub's interpreter), the wheel's libraries."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{install.venv / 'bin'}:{env.get('PATH', '')}"
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env.pop("PYTHONPATH", None)
    return env
