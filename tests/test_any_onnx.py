"""Any ONNX model, really (issue 18): files written by skl2onnx, torch's exporters and the float16
converter, served by a real server over v2 JSON and binary (tritonclient, as users call it) and
compared with onnxruntime run on the same file; what v2 cannot carry; images for a torchvision-style
classifier; the locale text models need; strict readiness; external data."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
import tritonclient.http as triton
from onnx import TensorProto, helper
from PIL import Image

from server import create_app
from server.runtime.registry import ModelRegistry
from tests import converted_models as cm
from tests.conftest import ROOT, LiveServer, torchvision_transforms
from tests.v2_repository import decode_response, run_directly

BUILDERS = {
    "sk-zipmap": lambda repo, name: cm.sklearn_classifier(repo, name, zipmap=True),
    "sk-tensor": lambda repo, name: cm.sklearn_classifier(repo, name, zipmap=False),
    "sk-text": cm.text_pipeline,
    "tv-classifier": cm.torchvision_classifier,
    "two-in-two-out": cm.two_inputs_two_outputs,
    "fp16": cm.float16_model,
    "old-opset": cm.old_opset_weights_as_inputs,
}
NUMPY_V2 = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.int64): "INT64",
            np.dtype(np.object_): "BYTES"}


def compiled_locale(folder: Path) -> dict[str, str]:
    """The environment that gives onnxruntime the en_US.UTF-8 locale, as `make serve` does."""
    result = subprocess.run([str(ROOT / "deploy" / "locales.sh"), str(folder)], capture_output=True, text=True, check=True)
    return {"LOCPATH": f"{result.stdout.strip()}:/usr/lib/locale"} if result.stdout.strip() else {}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """Every converter's model in one repository, with sample inputs for each."""
    repository = tmp_path_factory.mktemp("converted") / "models"
    cases = {name: build(repository, name) for name, build in BUILDERS.items()}
    return repository, cases


@pytest.fixture(scope="module")
def locale_env(tmp_path_factory) -> dict[str, str]:
    return compiled_locale(tmp_path_factory.mktemp("locale"))


@pytest.fixture(scope="module")
def server(converted, locale_env, module_servers) -> LiveServer:
    """One real server serving every converted model, with the locale the text model needs."""
    return module_servers(converted[0], **locale_env, WORKERS="1")


@pytest.fixture
def reference_locale(locale_env, monkeypatch):
    """onnxruntime in this process finds the same locale (glibc reads LOCPATH at each lookup)."""
    for key, value in locale_env.items():
        monkeypatch.setenv(key, value)


def carried(path: Path, kind: str) -> list[str]:
    """The names of a file's graph inputs or outputs that are tensors, as onnxruntime lists them."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    nodes = session.get_inputs() if kind == "inputs" else session.get_outputs()
    return [node.name for node in nodes if node.type.startswith("tensor(")]


def json_body(inputs: dict[str, np.ndarray]) -> dict:
    return {"inputs": [
        {"name": name, "datatype": NUMPY_V2[array.dtype], "shape": list(array.shape),
         "data": array.reshape(-1).tolist()} for name, array in inputs.items()
    ]}


def assert_same(served: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for name, array in served.items():
        want = expected[name]
        assert array.shape == want.shape, name
        if want.dtype == np.object_:
            assert [a.decode() if isinstance(a, bytes) else a for a in array.reshape(-1)] == list(want.reshape(-1))
        elif want.dtype.kind == "f":
            assert array.dtype == want.dtype, name
            np.testing.assert_allclose(array, want, rtol=1e-6, atol=0, err_msg=name)
        else:
            assert array.dtype == want.dtype and np.array_equal(array, want), name


@pytest.mark.parametrize("name", list(BUILDERS))
def test_metadata_lists_the_tensors_v2_carries(server, converted, name, reference_locale) -> None:
    repository, _ = converted
    path = repository / name / "1" / "model.onnx"
    metadata = requests.get(f"{server.url}/v2/models/{name}", timeout=10).json()
    assert [t["name"] for t in metadata["inputs"]] == carried(path, "inputs")
    assert [t["name"] for t in metadata["outputs"]] == carried(path, "outputs")
    assert all(t["datatype"] in ("FP32", "FP16", "INT64", "BYTES") for t in metadata["inputs"] + metadata["outputs"])


def test_zipmap_is_left_out_with_one_log_line_and_a_400_by_name(server, converted) -> None:
    outputs = [t["name"] for t in requests.get(f"{server.url}/v2/models/sk-zipmap", timeout=10).json()["outputs"]]
    assert outputs == ["output_label"]
    body = {**json_body(converted[1]["sk-zipmap"]), "outputs": [{"name": "output_probability"}]}
    answer = requests.post(f"{server.url}/v2/models/sk-zipmap/infer", json=body, timeout=10)
    assert answer.status_code == 400
    assert "seq(map(int64,tensor(float)))" in answer.json()["error"] and "cannot carry" in answer.json()["error"]
    lines = [line for line in server.log().splitlines() if "sk-zipmap" in line and "leaving out" in line]
    assert len(lines) == 1 and "'zipmap': False" in lines[0]


def test_without_zipmap_the_probabilities_take_the_classification_extension(server, converted) -> None:
    inputs = converted[1]["sk-tensor"]
    body = {**json_body(inputs), "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}
    answer = requests.post(f"{server.url}/v2/models/sk-tensor/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    expected = run_directly(converted[0] / "sk-tensor" / "1" / "model.onnx", inputs)["probabilities"]
    assert output["datatype"] == "BYTES" and output["shape"] == [len(expected), 2]
    best = [int(text.split(":")[1]) for text in output["data"][::2]]
    assert best == expected.argmax(axis=1).tolist()


def test_old_export_lists_its_weights_as_inputs_but_serves_only_the_real_one(converted) -> None:
    path = converted[0] / "old-opset" / "1" / "model.onnx"
    assert len(cm.graph_inputs(path)) > 1 and carried(path, "inputs") == ["x"]
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 9


@pytest.mark.parametrize("name", list(BUILDERS))
def test_v2_json_answers_as_onnxruntime_on_the_file(server, converted, name, reference_locale) -> None:
    repository, cases = converted
    answer = requests.post(f"{server.url}/v2/models/{name}/infer", json=json_body(cases[name]), timeout=30)
    assert answer.status_code == 200, answer.text
    served = decode_response(answer.content, None)
    expected = run_directly(repository / name / "1" / "model.onnx", cases[name])
    assert sorted(served) == sorted(carried(repository / name / "1" / "model.onnx", "outputs"))
    assert_same(served, expected)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_tritonclient_binary_answers_as_onnxruntime_on_the_file(server, converted, name, reference_locale) -> None:
    """tritonclient's plain `infer(model, inputs)`: binary inputs, every output in binary, no names."""
    repository, cases = converted
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    inputs = []
    for input_name, array in cases[name].items():
        tensor = triton.InferInput(input_name, list(array.shape), NUMPY_V2[array.dtype])
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    result = client.infer(name, inputs)
    names = [output["name"] for output in result.get_response()["outputs"]]
    assert names == carried(repository / name / "1" / "model.onnx", "outputs")
    assert_same({n: result.as_numpy(n) for n in names}, run_directly(repository / name / "1" / "model.onnx", cases[name]))
    client.close()


def jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / width, y * 255 / height, rng.random() * 255 + 0 * x], axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def torchvision_probabilities(path: Path, images: list[bytes]) -> np.ndarray:
    """The reference: torchvision's classification transforms, onnxruntime on the file, softmax."""
    transforms = torchvision_transforms()
    recipe = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    batch = np.stack([recipe(Image.open(io.BytesIO(data)).convert("RGB")).numpy() for data in images])
    logits = run_directly(path, {"input": batch})["logits"].astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_a_torchvision_classifier_answers_a_jpeg_by_its_classes(server, converted) -> None:
    path = converted[0] / "tv-classifier" / "1" / "model.onnx"
    images = [jpeg(320, 240, seed=1), jpeg(200, 300, seed=2)]
    expected = torchvision_probabilities(path, images)
    raw = requests.post(f"{server.url}/models/tv-classifier/predict", data=images[0],
                        headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert raw.status_code == 200, raw.text
    (prediction,) = raw.json()["predictions"]
    assert prediction["label"] == cm.IMAGE_LABELS[int(np.argmax(expected[0]))]
    np.testing.assert_allclose(prediction["probabilities"], expected[0], atol=1e-3)
    form = requests.post(f"{server.url}/models/tv-classifier/predict",
                         files=[("image", ("a.jpg", images[0], "image/jpeg")), ("image", ("b.jpg", images[1], "image/jpeg"))],
                         data={"return_input": "1"}, timeout=30)
    assert form.status_code == 200, form.text
    for answer, want in zip(form.json()["predictions"], expected):
        np.testing.assert_allclose(answer["probabilities"], want, atol=1e-3)
        assert np.array(answer["input"]).shape == (3, 224, 224)
    listed = requests.get(f"{server.url}/models", timeout=10).json()["models"]
    assert {"name": "tv-classifier", "preprocessing": "imagenet", "labels": cm.IMAGE_LABELS}.items() <= next(
        m for m in listed if m["name"] == "tv-classifier").items()


def test_pixels_for_a_three_channel_model_are_a_clear_400(server) -> None:
    answer = requests.post(f"{server.url}/models/tv-classifier/predict", json={"pixels": [[0.0] * 224] * 224}, timeout=10)
    assert answer.status_code == 400 and "single-channel" in answer.json()["error"]


def test_a_model_with_inputs_of_another_layout_takes_images_too(tmp_path) -> None:
    """NHWC and the `resize` preset: the layout comes from the shape, the preset from metadata."""
    path = tmp_path / "models" / "nhwc" / "1" / "model.onnx"
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("Softmax", ["mean"], ["probabilities"], axis=1)],
        "nhwc", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 16, 24, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"preprocessing": "resize", "labels": '["red", "green", "blue"]'})
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))
    red = io.BytesIO()
    Image.new("RGB", (50, 40), (250, 10, 10)).save(red, "PNG")
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(tmp_path / "models")}).test_client()
    answer = client.post("/models/nhwc/predict", data=red.getvalue(), content_type="image/png",
                         query_string={"return_input": "1"})
    assert answer.status_code == 200, answer.json
    assert answer.json["predictions"][0]["label"] == "red"
    assert np.array(answer.json["predictions"][0]["input"]).shape == (16, 24, 3)


# --------------------------------------------------------------------------- what v2 cannot carry


def write_model_with_extra_input(path: Path, kind: str) -> Path:
    """`y = x`, and an extra input of an optional or sequence type (which v2 cannot carry)."""
    element = helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", 2])
    extra, node, out = {
        "optional": (helper.make_optional_type_proto(element), "OptionalHasElement", TensorProto.BOOL),
        "sequence": (helper.make_sequence_type_proto(element), "SequenceLength", TensorProto.INT64),
    }[kind]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node(node, ["extra"], ["about_extra"])], kind,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2]), helper.make_value_info("extra", extra)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("about_extra", out, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_sequence_only_model(path: Path) -> Path:
    """A model whose one output is a sequence of tensors: nothing v2 can answer with."""
    element = helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["parts"])], "sequence_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_value_info("parts", helper.make_sequence_type_proto(element))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_inputs_v2_cannot_carry_are_left_out_or_the_load_says_why(tmp_path) -> None:
    repository = tmp_path / "models"
    write_model_with_extra_input(repository / "optional" / "1" / "model.onnx", "optional")
    write_model_with_extra_input(repository / "sequence" / "1" / "model.onnx", "sequence")
    write_sequence_only_model(repository / "outputs-none" / "1" / "model.onnx")
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repository)}).test_client()
    metadata = client.get("/v2/models/optional").json
    assert [t["name"] for t in metadata["inputs"]] == ["x"]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    answer = client.post("/v2/models/optional/infer", json=body)
    assert answer.status_code == 200 and answer.json["outputs"][0]["data"] == [1, 2]
    assert answer.json["outputs"][1] == {"name": "about_extra", "datatype": "BOOL", "shape": [], "data": [False]}
    named = {"inputs": body["inputs"] + [{"name": "extra", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    refused = client.post("/v2/models/optional/infer", json=named)
    assert refused.status_code == 400 and "optional(tensor(float))" in refused.json["error"]
    index = {row["name"]: row for row in client.post("/v2/repository/index").json}
    assert index["sequence"]["state"] == "UNAVAILABLE"
    assert "'extra' (seq(tensor(float)))" in index["sequence"]["reason"] and "cannot be carried" in index["sequence"]["reason"]
    assert client.post("/v2/models/sequence/infer", json=body).status_code == 503
    assert index["outputs-none"]["state"] == "UNAVAILABLE"
    assert index["outputs-none"]["reason"] == (
        "none of its outputs can be carried by the v2 protocol: 'parts' (seq(tensor(float)))")


# --------------------------------------------------------------------------- locale and readiness


@pytest.fixture
def text_repository(converted, tmp_path) -> Path:
    """The text pipeline beside a model that loads anywhere."""
    repository = tmp_path / "models"
    for name in ("sk-text", "sk-tensor"):
        shutil.copytree(converted[0] / name, repository / name)
    return repository


@pytest.mark.parametrize("strict,ready", [("true", 503), ("false", 200)])
def test_without_the_locale_the_text_model_says_what_to_install(text_repository, tmp_path, strict, ready,
                                                                 live_server_factory) -> None:
    no_locales = tmp_path / "no-locales"
    no_locales.mkdir()
    live = live_server_factory(text_repository, LOCPATH=str(no_locales), STRICT_READINESS=strict)
    index = {row["name"]: row for row in requests.post(f"{live.url}/v2/repository/index", timeout=10).json()}
    reason = index["sk-text"]["reason"]
    assert index["sk-text"]["state"] == "UNAVAILABLE" and index["sk-tensor"]["state"] == "READY"
    assert "en_US.UTF-8 locale" in reason and "apt-get install locales" in reason and "\n" not in reason
    assert str(tmp_path) not in reason and "onnxruntime_src" not in reason
    assert requests.get(f"{live.url}/v2/health/ready", timeout=10).status_code == ready
    failed = requests.post(f"{live.url}/v2/models/sk-text/infer", json={"inputs": []}, timeout=10)
    assert failed.status_code == 503 and "apt-get install locales" in failed.json()["error"]
    log = [line for line in live.log().splitlines() if "sk-text" in line and "failed to load" in line]
    assert len(log) == 1, live.log()


def test_readiness_ignores_failed_models_only_when_not_strict(tmp_path) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    broken = repository / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not a model")
    strict = ModelRegistry(repository)
    strict.load_all()
    assert not strict.ready  # nothing serves
    relaxed = ModelRegistry(repository, strict_readiness=False)
    relaxed.load_all()
    assert not relaxed.ready  # still nothing serves: never ready with no model at all
    cm.sklearn_classifier(repository, "iris", zipmap=False)
    for registry, ready in ((strict, False), (relaxed, True)):
        registry.refresh()
        assert registry.ready is ready
        assert [row["name"] for row in registry.index() if row["state"] == "UNAVAILABLE"] == ["broken"]


# --------------------------------------------------------------------------- external data


def test_a_change_to_the_external_data_alone_reloads_the_version(converted, tmp_path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(converted[0] / "tv-classifier", repository / "tv")
    folder = repository / "tv" / "1"
    sample = {"input": converted[1]["tv-classifier"]["input"]}
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repository)}).test_client()

    def infer() -> np.ndarray:
        answer = client.post("/v2/models/tv/infer", json=json_body(sample))
        assert answer.status_code == 200, answer.json
        return decode_response(answer.data, None)["logits"]

    before = infer()
    graph_stat = (folder / "model.onnx").stat()
    data = np.fromfile(folder / "model.onnx.data", dtype=np.float32)
    (-data).tofile(folder / "model.onnx.data")  # same size, other weights; model.onnx untouched
    assert (folder / "model.onnx").stat().st_mtime_ns == graph_stat.st_mtime_ns
    assert client.post("/v2/repository/models/tv/load").status_code == 200
    after = infer()
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, run_directly(folder / "model.onnx", sample)["logits"], rtol=1e-6)


@pytest.mark.parametrize("how", ["dot-dot", "absolute", "symlink"])
def test_external_data_outside_the_version_folder_is_refused(converted, tmp_path, how) -> None:
    repository = tmp_path / "models"
    shutil.copytree(converted[0] / "tv-classifier", repository / "tv")
    folder = repository / "tv" / "1"
    outside = repository / "weights.data"
    shutil.move(folder / "model.onnx.data", outside)
    if how == "dot-dot":
        cm.point_external_data_at(folder / "model.onnx", "../../weights.data")
    elif how == "absolute":
        cm.point_external_data_at(folder / "model.onnx", str(outside))
    else:
        (folder / "model.onnx.data").symlink_to(outside)
    registry = ModelRegistry(repository)
    registry.load_all()
    assert not registry.models
    (row,) = registry.index()
    assert row["state"] == "UNAVAILABLE" and "outside the version folder" in row["reason"], row
    assert str(tmp_path) not in row["reason"]
