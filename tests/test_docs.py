"""The documents name what the code does: every limit in docs/security.md, the README's examples run."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from server import config
from tests import doc_examples
from tests.conftest import COMMITTED_REPOSITORY, ROOT, run_make

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


# --------------------------------------------------------------------------- every example and its answer

DOCUMENTED = [*doc_examples.examples(ROOT / "README.md", ("Call it",)), *doc_examples.examples(ROOT / "docs" / "api.md")]


@pytest.mark.parametrize("example", DOCUMENTED, ids=lambda example: example.name)
def test_the_documents_show_what_their_examples_answer(example: doc_examples.Example, committed_server, request) -> None:
    """README's and docs/api.md's examples run against the committed model; the answers they show are the real ones."""
    done = doc_examples.run(example, committed_server.url, ROOT, grpc=f"127.0.0.1:{committed_server.env['GRPC_PORT']}")
    assert done.returncode == 0, (example.code, done.stderr)
    if example.shown is None:  # shown nowhere: every answer is JSON and no error
        answers = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        assert answers and all("error" not in answer for answer in answers if isinstance(answer, dict)), done.stdout
    elif request.config.getoption("--update-docs"):
        doc_examples.write_output(example, done.stdout)
    else:
        assert doc_examples.same_answer(example.shown, done.stdout), (
            f"{example.document.name} shows another answer than the server gives; run "
            f"`pytest tests/test_docs.py --update-docs` to write the real one:\n{done.stdout}")


def test_the_documents_show_answers() -> None:
    shown = [example for example in DOCUMENTED if example.shown is not None]
    assert {example.document.name for example in shown} == {"README.md", "api.md"}


def test_an_answer_differing_from_the_shown_one_is_caught(tmp_path) -> None:
    shown = '{"label":"7","confidence":0.906504}\n{"ready":true}'
    assert doc_examples.same_answer(shown, '{"label":"7","confidence":0.906505}\n\n{"ready":true}\n')
    assert not doc_examples.same_answer(shown, '{"label":"7","confidence":0.99}\n{"ready":true}')
    assert not doc_examples.same_answer(shown, '{"label":"7","confidence":0.906504}')
    document = tmp_path / "doc.md"
    document.write_text(f"## A\n\n```sh\necho hi\n```\n\n{doc_examples.OUTPUT_MARK}\n```text\nold\n```\n\nafter\n")
    (example,) = doc_examples.examples(document)
    assert example.shown == "old\n"
    doc_examples.write_output(example, "hi\n\n")
    assert doc_examples.examples(document)[0].shown == "hi\n" and document.read_text().endswith("```\n\nafter\n")


# --------------------------------------------------------------------------- what the README tells a newcomer


def test_the_readme_names_the_python_the_project_requires() -> None:
    required = re.search(r'requires-python = ">=([0-9.]+)"', (ROOT / "pyproject.toml").read_text())[1]
    assert f"Python ≥ {required}" in README


def test_every_make_target_the_readme_names_exists_and_make_help_is_mentioned() -> None:
    listed = run_make("help").stdout
    targets = {line.split("\t")[0] for line in listed.splitlines()}
    named = set(re.findall(r"`make ([a-z-]+)", README)) | set(re.findall(r"^make ([a-z-]+)", README, re.M))
    assert "help" in named and named <= targets, named - targets


def test_the_readme_commands_run_as_written() -> None:
    """The settings' --help is run the way the README writes it, from the checkout."""
    command = re.search(r"`(\.venv-serve/bin/python -m server --help)`", README)[1]
    out = subprocess.run(command.split(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--model-repository" in out.stdout, out.stderr


def test_the_readme_states_the_image_limits_from_the_settings() -> None:
    """Not "a JPEG or PNG of any size": the body and pixel limits, as server/config.py sets them."""
    body_mib = config.BY_NAME["MAX_CONTENT_LENGTH"].default / 2**20
    megapixels = config.BY_NAME["MAX_IMAGE_PIXELS"].default / 10**6
    text = " ".join(README.split())  # the README's lines wrap anywhere
    assert f"a body of at most {body_mib:g} MiB, `MAX_CONTENT_LENGTH`" in text
    assert f"an image of at most {megapixels:g} megapixels, `MAX_IMAGE_PIXELS`; larger ones get a 413" in text
    assert "of any size" not in text


def test_every_readme_serve_example_on_another_port_moves_grpc_too() -> None:
    """A second server on PORT=9000 would still take gRPC's 8001: the examples set GRPC_PORT too."""
    examples = re.findall(r"make serve [^`]*PORT=[^`]*", README)
    assert examples and all("GRPC_PORT=" in example for example in examples), examples


def test_the_readme_says_which_torch_a_fresh_clone_gets_before_installing() -> None:
    before_installing = " ".join(README.split("### Installing")[0].split())
    assert "without an NVIDIA GPU" in before_installing and "`TORCH=cpu`" in before_installing
    assert "stays chosen" in before_installing


def test_the_training_options_the_readme_names_are_in_the_training_help() -> None:
    """`--dry-run`, `--fast`, `--threads` in the README are options `python -m training.train --help` lists."""
    from training.config import build_parser

    named = set(re.findall(r"TRAIN_ARGS='?(--[a-z-]+)(?: (--[a-z-]+))?", README))
    flags = {flag for pair in named for flag in pair if flag}
    assert {"--fast", "--dry-run", "--threads"} <= flags
    listed = build_parser().format_help()
    assert all(flag in listed for flag in flags), flags


@pytest.mark.parametrize("document", ["README.md", "docs/api.md", "docs/models.md", "docs/deploy.md"])
def test_pip_extras_are_quoted_for_every_shell(document: str) -> None:
    """`pip install tritonclient[http]` fails in zsh, whose globbing reads the brackets."""
    text = (ROOT / document).read_text()
    unquoted = [line for line in re.findall(r"pip install [^`\n]*", text) if re.search(r"(?<!['\"])\b[\w.-]+\[[\w,]+\]", line)]
    assert unquoted == [], unquoted


LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("document", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))])
def test_relative_links_reach_files(document: str) -> None:
    """Reference docs and run records (docs/results/) link to files that exist, wherever a record moved."""
    path = ROOT / document
    broken = [target for target in LINK.findall(path.read_text())
              if "://" not in target and not target.startswith("mailto:") and not (path.parent / target).exists()]
    assert not broken, f"{document} links to missing files: {broken}"
