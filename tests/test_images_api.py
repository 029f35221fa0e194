"""The image API (`POST /predict`, `POST /models/<name>/predict`) on Flask's test client and a real server."""
from __future__ import annotations

import base64
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from server import create_app
from tests.api_client import FlaskCaller, HttpCaller, encode, png
from tests.conftest import COMMITTED_MNIST, MNIST_SAMPLE, wait_until
from tests.onnx_factory import write_classifier

SAMPLE = np.load(MNIST_SAMPLE)
DIGIT_IMAGES, DIGIT_LABELS = SAMPLE["images"][:50], SAMPLE["labels"][:50]
DIGITS = [str(i) for i in range(10)]
LETTERS = list("ABCDE")
# Small limits, so that every limit is reached by a small request.
LIMITS = {"MAX_CONTENT_LENGTH": 300_000, "MAX_IMAGES_PER_REQUEST": 4, "MAX_IMAGE_PIXELS": 4_000_000}


# --------------------------------------------------------------------------- repositories and servers


def write_logits_classifier(path: Path, **options) -> Path:
    """A random classifier whose graph ends before the softmax, marked `output_kind: logits`."""
    write_classifier(path, **options)
    model = onnx.load(str(path))
    softmax = model.graph.node[-1]
    model.graph.node.remove(softmax)
    model.graph.node[-1].output[0] = softmax.output[0]
    for prop in model.metadata_props:
        if prop.key == "output_kind":
            prop.value = "logits"
    onnx.save(model, str(path))
    return path


def write_letters(repo: Path) -> Path:
    """A second image classifier: input `glyph` [batch, 16, 16], five classes labelled A..E."""
    return write_classifier(
        repo / "letters" / "1" / "model.onnx", input_name="glyph", input_shape=("batch", 16, 16),
        num_classes=5, labels=LETTERS, seed=3,
    )


@pytest.fixture(scope="module")
def random_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("images") / "models"
    write_classifier(repo / "mnist" / "1" / "model.onnx", labels=DIGITS, seed=1)
    write_classifier(repo / "mnist" / "2" / "model.onnx", labels=DIGITS, seed=2)
    write_letters(repo)
    write_classifier(repo / "tabular" / "1" / "model.onnx", input_shape=("N", 8), num_classes=3, preprocessing=None)
    write_classifier(repo / "unlabelled" / "1" / "model.onnx", labels=None, seed=4)
    write_logits_classifier(repo / "logits" / "1" / "model.onnx", labels=DIGITS, seed=5)
    write_classifier(repo / "single" / "1" / "model.onnx", input_shape=(1, 1, 28, 28), labels=DIGITS)
    return repo


@pytest.fixture(scope="module")
def random_server(module_servers, random_repo: Path):
    return module_servers(random_repo, **LIMITS)


@pytest.fixture(params=["flask", "live"])
def caller(request, random_repo: Path):
    """The same calls through Flask's test client and through HTTP to the live server, with the same limits."""
    if request.param == "flask":
        return FlaskCaller(create_app({"TESTING": True, "MODEL_REPOSITORY": str(random_repo), **LIMITS}).test_client())
    return HttpCaller(request.getfixturevalue("random_server").url)


def run_directly(path: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities from onnxruntime itself for float images in [0, 1], shaped as the model wants."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    batch = images.astype(np.float32).reshape((len(images),) + tuple(spec.shape[1:]))
    return session.run(None, {spec.name: batch})[0]


def softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{b64(data)}"


# Every way of sending images: (name, how many images one request carries or None for one each,
# a function from uint8 images to the keyword arguments of one call).
FORMS = {
    "multipart": lambda imgs: {"files": [(f"{i}.png", png(img), "image/png") for i, img in enumerate(imgs)]},
    "raw-png": lambda imgs: {"body": png(imgs[0]), "content_type": "image/png"},
    "raw-bmp": lambda imgs: {"body": encode(imgs[0], "BMP"), "content_type": "image/bmp"},
    "json-image": lambda imgs: {"json": {"image": b64(png(imgs[0]))}},
    "json-data-url": lambda imgs: {"json": {"image": data_url(png(imgs[0]))}},
    "json-images": lambda imgs: {"json": {"images": [data_url(png(img)) for img in imgs]}},
    "json-pixels": lambda imgs: {"json": {"pixels": imgs[0].tolist()}},
}
BATCH_FORMS = {"multipart", "json-images"}


def predict_all(caller, form: str, images: np.ndarray, path: str = "/predict", batch: int = 4) -> list[dict]:
    """Predictions for every image, sent in `form` (batches of `batch` where the form allows)."""
    step = batch if form in BATCH_FORMS else 1
    predictions = []
    for start in range(0, len(images), step):
        answer = caller.post(path, **FORMS[form](images[start:start + step]))
        assert answer.status == 200, answer.text
        predictions += answer.json["predictions"]
    return predictions


# --------------------------------------------------------------------------- the committed model


@pytest.fixture(scope="module")
def committed_repo(tmp_path_factory) -> Path:
    """The committed mnist model beside a second, random-weight image classifier."""
    repo = tmp_path_factory.mktemp("committed") / "models"
    (repo / "mnist" / "1").mkdir(parents=True)
    shutil.copy(COMMITTED_MNIST, repo / "mnist" / "1" / "model.onnx")
    write_letters(repo)
    return repo


@pytest.fixture(scope="module")
def committed_server(module_servers, committed_repo: Path):
    return module_servers(committed_repo, MAX_IMAGES_PER_REQUEST=50)


@pytest.fixture(params=["flask", "live"])
def committed_caller(request, committed_repo: Path):
    if request.param == "flask":
        app = create_app({"TESTING": True, "MODEL_REPOSITORY": str(committed_repo), "MAX_IMAGES_PER_REQUEST": 50})
        return FlaskCaller(app.test_client())
    return HttpCaller(request.getfixturevalue("committed_server").url)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_committed_model_reads_real_mnist_digits_in_every_form(committed_caller, form: str) -> None:
    predictions = predict_all(committed_caller, form, DIGIT_IMAGES, batch=50)
    assert len(predictions) == len(DIGIT_IMAGES)
    labels = [p["label"] for p in predictions]
    right = sum(label == str(truth) for label, truth in zip(labels, DIGIT_LABELS))
    assert right >= 49, f"{right}/50 right; wrong: {[(l, int(t)) for l, t in zip(labels, DIGIT_LABELS) if l != str(t)]}"
    for prediction in predictions:
        assert prediction["index"] == int(prediction["label"])
        assert prediction["confidence"] == max(prediction["probabilities"])
        assert sum(prediction["probabilities"]) == pytest.approx(1, abs=1e-4)


def test_committed_model_answer_has_the_documented_shape(committed_caller) -> None:
    answer = committed_caller.post("/predict", body=png(DIGIT_IMAGES[0]), content_type="image/png")
    assert answer.status == 200
    body = answer.json
    assert list(body) == ["model", "version", "predictions"]
    assert (body["model"], body["version"]) == ("mnist", "1")
    (prediction,) = body["predictions"]
    assert list(prediction) == ["label", "index", "confidence", "probabilities"]
    assert prediction["label"] == str(DIGIT_LABELS[0]) and len(prediction["probabilities"]) == 10


def test_committed_server_also_serves_a_second_model(committed_caller) -> None:
    answer = committed_caller.post("/models/letters/predict", json={"image": b64(png(DIGIT_IMAGES[0]))})
    assert answer.status == 200, answer.text
    assert answer.json["model"] == "letters" and answer.json["predictions"][0]["label"] in LETTERS


def unusual_encodings(digit: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """One digit, dark on white, in the uploads that are valid but odd: (body, Content-Type)."""
    ink = Image.fromarray(255 - digit).resize((112, 112))
    blank = Image.new("L", ink.size, 255)
    lab = Image.merge("LAB", [ink, Image.new("L", ink.size, 128), Image.new("L", ink.size, 128)])
    return {
        "animated-gif": (encode(ink, "GIF", save_all=True, append_images=[blank, blank], duration=100), "image/gif"),
        "16-bit-png": (encode(np.asarray(ink, np.uint16) * 257, "PNG"), "image/png"),
        "cmyk-jpeg": (encode(ink.convert("CMYK"), "JPEG", quality=95), "image/jpeg"),
        "lab-tiff": (encode(lab, "TIFF"), "image/png"),  # a Content-Type that lies is read by content
        "webp": (encode(ink.convert("RGB"), "WEBP", lossless=True), "image/webp"),
    }


@pytest.mark.parametrize("kind", sorted(unusual_encodings(DIGIT_IMAGES[0])))
def test_unusual_but_valid_images_are_read(committed_caller, kind: str) -> None:
    """Animated (first frame), 16-bit, CMYK, LAB: each image gives the digit it shows."""
    for digit, label in zip(DIGIT_IMAGES[:3], DIGIT_LABELS[:3]):
        body, content_type = unusual_encodings(digit)[kind]
        answer = committed_caller.post("/predict", body=body, content_type=content_type)
        assert answer.status == 200, answer.text
        assert answer.json["predictions"][0]["label"] == str(label)


# --------------------------------------------------------------------------- random-weight models


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_gives_what_onnxruntime_gives(caller, random_repo: Path, form: str) -> None:
    images = DIGIT_IMAGES[:6]
    predictions = predict_all(caller, form, images)
    # MNIST's own images pass preprocessing unchanged: the model sees pixels / 255.
    expected = run_directly(random_repo / "mnist" / "2" / "model.onnx", images / 255.0)
    got = np.array([p["probabilities"] for p in predictions])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert [p["index"] for p in predictions] == list(expected.argmax(axis=1))
    assert [p["label"] for p in predictions] == [DIGITS[i] for i in expected.argmax(axis=1)]


def test_several_images_answer_in_order(caller) -> None:
    images = DIGIT_IMAGES[[3, 0, 7]]
    together = predict_all(caller, "multipart", images)
    alone = predict_all(caller, "raw-png", images)
    assert together == alone
    assert len({json.dumps(p) for p in together}) == 3


def batch_histogram(caller) -> tuple[float, float]:
    """(count, sum) of the model_batch_size histogram of mnist version 2."""
    text = caller.get("/metrics").text
    count = sum_ = 0.0
    for line in text.splitlines():
        if 'model="mnist"' in line and 'version="2"' in line:
            if line.startswith("model_batch_size_count"):
                count = float(line.rsplit(" ", 1)[1])
            elif line.startswith("model_batch_size_sum"):
                sum_ = float(line.rsplit(" ", 1)[1])
    return count, sum_


@pytest.mark.parametrize("form", sorted(BATCH_FORMS))
def test_all_images_of_a_request_run_as_one_batch(caller, form: str) -> None:
    count, total = batch_histogram(caller)
    predict_all(caller, form, DIGIT_IMAGES[:3])
    assert batch_histogram(caller) == (count + 1, total + 3)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param({"json": {"image": b64(png(DIGIT_IMAGES[1])), "return_input": True}}, id="json"),
        pytest.param({"json": {"pixels": DIGIT_IMAGES[1].tolist(), "return_input": True}}, id="json-pixels"),
        pytest.param({"files": [("a.png", png(DIGIT_IMAGES[1]), "image/png")], "form": {"return_input": "1"}}, id="multipart"),
    ],
)
def test_return_input_shows_what_the_model_saw(caller, call: dict) -> None:
    answer = caller.post("/predict", **call)
    assert answer.status == 200, answer.text
    seen = np.array(answer.json["predictions"][0]["input"])
    assert seen.shape == (28, 28)
    np.testing.assert_allclose(seen, DIGIT_IMAGES[1] / 255.0, atol=1e-4)


def test_return_input_as_query_for_a_raw_body(caller) -> None:
    with_input = caller.post("/predict?return_input=true", body=png(DIGIT_IMAGES[2]), content_type="image/png")
    without = caller.post("/predict?return_input=0", body=png(DIGIT_IMAGES[2]), content_type="image/png")
    assert np.array(with_input.json["predictions"][0]["input"]).shape == (28, 28)
    assert "input" not in without.json["predictions"][0]


def test_version_query_picks_a_version_and_the_highest_is_the_default(caller, random_repo: Path) -> None:
    image = DIGIT_IMAGES[:1]
    answers = {v: caller.post(f"/models/mnist/predict{v}", body=png(image[0]), content_type="image/png").json
               for v in ("", "?version=1", "?version=2")}
    assert [answers[v]["version"] for v in answers] == ["2", "1", "2"]
    expected = run_directly(random_repo / "mnist" / "1" / "model.onnx", image / 255.0)[0]
    np.testing.assert_allclose(answers["?version=1"]["predictions"][0]["probabilities"], expected, atol=2e-6)
    assert answers[""]["predictions"] == answers["?version=2"]["predictions"]


def test_a_second_model_takes_its_own_input_size_and_labels(caller, random_repo: Path) -> None:
    answer = caller.post("/models/letters/predict", json={"image": b64(png(DIGIT_IMAGES[0])), "return_input": True})
    assert answer.status == 200, answer.text
    (prediction,) = answer.json["predictions"]
    seen = np.array(prediction["input"])
    assert seen.shape == (16, 16) and seen.max() > 0.5
    assert len(prediction["probabilities"]) == 5 and prediction["label"] in LETTERS
    expected = run_directly(random_repo / "letters" / "1" / "model.onnx", seen[None])[0]
    np.testing.assert_allclose(prediction["probabilities"], expected, atol=1e-4)
    pixels = caller.post("/models/letters/predict", json={"pixels": DIGIT_IMAGES[0][6:22, 6:22].tolist()})
    assert pixels.status == 200 and len(pixels.json["predictions"][0]["probabilities"]) == 5


def test_logits_are_turned_into_probabilities(caller, random_repo: Path) -> None:
    answer = caller.post("/models/logits/predict", json={"pixels": DIGIT_IMAGES[4].tolist()})
    assert answer.status == 200, answer.text
    logits = run_directly(random_repo / "logits" / "1" / "model.onnx", DIGIT_IMAGES[4:5] / 255.0)
    assert not np.allclose(logits.sum(axis=1), 1)  # the graph really answers logits
    np.testing.assert_allclose(answer.json["predictions"][0]["probabilities"], softmax(logits)[0], atol=2e-6)


def test_labels_fall_back_to_class_indices(caller) -> None:
    answer = caller.post("/models/unlabelled/predict", json={"pixels": DIGIT_IMAGES[5].tolist()})
    (prediction,) = answer.json["predictions"]
    assert prediction["label"] == str(prediction["index"])


# --------------------------------------------------------------------------- the default model


def default_answer(tmp_path: Path, builders: dict) -> tuple[int, dict]:
    repo = tmp_path / "models"
    for name, build in builders.items():
        build(repo / name / "1" / "model.onnx")
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repo)}).test_client()
    answer = client.post("/predict", json={"pixels": DIGIT_IMAGES[0].tolist()})
    return answer.status_code, answer.get_json()


def digits_model(path: Path) -> None:
    write_classifier(path, labels=DIGITS)


def vector_model(path: Path) -> None:
    write_classifier(path, input_shape=("N", 8), preprocessing=None)


def corrupt_model(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx file")


@pytest.mark.parametrize(
    ("builders", "status", "answer"),
    [
        pytest.param({"mnist": digits_model, "other": digits_model}, 200, "mnist", id="mnist-first"),
        pytest.param({"digits": digits_model, "vector": vector_model}, 200, "digits", id="the-only-classifier"),
        pytest.param({"a": digits_model, "b": digits_model}, 404, "2 image classifiers (a, b)", id="two-classifiers"),
        pytest.param({"vector": vector_model}, 404, "0 image classifiers", id="no-classifier"),
        pytest.param({"mnist": corrupt_model, "digits": digits_model}, 503, "'mnist' version 1 is not ready", id="mnist-failed"),
    ],
)
def test_default_model_rule(tmp_path: Path, builders: dict, status: int, answer: str) -> None:
    got_status, body = default_answer(tmp_path, builders)
    assert got_status == status, body
    assert (body["model"] if status == 200 else body["error"]).find(answer) >= 0, body


# --------------------------------------------------------------------------- errors


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, with one tiny data chunk after it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


DIGIT_PNG = png(DIGIT_IMAGES[0])
BLANK_PNG = png(np.zeros((28, 28), np.uint8))
TRUNCATED_PNG = DIGIT_PNG[: len(DIGIT_PNG) // 2]
HUGE_PNG = png_header_claiming(30_000, 30_000)
PIXELS = DIGIT_IMAGES[0].tolist()
NAN_PIXELS = json.dumps({"pixels": PIXELS}).replace("0", "NaN", 1).encode()
INFINITE_PIXELS = json.dumps({"pixels": PIXELS}).replace("0", "-Infinity", 1).encode()
HUGE_INT_PIXELS = json.dumps({"pixels": PIXELS}).replace("0", "9" * 400, 1).encode()
TRUNCATED_JPEG = encode(DIGIT_IMAGES[0], "JPEG")[:200]


def raw(body: bytes, content_type: str | None = "image/png") -> dict:
    return {"body": body, "content_type": content_type}


def files(*contents: bytes, **form: str) -> dict:
    return {"files": [(f"{i}.png", content, "image/png") for i, content in enumerate(contents)], "form": form}


ERRORS = [
    # media types
    pytest.param("/predict", raw(b"hello", "text/plain"), 415, "received Content-Type 'text/plain'", id="text-plain"),
    pytest.param("/predict", raw(DIGIT_PNG, None), 415, "no Content-Type", id="no-content-type"),
    pytest.param("/predict", raw(b"<svg/>", "image/svg+xml"), 415, "image/png, image/jpeg", id="svg"),
    pytest.param("/predict", raw(b"<a/>", "application/xml"), 415, "application/json", id="xml"),
    # JSON bodies
    pytest.param("/predict", raw(b"{not json", "application/json"), 400, "not valid JSON", id="bad-json"),
    pytest.param("/predict", raw(b"", "application/json"), 400, "not valid JSON", id="json-empty-body"),
    pytest.param("/predict", raw(b'{"image": "\xff"}', "application/json"), 400, "not valid JSON", id="not-utf8"),
    pytest.param("/predict", raw(b"[" * 50_000 + b"]" * 50_000, "application/json"), 400, "not valid JSON", id="deep-nesting"),
    pytest.param("/predict", {"json": [1, 2]}, 400, "received a JSON array", id="json-array"),
    pytest.param("/predict", {"json": {}}, 400, "one of 'image'", id="json-empty-object"),
    pytest.param("/predict", {"json": {"image": "x", "pixels": PIXELS}}, 400, "keys ['image', 'pixels']", id="two-inputs"),
    pytest.param("/predict", {"json": {"img": "x"}}, 400, "unknown keys ['img']", id="unknown-key"),
    pytest.param("/predict", {"json": {"image": 123}}, 400, "'image' is a JSON number", id="image-number"),
    pytest.param("/predict", {"json": {"image": ""}}, 400, "the image is empty", id="image-empty"),
    pytest.param("/predict", {"json": {"image": "not base64!!"}}, 400, "not valid base64", id="not-base64"),
    pytest.param("/predict", {"json": {"image": "data:text/plain;base64,aGVsbG8="}}, 415, "type 'text/plain'", id="data-url-type"),
    pytest.param("/predict", {"json": {"image": "data:image/png,abc"}}, 400, "without ';base64'", id="data-url-no-base64"),
    pytest.param("/predict", {"json": {"image": "data:image/png;base64"}}, 400, "malformed data: URL", id="data-url-malformed"),
    pytest.param("/predict", {"json": {"image": b64(b"GIF89a nonsense")}}, 400, "could not decode", id="undecodable"),
    pytest.param("/predict", {"json": {"image": b64(TRUNCATED_PNG)}}, 400, "could not decode", id="truncated-base64"),
    pytest.param("/predict", {"json": {"image": data_url(BLANK_PNG)}}, 422, "no digit found", id="blank-data-url"),
    pytest.param("/predict", {"json": {"images": []}}, 400, "received no image", id="images-empty"),
    pytest.param("/predict", {"json": {"images": "abc"}}, 400, "'images' is a JSON string", id="images-string"),
    pytest.param("/predict", {"json": {"images": [b64(DIGIT_PNG), 42]}}, 400, "'images'[1] is a JSON number", id="images-item"),
    pytest.param("/predict", {"json": {"images": [b64(DIGIT_PNG)] * 5}}, 413, "received 5 images; at most 4", id="images-too-many"),
    pytest.param("/predict", {"json": {"images": [b64(DIGIT_PNG), b64(BLANK_PNG)]}}, 422, "image 2 of 2: no digit", id="images-one-blank"),
    pytest.param("/predict", {"json": {"pixels": PIXELS[:27]}}, 400, "27 rows", id="pixels-rows"),
    pytest.param("/predict", {"json": {"pixels": [row[:20] for row in PIXELS]}}, 400, "20 items", id="pixels-columns"),
    pytest.param("/predict", raw(NAN_PIXELS, "application/json"), 400, "finite", id="pixels-nan"),
    pytest.param("/predict", raw(INFINITE_PIXELS, "application/json"), 400, "finite", id="pixels-infinity"),
    pytest.param("/predict", raw(HUGE_INT_PIXELS, "application/json"), 400, "too large", id="pixels-huge-int"),
    pytest.param("/predict", {"json": {"pixels": [["a"] * 28] * 28}}, 400, "must be numbers", id="pixels-strings"),
    pytest.param("/predict", {"json": {"pixels": [[-1] * 28] * 28}}, 400, "0..255", id="pixels-negative"),
    pytest.param("/predict", {"json": {"pixels": "28x28"}}, 400, "received str", id="pixels-string"),
    pytest.param("/models/letters/predict", {"json": {"pixels": PIXELS}}, 400, "expected a 16x16", id="pixels-wrong-size"),
    pytest.param("/predict", {"json": {"image": b64(DIGIT_PNG), "return_input": "yes"}}, 400, "true or false", id="return-input-type"),
    # raw image bodies
    pytest.param("/predict", raw(b""), 400, "the image is empty", id="raw-empty"),
    pytest.param("/predict", raw(TRUNCATED_PNG), 400, "could not decode", id="raw-truncated"),
    pytest.param("/predict", raw(TRUNCATED_JPEG, "image/jpeg"), 400, "could not decode", id="raw-truncated-jpeg"),
    pytest.param("/predict", raw(BLANK_PNG), 422, "no digit found", id="raw-blank"),
    pytest.param("/predict", raw(HUGE_PNG), 413, "the limit is 4000000 pixels", id="raw-decompression-bomb"),
    pytest.param("/predict", raw(b"\0" * 400_000), 413, "limit is 300000 bytes (MAX_CONTENT_LENGTH)", id="body-too-large"),
    pytest.param("/predict?return_input=maybe", raw(DIGIT_PNG), 400, "return_input='maybe'", id="raw-return-input"),
    # multipart bodies
    pytest.param("/predict", {"form": {"image": "text"}}, 400, "it came as a text field", id="multipart-text-field"),
    pytest.param("/predict", {"form": {"picture": "x"}}, 400, "received fields: ['picture']", id="multipart-no-file"),
    pytest.param("/predict", files(b""), 400, "the image is empty", id="multipart-empty-file"),
    pytest.param("/predict", raw(DIGIT_PNG, "multipart/form-data"), 400, "no file in field 'image'", id="multipart-no-boundary"),
    pytest.param("/predict", raw(b"--x\r\n", "multipart/form-data; boundary*=UTF-8''%E2%82%AC"), 400, "no file in field 'image'",
                 id="multipart-non-ascii-boundary"),
    pytest.param("/predict", files(*[DIGIT_PNG] * 5), 413, "received 5 images", id="multipart-too-many"),
    pytest.param("/predict", files(DIGIT_PNG, b"junk"), 400, "image 2 of 2: could not decode", id="multipart-second-bad"),
    pytest.param("/predict", files(DIGIT_PNG, return_input="maybe"), 400, "return_input='maybe'", id="multipart-return-input"),
    # models and versions
    pytest.param("/models/nope/predict", raw(DIGIT_PNG), 404, "unknown model 'nope'", id="unknown-model"),
    pytest.param("/models/mnist/predict?version=9", raw(DIGIT_PNG), 404, "no version '9'", id="unknown-version"),
    pytest.param("/models/mnist/predict?version=..", raw(DIGIT_PNG), 404, "versions are numeric", id="bad-version"),
    pytest.param("/models/..%2F..%2Fetc/predict", raw(DIGIT_PNG), 404, "Not Found", id="encoded-slashes"),
    pytest.param("/models/tabular/predict", raw(DIGIT_PNG), 400, "cannot take images", id="not-an-image-model"),
    pytest.param("/models/single/predict", files(DIGIT_PNG, DIGIT_PNG), 400, "exactly 1 image(s)", id="fixed-batch"),
]


@pytest.mark.parametrize(("path", "call", "status", "message"), ERRORS)
def test_bad_requests_get_a_clear_4xx(caller, path: str, call: dict, status: int, message: str) -> None:
    answer = caller.post(path, **call)
    assert answer.status == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json
    assert list(body) == ["error"] and message in body["error"], body


def test_an_image_pillow_would_warn_about_is_refused_without_a_warning_in_the_log(random_server) -> None:
    """100 MP is over MAX_IMAGE_PIXELS and over Pillow's own warning threshold (89 MP): a 413, and the
    server's log holds the request's line but no DecompressionBombWarning."""
    answer = HttpCaller(random_server.url).post("/predict", **raw(png_header_claiming(10_000, 10_000)))
    assert answer.status == 413 and "image of 10000x10000 = 100000000 pixels received" in answer.json["error"]
    assert wait_until(lambda: "POST /predict 413" in random_server.log())
    assert "DecompressionBomb" not in random_server.log()


def test_not_an_image_model_error_points_to_v2(caller) -> None:
    error = caller.post("/models/tabular/predict", **raw(DIGIT_PNG)).json["error"]
    assert "names no preprocessing preset" in error and "config.pbtxt's parameters" in error and "POST /v2/models/tabular/infer" in error


def test_wrong_method_is_a_json_405(caller) -> None:
    answer = caller.get("/predict")
    assert answer.status == 405 and "Method Not Allowed" in answer.json["error"]


def test_the_live_server_stays_healthy_after_every_bad_request(random_server) -> None:
    for param in ERRORS:
        path, call, status, _ = param.values
        # A new connection each time: after a 413 for a body it did not read (over 64 KiB left),
        # gunicorn closes the connection although its answer said keep-alive.
        assert HttpCaller(random_server.url).post(path, **call).status == status
    caller = HttpCaller(random_server.url)
    assert caller.get("/v2/health/live").json == {"live": True}
    assert caller.post("/predict", body=DIGIT_PNG, content_type="image/png").status == 200
    assert "Traceback" not in random_server.log()


# --------------------------------------------------------------------------- what a newcomer meets first (issue 21)


@pytest.mark.parametrize("call", [
    pytest.param(lambda: raw(b"# mnist-serve\nA README, not an image\n"), id="raw"),
    pytest.param(lambda: raw(b"plain bytes", "application/octet-stream"), id="octet-stream"),
    pytest.param(lambda: files(b"not an image at all"), id="multipart"),
])
def test_a_non_image_upload_says_so_without_internal_details(caller, call) -> None:
    answer = caller.post("/predict", **call())
    assert answer.status == 400, answer.json
    error = answer.json["error"]
    assert "not an image of a format the server reads" in error and "PNG, JPEG, GIF, BMP, WEBP, TIFF" in error
    assert "0x" not in error and "BytesIO" not in error and "<" not in error, error


@pytest.mark.parametrize("content_type", ["image/tiff", "application/octet-stream"])
def test_tiff_and_untyped_raw_bodies_are_read(committed_caller, content_type) -> None:
    """TIFF is listed as accepted, so a raw image/tiff body is; octet-stream (curl's and many clients' default) is sniffed."""
    for fmt in ("TIFF", "PNG", "JPEG"):
        answer = committed_caller.post("/predict", body=encode(DIGIT_IMAGES[0], fmt), content_type=content_type)
        assert answer.status == 200, (fmt, answer.json)
        assert answer.json["predictions"][0]["label"] == str(DIGIT_LABELS[0]), fmt


@pytest.mark.parametrize("path", ["/predict", "/models/mnist/predict"])
def test_get_on_an_image_route_says_to_post_an_image(caller, path) -> None:
    answer = caller.get(path)
    assert answer.status == 405 and answer.headers["Content-Type"] == "application/json"
    assert "POST" in answer.headers["Allow"]
    error = answer.json["error"]
    assert f"GET {path} is not allowed; it takes POST" in error and "curl -F image=@digit.png " in error, error
    assert error.split("curl -F image=@digit.png ", 1)[1].split(";")[0].endswith(path)


def test_other_routes_say_which_methods_they_take(caller) -> None:
    answer = caller.post("/v2/health/live")
    assert answer.status == 405 and answer.json["error"].endswith("POST /v2/health/live is not allowed; it takes GET")
