"""server.multipart: the lean form reader gives what werkzeug's parser gives, or hands over to it."""
from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3 import encode_multipart_formdata
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from server.api.multipart import parse_form

NAMES = st.sampled_from(["image", "return_input", "x", "名前", 'a"b', "a;b"])
FILE_NAMES = st.one_of(st.none(), st.sampled_from(["digit.png", "", "a b.jpg", "ü.png", 'we"ird.png']))
PARTS = st.lists(st.tuples(NAMES, FILE_NAMES, st.binary(max_size=64)), min_size=1, max_size=5)


def werkzeug_form(body: bytes, content_type: str) -> tuple[dict, dict]:
    """What werkzeug's own parser makes of the body: (files by field, text fields by name)."""
    environ = EnvironBuilder(method="POST", input_stream=io.BytesIO(body), content_length=len(body),
                             content_type=content_type).get_environ()
    with Request(environ) as request:
        files = {name: [f.read() for f in request.files.getlist(name)] for name in request.files}
        return files, {name: request.form.getlist(name) for name in request.form}


def encode(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str, str]:
    """The body as urllib3 (and so requests) sends it, its Content-Type and its boundary."""
    fields = [(name, (filename, content, "image/png") if filename is not None else content.decode("latin-1"))
              for name, filename, content in parts]
    body, content_type = encode_multipart_formdata(fields)
    return body, content_type, content_type.split("boundary=")[1]


@settings(max_examples=150, deadline=None)
@given(parts=PARTS)
def test_plain_bodies_read_as_werkzeug_reads_them(parts) -> None:
    body, content_type, boundary = encode(parts)
    form = parse_form(body, boundary)
    assert form is not None
    assert form == werkzeug_form(body, content_type)


@settings(max_examples=300, deadline=None)
@given(parts=PARTS, keep=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                  st.integers(0, 255)), max_size=3))
def test_damaged_bodies_are_read_alike_or_handed_over(parts, keep, flips) -> None:
    body, content_type, boundary = encode(parts)
    damaged = bytearray(body[: max(1, int(len(body) * keep))] if keep < 0.95 else body)
    for where, value in flips:
        damaged[int(where * len(damaged))] = value
    form = parse_form(bytes(damaged), boundary)
    if form is not None:  # what the lean reader accepts, werkzeug must read the same way
        assert form == werkzeug_form(bytes(damaged), content_type)


def test_a_preamble_or_a_missing_end_is_left_to_werkzeug() -> None:
    body, _, boundary = encode([("image", "digit.png", b"\x89PNG")])
    assert parse_form(b"preamble\r\n" + body, boundary) is None
    assert parse_form(body[: body.rindex(b"--")], boundary) is None
    assert parse_form(body, "") is None
    assert parse_form(body, "€" + boundary) is None  # an RFC 2231 parameter can decode to anything


def test_an_empty_line_before_the_first_delimiter_is_read_as_werkzeug_reads_it() -> None:
    body, content_type, boundary = encode([("image", "digit.png", b"\x89PNG"), ("return_input", None, b"1")])
    form = parse_form(b"\r\n" + body, boundary)  # werkzeug's test client starts its bodies so
    assert form is not None and form == werkzeug_form(b"\r\n" + body, content_type)
