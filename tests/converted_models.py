"""ONNX files as the converters people use write them: skl2onnx, torch's exporters, the float16
converter. Each builder writes `<repository>/<name>/1/model.onnx` (and whatever files the converter
puts beside it) and returns sample inputs for it. Tiny models: the whole set builds in seconds.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.transformers.float16 import convert_float_to_float16
from skl2onnx import convert_sklearn, to_onnx
from skl2onnx.common.data_types import StringTensorType
from sklearn.datasets import load_iris
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

Inputs = dict[str, np.ndarray]
IMAGE_LABELS = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]
TEXTS = ["Hello World", "a bad day", "a good day", "hello there", "BAD news", "good news, Café"]


def version_folder(repository: Path, name: str) -> Path:
    folder = repository / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def set_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Add `metadata` to a saved model's metadata_props, leaving its external data files as they are."""
    model = onnx.load(str(path), load_external_data=False)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata})
    onnx.save(model, str(path))


def _iris() -> tuple[np.ndarray, np.ndarray]:
    features, classes = load_iris(return_X_y=True)
    return features.astype(np.float32), classes


def sklearn_classifier(repository: Path, name: str, zipmap: bool) -> Inputs:
    """A logistic regression on iris; skl2onnx's default adds ZipMap (a list of {class: p} maps)."""
    features, classes = _iris()
    classifier = LogisticRegression(max_iter=500).fit(features, classes)
    options = None if zipmap else {id(classifier): {"zipmap": False}}
    model = to_onnx(classifier, features[:1], options=options, target_opset=17)
    onnx.save(model, str(version_folder(repository, name) / "model.onnx"))
    return {"X": features[::30]}


def text_pipeline(repository: Path, name: str) -> Inputs:
    """TF-IDF and a logistic regression on strings: its StringNormalizer needs the en_US.UTF-8 locale."""
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(TEXTS, [0, 1, 0, 0, 1, 0])
    model = convert_sklearn(
        pipeline, initial_types=[("text", StringTensorType([None, 1]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}}, target_opset=17,
    )
    onnx.save(model, str(version_folder(repository, name) / "model.onnx"))
    return {"text": np.array([["a good day"], ["BAD news, hello"], ["café"]], dtype=object)}


class TinyImageNet(torch.nn.Module):
    """A torchvision classifier's interface ([N, 3, 224, 224] in, [N, classes] logits out), tiny."""

    def __init__(self, classes: int = len(IMAGE_LABELS)):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU()
        )
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.classifier = torch.nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1)) * 4


def torchvision_classifier(repository: Path, name: str) -> Inputs:
    """torch's default (dynamo) exporter, which writes the weights to model.onnx.data beside the
    graph, then labels and the imagenet preset in metadata, as a user would add them."""
    path = version_folder(repository, name) / "model.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        TinyImageNet().eval(), (torch.zeros(1, 3, 224, 224),), str(path), input_names=["input"],
        output_names=["logits"], dynamic_shapes={"x": {0: batch}}, verbose=False,
    )
    set_metadata(path, {"labels": json.dumps(IMAGE_LABELS), "preprocessing": "imagenet", "output_kind": "logits"})
    rng = np.random.default_rng(1)
    return {"input": rng.standard_normal((2, 3, 224, 224)).astype(np.float32)}


class TwoInTwoOut(torch.nn.Module):
    """Features and int64 ids in; scores (features and the ids' embeddings) and the ids doubled out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(4, 3)
        self.embedding = torch.nn.Embedding(10, 3)

    def forward(self, features: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(features) + self.embedding(ids), ids * 2


def two_inputs_two_outputs(repository: Path, name: str) -> Inputs:
    path = version_folder(repository, name) / "model.onnx"
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        # The shared batch axis gets one name: torch says so in a warning.
        warnings.filterwarnings("ignore", "# The axis name: batch will not be used", UserWarning)
        torch.onnx.export(
            TwoInTwoOut().eval(), (torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64)), str(path),
            input_names=["features", "ids"], output_names=["scores", "doubled"],
            dynamic_shapes={"features": {0: batch}, "ids": {0: batch}}, external_data=False, verbose=False,
        )
    rng = np.random.default_rng(2)
    return {"features": rng.standard_normal((3, 4)).astype(np.float32), "ids": np.array([0, 9, 4], dtype=np.int64)}


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.layers = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def float16_model(repository: Path, name: str) -> Inputs:
    """An MLP exported by torch, then turned to float16 inputs, weights and outputs by the float16
    converter (onnxruntime.transformers.float16, onnxconverter-common's converter as shipped there)."""
    folder = version_folder(repository, name)
    source = folder.parent / "float32.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(Mlp().eval(), (torch.zeros(2, 6),), str(source), input_names=["x"], output_names=["y"],
                      dynamic_shapes={"x": {0: batch}}, external_data=False, verbose=False)
    half = convert_float_to_float16(onnx.load(str(source)), keep_io_types=False)
    onnx.save(half, str(folder / "model.onnx"))
    source.unlink()
    rng = np.random.default_rng(3)
    return {"x": rng.standard_normal((2, 6)).astype(np.float16)}


def old_opset_weights_as_inputs(repository: Path, name: str) -> Inputs:
    """torch's legacy (TorchScript) exporter at opset 9 with keep_initializers_as_inputs: the weights
    are graph inputs with initializers, as exports of a few years ago have them."""
    path = version_folder(repository, name) / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            Mlp().eval(), (torch.zeros(1, 6),), str(path), dynamo=False, opset_version=9,
            keep_initializers_as_inputs=True, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
        )
    return {"x": np.random.default_rng(4).standard_normal((2, 6)).astype(np.float32)}


def graph_inputs(path: Path) -> list[str]:
    """The inputs the graph lists, initializers included (what an old export shows)."""
    return [value.name for value in onnx.load(str(path), load_external_data=False).graph.input]


def point_external_data_at(path: Path, location: str) -> None:
    """Rewrite where every external initializer of a saved model says its data lies."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))
