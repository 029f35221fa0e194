"""Model repositories and helpers for the Open Inference Protocol (v2) tests: real ONNX files, real runs."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from server.runtime.model_config import read_model_config
from tests.conftest import COMMITTED_MNIST, COMMITTED_REPOSITORY, MNIST_SAMPLE, ROOT  # noqa: F401 (re-exported)
from tests.onnx_factory import write_classifier

DIGIT_LABELS = [str(i) for i in range(10)]

# ONNX element types by v2 datatype name: the identity model has one input and output per type.
V2_ONNX_TYPES = {
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "INT8": TensorProto.INT8, "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16, "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64, "BOOL": TensorProto.BOOL, "BYTES": TensorProto.STRING,
}
NUMPY_TYPES = {
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
    "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "BOOL": np.bool_, "BYTES": np.object_,
}
# The second classifier: another input name, layout and class count, served with no code change.
OTHER = {"input_name": "pixels", "input_shape": ("batch", 3, 8, 8), "num_classes": 5, "output_name": "scores"}


def write_identity(path: Path, datatypes: list[str], shape: tuple = ("N", 3)) -> Path:
    """Write a model whose input `in_<DT>` comes back unchanged as `out_<DT>`, one per v2 datatype."""
    nodes, inputs, outputs = [], [], []
    for datatype in datatypes:
        nodes.append(helper.make_node("Identity", [f"in_{datatype}"], [f"out_{datatype}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{datatype}", V2_ONNX_TYPES[datatype], list(shape)))
        outputs.append(helper.make_tensor_value_info(f"out_{datatype}", V2_ONNX_TYPES[datatype], list(shape)))
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def write_repository(root: Path) -> Path:
    """`mnist` v1 and v2 (random weights), `other` (a different classifier), `typed` (every datatype), `adder`."""
    write_classifier(root / "mnist" / "1" / "model.onnx", labels=DIGIT_LABELS, seed=1)
    write_classifier(root / "mnist" / "2" / "model.onnx", labels=DIGIT_LABELS, seed=2)
    write_classifier(root / "other" / "1" / "model.onnx", preprocessing=None, **OTHER)
    write_identity(root / "typed" / "1" / "model.onnx", list(V2_ONNX_TYPES))
    write_adder(root / "adder" / "1" / "model.onnx")
    return root


def write_adder(path: Path) -> Path:
    """Write a model adding inputs `a` and `b`, both float32 [N, M]: their shapes must agree at run time."""
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", "M"]) for name in ("a", "b")]
    output = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", "M"])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"])], "adder", inputs, [output])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def run_directly(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference: onnxruntime run on the same file, with no server in between."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def sample_values(datatype: str, rows: int = 2, seed: int = 0) -> np.ndarray:
    """A [rows, 3] array of `datatype` reaching towards that type's extremes."""
    rng = np.random.default_rng(seed)
    dtype = NUMPY_TYPES[datatype]
    if datatype == "BYTES":
        return np.array([[f"w{r}{c}é" for c in range(3)] for r in range(rows)], dtype=object)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=(rows, 3)).astype(bool)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=(rows, 3), dtype=dtype, endpoint=True)
        values.flat[0], values.flat[-1] = info.min, info.max
        return values
    return (rng.standard_normal((rows, 3)) * 1000).astype(dtype)


def binary_request(header: dict, chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A body in the binary tensor data extension's layout and its Inference-Header-Content-Length."""
    text = json.dumps(header).encode()
    return text + b"".join(chunks), {"Inference-Header-Content-Length": str(len(text))}


def decode_response(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """Every output of a v2 response as an array, reading binary outputs the way tritonclient does."""
    size = len(body) if header_length is None else int(header_length)
    header = json.loads(body[:size])
    arrays, offset = {}, size
    for output in header["outputs"]:
        dtype = NUMPY_TYPES[output["datatype"]]
        binary_size = output.get("parameters", {}).get("binary_data_size")
        if binary_size is None:
            arrays[output["name"]] = np.array(output["data"], dtype=dtype).reshape(output["shape"])
            continue
        chunk = body[offset:offset + binary_size]
        offset += binary_size
        if output["datatype"] == "BYTES":
            arrays[output["name"]] = np.array(_split_bytes(chunk), dtype=object).reshape(output["shape"])
        else:
            arrays[output["name"]] = np.frombuffer(chunk, dtype=np.dtype(dtype).newbyteorder("<")).reshape(output["shape"])
    assert offset == len(body), "binary outputs must fill the body exactly"
    return arrays


def _split_bytes(chunk: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(chunk):
        length = int.from_bytes(chunk[offset:offset + 4], "little")
        items.append(chunk[offset + 4:offset + 4 + length])
        offset += 4 + length
    return items


def mnist_sample(count: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` real MNIST test digits as float32 [count,1,28,28] in [0,1], and their labels."""
    with np.load(MNIST_SAMPLE) as sample:
        images, labels = sample["images"][:count], sample["labels"][:count]
    return (images.astype(np.float32) / 255.0)[:, None], labels


def committed_model_files(root: Path = ROOT) -> list[Path]:
    """Every models/<name>/<version>/model.onnx that git tracks in the checkout at `root`: a model
    exported since (`make export VERSION=1 NAME=mnist-fast`) is not a committed one. Outside a git
    checkout (an unpacked archive), every such file in models/."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", "models"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=30).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        return sorted((root / "models").glob("*/*/model.onnx"))
    paths = (root / name for name in listed if name)
    return sorted(path for path in paths if path.match("models/*/*/model.onnx") and path.exists())


def committed_digit_models(root: Path = ROOT) -> list[tuple[str, str, Path]]:
    """(name, version, path) of every committed model version that serves (its folder's config.pbtxt
    version_policy says which) and whose preprocessing preset is `mnist-digit`."""
    found = []
    for path in committed_model_files(root):
        config = read_model_config(path.parent.parent)
        on_disk = [p.name for p in path.parent.parent.iterdir() if p.name.isdigit()]
        if config is not None and int(path.parent.name) not in config.version_policy.select(on_disk):
            continue
        metadata = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
        if metadata.get("preprocessing") == "mnist-digit":
            found.append((path.parent.parent.name, path.parent.name, path))
    return found
