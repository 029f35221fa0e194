"""Model lifecycle: versions, load/unload/index (Triton's repository extension), poll mode, worker sync,
and a switch under load in a real two-worker server that loses no request."""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
import tritonclient.http as triton
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from server import create_app
from server.runtime.model_sync import ModelSync
from server.runtime.registry import ModelRegistry
from harness.loadgen import ClientThreads
from harness.procs import free_port, model_server
from tests.conftest import LOG_DIR, ROOT, TEST_SETTINGS, wait_until
from tests.onnx_factory import write_classifier

DIGITS = [str(i) for i in range(10)]
ZERO_DIGIT = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}


def add_version(repo: Path, version: str, seed: int, name: str = "mnist") -> Path:
    """Drop a version in the way docs/models.md says: write it beside, then rename it into place."""
    staging = repo.parent / f"staging-{name}-{version}"
    write_classifier(staging / "model.onnx", labels=DIGITS, seed=seed)
    target = repo / name / version
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, target)
    return target / "model.onnx"


def add_corrupt_version(repo: Path, version: str) -> None:
    (repo / "mnist" / version).mkdir()
    (repo / "mnist" / version / "model.onnx").write_bytes(b"\x08\x07not an onnx graph" * 64)


def add_version_failing_at_run(repo: Path, version: str) -> None:
    """A valid graph that loads but cannot run: 784 values per row do not reshape into rows of 3."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["probabilities"])], "fails_at_run",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["M", 3])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / "mnist" / version).mkdir()
    onnx.save(model, str(repo / "mnist" / version / "model.onnx"))
    # Made-up inputs failing only log a warning: a model_warmup sample failing refuses the version.
    (repo / "mnist" / "config.pbtxt").write_text(WARMUP_CONFIG)


WARMUP_CONFIG = """version_policy: { all: {} }
model_warmup [ { name: "blank digit" batch_size: 1 inputs { key: "input"
  value { data_type: TYPE_FP32 dims: [ 1, 1, 28, 28 ] zero_data: true } } } ]
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    add_version(root, "1", seed=1)
    return root


@pytest.fixture
def client(repo: Path):
    return create_app({"TESTING": True, "MODEL_REPOSITORY": str(repo)}).test_client()


def served_version(client, version: str | None = None) -> str:
    path = "/v2/models/mnist/infer" if version is None else f"/v2/models/mnist/versions/{version}/infer"
    response = client.post(path, json=ZERO_DIGIT)
    assert response.status_code == 200, response.json
    return response.json["model_version"]


def test_highest_version_serves_by_default_and_each_loaded_version_answers(repo, client) -> None:
    add_version(repo, "2", seed=2)
    assert client.post("/v2/repository/models/mnist/load").json == {
        "name": "mnist", "versions": ["1", "2"], "default_version": "2"}
    assert served_version(client) == "2"
    assert served_version(client, "1") == "1" and served_version(client, "2") == "2"
    one = client.post("/v2/models/mnist/versions/1/infer", json=ZERO_DIGIT).json["outputs"][0]["data"]
    two = client.post("/v2/models/mnist/versions/2/infer", json=ZERO_DIGIT).json["outputs"][0]["data"]
    assert not np.allclose(one, two)  # different weights: the version path really picks the session


def test_index_lists_versions_like_triton(repo, client) -> None:
    add_corrupt_version(repo, "2")
    assert client.post("/v2/repository/models/mnist/load").status_code == 400
    index = client.post("/v2/repository/index").json
    assert [(row["name"], row["version"], row["state"]) for row in index] == [
        ("mnist", "1", "READY"), ("mnist", "2", "UNAVAILABLE")]
    assert "Protobuf parsing failed" in index[1]["reason"] and index[0]["reason"] == ""
    assert client.post("/v2/repository/index", json={"ready": True}).json == [index[0]]


@pytest.mark.parametrize("make_bad", [add_corrupt_version, add_version_failing_at_run], ids=["corrupt", "fails-model-warmup"])
def test_bad_version_is_rejected_and_the_old_one_keeps_serving(repo, client, make_bad, caplog) -> None:
    caplog.set_level(logging.INFO, logger="server")
    make_bad(repo, "2")
    response = client.post("/v2/repository/models/mnist/load")
    assert response.status_code == 400
    assert "version 2" in response.json["error"] and "serving versions: 1" in response.json["error"]
    assert served_version(client) == "1"
    assert client.get("/v2/health/ready").status_code == 200  # nothing that served changed
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "model mnist version 2 failed to load" in lines[0] and "\n" not in lines[0]
    assert client.get("/v2/models/mnist/versions/2/ready").status_code == 503


def test_a_version_made_up_inputs_cannot_run_loads_with_a_warning(repo, client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="server")
    add_version_failing_at_run(repo, "2")
    (repo / "mnist" / "config.pbtxt").unlink()  # no model_warmup: zeros are all the server can try
    assert client.post("/v2/repository/models/mnist/load").status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("model mnist version 2: loaded without a warm-up" in line and "model_warmup" in line for line in warnings)
    assert client.get("/v2/models/mnist/versions/2/ready").status_code == 200
    answer = client.post("/v2/models/mnist/versions/2/infer", json=ZERO_DIGIT)
    assert answer.status_code == 400 and "onnxruntime could not run model 'mnist'" in answer.json["error"]


def test_a_rewritten_version_is_reloaded_and_a_broken_rewrite_keeps_the_old_session(repo, client) -> None:
    path = repo / "mnist" / "1" / "model.onnx"
    before = client.post("/v2/models/mnist/infer", json=ZERO_DIGIT).json["outputs"][0]["data"]
    write_classifier(path, labels=DIGITS, seed=7)
    assert client.post("/v2/repository/models/mnist/load").status_code == 200
    after = client.post("/v2/models/mnist/infer", json=ZERO_DIGIT).json["outputs"][0]["data"]
    assert not np.allclose(before, after)
    path.write_bytes(b"truncated")
    assert client.post("/v2/repository/models/mnist/load").status_code == 400
    assert client.post("/v2/models/mnist/infer", json=ZERO_DIGIT).json["outputs"][0]["data"] == after


def test_unload_then_load_again(repo, client) -> None:
    assert client.post("/v2/repository/models/mnist/unload", json={"parameters": {"unload_dependents": False}}).status_code == 200
    response = client.post("/v2/models/mnist/infer", json=ZERO_DIGIT)
    assert response.status_code == 503 and "unloaded" in response.json["error"]
    assert client.post("/v2/repository/index").json == [
        {"name": "mnist", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert client.post("/v2/repository/models/mnist/load", data=b"{}").status_code == 200
    assert served_version(client) == "1"


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/v2/repository/models/nosuch/load", b"", 404, "no model 'nosuch'"),
    ("/v2/repository/models/nosuch/unload", b"", 404, "unknown model 'nosuch'"),
    ("/v2/repository/models/bad%24name/load", b"", 404, "names are letters"),
    ("/v2/repository/models/mnist/load", b"{not json", 400, "not JSON"),
    ("/v2/repository/models/mnist/load", b"[1]", 400, "expected a JSON object"),
    ("/v2/repository/models/mnist/load", b'{"parameters": {"config": "{}"}}', 400, "not supported"),
    ("/v2/repository/models/mnist/unload", b'{"parameters": {"force": true}}', 400, "not supported"),
    ("/v2/repository/models/mnist/load", b'{"parameters": [null, null]}', 400, "must be a JSON object"),
    ("/v2/repository/models/mnist/unload", b'{"parameters": "x"}', 400, "must be a JSON object"),
    ("/v2/repository/index", b'{"ready": "yes"}', 400, "'ready' must be true or false"),
])
def test_repository_errors(client, path, body, status, fragment) -> None:
    response = client.post(path, data=body)
    assert response.status_code == status and fragment in response.json["error"], response.json


def test_a_request_holding_the_old_model_finishes_on_it(repo) -> None:
    repository = ModelRegistry(repo)
    repository.load_all()
    in_flight = repository.get("mnist")
    add_version(repo, "2", seed=2)
    repository.load_model("mnist")
    repository.unload_model("mnist")  # even with every version gone, the old session still runs
    outputs = in_flight.predict({"input": np.zeros((1, 1, 28, 28), np.float32)})
    assert outputs["probabilities"].shape == (1, 10) and in_flight.version == "1"


@pytest.mark.parametrize("host, headers, token, status", [
    ("127.0.0.1", {}, "", 200),
    ("0.0.0.0", {}, "", 403),
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}, "", 403),
    ("0.0.0.0", {"Authorization": "Bearer s3cret"}, "s3cret", 200),
    ("0.0.0.0", {}, "s3cret", 401),
])
def test_load_is_refused_when_reachable_without_a_token(repo, host, headers, token, status) -> None:
    app = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repo), "HOST": host, "API_TOKEN": token})
    response = app.test_client().post("/v2/repository/models/mnist/load", headers=headers)
    assert response.status_code == status, response.json
    if status == 403:
        assert "API_TOKEN" in response.json["error"]


def test_poll_picks_up_new_and_removed_versions_and_leaves_unloaded_models_alone(repo) -> None:
    repository = ModelRegistry(repo)
    repository.load_all()
    poll = ModelSync(repository, None, poll_seconds=0.001)
    add_version(repo, "2", seed=2)
    time.sleep(0.01)
    poll.tick()
    assert repository.get("mnist").version == "2"
    shutil.rmtree(repo / "mnist" / "2")
    time.sleep(0.01)
    poll.tick()
    assert list(repository.models["mnist"]) == ["1"]
    repository.unload_model("mnist")
    time.sleep(0.01)
    poll.tick()
    assert "mnist" not in repository.models
    repository.load_model("mnist")
    shutil.rmtree(repo / "mnist")
    time.sleep(0.01)
    poll.tick()
    assert repository.models == {} and repository.index() == []


def test_workers_repeat_each_others_loads_through_the_sync_folder(repo, tmp_path) -> None:
    workers = [ModelRegistry(repo), ModelRegistry(repo)]
    syncs = [ModelSync(repository, tmp_path / "sync") for repository in workers]
    for repository in workers:
        repository.load_all()
    add_version(repo, "2", seed=2)
    workers[0].load_model("mnist")
    syncs[0].announce("mnist", "load")
    assert workers[1].get("mnist").version == "1"
    syncs[1].check()
    assert workers[1].get("mnist").version == "2"
    workers[1].unload_model("mnist")
    syncs[1].announce("mnist", "unload")
    syncs[0].check()
    assert "mnist" not in workers[0].models
    late = ModelRegistry(repo)  # a worker started (or restarted) later catches up on its first look
    late.load_all()
    ModelSync(late, tmp_path / "sync").check()
    assert "mnist" not in late.models


@pytest.mark.slow
def test_tritonclient_drives_the_repository_extension_with_the_token(repo, live_server_factory) -> None:
    server = live_server_factory(repo, API_TOKEN="s3cret")
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    token = {"Authorization": "Bearer s3cret"}
    try:
        assert "model_repository" in client.get_server_metadata(headers=token)["extensions"]
        with pytest.raises(InferenceServerException, match="bearer token"):
            client.load_model("mnist")
        add_version(repo, "2", seed=2)
        client.load_model("mnist", headers=token)
        assert [(row["version"], row["state"]) for row in client.get_model_repository_index(headers=token)] == [
            ("1", "READY"), ("2", "READY")]
        assert client.is_model_ready("mnist", "1", headers=token) and client.is_model_ready("mnist", headers=token)
        client.unload_model("mnist", headers=token)
        assert not client.is_model_ready("mnist", headers=token)
    finally:
        client.close()


class Traffic(ClientThreads):
    """Client threads sending v2 inferences until stopped, each answer timed and kept."""

    def __init__(self, url: str, threads: int = 8, limit_seconds: float = 60.0, limit_requests: int = 20_000) -> None:
        super().__init__(threads)
        self.url, self.deadline = url + "/v2/models/mnist/infer", time.monotonic() + limit_seconds
        self.limit_requests = limit_requests
        self.answers: list[tuple[float, int, str, float]] = []  # (monotonic time sent, status, model_version, answered)
        self.errors: list[str] = []

    def client(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set() and time.monotonic() < self.deadline and len(self.answers) < self.limit_requests:
                sent = time.monotonic()
                try:
                    response = session.post(self.url, json=ZERO_DIGIT, timeout=10)
                    version = response.json().get("model_version", "") if response.status_code == 200 else response.text
                    self.answers.append((sent, response.status_code, version, time.monotonic()))
                except requests.RequestException as err:
                    self.errors.append(repr(err))

    def versions_between(self, start: float, end: float) -> set[str]:
        """Versions that answered the requests sent from `start` to `end`."""
        return {version for at, _, version, _ in list(self.answers) if start <= at < end}

    def versions_answered_before(self, end: float) -> set[str]:
        """Versions that answered before `end` (a request sent just before a switch may be answered after it)."""
        return {version for _, _, version, answered in list(self.answers) if answered < end}

    def sent_since(self, start: float) -> int:
        return sum(1 for at, _, _, _ in list(self.answers) if at >= start)


@pytest.mark.slow
def test_switch_under_load_in_two_workers_loses_no_request(repo, live_server_factory) -> None:
    server = two_workers(live_server_factory, repo, THREADS=4)

    def rejections() -> int:
        return server.log().count("model mnist version 3 failed to load")

    with Traffic(server.url) as traffic:
        assert wait_until(lambda: traffic.sent_since(0) >= 50)
        dropped = time.monotonic()
        add_version(repo, "2", seed=2)
        loaded = requests.post(server.url + "/v2/repository/models/mnist/load", timeout=30)
        assert loaded.status_code == 200 and loaded.json()["default_version"] == "2", loaded.text
        # The other worker hears of it through the sync folder, loads and switches: each logs it.
        assert wait_until(lambda: len(switched_workers(server.log())) == 2), server.log()[-3000:]
        switched = time.monotonic()
        assert wait_until(lambda: traffic.sent_since(switched) >= 50)
        add_corrupt_version(repo, "3")
        rejected = requests.post(server.url + "/v2/repository/models/mnist/load", timeout=30)
        assert wait_until(lambda: rejections() >= 2)
    assert rejected.status_code == 400 and "version 3" in rejected.json()["error"]
    assert traffic.errors == [] and len(traffic.answers) > 50
    assert [a for a in traffic.answers if a[1] != 200] == []
    assert traffic.versions_answered_before(dropped) == {"1"}
    assert traffic.versions_between(switched, float("inf")) == {"2"}
    assert rejections() == 2  # one line per worker
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
    assert "Traceback" not in server.log()


@pytest.mark.slow
def test_unloads_survive_a_hup_and_the_sync_folder_goes_at_exit(repo, live_server_factory) -> None:
    server = two_workers(live_server_factory, repo)
    sync_dir = Path(re.search(r"workers share model loads and unloads through (\S+)", server.log()).group(1))
    metrics_dir = Path(re.search(r"metrics of all workers are gathered in (\S+)", server.log()).group(1))
    assert requests.post(server.url + "/v2/repository/models/mnist/unload", timeout=10).status_code == 200

    def statuses() -> set[int]:  # fresh connections, so both workers answer
        return {requests.post(server.url + "/v2/models/mnist/infer", json=ZERO_DIGIT, timeout=10).status_code
                for _ in range(10)}

    assert wait_until(lambda: statuses() == {503})
    # The other worker's own word that it unloaded too: fresh connections may all reach one worker.
    assert wait_until(lambda: "another worker did unload of model mnist" in server.log()), server.log()[-3000:]
    os.kill(server.process.pid, signal.SIGHUP)
    # Generous bounds: on a busy machine the new workers take a while to boot and load the model.
    assert wait_until(lambda: server.log().count("Spawning worker") == 4), server.log()[-3000:]
    assert wait_until(lambda: len(re.findall(r"another worker did unload of model mnist", server.log())) >= 3), \
        server.log()[-3000:]
    assert statuses() == {503}
    server.stop()
    assert not sync_dir.exists() and not metrics_dir.exists()


@pytest.mark.slow
def test_poll_mode_switches_every_worker(repo, live_server_factory) -> None:
    server = two_workers(live_server_factory, repo, MODEL_POLL_SECONDS="0.5")
    add_version(repo, "2", seed=2)
    assert wait_until(lambda: len(switched_workers(server.log())) == 2), server.log()[-3000:]
    answers = [requests.post(server.url + "/v2/models/mnist/infer", json=ZERO_DIGIT, timeout=10) for _ in range(8)]
    assert {a.json()["model_version"] for a in answers} == {"2"}


def two_workers(live_server_factory, repo: Path, **env: str):
    """A real server with two workers, returned once both have loaded `mnist` (not just one)."""
    server = live_server_factory(repo, WORKERS=2, **env)
    assert wait_until(lambda: server.log().count("loaded model mnist version 1") == 2), server.log()
    return server


def switched_workers(log: str) -> set[str]:
    """Process ids of the workers that logged switching `mnist` to versions 1 and 2."""
    return set(re.findall(r" (\d+) INFO server\.runtime\.registry: model mnist now serves versions \[1, 2\]", log))


@pytest.mark.slow
def test_a_hup_serves_new_server_code(repo, tmp_path) -> None:
    """The workers import the app after the fork, so a HUP brings in a changed server/ without a restart."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "server", tree / "server", ignore=shutil.ignore_patterns("__pycache__"))
    server = model_server(repo, name=f"new-code-{free_port()}", env={**TEST_SETTINGS, "WORKERS": "2", "GRPC_PORT": "0"},
                          cwd=tree, log_dir=LOG_DIR)
    server.serve(timeout=60)
    try:
        assert requests.get(server.url + "/v2/health/live", timeout=5).json() == {"live": True}
        health = tree / "server" / "api" / "health.py"
        health.write_text(health.read_text().replace("return jsonify(live=True)", "return jsonify(live=True, code='new')"))
        os.kill(server.process.pid, signal.SIGHUP)
        assert wait_until(lambda: server.log().count("Stopped old worker") == 2, timeout=60), server.log()[-3000:]
        answers = [requests.get(server.url + "/v2/health/live", timeout=5).json() for _ in range(10)]
        assert answers == [{"live": True, "code": "new"}] * 10
    finally:
        server.stop()


@pytest.mark.slow
def test_a_connection_made_before_a_hup_and_used_after_it_is_answered(repo, live_server_factory) -> None:
    """A client that connected just before a worker's replacement and sends just after is answered by
    the new worker (a stopping worker closes the connections it accepted with no request under way)."""
    import socket

    server = live_server_factory(repo, WORKERS=1, GRPC_PORT=0, HEADER_READ_TIMEOUT=60)
    early = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    try:
        time.sleep(0.5)  # time for the worker to accept it, were it handed over before its first bytes
        os.kill(server.process.pid, signal.SIGHUP)
        assert wait_until(lambda: "Stopped old worker" in server.log(), timeout=60), server.log()[-3000:]
        early.sendall(f"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := early.recv(65536):
            answer += chunk
    except ConnectionResetError as reset:
        pytest.fail(f"the connection made before the HUP was reset: {reset}")
    finally:
        early.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
