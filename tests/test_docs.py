"""The documents name what the code does: every limit in docs/security.md, the README's examples run."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from server import config
from tests.conftest import COMMITTED_REPOSITORY, ROOT

SECURITY = (ROOT / "docs" / "security.md").read_text()


REQUEST_LIMITS = ("MAX_CONTENT_LENGTH", "MAX_IMAGE_PIXELS", "MAX_IMAGES_PER_REQUEST")


@pytest.mark.parametrize("name", REQUEST_LIMITS)
def test_every_request_limit_is_documented_with_its_default(name: str) -> None:
    row = next((line for line in SECURITY.splitlines() if line.startswith(f"| `{name}`")), None)
    assert row is not None, f"docs/security.md has no row for {name}"
    default = config.BY_NAME[name].default
    assert f"{default:,}" in row or str(default) in row, (row, default)


# --------------------------------------------------------------------------- the README's examples

README = (ROOT / "README.md").read_text()


def readme_blocks(language: str, section: str) -> list[str]:
    """The ```language code blocks under the README's `## section` heading."""
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", body, re.DOTALL)


@pytest.fixture(scope="module")
def committed_server(module_servers):
    return module_servers(COMMITTED_REPOSITORY)


def test_the_readme_curl_examples_work_as_written(committed_server) -> None:
    commands = [line for block in readme_blocks("sh", "Call it") for line in block.splitlines() if line.startswith("curl ")]
    assert len(commands) >= 4
    answers = []
    for command in commands:
        out = subprocess.run(command.replace("http://127.0.0.1:8000", committed_server.url), shell=True, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (command, out.stderr)
        answers.append(json.loads(out.stdout))
    assert answers[0]["predictions"][0]["label"] == "7"  # docs/examples/seven.png
    assert answers[1]["predictions"][0]["label"] == "2"  # docs/examples/two-on-ruled-paper.jpg
    assert {"ready": True} in answers and any(a.get("name") == "mnist" for a in answers)


def test_the_readme_tritonclient_example_works_as_written(committed_server) -> None:
    (code,) = readme_blocks("python", "Call it")
    out = subprocess.run([sys.executable, "-c", code.replace("127.0.0.1:8000", committed_server.url.split("//")[1])],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "7"
