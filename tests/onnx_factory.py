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
