"""The image API: `POST /predict` and `POST /models/<name>/predict` classify images.

Thin routes: they read the request's images (multipart, a raw image body or JSON) and hand them
to `server/image/classifier.py`, which preprocesses, runs and answers.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from ..v2 import jsonio
from ..limits.budget import body_bytes
from ..image.classifier import DEFAULT_MODEL, ImageClassifier, Item, default_model_name, which_image
from ..errors import InvalidInput, TooLarge, UnsupportedFormat
from ..runtime.layout import VERSION
from . import multipart
from .context import get_memory_budget, get_registry
from .openapi import error_responses, parameter

bp = Blueprint("images", __name__)

IMAGE_FIELD = "image"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/tiff")
# Many clients' default for a file: its bytes are sniffed like any raw image body's.
UNTYPED = "application/octet-stream"
JSON_KEYS = ("image", "images", "pixels", "return_input")
DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
# Where a base64 image starts in a JSON body: a string opening with 24 base64 characters (a JSON
# writer may escape its slashes), after an optional data: URL prefix. Keys and other fields are shorter.
JSON_BASE64_START = re.compile(rb'"(?:data:[^",]{0,200},)?(?=(?:[A-Za-z0-9+=]|\\?/){24})')
HEAD_BYTES = 64 * 1024
HEAD_CHARS = HEAD_BYTES * 4 // 3 * 11 // 10  # base64 of HEAD_BYTES, and room for escaped slashes


@bp.post("/predict")
def predict_default():
    return _predict(default_model_name(get_registry()))


@bp.post("/models/<name>/predict")
def predict_named(name: str):
    return _predict(name)


def _predict(name: str):
    model = get_registry().get(name, request.args.get("version"))
    classifier = ImageClassifier.of(model)
    memory, config = get_memory_budget(), current_app.config
    body = request.get_data()  # read before any wait: a 503 must not leave the client's upload unread
    encoded = encoded_images(body)
    if encoded is not None:  # a request that can never be served is told so (413) before any wait (503)
        _check_count(len(encoded))
        _check_not_empty(encoded)
        classifier.check_sizes(encoded, config["MAX_IMAGE_PIXELS"], memory, config["MAX_REQUEST_PIXELS"])
    elif request.is_json:  # base64 images: the headers their first bytes hold, where they do
        classifier.check_sizes(json_image_heads(body), config["MAX_IMAGE_PIXELS"], memory,
                               config["MAX_REQUEST_PIXELS"], unreadable_ok=True)
    del encoded
    with memory.request():
        with memory.reserve(body_bytes(request.content_length or 0, request.is_json),
                            "reading this request's body"):
            items, return_input = read_items()
        predictions = classifier.predict(
            items, config["MAX_IMAGE_PIXELS"], return_input, memory, config["MAX_REQUEST_PIXELS"],
            config["INFER_CHUNK_ROWS"], config["REQUEST_CPU_SECONDS"])
    return jsonify(model=model.name, version=model.version, predictions=predictions)


# --------------------------------------------------------------------------- reading the request


def read_items() -> tuple[list[Item], bool]:
    """The request's images, in order, and whether it asked for the preprocessed inputs back."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        items, return_input = _read_multipart()
    elif mimetype in IMAGE_TYPES or mimetype == UNTYPED:
        items, return_input = [request.get_data()], _flag(request.args.get("return_input"), "return_input")
    elif mimetype == "application/json" or mimetype.endswith("+json"):
        items, return_input = _read_json()
    else:
        received = f"Content-Type {request.content_type!r:.80}" if request.content_type else "no Content-Type"
        raise UnsupportedFormat(
            f"received {received}; expected multipart/form-data with files in field {IMAGE_FIELD!r}, "
            f"a raw image body ({', '.join(IMAGE_TYPES)}, or {UNTYPED} to let the server tell) or application/json"
        )
    _check_not_empty(items)
    return items, return_input


def _check_not_empty(items: list[Item] | list[bytes | memoryview]) -> None:
    for number, item in enumerate(items, 1):
        if isinstance(item, (bytes, memoryview)) and not len(item):
            raise InvalidInput(f"{which_image(number, len(items))} is empty (0 bytes received); expected an image file")


def encoded_images(body: bytes) -> list[bytes | memoryview] | None:
    """The request's encoded images where reading them copies nothing (a raw image body, a plain
    multipart form's files, as views into the body); None for other bodies (JSON)."""
    mimetype = request.mimetype
    if mimetype in IMAGE_TYPES or mimetype == UNTYPED:
        return [body]
    if mimetype == "multipart/form-data":
        views = multipart.file_views(body, request.mimetype_params.get("boundary", ""), IMAGE_FIELD)
        return views or None  # none: read_items says what is wrong
    return None


def json_image_heads(body: bytes) -> list[bytes]:
    """The first bytes (HEAD_BYTES) of each base64 image in a JSON body, found without parsing the JSON:
    each long base64 run that starts a string, after an optional data: URL prefix. Enough for the
    header of a PNG, GIF, BMP or WebP and of most JPEGs; a header they do not hold is skipped."""
    heads = []
    for match in JSON_BASE64_START.finditer(body):
        text = body[match.end():match.end() + HEAD_CHARS]
        text = text.split(b'"', 1)[0].replace(b"\\/", b"/").replace(b"\\n", b"").replace(b"\\r", b"")
        text = bytes(text.translate(None, b" \t\r\n"))
        try:
            heads.append(binascii.a2b_base64(text[:len(text) // 4 * 4]))
        except binascii.Error:
            continue
        if len(heads) > current_app.config["MAX_IMAGES_PER_REQUEST"]:
            break  # enough to say there are too many
    return heads


def _check_count(count: int) -> None:
    limit = current_app.config["MAX_IMAGES_PER_REQUEST"]
    if count > limit:
        raise TooLarge(f"received {count} images; at most {limit} per request (MAX_IMAGES_PER_REQUEST)")
    if count == 0:
        raise InvalidInput("received no image; expected at least one")


def _read_multipart() -> tuple[list[bytes], bool]:
    """The files in field `image`, and return_input from the query or a form field."""
    boundary = request.mimetype_params.get("boundary", "")
    form = multipart.parse_form(request.get_data(), boundary)
    if form is None:  # not the plain form every client sends: werkzeug's full parser decides
        form = ({name: [f.read() for f in request.files.getlist(name)] for name in request.files},
                {name: request.form.getlist(name) for name in request.form})
    files, fields = form
    if not files.get(IMAGE_FIELD):
        received = sorted(set(files) | set(fields), key=str)  # werkzeug names a part without a name None
        raise InvalidInput(
            f"multipart body has no file in field {IMAGE_FIELD!r}"
            + (" (it came as a text field)" if IMAGE_FIELD in fields else f" (received fields: {received or 'none'})")
            + f"; send the image as a file, e.g. curl -F {IMAGE_FIELD}=@digit.png"
        )
    _check_count(len(files[IMAGE_FIELD]))
    flag = request.args.get("return_input", (fields.get("return_input") or [None])[0])
    return files[IMAGE_FIELD], _flag(flag, "return_input")


def _read_json() -> tuple[list[Item], bool]:
    try:
        body = jsonio.loads(request.get_data())
    except (ValueError, RecursionError) as err:  # RecursionError: absurdly deep nesting
        raise InvalidInput(f"body is not valid JSON ({type(err).__name__}: {str(err)[:100]})") from None
    expected = "expected a JSON object with one of 'image' (base64 or data: URL), 'images' (a list of them) or 'pixels'"
    if not isinstance(body, dict):
        raise InvalidInput(f"received a JSON {_json_type(body)}; {expected}")
    unknown = sorted(set(body) - set(JSON_KEYS))
    given = [key for key in ("image", "images", "pixels") if key in body]
    if unknown or len(given) != 1:
        received = f"unknown keys {unknown}" if unknown else f"keys {sorted(body)}"
        raise InvalidInput(f"received {received}; {expected}, and optionally 'return_input'")
    return_input = body.get("return_input", False)
    if not isinstance(return_input, bool):
        raise InvalidInput(f"'return_input' is a JSON {_json_type(return_input)}; expected true or false")
    return _json_items(given[0], body[given[0]]), return_input


def _json_items(key: str, value: Any) -> list[Item]:
    if key == "image":
        return [decode_base64(value, "'image'")]
    if key == "pixels":
        return [value]  # checked against the model's input size in prepare_images
    if not isinstance(value, list):
        raise InvalidInput(f"'images' is a JSON {_json_type(value)}; expected a list of base64 strings or data: URLs")
    _check_count(len(value))
    return [decode_base64(text, f"'images'[{index}]") for index, text in enumerate(value)]


def decode_base64(text: Any, where: str) -> bytes:
    """The bytes of a base64 string or a base64 `data:image/...` URL."""
    if not isinstance(text, str):
        raise InvalidInput(f"{where} is a JSON {_json_type(text)}; expected a base64 string or a data: URL")
    if text[:5].lower() == "data:":
        match = DATA_URL.match(text)
        if not match:
            raise InvalidInput(f"{where} is a malformed data: URL; expected data:image/png;base64,...")
        if match["type"].lower() not in IMAGE_TYPES:
            raise UnsupportedFormat(
                f"{where} is a data: URL of type {match['type']!r:.60}; expected one of {', '.join(IMAGE_TYPES)}"
            )
        if ";base64" not in match["params"].lower():
            raise InvalidInput(f"{where} is a data: URL without ';base64'; expected data:{match['type']};base64,...")
        text = text[match.end():]
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where} is not valid base64 ({len(text)} characters starting {text[:16]!r})") from None


def _flag(value: str | None, name: str) -> bool:
    word = (value or "").strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise InvalidInput(f"{name}={value!r:.40}; expected one of {', '.join(TRUE_WORDS + FALSE_WORDS[1:])}")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


# --------------------------------------------------------------------------- OpenAPI

_IMAGE_BODY = {"type": "string", "format": "binary"}
_RETURN_INPUT = {
    "type": "boolean",
    "default": False,
    "description": "add each image's preprocessed input (what the model saw) to its prediction",
}
_JSON_INPUTS = {
    "image": {"type": "string", "description": "base64 image, or a data:image/...;base64, URL"},
    "images": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string"},
        "description": "several base64 images or data: URLs, run as one batch (at most MAX_IMAGES_PER_REQUEST)",
    },
    "pixels": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "array", "minItems": 1, "items": {"type": "number", "minimum": 0, "maximum": 255}},
        "description": "the model's input as H x W numbers (28 x 28 for mnist), 0..1 or 0..255, "
        "white digit on black; used as they are, without preprocessing",
    },
}
_JSON_BODY = {
    "description": "exactly one of image, images or pixels, and optionally return_input",
    "oneOf": [
        {
            "type": "object",
            "required": [key],
            "additionalProperties": False,
            "properties": {key: schema, "return_input": _RETURN_INPUT},
        }
        for key, schema in _JSON_INPUTS.items()
    ],
}
_MULTIPART_BODY = {
    "type": "object",
    "required": [IMAGE_FIELD],
    "properties": {
        IMAGE_FIELD: {"type": "array", "minItems": 1, "items": _IMAGE_BODY, "description": "one or more image files"},
        "return_input": {"type": "string", "enum": ["1", "0", "true", "false"]},
    },
}


def _predict_operation(summary: str, parameters: list) -> dict:
    return {
        "post": {
            "summary": summary,
            "description": "Send one or more images as multipart/form-data (files in field 'image'), as a raw "
            "image body, or as JSON. All images of a request run as one batch; the answer has one "
            "prediction per image, in order. Raw and multipart bodies take return_input as a query "
            "or form field. Too many images is a 413.",
            "tags": ["images"],
            "parameters": parameters + [
                parameter("version", "query", VERSION.pattern, "model version (default: the highest loaded)", required=False),
                {"name": "return_input", "in": "query", "required": False,
                 "description": "for raw and multipart bodies: 1 adds each preprocessed input",
                 "schema": {"type": "string", "enum": ["1", "0", "true", "false"]}},
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": _MULTIPART_BODY},
                    "application/json": {"schema": _JSON_BODY},
                    **{media_type: {"schema": _IMAGE_BODY} for media_type in (*IMAGE_TYPES, UNTYPED)},
                },
            },
            "responses": {
                "200": {
                    "description": "One prediction per image",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}},
                },
                **error_responses("400", "404", "413", "415", "422", "503"),
            },
        }
    }


OPENAPI_PATHS: dict = {
    "/predict": _predict_operation(
        f"Classify images with the default model ({DEFAULT_MODEL!r}, else the only image classifier)", []
    ),
    "/models/{name}/predict": _predict_operation(
        "Classify images with the model `name`",
        [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
    ),
}
