"""Triton's `config.pbtxt` (and `labels.txt`) for a model folder, written from its ONNX file.

`write_triton_config(repo / name, repo / name / version / "model.onnx")` is what the export
pipeline calls after writing a version: platform `onnxruntime_onnx`, `max_batch_size`, inputs and
outputs from the graph, `version_policy` (all versions by default, as this server serves them),
`label_filename` with the labels from the file's metadata, and `dynamic_batching` only when asked
or when the file's `max_batch_size` metadata turns batching on (measured in docs/models.md: off is
best for the digit model). The text is parsed back by `server.runtime.model_config` before anything is
written, so a file this writes is one the server and Triton both read.

Reads the graph with onnxruntime (not `onnx`), so the Triton test environment can use it too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import onnxruntime as ort
from google.protobuf import text_format

from server.runtime.tensor_types import V2_DATATYPES, TensorSpec, labels_from_metadata
from training.atomic import write_atomically
from server.runtime.model_config import (CONFIG_FILE, ONNX_PLATFORM, ModelConfigError, TritonModelConfig, VersionPolicy,
                                 datatype_number, model_config_class, parse_model_config)

LABELS_FILE = "labels.txt"
# Rows a request may carry when the file says nothing: Triton refuses larger requests, this
# server's export parity check runs batches up to 64.
DEFAULT_MAX_BATCH_SIZE = 64


class TritonConfigError(ValueError):
    """The ONNX file cannot be described by a `config.pbtxt` as asked."""


def read_graph(onnx_file: Path) -> tuple[list[TensorSpec], list[TensorSpec], dict[str, str]]:
    """The graph's inputs, outputs and metadata_props, read through onnxruntime."""
    try:
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable files
        raise TritonConfigError(f"{onnx_file}: onnxruntime cannot load it: {error}") from None

    def tensors(nodes) -> list[TensorSpec]:
        specs = [TensorSpec.from_node(node) for node in nodes]
        for spec in specs:
            if spec.datatype not in V2_DATATYPES.values():
                raise TritonConfigError(f"{onnx_file}: {spec.name!r} has type {spec.datatype}, which Triton has no name for")
        return specs

    return tensors(session.get_inputs()), tensors(session.get_outputs()), dict(session.get_modelmeta().custom_metadata_map)


def config_text(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *, max_batch_size: int,
                version_policy: VersionPolicy = VersionPolicy("all"), label_output: str | None = None,
                dynamic_batching: bool = False, max_queue_delay_us: int = 0) -> str:
    """The `config.pbtxt` text for a model with these graph tensors."""
    can_batch = all(t.shape and t.shape[0] == -1 for t in (*inputs, *outputs))
    if max_batch_size > 0 and not can_batch:
        raise TritonConfigError(f"model {name!r}: max_batch_size {max_batch_size} needs a dynamic first axis "
                                "on every input and output")
    if dynamic_batching and max_batch_size < 2:
        raise TritonConfigError(f"model {name!r}: dynamic batching needs max_batch_size of 2 or more")
    message = model_config_class()(name=name, platform=ONNX_PLATFORM, max_batch_size=max_batch_size)
    skip = 1 if max_batch_size > 0 else 0
    for tensor in inputs:
        message.input.add(name=tensor.name, data_type=datatype_number(tensor.datatype), dims=tensor.shape[skip:] or [1])
    for tensor in outputs:
        output = message.output.add(name=tensor.name, data_type=datatype_number(tensor.datatype),
                                    dims=tensor.shape[skip:] or [1])
        if tensor.name == label_output:
            output.label_filename = LABELS_FILE
    if version_policy.kind == "all":
        message.version_policy.all.SetInParent()
    elif version_policy.kind == "specific":
        message.version_policy.specific.versions.extend(version_policy.versions)
    else:
        message.version_policy.latest.num_versions = version_policy.num_versions
    if dynamic_batching:
        message.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    return text_format.MessageToString(message)


def write_triton_config(model_dir: Path, onnx_file: Path, *, max_batch_size: int | None = None,
                        dynamic_batching: bool | None = None, max_queue_delay_us: int | None = None,
                        version_policy: VersionPolicy = VersionPolicy("all"),
                        labels: Sequence[str] | None = None) -> TritonModelConfig:
    """Write `model_dir/config.pbtxt` (and `labels.txt`) describing `onnx_file`; return it as read back.

    Unset options come from the file's metadata as the server reads them: `labels`,
    `max_batch_size` (more than 1 turns dynamic batching on) and `max_batch_delay_us`. Without
    them: DEFAULT_MAX_BATCH_SIZE rows a request, no dynamic batching. Nothing is written when
    the result would not read back.
    """
    model_dir = Path(model_dir)
    inputs, outputs, metadata = read_graph(onnx_file)
    can_batch = all(t.shape and t.shape[0] == -1 for t in (*inputs, *outputs))
    from_metadata = _int(metadata, "max_batch_size")
    if max_batch_size is None:
        max_batch_size = (from_metadata or DEFAULT_MAX_BATCH_SIZE) if can_batch else 0
    if dynamic_batching is None:
        dynamic_batching = bool(from_metadata and from_metadata > 1 and max_batch_size > 1)
    if max_queue_delay_us is None:
        max_queue_delay_us = _int(metadata, "max_batch_delay_us") or 0
    labels = list(labels) if labels is not None else labels_from_metadata(metadata)
    label_output = _label_output(outputs, labels) if labels else None
    text = config_text(model_dir.name, inputs, outputs, max_batch_size=max_batch_size,
                       version_policy=version_policy, label_output=label_output,
                       dynamic_batching=dynamic_batching, max_queue_delay_us=max_queue_delay_us)
    labels_text = "".join(f"{label}\n" for label in labels) if label_output else None
    _check_reads_back(text, labels_text, model_dir)
    if labels_text is not None:
        write_atomically(model_dir / LABELS_FILE, labels_text.encode())
    write_atomically(model_dir / CONFIG_FILE, text.encode())
    return parse_model_config(text, model_dir)


def _label_output(outputs: Sequence[TensorSpec], labels: Sequence[str]) -> str | None:
    """The output the labels name the classes of: the first whose last axis has one entry per label."""
    for tensor in outputs:
        if tensor.shape and tensor.shape[-1] == len(labels):
            return tensor.name
    raise TritonConfigError(f"{len(labels)} labels, but no output has a last axis of that size "
                            f"({', '.join(f'{t.name} {list(t.shape)}' for t in outputs)})")


def _check_reads_back(text: str, labels_text: str | None, model_dir: Path) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / model_dir.name
        folder.mkdir()
        if labels_text is not None:
            (folder / LABELS_FILE).write_text(labels_text, encoding="utf-8")
        try:
            parse_model_config(text, folder)
        except ModelConfigError as error:
            raise TritonConfigError(f"the config written would not read back: {error}") from None


def _int(metadata: Mapping[str, str], key: str) -> int | None:
    try:
        return int(metadata[key])
    except (KeyError, ValueError):
        return None

