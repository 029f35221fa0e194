"""harness/triton_server.py lays Triton's backends out as Triton accepts them and starts it on loopback.
(The run against the real tritonserver is `make triton-test` / `python -m bench.triton_peer`.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.triton_server import STANDIN_BACKEND, find_install, layout_backends, triton_argv, triton_env


def fake_venv(root: Path) -> Path:
    """The files of nvidia-pytriton's wheel that the layout reads, with made-up contents."""
    server_dir = root / "lib" / "python3.11" / "site-packages" / "pytriton" / "tritonserver"
    for relative, text in {"bin/tritonserver": "binary", "backends/python/libtriton_python.so": "lib",
                           "backends/python/triton_python_backend_utils.py": "utils",
                           "python_backend_stubs/3.11/triton_python_backend_stub": "stub 3.11",
                           "python_backend_stubs/3.12/triton_python_backend_stub": "stub 3.12"}.items():
        (server_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (server_dir / relative).write_text(text)
    return root


def test_backends_are_copied_not_linked_with_the_matching_stub(tmp_path):
    install = find_install(fake_venv(tmp_path / "venv"))
    assert install.python_version == "3.11" and install.binary.read_text() == "binary"
    backends = layout_backends(tmp_path / "backends", install)
    files = sorted(str(p.relative_to(backends)) for p in backends.rglob("*") if p.is_file())
    assert files == ["onnxruntime/model.py", "python/libtriton_python.so", "python/triton_python_backend_stub",
                     "python/triton_python_backend_utils.py"]
    assert not any(p.is_symlink() for p in backends.rglob("*"))  # Triton refuses links leaving the folder
    assert (backends / "python" / "triton_python_backend_stub").read_text() == "stub 3.11"
    assert (backends / "onnxruntime" / "model.py").read_bytes() == STANDIN_BACKEND.read_bytes()
    assert "STAND-IN" in STANDIN_BACKEND.read_text()


def test_triton_is_started_on_loopback_with_the_venv_first_on_path(tmp_path):
    install = find_install(fake_venv(tmp_path / "venv"))
    argv = triton_argv(install, tmp_path / "models", tmp_path / "backends", 8000, 8001)
    assert "--http-address=127.0.0.1" in argv and "--grpc-address=127.0.0.1" in argv
    assert "--model-control-mode=explicit" in argv and "--allow-metrics=false" in argv
    env = triton_env(install, base={"PATH": "/usr/bin", "PYTHONPATH": "/elsewhere"})
    assert env["PATH"] == f"{tmp_path / 'venv' / 'bin'}:/usr/bin" and "PYTHONPATH" not in env
    assert env["LD_LIBRARY_PATH"].endswith("nvidia_pytriton.libs")


def test_a_missing_install_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make triton-test"):
        find_install(tmp_path)
