"""Why a model version failed to load, in one line a person can act on.

onnxruntime's messages run over several lines, name its source files and C++ functions, and echo
its own log; the useful parts are the first line (what failed) and the last (often the cause).
This keeps those two, without the source references, and turns the failures with a known remedy
(a missing locale) into a line saying what to install. Plain Python, no onnxruntime import.
"""
from __future__ import annotations

import re
from typing import Mapping

# Each of the kept lines is at most this long (the middle of a longer one is elided).
MAX_LINE = 240
ELISION = " ... "
# "/onnxruntime_src/onnxruntime/core/.../string_normalizer.cc:235 onnxruntime::A::B(const T&)::<lambda()> "
SOURCE_REFERENCE = re.compile(
    r"(?:\S+/)?[\w.+-]+\.(?:cc|cpp|cxx|c|h|hpp):\d+ "
    r"(?:[\w:~<>,*&\[\] ]*?\([^()]*\)(?: const)?(?:::<lambda\(\)>)? )?"
)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# onnxruntime's own log line, echoed after the message: "2026-11-30 08:13:01.2 [E:onnxruntime:, ...] ..."
ORT_LOG_LINE = re.compile(r"^\s*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[.\d]* \[[EWIV]:onnxruntime")
ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : ")
MISSING_LOCALE = re.compile(r"Failed to construct locale with name:\s*([\w.@-]+)")
# onnxruntime refusing external data outside the model's folder (by '..', an absolute path or a link).
ESCAPING_DATA = re.compile(
    r"External data path validation failed for initializer: (?P<tensor>.+?)\. Error: .*?"
    r"(?:External data path: \"(?P<location>[^\"]*)\"|Absolute path not allowed)"
)


def failure_reason(err: BaseException, replacements: Mapping[str, str] | None = None) -> str:
    """One line: `err`'s useful first and last lines, with each `replacements` key (a server path)
    written as its value (what clients may see)."""
    text = str(err)
    for old, new in sorted((replacements or {}).items(), key=lambda item: -len(item[0])):
        text = text.replace(old, new)
    locale = MISSING_LOCALE.search(text)
    if locale:
        return missing_locale(locale.group(1))
    escaping = ESCAPING_DATA.search(text)
    if escaping:
        location = repr(escaping.group("location")) if escaping.group("location") else "an absolute path"
        return (
            f"refused: initializer {escaping.group('tensor')!r} keeps its data at {location}, which lies outside "
            "the version folder; external data files must lie in the version folder, beside model.onnx"
        )
    lines = [line for line in (_clean(line) for line in ANSI_ESCAPE.sub("", text).splitlines()) if line]
    if not lines:
        return type(err).__name__
    first, last = lines[0], lines[-1]
    kept = [first] if len(lines) == 1 or last in first else [first, last]
    return " | ".join(_shorten(line) for line in kept)


def missing_locale(name: str) -> str:
    """What to install when onnxruntime cannot build the C++ locale `name` (StringNormalizer does)."""
    language = name.split(".")[0]
    return (
        f"onnxruntime needs the {name} locale for this model (its StringNormalizer, as in a scikit-learn "
        f"text pipeline) and this system lacks it: install it (Debian: apt-get install locales, then "
        f"localedef -i {language} -f UTF-8 {name}) or point LOCPATH at a folder holding it; "
        f"`make serve` and the container image provide it"
    )


def _clean(line: str) -> str:
    """A line without onnxruntime's error prefix' number and its source file and function names."""
    if ORT_LOG_LINE.match(line):
        return ""
    line = ORT_PREFIX.sub(lambda match: f"{match.group(1)}: ", line.strip())
    return " ".join(SOURCE_REFERENCE.sub("", line).split())


def _shorten(line: str) -> str:
    if len(line) <= MAX_LINE:
        return line
    half = (MAX_LINE - len(ELISION)) // 2
    return line[:half] + ELISION + line[-half:]
