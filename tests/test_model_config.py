"""server/runtime/model_config.py reads Triton's config.pbtxt; export/triton_config.py writes one that reads back."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import onnx
import pytest
from google.protobuf import descriptor_pool

from export.triton_config import LABELS_FILE, TritonConfigError, write_triton_config
from server.runtime.model_config import (CONFIG_FILE, DESCRIPTOR_SET, ConfigTensor, DynamicBatching, ModelConfigError,
                                 VersionPolicy, graph_mismatches, model_config_class, parse_model_config,
                                 read_model_config)
from tests.conftest import COMMITTED_MNIST
from tests.onnx_factory import write_classifier

DIGITS = [str(i) for i in range(10)]
# The form Triton's documentation writes, lists in brackets and all.
TRITON_STYLE = """
name: "digits"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { specific: { versions: [1, 3] } }
input [
  { name: "input", data_type: TYPE_FP32, dims: [ 1, 28, 28 ] }
]
output [
  { name: "probabilities", data_type: TYPE_FP32, dims: [ 10 ], label_filename: "labels.txt" }
]
dynamic_batching { max_queue_delay_microseconds: 250, preferred_batch_size: [ 4, 8 ] }
instance_group [ { count: 2, kind: KIND_CPU } ]
"""


def model_dir(tmp_path: Path, name: str = "digits", labels: list[str] | None = DIGITS) -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    if labels is not None:
        (folder / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))
    return folder


def test_triton_style_file(tmp_path):
    config = parse_model_config(TRITON_STYLE, model_dir(tmp_path))
    assert (config.name, config.platform, config.max_batch_size) == ("digits", "onnxruntime_onnx", 8)
    assert config.version_policy == VersionPolicy("specific", versions=(1, 3))
    assert config.inputs == (ConfigTensor("input", "FP32", (1, 28, 28)),)
    assert config.outputs == (ConfigTensor("probabilities", "FP32", (10,), "labels.txt", tuple(DIGITS)),)
    assert config.labels == tuple(DIGITS) and config.label_filename == "labels.txt"
    assert config.dynamic_batching == DynamicBatching(250, (4, 8))
    assert config.full_shape(config.inputs[0]) == (-1, 1, 28, 28)
    assert config.ignored == ("instance_group",)


def test_defaults_of_a_minimal_file(tmp_path):
    config = parse_model_config('platform: "onnxruntime_onnx"', model_dir(tmp_path, labels=None))
    assert config.name == "digits" and config.max_batch_size == 0 and config.dynamic_batching is None
    assert config.version_policy == VersionPolicy("latest", 1)  # Triton's default
    assert config.inputs == () and config.labels is None and config.ignored == ()


@pytest.mark.parametrize("policy, available, served", [
    (VersionPolicy(), [1, 2, 3], [3]),
    (VersionPolicy("latest", 2), ["1", "10", "9"], [9, 10]),
    (VersionPolicy("all"), [3, 1], [1, 3]),
    (VersionPolicy("specific", versions=(1, 3)), [1, 2], [1]),
])
def test_version_policy_selects(policy, available, served):
    assert policy.select(available) == served


def test_ignored_fields_are_listed_once_each(tmp_path):
    text = TRITON_STYLE.replace('dims: [ 1, 28, 28 ] }', 'dims: [ 1, 28, 28 ], format: FORMAT_NCHW }').replace(
        "preferred_batch_size: [ 4, 8 ]", "preserve_ordering: true") + 'parameters { key: "k" value { string_value: "v" } }'
    config = parse_model_config(text, model_dir(tmp_path))
    assert config.ignored == ("dynamic_batching.preserve_ordering", "input.format", "instance_group")
    assert config.parameters == (("k", "v"),)  # read: the image API takes its preset from them


@pytest.mark.parametrize("text, reason", [
    ("max_batch_size: 8\ninput [ { name: 'x' data_type: TYPE_FP32 dims: [1] ", r"2:\d+"),
    ("max_batch_size: eight", r"1:\d+ .*Couldn't parse integer"),
    ("no_such_field: 1", r"no field named \"no_such_field\""),
    ('platform: "tensorflow_savedmodel"', "is not ONNX"),
    ('backend: "python"', "is not ONNX"),
    ('name: "other"', "does not match the model's folder 'digits'"),
    ('default_model_filename: "net.onnx"', "reads only model.onnx"),
    ("max_batch_size: -1", "0 or more"),
    ("input [ { name: 'x' dims: [1] } ]", "'x' has no data_type"),
    ("input [ { name: 'x' data_type: TYPE_FP32 } ]", "'x' has no dims"),
    ("input [ { name: 'x' data_type: TYPE_FP32 dims: [0] } ]", "positive or -1"),
    ("input [ { name: 'x' data_type: TYPE_FP32 dims: [-2] } ]", "positive or -1"),
    ("input [ { data_type: TYPE_FP32 dims: [1] } ]", "an input has no name"),
    ("input [ { name: 'x' data_type: TYPE_FP32 dims: [1] }, { name: 'x' data_type: TYPE_FP32 dims: [2] } ]",
     "input names repeat"),
    ("input [ { name: 'x' data_type: TYPE_FP32 dims: [1] reshape: { shape: [] } } ]", "reshape"),
    ("output [ { name: 'y' data_type: TYPE_FP32 dims: [10] label_filename: 'missing.txt' } ]", "does not exist"),
    ("output [ { name: 'y' data_type: TYPE_FP32 dims: [10] label_filename: '../labels.txt' } ]", "outside the model"),
    ("output [ { name: 'y' data_type: TYPE_FP32 dims: [10] label_filename: '/etc/passwd' } ]", "outside the model"),
    ("sequence_batching { }", "stateful"),
    ('platform: "ensemble"', "is not ONNX"),
    ("dynamic_batching { }", "needs max_batch_size > 0"),
    ("max_batch_size: 4 dynamic_batching { preferred_batch_size: [0] }", "must be positive"),
    ("version_policy { latest { num_versions: 0 } }", "num_versions must be 1 or more"),
    ("version_policy { specific { } }", "specific needs versions"),
])
def test_bad_files_are_refused_with_the_reason(tmp_path, text, reason):
    folder = model_dir(tmp_path)
    (folder / CONFIG_FILE).write_text(text)
    with pytest.raises(ModelConfigError, match=reason) as error:
        read_model_config(folder)
    assert str(folder / CONFIG_FILE) in str(error.value)


def test_unreadable_files(tmp_path):
    folder = model_dir(tmp_path)
    assert read_model_config(folder) is None  # no config.pbtxt: the model is described by its graph alone
    (folder / CONFIG_FILE).write_bytes(b"name: \"\xff\"")
    with pytest.raises(ModelConfigError, match="cannot be read"):
        read_model_config(folder)
    (folder / CONFIG_FILE).write_text("output [ { name: 'y' data_type: TYPE_FP32 dims: [10] label_filename: 'l' } ]")
    (folder / "l").write_text("")
    with pytest.raises(ModelConfigError, match="'l' is empty"):
        read_model_config(folder)


def test_graph_mismatches(tmp_path):
    config = parse_model_config(TRITON_STYLE, model_dir(tmp_path))
    graph_in = {"input": ("FP32", (-1, 1, 28, 28))}
    graph_out = {"probabilities": ("FP32", (-1, 10))}
    assert graph_mismatches(config, graph_in, graph_out) == []
    assert graph_mismatches(config, {"pixels": ("FP32", (-1, 1, 28, 28))}, graph_out) == [
        "input 'input' is not in the graph (it has pixels)", "graph input(s) pixels missing from the file"]
    assert graph_mismatches(config, {"input": ("FP64", (-1, 1, 28, 28))}, graph_out) == [
        "input 'input' is FP64 in the graph, FP32 in the file"]
    assert graph_mismatches(config, graph_in, {"probabilities": ("FP32", (-1, 5))}) == [
        "output 'probabilities' has dims [10] in the file, [5] in the graph (less the batch axis)"]
    assert "no dynamic first axis" in graph_mismatches(config, {"input": ("FP32", (1, 1, 28, 28))}, graph_out)[0]


def test_schema_comes_from_the_committed_proto_and_stays_out_of_the_default_pool():
    proto = (DESCRIPTOR_SET.parent / "model_config.proto").read_text()
    declared = set(re.findall(r"^message (\w+)", proto, flags=re.MULTILINE))
    compiled = set(model_config_class().DESCRIPTOR.file.message_types_by_name)
    assert declared == compiled and "ModelConfig" in compiled
    # tritonclient.grpc registers its own inference.ModelConfig in the default pool (tests/test_grpc.py
    # imports it in this very session): the server's lives in a pool of its own, so no clash is possible.
    assert model_config_class().DESCRIPTOR.file.pool is not descriptor_pool.Default()


# ------------------------------------------------------------------ the writer


def test_written_for_the_committed_model_reads_back(tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(COMMITTED_MNIST.parent, folder / "1")
    written = write_triton_config(folder, folder / "1" / "model.onnx")
    assert read_model_config(folder) == written
    assert written.max_batch_size == 64 and written.dynamic_batching is None  # measured best: off
    assert written.version_policy == VersionPolicy("all")
    assert written.inputs == (ConfigTensor("input", "FP32", (1, 28, 28)),)
    assert written.outputs == (ConfigTensor("probabilities", "FP32", (10,), "labels.txt", tuple(DIGITS)),)
    assert (folder / LABELS_FILE).read_text() == "".join(f"{d}\n" for d in DIGITS)
    assert graph_mismatches(written, {"input": ("FP32", (-1, 1, 28, 28))}, {"probabilities": ("FP32", (-1, 10))}) == []
    text = (folder / CONFIG_FILE).read_text()
    assert 'platform: "onnxruntime_onnx"' in text and "dynamic_batching" not in text
    assert not list(folder.glob("*.part"))


def test_metadata_batching_turns_dynamic_batching_on(tmp_path):
    path = write_classifier(tmp_path / "pets" / "1" / "model.onnx", num_classes=3, labels=["cat", "dog", "eel"])
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**props, "max_batch_size": "16", "max_batch_delay_us": "500"})
    onnx.save(model, path)
    written = write_triton_config(tmp_path / "pets", path, version_policy=VersionPolicy("latest", 2))
    assert written.max_batch_size == 16 and written.dynamic_batching == DynamicBatching(500)
    assert written.labels == ("cat", "dog", "eel") and written.version_policy == VersionPolicy("latest", 2)
    assert read_model_config(tmp_path / "pets") == written


def test_fixed_batch_axis_writes_full_dims(tmp_path):
    path = write_classifier(tmp_path / "fixed" / "1" / "model.onnx", input_shape=(1, 1, 28, 28), labels=None)
    written = write_triton_config(tmp_path / "fixed", path)
    assert written.max_batch_size == 0 and written.inputs[0].dims == (1, 1, 28, 28)
    assert written.labels is None and not (tmp_path / "fixed" / LABELS_FILE).exists()
    with pytest.raises(TritonConfigError, match="needs a dynamic first axis"):
        write_triton_config(tmp_path / "fixed", path, max_batch_size=8)


@pytest.mark.parametrize("options, reason", [
    ({"labels": ["a", "b"]}, "2 labels, but no output"),
    ({"dynamic_batching": True, "max_batch_size": 1}, "needs max_batch_size of 2 or more"),
])
def test_writer_refuses_and_writes_nothing(tmp_path, options, reason):
    path = write_classifier(tmp_path / "m" / "1" / "model.onnx", labels=DIGITS)
    with pytest.raises(TritonConfigError, match=reason):
        write_triton_config(tmp_path / "m", path, **options)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_writer_refuses_a_file_onnxruntime_cannot_load(tmp_path):
    path = tmp_path / "m" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not onnx")
    with pytest.raises(TritonConfigError, match="onnxruntime cannot load it"):
        write_triton_config(tmp_path / "m", path)
