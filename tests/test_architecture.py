"""The rooms of the code and the arrows between them (docs/architecture.md), checked on every run."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import COMMITTED_REPOSITORY, ROOT

LINT_IMPORTS = ROOT / ".venv-dev" / "bin" / "lint-imports"


def test_imports_follow_the_contracts() -> None:
    """No import cycle in any package; the server never imports training; the core no web framework."""
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(ROOT / ".importlinter")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout, result.stdout


def test_the_core_classifies_an_image_with_only_onnxruntime_numpy_and_pillow() -> None:
    """A plain Python shell that cannot import Flask, werkzeug, granian or prometheus_client still
    loads the repository and reads the README's seven."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class NoWebFramework(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.partition(".")[0] in ("flask", "werkzeug", "granian", "prometheus_client", "jinja2"):
                    raise ImportError(f"{{name}} is not for the core")

        sys.meta_path.insert(0, NoWebFramework())
        from server.classifier import ImageClassifier
        from server.registry import ModelRegistry

        registry = ModelRegistry({str(COMMITTED_REPOSITORY)!r})
        registry.load_all()
        classifier = ImageClassifier.of(registry.get("mnist"))
        image = open({str(ROOT / "docs" / "examples" / "seven.png")!r}, "rb").read()
        print(classifier.predict([image], max_pixels=1_000_000)[0]["label"])
        assert not any(name.partition(".")[0] == "flask" for name in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "7"
