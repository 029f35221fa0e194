"""The `mnist-digit` preset: any image of one digit -> MNIST-style 28x28 float array, pure functions.

`mnist_digit` handles MNIST's own images (passed through unchanged), scans, canvas drawings and
phone photos of a digit on paper: it measures ink against the paper's local brightness, removes
ruled and squared lines, keeps the digit's own connected strokes, then fits the ink into 20x20 and
centres it on its centre of mass in 28x28, the way MNIST was made. docs/preprocessing.md has the
evaluation.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .decoding import DRAFT_SIDE, MNIST_SIDE
from ..errors import InvalidInput, NoDigitFound

# Photos are worked on at this many pixels on the longer side, the size they are decoded at: a
# digit a tenth of the frame is still ~50 px tall there, and a 12-megapixel upload costs little.
WORK_SIDE = DRAFT_SIDE
BOX_SIDE = 20
# MNIST's images put the digit's centre of mass at pixel (14, 14) of the 28x28 field (measured on
# its test set: mean 14.0, never more than a pixel off).
MNIST_CENTRE = MNIST_SIDE / 2
# Less ink contrast than this (relative to the paper) is no digit at all.
MIN_CONTRAST = 0.08


# --------------------------------------------------------------------------- grayscale


def reduce_large(image: Image.Image, side: int = WORK_SIDE) -> Image.Image:
    """Shrink by an integer factor (box average) to at least 2 x `side`, still in Pillow's 8-bit
    modes: a 25-megapixel RGBA upload never becomes a gigabyte of float arrays."""
    factor = max(image.size) // (2 * side)
    if factor < 2:
        return image
    if image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        transparent = "A" in image.mode or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "I" if image.mode.startswith("I;16") else "RGB")
    return image.reduce(factor)


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Luminance of any Pillow mode as float32 in [0, 1] (1 = white); transparency is composited."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _wide_to_unit(np.asarray(image.convert("F") if image.mode.startswith("I;16") else image))
    if image.mode == "P" and "transparency" in image.info or image.mode in ("PA", "La"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa"):
        return _composite(image)
    if image.mode != "L":
        try:
            image = image.convert("L")
        except ValueError as err:
            raise InvalidInput(f"cannot read an image in colour mode {image.mode}: {err}") from None
    return np.asarray(image, dtype=np.float32) / np.float32(255)


def _wide_to_unit(array: np.ndarray) -> np.ndarray:
    """Scale a 16/32-bit or float image to [0, 1]: by 1, 255 or 65535, whichever its range fits."""
    array = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    high = float(array.max()) if array.size else 0.0
    scale = next((s for s in (1.0, 255.0, 65535.0) if high <= s), high)
    return np.clip(array / np.float32(scale), 0, 1)


def _composite(image: Image.Image) -> np.ndarray:
    """Composite a transparent image on white, or on black when its visible strokes are light."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / np.float32(255)
    alpha = rgba[..., 3]
    luma = rgba[..., 0] * 0.299 + rgba[..., 1] * 0.587 + rgba[..., 2] * 0.114
    weight = float(alpha.sum())
    light_strokes = weight > 0 and float((luma * alpha).sum()) / weight > 0.5 and alpha.min() < 0.5
    background = 0.0 if light_strokes else 1.0
    return (luma * alpha + background * (1 - alpha)).astype(np.float32)


# --------------------------------------------------------------------------- the digit


def mnist_digit(image: Image.Image) -> np.ndarray:
    """Any image of one digit -> float32 (28, 28) in [0, 1], white digit on black, as MNIST."""
    gray = to_grayscale(reduce_large(image))
    if is_mnist_like(gray):
        return gray
    gray = shrink(gray, WORK_SIDE)
    margin = histogram_margin(gray)
    # A clean two-tone image (scan, canvas, screenshot) has one paper level; a photo has many.
    two_tone = abs(margin) > 0.9
    light_paper = margin > 0 if two_tone else has_light_paper(gray)
    ink = ink_against_paper(gray if light_paper else 1 - gray, uniform=two_tone)
    digit = select_digit(remove_ruled_lines(ink))
    return fit_to_mnist_box(thicken_hairlines(digit))


def has_light_paper(gray: np.ndarray) -> bool:
    """True for dark ink on light paper in a photo, False for light strokes on a dark ground.

    A photo shows paper, the brightest large thing in it, unless it is mostly dark and its details
    are light (chalk on a board). Details are measured against the local median of blocks a
    sixteenth of the frame wide, so that a shadow over most of the page, which puts the image's
    median between paper and ink, does not mislead it.
    """
    height, width = gray.shape
    step = max(8, math.ceil(max(height, width) / 16))
    if min(height, width) < 2 * step:
        return histogram_margin(gray) > 0
    if np.median(gray) > 0.3:
        return True
    detail = gray - _upsample(_block_reduce(gray, step, np.median), gray.shape)
    low, high = np.percentile(detail, [0.05, 99.95])
    return bool(-low > high)


def histogram_margin(gray: np.ndarray) -> float:
    """-1..1: how much further the darkest pixels lie from the median than the lightest do.

    Near 1: dark ink on light paper; near -1: light strokes on black; between: a photo.
    """
    low, median, high = np.percentile(gray, [0.05, 50, 99.95])
    return float(((median - low) - (high - median)) / max(high - low, 1e-6))


def is_mnist_like(gray: np.ndarray) -> bool:
    """A 28x28 white-on-black image whose ink is centred as MNIST's: it passes through unchanged."""
    if gray.shape != (MNIST_SIDE, MNIST_SIDE) or gray.max() <= 0.5:
        return False
    # Mostly black: fewer than half the pixels above the noise floor (a count, not np.median,
    # which cost as much as the rest of the check on every /predict of such an image).
    if 2 * np.count_nonzero(gray > MIN_CONTRAST) >= gray.size:
        return False
    cy, cx = centre_of_mass(gray)
    return abs(cy - MNIST_CENTRE) <= 2 and abs(cx - MNIST_CENTRE) <= 2


def centre_of_mass(array: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of mass of a non-negative 2-D array."""
    total = float(array.sum())
    rows = np.arange(array.shape[0], dtype=np.float64)
    cols = np.arange(array.shape[1], dtype=np.float64)
    return float(array.sum(axis=1) @ rows) / total, float(array.sum(axis=0) @ cols) / total


def shrink(gray: np.ndarray, side: int) -> np.ndarray:
    """Scale down (area-averaged) so the longer side is at most `side`."""
    height, width = gray.shape
    factor = max(height, width) / side
    if factor <= 1:
        return gray
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    return np.asarray(Image.fromarray(gray, "F").resize(size, Image.Resampling.BOX))


def ink_against_paper(gray: np.ndarray, uniform: bool = False) -> np.ndarray:
    """How much darker than the paper each pixel is, relative to the paper (0..1).

    The paper's brightness is local (see paper_brightness) unless `uniform`: then it is the
    median, as for a scan or a canvas, where a big blob of ink must not pass for a shadow.
    """
    paper = np.full_like(gray, np.median(gray)) if uniform else paper_brightness(gray)
    darker = paper - gray
    # Under 3 % of full scale is noise, whatever the paper: near-black "paper" would magnify it.
    darker[darker < 0.03] = 0
    return np.clip(darker / np.maximum(paper, 0.1), 0, 1).astype(np.float32)


def paper_brightness(gray: np.ndarray, grid: int = 96) -> np.ndarray:
    """The paper's local brightness: a coarse grey closing (max then min) wider than any stroke.

    A closing removes dark strokes narrower than its window but keeps gradients and the edges of
    shadows larger than it, so dividing by it evens out the light across the page.
    """
    height, width = gray.shape
    step = max(1, math.ceil(max(height, width) / grid))
    coarse = _block_reduce(gray, step, np.mean)
    window = max(3, max(coarse.shape) // 4) | 1
    # Odd reflection continues a gradient past the frame's edge, so the closing follows it there.
    odd = {"mode": "reflect", "reflect_type": "odd"}
    closed = _filter2d(_filter2d(coarse, window, np.maximum, **odd), window, np.minimum, **odd)
    return closed if step == 1 else _upsample(closed, gray.shape)


def _block_reduce(array: np.ndarray, step: int, reduce) -> np.ndarray:
    """`reduce` (np.mean, np.median) over step x step blocks (edges padded by repetition)."""
    if step == 1:
        return array
    height, width = array.shape
    padded = np.pad(array, ((0, -height % step), (0, -width % step)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // step, step, padded.shape[1] // step, step).swapaxes(1, 2)
    return reduce(blocks.reshape(blocks.shape[0], blocks.shape[1], -1), axis=-1).astype(np.float32)


def _upsample(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a coarse grid to `shape` (rows, columns)."""
    return np.asarray(Image.fromarray(coarse.astype(np.float32), "F").resize(shape[::-1], Image.Resampling.BILINEAR))


def _filter2d(array: np.ndarray, window: int, combine: np.ufunc, **padding) -> np.ndarray:
    """Separable `combine` (np.maximum, np.minimum or np.add) over a window x window square.

    Edges are repeated unless `padding` gives other np.pad options; np.add gives the window's
    sum. Shifted slices keep it fast for the small windows and coarse grids it is used on.
    """
    half = window // 2
    array = array.astype(np.float32)
    padding = padding or {"mode": "edge"}
    for axis in (0, 1):
        widths = [(0, 0), (0, 0)]
        widths[axis] = (half, half)
        padded = np.pad(array, widths, **padding)
        length = array.shape[axis]
        array = padded[(slice(None),) * axis + (slice(0, length),)].copy()
        for shift in range(1, window):
            combine(array, padded[(slice(None),) * axis + (slice(shift, shift + length),)], out=array)
    return array


def _filter1d(array: np.ndarray, window: int, combine: np.ufunc) -> np.ndarray:
    """`combine` (np.maximum or np.minimum) over a window along the last axis, edges repeated."""
    half = window // 2
    padded = np.pad(array, ((0, 0), (half, half)), mode="edge")
    result = padded[:, :array.shape[1]].copy()
    for shift in range(1, window):
        combine(result, padded[:, shift:shift + array.shape[1]], out=result)
    return result


def remove_ruled_lines(ink: np.ndarray) -> np.ndarray:
    """Subtract ruled and squared lines: ink running across the whole width (or height)."""
    ink = _remove_horizontal_lines(ink)
    return _remove_horizontal_lines(ink.T).T.copy()


def _remove_horizontal_lines(ink: np.ndarray, strip: int = 48, cover: float = 0.4, reach: int = 2) -> np.ndarray:
    """Subtract, strip by strip, the ink level that 1 - `cover` of a row reaches in its strip
    and in the `reach` strips on either side (a row or two up or down, for a slight tilt).

    A printed line crosses every strip; a digit's horizontal stroke covers at most a few, so
    its strips' neighbours further out leave it alone. Strips `strip` pixels wide let a line
    tilted by a degree or so still cover most of a strip's row.
    """
    height, width = ink.shape
    count = round(width / strip)
    if count < 2 * reach + 1:  # too narrow to tell a line from a stroke: not a photo of a page
        return ink
    bounds = np.linspace(0, width, count + 1).astype(int)
    # Every other pixel estimates a quantile as well, at half the cost.
    level = np.stack([np.quantile(ink[:, a:b:2], cover, axis=1) for a, b in zip(bounds[:-1], bounds[1:])])
    nearby = _filter1d(level, 5, np.maximum)
    common = level
    strips = np.arange(count)
    for shift in range(1, reach + 1):
        before = np.clip(np.abs(strips - shift), 0, count - 1)  # reflected at the frame's edges
        after = np.clip(count - 1 - np.abs(count - 1 - strips - shift), 0, count - 1)
        common = np.minimum(common, np.minimum(nearby[before], nearby[after]))
    # Printed lines are thin: keep only peaks a few rows wide (a white top-hat along the rows),
    # not the plateau a big digit's thick horizontal stroke makes.
    common = common - _filter1d(_filter1d(common, 7, np.minimum), 7, np.maximum)
    lines = np.repeat(common, np.diff(bounds), axis=0).T
    return np.clip(ink - lines, 0, 1).astype(np.float32)


def select_digit(ink: np.ndarray) -> np.ndarray:
    """Keep the digit's connected ink (the heaviest stroke group and its neighbours); zero the rest.

    Raises NoDigitFound when nothing stands out from the paper.
    """
    level = float(_filter2d(ink, 3, np.add).max()) / 9 if ink.size else 0.0
    if level < MIN_CONTRAST:
        raise NoDigitFound(
            f"no digit found: the darkest stroke differs from the paper by {level:.0%}; "
            f"expected at least {MIN_CONTRAST:.0%}"
        )
    mask = ink > max(MIN_CONTRAST / 2, 0.35 * level)
    parts = Components(mask, ink)
    keep = parts.digit()
    keep_mask = parts.paint(keep)
    # The anti-aliased fringe around the kept strokes belongs to the digit too.
    fringe = _filter2d(keep_mask, 3, np.maximum) > 0
    digit = np.where(fringe, ink, 0).astype(np.float32)
    stroke = float(np.quantile(digit[keep_mask], 0.9))
    return np.clip(digit / max(stroke, MIN_CONTRAST), 0, 1)


class Components:
    """8-connected components of a boolean mask, found on its horizontal runs (cheap in numpy)."""

    def __init__(self, mask: np.ndarray, weight: np.ndarray) -> None:
        self.shape = mask.shape
        padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
        padded[:, 1:-1] = mask
        edges = np.diff(padded, axis=1)
        self.row, self.start = np.nonzero(edges == 1)
        self.end = np.nonzero(edges == -1)[1]
        self.label = self._label()
        sums = np.zeros((mask.shape[0], mask.shape[1] + 1))
        sums[:, 1:] = np.cumsum(weight, axis=1)
        count = self.label.max() + 1 if self.label.size else 0
        self.mass = np.bincount(self.label, sums[self.row, self.end] - sums[self.row, self.start], count)
        self.top = self._extreme(np.minimum, self.row, count, mask.shape[0])
        self.bottom = self._extreme(np.maximum, self.row, count, -1)
        self.left = self._extreme(np.minimum, self.start, count, mask.shape[1])
        self.right = self._extreme(np.maximum, self.end - 1, count, -1)
        height, width = mask.shape
        # Pixels on the frame's border: along the top and bottom rows, and run ends at the sides.
        on_border = np.where((self.row == 0) | (self.row == height - 1), self.end - self.start, 0)
        on_border += (self.start == 0).astype(np.int64) + (self.end == width).astype(np.int64)
        self.border = np.bincount(self.label, on_border, count)

    def _label(self) -> np.ndarray:
        """Union runs that touch a run of the row above (8-connectivity); return a label per run."""
        n = len(self.row)
        width = self.shape[1] + 2
        start_key = self.row * width + self.start
        end_key = self.row * width + self.end
        # Runs of the row above touching run i lie between `first` and `last` (sorted keys).
        first = np.searchsorted(end_key, (self.row - 1) * width + self.start, "left")
        last = np.searchsorted(start_key, (self.row - 1) * width + self.end, "right") - 1
        parent = list(range(n))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i in np.nonzero(last >= first)[0].tolist():
            for j in range(int(first[i]), int(last[i]) + 1):
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        roots = np.array([find(i) for i in range(n)], dtype=np.int64)
        return np.unique(roots, return_inverse=True)[1].reshape(-1) if n else roots

    def _extreme(self, ufunc, values: np.ndarray, count: int, initial: int) -> np.ndarray:
        out = np.full(count, initial, dtype=np.int64)
        ufunc.at(out, self.label, values)
        return out

    def digit(self) -> np.ndarray:
        """Labels of the digit: the heaviest component away from the frame edge, and its neighbours."""
        height, width = self.shape
        at_edge = self.border > 0
        # Paper edges, shadows' rims and the table touch the frame; a digit seldom does, and
        # when it does, a stroke's end touches it, not a tenth of the frame's side.
        long = ((self.bottom - self.top) > height / 2) | ((self.right - self.left) > width / 2)
        long |= self.border > min(height, width) / 10
        score = self.mass * np.where(at_edge, np.where(long, 0.0, 0.2), 1.0)
        main = int(np.argmax(score))
        keep = {main}
        box = [self.top[main], self.left[main], self.bottom[main], self.right[main]]
        for _ in range(4):
            size = max(box[2] - box[0], box[3] - box[1]) + 1
            gap = np.maximum.reduce([
                box[0] - self.bottom, self.top - box[2], box[1] - self.right, self.left - box[3],
            ])
            # A detached bar or loop may lie a little apart; a broken fine stroke's pieces are
            # light but close. Specks are both light and apart.
            share = self.mass / self.mass[main]
            near = ((gap <= 0.3 * size) & (share >= 0.08)) | ((gap <= 0.12 * size) & (share >= 0.015))
            near &= (at_edge <= at_edge[main]) & (long <= long[main])
            near[list(keep)] = False
            if not near.any():
                break
            for label in np.nonzero(near)[0].tolist():
                keep.add(label)
                box = [min(box[0], self.top[label]), min(box[1], self.left[label]),
                       max(box[2], self.bottom[label]), max(box[3], self.right[label])]
        return np.array(sorted(keep))

    def paint(self, labels: np.ndarray) -> np.ndarray:
        """Boolean mask of the given components."""
        mask = np.zeros(self.shape, dtype=bool)
        for run in np.nonzero(np.isin(self.label, labels))[0].tolist():
            mask[self.row[run], self.start[run]:self.end[run]] = True
        return mask


def stroke_width(mask: np.ndarray) -> float:
    """Mean width in pixels of the strokes in a boolean mask: twice the area over the outline."""
    padded = np.pad(mask, 1)
    inner = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return 2 * int(np.count_nonzero(mask)) / max(int(np.count_nonzero(mask & ~inner)), 1)


def thicken_hairlines(ink: np.ndarray, least: float = 1.2, target: float = 2.0) -> np.ndarray:
    """Widen strokes that would come out under `least` pixels wide in the 20x20 box to `target`.

    MNIST's strokes are 1.5-4.5 pixels wide there (median 2.6); a fine pen on a big digit would
    shrink to a faint hairline the model never saw. Thick strokes are left alone: MNIST has
    plenty of blobby digits.
    """
    mask = ink > 0.5
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return ink
    scale = BOX_SIDE / max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    width = stroke_width(mask) * scale
    window = 2 * round((target - width) / scale / 2) + 1
    return _filter2d(ink, window, np.maximum) if width < least and window > 1 else ink


def fit_to_mnist_box(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, scale it to fit 20x20 (aspect kept, anti-aliased), centre its mass in 28x28."""
    rows = np.nonzero(ink.max(axis=1) > 0)[0]
    cols = np.nonzero(ink.max(axis=0) > 0)[0]
    if rows.size == 0:
        raise NoDigitFound("no digit found: the image holds no ink")
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    height, width = crop.shape
    scale = BOX_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    patch = np.clip(np.asarray(Image.fromarray(crop.astype(np.float32), "F").resize(size, resample)), 0, 1)
    out = np.zeros((MNIST_SIDE, MNIST_SIDE), dtype=np.float32)
    cy, cx = centre_of_mass(patch) if patch.sum() > 0 else ((size[1] - 1) / 2, (size[0] - 1) / 2)
    top = min(max(round(MNIST_CENTRE - cy), 0), MNIST_SIDE - size[1])
    left = min(max(round(MNIST_CENTRE - cx), 0), MNIST_SIDE - size[0])
    out[top:top + size[1], left:left + size[0]] = patch
    return out
