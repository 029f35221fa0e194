"""bench/triton_server.py lays Triton's backends out as Triton accepts them; bench/triton_peer.py's
ratios and row. (The run against the real tritonserver is `make triton-test` / `python -m bench.triton_peer`.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.triton_peer import LABEL, _ratios, markdown, triton_peer_row
from bench.triton_server import STANDIN_BACKEND, find_install, layout_backends, triton_argv, triton_env


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


def run(rps: float, p99: float, cpu: float, errors: int = 0) -> dict:
    return {"rps": rps, "latency_ms": {"p99": p99}, "server_cpu_ms_per_request": cpu, "errors": errors}


def test_ratios_are_medians_of_rounds_and_the_row_says_what_ran():
    ratio = _ratios([run(300, 4, 1.0), run(200, 8, 2.0), run(100, 2, 3.0, errors=1)],
                    [run(100, 2, 2.0), run(100, 2, 2.0), run(100, 2, 2.0)])
    assert ratio["rps_rounds"] == [3.0, 2.0, 1.0] and ratio["rps"] == 2.0 and ratio["p99"] == 2.0
    assert ratio["cpu_ms_per_request"] == 1.0 and ratio["errors"] == {"triton": 1, "server": 0}
    app = {"cold_start_s_median": 2.0, "memory_idle_mib": {"pss": 100.0, "processes": 3},
           "memory_after_mib": {"pss": 120.0}}
    result = {"label": LABEL, "rounds": 3, "seconds": 5.0,
              "apps": {"triton": app, "server": {**app, "cold_start_s_median": 1.0, "memory_after_mib": {"pss": 60.0}}},
              "ratios": {"v2_infer_binary": {"32": ratio}}}
    row = triton_peer_row(result)
    assert row["peer"] == LABEL and "stand-in" in LABEL and row["rps_vs_server"] == 2.0
    assert row["memory_vs_server"] == 2.0 and row["cold_start_vs_server"] == 2.0
    assert "| v2_infer_binary | 32 | 2.00x |" in markdown(result)
