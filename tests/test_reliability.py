"""Reliability under attack and failure: a fuzzed API, and a worker killed under load."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
import schemathesis
from schemathesis import checks
from hypothesis import HealthCheck, given, settings

from harness.procs import free_port, model_server
from server import lifecycle
from harness.loadgen import DIGIT_PIXELS, PredictLoad
from tests.conftest import LOG_DIR, TEST_SETTINGS, wait_until
from tests.onnx_factory import write_classifier


@pytest.fixture(scope="module")
def fuzz_server(module_servers, tmp_path_factory):
    """One server for every fuzzed operation, serving a random-weight `mnist`."""
    repo = tmp_path_factory.mktemp("fuzz") / "models"
    write_classifier(repo / "mnist" / "1" / "model.onnx", labels=[str(i) for i in range(10)])
    return module_servers(repo, WORKERS=1, THREADS=4)


# "Every response matches the document". Left out: positive_data_acceptance, since an image
# field that satisfies the schema is still random bytes, rightly refused with a 400.
DOCUMENT_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


def fuzz_operation(operation, base_url: str) -> None:
    """Send hypothesis-generated requests for one operation; each answer must match the document."""

    @given(case=operation.as_strategy())
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:
        response = case.call(base_url=base_url, timeout=10)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
        case.validate_response(response, checks=DOCUMENT_CHECKS)

    check()


def test_fuzzed_requests_never_get_a_server_error(fuzz_server) -> None:
    """Every operation of the served OpenAPI document, fuzzed: documented answers, never a 5xx."""
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        fuzz_operation(operation, fuzz_server.url)


def test_fuzzed_server_is_still_healthy(fuzz_server) -> None:
    """After the fuzzing above, the server still answers a good request and logged no traceback."""
    answer = requests.post(fuzz_server.url + "/predict", json={"pixels": DIGIT_PIXELS}, timeout=10)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
    assert requests.get(fuzz_server.url + "/v2/health/ready", timeout=5).status_code == 200
    assert "Traceback" not in fuzz_server.log()


def test_killed_worker_is_replaced_and_only_its_requests_are_lost(live_server_factory, random_repository: Path) -> None:
    """What must hold; how fast the throughput comes back is measured by bench/recovery.py (`make bench`)."""
    server = live_server_factory(random_repository, WORKERS=2, THREADS=4)
    assert wait_until(lambda: len(server.workers()) == 2)
    workers = server.workers()
    clients = 8
    with PredictLoad(server.url + "/predict", clients=clients) as load:
        assert wait_until(lambda: load.answered() >= 50)  # under load before the kill
        killed_at = time.monotonic()
        os.kill(workers[0], signal.SIGKILL)

        def replacement() -> set[int]:
            return set(server.workers()) - set(workers)

        assert wait_until(lambda: len(replacement()) == 1
                          and f"Spawning worker-1 with PID: {min(replacement())}" in server.log()), server.log()[-3000:]
        replaced_at = time.monotonic()
        assert wait_until(lambda: load.answered(since=replaced_at) >= 100)  # and it keeps serving after
    lost = [t for t, ok in load.results if not ok]
    print(f"lost {len(lost)} of {len(load.results)} requests")
    assert len(replacement()) == 1 and workers[1] in server.workers()
    # Lost = what the killed worker held at that instant: each client has one request in flight,
    # and the failures all come at the kill, none once the replacement has booted.
    assert len(lost) <= clients, lost
    assert all(killed_at <= t <= replaced_at for t in lost), [round(t - killed_at, 2) for t in lost]
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200


def test_a_worker_told_to_stop_while_it_boots_stops_at_once(live_server_factory, random_repository: Path) -> None:
    """The server stopped right after a killed worker's replacement forked: the replacement, still
    loading the app, stops on the TERM instead of ignoring it until it is killed 20 s later."""
    server = live_server_factory(random_repository, WORKERS=2)
    assert wait_until(lambda: len(server.workers()) == 2)
    workers = server.workers()
    os.kill(workers[0], signal.SIGKILL)
    assert wait_until(lambda: set(server.workers()) - set(workers)), server.log()[-3000:]
    server.stop()
    assert "refused to gracefully stop" not in server.log(), server.log()[-3000:]


@pytest.mark.slow
def test_a_worker_over_its_memory_ceiling_is_replaced_and_no_request_is_lost(live_server_factory, random_repository: Path) -> None:
    """WORKER_MAX_RSS below an idle worker's size: the main process replaces a worker at its first
    check (every 30 s), gracefully, while clients keep sending."""
    server = live_server_factory(random_repository, WORKERS=2, THREADS=4, WORKER_MAX_RSS=40)
    assert wait_until(lambda: len(server.workers()) == 2)
    first = set(server.workers())
    with PredictLoad(server.url + "/predict", clients=4) as load:
        assert wait_until(lambda: "RSS over threshold, gracefully respawning" in server.log(), timeout=60), server.log()[-3000:]
        assert wait_until(lambda: "Stopped old worker" in server.log(), timeout=60), server.log()[-3000:]
        replaced_at = time.monotonic()
        assert wait_until(lambda: load.answered(since=replaced_at) >= 50)
    assert set(server.workers()) != first
    lost = [t for t, ok in load.results if not ok]
    print(f"lost {len(lost)} of {len(load.results)} requests")
    assert lost == [] and len(load.results) > 100


def test_a_worker_marked_for_replacement_closes_each_connection_after_its_answer(live_server_factory, random_repository: Path,
                                                                                tmp_path: Path) -> None:
    """What the main process does before a graceful replacement (HUP, lifetime, memory ceiling): it
    marks the worker (RETIRING), which then answers `Connection: close`, so keep-alive clients
    reconnect while it still serves instead of sending on a connection it closes as it stops."""
    sync_dir = tmp_path / "sync"
    server = live_server_factory(random_repository, WORKERS=1, KEEPALIVE_REQUESTS=0, MODEL_SYNC_DIR=str(sync_dir))

    def closes() -> bool:
        return requests.get(server.url + "/v2/health/ready", timeout=10).headers.get("Connection", "").lower() == "close"

    assert not any(closes() for _ in range(20)), "an unmarked worker keeps its connections open"
    (sync_dir / lifecycle.RETIRING).mkdir(exist_ok=True)
    (sync_dir / lifecycle.RETIRING / "1").touch()  # the first worker's age
    assert wait_until(closes, timeout=10)
    assert all(closes() for _ in range(20))


# --------------------------------------------------------------------------- one owner per port, no litter

def litter(folder: Path) -> list[str]:
    """The server's temporary folders left in `folder` (the private TMPDIR a test gave a server)."""
    return sorted(path.name for path in folder.glob("mnist-serve-*"))


@pytest.mark.parametrize("setting", ["PORT", "GRPC_PORT"])
def test_a_port_another_program_holds_stops_the_start_with_one_line_and_no_folders(random_repository: Path, tmp_path: Path,
                                                                                   setting: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = model_server(random_repository, name=f"taken-{setting}-{port}", log_dir=LOG_DIR,
                              env={**TEST_SETTINGS, "GRPC_PORT": str(free_port()), setting: str(port), "TMPDIR": str(tmp_path)},
                              **({"port": port} if setting == "PORT" else {}))
        server.start()
        try:
            assert server.process.wait(timeout=60) == 1
        finally:
            server.stop()
    transport = "HTTP" if setting == "PORT" else "gRPC"
    errors = [line for line in server.log().splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot listen for {transport} on 127.0.0.1:{port} ("), errors
    assert f"set {setting}" in errors[0] and "Traceback" not in server.log(), server.log()[-3000:]
    assert litter(tmp_path) == []


def test_a_second_server_on_the_same_http_port_stops_and_leaves_the_first_alone(live_server_factory, random_repository: Path,
                                                                                  tmp_path: Path) -> None:
    """Granian's per-worker sockets set SO_REUSEPORT, which any process of the same user may join:
    a second server on the same PORT (another GRPC_PORT) must refuse to start, not share the port."""
    first = live_server_factory(random_repository)
    second = model_server(random_repository, name=f"second-{first.port}", port=first.port, log_dir=LOG_DIR,
                          env={**TEST_SETTINGS, "GRPC_PORT": str(free_port()), "TMPDIR": str(tmp_path)})
    second.start()
    try:
        status = second.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        status = None  # it joined the port and serves beside the first
    finally:
        second.stop()
    assert status == 1, second.log()[-3000:]
    assert f"error: cannot listen for HTTP on 127.0.0.1:{first.port} (" in second.log(), second.log()[-3000:]
    assert litter(tmp_path) == []
    assert requests.get(first.url + "/v2/health/ready", timeout=5).status_code == 200


def test_a_server_stopped_while_it_starts_leaves_no_folders(random_repository: Path, tmp_path: Path) -> None:
    """TERM as soon as the main process made its temporary folders, before Granian took over the
    signals (what a launcher does to a start it gives up on): the folders still go."""
    server = model_server(random_repository, name=f"stopped-early-{free_port()}", log_dir=LOG_DIR,
                          env={**TEST_SETTINGS, "GRPC_PORT": str(free_port()), "TMPDIR": str(tmp_path)})
    server.start()
    try:
        assert wait_until(lambda: litter(tmp_path) or server.process.poll() is not None), server.log()[-3000:]
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)
    finally:
        server.stop()
    assert litter(tmp_path) == [], server.log()[-3000:]
