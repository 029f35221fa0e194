"""One loaded ONNX model: its tensors and metadata read from the graph, and `predict()`."""
from __future__ import annotations

import json
import logging
import math
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort

from .batching import Batcher, BatchPolicy
from .model_config import ModelConfigError, TritonModelConfig, WarmupSample, completed_config, graph_mismatches

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


# What to do about skl2onnx's default ZipMap output (a list of {class: probability} maps).
ZIPMAP_HINT = (
    " (a scikit-learn classifier's ZipMap: convert it with skl2onnx's options={id(model): {'zipmap': False}} "
    "to get the probabilities as a tensor)"
)


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


def split_carriable(nodes: list[ort.NodeArg]) -> tuple[tuple[TensorSpec, ...], dict[str, str]]:
    """The graph tensors v2 can carry as TensorSpecs, and the others (sequences, maps, optional
    types, tensors of element types v2 and numpy lack) as {name: ONNX type}."""
    carriable = tuple(TensorSpec.from_node(n) for n in nodes if n.type in V2_DATATYPES)
    return carriable, {n.name: n.type for n in nodes if n.type not in V2_DATATYPES}


@dataclass
class OnnxModel:
    """An ONNX file served under `name`/`version`; `load()` builds and warms its session."""

    name: str
    version: str
    path: Path
    ort_threads: int = 1
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    # Graph inputs and outputs the v2 protocol cannot carry, {name: ONNX type}: not served, not
    # listed in metadata, never run (docs/models.md, "What v2 cannot carry").
    left_out_inputs: dict[str, str] = field(default_factory=dict)
    left_out_outputs: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    # Dynamic batching when the file does not say: (max batch size, max delay in µs, and the
    # single-run time in ms from which batching is worth its delay). See docs/models.md.
    batch_defaults: tuple[int, int, float] = (1, 0, 0.0)
    batch_policy: BatchPolicy = BatchPolicy(1, 0)
    warmup_ms: float = 0.0
    # The model folder's Triton config.pbtxt, when it has one: labels, batching and the row limit
    # come from it before the file's metadata (docs/models.md, "Triton's config.pbtxt").
    config: TritonModelConfig | None = None
    # Told of every counted run: (name, version, rows, seconds); the app hands in its metrics.
    on_run: Callable[[str, str, int, float], None] | None = field(default=None, repr=False)
    _session: ort.InferenceSession | None = field(default=None, repr=False)
    _batcher: Batcher | None = field(default=None, repr=False)
    _labels: tuple[tuple[dict, Any] | None, list[str] | None] = field(default=(None, None), repr=False, compare=False)
    _output_names: list[str] = field(default_factory=list, repr=False, compare=False)

    def load(self) -> None:
        """Build the onnxruntime session, read tensors and metadata, and run one warm-up."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.ort_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs, self.left_out_inputs = split_carriable(session.get_inputs())
        self.outputs, self.left_out_outputs = split_carriable(session.get_outputs())
        self._output_names = [spec.name for spec in self.outputs]  # every run asks for these
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        self._check_left_out()
        self._check_config()
        self._session = session
        self.warmup_ms = self._warm_up()
        self.batch_policy = self._choose_batch_policy()
        if self.batch_policy.enabled:
            self._batcher = Batcher(self.run, self.batch_policy)

    def _check_left_out(self) -> None:
        """Log in one line what v2 cannot carry; refuse a model none of whose outputs it can."""
        if not self.left_out_inputs and not self.left_out_outputs:
            return
        hint = ZIPMAP_HINT if any(t.startswith("seq(map(") for t in self.left_out_outputs.values()) else ""
        if not self.outputs:
            raise RuntimeError(
                f"none of its outputs can be carried by the v2 protocol: {_typed(self.left_out_outputs)}{hint}"
            )
        parts = [f"{kind} {_typed(left)}" for kind, left in
                 (("inputs", self.left_out_inputs), ("outputs", self.left_out_outputs)) if left]
        log.warning("model %s version %s: leaving out %s, which the v2 protocol cannot carry%s",
                    self.name, self.version, " and ".join(parts), hint)

    def _warm_up(self, runs: int = 3) -> float:
        """Run config.pbtxt's `model_warmup` samples (a failure refuses the version, as in Triton), else
        made-up inputs a few times; the best time of one run in ms (0 when made-up inputs fail).

        Made-up inputs (zeros, empty strings) may be invalid for a graph that runs well on real ones
        (token ids, indices, strings that must parse): their failure is a warning, not a refusal,
        unless the graph has inputs v2 cannot carry (then no request could ever run it).
        """
        if self.config is not None and self.config.warmups:
            best = float("inf")
            for sample in self.config.warmups:
                inputs = self._sample_inputs(sample)
                for _ in range(sample.count):
                    started = time.perf_counter()
                    try:
                        self._run_graph(inputs)  # not counted in the inference metrics
                    except Exception as err:
                        raise RuntimeError(f"config.pbtxt model_warmup {sample.name!r} failed: {_first_line(err)}") from None
                    best = min(best, (time.perf_counter() - started) * 1000)
            return best
        try:
            inputs, best = self._first_runnable_inputs(), float("inf")
        except Exception as err:
            if self.left_out_inputs:
                self._session = None
                raise RuntimeError(
                    f"its inputs {_typed(self.left_out_inputs)} cannot be carried by the v2 protocol and the graph "
                    f"does not run without them ({_first_line(err)})") from None
            log.warning("model %s version %s: loaded without a warm-up, made-up inputs (zeros, empty strings) do not "
                        "run (%s); give config.pbtxt model_warmup samples to warm it up", self.name, self.version,
                        _first_line(err))
            return 0.0
        for _ in range(runs):
            started = time.perf_counter()
            self._run_graph(inputs)  # not counted in the inference metrics
            best = min(best, (time.perf_counter() - started) * 1000)
        return best

    def _sample_inputs(self, sample: WarmupSample) -> dict[str, np.ndarray]:
        """A `model_warmup` sample's arrays, `batch_size` copies along the batch axis when the model batches."""
        batched = self.config is not None and self.config.max_batch_size > 0
        rng, arrays = np.random.default_rng(0), {}
        for given in sample.inputs:
            dtype = NUMPY_DTYPES[given.datatype]
            if given.kind == "file":
                array = _raw_array(given.data, given.datatype, given.dims, f"model_warmup {sample.name!r} input {given.name!r}")
            elif given.kind == "random" and dtype != np.object_:
                array = (rng.random(given.dims) * 10).astype(dtype) if dtype.kind != "b" else rng.random(given.dims) > 0.5
            else:  # zeros; a random BYTES tensor is empty strings too
                array = np.full(given.dims, "" if dtype == np.object_ else 0, dtype=dtype)
            arrays[given.name] = np.repeat(array[np.newaxis], sample.batch_size, axis=0) if batched else array
        return arrays

    def _check_config(self) -> None:
        """A config.pbtxt that disagrees with the graph refuses the version, as Triton refuses it."""
        if self.config is None:
            return
        problems = graph_mismatches(self.config, {s.name: (s.datatype, s.shape) for s in self.inputs},
                                    {s.name: (s.datatype, s.shape) for s in self.outputs})
        if problems:
            raise ModelConfigError(f"config.pbtxt does not fit {self.name}/{self.version}/model.onnx: "
                                   + "; ".join(problems))

    def _choose_batch_policy(self) -> BatchPolicy:
        """Batching per config.pbtxt's `dynamic_batching`, else the file's `max_batch_size`/
        `max_batch_delay_us` metadata, else the defaults.

        Without either, batching is on only for models whose single run takes at least the
        configured time: for small ones the delay costs more than the shared run saves.
        """
        if self.config is not None:
            batching = self.config.dynamic_batching
            if batching is None or self.config.max_batch_size < 2:
                return BatchPolicy(1, 0)  # as Triton: no dynamic_batching block, no batching
            return BatchPolicy(self.config.max_batch_size, batching.max_queue_delay_us)
        size, delay_us, min_ms = self.batch_defaults
        size = self._metadata_int("max_batch_size", size if self.warmup_ms >= min_ms else 1)
        delay_us = self._metadata_int("max_batch_delay_us", delay_us)
        if size > 1 and not self.batchable:
            log.info("model %s: not batching, its inputs and outputs are not all batch-first", self.name)
            size = 1
        return BatchPolicy(max(size, 1), max(delay_us, 0))

    def _metadata_int(self, key: str, default: int) -> int:
        raw = self.metadata.get(key)
        try:
            return default if raw is None else int(raw)
        except ValueError:
            log.warning("model %s: ignoring %s=%r, expected an integer", self.name, key, raw)
            return default

    @property
    def batchable(self) -> bool:
        """True when every input and output has a dynamic first axis, so rows can be stacked."""
        return all(spec.shape and spec.shape[0] == -1 for spec in self.inputs + self.outputs)

    def warmup_inputs(self, side: int = 1) -> dict[str, np.ndarray]:
        """Zeros (empty strings) of batch size 1 for every input, other free dimensions `side` long."""
        arrays = {}
        for spec in self.inputs:
            shape = tuple((1 if axis == 0 else side) if d < 0 else d for axis, d in enumerate(spec.shape))
            dtype = NUMPY_DTYPES.get(spec.datatype, np.float32)
            arrays[spec.name] = np.full(shape, "" if dtype == np.object_ else 0, dtype=dtype)
        return arrays

    def _first_runnable_inputs(self) -> dict[str, np.ndarray]:
        """Warm-up inputs the graph runs on: free sides of 1, else 32 or 224 (an image model's
        convolutions and pooling need room); the last failure is raised when none runs."""
        free_sides = any(d < 0 for spec in self.inputs for d in spec.shape[1:])
        *tries, last = (1, 32, 224) if free_sides else (1,)
        for side in tries:
            inputs = self.warmup_inputs(side)
            try:
                self._run_graph(inputs)
                return inputs
            except Exception:  # onnxruntime raises many types: try the next size
                continue
        inputs = self.warmup_inputs(last)
        self._run_graph(inputs)
        return inputs

    @property
    def ready(self) -> bool:
        return self._session is not None

    @property
    def max_rows(self) -> int | None:
        """The most rows one request may carry (Triton's max_batch_size): config.pbtxt's when above 0,
        else the file's `max_batch_size` metadata when above 0, else no limit."""
        if self.config is not None:
            return self.config.max_batch_size if self.config.max_batch_size > 0 else None
        return row_limit(self.metadata)

    @property
    def labels(self) -> list[str] | None:
        """Class labels from config.pbtxt's labels file, else the `labels` metadata key (a JSON list)."""
        # Read once per metadata and config, not on every request (a JSON parse: 9 µs a request).
        key = (self.metadata, self.config)
        if self._labels[0] is None or self._labels[0][0] is not key[0] or self._labels[0][1] is not key[1]:
            if self.config is not None and self.config.labels is not None:
                labels = list(self.config.labels)
            else:
                labels = labels_from_metadata(self.metadata)
            self._labels = (key, labels)
        labels = self._labels[1]
        return list(labels) if labels is not None else None

    @property
    def settings(self) -> dict[str, str]:
        """The file's metadata_props, overridden by config.pbtxt's `parameters` (string values): where
        the image API reads `preprocessing`, `output_kind` and the preset's `image_*` parameters."""
        if self.config is None or not self.config.parameters:
            return self.metadata
        return {**self.metadata, **dict(self.config.parameters)}

    @property
    def preprocessing(self) -> str | None:
        """The image preprocessing preset named in settings (e.g. `mnist-digit`)."""
        return self.settings.get("preprocessing") or None

    @property
    def output_kind(self) -> str:
        """`probabilities` (softmax in the graph) or `logits`."""
        return self.settings.get("output_kind", "probabilities")

    @property
    def served_config(self):
        """The model configuration served (an `inference.ModelConfig`): config.pbtxt as written, else
        completed from the graph, with the row limit and dynamic batching this server applies."""
        tensors = [[(spec.name, spec.datatype, spec.shape) for spec in specs] for specs in (self.inputs, self.outputs)]
        delay = self.batch_policy.max_delay_us if self.batch_policy.enabled else None
        return completed_config(self.config, self.name, *tensors, max_batch_size=self.max_rows or 0, batch_delay_us=delay)

    def take_queue_seconds(self) -> float:
        """Seconds this thread's requests waited for a batch since the last call (Triton's queue time)."""
        return self._batcher.take_waited() if self._batcher is not None else 0.0

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on named arrays and return every output by name (batched when enabled)."""
        if self._batcher is not None:
            return self._batcher.predict(inputs)
        return self.run(inputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph once on exactly these arrays, with no batching; record time and batch size."""
        started = time.perf_counter()
        outputs = self._run_graph(inputs)
        if self.on_run is not None:
            rows = next(iter(inputs.values())).shape[:1] if inputs else ()
            self.on_run(self.name, self.version, rows[0] if rows else 1, time.perf_counter() - started)
        return outputs

    def _run_graph(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeError(f"model {self.name} version {self.version} is not loaded")
        names = self._output_names
        results = self._session.run(names, inputs)
        return dict(zip(names, results))


def _first_line(err: BaseException) -> str:
    """An exception's first line, short enough for a log line or a client's error."""
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def _raw_array(data: bytes, datatype: str, dims: tuple[int, ...], what: str) -> np.ndarray:
    """A raw row-major tensor file (Triton's warm-up files): little-endian values, or BYTES as
    4-byte little-endian lengths each followed by its bytes."""
    count = math.prod(dims)
    if datatype == "BYTES":
        items, offset = [], 0
        while offset + 4 <= len(data) and len(items) < count:
            (length,) = struct.unpack_from("<I", data, offset)
            items.append(data[offset + 4:offset + 4 + length])
            offset += 4 + length
        if len(items) != count or offset != len(data):
            raise ModelConfigError(f"{what}: the file does not hold {count} length-prefixed BYTES elements")
        try:  # onnxruntime's string tensors take str, as requests' BYTES are decoded
            return np.array([item.decode("utf-8") for item in items], dtype=object).reshape(dims)
        except UnicodeDecodeError:
            raise ModelConfigError(f"{what}: a BYTES element is not UTF-8 text") from None
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    if len(data) != count * dtype.itemsize:
        raise ModelConfigError(f"{what}: the file has {len(data)} bytes, {list(dims)} {datatype} needs {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(NUMPY_DTYPES[datatype])


def _typed(left_out: dict[str, str]) -> str:
    """`{name: type}` as `'name' (type), ...` for a log line or an error."""
    return ", ".join(f"{name!r} ({kind})" for name, kind in left_out.items())


def row_limit(metadata: dict[str, str]) -> int | None:
    """The model file's `max_batch_size` metadata (Triton's: most rows in one request), when it states one."""
    raw = metadata.get("max_batch_size")
    try:
        value = int(raw) if raw is not None else 0
    except ValueError:
        return None
    return value if value > 0 else None
