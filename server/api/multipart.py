"""A lean reader of whole, plain multipart/form-data bodies; werkzeug's parser handles the rest.

`curl -F image=@digit.png` and every HTTP client send the plain form this reads: a delimiter
line, each part's Content-Disposition (and Content-Type) header, its bytes, the closing delimiter.
Parsing that with bytes.split costs a tenth of werkzeug's streaming parser, which was the largest
piece of the server's own work on a `/predict` upload (docs/benchmarks.md). Anything else (a
preamble, other part headers, a missing closing delimiter) is left to werkzeug by returning None.
"""
from __future__ import annotations

from werkzeug.http import parse_options_header

Form = tuple[dict[str, list[bytes]], dict[str, list[str]]]  # (files by field, text fields by name)
KNOWN_HEADERS = {b"content-disposition", b"content-type"}


Part = tuple[str, "str | None", int, int]  # field name, file name or None, where its content starts and ends


def parse_form(body: bytes, boundary: str) -> Form | None:
    """The files and text fields of a complete multipart body, or None when it is not plain."""
    parts = _parts(body, boundary)
    if parts is None:
        return None
    files: dict[str, list[bytes]] = {}
    fields: dict[str, list[str]] = {}
    for name, filename, start, end in parts:
        if filename is None:
            fields.setdefault(name, []).append(body[start:end].decode("utf-8", "replace"))
        else:
            files.setdefault(name, []).append(body[start:end])
    return files, fields


def file_views(body: bytes, boundary: str, field: str) -> list[memoryview] | None:
    """The files of `field` in a plain multipart body as views into it (nothing copied), or None when not plain."""
    parts = _parts(body, boundary)
    if parts is None:
        return None
    view = memoryview(body)
    return [view[start:end] for name, filename, start, end in parts if name == field and filename is not None]


def _parts(body: bytes, boundary: str) -> list[Part] | None:
    """Each part of a complete plain multipart body, as offsets into it; None when it is not plain."""
    if not boundary.isascii():  # RFC 2046 boundaries are ASCII; werkzeug decides what else means
        return None
    delimiter = b"\r\n--" + boundary.encode("ascii")
    first = 2 if body.startswith(delimiter) else 0  # an empty line before the first delimiter (werkzeug's client)
    if not boundary or not body.startswith(delimiter[2:], first):
        return None
    end = body.find(delimiter + b"--", first)
    if end < 0 or body[end + len(delimiter) + 2:].strip(b"\r\n"):
        return None
    parts, start = [], first + len(delimiter) - 2
    while True:
        found = body.find(delimiter, start, end)
        stop = end if found < 0 else found
        part = _read_part(body, start, stop)
        if part is None:
            return None
        parts.append(part)
        if found < 0:
            return parts
        start = stop + len(delimiter)


def _read_part(body: bytes, start: int, stop: int) -> Part | None:
    """(field name, file name or None, content start, content end) of the part at body[start:stop],
    as it follows its delimiter line."""
    if not body.startswith(b"\r\n", start, stop):
        return None
    separator = body.find(b"\r\n\r\n", start + 2, stop)
    if separator < 0:
        return None
    headers = {}
    for line in body[start + 2:separator].split(b"\r\n"):
        key, colon, value = line.partition(b":")
        key = key.strip().lower()
        if not colon or key not in KNOWN_HEADERS:
            return None
        try:  # headers are UTF-8, as werkzeug reads them
            headers[key] = value.strip().decode()
        except UnicodeDecodeError:
            return None
    kind, options = parse_options_header(headers.get(b"content-disposition"))
    if kind != "form-data" or "name" not in options:
        return None
    filename = options.get("filename")
    if filename is None and "charset" in headers.get(b"content-type", ""):
        return None  # a text field in another charset
    return options["name"], filename, separator + 4, stop
