"""Image classifiers: models fed images through a preprocessing preset, answering with classes.

An image classifier is a model whose metadata names a known preprocessing preset
(`server/image/presets.py`) and whose one input is a batch of images with as many channels as the preset
makes: [N, C, H, W], [N, H, W, C] or [N, H, W]; H and W come from that shape. The default one is
`mnist` when the registry knows it, otherwise the only image classifier there is. Plain Python:
usable from a shell with onnxruntime, numpy and Pillow alone.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from PIL import Image

from ..limits.budget import CpuBudget, MemoryBudget, PixelBudget, image_bytes, run_in_chunks
from ..config import CHUNK_ROWS
from .decoding import is_rotated, load_image, open_image, pixels_to_array
from ..errors import InvalidInput, ModelNotFound, Overloaded, ServingError
from ..runtime.model import OnnxModel
from ..runtime.tensor_types import NUMPY_DTYPES, TensorSpec
from .presets import PRESETS, ImageInput, image_input
from ..runtime.registry import ModelRegistry, latest

DEFAULT_MODEL = "mnist"
# Digits kept in an answer: enough for any use of a probability, without float32 noise.
PROBABILITY_DIGITS, INPUT_DIGITS = 6, 4

Item = bytes | list  # an encoded image, or a nested list of pixels (the model's input as it is)


@dataclass(frozen=True)
class ImageClassifier:
    """A model seen as an image classifier: its preset, its image input and its height and width."""

    model: OnnxModel
    preset: str
    input: TensorSpec
    target: ImageInput

    @property
    def height(self) -> int:
        return self.target.height

    @property
    def width(self) -> int:
        return self.target.width

    @classmethod
    def of(cls, model: OnnxModel) -> "ImageClassifier":
        """View `model` as an image classifier, or raise InvalidInput saying why it is not one."""
        problem = image_classifier_problem(model)
        if problem:
            raise InvalidInput(
                f"model {model.name!r} version {model.version} cannot take images: {problem}; "
                f"send tensors to POST /v2/models/{model.name}/infer instead"
            )
        spec = model.inputs[0]
        return cls(model, model.preprocessing, spec, image_input(spec.shape, model.settings))

    def predict(self, items: list[Item], max_pixels: int, return_input: bool = False,
                memory: MemoryBudget | None = None, max_request_pixels: int | None = None,
                chunk_rows: int = CHUNK_ROWS, max_cpu_seconds: float | None = None) -> list[dict]:
        """One prediction per item (label, index, confidence, probabilities; and the input seen).

        With `memory`, each image's decoding holds its bytes of that budget; `max_request_pixels`
        bounds the decoded pixels of all the items together, `max_cpu_seconds` the CPU time their
        decoding and preprocessing take; the model runs `chunk_rows` at a time.
        """
        images = self.prepare(items, max_pixels, memory, max_request_pixels, max_cpu_seconds)
        probabilities = self.probabilities(images, chunk_rows)
        labels = self.model.labels
        labels = labels if labels and len(labels) == probabilities.shape[1] else None
        predictions = [prediction(row, labels) for row in probabilities]
        if return_input:
            for answer, image in zip(predictions, images):
                seen = self.target.as_seen(image)
                answer["input"] = np.round(seen.astype(np.float64), INPUT_DIGITS).tolist()
        return predictions

    def check_sizes(self, encoded: list[bytes | memoryview], max_pixels: int, memory: MemoryBudget | None = None,
                    max_request_pixels: int | None = None, unreadable_ok: bool = False) -> None:
        """Raise TooLarge when the request could never be served, from its images' headers alone.

        Nothing is decoded and nothing waits: the route asks this before it waits for memory, so a
        request no amount of waiting makes fit gets 413, never 503. With `unreadable_ok`, `encoded`
        may hold only the first bytes of each image: one whose header is not in them counts no pixels.
        """
        for image in self._open_headers(encoded, max_pixels, memory, max_request_pixels, unreadable_ok):
            if isinstance(image, Image.Image):
                image.close()

    def prepare(self, items: list[Item], max_pixels: int, memory: MemoryBudget | None = None,
                max_request_pixels: int | None = None, max_cpu_seconds: float | None = None) -> list[np.ndarray]:
        """Each item as the model's [C, H, W] float32 image; errors name the image at fault.

        Every image's header is read first, so that a request over `max_request_pixels` is refused
        before any pixel is decoded; then each is decoded holding its bytes of `memory`, until the
        images so far have taken more than `max_cpu_seconds` of CPU (TooLarge before the next).
        """
        target, preset, count = self.target, PRESETS[self.preset], len(items)
        opened = self._open_headers(items, max_pixels, memory, max_request_pixels)
        cpu = CpuBudget(max_cpu_seconds) if max_cpu_seconds else None
        images = []
        for number in range(1, count + 1):
            if cpu is not None and number > 1:
                cpu.check(number - 1, count)
            item, opened[number - 1] = opened[number - 1], None  # each decoded image is let go once preprocessed
            with naming_errors(number, count):
                if isinstance(item, Image.Image):
                    cost = image_bytes(item.mode, *item.size, is_rotated(item)) if memory else 0
                    with memory.reserve(cost, which_image(number, count)) if memory else nullcontext():
                        images.append(preset.prepare(load_image(item), target))
                        item = None  # freed before its reservation ends
                else:
                    images.append(pixels_to_array(item, (target.height, target.width))[None])
        return images

    def _open_headers(self, items: list[Item] | list[bytes | memoryview], max_pixels: int, memory: MemoryBudget | None,
                      max_request_pixels: int | None, unreadable_ok: bool = False) -> list[Image.Image | list | None]:
        """Each encoded item opened at its header (pixels: as they are), every limit a header tells checked:
        each image's size, the request's decoded pixels, each image's memory against the whole budget."""
        target, preset, count = self.target, PRESETS[self.preset], len(items)
        pixels = PixelBudget(max_request_pixels) if max_request_pixels else None
        opened: list[Image.Image | list | None] = []
        for number, item in enumerate(items, 1):
            with naming_errors(number, count):
                if isinstance(item, (bytes, memoryview)):
                    try:
                        item = open_image(item, max_pixels, preset.draft_side(target))  # the header only
                    except InvalidInput:
                        if not unreadable_ok:
                            raise
                        continue
                    width, height = item.size
                    if pixels is not None:
                        pixels.take(width * height, f"{which_image(number, count)} ({width}x{height} decoded)")
                    if memory is not None:  # unrotated: the least it needs (a PNG's EXIF is read only by decoding it)
                        memory.check(image_bytes(item.mode, width, height), which_image(number, count))
                elif target.channels != 1:
                    raise InvalidInput(
                        f"'pixels' are for single-channel models; model {self.model.name!r} takes "
                        f"{target.channels} channels: send the image itself"
                    )
                opened.append(item)
        return opened

    def probabilities(self, images: list[np.ndarray], chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
        """Run all images as one batch; probabilities [N, classes] (softmax applied to logits)."""
        model, spec = self.model, self.input
        if 0 < spec.shape[0] != len(images):
            raise InvalidInput(f"model {model.name!r} takes exactly {spec.shape[0]} image(s) per request; received {len(images)}")
        batch = self.target.batch(images)
        inputs = {spec.name: batch.astype(NUMPY_DTYPES[spec.datatype])}
        # In chunks, as v2 batches: onnxruntime's arena keeps the peak of its largest run.
        outputs = run_in_chunks(model.predict, inputs, chunk_rows) if model.batchable else model.predict(inputs)
        scores = np.asarray(outputs[model.outputs[0].name], dtype=np.float64)
        if scores.ndim != 2 or scores.shape[0] != len(images):
            raise RuntimeError(f"model {model.name} answered shape {scores.shape} for a batch of {len(images)}")
        if model.output_kind == "logits":
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        return scores


def image_classifier_problem(model: OnnxModel) -> str | None:
    """Why images cannot be fed to `model`, or None when they can."""
    if model.preprocessing not in PRESETS:
        named = ("it names no preprocessing preset" if model.preprocessing is None
                 else f"its preprocessing preset is {model.preprocessing!r}")
        return (f"{named}; known presets: {', '.join(PRESETS)}, named by the key 'preprocessing' in the ONNX "
                "file's metadata_props or in config.pbtxt's parameters (parameters { key: \"preprocessing\" "
                "value { string_value: \"imagenet\" } })")
    if len(model.inputs) != 1:
        return f"it has {len(model.inputs)} inputs; expected one"
    target = image_input(model.inputs[0].shape, model.settings)
    if isinstance(target, str):
        return target
    preset = PRESETS[model.preprocessing]
    if target.channels not in preset.channels:
        wanted = " or ".join(map(str, preset.channels))
        return (f"its input has shape {list(model.inputs[0].shape)}, {target.channels} channel(s) in {target.layout}; "
                f"the {preset.name!r} preset makes {wanted}")
    if model.inputs[0].datatype not in ("FP32", "FP16", "FP64"):
        return f"its input is {model.inputs[0].datatype}; expected a floating-point image"
    if not model.outputs or len(model.outputs[0].shape) != 2:
        return "its first output is not a [N, classes] array of scores"
    return None


def image_classifiers(models: Mapping[str, Mapping[str, OnnxModel]]) -> list[tuple[OnnxModel, list[str]]]:
    """The served version of every image classifier in `models`, with all its loaded versions."""
    found = []
    for name, versions in sorted(models.items()):
        served = latest(versions)
        if served and image_classifier_problem(served) is None:
            found.append((served, sorted(versions, key=int)))
    return found


def default_model_name(registry: ModelRegistry) -> str:
    """`mnist` when the registry knows it, else its only image classifier (ModelNotFound otherwise)."""
    if DEFAULT_MODEL in registry.names():
        return DEFAULT_MODEL
    classifiers = [model.name for model, _ in image_classifiers(registry.models)]
    if len(classifiers) == 1:
        return classifiers[0]
    served = ", ".join(classifiers) or "none"
    raise ModelNotFound(
        f"no default model: the repository holds no {DEFAULT_MODEL!r} and {len(classifiers)} image "
        f"classifiers ({served}); name one with POST /models/<name>/predict"
    )


def prediction(probabilities: np.ndarray, labels: list[str] | None) -> dict:
    """One image's answer: the most likely class and every class's probability."""
    index = int(np.argmax(probabilities))
    rounded = np.round(probabilities, PROBABILITY_DIGITS).tolist()
    return {
        "label": labels[index] if labels else str(index),
        "index": index,
        "confidence": rounded[index],
        "probabilities": rounded,
    }


@contextmanager
def naming_errors(number: int, count: int) -> Iterator[None]:
    """Serving errors raised inside name image `number` of `count`, unless they already do."""
    try:
        yield
    except ServingError as err:
        named = which_image(number, count)
        # Overloaded names the image already (and keeps its Retry-After); the pixel budget too.
        if count == 1 or isinstance(err, Overloaded) or err.message.startswith(named):
            raise
        raise type(err)(f"{named}: {err.message}", err.status) from None


def which_image(number: int, count: int) -> str:
    """How an error names image `number` of a request of `count` images."""
    return "the image" if count == 1 else f"image {number} of {count}"
