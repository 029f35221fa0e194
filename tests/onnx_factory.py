"""Build small random-weight ONNX classifiers in a test's tmp_path, with no torch involved."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write_classifier(
    path: Path,
    *,
    input_name: str = "input",
    input_shape: tuple = ("N", 1, 28, 28),
    num_classes: int = 10,
    output_name: str = "probabilities",
    labels: list[str] | None = None,
    preprocessing: str | None = "mnist-digit",
    seed: int = 0,
) -> Path:
    """Write a Flatten -> Gemm -> Softmax model taking `input_shape` float32 and return its path."""
    rng = np.random.default_rng(seed)
    features = int(np.prod([d for d in input_shape[1:]]))
    weight = rng.normal(0, 0.05, size=(features, num_classes)).astype(np.float32)
    bias = rng.normal(0, 0.05, size=(num_classes,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", [input_name], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [output_name], axis=1),
        ],
        "random_classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [input_shape[0], num_classes])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = {"output_kind": "probabilities"}
    if labels is not None:
        metadata["labels"] = json.dumps(labels)
    if preprocessing:
        metadata["preprocessing"] = preprocessing
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# The models Triton's example clients (triton-inference-server/client, src/python/examples) expect,
# with the config.pbtxt Triton's own QA repository gives them: two [-1, 16] inputs, max_batch_size 8.
SIMPLE_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: {type} dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: {type} dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: {type} dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: {type} dims: [ 16 ] }}
]
"""
IDENTITY_CONFIG = """name: "simple_identity"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
"""


def write_simple(root: Path, name: str = "simple", strings: bool = False) -> Path:
    """`simple`: INT32 INPUT0, INPUT1 [-1, 16] -> OUTPUT0 = their sum, OUTPUT1 = their difference.
    With `strings` (`simple_string`), the same over BYTES strings of numbers: Cast to INT32 and back.
    Writes `<root>/<name>/1/model.onnx` and its config.pbtxt; returns the model folder."""
    kind = TensorProto.STRING if strings else TensorProto.INT32
    nodes, a, b = [], "INPUT0", "INPUT1"
    if strings:
        nodes += [helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
                  helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32)]
        a, b = "a", "b"
    sums, differences = ("sum", "difference") if strings else ("OUTPUT0", "OUTPUT1")
    nodes += [helper.make_node("Add", [a, b], [sums]), helper.make_node("Sub", [a, b], [differences])]
    if strings:
        nodes += [helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
                  helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING)]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(tensor, kind, ["N", 16]) for tensor in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(tensor, kind, ["N", 16]) for tensor in ("OUTPUT0", "OUTPUT1")],
    )
    return _save_with_config(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / name,
                             SIMPLE_CONFIG.format(name=name, type="TYPE_STRING" if strings else "TYPE_INT32"))


def write_simple_identity(root: Path) -> Path:
    """`simple_identity`: BYTES INPUT0 [-1, -1] comes back unchanged as OUTPUT0."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "simple_identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["N", "M"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["N", "M"])],
    )
    return _save_with_config(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                             root / "simple_identity", IDENTITY_CONFIG)


def _save_with_config(model: onnx.ModelProto, folder: Path, config: str) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "1" / "model.onnx"))
    (folder / "config.pbtxt").write_text(config)
    return folder
