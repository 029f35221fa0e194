"""The benchmark machinery: its requests are the server's real API, wrk's figures parse, the
torch baseline answers like the server, and a bounded soak passes (the full one is `make bench`)."""
from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from bench import bodies, footprint, soak
from bench.loadgen import run_wrk, send_many
from tests.conftest import COMMITTED_MNIST, ROOT

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (system-packages.txt)")


@pytest.fixture
def digit_specs(live_server) -> list[bodies.RequestSpec]:
    return bodies.server_requests("digits", "input", "probabilities")


def post(server, spec: bodies.RequestSpec) -> requests.Response:
    return requests.request(spec.method, server.url + spec.path, data=spec.body, headers=spec.headers, timeout=10)


def test_every_benchmark_request_is_answered_by_the_real_server(live_server, digit_specs):
    answers = {spec.name: post(live_server, spec) for spec in digit_specs}
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 200)
    png, pixels = answers["predict_png"].json(), answers["predict_pixels"].json()
    assert png["predictions"] == pixels["predictions"]  # MNIST's own 28x28 passes through unchanged
    assert answers["v2_infer_json"].json()["outputs"][0]["shape"] == [1, 10]
    binary = answers["v2_infer_binary"]
    header_length = int(binary.headers["Inference-Header-Content-Length"])
    header = json.loads(binary.content[:header_length])
    probabilities = struct.unpack("<10f", binary.content[header_length:])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 40
    np.testing.assert_allclose(probabilities, png["predictions"][0]["probabilities"], atol=1e-5)


def test_png_body_is_the_mnist_digit_itself():
    image, label = bodies.mnist_digit(0)
    spec = bodies.predict_png(image)
    start = spec.body.index(b"\x89PNG")
    decoded = np.asarray(Image.open(io.BytesIO(spec.body[start:])))
    np.testing.assert_array_equal(decoded, image)
    assert label == 7


@needs_wrk
def test_wrk_figures_parse_and_count_errors(live_server, digit_specs):
    result = run_wrk(live_server.port, digit_specs[0], connections=4, seconds=1, server_cpu=lambda: 0.0)
    assert result["requests"] > 10 and result["errors"] == 0
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    wrong = bodies.RequestSpec("unknown_model", "POST", "/v2/models/nope/infer", {}, b"{}")
    failing = run_wrk(live_server.port, wrong, connections=2, seconds=1)
    assert failing["errors"] == failing["error_kinds"]["status"] == failing["requests"] > 0


def predict_count(server) -> float:
    text = requests.get(server.url + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("http_requests_total{") and 'route="/predict"' in line)


def test_send_many_sends_exactly_the_count(live_server, digit_specs):
    before = predict_count(live_server)
    result = send_many(live_server.port, digit_specs[1], total=40, concurrency=4)
    assert result["failures"] == 0
    assert predict_count(live_server) - before == 40


def test_torch_baseline_answers_like_the_checkpoint_it_loads(tmp_path):
    torch = pytest.importorskip("torch")
    from bench import torch_app
    from training.checkpoint import save_checkpoint
    from training.model import DigitNet

    torch.manual_seed(0)
    network = DigitNet().eval()
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, network, args={}, data_sha256="-", epoch=1)
    client = torch_app.create_app({"TORCH_CHECKPOINT": str(checkpoint)}).test_client()
    image, _ = bodies.mnist_digit(0)
    for spec in (bodies.predict_png(image), bodies.predict_pixels(image)):
        answer = client.post(spec.path, data=spec.body, headers=spec.headers)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        with torch.inference_mode():
            expected = torch.softmax(network(torch.from_numpy(image[None, None] / np.float32(255))), 1)[0]
        np.testing.assert_allclose(answer.get_json()["predictions"][0]["probabilities"], expected.numpy(), atol=1e-5)
    assert client.post("/predict", json={"nothing": 1}).status_code == 400


def test_torch_baseline_without_checkpoint_runs_the_served_architecture(tmp_path):
    """Random weights, but the network the served ONNX file names in its metadata; a checkpoint of another is refused."""
    torch = pytest.importorskip("torch")
    from bench import torch_app
    from training.checkpoint import save_checkpoint
    from training.model import DigitNet, ModelConfig, parameter_count

    import onnxruntime

    served = torch_app.served_model_config(COMMITTED_MNIST)
    model = torch_app.load_model("", 1, served)
    assert model.config == ModelConfig.from_dict(json.loads(served))
    metadata = onnxruntime.InferenceSession(str(COMMITTED_MNIST)).get_modelmeta().custom_metadata_map
    assert parameter_count(model) == int(metadata["parameters"])  # the exported network's own count

    small = ModelConfig(stages=((8,), (16, 16)), stem_stride=2, separable=True)
    network = torch_app.load_model("", 1, json.dumps(small.to_dict()))
    assert network.config == small and parameter_count(network) == parameter_count(DigitNet(small))
    assert parameter_count(network) != parameter_count(DigitNet())  # not the default architecture

    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, DigitNet(small).eval(), args={}, data_sha256="-", epoch=1)
    assert torch_app.load_model(str(checkpoint), 1, json.dumps(small.to_dict())).config == small
    with pytest.raises(ValueError, match="not the served model's"):
        torch_app.load_model(str(checkpoint), 1, served)


def test_environment_size_skips_pycache(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_bytes(b"x" * 100)
    (tmp_path / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"x" * 1000)
    assert footprint.tree_bytes(tmp_path) == 100
    serve = footprint.closure_bytes(ROOT / ".venv-serve", "onnxruntime")
    assert "numpy" in serve["largest"] and "torch" not in serve["largest"]


@needs_wrk
@pytest.mark.slow
def test_bounded_soak_loses_nothing_and_measures_memory(random_repository):
    """The soak's machinery and its lossless serving; its memory goal is `make bench`'s to judge."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--repository", str(random_repository),
         "--seconds", "4", "--warmup", "2"], capture_output=True, text=True, timeout=120,
    )
    result = json.loads(done.stdout)
    assert result["load"]["requests"] > 100
    assert result["failed_requests"] == 0 and result["workers_replaced"] == []
    assert result["rss_kib_after_warmup"] > 0 and len(result["rss_samples"]) >= 2
    assert result["passed"] == (result["rss_growth"] <= soak.MAX_RSS_GROWTH), result
    assert done.returncode == (0 if result["passed"] else 1), done.stderr


def test_profile_summary_counts_each_function_once_per_stack():
    from bench.profile import summarize

    raw = ("process 1;handle (gunicorn/workers/gthread.py);f (a/x.py);f (a/x.py) 3\n"
           "process 1;handle (gunicorn/workers/gthread.py);g (a/y.py) 1\n")
    result = summarize(raw, top=10)
    assert result["samples"] == 4
    assert dict(result["inclusive"])["f (a/x.py)"] == 0.75  # recursion counted once per sample
    assert dict(result["self"]) == {"f (a/x.py)": 0.75, "g (a/y.py)": 0.25}


def test_ab_extracts_a_revisions_server_package(tmp_path):
    from bench.ab import extract, short_hash

    tree = extract("HEAD", tmp_path / "before")
    committed = subprocess.run(["git", "show", "HEAD:server/config.py"], cwd=ROOT, capture_output=True,
                               check=True).stdout
    assert (tree / "server" / "config.py").read_bytes() == committed
    assert len(short_hash("HEAD")) >= 7


def test_the_benchmark_document_is_what_its_run_renders() -> None:
    """docs/benchmarks.md comes from docs/benchmarks.json by bench.markdown, never from editing by hand."""
    from bench.markdown import render
    from bench.report import PLOTS

    results = json.loads((ROOT / "docs" / "benchmarks.json").read_text())
    rendered = render(results, list(PLOTS))
    assert (ROOT / "docs" / "benchmarks.md").read_text() == rendered, \
        "docs/benchmarks.md differs from its JSON: run `python -m bench.report` (or make bench) to write it again"
