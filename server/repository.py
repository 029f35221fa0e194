"""The model repository: `<root>/<name>/<version>/model.onnx`, as Triton lays it out."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import NotFound, NotReady
from .model import OnnxModel

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
VERSION = re.compile(r"^[0-9]{1,18}$")
MODEL_FILE = "model.onnx"


def valid_name(name: str) -> bool:
    """True for a model name that cannot escape the repository (no slashes, no `..`)."""
    return bool(MODEL_NAME.match(name)) and ".." not in name


def valid_version(version: str) -> bool:
    return bool(VERSION.match(version))


@dataclass
class Failure:
    """A version found on disk that could not be served, and why."""

    name: str
    version: str
    reason: str


def find_model_files(root: Path) -> list[tuple[str, str, Path]]:
    """List (name, version, path) of every well-formed model file under `root`, skipping others."""
    found = []
    root = root.resolve()
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if not valid_name(model_dir.name):
            log.warning("skipping %s: not a valid model name", model_dir)
            continue
        for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
            path = version_dir / MODEL_FILE
            if not valid_version(version_dir.name):
                log.warning("skipping %s: version folders must be numeric", version_dir)
            elif not path.is_file():
                log.warning("skipping %s: no %s in it", version_dir, MODEL_FILE)
            elif not path.resolve().is_relative_to(root):
                log.warning("skipping %s: it points outside the repository %s", path, root)
            else:
                found.append((model_dir.name, version_dir.name, path))
    return found


class ModelRepository:
    """Every loadable model version under one folder; the highest version serves by default."""

    def __init__(self, root: str | Path, ort_threads: int = 1) -> None:
        self.root = Path(root)
        self.ort_threads = ort_threads
        self.models: dict[str, dict[str, OnnxModel]] = {}
        self.failures: dict[tuple[str, str], Failure] = {}

    def load_all(self) -> None:
        """Load every model file found; one that fails is logged in one line and skipped."""
        for name, version, path in find_model_files(self.root):
            self.load_version(name, version, path)

    def load_version(self, name: str, version: str, path: Path) -> OnnxModel | None:
        model = OnnxModel(name, version, path, ort_threads=self.ort_threads)
        try:
            model.load()
        except Exception as err:  # onnxruntime raises many types; any of them means "skip it"
            reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            log.error("model %s version %s failed to load from %s: %s", name, version, path, reason)
            self.failures[(name, version)] = Failure(name, version, reason)
            return None
        self.models.setdefault(name, {})[version] = model
        self.failures.pop((name, version), None)
        log.info("loaded model %s version %s from %s", name, version, path)
        return model

    def names(self) -> list[str]:
        """Every model name known, served or failed."""
        return sorted(set(self.models) | {f.name for f in self.failures.values()})

    def get(self, name: str, version: str | None = None) -> OnnxModel:
        """The model `name` at `version` (the highest loaded one when None), or a 404/503 error."""
        if not valid_name(name):
            raise NotFound(f"unknown model {name!r}: names are letters, digits, '_', '-', '.'")
        if version is not None and not valid_version(version):
            raise NotFound(f"unknown version {version!r} of model {name!r}: versions are numeric")
        versions = self.models.get(name, {})
        if version is None:
            if versions:
                return versions[max(versions, key=int)]
        elif version in versions:
            return versions[version]
        failed = [f for f in self.failures.values() if f.name == name and version in (None, f.version)]
        if failed:
            raise NotReady(f"model {name!r} version {failed[0].version} is not ready: {failed[0].reason}")
        if version is None:
            raise NotFound(f"unknown model {name!r}; served models: {', '.join(self.names()) or 'none'}")
        raise NotFound(f"model {name!r} has no version {version!r}; loaded: {', '.join(sorted(versions, key=int)) or 'none'}")

    @property
    def ready(self) -> bool:
        """Ready when at least one model serves and none failed."""
        return bool(self.models) and not self.failures
