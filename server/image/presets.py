"""Image preprocessing presets: a decoded Pillow image -> one image of a model's input, pure functions.

A model names its preset in its `preprocessing` metadata; its input's shape says the image's
height, width, channel count and axis order (NCHW, NHWC, or NHW for one channel). Every preset
answers a float32 array [channels, height, width]; the classifier lays the batch out as the graph
wants. docs/models.md gives each preset's arithmetic; tests/test_presets.py checks it against
torchvision's transforms.

- `mnist-digit`: the digit pipeline of `server/image/digit.py` (one channel).
- `imagenet`: torchvision's classification recipe: RGB, resize the shorter side, centre crop,
  scale to [0, 1], subtract the mean and divide by the standard deviation of each channel.
- `resize`: the image as the model's channel count (L, RGB or RGBA), resized to height x width,
  scaled to [0, 1].
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from PIL import Image

from . import digit
from .decoding import DRAFT_SIDE

# ImageNet's channel statistics, as torchvision's pretrained classifiers use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's recipe resizes the shorter side to 256 before a 224 crop: the crop keeps 7/8.
CROP_FRACTION = 224 / 256
LAYOUTS = ("NCHW", "NHWC")
# Pillow modes by channel count, for the `resize` preset.
MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# Greyscale modes wider than 8 bits (16-bit PNGs, TIFFs).
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


@dataclass(frozen=True)
class ImageInput:
    """What one image becomes for a model: its channels, height, width and preset parameters."""

    channels: int
    height: int
    width: int
    layout: str = "NCHW"  # the batch's axis order: NCHW, NHWC, or NHW (one channel, no channel axis)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: int = 0  # `imagenet`: the shorter side before the centre crop; 0 = the crop's side / 0.875

    @property
    def resize_side(self) -> int:
        return self.resize or round(min(self.height, self.width) / CROP_FRACTION)

    def batch(self, images: list[np.ndarray]) -> np.ndarray:
        """[channels, height, width] arrays stacked as the model's input lays a batch out."""
        stacked = np.stack(images)
        if self.layout == "NHWC":
            return np.ascontiguousarray(stacked.transpose(0, 2, 3, 1))
        return stacked[:, 0] if self.layout == "NHW" else stacked

    def as_seen(self, image: np.ndarray) -> np.ndarray:
        """One [channels, height, width] image as the model sees it: [H, W] for one channel."""
        if self.channels == 1:
            return image[0]
        return image.transpose(1, 2, 0) if self.layout == "NHWC" else image


@dataclass(frozen=True)
class Preset:
    """A named preprocessing: the channel counts it makes, and the function making them."""

    name: str
    channels: tuple[int, ...]
    prepare: Callable[[Image.Image, ImageInput], np.ndarray]

    def draft_side(self, target: ImageInput) -> int:
        """Large JPEGs decode at a reduced DCT scale still this many pixels or more on each side:
        twice what the preset resizes to. On a photo the input then stays within about 0.05
        (largest) and 0.01 (mean) of a full decode's, in normalised units (tests/test_presets.py),
        at a sixteenth of the memory for a 12-megapixel JPEG."""
        if self.name == "mnist-digit":
            return DRAFT_SIDE
        return max(DRAFT_SIDE, 2 * max(target.resize_side, target.height, target.width))


def mnist_digit(image: Image.Image, target: ImageInput) -> np.ndarray:
    """The digit pipeline (MNIST-style 28 x 28), resized to the model's height x width: [1, H, W]."""
    return fit(digit.mnist_digit(image), (target.height, target.width))[None]


def imagenet(image: Image.Image, target: ImageInput) -> np.ndarray:
    """RGB; shorter side resized to `target.resize_side` (bilinear, antialiased); centre crop to
    height x width (zero padding where the image is smaller); /255; (x - mean) / std: [3, H, W]."""
    image = eight_bit(image).convert("RGB")
    image = image.resize(shorter_side_size(image.size, target.resize_side), Image.Resampling.BILINEAR)
    pixels = centre_crop(np.asarray(image), target.height, target.width)
    scaled = pixels.astype(np.float32) / np.float32(255)
    mean = np.asarray(target.mean, dtype=np.float32)
    std = np.asarray(target.std, dtype=np.float32)
    return ((scaled - mean) / std).transpose(2, 0, 1)


def resize(image: Image.Image, target: ImageInput) -> np.ndarray:
    """The image in Pillow's mode for the channel count (L, RGB, RGBA), resized to height x width
    (bilinear, antialiased, aspect not kept), /255: [channels, H, W] in [0, 1]."""
    image = eight_bit(image).convert(MODES[target.channels]).resize((target.width, target.height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32).reshape(target.height, target.width, target.channels)
    return (pixels / np.float32(255)).transpose(2, 0, 1)


def eight_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale as 8-bit L, scaled by its range (Pillow's own conversion
    clips a 16-bit PNG to white); other modes as they are."""
    if image.mode not in WIDE_MODES:
        return image
    return Image.fromarray(np.round(digit.to_grayscale(image) * 255).astype(np.uint8), "L")


def shorter_side_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(width, height) with the shorter side `side` and the aspect kept, as torchvision's Resize(int)
    computes it: the longer side is int(side * longer / shorter), truncated."""
    width, height = size
    if width <= height:
        return side, int(side * height / width)
    return int(side * width / height), side


def centre_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centre height x width of an [h, w, c] array, as torchvision's CenterCrop: top-left at
    round((h - height) / 2), round((w - width) / 2); padded with zeros (centred) when smaller."""
    h, w = pixels.shape[:2]
    if h < height or w < width:
        pad_top, pad_left = max(height - h, 0) // 2, max(width - w, 0) // 2
        padded = np.zeros((max(h, height), max(w, width)) + pixels.shape[2:], dtype=pixels.dtype)
        padded[pad_top:pad_top + h, pad_left:pad_left + w] = pixels
        pixels, h, w = padded, *padded.shape[:2]
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return pixels[top:top + height, left:left + width]


def fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D float image resized to (height, width) when it has another size, kept in [0, 1]."""
    if image.shape == size:
        return image
    resized = Image.fromarray(image.astype(np.float32)).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0, 1)


PRESETS: dict[str, Preset] = {
    preset.name: preset for preset in (
        Preset("mnist-digit", (1,), mnist_digit),
        Preset("imagenet", (3,), imagenet),
        Preset("resize", tuple(MODES), resize),
    )
}


def image_input(shape: tuple[int, ...], metadata: Mapping[str, str]) -> ImageInput | str:
    """The image a model's input `shape` takes, with the preset parameters of its `metadata`
    (`image_layout`, `image_size` for a graph with free H and W, `image_mean`, `image_std`,
    `image_resize`); or why it takes none."""
    expected = ("expected [N, C, H, W], [N, H, W, C] or [N, H, W] with fixed H and W, or image_size metadata "
                "(C: 1, 3 or 4)")
    layout = metadata.get("image_layout", "").strip().upper()
    if layout and layout not in LAYOUTS:
        return f"its image_layout metadata is {layout!r}; expected one of {', '.join(LAYOUTS)}"
    if len(shape) == 3:
        layout, channels, height, width = "NHW", 1, shape[1], shape[2]
    elif len(shape) == 4:
        if not layout:  # the channel axis is the one of 1, 3 or 4 elements; NCHW when both are
            layout = "NHWC" if shape[1] not in MODES and shape[3] in MODES else "NCHW"
        channels, height, width = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    else:
        return f"its input has shape {list(shape)}; {expected}"
    try:
        if min(height, width) < 1 and "image_size" in metadata:
            height, width = _size(metadata["image_size"], height, width)
    except ValueError as err:
        return str(err)
    if channels not in MODES or min(height, width) < 1:
        return f"its input has shape {list(shape)} ({layout}); {expected}"
    try:
        mean = _floats(metadata, "image_mean", IMAGENET_MEAN, channels)
        std = _floats(metadata, "image_std", IMAGENET_STD, channels)
        resize_side = int(metadata.get("image_resize", "0"))
    except ValueError as err:
        return str(err)
    if any(value <= 0 for value in std) or resize_side < 0:
        return "its image_std metadata must be positive and image_resize a non-negative integer"
    return ImageInput(channels, height, width, layout, mean, std, resize_side)


def _size(text: str, height: int, width: int) -> tuple[int, int]:
    """(H, W) from `image_size` metadata (an integer, or a JSON [H, W]) for the sides the graph leaves free."""
    try:
        value = json.loads(text)
        sides = [int(value)] * 2 if isinstance(value, (int, str)) else [int(side) for side in value]
    except (ValueError, TypeError):
        sides = []
    if len(sides) != 2 or min(sides) < 1:
        raise ValueError(f"its image_size metadata is {text[:40]!r}; expected a positive integer or a JSON [H, W]")
    return (height if height > 0 else sides[0]), (width if width > 0 else sides[1])


def _floats(metadata: Mapping[str, str], key: str, default: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """A JSON list of numbers from `metadata[key]`, one per channel (only checked when given)."""
    if key not in metadata:
        return default
    try:
        values = tuple(float(value) for value in json.loads(metadata[key]))
    except (ValueError, TypeError):
        raise ValueError(f"its {key} metadata is {metadata[key][:40]!r}; expected a JSON list of numbers") from None
    if len(values) != channels:
        raise ValueError(f"its {key} metadata has {len(values)} values; the input has {channels} channels")
    return values
