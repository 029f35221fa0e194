"""One loaded ONNX model: its tensors and metadata read from the graph, and `predict()`."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, v2 datatype and shape (-1 for a dynamic axis)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @classmethod
    def from_node(cls, node: ort.NodeArg) -> "TensorSpec":
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
        return cls(node.name, V2_DATATYPES.get(node.type, node.type), shape)

    def as_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class OnnxModel:
    """An ONNX file served under `name`/`version`; `load()` builds and warms its session."""

    name: str
    version: str
    path: Path
    ort_threads: int = 1
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    _session: ort.InferenceSession | None = field(default=None, repr=False)

    def load(self) -> None:
        """Build the onnxruntime session, read tensors and metadata, and run one warm-up."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.ort_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = tuple(TensorSpec.from_node(n) for n in session.get_inputs())
        self.outputs = tuple(TensorSpec.from_node(n) for n in session.get_outputs())
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        self._session = session
        self.predict(self.warmup_inputs())

    def warmup_inputs(self) -> dict[str, np.ndarray]:
        """Zeros of batch size 1 for every input, so the first request pays no lazy set-up."""
        arrays = {}
        for spec in self.inputs:
            shape = tuple(1 if d < 0 else d for d in spec.shape)
            arrays[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES.get(spec.datatype, np.float32))
        return arrays

    @property
    def ready(self) -> bool:
        return self._session is not None

    @property
    def labels(self) -> list[str] | None:
        """Class labels from the `labels` metadata key (a JSON list), when present."""
        raw = self.metadata.get("labels")
        if not raw:
            return None
        try:
            labels = json.loads(raw)
        except ValueError:
            labels = [part.strip() for part in raw.split(",")]
        return [str(label) for label in labels] if isinstance(labels, list) else None

    @property
    def preprocessing(self) -> str | None:
        """The image preprocessing preset named in metadata (e.g. `mnist-digit`)."""
        return self.metadata.get("preprocessing") or None

    @property
    def output_kind(self) -> str:
        """`probabilities` (softmax in the graph) or `logits`."""
        return self.metadata.get("output_kind", "probabilities")

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on named arrays and return every output by name."""
        if self._session is None:
            raise RuntimeError(f"model {self.name} version {self.version} is not loaded")
        names = [spec.name for spec in self.outputs]
        results = self._session.run(names, inputs)
        return dict(zip(names, results))
