"""Installed sizes: a whole virtual environment, and one package with everything it requires."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement


def tree_bytes(root: Path) -> int:
    """Bytes of every file under `root`, not counting __pycache__ (it depends on what has run)."""
    total = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and "__pycache__" not in path.parts:
            total += path.stat().st_size
    return total


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_bytes(dist: metadata.Distribution, where: Path) -> int:
    total = 0
    for file in dist.files or []:
        path = where / file
        if "__pycache__" not in path.parts and path.is_file():
            total += path.stat().st_size
    return total


def closure_bytes(venv: Path, package: str) -> dict:
    """Size of `package` plus everything it requires (unconditional requirements) in `venv`."""
    where = site_packages(venv)
    dists = {_normal(d.metadata["Name"]): d for d in metadata.distributions(path=[str(where)])}
    seen: dict[str, int] = {}
    pending = [_normal(package)]
    while pending:
        name = pending.pop()
        if name in seen or name not in dists:
            continue
        dist = dists[name]
        seen[name] = distribution_bytes(dist, where)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(_normal(requirement.name))
    version = dists[_normal(package)].version if _normal(package) in dists else None
    return {"package": package, "version": version, "bytes": sum(seen.values()),
            "largest": dict(sorted(seen.items(), key=lambda kv: -kv[1])[:6])}


def venv_report(venv: Path) -> dict:
    """Total size of `venv` and its largest distributions."""
    where = site_packages(venv)
    sizes = {_normal(d.metadata["Name"]): distribution_bytes(d, where)
             for d in metadata.distributions(path=[str(where)])}
    return {"path": venv.name, "bytes": tree_bytes(venv),
            "largest": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:6])}
