"""Generated evaluation inputs: MNIST digits written on photographed pages, scans and canvases.

Every sample is a pure function of (kind, seed, index, digit), so the set is the same on every run.
Photos are RGB JPEG bytes of a 640x480 (or 480x640) frame: paper with its tint and grain, ruled or
squared lines (slightly tilted), the digit in pen or pencil from a tenth to a third of the frame,
specks, a light gradient or a cast shadow, the table beyond the paper's edge, blur, sensor noise
and JPEG quality 40-90. Scans and canvases are clean PNGs, as a scanner or a drawing page makes.

`make bench-photos` (bench/photo_eval.py) renders MNIST *test* digits with seeds below
TRAINING_SEEDS; training's real-looking share (training/real_share.py) renders MNIST *training*
digits with seeds from TRAINING_SEEDS up, so the two never draw the same input.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

PHOTO_KINDS = ("plain", "ruled", "squared", "gradient", "shadow", "paper-edge")
CLEAN_KINDS = ("scan", "canvas")
KINDS = PHOTO_KINDS + CLEAN_KINDS + ("mnist",)
# Evaluation seeds are below this, training's pool seeds from it up: disjoint random streams.
TRAINING_SEEDS = 1_000_000


@dataclass(frozen=True)
class Sample:
    """One generated input: its encoded bytes, what it shows and how it was made."""

    kind: str
    label: int
    data: bytes
    note: str


def make_sample(kind: str, digit: np.ndarray, label: int, seed: int, index: int, stroke: int = 0) -> Sample:
    """The `index`-th input of `kind` showing `digit` (uint8 28x28, white on black); `stroke`
    thickens (> 0) or thins (< 0) a canvas's pen by that many pixels a side (training draws other
    widths; the evaluation keeps the digit's own)."""
    rng = np.random.default_rng([seed, KINDS.index(kind), index])
    if kind == "mnist":
        return Sample(kind, label, encode(Image.fromarray(digit), "PNG"), "MNIST's own 28x28")
    if kind == "scan":
        return _scan(digit, label, rng)
    if kind == "canvas":
        return _canvas(digit, label, rng, stroke)
    return _photo(kind, digit, label, rng)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def digit_alpha(digit: np.ndarray, size: int, rng: np.random.Generator, pen: bool = False) -> np.ndarray:
    """The digit's ink coverage (0..1) cropped to its strokes, its longer side scaled to `size`."""
    rows = np.nonzero(digit.max(axis=1))[0]
    cols = np.nonzero(digit.max(axis=0))[0]
    crop = digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = size / max(crop.shape)
    shape = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    big = np.asarray(Image.fromarray(crop).resize(shape, Image.Resampling.BICUBIC), dtype=np.float32)
    alpha = np.clip(big / 255, 0, 1)
    if pen:  # a pen's stroke has a crisp edge, not MNIST's soft one
        alpha = np.clip((alpha - 0.35) * 4, 0, 1)
    return alpha


def _scan(digit: np.ndarray, label: int, rng: np.random.Generator) -> Sample:
    side = int(rng.integers(200, 400))
    fraction = rng.uniform(0.5, 0.8)
    page = np.full((side, side), rng.uniform(235, 255), dtype=np.float32)
    alpha = digit_alpha(digit, round(side * fraction), rng)
    _place(page[..., None], alpha, np.array([rng.uniform(0, 40)]), rng, centred=True)
    page += rng.normal(0, 1.5, page.shape)
    image = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
    return Sample("scan", label, encode(image, "PNG"), f"{side}px, digit {fraction:.0%}")


def _canvas(digit: np.ndarray, label: int, rng: np.random.Generator, stroke: int = 0) -> Sample:
    fraction = rng.uniform(0.55, 0.85)
    alpha = digit_alpha(digit, round(280 * fraction), rng, pen=True)
    if stroke:
        alpha = restroke(alpha, stroke)
    style = ("black-on-white", "white-on-black", "transparent")[int(rng.integers(3))]
    coverage = np.zeros((280, 280, 1), dtype=np.float32)
    _place(coverage, alpha, np.array([255.0]), rng, centred=True)
    coverage = coverage[..., 0] / 255
    if style == "transparent":
        rgba = np.zeros((280, 280, 4), dtype=np.uint8)
        rgba[..., 3] = np.round(coverage * 255)
        image = Image.fromarray(rgba, "RGBA")
    else:
        ink = coverage if style == "white-on-black" else 1 - coverage
        image = Image.fromarray(np.round(ink * 255).astype(np.uint8)).convert("RGB")
    return Sample("canvas", label, encode(image, "PNG"), f"{style}, digit {fraction:.0%}")


def restroke(alpha: np.ndarray, pixels: int) -> np.ndarray:
    """The ink coverage with every stroke grown (pixels > 0) or shrunk (< 0) by `pixels` a side,
    as a thicker or thinner brush would draw it; the result keeps some ink."""
    size = 2 * abs(pixels) + 1
    image = Image.fromarray(np.round(alpha * 255).astype(np.uint8))
    # Grow into a margin, so a thicker stroke is not cut at the crop's edge.
    if pixels > 0:
        framed = Image.new("L", (image.width + 2 * pixels, image.height + 2 * pixels))
        framed.paste(image, (pixels, pixels))
        image = framed.filter(ImageFilter.MaxFilter(size))
    else:
        image = image.filter(ImageFilter.MinFilter(size))
    result = np.asarray(image, dtype=np.float32) / 255
    return result if result.max() > 0.5 else alpha


def _place(page: np.ndarray, alpha: np.ndarray, ink: np.ndarray, rng: np.random.Generator,
           centred: bool = False, avoid: int = 0) -> tuple[int, int, int, int]:
    """Blend `ink` into `page` (H, W, C) through `alpha`; return the digit's box (top, left, h, w)."""
    height, width = page.shape[:2]
    h, w = alpha.shape
    if centred:
        top = (height - h) // 2 + int(rng.integers(-height // 12, height // 12 + 1))
        left = (width - w) // 2 + int(rng.integers(-width // 12, width // 12 + 1))
        top, left = int(np.clip(top, 0, height - h)), int(np.clip(left, 0, width - w))
    else:
        top = int(rng.integers(avoid, max(avoid + 1, height - h - avoid)))
        left = int(rng.integers(avoid, max(avoid + 1, width - w - avoid)))
    region = page[top:top + h, left:left + w]
    region[:] = region * (1 - alpha[..., None]) + ink * alpha[..., None]
    return top, left, h, w


PAPER = np.array([246.0, 244.0, 236.0])
INKS = {"black pen": (25, 25, 30), "blue pen": (25, 35, 110), "pencil": (85, 85, 90)}


def _photo(kind: str, digit: np.ndarray, label: int, rng: np.random.Generator) -> Sample:
    height, width = (480, 640) if rng.random() < 0.7 else (640, 480)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    page = np.empty((height, width, 3), dtype=np.float32)
    page[:] = PAPER * rng.uniform(0.9, 1.02) + rng.normal(0, 3, 3)
    page += _grain(height, width, rng)[..., None]
    tilt = np.tan(np.radians(rng.uniform(-1.0, 1.0)))
    if kind == "ruled":
        _draw_lines(page, yy - xx * tilt, height * rng.uniform(0.05, 0.09), rng)
    if kind == "squared":
        spacing = height * rng.uniform(0.04, 0.07)
        _draw_lines(page, yy - xx * tilt, spacing, rng)
        _draw_lines(page, xx + yy * tilt, spacing, rng)
    fraction = rng.uniform(0.1, 1 / 3)
    ink_name = list(INKS)[int(rng.integers(len(INKS)))]
    alpha = digit_alpha(digit, round(min(height, width) * fraction), rng, pen=ink_name != "pencil")
    alpha *= rng.uniform(0.75, 1.0)
    margin = round(min(height, width) * 0.08) if kind == "paper-edge" else 4
    box = _place(page, alpha, np.array(INKS[ink_name], dtype=np.float32), rng, avoid=margin)
    specks = _add_specks(page, box, rng)
    if kind == "paper-edge":
        _add_table(page, xx, yy, box, rng)
    page *= _lighting(kind, xx, yy, rng)[..., None]
    image = Image.fromarray(np.clip(page + rng.normal(0, rng.uniform(1, 4), page.shape), 0, 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    quality = int(rng.integers(40, 91))
    note = f"{ink_name}, digit {fraction:.0%} of frame, {specks} specks, JPEG q{quality}"
    return Sample(kind, label, encode(image, "JPEG", quality=quality), note)


def _grain(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Paper texture: low-amplitude noise smoothed over a few pixels."""
    noise = Image.fromarray((rng.normal(128, 40, (height // 4 + 1, width // 4 + 1))).clip(0, 255).astype(np.uint8))
    smooth = np.asarray(noise.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return (smooth - 128) * 0.08


def _draw_lines(page: np.ndarray, coordinate: np.ndarray, spacing: float, rng: np.random.Generator) -> None:
    """Anti-aliased parallel lines, `spacing` apart across `coordinate`, in a printed blue or grey."""
    phase = np.mod(coordinate - rng.uniform(0, spacing), spacing)
    distance = np.minimum(phase, spacing - phase)
    thickness = rng.uniform(0.8, 2.2)
    alpha = np.clip(thickness / 2 + 0.5 - distance, 0, 1) * rng.uniform(0.4, 0.85)
    colour = np.array((150, 180, 225) if rng.random() < 0.6 else (160, 160, 165), dtype=np.float32)
    page[:] = page * (1 - alpha[..., None]) + colour * alpha[..., None]


def _add_specks(page: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator) -> int:
    """0-5 small dark dots of dust or pen, none touching the digit."""
    height, width = page.shape[:2]
    top, left, h, w = box
    count = int(rng.integers(0, 6))
    yy, xx = np.ogrid[0:height, 0:width]
    placed = 0
    for _ in range(count):
        y, x, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(1, 3.5)
        if top - 10 < y < top + h + 10 and left - 10 < x < left + w + 10:
            continue
        alpha = np.clip(r + 0.5 - np.hypot(yy - y, xx - x), 0, 1) * rng.uniform(0.5, 1)
        page[:] = page * (1 - alpha[..., None]) + 40 * alpha[..., None]
        placed += 1
    return placed


def _add_table(page: np.ndarray, xx: np.ndarray, yy: np.ndarray, box, rng: np.random.Generator) -> None:
    """The dark table beyond the paper's edge along one side of the frame, clear of the digit."""
    height, width = page.shape[:2]
    top, left, h, w = box
    side = int(rng.integers(4))
    slope = rng.uniform(-0.05, 0.05)
    room = [top, left, height - top - h, width - left - w][side]
    # The paper's edge stays clear of the digit: a few percent of the frame, whatever the slope.
    room -= 0.05 * max(height, width) + abs(slope) * max(height, width)
    depth = min(rng.uniform(0.3, 0.9) * room, rng.uniform(0.05, 0.25) * [height, width][side % 2])
    signed = [yy - xx * slope, xx - yy * slope, height - yy - xx * slope, width - xx - yy * slope][side]
    alpha = np.clip(depth - signed + 0.5, 0, 1)
    table = np.array((rng.uniform(60, 120), rng.uniform(45, 90), rng.uniform(30, 70)), dtype=np.float32)
    page[:] = page * (1 - alpha[..., None]) + table * alpha[..., None]


def _lighting(kind: str, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative light: mild unevenness everywhere, a strong gradient or a cast shadow."""
    height, width = xx.shape
    angle = rng.uniform(0, 2 * np.pi)
    along = ((xx - width / 2) * np.cos(angle) + (yy - height / 2) * np.sin(angle)) / max(height, width)
    if kind == "gradient":
        return 1 - rng.uniform(0.3, 0.5) * (along + 0.5)
    light = 1 - rng.uniform(0, 0.15) * (along + 0.5)
    if kind == "shadow":
        offset = rng.uniform(-0.3, 0.3)
        softness = rng.uniform(0.005, 0.08)
        shade = 1 / (1 + np.exp(-(along - offset) / softness))
        light *= 1 - rng.uniform(0.3, 0.55) * shade
    return light
