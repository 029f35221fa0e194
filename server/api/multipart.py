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


def parse_form(body: bytes, boundary: str) -> Form | None:
    """The files and text fields of a complete multipart body, or None when it is not plain."""
    if not boundary.isascii():  # RFC 2046 boundaries are ASCII; werkzeug decides what else means
        return None
    delimiter = b"\r\n--" + boundary.encode("ascii")
    if not boundary or not body.startswith(delimiter[2:]):
        return None
    end = body.find(delimiter + b"--")
    if end < 0 or body[end + len(delimiter) + 2:].strip(b"\r\n"):
        return None
    files: dict[str, list[bytes]] = {}
    fields: dict[str, list[str]] = {}
    for part in body[len(delimiter) - 2:end].split(delimiter):
        read = _read_part(part)
        if read is None:
            return None
        name, filename, content = read
        if filename is None:
            fields.setdefault(name, []).append(content.decode("utf-8", "replace"))
        else:
            files.setdefault(name, []).append(content)
    return files, fields


def _read_part(part: bytes) -> tuple[str, str | None, bytes] | None:
    """(field name, file name or None, content) of one part as it follows its delimiter line."""
    if not part.startswith(b"\r\n"):
        return None
    head, separator, content = part[2:].partition(b"\r\n\r\n")
    if not separator:
        return None
    headers = {}
    for line in head.split(b"\r\n"):
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
    return options["name"], filename, content
