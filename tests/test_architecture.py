"""The rooms of the code and the arrows between them (docs/architecture.md), checked on every run."""
from __future__ import annotations

import re
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
        from server.image.classifier import ImageClassifier
        from server.runtime.registry import ModelRegistry

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


# --------------------------------------------------------------------------- docs/architecture.md claims only real arrows

ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
PACKAGES = ("server", "training", "export", "harness", "bench", "tests")
GROUPS = ("image", "v2", "runtime", "limits")  # server/'s groups of core modules: a row for each module


def import_graph():
    import grimp  # import-linter's own graph builder (.venv-dev)

    return grimp.build_graph(*PACKAGES)


def table_rows(heading: str, column: int) -> dict[str, list[str]]:
    """{first cell: the backticked names of cell `column`} for the rows of the table under `heading`."""
    section = ARCHITECTURE.split(heading, 1)[1]
    rows = {}
    for line in section.splitlines():
        if line.startswith("## "):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            rows[cells[0].strip("`")] = re.findall(r"`([\w.]+)`", cells[column])
    return rows


def test_the_package_arrows_of_the_architecture_page_are_the_real_imports() -> None:
    graph = import_graph()
    real: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.split(".")[0] in PACKAGES and imported.split(".")[0] != module.split(".")[0]:
                real[module.split(".")[0]].add(imported.split(".")[0])
    claimed = {package: set(names) for package, names in table_rows("| package | imports | what for |", 1).items()}
    assert claimed == real, f"docs/architecture.md says {claimed}, the code {real}"


def test_the_server_rooms_of_the_architecture_page_are_every_module_and_its_real_imports() -> None:
    """Every module of server/ has its row, and each row names exactly what it imports from server/."""
    graph = import_graph()

    def room(module: str) -> str:
        """A top-level module, a transport package (`api`, `grpc`) or a group's module (`runtime.registry`)."""
        parts = module.split(".")
        if len(parts) > 2 and parts[1] in GROUPS:
            return ".".join(parts[1:3])
        return parts[1] if len(parts) > 1 else "__init__"

    real: dict[str, set[str]] = {}
    for module in (m for m in graph.modules if m.split(".")[0] == "server"):
        imported = {room(i) for i in graph.find_modules_directly_imported_by(module) if i.split(".")[0] == "server"}
        real.setdefault(room(module), set()).update(imported - {room(module)})
    claimed = {}
    for path, names in table_rows("| module | holds | imports from server/ |", 2).items():
        name = path.removeprefix("server/").removesuffix("/*").removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        claimed[name] = set(names)
    wrong = {name: (sorted(claimed.get(name, ["(no row)"])), sorted(imports))
             for name, imports in real.items() if claimed.get(name) != imports}
    assert not wrong and set(claimed) == set(real), (
        f"rows to correct in docs/architecture.md, (claimed, real): {wrong}; rows without a module: {set(claimed) - set(real)}")
    named = set(re.findall(r"`(server/[\w/]+\.py)`", ARCHITECTURE))
    files = {str(path.relative_to(ROOT)) for path in (ROOT / "server").rglob("*.py")}
    assert files <= named, f"modules docs/architecture.md does not name: {sorted(files - named)}"
