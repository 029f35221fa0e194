"""One way to call the server from tests, through Flask's test client or HTTP to a real server."""
from __future__ import annotations

import io
import json as jsonlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import requests
from PIL import Image

Files = list[tuple[str, bytes, str]]  # (file name, content, media type), all in field `image`


@dataclass
class Answer:
    """A response as the tests look at it."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return jsonlib.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class FlaskCaller:
    """Calls the app in-process with Flask's test client."""

    def __init__(self, client) -> None:
        self.client = client

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Answer:
        return self._answer(self.client.get(path, headers=headers))

    def post(
        self, path: str, *, body: bytes | None = None, content_type: str | None = None, json: Any = None,
        files: Files | None = None, form: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
    ) -> Answer:
        if files is not None or form is not None:
            data: dict = dict(form or {})
            if files:
                data["image"] = [(io.BytesIO(content), name, kind) for name, content, kind in files]
            return self._answer(self.client.post(path, data=data, content_type="multipart/form-data", headers=headers))
        if json is not None:
            return self._answer(self.client.post(path, json=json, headers=headers))
        headers = dict(headers or {})
        if content_type is not None:
            headers["Content-Type"] = content_type
        return self._answer(self.client.post(path, data=body or b"", headers=headers))

    @staticmethod
    def _answer(response) -> Answer:
        return Answer(response.status_code, response.headers, response.get_data())


class HttpCaller(FlaskCaller):
    """Calls a real server over HTTP on 127.0.0.1."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Answer:
        return self._answer(self.session.get(self.url + path, headers=headers, timeout=30))

    def post(
        self, path: str, *, body: bytes | None = None, content_type: str | None = None, json: Any = None,
        files: Files | None = None, form: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
    ) -> Answer:
        headers = dict(headers or {})
        if content_type is not None:
            headers["Content-Type"] = content_type
        if files is not None or form is not None:
            # Text fields go as parts without a file name, so the body is multipart even without files.
            parts = [("image", (name, content, kind)) for name, content, kind in files or []]
            parts += [(key, (None, value)) for key, value in (form or {}).items()]
            response = self.session.post(self.url + path, files=parts, headers=headers, timeout=30)
        else:
            response = self.session.post(self.url + path, data=body, json=json, headers=headers, timeout=30)
        return self._answer(response)

    @staticmethod
    def _answer(response: requests.Response) -> Answer:
        return Answer(response.status_code, response.headers, response.content)


def encode(image: np.ndarray | Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    """An image (uint8 array or Pillow image) encoded as `fmt`."""
    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


def png(image: np.ndarray | Image.Image) -> bytes:
    return encode(image, "PNG")
