"""A load or unload answers when every worker serves the new state (issue 28), over HTTP and gRPC.

A real server with three worker processes; each check sends its requests on fresh connections, which
the kernel hands to any worker. A worker that does not apply a change in time (here: a live process
that registered as a worker and never acknowledges) makes the load answer 504 / DEADLINE_EXCEEDED
after MODEL_SYNC_TIMEOUT, saying so.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import grpc
import pytest
import requests
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from server.runtime import model_sync
from tests.onnx_factory import write_classifier

FRESH = 30  # requests on fresh connections after each change: with 3 workers, all of them are asked


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    write_classifier(repo / "digits" / "1" / "model.onnx", labels=[str(i) for i in range(10)])
    return repo


def fresh_gets(url: str) -> list[requests.Response]:
    """FRESH GETs of `url`, each on a new connection."""
    return [requests.get(url, timeout=30, headers={"Connection": "close"}) for _ in range(FRESH)]


def test_an_http_load_or_unload_answers_when_every_worker_serves_it(repository: Path, live_server_factory) -> None:
    server = live_server_factory(repository, WORKERS="3")
    shutil.copytree(repository / "digits" / "1", repository / "digits" / "2")
    answer = requests.post(server.url + "/v2/repository/models/digits/load", timeout=60)
    assert answer.status_code == 200 and answer.json()["versions"] == ["1", "2"], answer.text
    seen = [tuple(r.json()["versions"]) for r in fresh_gets(server.url + "/v2/models/digits")]
    assert set(seen) == {("1", "2")}, seen

    write_classifier(repository / "letters" / "1" / "model.onnx", labels=list("abcdefghij"))
    assert requests.post(server.url + "/v2/repository/models/letters/load", timeout=60).status_code == 200
    assert [r.status_code for r in fresh_gets(server.url + "/v2/models/letters")] == [200] * FRESH

    assert requests.post(server.url + "/v2/repository/models/letters/unload", timeout=60).status_code == 200
    statuses = {r.status_code for r in fresh_gets(server.url + "/v2/models/letters/ready")}
    assert statuses == {503}, statuses  # not ready in every worker, at once


def test_a_grpc_load_or_unload_answers_when_every_worker_serves_it(repository: Path, live_server_factory) -> None:
    server = live_server_factory(repository, WORKERS="3")
    target = f"127.0.0.1:{server.env['GRPC_PORT']}"

    def fresh_ready(name: str) -> set[bool]:
        answers = set()
        for _ in range(FRESH):
            with grpc.insecure_channel(target) as channel:  # a new connection each time
                answers.add(service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelReady(
                    pb.ModelReadyRequest(name=name), timeout=30).ready)
        return answers

    write_classifier(repository / "letters" / "1" / "model.onnx", labels=list("abcdefghij"))
    with grpc.insecure_channel(target) as channel:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="letters"), timeout=60)
    assert fresh_ready("letters") == {True}
    with grpc.insecure_channel(target) as channel:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="letters"), timeout=60)
    assert fresh_ready("letters") == {False}


def test_a_worker_that_does_not_apply_a_load_in_time_makes_it_answer_504(repository: Path, tmp_path: Path,
                                                                          live_server_factory) -> None:
    sync_dir = tmp_path / "sync"
    server = live_server_factory(repository, WORKERS="2", MODEL_SYNC_DIR=str(sync_dir), MODEL_SYNC_TIMEOUT="1")
    assert requests.post(server.url + "/v2/repository/models/digits/load", timeout=60).status_code == 200
    stuck = sync_dir / model_sync.WORKERS_FOLDER / str(os.getpid())  # this test process: alive, never applies anything
    stuck.write_text(json.dumps({"generation": 0, "started": model_sync._started(os.getpid())}))
    try:
        started = time.monotonic()
        answer = requests.post(server.url + "/v2/repository/models/digits/load", timeout=60)
        waited = time.monotonic() - started
        assert answer.status_code == 504, answer.text
        error = answer.json()["error"]
        assert f"pid {os.getpid()}" in error and "MODEL_SYNC_TIMEOUT" in error and "1 of 3 worker" in error, error
        assert 1 <= waited < 10
        with grpc.insecure_channel(f"127.0.0.1:{server.env['GRPC_PORT']}") as channel:
            with pytest.raises(grpc.RpcError) as raised:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
                    pb.RepositoryModelUnloadRequest(model_name="digits"), timeout=60)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "MODEL_SYNC_TIMEOUT" in raised.value.details()
    finally:
        stuck.unlink(missing_ok=True)
    # The workers themselves did apply it: without the stuck one the next change answers at once.
    assert requests.post(server.url + "/v2/repository/models/digits/load", timeout=60).status_code == 200


def test_an_exited_worker_is_not_waited_for(repository: Path, tmp_path: Path, live_server_factory) -> None:
    sync_dir = tmp_path / "sync"
    server = live_server_factory(repository, WORKERS="1", MODEL_SYNC_DIR=str(sync_dir), MODEL_SYNC_TIMEOUT="5")
    (sync_dir / model_sync.WORKERS_FOLDER).mkdir(parents=True, exist_ok=True)
    gone = sync_dir / model_sync.WORKERS_FOLDER / "4194303"  # above any pid this machine hands out now
    gone.write_text(json.dumps({"generation": 0, "started": 1}))
    started = time.monotonic()
    assert requests.post(server.url + "/v2/repository/models/digits/load", timeout=60).status_code == 200
    assert time.monotonic() - started < 4 and not gone.exists()


def test_a_worker_that_could_not_load_makes_the_load_a_400_naming_it(repository: Path, tmp_path: Path,
                                                                       live_server_factory) -> None:
    """Each worker's acknowledgement says what it could not apply; the load answers with it."""
    sync_dir = tmp_path / "sync"
    server = live_server_factory(repository, WORKERS="2", MODEL_SYNC_DIR=str(sync_dir), MODEL_SYNC_TIMEOUT="5")
    assert requests.post(server.url + "/v2/repository/models/digits/load", timeout=60).status_code == 200
    failed = sync_dir / model_sync.WORKERS_FOLDER / str(os.getpid())  # a worker that tried, and failed
    failed.write_text(json.dumps({"generation": 10**9, "started": model_sync._started(os.getpid()),
                                  "problems": {"digits": "version 1: not enough memory"}}))
    try:
        answer = requests.post(server.url + "/v2/repository/models/digits/load", timeout=60)
    finally:
        failed.unlink(missing_ok=True)
    assert answer.status_code == 400, answer.text
    assert f"pid {os.getpid()}: version 1: not enough memory" in answer.json()["error"], answer.json()
    assert requests.post(server.url + "/v2/repository/models/digits/load", timeout=60).status_code == 200


def test_a_real_worker_reports_what_it_could_not_apply(repository: Path, tmp_path: Path) -> None:
    """A worker applying another's announcement of a model it cannot load writes why in its acknowledgement."""
    from server.runtime.registry import ModelRegistry

    sync_dir = tmp_path / "sync"
    other = model_sync.ModelSync(ModelRegistry(str(repository)), sync_dir)
    other.announce("nothing-here", "load")  # as if another worker had loaded a model this one cannot find
    registry = ModelRegistry(str(repository))
    registry.load_all()
    worker = model_sync.ModelSync(registry, sync_dir)
    worker.check()
    entry = json.loads((sync_dir / model_sync.WORKERS_FOLDER / str(os.getpid())).read_text())
    assert entry["generation"] == 1 and "no model 'nothing-here'" in entry["problems"]["nothing-here"], entry


def test_a_worker_that_joins_after_a_load_serves_it_once_started(repository: Path, tmp_path: Path) -> None:
    """A worker that was still booting when a load was announced was not waited for: it applies the load
    before it serves anything (CI once saw a fresh gRPC connection answer 'not ready' right after a load)."""
    from server.runtime.registry import ModelRegistry

    sync_dir = tmp_path / "sync"
    booting = ModelRegistry(str(repository))
    booting.load_all()  # read the repository before the new model was there
    write_classifier(repository / "letters" / "1" / "model.onnx", labels=list("abcdefghij"))
    announcing = ModelRegistry(str(repository))
    announcing.load_model("letters")
    model_sync.ModelSync(announcing, sync_dir).announce("letters", "load")
    assert "letters" not in booting.models
    late = model_sync.ModelSync(booting, sync_dir)
    late.start()
    assert booting.get("letters").name == "letters"
