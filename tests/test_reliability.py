"""Reliability under attack and failure: a fuzzed API, and a worker killed under load."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests
import schemathesis
from schemathesis import checks
from hypothesis import HealthCheck, given, settings

from bench.recovery import DIGIT_PIXELS, Load
from tests.conftest import wait_until
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
    with Load(server.url + "/predict", clients=clients) as load:
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
    with Load(server.url + "/predict", clients=4) as load:
        assert wait_until(lambda: "RSS over threshold, gracefully respawning" in server.log(), timeout=60), server.log()[-3000:]
        assert wait_until(lambda: "Stopped old worker" in server.log(), timeout=60), server.log()[-3000:]
        replaced_at = time.monotonic()
        assert wait_until(lambda: load.answered(since=replaced_at) >= 50)
    assert set(server.workers()) != first
    lost = [t for t, ok in load.results if not ok]
    print(f"lost {len(lost)} of {len(load.results)} requests")
    assert lost == [] and len(load.results) > 100
