"""Image classifiers: models fed images through a preprocessing preset, answering with classes.

An image classifier is a model whose metadata names a known preprocessing preset
(`server/presets.py`) and whose one input is a batch of images with as many channels as the preset
makes: [N, C, H, W], [N, H, W, C] or [N, H, W]; H and W come from that shape. The default one is
`mnist` when the registry knows it, otherwise the only image classifier there is. Plain Python:
usable from a shell with onnxruntime, numpy and Pillow alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .decoding import decode_image, pixels_to_array
from .errors import InvalidInput, ModelNotFound, ServingError
from .model import NUMPY_DTYPES, OnnxModel, TensorSpec
from .presets import PRESETS, ImageInput, image_input
from .registry import ModelRegistry, latest

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
        return cls(model, model.preprocessing, spec, image_input(spec.shape, model.metadata))

    def predict(self, items: list[Item], max_pixels: int, return_input: bool = False) -> list[dict]:
        """One prediction per item (label, index, confidence, probabilities; and the input seen)."""
        images = self.prepare(items, max_pixels)
        probabilities = self.probabilities(images)
        labels = self.model.labels
        labels = labels if labels and len(labels) == probabilities.shape[1] else None
        predictions = [prediction(row, labels) for row in probabilities]
        if return_input:
            for answer, image in zip(predictions, images):
                seen = self.target.as_seen(image)
                answer["input"] = np.round(seen.astype(np.float64), INPUT_DIGITS).tolist()
        return predictions

    def prepare(self, items: list[Item], max_pixels: int) -> list[np.ndarray]:
        """Each item as the model's [C, H, W] float32 image; errors name the image at fault."""
        target, preset = self.target, PRESETS[self.preset]
        images = []
        for number, item in enumerate(items, 1):
            try:
                if isinstance(item, bytes):
                    images.append(preset.prepare(decode_image(item, max_pixels, preset.draft_side(target)), target))
                elif target.channels == 1:
                    images.append(pixels_to_array(item, (target.height, target.width))[None])
                else:
                    raise InvalidInput(
                        f"'pixels' are for single-channel models; model {self.model.name!r} takes "
                        f"{target.channels} channels: send the image itself"
                    )
            except ServingError as err:
                if len(items) == 1:
                    raise
                raise type(err)(f"{which_image(number, len(items))}: {err.message}", err.status) from None
        return images

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """Run all images as one batch; probabilities [N, classes] (softmax applied to logits)."""
        model, spec = self.model, self.input
        if 0 < spec.shape[0] != len(images):
            raise InvalidInput(f"model {model.name!r} takes exactly {spec.shape[0]} image(s) per request; received {len(images)}")
        batch = self.target.batch(images)
        outputs = model.predict({spec.name: batch.astype(NUMPY_DTYPES[spec.datatype])})
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
        return f"its preprocessing preset is {model.preprocessing!r}; known presets: {', '.join(PRESETS)}"
    if len(model.inputs) != 1:
        return f"it has {len(model.inputs)} inputs; expected one"
    target = image_input(model.inputs[0].shape, model.metadata)
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


def which_image(number: int, count: int) -> str:
    """How an error names image `number` of a request of `count` images."""
    return "the image" if count == 1 else f"image {number} of {count}"
