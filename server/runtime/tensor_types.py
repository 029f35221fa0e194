"""What a model file's graph means to both sides of it: v2 datatypes, their numpy dtypes, a tensor's spec, the labels.

The vocabulary export (export/triton_config.py) and the server share; no onnxruntime here, so
importing it loads no inference runtime.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


class GraphNode(Protocol):
    """A graph input or output as onnxruntime describes it (`onnxruntime.NodeArg`)."""

    name: str
    type: str
    shape: Sequence[int | str | None]


# ONNX element types as the Open Inference Protocol (v2) names them.
V2_DATATYPES: dict[str, str] = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
NUMPY_DTYPES: dict[str, np.dtype] = {
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "FP16": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "BOOL": np.dtype(np.bool_),
    "BYTES": np.dtype(np.object_),
}


def labels_from_metadata(metadata: dict[str, str]) -> list[str] | None:
    """Class labels from the `labels` metadata key (a JSON list, or comma-separated), when present."""
    raw = metadata.get("labels")
    if not raw:
        return None
    try:
        labels = json.loads(raw)
    except ValueError:
        labels = [part.strip() for part in raw.split(",")]
    return [str(label) for label in labels] if isinstance(labels, list) else None


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, v2 datatype and shape (-1 for a dynamic axis)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @classmethod
    def from_node(cls, node: GraphNode) -> "TensorSpec":
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
        return cls(node.name, V2_DATATYPES.get(node.type, node.type), shape)

    def as_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
