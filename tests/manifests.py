"""Kubernetes and KServe manifests checked against JSON schemas, without a cluster.

Kubernetes' own kinds: kubernetes-validate's bundled schemas (strict: no field the API does not
know). KServe's: the schemas tests/kserve_schema.py derived from KServe's SDK (tests/schemas/kserve/),
whose Kubernetes types resolve against the same bundled definitions of the version checked.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import referencing
import referencing.exceptions
import yaml
from kubernetes_validate.utils import schema_contents

from tests.kserve_schema import KINDS as KSERVE_KINDS, schema_file

ROOT = Path(__file__).resolve().parents[1]
MANIFEST_DIRS = (ROOT / "deploy" / "kubernetes", ROOT / "deploy" / "kserve")
# The Kubernetes versions the manifests target: the oldest they are written for, and the newest
# kubernetes-validate carries.
KUBERNETES_VERSIONS = ("1.32", "1.37")


def manifest_files() -> list[Path]:
    """Every manifest of deploy/kubernetes/ (optional/ included) and deploy/kserve/."""
    return sorted(path for folder in MANIFEST_DIRS for path in folder.rglob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of one file, empty ones left out."""
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def errors(document: dict[str, Any], kubernetes_version: str) -> list[str]:
    """Every way `document` breaks its kind's schema for `kubernetes_version`: empty when it is valid."""
    if not isinstance(document, dict) or not isinstance(document.get("kind"), str) or not isinstance(document.get("apiVersion"), str):
        return ["not a Kubernetes object: apiVersion and kind must be strings"]
    if document["kind"] in KSERVE_KINDS and document["apiVersion"].startswith("serving.kserve.io/"):
        if document["apiVersion"] != KSERVE_KINDS[document["kind"]][0]:
            return [f"{document['kind']}: apiVersion {document['apiVersion']!r}, expected {KSERVE_KINDS[document['kind']][0]!r}"]
        return kserve_errors(document, kubernetes_version)
    try:
        kubernetes_validate.validate(document, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{'/'.join(map(str, err.path))}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [err.message]
    return []


def kserve_errors(document: dict[str, Any], kubernetes_version: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(kserve_schema(document["kind"]), registry=kubernetes_registry(kubernetes_version))
    try:
        return [f"{'/'.join(map(str, err.path))}: {err.message}" for err in validator.iter_errors(document)]
    except referencing.exceptions.Unresolvable as err:  # a Kubernetes type that version does not have
        return [f"not in Kubernetes {kubernetes_version}: {err}"]


@cache
def kserve_schema(kind: str) -> dict[str, Any]:
    return json.loads(schema_file(kind).read_text())


@cache
def kubernetes_registry(version: str) -> referencing.Registry:
    """kubernetes-validate's definitions of `version` (strict), where the KServe schemas' $refs point."""
    full = next(v for v in reversed(kubernetes_validate.utils.all_versions()) if v.startswith(version + "."))
    definitions = schema_contents(f"kubernetes-json-schema/v{full}-local-strict/_definitions.json", full)
    return referencing.Resource.from_contents(definitions) @ referencing.Registry()


def keys(node: Any, path: tuple = ()) -> Iterator[tuple]:
    """The path of every mapping key in `node`, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path + (key,)
            yield from keys(value, path + (key,))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from keys(item, path + (index,))


def renamed(document: Any, path: tuple, new_key: str) -> Any:
    """`document` with the key at `path` renamed to `new_key` (same place in its mapping); `document` is left as it was."""
    if not path:
        return document
    head, rest = path[0], path[1:]
    if isinstance(document, list):
        return [renamed(item, rest, new_key) if index == head else item for index, item in enumerate(document)]
    if not rest:
        return {(new_key if key == head else key): value for key, value in document.items()}
    return {key: renamed(value, rest, new_key) if key == head else value for key, value in document.items()}
