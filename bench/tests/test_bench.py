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

from bench import footprint, soak
from harness import bodies
from harness.loadgen import run_wrk, send_many
from tests.conftest import COMMITTED_MNIST, ROOT
RESULTS = ROOT / "docs" / "results"  # make bench's dated record (docs/benchmarks.md is the reference page)

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
        [sys.executable, "-m", "bench.soak", "--repository", str(random_repository),
         "--seconds", "4", "--warmup", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120,
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
    """docs/results/benchmarks.md comes from docs/results/benchmarks.json by bench.markdown, never from editing by hand."""
    from bench.markdown import render
    from bench.report import PLOTS

    results = json.loads((RESULTS / "benchmarks.json").read_text())
    rendered = render(results, list(PLOTS))
    assert (RESULTS / "benchmarks.md").read_text() == rendered, \
        "docs/results/benchmarks.md differs from its JSON: run `python -m bench.report` (or make bench) to write it again"


def baseline() -> dict:
    from bench.results import BASELINE

    return json.loads(BASELINE.read_text())


def test_the_frozen_before_figures_are_those_of_the_run_they_name() -> None:
    """bench/baseline-issue19.json is results.figures() of docs/benchmarks.json as committed where it says."""
    from bench.results import figures

    before = baseline()
    shown = subprocess.run(["git", "show", f"{before['commit']}:docs/benchmarks.json"], cwd=ROOT, capture_output=True)
    if shown.returncode != 0:
        pytest.skip(f"commit {before['commit']} is not in this clone (shallow?)")
    assert figures(json.loads(shown.stdout)) == {k: v for k, v in before.items()
                                                 if k not in ("about", "commit", "code_commit")}


def test_issue19_targets_of_the_before_run_are_the_figures_the_issue_quotes() -> None:
    """The before run against itself: the issue's own figures, every issue 19 target missed, a ratio of 1."""
    from bench.results import evaluate

    before = baseline()
    t = evaluate(before, before)
    own = {o["request"]: o for o in t["own_work"]}
    # Issue 19: 1.48 ms a /predict PNG, 0.27 ms the trivial endpoint, 0.59 ms the CNN: 0.62 ms own work.
    assert own["predict_png"]["own_ms"] == 0.623 and own["predict_png"]["before_own_ms"] == 0.623
    assert own["v2_infer_binary"]["own_ms"] == round(1.44 - 0.274 - 0.5869, 3)
    assert own["predict_png"]["own_per_trivial"] == own["predict_png"]["before_own_per_trivial"] == round(0.6231 / 0.274, 3)
    assert set(own) == {"predict_png", "predict_pixels", "v2_infer_binary", "v2_infer_json"}
    assert all(o["ratio"] == 1.0 and o["met"] is False for o in own.values())
    throughput = [(row["measured"], row["goal"], row["met"]) for row in t["throughput"]]
    # issue 7's table of that run: 0.201, 0.185 against the trivial endpoint, 1.893, 1.952 against torch
    assert throughput == [(0.201, ">= 0.45", False), (0.185, ">= 0.45", False), (1.893, ">= 3", False),
                          (1.952, ">= 3", False)]
    assert [(row["measured"], row["met"]) for row in t["cold_start"]] == [(0.394, False)]  # "0.39 x the torch baseline's"
    assert [(row["measured"], row["met"]) for row in t["issue7"]] == [(0.34, True), (169.872, True), (0.205, True)]
    memory = {row["target"]: row["measured"] for row in t["memory"]}
    assert memory["this server: PSS per worker (MB)"] < memory["this server: RSS per worker (MB)"]
    assert all(row["met"] is None for row in t["memory"])  # issue 19 sets no figure: reported only
    assert t["peers"]["status"] == "absent" and t["baseline"]["commit"] == before["commit"]


def test_issue19_own_work_target_is_met_at_a_third_of_before_and_missed_above() -> None:
    """The before run with each request's CPU cut to leave 0.33 or 0.34 of its own work; /predict PNG at 0.46 x trivial."""
    import copy

    from bench.results import evaluate, own_work_ms

    before = baseline()
    after = copy.deepcopy(before)
    cpu, fixed = after["cpu_ms_per_request"], before["cpu_ms_per_request"]["trivial"] + before["inference_ms"]
    shares = {"predict_png": 0.33, "predict_pixels": 0.34, "v2_infer_binary": 0.2, "v2_infer_json": 1.1}
    for request, share in shares.items():
        cpu[request] = fixed + share * own_work_ms(before, request)
    after["peak_rps"]["predict_png"] = 0.46 * after["peak_rps"]["trivial"]
    t = evaluate(after, before)
    assert {o["request"]: (o["ratio"], o["met"]) for o in t["own_work"]} == {
        "predict_png": (0.33, True), "predict_pixels": (0.34, False), "v2_infer_binary": (0.2, True),
        "v2_infer_json": (1.1, False)}
    # 0.46 x 6,370 = 2,930 req/s is 4.3 x torch's 675; by CPU, 0.274 + 0.587 + 0.33 x 0.623 = 1.067 ms a request
    # is 0.257 x trivial's CPU per request and 2.72 x torch's: short of 0.45 and 3.
    assert [(row["measured"], row["met"]) for row in t["throughput"]] == [
        (0.46, True), (0.257, False), (4.341, True), (2.716, False)]
    assert t["throughput"][0]["before"] == 0.201


def test_issue19_targets_of_a_run_take_its_saturated_figures_and_the_peers_of_its_day(tmp_path) -> None:
    """A real run's results: CPU at the highest concurrency, inference at the workers' thread count; peers only if not older."""
    from bench.results import figures, targets

    results = json.loads((RESULTS / "benchmarks.json").read_text())
    f = figures(results)
    threads = results["settings"]["ORT_THREADS"]
    inference = [b["us_per_image_p50"] / 1000 for r in results["inprocess"]["ort"]["results"] if r["threads"] == threads
                 for b in r["batches"] if b["batch"] == 1]
    assert f["inference_ms"] == inference[0]
    highest = max(results["method"]["concurrency"])
    png = next(run for run in results["server"]["load"]["predict_png"]["runs"] if run["connections"] == highest)
    assert f["cpu_ms_per_request"]["predict_png"] == png["server_cpu_ms_per_request"]

    peers = json.loads((RESULTS / "benchmarks-peers.json").read_text())
    peers["date"] = results["date"]  # measured the same day as the run
    (tmp_path / "peers.json").write_text(json.dumps(peers))
    shown = targets(results, peers_file=tmp_path / "peers.json")["peers"]
    measured = {(r["request"], r["connections"]) for r in peers["table"] if r["server"] == "server"}
    assert shown["status"] == "current" and len(shown["rows"]) == len(measured) > 0  # every request, every connections
    for row in shown["rows"]:
        same = [r for r in peers["table"] if r["request"] == row["request"] and r["connections"] == row["connections"]]
        ours = next(r["rps_median"] for r in same if r["server"] == "server")
        best = max(r["rps_median"] for r in same if r["server"] != "server")
        assert row["ratio"] == round(ours / best, 3) and row["met"] == (ours / best >= 2)
        assert row["peer"]["server"] != "server" and {"p50_ms", "p99_ms"} <= set(row["server"])

    run_day = results["date"][:10]
    peers["date"] = f"{int(run_day[:4]) - 1}{run_day[4:]}T23:59:59+00:00"  # a year before the run
    (tmp_path / "peers.json").write_text(json.dumps(peers))
    shown = targets(results, peers_file=tmp_path / "peers.json")["peers"]
    assert shown["status"] == "older" and shown["rows"] == []


def test_the_targets_section_says_when_the_cpu_or_the_run_is_not_comparable() -> None:
    """A run on another CPU, with other settings, or a --quick one, is named so above the targets; the before run too."""
    from bench.markdown import targets_section
    from bench.results import BASELINE, targets

    results = json.loads((RESULTS / "benchmarks.json").read_text())
    before = json.loads(BASELINE.read_text())
    results["date"], results["method"]["quick"] = before["date"], False
    results["machine"].update(before["machine"])
    results["settings"] = dict(before["settings"])
    results["targets"] = targets(results, BASELINE, peers_file=None)
    same = targets_section(results)
    assert "This run is that before run" in same
    assert not any(text in same for text in ("Another CPU", "--quick", "Other settings"))
    results["machine"]["cpu_model"] = "Some Other CPU"
    results["method"]["quick"] = True
    results["settings"]["WORKERS"] = before["settings"]["WORKERS"] + 1
    results["targets"] = targets(results, BASELINE, peers_file=None)
    other = targets_section(results)
    assert "**Another CPU**" in other and "Some Other CPU" in other and "**A `--quick` run**" in other
    assert f"this one with WORKERS={before['settings']['WORKERS'] + 1}," in other
    assert "No `docs/results/benchmarks-peers.json`" in other  # no peers file given: said, not left out


def test_smoke_fails_only_past_twice_the_recorded_ratio() -> None:
    """make bench-smoke's verdict: the request whose ratio to the trivial endpoint's grew most past 2 x, else none."""
    from bench.smoke import BASELINE, GUARDED, worst_regression

    recorded = json.loads(BASELINE.read_text())["ratio_to_trivial"]
    assert set(recorded) == set(GUARDED)
    assert worst_regression({n: 2 * recorded[n] for n in GUARDED}, recorded, 2.0) is None
    assert worst_regression({n: 0.5 * recorded[n] for n in GUARDED}, recorded, 2.0) is None
    grown = {"v2_infer_binary": 2.1 * recorded["v2_infer_binary"], "predict_png": 3 * recorded["predict_png"]}
    assert worst_regression(grown, recorded, 2.0) == "predict_png"
    assert worst_regression({**grown, "predict_png": recorded["predict_png"]}, recorded, 2.0) == "v2_infer_binary"


def test_issue33_targets_take_the_peers_at_8_and_32_and_cpu_at_half_of_before() -> None:
    """Issue 33's rows from a run: peers only at 8 and 32 connections; CPU met at 0.5 x e301823's and missed above."""
    import copy

    from bench.results import ISSUE33_CONNECTIONS, targets

    results = json.loads((RESULTS / "benchmarks.json").read_text())
    side = lambda cpu: {"cpu_ms_per_request": cpu, "rps": 1000.0}  # noqa: E731
    results["before_after"] = {"before": "e301823", "after": "tree", "date": results["date"], "workers": 2,
                               "connections": 32, "rounds": 2, "seconds": 5.0, "pythons": {}, "table": [
        {"request": "v2_infer_binary", "before": side(1.0), "after": side(0.5), "cpu_ratio": 0.5},
        {"request": "predict_png", "before": side(1.0), "after": side(0.51), "cpu_ratio": 0.51}]}
    peers = RESULTS / "benchmarks-peers.json"
    t = targets(copy.deepcopy(results), peers_file=peers)["issue33"]
    assert [c["met"] for c in t["cpu"]] == [True, False]
    assert t["peers"]["rows"] and {r["connections"] for r in t["peers"]["rows"]} <= set(ISSUE33_CONNECTIONS)
    cold = t["torch"][-1]
    assert cold["met"] == (cold["measured"] <= 0.25)


def test_the_reference_page_quotes_the_record() -> None:
    """docs/benchmarks.md's headline block is what bench/report.py writes from docs/results/benchmarks.json."""
    from bench.markdown import headline
    from bench.report import HEADLINE_END, HEADLINE_START, REFERENCE

    page = REFERENCE.read_text()
    block = page[page.index(HEADLINE_START) + len(HEADLINE_START):page.index(HEADLINE_END)]
    assert block == "\n" + headline(json.loads((RESULTS / "benchmarks.json").read_text())), \
        "docs/benchmarks.md's figures differ from its record: run `python -m bench.report` (or make bench)"
