"""server.image.decoding and server.image.digit: decoding, every image mode, MNIST passthrough, photos and canvas drawings."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageFilter

from training.photo_pages import CLEAN_KINDS, PHOTO_KINDS, make_sample
from server.image.decoding import decode_image, pixels_to_array
from server.image.digit import mnist_digit, reduce_large
from server.errors import InvalidInput, NoDigitFound, ServingError, TooLarge
from tests.conftest import COMMITTED_MNIST, MNIST_SAMPLE

MAX_PIXELS = 25_000_000


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(MNIST_SAMPLE)
    return data["images"], data["labels"]


@pytest.fixture(scope="module")
def classify():
    """Digits the committed model reads in a list of 28x28 arrays."""
    session = ort.InferenceSession(str(COMMITTED_MNIST), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(arrays: list[np.ndarray]) -> np.ndarray:
        batch = np.stack(arrays)[:, None].astype(np.float32)
        return session.run(None, {name: batch})[0].argmax(axis=1)

    return run


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def on_paper(digit: np.ndarray, side: int = 280, scale: float = 0.7, offset=(0, 0)) -> Image.Image:
    """A 28x28 MNIST digit drawn black on a white `side` square, `scale` of its height, at `offset`."""
    size = max(2, round(side * scale))
    ink = Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR)
    page = Image.new("L", (side, side), 255)
    left = (side - size) // 2 + offset[0]
    top = (side - size) // 2 + offset[1]
    page.paste(Image.eval(ink, lambda v: 255 - v), (left, top))
    return page


def thin_pen(digit: np.ndarray) -> Image.Image:
    """The middle of the digit's strokes only, drawn big: a fine pen's line, a third of MNIST's width."""
    core = np.where(digit > 128, 255, 0).astype(np.uint8)
    return on_paper(core, scale=0.8).point(lambda v: 0 if v < 30 else 255)


def exif_rotated(digit: np.ndarray) -> Image.Image:
    """A JPEG stored on its side with an EXIF tag saying how to turn it upright, decoded."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored = on_paper(digit).transpose(Image.Transpose.ROTATE_90)
    return decode_image(encode(stored, "JPEG", quality=90, exif=exif.tobytes()), MAX_PIXELS)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two 28x28 images."""
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# --------------------------------------------------------------------------- MNIST itself


def test_mnist_images_pass_through_bit_exact(mnist):
    images, _ = mnist
    for image in images:
        out = mnist_digit(Image.fromarray(image))
        assert out.dtype == np.float32 and out.shape == (28, 28)
        assert np.array_equal(out, image.astype(np.float32) / 255)


def test_mnist_png_bytes_pass_through_bit_exact(mnist):
    images, _ = mnist
    for image in images[:20]:
        decoded = decode_image(encode(Image.fromarray(image)), MAX_PIXELS)
        assert np.array_equal(mnist_digit(decoded), image.astype(np.float32) / 255)


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda d: Image.fromarray(255 - d), id="inverted-28"),
        pytest.param(lambda d: on_paper(d), id="canvas-black-on-white"),
        pytest.param(lambda d: Image.eval(on_paper(d), lambda v: 255 - v), id="canvas-white-on-black"),
        pytest.param(lambda d: on_paper(d, side=600, scale=0.12, offset=(170, -150)), id="small-off-centre"),
        pytest.param(lambda d: on_paper(d, side=1200, scale=0.9), id="large"),
        pytest.param(lambda d: Image.open(io.BytesIO(encode(on_paper(d).convert("RGB"), "JPEG", quality=40))),
                     id="jpeg-q40"),
    ],
)
def test_variants_look_like_the_mnist_original(mnist, variant):
    images, _ = mnist
    scores = [similarity(mnist_digit(variant(image)), image / 255.0) for image in images[:30]]
    assert np.median(scores) > 0.85 and min(scores) > 0.6


SAME_DIGIT_VARIANTS = {
    "inverted-28": lambda d: Image.fromarray(255 - d),
    "off-centre": lambda d: on_paper(d, side=600, scale=0.3, offset=(170, -150)),
    "small": lambda d: on_paper(d, side=800, scale=0.1),
    "large": lambda d: on_paper(d, side=1200, scale=0.9),
    "rgba-transparent": lambda d: _modes(on_paper(d))["RGBA-transparent"],
    "jpeg-q50": lambda d: Image.open(io.BytesIO(encode(on_paper(d).convert("RGB"), "JPEG", quality=50))),
    "exif-rotated": exif_rotated,
    "thick": lambda d: on_paper(d, side=140, scale=0.8).filter(ImageFilter.MinFilter(11)).resize((280, 280)),
    "thin": thin_pen,
}


@pytest.mark.parametrize("variant", list(SAME_DIGIT_VARIANTS))
def test_variants_give_the_same_digit_with_the_committed_model(mnist, classify, variant):
    images, labels = mnist
    images, labels = images[:50], labels[:50]
    make = SAME_DIGIT_VARIANTS[variant]
    original = classify([image / 255.0 for image in images])
    changed = classify([mnist_digit(make(image)) for image in images])
    assert np.mean(original == labels) >= 0.96
    assert np.mean(changed == original) >= 0.94, f"{variant}: {np.mean(changed == original):.0%} agree"


def test_generated_photos_scans_and_canvases_are_read(mnist, classify):
    """A bounded run of bench/photo_eval.py's set: 6 photos of every page kind, 4 scans, 4 canvases."""
    images, labels = mnist
    kinds = [kind for kind in PHOTO_KINDS for _ in range(6)] + [kind for kind in CLEAN_KINDS for _ in range(4)]
    samples = [make_sample(kind, images[i], int(labels[i]), 7, i) for i, kind in enumerate(kinds)]
    read = classify([mnist_digit(decode_image(sample.data, MAX_PIXELS)) for sample in samples])
    wrong = [(s.kind, s.label, int(p), s.note) for s, p in zip(samples, read) if p != s.label]
    assert len(wrong) <= 2, wrong


# --------------------------------------------------------------------------- decoding


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but whose data is one compressed row: decoding fails."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)


def test_header_only_png_fails_to_decode_when_small():
    with pytest.raises(InvalidInput):
        decode_image(png_header(200, 100), MAX_PIXELS)


@pytest.mark.parametrize("width,height,limit", [(30000, 30000, MAX_PIXELS), (200, 100, 10_000)])
def test_too_many_pixels_is_413_before_decoding(width, height, limit):
    with pytest.raises(TooLarge) as err:
        decode_image(png_header(width, height), limit)
    assert err.value.status == 413
    assert str(width * height) in err.value.message or "exceeds" in err.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_image_is_400(mnist, fmt):
    data = encode(on_paper(mnist[0][0]).convert("RGB"), fmt)
    with pytest.raises(InvalidInput) as err:
        decode_image(data[: len(data) // 2], MAX_PIXELS)
    assert err.value.status == 400 and "bytes" in err.value.message


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_undecodable_bytes_are_400(data):
    with pytest.raises(InvalidInput) as err:
        decode_image(data, MAX_PIXELS)
    assert f"{len(data)} bytes" in err.value.message


def test_exif_orientation_is_applied(mnist):
    upright = on_paper(mnist[0][0])
    decoded = exif_rotated(mnist[0][0])
    assert decoded.size == upright.size
    assert similarity(mnist_digit(decoded), mnist_digit(upright)) > 0.95


def test_large_jpeg_is_decoded_at_reduced_scale(mnist):
    page = Image.new("L", (4000, 3000), 255)
    page.paste(on_paper(mnist[0][0], side=3000), (500, 0))
    decoded = decode_image(encode(page, "JPEG", quality=80), MAX_PIXELS)
    assert 512 <= min(decoded.size) and max(decoded.size) <= 2000
    assert similarity(mnist_digit(decoded), mnist[0][0] / 255.0) > 0.85


# --------------------------------------------------------------------------- image modes


def _modes(page: Image.Image) -> dict[str, Image.Image]:
    rgba = Image.new("RGBA", page.size, (0, 0, 0, 0))
    rgba.putalpha(Image.eval(page, lambda v: 255 - v))  # ink opaque, paper transparent
    wide = Image.fromarray((np.asarray(page, dtype=np.uint16) * 257))
    frames = [page.convert("P"), Image.new("P", page.size, 0)]
    return {
        "RGBA-transparent": rgba,
        "LA": page.convert("LA"),
        "P": page.convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
        "1": page.convert("1"),
        "I;16-png": Image.open(io.BytesIO(encode(wide))),
        "CMYK-jpeg": Image.open(io.BytesIO(encode(page.convert("CMYK"), "JPEG", quality=90))),
        "animated-gif": Image.open(io.BytesIO(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))),
        "F": page.convert("F"),
        "I": page.convert("I"),
    }


@pytest.mark.parametrize("mode", list(_modes(Image.new("L", (8, 8))).keys()))
def test_every_mode_gives_the_same_digit(mnist, mode):
    digit = mnist[0][0]
    page = on_paper(digit).point(lambda v: 255 if v > 128 else 0)  # two levels: "1" keeps them
    image = _modes(page)[mode]
    if mode == "I;16-png":
        assert image.mode.startswith("I;16")
    out = mnist_digit(decode_image(encode_any(image), MAX_PIXELS) if mode.endswith(("png", "jpeg", "gif")) else image)
    assert similarity(out, mnist_digit(page)) > 0.9


def encode_any(image: Image.Image) -> bytes:
    """The bytes an already-opened image was read from (its format kept)."""
    image.fp.seek(0)
    return image.fp.read()


@pytest.mark.parametrize("mode", ["RGBA-transparent", "P", "I;16-png", "1"])
def test_large_images_of_any_mode_are_reduced_first(mnist, mode):
    digit = mnist[0][0]
    page = on_paper(digit, side=2200, scale=0.5).point(lambda v: 255 if v > 128 else 0)
    image = _modes(page)[mode]
    assert max(reduce_large(image).size) <= 2 * 2 * 512
    out = mnist_digit(image)
    assert similarity(out, mnist_digit(page)) > 0.95 and similarity(out, digit / 255.0) > 0.8


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(Image.new("L", (280, 280), 255), id="white"),
        pytest.param(Image.new("L", (280, 280), 0), id="black"),
        pytest.param(Image.new("RGB", (64, 48), (120, 130, 140)), id="grey"),
        pytest.param(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), id="transparent"),
        pytest.param(Image.new("L", (1, 1), 0), id="one-pixel"),
        pytest.param(Image.linear_gradient("L").resize((300, 200)), id="gradient"),
    ],
)
def test_blank_image_is_422(image):
    with pytest.raises(NoDigitFound) as err:
        mnist_digit(image)
    assert err.value.status == 422 and "no digit found" in err.value.message


IMAGE_MODES = ["L", "RGB", "RGBA", "LA", "P", "1", "CMYK", "I", "F", "I;16", "YCbCr", "PA"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    array=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.float32]),
        shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=200),
        elements={"min_value": 0, "max_value": 255, "allow_nan": False},
    ),
    mode=st.sampled_from(IMAGE_MODES),
)
def test_any_image_gives_a_valid_digit_or_a_clean_error(array, mode):
    base = Image.fromarray(array.astype(np.float32) if array.dtype == np.float32 else array)
    image = base if mode == "F" else base.convert("L" if mode == "I;16" else mode)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image, dtype=np.uint16) * 257)
    try:
        out = mnist_digit(image)
    except ServingError as err:
        assert 400 <= err.status < 500
        return
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


# What each format can carry, as an upload would: (format, mode) pairs Pillow writes.
ENCODINGS = [
    *(("PNG", m) for m in ["L", "RGB", "RGBA", "LA", "P", "1", "I;16"]),
    *(("JPEG", m) for m in ["L", "RGB", "CMYK"]),
    *(("GIF", m) for m in ["L", "P"]),
    *(("BMP", m) for m in ["L", "RGB", "1"]),
    *(("WEBP", m) for m in ["RGB", "RGBA"]),
    *(("TIFF", m) for m in ["L", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "LAB", "YCbCr"]),
]


def encode_as(array: np.ndarray, fmt: str, mode: str) -> bytes:
    """`array` (uint8, 2-D) saved as `fmt` in colour mode `mode`."""
    gray = Image.fromarray(array)
    if mode == "I;16":
        image = Image.fromarray(array.astype(np.uint16) * 257)
    elif mode == "LAB":
        image = Image.merge("LAB", [gray, Image.new("L", gray.size, 128), Image.new("L", gray.size, 128)])
    else:
        image = gray.convert(mode)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


# Pillow warns about the damaged TIFF tags it skips; the server lets it, so the test does too.
@pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    array=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=120)),
    encoding=st.sampled_from(ENCODINGS),
    keep=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=3),
)
def test_any_uploaded_bytes_give_a_valid_digit_or_a_clean_error(array, encoding, keep, flips):
    """Encoded in any format and mode, then maybe truncated or with bytes changed: 4xx or a digit."""
    data = bytearray(encode_as(array, *encoding))
    if keep < 0.9:
        data = data[: int(len(data) * keep)]
    for where, value in flips:
        if data:
            data[int(where * len(data))] = value
    try:
        out = mnist_digit(decode_image(bytes(data), MAX_PIXELS))
    except ServingError as err:
        assert 400 <= err.status < 500
        return
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


# --------------------------------------------------------------------------- pixels


def test_pixels_in_unit_and_byte_scales(mnist):
    digit = mnist[0][0]
    assert np.array_equal(pixels_to_array(digit.tolist()), (digit / 255.0).astype(np.float32))
    unit = (digit / 255.0).tolist()
    assert np.allclose(pixels_to_array(unit), digit / 255.0)
    assert pixels_to_array(unit).dtype == np.float32


@pytest.mark.parametrize(
    "value,words",
    [
        ("abc", "received str"),
        ([[0] * 28] * 27, "27 rows"),
        ([[0] * 28] * 27 + [[0] * 27], "row 27 has 27 items"),
        ([[0] * 28] * 27 + [5], "row 27 has int"),
        ([[0] * 28] * 27 + [[0] * 27 + ["x"]], "received str"),
        ([[0] * 28] * 27 + [[0] * 27 + [True]], "received bool"),
        ([[0] * 28] * 27 + [[0] * 27 + [float("nan")]], "NaN"),
        ([[0] * 28] * 27 + [[0] * 27 + [float("inf")]], "NaN or infinity"),
        ([[0] * 28] * 27 + [[0] * 27 + [-1]], "from -1"),
        ([[0] * 28] * 27 + [[0] * 27 + [256]], "to 256"),
        ([[0] * 28] * 27 + [[0] * 27 + [10**400]], "too large"),
    ],
)
def test_bad_pixels_are_400(value, words):
    with pytest.raises(InvalidInput) as err:
        pixels_to_array(value)
    assert words in err.value.message
