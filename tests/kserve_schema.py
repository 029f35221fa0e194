"""Write JSON schemas for KServe's InferenceService and ServingRuntime from the kserve wheel's model classes.

No package registry carries KServe's CRDs (their `openAPIV3Schema`): the CRDs ship in KServe's Helm
chart and release YAML only. The kserve wheel on PyPI does carry the Python SDK, whose model classes
are generated from the same Go types as the CRDs: each class lists its fields (`attribute_map`: the
JSON names) and their types (`openapi_types`), and its setters refuse None for required fields. This
turns them into one JSON schema per kind, closed (no field the SDK does not know), with the
Kubernetes types they embed (V1Container, V1ObjectMeta...) referred to kubernetes-validate's bundled
Kubernetes definitions, so that they are checked as strictly as a Deployment's.

    python -m tests.kserve_schema               # pip download kserve==0.21.0 (no deps), write tests/schemas/kserve/
    python -m tests.kserve_schema --wheel kserve-0.21.0-py3-none-any.whl

What this cannot see (the CRDs' own validation: enums, patterns, CEL rules; KServe's admission
webhook) is listed in docs/deploy.md.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import kubernetes_validate
from kubernetes_validate.utils import schema_contents

OUT = Path(__file__).resolve().parent / "schemas" / "kserve"
KSERVE_VERSION = "0.21.0"
# Kubernetes definitions the embedded types must exist in: the newest kubernetes-validate bundles.
KUBERNETES_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
# kind -> (apiVersion, the SDK's class for it): the kinds this project's manifests use.
KINDS = {
    "InferenceService": ("serving.kserve.io/v1beta1", "V1beta1InferenceService"),
    "ServingRuntime": ("serving.kserve.io/v1alpha1", "V1alpha1ServingRuntime"),
}
SCALARS = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
           "bool": {"type": "boolean"}, "datetime": {"type": "string"}, "date": {"type": "string"}, "object": {}}
# Kubernetes client class names that do not follow V<version><Kind>.
KUBERNETES_ALIASES = {"ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity"}
REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


def schema_file(kind: str) -> Path:
    """Where the schema of `kind` is written: <kind>-<group's first word>-<version>.json, as kubernetes-validate names them."""
    api_version = KINDS[kind][0]
    return OUT / f"{kind.lower()}-{api_version.split('.')[0]}-{api_version.split('/')[1]}.json"


def read_models(wheel: Path) -> dict[str, dict]:
    """Each SDK model class: {"types": openapi_types, "json": attribute_map, "required": attribute names}."""
    models = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not re.fullmatch(r"kserve/models/\w+\.py", name):
                continue
            source = archive.read(name).decode()
            for node in ast.parse(source).body:
                if isinstance(node, ast.ClassDef):
                    fields = {target.id: ast.literal_eval(statement.value) for statement in node.body
                              if isinstance(statement, ast.Assign) for target in statement.targets
                              if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map")}
                    if "openapi_types" in fields:
                        required = set(REQUIRED.findall(ast.get_source_segment(source, node) or ""))
                        models[node.name] = {"types": fields["openapi_types"], "json": fields["attribute_map"],
                                             "required": sorted(required)}
    return models


def kubernetes_definition(type_name: str, definitions: dict) -> str | None:
    """The definitions' key of a kubernetes client class (V1Container -> io.k8s.api.core.v1.Container)."""
    if type_name in KUBERNETES_ALIASES:
        return KUBERNETES_ALIASES[type_name]
    match = re.fullmatch(r"K8sIo(Api|Apimachinery)(\w+?)(V\d\w*?)([A-Z]\w*)", type_name)
    if match:  # K8sIoApiAppsV1DeploymentStrategy -> io.k8s.api.apps.v1.DeploymentStrategy
        key = f"io.k8s.{match[1].lower()}.{match[2].lower()}.{match[3].lower()}.{match[4]}"
        return key if key in definitions else None
    match = re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w*)", type_name)
    if not match:
        return None
    suffix = f".{match[1].lower()}.{match[2]}"
    found = [key for key in definitions if key.endswith(suffix)]
    # A kind in several groups (v1.Subject...): the core group and meta are what the SDK means.
    candidates = [key for key in found if key.startswith(("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta."))] or found
    return candidates[0] if len(candidates) == 1 else None


def type_schema(type_name: str, models: dict, definitions: dict, unresolved: set[str]) -> dict:
    """The JSON schema of one openapi_types entry."""
    if type_name in SCALARS:
        return dict(SCALARS[type_name])
    if match := re.fullmatch(r"list\[(.+)\]", type_name):
        return {"type": "array", "items": type_schema(match[1], models, definitions, unresolved)}
    if match := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        return {"type": "object", "additionalProperties": type_schema(match[1], models, definitions, unresolved)}
    if type_name in models:
        return {"$ref": f"#/$defs/{type_name}"}
    key = kubernetes_definition(type_name, definitions)
    if key is None:
        unresolved.add(type_name)
        return {"$comment": f"{type_name}: defined neither by the SDK nor by Kubernetes, left open"}
    return {"$ref": f"{KUBERNETES_DEFINITIONS}#/$defs/{key}"}


def model_schema(name: str, models: dict, definitions: dict, unresolved: set[str]) -> dict:
    model = models[name]
    properties = {model["json"][field]: type_schema(kind, models, definitions, unresolved)
                  for field, kind in model["types"].items()}
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if model["required"]:
        schema["required"] = [model["json"][field] for field in model["required"]]
    return schema


def kind_schema(kind: str, models: dict, definitions: dict, source: str) -> tuple[dict, set[str]]:
    """A closed schema for `kind`, with every SDK class it reaches under $defs."""
    api_version, root = KINDS[kind]
    unresolved: set[str] = set()
    defs, pending = {}, [root]
    while pending:
        name = pending.pop()
        if name not in defs:
            defs[name] = model_schema(name, models, definitions, unresolved)
            pending.extend(ref.removeprefix("#/$defs/") for ref in re.findall(r'"(#/\$defs/\w+)"', json.dumps(defs[name])))
    top = defs.pop(root)
    top["properties"]["apiVersion"] = {"type": "string", "enum": [api_version]}
    top["properties"]["kind"] = {"type": "string", "enum": [kind]}
    top["required"] = sorted(set(top.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"https://kserve.io/schemas/{kind.lower()}",
              "$comment": source, "title": f"{kind} {api_version}", **top, "$defs": dict(sorted(defs.items()))}
    return schema, unresolved


def download(version: str, folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
                    "--dest", str(folder), f"kserve=={version}"], check=True)
    return next(folder.glob(f"kserve-{version}-*.whl"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.kserve_schema", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--kserve-version", default=KSERVE_VERSION, help="the kserve wheel to download from PyPI")
    parser.add_argument("--wheel", type=Path, help="a kserve wheel already downloaded (then --kserve-version names it)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    newest = kubernetes_validate.utils.latest_version()
    definitions = schema_contents(f"kubernetes-json-schema/v{newest}-local-strict/_definitions.json", newest)["$defs"]
    with tempfile.TemporaryDirectory() as folder:
        wheel = args.wheel or download(args.kserve_version, Path(folder))
        models = read_models(wheel)
    source = (f"Generated by tests/kserve_schema.py from the model classes of the kserve {args.kserve_version} wheel "
              f"(PyPI, KServe's Python SDK); Kubernetes types refer to kubernetes-validate "
              f"{kubernetes_validate.version.__version__}'s definitions (checked against Kubernetes {newest}'s).")
    OUT.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        schema, unresolved = kind_schema(kind, models, definitions, source)
        schema_file(kind).write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")
        print(f"{schema_file(kind)}: {len(schema['$defs'])} KServe types"
              + (f"; left open (defined neither by the SDK nor by Kubernetes {newest}): {', '.join(sorted(unresolved))}" if unresolved else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
