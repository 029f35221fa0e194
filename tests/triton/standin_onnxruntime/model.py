"""STAND-IN for Triton's C++ onnxruntime backend, used only by `make triton-test`.

The `nvidia-pytriton` wheel ships a real `tritonserver` with the Python backend but no onnxruntime
backend. Triton runs a *Python-based backend* when a backend directory holds `<name>/model.py`
beside the Python backend's files, so this file, laid out as `backends/onnxruntime/model.py`,
serves every model whose backend is `onnxruntime` (a `model.onnx` without `config.pbtxt`, or
`platform: "onnxruntime_onnx"`). It copies what the C++ backend documents and does
(triton-inference-server/onnxruntime_backend, src/onnxruntime.cc): auto-complete of inputs,
outputs and `max_batch_size` from the graph, dynamic batching turned on with it, one
onnxruntime run for the requests Triton's scheduler hands over together. It is not the C++
backend: its speed, threading and memory are onnxruntime's Python API's, and it knows no
execution accelerators or sequence batching; string tensors go to onnxruntime as `str` (UTF-8).
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# Triton's `--backend-config=default-max-batch-size` default; the C++ backend auto-fills it.
DEFAULT_MAX_BATCH_SIZE = 4
MODEL_FILE = "model.onnx"

ONNX_TO_TRITON = {
    "tensor(bool)": "TYPE_BOOL", "tensor(uint8)": "TYPE_UINT8", "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32", "tensor(uint64)": "TYPE_UINT64", "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16", "tensor(int32)": "TYPE_INT32", "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16", "tensor(float)": "TYPE_FP32", "tensor(double)": "TYPE_FP64",
}


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One intra-op thread per instance, as this project's server runs it, so the peers compare fairly.
    options.intra_op_num_threads = int(os.environ.get("STANDIN_ORT_THREADS", "1"))
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _dims(shape) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


class TritonPythonModel:
    """The stand-in onnxruntime backend: auto-complete from the graph, then batched runs."""

    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        """Fill inputs, outputs, max_batch_size and dynamic batching from the ONNX graph."""
        config = auto_complete_model_config.as_dict()
        if config.get("input") and config.get("output"):
            return auto_complete_model_config  # the C++ backend skips auto-complete then too
        filename = config.get("default_model_filename") or MODEL_FILE
        session = _session(os.path.join(pb_utils.get_model_dir(), filename))
        inputs = [(i.name, i.type, _dims(i.shape)) for i in session.get_inputs()]
        outputs = [(o.name, o.type, _dims(o.shape)) for o in session.get_outputs()]
        can_batch = all(dims and dims[0] == -1 for _, _, dims in inputs + outputs)
        max_batch_size = config.get("max_batch_size", 0)
        if can_batch:
            if max_batch_size == 0:
                max_batch_size = DEFAULT_MAX_BATCH_SIZE
                auto_complete_model_config.set_max_batch_size(max_batch_size)
            if max_batch_size > 1 and "sequence_batching" not in config:
                auto_complete_model_config.set_dynamic_batching()
        elif max_batch_size != 0:
            raise pb_utils.TritonModelException(
                f"autofill failed for model '{config['name']}': model does not support batching "
                "while non-zero max_batch_size is specified")
        skip = 1 if max_batch_size > 0 else 0
        for name, onnx_type, dims in inputs:
            auto_complete_model_config.add_input(
                {"name": name, "data_type": ONNX_TO_TRITON[onnx_type], "dims": dims[skip:] or [1]})
        for name, onnx_type, dims in outputs:
            auto_complete_model_config.add_output(
                {"name": name, "data_type": ONNX_TO_TRITON[onnx_type], "dims": dims[skip:] or [1]})
        return auto_complete_model_config

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        filename = config.get("default_model_filename") or MODEL_FILE
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        self.session = _session(path)
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.batching = config.get("max_batch_size", 0) > 0

    def execute(self, requests):
        """Run the requests Triton hands over as one onnxruntime call when the model batches.

        If that joint run fails, each request runs alone, so only the bad one gets the error.
        """
        feeds = [{name: _text(pb_utils.get_input_tensor_by_name(r, name).as_numpy())
                  for name in self.input_names} for r in requests]
        results = None
        if self.batching and len(requests) > 1 and _same_shapes(feeds):
            try:
                joined = self.session.run(self.output_names,
                                          {n: np.concatenate([f[n] for f in feeds]) for n in self.input_names})
                bounds = np.cumsum([len(f[self.input_names[0]]) for f in feeds])[:-1]
                results = list(zip(*(np.split(r, bounds) for r in joined)))
            except Exception:  # onnxruntime's own error types: rerun one by one below
                results = None
        if results is None:
            results = [self._run_one(feed) for feed in feeds]
        return [arrays if isinstance(arrays, pb_utils.InferenceResponse) else pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(_bytes(array)))
                            for name, array in zip(self.output_names, arrays)]) for arrays in results]

    def _run_one(self, feed: dict):
        try:
            return self.session.run(self.output_names, feed)
        except Exception as error:  # the client gets onnxruntime's reason, as from the C++ backend
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime: {error}"))


def _text(array: np.ndarray) -> np.ndarray:
    """Triton hands BYTES tensors over as `bytes` objects; onnxruntime's string tensors take `str`."""
    if array.dtype != np.object_:
        return array
    return np.vectorize(lambda item: item.decode("utf-8", "surrogateescape") if isinstance(item, bytes) else item,
                        otypes=[object])(array)


def _bytes(array: np.ndarray) -> np.ndarray:
    """onnxruntime's string outputs (`str`) as the `bytes` Triton sends for BYTES."""
    if array.dtype != np.object_:
        return array
    return np.vectorize(lambda item: item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item,
                        otypes=[object])(array)


def _same_shapes(feeds: list[dict]) -> bool:
    first = {n: a.shape[1:] for n, a in feeds[0].items()}
    return all({n: a.shape[1:] for n, a in f.items()} == first for f in feeds[1:])
