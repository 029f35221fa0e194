"""Triton's `config.pbtxt`, read with protobuf's `text_format` and Triton's own `model_config.proto`.

Pure: no Flask, no onnxruntime. `read_model_config(model_dir)` turns `<model>/config.pbtxt` (and
the labels file it names) into a small `TritonModelConfig`, or raises `ModelConfigError` with the
file and the reason. What this server does not use is listed in `ignored`, for one log line.

The message classes come from `server/proto/model_config.binpb`, a descriptor set compiled from
Triton's `model_config.proto` (server/proto/README.md says which commit and the command), loaded
into a private descriptor pool: the same `inference.ModelConfig` names that `tritonclient.grpc`
registers in protobuf's default pool cannot clash with it in one process.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, text_format

from .layout import MODEL_FILE

CONFIG_FILE = "config.pbtxt"
DESCRIPTOR_SET = Path(__file__).parents[1] / "proto" / "model_config.binpb"
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
# Top-level fields this server acts on; any other field set in a file is reported as ignored.
UNDERSTOOD = frozenset({
    "name", "platform", "backend", "max_batch_size", "version_policy", "input", "output",
    "dynamic_batching", "default_model_filename", "parameters", "model_warmup",
})
UNDERSTOOD_TENSOR = frozenset({"name", "data_type", "dims", "label_filename"})
UNDERSTOOD_BATCHING = frozenset({"max_queue_delay_microseconds", "preferred_batch_size"})
# Fields whose meaning this server cannot honour: serving the model without them would be wrong.
REFUSED = {
    "sequence_batching": "stateful (sequence) models are not served here",
    "ensemble_scheduling": "ensembles are not served here",
    "batch_input": "batch inputs are not served here",
    "batch_output": "batch outputs are not served here",
}
REFUSED_TENSOR = {
    "reshape": "reshape is not applied here",
    "is_shape_tensor": "shape tensors are not served here",
}


class ModelConfigError(ValueError):
    """A `config.pbtxt` (or the labels file it names) that cannot be served as written."""


@dataclass(frozen=True)
class ConfigTensor:
    """An input or output as the file declares it: dims exclude the batch axis when batching."""

    name: str
    datatype: str  # v2 name: FP32, INT64, BYTES...
    dims: tuple[int, ...]
    label_filename: str = ""
    labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk serve: the `latest` n, `all`, or `specific` ones (Triton's default: latest 1)."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: Iterable[int | str]) -> list[int]:
        """The versions of `available` this policy serves, lowest first."""
        found = sorted({int(v) for v in available})
        if self.kind == "all":
            return found
        if self.kind == "specific":
            return [v for v in found if v in self.versions]
        return found[-self.num_versions:]


@dataclass(frozen=True)
class DynamicBatching:
    """`dynamic_batching { ... }`: present means on; the delay a batch waits for company."""

    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class WarmupInput:
    """One input of a `model_warmup` sample: zeros, random values, or a raw file's bytes."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    kind: str  # "zero", "random" or "file"
    data: bytes = b""  # the file's raw row-major contents (BYTES: 4-byte length, then the bytes)


@dataclass(frozen=True)
class WarmupSample:
    """A `model_warmup` entry: its inputs, repeated `batch_size` times along a new batch axis, run `count` times."""

    name: str
    batch_size: int
    count: int
    inputs: tuple[WarmupInput, ...]


@dataclass(frozen=True)
class TritonModelConfig:
    """What this server takes from a `config.pbtxt`."""

    name: str
    platform: str
    max_batch_size: int
    version_policy: VersionPolicy
    inputs: tuple[ConfigTensor, ...]
    outputs: tuple[ConfigTensor, ...]
    dynamic_batching: DynamicBatching | None = None
    default_model_filename: str = MODEL_FILE
    ignored: tuple[str, ...] = field(default=())
    # `parameters { key: ... value { string_value: ... } }`: read like the ONNX file's metadata_props.
    parameters: tuple[tuple[str, str], ...] = ()
    warmups: tuple[WarmupSample, ...] = ()
    # The whole parsed file (an `inference.ModelConfig` of `model_config_class()`), served as written
    # by the model configuration extension; compared, so that any change to the file reloads.
    message: Any = field(default=None, repr=False, hash=False)

    @property
    def labels(self) -> tuple[str, ...] | None:
        """The labels of the first output that names a labels file (the classification output)."""
        return next((o.labels for o in self.outputs if o.labels is not None), None)

    @property
    def label_filename(self) -> str:
        """The labels file of the classification output, or ''."""
        return next((o.label_filename for o in self.outputs if o.label_filename), "")

    def full_shape(self, tensor: ConfigTensor) -> tuple[int, ...]:
        """The tensor's shape as v2 metadata shows it: -1 in front when the model batches."""
        return (-1, *tensor.dims) if self.max_batch_size > 0 else tensor.dims


@functools.cache
def model_config_class() -> type:
    """Triton's `inference.ModelConfig` message class, built in a private descriptor pool."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def datatype_name(value: int) -> str:
    """`TYPE_FP32` (as an enum number) -> `FP32`, the v2 protocol's name; TYPE_STRING is BYTES."""
    name = model_config_class().DESCRIPTOR.file.enum_types_by_name["DataType"].values_by_number[value].name
    name = name.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def datatype_number(v2_name: str) -> int:
    """`FP32` -> the enum number of `TYPE_FP32` (BYTES -> TYPE_STRING)."""
    enum = model_config_class().DESCRIPTOR.file.enum_types_by_name["DataType"]
    return enum.values_by_name["TYPE_STRING" if v2_name == "BYTES" else f"TYPE_{v2_name}"].number


def parse_model_config(text: str, model_dir: Path | None = None, source: str = CONFIG_FILE) -> TritonModelConfig:
    """Parse and check the text of a `config.pbtxt`; labels files are read from `model_dir`.

    `model_dir`'s folder name is the model's name (a `name` in the file must match it, as Triton
    requires). Raises ModelConfigError naming `source` and what is wrong.
    """
    message = model_config_class()()
    try:
        # Python's protobuf only warns on a string's invalid escape ("\\m") where Triton's parser
        # refuses the file: refuse it too, rather than serve what a warning left of the string.
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ModelConfigError(f"{source}: not a valid model configuration: {error}") from None
    except DeprecationWarning as warning:
        raise ModelConfigError(f"{source}: not a valid model configuration: a string has an invalid escape "
                               f"sequence ({warning})") from None
    return _from_message(message, model_dir, source)


def read_model_config(model_dir: Path) -> TritonModelConfig | None:
    """`<model_dir>/config.pbtxt` read and checked, or None when the model has none."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ModelConfigError(f"{path}: cannot be read: {error}") from None
    return parse_model_config(text, Path(model_dir), source=str(path))


def completed_config(config: TritonModelConfig | None, name: str, inputs: Iterable[tuple[str, str, Iterable[int]]],
                     outputs: Iterable[tuple[str, str, Iterable[int]]], max_batch_size: int,
                     batch_delay_us: int | None = None) -> Any:
    """The configuration a model is served with, as an `inference.ModelConfig` message: its
    `config.pbtxt` as written, completed from the graph's (name, v2 datatype, shape) tensors as
    Triton's ONNX auto-complete does (name, platform and backend, version policy, the inputs and
    outputs the file leaves out). Without a file, what this server applies: every version
    (`all`), `max_batch_size` (0 when nothing limits the rows: the batch axis stays in `dims`) and
    dynamic batching after `batch_delay_us` (None when off)."""
    message = model_config_class()()
    if config is not None and config.message is not None:
        message.CopyFrom(config.message)
    else:
        message.max_batch_size = max_batch_size
        if max_batch_size > 0 and batch_delay_us is not None:
            message.dynamic_batching.max_queue_delay_microseconds = batch_delay_us
    message.name = name
    message.platform = message.platform or ONNX_PLATFORM
    message.backend = message.backend or ONNX_BACKEND
    message.default_model_filename = message.default_model_filename or MODEL_FILE
    if not message.HasField("version_policy"):
        if config is None:  # without a file every version on disk serves here (Triton would serve latest 1)
            message.version_policy.all.SetInParent()
        else:
            message.version_policy.latest.num_versions = 1
    if not message.instance_group:
        group = message.instance_group.add(name=name, count=1)
        group.kind = group.KIND_CPU
    for declared, graph in ((message.input, inputs), (message.output, outputs)):
        named = {tensor.name for tensor in declared}
        for tensor_name, datatype, shape in graph:
            if tensor_name in named:
                continue
            shape = [d if d is not None and d >= 0 else -1 for d in shape]
            if message.max_batch_size > 0:
                shape = shape[1:]
            declared.add(name=tensor_name, data_type=datatype_number(datatype), dims=shape)
    return message


def config_json(message: Any) -> dict:
    """A ModelConfig message in the JSON Triton's HTTP API answers: field names as in the .proto,
    every field shown, enums by name, 64-bit integers as numbers."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True, unquote_int64_if_possible=True)


def graph_mismatches(config: TritonModelConfig, inputs: Mapping[str, tuple[str, Iterable[int]]],
                     outputs: Mapping[str, tuple[str, Iterable[int]]]) -> list[str]:
    """Where the file disagrees with the ONNX graph's {name: (v2 datatype, shape)}; empty when it agrees.

    Graph shapes use -1 (or any negative) for a dynamic axis; a -1 in the file accepts any size.
    """
    problems = []
    for kind, declared, graph in (("input", config.inputs, inputs), ("output", config.outputs, outputs)):
        for tensor in declared:
            if tensor.name not in graph:
                problems.append(f"{kind} {tensor.name!r} is not in the graph (it has {', '.join(sorted(graph))})")
                continue
            datatype, shape = graph[tensor.name]
            shape = tuple(-1 if d is None or d < 0 else d for d in shape)
            if datatype != tensor.datatype:
                problems.append(f"{kind} {tensor.name!r} is {datatype} in the graph, {tensor.datatype} in the file")
            if config.max_batch_size > 0:
                if not shape or shape[0] != -1:
                    problems.append(f"{kind} {tensor.name!r} has no dynamic first axis, so max_batch_size "
                                    f"{config.max_batch_size} cannot batch it (set max_batch_size: 0)")
                    continue
                shape = shape[1:]
            if len(shape) != len(tensor.dims) or any(d != g and d != -1 and g != -1 for d, g in zip(tensor.dims, shape)):
                problems.append(f"{kind} {tensor.name!r} has dims {list(tensor.dims)} in the file, "
                                f"{list(shape)} in the graph{' (less the batch axis)' if config.max_batch_size > 0 else ''}")
    if config.inputs and {t.name for t in config.inputs} != set(inputs):
        missing = sorted(set(inputs) - {t.name for t in config.inputs})
        if missing:
            problems.append(f"graph input(s) {', '.join(missing)} missing from the file")
    return problems


def _from_message(message, model_dir: Path | None, source: str) -> TritonModelConfig:
    folder_name = model_dir.name if model_dir is not None else ""
    if message.name and folder_name and message.name != folder_name:
        raise ModelConfigError(f"{source}: name {message.name!r} does not match the model's folder {folder_name!r}")
    if message.platform not in ("", ONNX_PLATFORM) or message.backend not in ("", ONNX_BACKEND):
        what = message.platform or message.backend
        raise ModelConfigError(f"{source}: platform/backend {what!r} is not ONNX: this server runs only "
                               f"{ONNX_PLATFORM!r} models")
    if message.default_model_filename not in ("", MODEL_FILE):
        raise ModelConfigError(f"{source}: default_model_filename {message.default_model_filename!r}: "
                               f"this server reads only {MODEL_FILE}")
    if message.max_batch_size < 0:
        raise ModelConfigError(f"{source}: max_batch_size must be 0 or more, got {message.max_batch_size}")
    set_fields = {f.name for f, _ in message.ListFields()}
    for name, reason in REFUSED.items():
        if name in set_fields:
            raise ModelConfigError(f"{source}: {name}: {reason}")
    ignored = sorted(set_fields - UNDERSTOOD)
    inputs = tuple(_tensor(t, "input", model_dir, source, ignored) for t in message.input)
    outputs = tuple(_tensor(t, "output", model_dir, source, ignored) for t in message.output)
    for kind, tensors in (("input", inputs), ("output", outputs)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise ModelConfigError(f"{source}: {kind} names repeat: {names}")
    batching = None
    if message.HasField("dynamic_batching"):
        db = message.dynamic_batching
        if any(size <= 0 for size in db.preferred_batch_size):
            raise ModelConfigError(f"{source}: dynamic_batching.preferred_batch_size must be positive")
        if message.max_batch_size == 0:
            raise ModelConfigError(f"{source}: dynamic_batching needs max_batch_size > 0")
        ignored += [f"dynamic_batching.{f.name}" for f, _ in db.ListFields() if f.name not in UNDERSTOOD_BATCHING]
        batching = DynamicBatching(db.max_queue_delay_microseconds, tuple(db.preferred_batch_size))
    return TritonModelConfig(
        name=message.name or folder_name,
        parameters=tuple(sorted((key, value.string_value) for key, value in message.parameters.items())),
        warmups=tuple(_warmup(sample, message.max_batch_size, model_dir, source) for sample in message.model_warmup),
        message=message,
        platform=ONNX_PLATFORM,
        max_batch_size=message.max_batch_size,
        version_policy=_version_policy(message, source),
        inputs=inputs,
        outputs=outputs,
        dynamic_batching=batching,
        default_model_filename=message.default_model_filename or MODEL_FILE,
        ignored=tuple(sorted(set(ignored))),
    )


def _version_policy(message, source: str) -> VersionPolicy:
    if not message.HasField("version_policy"):
        return VersionPolicy()
    policy = message.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        versions = tuple(sorted(set(policy.specific.versions)))
        if not versions or versions[0] < 1:
            raise ModelConfigError(f"{source}: version_policy.specific needs versions of 1 or more, got {list(versions)}")
        return VersionPolicy("specific", versions=versions)
    if kind == "latest" and policy.latest.num_versions < 1:
        raise ModelConfigError(f"{source}: version_policy.latest.num_versions must be 1 or more")
    return VersionPolicy("latest", policy.latest.num_versions if kind == "latest" else 1)


def _tensor(tensor, kind: str, model_dir: Path | None, source: str, ignored: list[str]) -> ConfigTensor:
    if not tensor.name:
        raise ModelConfigError(f"{source}: an {kind} has no name")
    where = f"{source}: {kind} {tensor.name!r}"
    if tensor.data_type == 0:
        raise ModelConfigError(f"{where} has no data_type")
    if not tensor.dims:
        raise ModelConfigError(f"{where} has no dims")
    if any(d == 0 or d < -1 for d in tensor.dims):
        raise ModelConfigError(f"{where}: dims must be positive or -1, got {list(tensor.dims)}")
    set_fields = {f.name for f, _ in tensor.ListFields()}
    for name, reason in REFUSED_TENSOR.items():
        if name in set_fields:
            raise ModelConfigError(f"{where}: {name}: {reason}")
    ignored += [f"{kind}.{name}" for name in sorted(set_fields - UNDERSTOOD_TENSOR)]
    labels = None
    label_filename = getattr(tensor, "label_filename", "")
    if label_filename:
        labels = _read_labels(model_dir, label_filename, where)
    return ConfigTensor(tensor.name, datatype_name(tensor.data_type), tuple(tensor.dims), label_filename, labels)


def _warmup(sample, max_batch_size: int, model_dir: Path | None, source: str) -> WarmupSample:
    """A `model_warmup` entry checked as Triton checks it; input files are read from `<model>/warmup/`."""
    where = f"{source}: model_warmup {sample.name!r}"
    if not sample.name:
        raise ModelConfigError(f"{source}: a model_warmup sample has no name")
    if sample.batch_size < 1 or (max_batch_size == 0 and sample.batch_size != 1) or (
            max_batch_size > 0 and sample.batch_size > max_batch_size):
        raise ModelConfigError(f"{where}: batch_size {sample.batch_size} must be 1 or more, at most max_batch_size "
                               "(1 when the model does not batch)")
    if not sample.inputs:
        raise ModelConfigError(f"{where} has no inputs")
    inputs = []
    for name, value in sorted(sample.inputs.items()):
        kind = value.WhichOneof("input_data_type")
        if value.data_type == 0 or kind is None:
            raise ModelConfigError(f"{where}: input {name!r} needs a data_type and one of zero_data, random_data, "
                                   "input_data_file")
        if any(d < 0 for d in value.dims):
            raise ModelConfigError(f"{where}: input {name!r} dims must be fixed (0 or more), got {list(value.dims)}")
        data = b""
        if kind == "input_data_file":
            data = _read_in_folder(model_dir, Path("warmup") / value.input_data_file, f"{where}: input {name!r} input_data_file")
        inputs.append(WarmupInput(name, datatype_name(value.data_type), tuple(value.dims),
                                  {"zero_data": "zero", "random_data": "random"}.get(kind, "file"), data))
    return WarmupSample(sample.name, sample.batch_size, max(sample.count, 1), tuple(inputs))


def _read_in_folder(model_dir: Path | None, filename: Path, where: str) -> bytes:
    """A file of the model folder, refused when the name leads outside it."""
    if model_dir is None:
        raise ModelConfigError(f"{where} {str(filename)!r} given but no model folder to read it from")
    path = Path(model_dir) / filename
    if filename.is_absolute() or not path.resolve().is_relative_to(Path(model_dir).resolve()):
        raise ModelConfigError(f"{where} {str(filename)!r} points outside the model folder")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelConfigError(f"{where} {str(filename)!r} does not exist in the model folder") from None
    except OSError as error:
        raise ModelConfigError(f"{where} {str(filename)!r} cannot be read: {error}") from None


def _read_labels(model_dir: Path | None, filename: str, where: str) -> tuple[str, ...]:
    raw = _read_in_folder(model_dir, Path(filename), f"{where}: label_filename")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ModelConfigError(f"{where}: label_filename {filename!r} cannot be read: {error}") from None
    labels = tuple(text.splitlines())  # one label a line, as Triton reads it
    if not labels:
        raise ModelConfigError(f"{where}: label_filename {filename!r} is empty")
    return labels
