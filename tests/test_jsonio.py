"""server/jsonio.py: orjson's speed, the standard library's answers (values and errors)."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import jsonio

# Every JSON value, with what orjson refuses and the standard library takes: NaN, infinities and
# integers far beyond 64 bits.
values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=40,
)


def same(a, b) -> bool:
    """Equal, NaN equal to NaN, and of the same types all the way down."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def outcome(text: bytes):
    try:
        return "value", json.loads(text)
    except (ValueError, RecursionError) as err:
        return "error", (type(err), str(err))


def jsonio_outcome(text: bytes):
    try:
        return "value", jsonio.loads(text)
    except (ValueError, RecursionError) as err:
        return "error", (type(err), str(err))


@settings(max_examples=400, deadline=None)
@given(values, st.sampled_from([None, 1]), st.booleans())
def test_same_value_as_the_standard_library(value, indent, ascii_only):
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    expected, got = outcome(text), jsonio_outcome(text)
    assert expected[0] == got[0] == "value"
    assert same(got[1], expected[1])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_same_answer_on_any_input(raw):
    expected, got = outcome(raw), jsonio_outcome(raw)
    assert expected[0] == got[0]
    if got[0] == "value":
        assert same(got[1], expected[1])
    else:
        assert got[1] == expected[1]  # the same exception type and message


@pytest.mark.parametrize("raw", [
    b'{"a": 1, "a": 2}',  # duplicate keys: the last wins
    b"1e400", b"-1e400", b"[1E2, -0, -0.0, 5e-324]", b"18446744073709551616", b"-9223372036854775809",
    b"[NaN, Infinity, -Infinity]", '"\\ud800"'.encode(), b"\xef\xbb\xbf{}", '{"a": [1]}'.encode("utf-16"),
    b"[" * 2000 + b"]" * 2000, b'{"pixels": [[0, 255]]} trailing', b"", b"\xff", "\u2028".encode(),
])
def test_edges_answered_as_the_standard_library(raw):
    expected, got = outcome(raw), jsonio_outcome(raw)
    assert expected[0] == got[0]
    assert same(got[1], expected[1]) if got[0] == "value" else got[1] == expected[1]


def has_nonfinite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(has_nonfinite(item) for item in value)
    if isinstance(value, dict):
        return any(has_nonfinite(item) for item in value.values())
    return False


@settings(max_examples=400, deadline=None)
@given(values)
def test_dumps_writes_the_values_the_standard_library_writes(value):
    """What jsonio.dumps writes reads back as json.dumps' text does; told of non-finite floats, it
    writes NaN and Infinity as the standard library does (orjson alone would write null)."""
    try:
        expected = json.loads(json.dumps(value, separators=(",", ":")))
    except ValueError:  # a lone surrogate json.dumps escapes and json.loads reads back: skip the odd case
        return
    got = json.loads(jsonio.dumps(value, finite=not has_nonfinite(value)))
    assert same(got, expected)
