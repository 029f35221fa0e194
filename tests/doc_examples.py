"""The runnable examples of the documents, and the answers they show: tests/test_docs.py runs them.

An example is a ```sh or ```python block; the answer it shows is the ```json or ```text block that
follows it right after the OUTPUT_MARK comment (invisible when the Markdown is rendered).
`pytest tests/test_docs.py --update-docs` writes what the examples really answered into those blocks.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

OUTPUT_MARK = "<!-- output of the example above, written and checked by tests/test_docs.py -->"
CODE_BLOCK = re.compile(r"```(sh|python)\n(.*?)```", re.DOTALL)
OUTPUT_BLOCK = re.compile(r"\n*" + re.escape(OUTPUT_MARK) + r"\n```(json|text)\n(.*?)```", re.DOTALL)
DOCUMENTED_URL = "http://127.0.0.1:8000"
DOCUMENTED_GRPC = "127.0.0.1:8001"
# Each curl prints its answer on a line of its own, as a reader's terminal shows it.
SHELL_PRELUDE = 'curl() { command curl -sS "$@"; echo; }\n'


@dataclass(frozen=True)
class Example:
    document: Path
    section: str
    language: str
    code: str
    shown: str | None  # the output the document shows, None when it shows none

    @property
    def name(self) -> str:
        return f"{self.document.name}:{self.section[:24]}:{self.code.splitlines()[0][:40]}"


def examples(document: Path, sections: tuple[str, ...] | None = None) -> list[Example]:
    """The sh and python blocks under `sections` (`## ` headings; every one when None)."""
    found = []
    for part in re.split(r"\n(?=## )", document.read_text()):
        section = part.split("\n", 1)[0].removeprefix("## ").strip()
        if sections is not None and section not in sections:
            continue
        for block in CODE_BLOCK.finditer(part):
            output = OUTPUT_BLOCK.match(part, block.end())
            found.append(Example(document, section, block.group(1), block.group(2),
                                 output.group(2) if output else None))
    return found


def run(example: Example, url: str, cwd: Path, timeout: float = 60, grpc: str | None = None) -> subprocess.CompletedProcess:
    """Run `example` against the server at `url` (and its gRPC address `grpc`) in place of the
    documented one, which its output names again."""
    documented_host, host = DOCUMENTED_URL.removeprefix("http://"), url.removeprefix("http://")
    code = example.code.replace(documented_host, host)
    if grpc is not None:
        code = code.replace(DOCUMENTED_GRPC, grpc)
    argv = ["bash", "-e", "-c", SHELL_PRELUDE + code] if example.language == "sh" else [sys.executable, "-c", code]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    done.stdout = done.stdout.replace(host, documented_host)
    return done


def same_answer(shown: str, got: str, tolerance: float = 1e-5) -> bool:
    """Line by line: equal JSON (numbers within `tolerance`), or equal text."""
    shown_lines, got_lines = lines(shown), lines(got)
    if len(shown_lines) != len(got_lines):
        return False
    for want, have in zip(shown_lines, got_lines):
        try:
            if not close(json.loads(want), json.loads(have), tolerance):
                return False
        except ValueError:
            if want.strip() != have.strip():
                return False
    return True


def lines(output: str) -> list[str]:
    """The output's lines that hold something (an answer with its own newline adds an empty one)."""
    return [line for line in output.splitlines() if line.strip()]


def close(a: object, b: object, tolerance: float) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tolerance) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, abs_tol=tolerance)
    return a == b


def write_output(example: Example, output: str) -> None:
    """Put `output` into the block that shows `example`'s answer."""
    text = example.document.read_text()
    start = text.index(f"```{example.language}\n{example.code}```")
    shown = OUTPUT_BLOCK.match(text, start + len(f"```{example.language}\n{example.code}```"))
    fence = shown.group(1)
    body = "\n".join(lines(output))
    replacement = f"\n\n{OUTPUT_MARK}\n```{fence}\n{body}\n```"
    example.document.write_text(text[:shown.start()] + replacement + text[shown.end():])
