"""The model repository's layout, as Triton lays it out: `<root>/<name>/<version>/model.onnx`.

Discovery only: the rules for model names and versions, scanning a folder, and file stamps. The
server, `export/` and `bench/` all read the repository through this module; it needs nothing
beyond the standard library.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, NamedTuple

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
VERSION = re.compile(r"^[0-9]{1,18}$")
NAME_RULE = "names are letters, digits, '_', '-', '.' (up to 128, starting with a letter or digit, no '..')"


class ModelFile(NamedTuple):
    """One version's model file found on disk."""

    name: str
    version: str
    path: Path


def valid_name(name: str) -> bool:
    """True for a model name that cannot escape the repository (no slashes, no `..`)."""
    return bool(MODEL_NAME.match(name)) and ".." not in name


def valid_version(version: str) -> bool:
    """True for a version folder name: digits only."""
    return bool(VERSION.match(version))


def model_path(root: str | Path, name: str, version: int | str) -> Path:
    """Where version `version` of model `name` lives under `root`."""
    return Path(root) / name / str(version) / MODEL_FILE


def find_model_files(root: Path, warn: Callable[[str], None] | None = None) -> list[ModelFile]:
    """Every well-formed model file under `root`, by name then version folder; others are skipped.

    Each skipped folder is reported to `warn` (a warning log line by default).
    """
    warn = warn or _warn
    found: list[ModelFile] = []
    root = Path(root).resolve()
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if valid_name(model_dir.name):
            found.extend(ModelFile(model_dir.name, version, path) for version, path in find_versions(root, model_dir, warn))
        else:
            warn(f"skipping {model_dir}: not a valid model name")
    return found


# A model folder's sub-folder for config.pbtxt's model_warmup input files: not a version.
WARMUP_FOLDER = "warmup"


def find_versions(root: Path, model_dir: Path, warn: Callable[[str], None] | None = None) -> list[tuple[str, Path]]:
    """(version, path) of every well-formed model file in one model's folder, in folder-name order."""
    warn = warn or _warn
    found = []
    for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()) if model_dir.is_dir() else []:
        path = version_dir / MODEL_FILE
        if version_dir.name == WARMUP_FOLDER:
            continue  # config.pbtxt's model_warmup files, as Triton lays them out
        if not valid_version(version_dir.name):
            warn(f"skipping {version_dir}: version folders must be numeric")
        elif not path.is_file():
            warn(f"skipping {version_dir}: no {MODEL_FILE} in it")
        elif not path.resolve().is_relative_to(Path(root).resolve()):
            warn(f"skipping {path}: it points outside the repository {root}")
        else:
            found.append((version_dir.name, path))
    return found


def latest_model_file(root: Path, name: str) -> Path | None:
    """The model file of `name`'s highest version under `root`, or None when it has none."""
    versions = find_versions(root, Path(root) / name, warn=lambda message: None)
    return max(versions, key=lambda item: int(item[0]))[1] if versions else None


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(modification time in ns, size): changes when a model file is replaced or rewritten.

    None when the file has gone (removed between the scan and now).
    """
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def version_stamp(path: Path) -> tuple | None:
    """The stamps of every file in a model file's version folder (its external data, tokenizer files,
    `config.pbtxt`...): changes when any of them is added, removed, replaced or rewritten.

    None when the model file itself has gone.
    """
    if file_stamp(path) is None:
        return None
    folder = path.parent
    files = []
    for entry in sorted(folder.rglob("*")):
        stamp = file_stamp(entry) if not entry.is_dir() else None
        if stamp is not None:
            files.append((entry.relative_to(folder).as_posix(), *stamp))
    return tuple(files)


def _warn(message: str) -> None:
    log.warning("%s", message)
