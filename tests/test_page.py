"""The drawing page in a real headless Chromium (Debian's), against a real server on 127.0.0.1."""
from __future__ import annotations

import io
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import COMMITTED_MNIST, COMMITTED_REPOSITORY, MNIST_SAMPLE, ROOT, SERVE_VENV, LiveServer
from tests.onnx_factory import write_classifier

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
DESKTOP = {"width": 1100, "height": 800}
PHONE = {"width": 375, "height": 740}
DIGITS = [str(i) for i in range(10)]

# Strokes of digits in the pad's unit square, drawn the way a person would.
def ellipse(cx: float, cy: float, rx: float, ry: float, points: int = 24) -> list[tuple[float, float]]:
    angles = np.linspace(0, 2 * np.pi, points + 1)
    return [(cx + rx * float(np.sin(a)), cy - ry * float(np.cos(a))) for a in angles]


STROKES = {
    "0": [ellipse(0.5, 0.5, 0.22, 0.33)],
    "1": [[(0.52, 0.15), (0.50, 0.50), (0.48, 0.85)]],
    "4": [[(0.40, 0.15), (0.25, 0.58), (0.75, 0.58)], [(0.62, 0.30), (0.62, 0.88)]],
    "7": [[(0.25, 0.18), (0.75, 0.18), (0.60, 0.45), (0.45, 0.85)]],
}


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def random_server(module_servers, tmp_path_factory) -> LiveServer:
    """The live server serving one random-weight digit classifier named `mnist`."""
    repo = tmp_path_factory.mktemp("random") / "models"
    write_classifier(repo / "mnist" / "1" / "model.onnx", labels=DIGITS)
    return module_servers(repo)


@pytest.fixture
def open_page(browser: Browser, request):
    """Open the page of a server in a fresh context; fail the test on any request off the server."""
    contexts = []

    def open_(server: LiveServer, viewport: dict = DESKTOP, path: str = "/", ready: str = "#model option",
              **options) -> Page:
        context = browser.new_context(viewport=viewport, **options)
        contexts.append(context)
        page = context.new_page()
        page.off_origin = []
        page.console_errors = []
        origin = urlsplit(server.url).netloc
        page.on("request", lambda r: r.url.startswith("data:") or urlsplit(r.url).netloc == origin
                or page.off_origin.append(r.url))
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        page.goto(server.url + path)
        page.wait_for_selector(ready, state="attached")
        return page

    yield open_
    for context in contexts:
        context.close()


def save_screenshot(page: Page, name: str, capsys) -> Path:
    """Save a full-page screenshot under tests/artifacts/ and say where in the test output."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"page-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():
        print(f" [screenshot: {path.relative_to(ROOT)}]", end="")
    return path


def wait_until_answered(page: Page) -> None:
    # A selector wait, not wait_for_function: the page's CSP forbids the eval that one needs.
    page.wait_for_selector(".result:not([aria-busy])", state="attached")


def draw(page: Page, strokes: list[list[tuple[float, float]]]) -> dict:
    """Draw strokes with the mouse on the pad and return the JSON answer to the last stroke."""
    box = page.locator("#pad").bounding_box()
    answer = None
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        with page.expect_response(lambda r: r.url.split("?")[0].endswith("/predict")) as response:
            page.mouse.move(*points[0])
            page.mouse.down()
            for point in points[1:]:
                page.mouse.move(*point, steps=8)
            page.mouse.up()
        answer = response.value.json()
    wait_until_answered(page)
    return answer


def upload(page: Page, name: str, data: bytes, mime: str) -> requests.Response | None:
    """Choose a file with the upload control and wait for the page to show the answer."""
    with page.expect_response(lambda r: r.url.split("?")[0].endswith("/predict")) as response:
        page.set_input_files("#upload", files=[{"name": name, "mimeType": mime, "buffer": data}])
    wait_until_answered(page)
    return response.value


def shown_probabilities(page: Page) -> dict[str, float]:
    items = page.locator("#chart li")
    return {
        items.nth(i).get_attribute("data-label"): float(items.nth(i).locator(".value").inner_text().rstrip("%"))
        for i in range(items.count())
    }


def seen_pixels(page: Page) -> np.ndarray:
    """The grey levels of the 'what the model saw' canvas."""
    data = page.evaluate(
        "() => { const c = document.querySelector('#seen');"
        " return {w: c.width, h: c.height, px: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)}; }"
    )
    return np.array(data["px"], dtype=np.uint8).reshape(data["h"], data["w"], 4)[..., 0]


def sample_png(index: int) -> tuple[bytes, str]:
    """A real MNIST test digit as PNG bytes (white on black), with its true label."""
    sample = np.load(MNIST_SAMPLE)
    buffer = io.BytesIO()
    Image.fromarray(sample["images"][index]).save(buffer, format="PNG")
    return buffer.getvalue(), str(int(sample["labels"][index]))


def assert_saw_unchanged(page: Page, png: bytes) -> None:
    """A 28x28 MNIST digit passes preprocessing unchanged: the page shows the digit itself."""
    original = np.array(Image.open(io.BytesIO(png))).astype(int)
    assert np.abs(seen_pixels(page).astype(int) - original).max() <= 1


def assert_shows(page: Page, answer: dict) -> None:
    """The page shows exactly the prediction the API answered: digit, confidence, bars, input."""
    prediction = answer["predictions"][0]
    assert page.locator("#digit").inner_text() == prediction["label"]
    assert f"{prediction['confidence'] * 100:.1f}%" in page.locator("#confidence").inner_text()
    shown = shown_probabilities(page)
    assert list(shown) == DIGITS
    for label, probability in zip(DIGITS, prediction["probabilities"]):
        assert shown[label] == pytest.approx(probability * 100, abs=0.051)
    assert page.locator("#chart li.top").get_attribute("data-label") == prediction["label"]
    expected = np.rint(np.clip(np.array(prediction["input"]), 0, 1) * 255)
    assert expected.shape == (28, 28)
    assert np.abs(seen_pixels(page).astype(int) - expected).max() <= 1


def test_models_lists_image_classifiers_and_the_default(tmp_path):
    from server import create_app

    repo = tmp_path / "models"
    write_classifier(repo / "letters" / "2" / "model.onnx", labels=list("ABCDEFGHIJ"))
    write_classifier(repo / "letters" / "10" / "model.onnx", labels=list("ABCDEFGHIJ"))
    write_classifier(repo / "plain" / "1" / "model.onnx", preprocessing=None)
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repo)}).test_client()
    answer = client.get("/models").get_json()
    assert answer == {
        "models": [{"name": "letters", "version": "10", "versions": ["2", "10"], "labels": list("ABCDEFGHIJ"),
                    "preprocessing": "mnist-digit"}],
        "default": "letters",
    }
    write_classifier(repo / "digits" / "1" / "model.onnx", labels=DIGITS)
    answer = create_app({"TESTING": True, "MODEL_REPOSITORY": str(repo)}).test_client().get("/models").get_json()
    assert [m["name"] for m in answer["models"]] == ["digits", "letters"]
    assert answer["default"] is None, "two classifiers and no mnist: POST /predict needs a name"


def test_openapi_documents_the_page_routes(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    assert "text/html" in paths["/"]["get"]["responses"]["200"]["content"]
    assert "default" in paths["/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["properties"]


@pytest.mark.browser
def test_page_is_served_whole_by_the_app(random_server, open_page):
    response = requests.get(random_server.url + "/", timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    page = open_page(random_server)
    assert page.title() == "Draw a digit"
    assert page.locator("#model-picker").is_hidden(), "one classifier needs no picker"
    assert page.off_origin == [] and page.console_errors == []


@pytest.mark.browser
def test_controls_are_labelled_and_reachable_by_keyboard(random_server, open_page):
    page = open_page(random_server)
    assert page.get_by_role("button", name="Clear").is_visible()
    assert page.get_by_label("Upload image…").count() == 1
    assert page.get_by_role("img", name="Drawing pad").is_visible()
    assert page.locator("#summary").get_attribute("aria-live") == "polite"
    focused = []
    for _ in range(2):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id"))
    assert focused == ["clear", "upload"]
    # The file input is hidden; its label must show the focus ring instead.
    outline = page.evaluate("getComputedStyle(document.querySelector('label[for=upload]')).outlineStyle")
    assert outline == "solid"


@pytest.mark.browser
def test_drawing_shows_the_api_answer_and_clear_resets(random_server, open_page, capsys):
    page = open_page(random_server)
    answer = draw(page, STROKES["7"])
    assert answer["model"] == "mnist" and len(answer["predictions"]) == 1
    assert_shows(page, answer)
    assert seen_pixels(page).max() > 200, "the model saw ink"
    save_screenshot(page, "random-model-drawing", capsys)

    page.get_by_role("button", name="Clear").click()
    assert page.locator("#digit").inner_text() == "–"
    assert page.locator("#chart .value").all_inner_texts() == ["–"] * 10
    assert page.locator("#chart li.top").count() == 0
    assert seen_pixels(page).max() == 0
    ink = page.evaluate(
        "() => { const c = document.querySelector('#pad');"
        " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data).some(v => v !== 255); }"
    )
    assert ink is False, "Clear leaves a blank white pad"
    assert page.console_errors == []


@pytest.mark.browser
def test_upload_of_a_digit_image_shows_its_prediction(random_server, open_page):
    page = open_page(random_server)
    png, _ = sample_png(0)
    response = upload(page, "seven.png", png, "image/png")
    assert response.ok
    answer = response.json()
    assert_shows(page, answer)
    assert_saw_unchanged(page, png)


@pytest.mark.browser
def test_server_error_is_shown(random_server, open_page, capsys):
    page = open_page(random_server)
    data = b"these are notes, not a picture"
    response = upload(page, "notes.txt", data, "text/plain")
    assert 400 <= response.status < 500
    error = page.get_by_role("alert")
    assert error.is_visible()
    text = error.inner_text()
    assert f"HTTP {response.status}" in text and response.json()["error"] in text
    assert page.locator("#digit").inner_text() == "–"
    save_screenshot(page, "server-error", capsys)


@pytest.mark.browser
def test_a_server_with_a_token_asks_for_it(browser, module_servers, tmp_path_factory, capsys):
    repo = tmp_path_factory.mktemp("token") / "models"
    write_classifier(repo / "mnist" / "1" / "model.onnx", labels=DIGITS)
    server = module_servers(repo, API_TOKEN="s3cret-token")
    page = browser.new_page(viewport=DESKTOP)
    try:
        assert page.goto(server.url + "/").status == 200
        page.wait_for_selector("#token-box:not([hidden])")
        assert "needs an API token" in page.get_by_role("alert").inner_text()
        page.fill("#token", "s3cret-token")
        page.keyboard.press("Tab")  # leaving the field commits the token
        page.wait_for_selector("#model option", state="attached")
        response = upload(page, "digit.png", sample_png(0)[0], "image/png")
        assert response.status == 200 and response.request.headers["authorization"] == "Bearer s3cret-token"
        assert_shows(page, response.json())
        save_screenshot(page, "token", capsys)
    finally:
        page.close()


@pytest.mark.browser
def test_phone_width_fits_and_draws_with_touch(random_server, open_page, capsys):
    page = open_page(random_server, viewport=PHONE, has_touch=True, is_mobile=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    box = page.locator("#pad").bounding_box()
    assert box["width"] >= 250 and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    touch = page.context.new_cdp_session(page)
    x = box["x"] + box["width"] / 2
    top, bottom = box["y"] + box["height"] * 0.15, box["y"] + box["height"] * 0.85
    with page.expect_response(lambda r: r.url.split("?")[0].endswith("/predict")) as response:
        touch.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": top}]})
        for step in range(1, 11):
            y = top + (bottom - top) * step / 10
            touch.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    wait_until_answered(page)
    assert_shows(page, response.value.json())
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    save_screenshot(page, "phone", capsys)


@pytest.mark.browser
def test_picker_chooses_among_several_classifiers(module_servers, tmp_path_factory, open_page):
    repo = tmp_path_factory.mktemp("several") / "models"
    write_classifier(repo / "mnist" / "1" / "model.onnx", labels=DIGITS)
    letters = list("ABCDEFGHIJ")
    write_classifier(repo / "letters" / "3" / "model.onnx", labels=letters, seed=1)
    write_classifier(repo / "plain" / "1" / "model.onnx", labels=DIGITS, preprocessing=None)
    page = open_page(module_servers(repo))
    picker = page.get_by_label("Model", exact=True)
    assert picker.is_visible()
    options = picker.locator("option")
    assert [options.nth(i).get_attribute("value") for i in range(options.count())] == ["letters", "mnist"]
    assert picker.input_value() == "mnist"
    draw(page, STROKES["1"])
    with page.expect_response(lambda r: "/models/letters/predict" in r.url) as response:
        picker.select_option("letters")
    wait_until_answered(page)
    answer = response.value.json()
    assert answer["model"] == "letters" and answer["version"] == "3"
    assert page.locator("#digit").inner_text() == answer["predictions"][0]["label"]
    assert list(shown_probabilities(page)) == letters
    # The uploaded image, not the pad, is what a new choice of model predicts again.
    png, _ = sample_png(1)
    upload(page, "digit.png", png, "image/png")
    with page.expect_response(lambda r: r.url.endswith("/predict") and "/models/" not in r.url) as response:
        picker.select_option("mnist")
    wait_until_answered(page)
    assert response.value.json()["model"] == "mnist"
    assert_saw_unchanged(page, png)
    assert list(shown_probabilities(page)) == DIGITS


@pytest.fixture(scope="module")
def committed_server(module_servers, tmp_path_factory) -> LiveServer:
    """The live server serving the committed models/ (linked from tmp, so its log stays out of the checkout)."""
    if not COMMITTED_MNIST.exists():
        pytest.skip("the trained model models/mnist/1/model.onnx is not committed yet")
    repo = tmp_path_factory.mktemp("committed") / "models"
    repo.symlink_to(COMMITTED_REPOSITORY, target_is_directory=True)
    return module_servers(repo)


@pytest.mark.browser
@pytest.mark.parametrize("digit", sorted(STROKES))
def test_committed_model_reads_a_drawn_digit(digit, committed_server, open_page, capsys):
    page = open_page(committed_server)
    answer = draw(page, STROKES[digit])
    assert page.locator("#digit").inner_text() == digit, answer
    save_screenshot(page, f"committed-model-{digit}", capsys)


@pytest.mark.browser
def test_committed_model_reads_uploaded_mnist_digits(committed_server, open_page):
    page = open_page(committed_server)
    for index in range(5):
        png, label = sample_png(index)
        upload(page, f"mnist-{index}.png", png, "image/png")
        assert page.locator("#digit").inner_text() == label


# --------------------------------------------------------------------------- the API page, GET /docs


@pytest.mark.browser
def test_the_api_page_renders_every_operation_from_the_server_alone(random_server, open_page, capsys):
    """Swagger UI's files come from the serve environment through this server: no CDN, no validator."""
    page = open_page(random_server, path="/docs", ready=".opblock")
    document = requests.get(random_server.url + "/openapi.json", timeout=10).json()
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item
                  if method in ("get", "post", "put", "delete", "patch")}
    shown = {(block.locator(".opblock-summary-method").inner_text().strip(),
              block.locator(".opblock-summary-path").get_attribute("data-path"))
             for block in page.locator(".opblock").all()}
    assert shown == operations
    assert page.locator(".info .title").first.inner_text().startswith(document["info"]["title"])
    assert page.off_origin == [] and page.console_errors == [], (page.off_origin, page.console_errors)
    save_screenshot(page, "api", capsys)


@pytest.mark.browser
def test_the_api_page_calls_the_server(random_server, open_page):
    """Try it out on GET /v2/health/ready: Swagger UI sends the request and shows the server's answer."""
    page = open_page(random_server, path="/docs", ready=".opblock")
    block = page.locator(".opblock", has=page.locator('[data-path="/v2/health/ready"]'))
    block.locator(".opblock-summary").click()
    block.get_by_role("button", name="Try it out").click()
    with page.expect_response(lambda r: r.url.endswith("/v2/health/ready")) as answered:
        block.get_by_role("button", name="Execute").click()
    assert answered.value.status == 200
    body = block.locator(".responses-wrapper .live-responses-table .response-col_description pre").first
    body.wait_for()
    assert '"ready": true' in body.inner_text()
    assert page.off_origin == [] and page.console_errors == [], (page.off_origin, page.console_errors)


@pytest.mark.browser
def test_the_api_page_asks_for_the_token_a_server_needs(browser, module_servers, tmp_path_factory):
    repo = tmp_path_factory.mktemp("docs-token") / "models"
    write_classifier(repo / "mnist" / "1" / "model.onnx", labels=DIGITS)
    server = module_servers(repo, API_TOKEN="s3cret-token")
    page = browser.new_page(viewport=DESKTOP)
    try:
        assert page.goto(server.url + "/docs").status == 200  # the page itself needs no token
        page.wait_for_selector("#token-form:not([hidden])")
        page.fill("#token", "s3cret-token")
        with page.expect_response(lambda r: r.url.endswith("/openapi.json")) as loaded:
            page.get_by_role("button", name="Open the API").click()
        assert loaded.value.status == 200 and loaded.value.request.headers["authorization"] == "Bearer s3cret-token"
        page.wait_for_selector(".opblock")
        assert page.locator(".opblock").count() >= 10
    finally:
        page.close()


def test_the_api_page_files_come_from_the_serve_environment(client):
    from server.api import api_page

    folder = api_page.swagger_ui_dir()
    assert folder is not None and "site-packages" in folder.parts, folder
    in_serve_env = subprocess.run(
        [str(SERVE_VENV / "bin" / "python"), "-c", "from server.api.api_page import swagger_ui_dir; print(swagger_ui_dir())"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert Path(in_serve_env.stdout.strip()).is_relative_to(SERVE_VENV), in_serve_env
    with client.get("/docs/swagger-ui/swagger-ui-bundle.js") as served:
        assert served.status_code == 200 and served.data == (folder / "swagger-ui-bundle.js").read_bytes()
    refused = client.get("/docs/swagger-ui/index.css")
    assert refused.status_code == 404 and "swagger-ui.css" in refused.json["error"]
    assert client.get("/docs").status_code == 200


def test_the_api_page_with_a_trailing_slash_redirects_to_it(client):
    answer = client.get("/docs/")
    assert answer.status_code == 308 and answer.headers["Location"] == "/docs"
    followed = client.get("/docs/", follow_redirects=True)
    assert followed.status_code == 200 and "swagger-ui" in followed.text


@pytest.mark.browser
def test_a_colour_classifier_shows_the_colour_image_it_saw(module_servers, tmp_path_factory, open_page):
    """An imagenet-preset model: the page shows its normalised [3, H, W] input as a colour picture."""
    repo = tmp_path_factory.mktemp("colour") / "models"
    write_classifier(repo / "colour" / "1" / "model.onnx", input_shape=("N", 3, 32, 32), num_classes=5,
                     labels=list("ABCDE"), preprocessing="imagenet")
    page = open_page(module_servers(repo))
    picture = np.zeros((48, 64, 3), dtype=np.uint8)
    picture[..., 0] = 230  # red, with a blue square in the middle
    picture[16:32, 24:40] = (20, 30, 240)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    response = upload(page, "red.png", buffer.getvalue(), "image/png")
    assert response.ok and response.json()["model"] == "colour"
    assert np.array(response.json()["predictions"][0]["input"]).shape == (3, 32, 32)
    data = page.evaluate(
        "() => { const c = document.querySelector('#seen');"
        " return {w: c.width, h: c.height, px: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)}; }"
    )
    seen = np.array(data["px"], dtype=np.uint8).reshape(data["h"], data["w"], 4).astype(int)
    assert seen.shape[:2] == (32, 32)
    assert seen[2, 2, 0] > seen[2, 2, 2] + 100 and seen[16, 16, 2] > seen[16, 16, 0] + 100
    assert page.console_errors == []
