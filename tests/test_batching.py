"""Dynamic batching: concurrent requests share one onnxruntime run, each gets exactly its own rows."""
from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests

from server import config
from server.runtime.batching import Batcher, BatchPolicy
from server.runtime.model import OnnxModel
from tests.onnx_factory import write_classifier

WAIT_US = 2_000_000  # long: a full batch ends the wait at once, so the tests never sit in it


def classifier(tmp_path: Path, metadata: dict[str, str] | None = None, **shape) -> Path:
    path = write_classifier(tmp_path / "m" / "1" / "model.onnx", **shape)
    if metadata:
        model = onnx.load(str(path))
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata})
        onnx.save(model, str(path))
    return path


def loaded(path: Path, defaults: tuple[int, int, float] = (1, 0, 0.0)) -> OnnxModel:
    model = OnnxModel("m", "1", path, batch_defaults=defaults)
    model.load()
    return model


def rows(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).random((count, 1, 28, 28), dtype=np.float32)}


def predict_together(predict, requests_inputs: list[dict]) -> list[dict]:
    """Call `predict` from one thread per request, all released at the same moment."""
    start = threading.Barrier(len(requests_inputs))

    def call(inputs):
        start.wait()
        return predict(inputs)

    with ThreadPoolExecutor(len(requests_inputs)) as pool:
        return list(pool.map(call, requests_inputs))


def test_concurrent_requests_share_one_run_and_get_their_own_rows(tmp_path) -> None:
    model = loaded(classifier(tmp_path, {"max_batch_size": "8", "max_batch_delay_us": str(WAIT_US)}))
    inputs = [rows(1, seed) for seed in range(8)]
    answers = predict_together(model.predict, inputs)
    assert model._batcher.batches == 1 and model._batcher.batched_requests == 8
    for request, answer in zip(inputs, answers):
        np.testing.assert_allclose(answer["probabilities"], model.run(request)["probabilities"], rtol=1e-5, atol=1e-6)


def test_batches_never_exceed_the_size_and_multi_row_requests_stay_whole(tmp_path) -> None:
    model = loaded(classifier(tmp_path, {"max_batch_size": "8", "max_batch_delay_us": "20000"}))
    sizes = [3, 5, 6, 2, 1, 7]
    inputs = [rows(n, seed) for seed, n in enumerate(sizes)]
    seen: list[int] = []
    batcher = Batcher(lambda arrays: seen.append(len(arrays["input"])) or model.run(arrays), model.batch_policy)
    answers = predict_together(batcher.predict, inputs)
    assert max(seen) <= 8 and sum(seen) == sum(sizes)
    for request, answer in zip(inputs, answers):
        assert answer["probabilities"].shape == (len(request["input"]), 10)
        np.testing.assert_allclose(answer["probabilities"], model.run(request)["probabilities"], rtol=1e-5, atol=1e-6)


def test_one_bad_request_fails_alone(tmp_path) -> None:
    model = loaded(classifier(tmp_path))

    def run_refusing_negative(arrays):  # onnxruntime itself accepts any float: refuse one on purpose
        if (arrays["input"] < 0).any():
            raise ValueError("negative pixels")
        return model.run(arrays)

    batcher = Batcher(run_refusing_negative, BatchPolicy(5, WAIT_US))
    inputs = [rows(1, seed) for seed in range(4)] + [{"input": -np.ones((1, 1, 28, 28), np.float32)}]
    outcomes = predict_together(lambda arrays: _outcome(batcher.predict, arrays), inputs)
    assert [isinstance(o, ValueError) for o in outcomes] == [False] * 4 + [True]


class Interrupted(BaseException):
    """Stands for what `except Exception` does not catch (a worker being torn down)."""


def test_an_interrupted_leader_leaves_no_request_waiting(tmp_path) -> None:
    def run_interrupted(arrays):
        raise Interrupted()

    batcher = Batcher(run_interrupted, BatchPolicy(4, WAIT_US))
    outcomes = predict_together(lambda arrays: _outcome(batcher.predict, arrays, BaseException), [rows(1, s) for s in range(4)])
    kinds = sorted(type(o).__name__ for o in outcomes)
    assert kinds == ["Interrupted", "RuntimeError", "RuntimeError", "RuntimeError"]


def _outcome(call, arrays, kind: type[BaseException] = ValueError):
    try:
        return call(arrays)
    except kind as err:
        return err


def test_requests_of_different_shapes_are_not_mixed(tmp_path) -> None:
    model = loaded(classifier(tmp_path, input_shape=("N", 12)))
    seen: list[tuple] = []
    batcher = Batcher(lambda arrays: seen.append(arrays["input"].shape) or {"x": arrays["input"] * 2}, BatchPolicy(8, 50_000))
    inputs = [{"input": np.ones((1, 12), np.float32)}, {"input": np.ones((1, 5), np.float32)}] * 2
    answers = predict_together(batcher.predict, inputs)
    assert sorted(seen) == [(2, 5), (2, 12)]
    assert [a["x"].shape for a in answers] == [(1, 12), (1, 5)] * 2
    assert model.batch_policy.enabled is False  # no metadata, defaults say off


@pytest.mark.parametrize("metadata, defaults, enabled", [
    ({}, (8, 1000, 0.0), True),                             # defaults on for every model
    ({}, (8, 1000, 1e6), False),                            # defaults on only for slow models: this one is fast
    ({"max_batch_size": "16"}, (1, 1000, 0.0), True),       # the file asks for it
    ({"max_batch_size": "1"}, (8, 1000, 0.0), False),       # the file refuses it
    ({"max_batch_size": "lots"}, (8, 1000, 0.0), True),     # unreadable: the defaults stand
])
def test_batch_policy_comes_from_metadata_then_defaults(tmp_path, metadata, defaults, enabled) -> None:
    model = loaded(classifier(tmp_path, metadata), defaults)
    assert model.batch_policy.enabled is enabled and (model._batcher is not None) is enabled


def test_default_settings_leave_models_unbatched(tmp_path) -> None:
    """Off by default (docs/batching.md), however slow the model; MAX_BATCH_SIZE=8 turns it on."""
    size, delay, _ = config.batch_defaults(config.from_environment({}))
    assert not loaded(classifier(tmp_path), (size, delay, 0.0)).batch_policy.enabled
    size, delay, _ = config.batch_defaults(config.from_environment({"MAX_BATCH_SIZE": "8"}))
    assert loaded(classifier(tmp_path), (size, delay, 0.0)).batch_policy.enabled


def test_a_model_with_a_fixed_batch_dimension_is_not_batched(tmp_path) -> None:
    model = loaded(classifier(tmp_path, {"max_batch_size": "8"}, input_shape=(1, 1, 28, 28)))
    assert not model.batchable and not model.batch_policy.enabled


@pytest.mark.slow
def test_batched_answers_over_http_match_onnxruntime(tmp_path, live_server_factory) -> None:
    path = classifier(tmp_path, {"max_batch_size": "8", "max_batch_delay_us": "5000"})
    server = live_server_factory(path.parents[2], WORKERS=1, THREADS=8)
    inputs = [rows(1 + seed % 3, seed) for seed in range(16)]

    def infer(arrays):
        array = arrays["input"]
        body = {"inputs": [{"name": "input", "shape": list(array.shape), "datatype": "FP32", "data": array.ravel().tolist()}]}
        return requests.post(server.url + "/v2/models/m/infer", json=body, timeout=30).json()

    answers = predict_together(infer, inputs)
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    total_rows, runs = (float(re.search(rf'^model_batch_size_{kind}{{model="m",version="1"}} (\S+)$', metrics, re.M).group(1))
                  for kind in ("sum", "count"))
    assert total_rows == sum(len(r["input"]) for r in inputs) and runs < len(inputs)  # some runs held several requests
    reference = loaded(path)
    for request, answer in zip(inputs, answers):
        got = np.array(answer["outputs"][0]["data"], np.float32).reshape(-1, 10)
        np.testing.assert_allclose(got, reference.run(request)["probabilities"], rtol=1e-5, atol=1e-6)
