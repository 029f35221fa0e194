"""The one launcher of real servers (harness/procs.py) that tests and benchmarks share: it leaves nothing running."""
from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import requests

from harness.procs import ServerTree, children, free_port
from tests.conftest import start_server, wait_until

# A process that ignores SIGTERM and starts a child that ignores it too, then says so.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print("child", child.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_free_ports_are_free() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_stop_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    process = ServerTree("stubborn", [sys.executable, "-c", STUBBORN], probe=None, log_dir=tmp_path, stop_timeout=0.5)
    process.start()
    try:
        assert wait_until(lambda: "child" in process.log()), process.log()
        child = int(process.log().split()[1])
        assert alive(process.process.pid) and alive(child)
    finally:
        process.stop()
    assert process.process.returncode == -signal.SIGKILL
    assert wait_until(lambda: not alive(child), timeout=10), f"child {child} outlived stop()"


def test_stop_ends_workers_whose_master_died(random_repository: Path, tmp_path: Path) -> None:
    # A private TMPDIR: the killed master cannot remove its temporary folders, which stay in tmp_path.
    server = start_server(random_repository, {"WORKERS": 2, "TMPDIR": tmp_path})
    try:
        assert wait_until(lambda: len(children(server.process.pid)) == 2)
        workers = children(server.process.pid)
        for pid in workers:  # frozen, so they cannot notice the lost master and leave by themselves
            os.kill(pid, signal.SIGSTOP)
        os.kill(server.process.pid, signal.SIGKILL)  # the master dies; its workers are orphaned
        server.process.wait()
        assert all(alive(pid) for pid in workers)
    finally:
        server.stop()
    assert wait_until(lambda: not any(alive(pid) for pid in workers), timeout=10), workers


def test_a_started_server_serves_and_its_log_is_this_runs(random_repository: Path) -> None:
    first = start_server(random_repository)
    try:
        assert requests.get(first.url + "/v2/health/live", timeout=5).json() == {"live": True}
        assert first.log().count("Spawning worker") == 1
    finally:
        first.stop()
    again = ServerTree(first.name, first.argv, first.probe, env=first.env, log_dir=first.log_dir, port=first.port)
    again.serve(timeout=60)  # the same log file, appended to
    try:
        assert again.log().count("Spawning worker") == 1
        assert again.log_path == first.log_path and again.log_path.read_text().count("Spawning worker") == 2
    finally:
        again.stop()


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-repository"
    bad.write_text("a file, not a folder")
    with pytest.raises(RuntimeError, match="exited with") as failure:
        start_server(bad)
    assert str(bad) in str(failure.value)
