"""bench/batching.py's large model: ResNet-18 sized and served as written."""
from __future__ import annotations

import numpy as np
import onnx

from bench.batching import write_resnet18
from tests.test_batching import loaded


def test_the_benchmark_model_is_resnet18_sized(tmp_path) -> None:
    path = write_resnet18(tmp_path / "resnet18" / "1" / "model.onnx")
    parameters = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
    assert 11.0e6 < parameters < 12.5e6  # torchvision's ResNet-18: 11.7 M
    model = loaded(path)
    images = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    probabilities = model.run({"input": images})["probabilities"]
    assert probabilities.shape == (2, 1000) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
