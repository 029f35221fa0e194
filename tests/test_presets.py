"""The image presets (server/image/presets.py) against torchvision's transforms, and how a model's input
shape and metadata choose the image it takes. Pure functions on arrays: no server, no HTTP."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from server.image.decoding import decode_image
from server.image.presets import IMAGENET_MEAN, IMAGENET_STD, PRESETS, ImageInput, image_input
from tests.conftest import torchvision_transforms

TOLERANCE = 1e-3


def photo(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A smooth colour picture with noise on it (resizing has something to average)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode == "RGBA":
        image.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
    return image.convert(mode) if mode not in ("RGB", "RGBA") else image


def torchvision_imagenet(image: Image.Image, crop: tuple[int, int], resize: int,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """torchvision's classification recipe (weights.transforms() of its pretrained models)."""
    transforms = torchvision_transforms()
    recipe = transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    return recipe(image).numpy()


@pytest.mark.parametrize("size,mode", [
    ((640, 480), "RGB"),      # landscape, downscaled
    ((300, 517), "RGB"),      # portrait, odd sides
    ((256, 256), "RGB"),      # already the resize size
    ((120, 90), "RGB"),       # upscaled
    ((400, 300), "L"),        # greyscale becomes three equal channels
    ((333, 251), "RGBA"),     # alpha dropped, as convert("RGB") does
    ((500, 400), "P"),        # palette
])
def test_imagenet_matches_torchvision(size, mode) -> None:
    image = photo(*size, mode=mode if mode != "P" else "RGB")
    image = image.convert("P") if mode == "P" else image
    target = ImageInput(3, 224, 224)
    ours = PRESETS["imagenet"].prepare(image, target)
    reference = torchvision_imagenet(image, (224, 224), 256)
    assert ours.shape == reference.shape == (3, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() < TOLERANCE


def test_imagenet_with_other_size_statistics_and_a_crop_larger_than_the_image() -> None:
    """A non-square input, its own mean/std and resize side; the crop pads as CenterCrop does."""
    image = photo(90, 60, seed=3)
    target = image_input((-1, 3, 64, 96), {"image_mean": "[0.5, 0.5, 0.5]", "image_std": "[0.25, 0.5, 1]",
                                            "image_resize": "48"})
    assert isinstance(target, ImageInput) and target.resize_side == 48
    ours = PRESETS["imagenet"].prepare(image, target)
    reference = torchvision_imagenet(image, (64, 96), 48, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1))
    assert ours.shape == (3, 64, 96)
    assert np.abs(ours - reference).max() < TOLERANCE


def test_imagenet_default_resize_is_the_crop_over_seven_eighths() -> None:
    assert ImageInput(3, 224, 224).resize_side == 256
    assert ImageInput(3, 299, 299).resize_side == 342  # torchvision's Inception v3 recipe
    image = photo(500, 375, seed=5)
    reference = torchvision_imagenet(image, (299, 299), 342)
    assert np.abs(PRESETS["imagenet"].prepare(image, ImageInput(3, 299, 299)) - reference).max() < TOLERANCE


@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB"), (4, "RGBA")])
@pytest.mark.parametrize("source", ["RGBA", "RGB", "L"])
def test_resize_matches_torchvision(channels, mode, source) -> None:
    image = photo(211, 157, mode=source, seed=channels)
    transforms = torchvision_transforms()
    reference = transforms.Compose([
        transforms.Lambda(lambda im: im.convert(mode)),
        transforms.Resize((32, 48), interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.ToTensor(),
    ])(image).numpy()
    ours = PRESETS["resize"].prepare(image, ImageInput(channels, 32, 48))
    assert ours.shape == (channels, 32, 48) and ours.min() >= 0 and ours.max() <= 1
    assert np.abs(ours - reference).max() < TOLERANCE


@pytest.mark.parametrize("shape,metadata,expected", [
    ((-1, 3, 224, 224), {}, ("NCHW", 3, 224, 224)),
    ((-1, 224, 224, 3), {}, ("NHWC", 3, 224, 224)),
    ((-1, 1, 28, 28), {}, ("NCHW", 1, 28, 28)),
    ((-1, 28, 28), {}, ("NHW", 1, 28, 28)),
    ((1, 4, 16, 8), {}, ("NCHW", 4, 16, 8)),
    ((-1, 3, 3, 3), {}, ("NCHW", 3, 3, 3)),                       # ambiguous: NCHW, as PyTorch
    ((-1, 3, 3, 3), {"image_layout": "nhwc"}, ("NHWC", 3, 3, 3)),  # unless the metadata says
    ((-1, 3, -1, -1), {"image_size": "224"}, ("NCHW", 3, 224, 224)),  # free sides: from metadata
    ((-1, -1, -1, 3), {"image_size": "[240, 320]"}, ("NHWC", 3, 240, 320)),
    ((-1, 3, 64, 64), {"image_size": "224"}, ("NCHW", 3, 64, 64)),  # fixed sides win
])
def test_image_input_reads_the_layout_from_the_shape(shape, metadata, expected) -> None:
    target = image_input(shape, metadata)
    assert (target.layout, target.channels, target.height, target.width) == expected


@pytest.mark.parametrize("shape,metadata,why", [
    ((-1, 3, -1, -1), {}, "fixed H and W"),
    ((-1, 2, 8, 8), {}, "C: 1, 3 or 4"),
    ((-1, 10), {}, "expected [N, C, H, W]"),
    ((-1, 3, 8, 8), {"image_layout": "CHWN"}, "image_layout"),
    ((-1, 3, 8, 8), {"image_mean": "[0.5]"}, "has 1 values; the input has 3 channels"),
    ((-1, 3, 8, 8), {"image_std": "fast"}, "JSON list of numbers"),
    ((-1, 3, 8, 8), {"image_std": "[1, 0, 1]"}, "positive"),
    ((-1, 3, 8, 8), {"image_resize": "big"}, "invalid literal"),
    ((-1, 3, -1, -1), {"image_size": "[224]"}, "expected a positive integer or a JSON [H, W]"),
    ((-1, 3, -1, -1), {"image_size": "0"}, "expected a positive integer or a JSON [H, W]"),
])
def test_image_input_says_why_a_shape_or_metadata_takes_no_image(shape, metadata, why) -> None:
    problem = image_input(shape, metadata)
    assert isinstance(problem, str) and why in problem


@pytest.mark.parametrize("layout,shape", [("NCHW", (2, 3, 4, 5)), ("NHWC", (2, 4, 5, 3)), ("NHW", (2, 4, 5))])
def test_a_batch_is_laid_out_as_the_graph_wants(layout, shape) -> None:
    channels = 1 if layout == "NHW" else 3
    target = ImageInput(channels, 4, 5, layout)
    images = [np.random.default_rng(i).random((channels, 4, 5), dtype=np.float32) for i in range(2)]
    batch = target.batch(images)
    assert batch.shape == shape
    back = batch if layout == "NCHW" else batch[:, None] if layout == "NHW" else batch.transpose(0, 3, 1, 2)
    assert np.array_equal(back, np.stack(images))
    seen = target.as_seen(images[0])  # what return_input shows: the model's own layout for one image
    assert np.array_equal(seen, batch[0].reshape(seen.shape))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "I", "F", "I;16", "CMYK", "YCbCr", "HSV", "RGBA", "RGBa"])
@pytest.mark.parametrize("preset,channels", [("imagenet", 3), ("resize", 1), ("resize", 3), ("resize", 4)])
def test_every_pillow_mode_becomes_the_model_input(mode, preset, channels) -> None:
    gradient = Image.linear_gradient("L").resize((40, 30))
    if mode == "I;16":  # a 16-bit greyscale PNG: scaled by its range, not clipped to white
        image = Image.fromarray(np.asarray(gradient).astype(np.uint16) * 257)
    else:
        image = gradient.convert("RGBA").convert(mode) if mode in ("PA", "RGBa") else gradient.convert(mode)
    array = PRESETS[preset].prepare(image, ImageInput(channels, 12, 16))
    assert array.shape == (channels, 12, 16) and array.dtype == np.float32 and np.isfinite(array).all()
    spread = float(array[0].max() - array[0].min())
    assert spread > (1 if preset == "imagenet" else 0.5), (mode, spread)  # the gradient survives


def test_a_large_jpeg_decoded_at_reduced_scale_stays_close_to_a_full_decode() -> None:
    """What the DCT-scaled decode of a big photo costs in accuracy (docs/models.md gives the bound)."""
    buffer = io.BytesIO()
    photo(2048, 1536, seed=7).save(buffer, "JPEG", quality=92)
    data = buffer.getvalue()
    target, preset = ImageInput(3, 224, 224), PRESETS["imagenet"]
    decoded = decode_image(data, 10_000_000, preset.draft_side(target))
    assert decoded.size == (1024, 768)  # a quarter of the pixels
    difference = np.abs(preset.prepare(decoded, target) - torchvision_imagenet(Image.open(io.BytesIO(data)), (224, 224), 256))
    assert difference.max() < 0.1 and difference.mean() < 0.02, (difference.max(), difference.mean())
