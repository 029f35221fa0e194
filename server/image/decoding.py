"""Request bytes and JSON pixels -> Pillow images and arrays, within the server's limits.

`decode_image` checks an image's size before decoding it and reads only what the presets use;
`pixels_to_array` validates a nested list of numbers. Both raise serving errors naming what was
received and what was expected.
"""
from __future__ import annotations

import io
import numbers
import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InvalidInput, TooLarge

ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
# JPEGs far larger than this are decoded at a reduced DCT scale, still at least this many pixels on
# each side: the digit pipeline works at this size (a digit a tenth of the frame is ~50 px there).
DRAFT_SIDE = 512
# The input of the image API's pixel arrays when the model does not say: MNIST's.
MNIST_SIDE = 28
# Pillow's messages may name the in-memory file (`<_io.BytesIO object at 0x7f...>`): an address a
# user must not see and cannot use.
OBJECT_REPR = re.compile(r"\s*<[^<>]* (?:object )?at 0x[0-9a-fA-F]+>")


def describe_error(err: BaseException) -> str:
    """`err`'s message for a user: no internal object names or addresses."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image of a format the server reads"
    return OBJECT_REPR.sub("", str(err)) or type(err).__name__
ORIENTATION = 0x0112  # the EXIF tag
# Pillow's own bomb check warns from 89 MP and raises from 179 MP as it opens a file; open_image
# checks the caller's max_pixels (MAX_IMAGE_PIXELS, 25 MP by default) on the same header right after,
# before any pixel is decoded. Pillow's warning only added a log line to a request refused with 413
# (and its error refused images a larger MAX_IMAGE_PIXELS allows), so the one limit is ours.
Image.MAX_IMAGE_PIXELS = None


def decode_image(data: bytes, max_pixels: int, draft_side: int | None = DRAFT_SIDE) -> Image.Image:
    """Decode `data` (first frame), checking its size before decoding and applying EXIF orientation.

    JPEGs far larger than `draft_side` are decoded at a reduced DCT scale, still at least
    `draft_side` on each side, which is all the preprocessing uses.
    """
    return load_image(open_image(data, max_pixels, draft_side))


class ViewFile(io.RawIOBase):
    """A read-only file over a memoryview (a part of a request body), without copying it."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self.view, self.position = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), len(self.view) - self.position))
        buffer[:count] = self.view[self.position:self.position + count]
        self.position += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: len(self.view)}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position


def open_image(data: bytes | memoryview, max_pixels: int, draft_side: int | None = DRAFT_SIDE) -> Image.Image:
    """Read only the header of `data`: format and size checked, a large JPEG set to its reduced
    decoding size (`image.size` is then the size it decodes at); no pixel is decoded yet.

    A memoryview is read in place (a part of a request body, looked at before it is copied)."""
    try:
        file = ViewFile(data) if isinstance(data, memoryview) else io.BytesIO(data)  # BytesIO shares bytes
        image = Image.open(file, formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise TooLarge(f"image too large: {describe_error(err)}; the limit is {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise InvalidInput(
            f"could not decode the image ({len(data)} bytes starting {bytes(data[:8])!r}): {describe_error(err)}; "
            f"expected one of {', '.join(ACCEPTED_FORMATS)}"
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise TooLarge(
            f"image of {width}x{height} = {width * height} pixels received; the limit is {max_pixels} pixels"
        )
    if width < 1 or height < 1:
        raise InvalidInput(f"image of {width}x{height} pixels received; expected at least 1x1")
    image.received = (width, height, len(data))  # for error messages: what was sent, before any draft
    try:
        if draft_side and image.format == "JPEG":
            image.draft(image.mode, (draft_side, draft_side))
    except (OSError, SyntaxError, ValueError) as err:
        raise InvalidInput(f"could not decode the JPEG image of {width}x{height} pixels: {err}") from None
    return image


def is_rotated(image: Image.Image) -> bool:
    """Whether the image's EXIF orientation asks for a transposed copy."""
    try:
        return image.getexif().get(ORIENTATION, 1) not in (1, None)
    except Exception:  # an unreadable EXIF block: exif_transpose will say so, or ignore it
        return False


def load_image(image: Image.Image) -> Image.Image:
    """Decode an image opened by `open_image` (its first frame) and apply its EXIF orientation."""
    width, height, length = getattr(image, "received", (*image.size, 0))
    try:
        image.load()  # the first frame of an animation
        # In place: without an orientation to apply, exif_transpose would return a full copy.
        ImageOps.exif_transpose(image, in_place=True)
        # Pillow converts LAB (a TIFF mode) to nothing else; its L channel is the lightness.
        return image.getchannel("L") if image.mode == "LAB" else image
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError, TypeError) as err:
        raise InvalidInput(
            f"could not decode the {image.format} image of {width}x{height} pixels "
            f"({length} bytes received): {describe_error(err)}"
        ) from None


def pixels_to_array(value: object, shape: tuple[int, int] = (MNIST_SIDE, MNIST_SIDE)) -> np.ndarray:
    """A nested list of numbers (0..1, or 0..255 when any exceeds 1) -> float32 array in [0, 1]."""
    rows = _nested_shape(value, shape)
    flat = [x for row in rows for x in row]
    # JSON yields only int and float: one pass over the exact types costs a small part of the
    # per-pixel Real ABC check, the largest Python cost of a pixels request (docs/benchmarks.md).
    if not {type(x) for x in flat} <= {int, float}:
        bad = next((x for x in flat if isinstance(x, bool) or not isinstance(x, numbers.Real)), None)
        if bad is not None:
            raise InvalidInput(f"pixels must be numbers; received {type(bad).__name__} {bad!r:.40}")
    try:
        array = np.asarray(flat, dtype=np.float64).reshape(shape)
    except OverflowError:  # an integer beyond float64's range: out of range like any other
        raise InvalidInput("pixels must lie in 0..1 or 0..255; received an integer too large for a number") from None
    if not np.isfinite(array).all():
        raise InvalidInput("pixels must be finite numbers; received NaN or infinity")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise InvalidInput(f"pixels must lie in 0..1 or 0..255; received values from {low} to {high}")
    if high > 1:
        array = array / 255.0
    return array.astype(np.float32)


def _nested_shape(value: object, shape: tuple[int, int]) -> list:
    """Check that `value` is a list of `shape[0]` lists of `shape[1]` items; return it."""
    expected = f"expected a {shape[0]}x{shape[1]} nested list of numbers"
    if not isinstance(value, list):
        raise InvalidInput(f"pixels: received {type(value).__name__}; {expected}")
    if len(value) != shape[0]:
        raise InvalidInput(f"pixels: received {len(value)} rows; {expected}")
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != shape[1]:
            got = f"{len(row)} items" if isinstance(row, list) else type(row).__name__
            raise InvalidInput(f"pixels: row {i} has {got}; {expected}")
    return value
