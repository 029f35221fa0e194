"""`GET /metrics`: Prometheus text on Flask's test client and summed over the server's workers."""
from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from server import create_app
from tests.api_client import png
from tests.conftest import MNIST_SAMPLE
from tests.onnx_factory import write_classifier

DIGIT = np.load(MNIST_SAMPLE)["images"][0]
DIGIT_PNG = png(DIGIT)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text page, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(page: dict, name: str, **labels: str) -> float:
    return page.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """`mnist` plus `broken`, a file onnxruntime cannot load."""
    repo = tmp_path / "models"
    write_classifier(repo / "mnist" / "1" / "model.onnx", labels=[str(i) for i in range(10)])
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    return repo


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(response.get_data(as_text=True))


def test_requests_are_counted_by_route_rule_method_and_status(repository: Path) -> None:
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repository)}).test_client()
    before = scrape(client)
    assert client.post("/models/mnist/predict", data=DIGIT_PNG, content_type="image/png").status_code == 200
    assert client.post("/models/mnist/predict", data=b"x", content_type="text/plain").status_code == 415
    assert client.get("/no/such/path/12345").status_code == 404
    tensor = {"name": "input", "shape": [3, 1, 28, 28], "datatype": "FP32", "data": [0.0] * (3 * 784)}
    assert client.post("/v2/models/mnist/infer", json={"inputs": [tensor]}).status_code == 200
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/models/<name>/predict"
    assert delta("http_requests_total", route=route, method="POST", status="200", transport="http") == 1
    assert delta("http_requests_total", route=route, method="POST", status="415", transport="http") == 1
    assert delta("http_requests_total", route="<unmatched>", method="GET", status="404", transport="http") == 1
    assert delta("http_request_duration_seconds_count", route=route, method="POST", transport="http") == 2
    assert delta("http_request_duration_seconds_sum", route=route, method="POST", transport="http") > 0
    assert delta("http_requests_total", route="/v2/models/<name>/infer", method="POST", status="200", transport="http") == 1
    # Both APIs run the model through OnnxModel.run, which records every run and its rows.
    assert delta("model_inference_duration_seconds_count", model="mnist", version="1") == 2
    assert delta("model_batch_size_sum", model="mnist", version="1") == 1 + 3
    page = client.get("/metrics").get_data(as_text=True)
    assert "/no/such/path" not in page and "/models/mnist/predict" not in page  # raw paths never become labels


def test_load_failures_are_counted(repository: Path) -> None:
    before = value(scrape(create_app({"TESTING": True, "MODEL_REPOSITORY": str(repository.parent / "none")}).test_client()),
                   "model_load_failures_total", model="broken", version="1")
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repository)}).test_client()
    assert value(scrape(client), "model_load_failures_total", model="broken", version="1") == before + 1


def worker_pids(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def http_scrape(url: str) -> dict:
    response = requests.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    return samples(response.text)


def wait_for_load_failures(url: str, count: int, timeout: float = 30) -> None:
    """Wait until the summed `model_load_failures_total` of `broken` is `count`; fail past it."""
    deadline = time.monotonic() + timeout
    while (seen := value(http_scrape(url), "model_load_failures_total", model="broken", version="1")) < count:
        assert time.monotonic() < deadline, f"{seen} load failures counted, expected {count}"
        time.sleep(0.2)
    assert seen == count


def test_workers_are_summed_and_a_dead_workers_counts_remain(live_server_factory, repository: Path) -> None:
    server = live_server_factory(repository, WORKERS=2, MAX_BATCH_SIZE=1)
    metrics_dir = Path(re.search(r"metrics of all workers are gathered in (\S+)", server.log())[1])
    assert metrics_dir.is_dir()

    # Each worker loads the repository itself: two workers, two failed loads of `broken` (the
    # second worker may still be starting when the first answers).
    wait_for_load_failures(server.url, 2)

    def predict(_: int) -> int:
        return requests.post(server.url + "/predict", data=DIGIT_PNG, headers={"Content-Type": "image/png"}, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(predict, range(40))) == [200] * 40
    page = http_scrape(server.url)
    assert value(page, "http_requests_total", route="/predict", method="POST", status="200", transport="http") == 40
    assert value(page, "model_batch_size_count", model="mnist", version="1") == 40
    assert len(list(metrics_dir.glob("*.db"))) >= 2

    victim = next(iter(worker_pids(server.process.pid)))
    os.kill(victim, signal.SIGKILL)
    wait_for_load_failures(server.url, 3)  # the replacement worker loaded the repository
    page = http_scrape(server.url)
    # The killed worker's requests still count: counters and histograms outlive their process.
    assert value(page, "http_requests_total", route="/predict", method="POST", status="200", transport="http") == 40
    assert victim not in worker_pids(server.process.pid)

    server.stop()
    assert not metrics_dir.exists(), server.log()[-3000:]  # the temporary folder goes with the server


def test_an_operator_metrics_folder_is_cleared_at_start_and_kept(live_server_factory, repository: Path, tmp_path: Path) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_99999.db").write_bytes(b"stale samples of an earlier run")
    server = live_server_factory(repository, PROMETHEUS_MULTIPROC_DIR=folder)
    assert not (folder / "counter_99999.db").exists()
    assert value(http_scrape(server.url), "model_load_failures_total", model="broken", version="1") == 1
    # The file of a worker caught between creating and sizing it (or killed then) is empty:
    # prometheus-client's own collector fails the whole scrape on it; ours skips it.
    (folder / "counter_88888.db").touch()
    assert value(http_scrape(server.url), "model_load_failures_total", model="broken", version="1") == 1
    server.stop()
    assert folder.is_dir()
