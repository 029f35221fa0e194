"""deploy/kubernetes/ and deploy/kserve/, checked without a cluster.

Against the JSON schemas of the Kubernetes versions they target and of KServe's kinds (tests/manifests.py),
and against this server: the probes' paths answered by a live server started the way KServe starts
the runtime, ports the image's, resources the box docs/memory.md measures, the drain within the
grace period, the image's user. No test here can create a pod: docs/deploy.md says what was not run.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from harness.bodies import RequestSpec
from harness.procs import SERVE_PYTHON, free_port
from server.limits import box
from tests.conftest import COMMITTED_REPOSITORY, LOG_DIR, MNIST_SAMPLE, ROOT, START_TIMEOUT_S, LiveServer
from tests.image.smoke import digit_bodies
from tests.kserve_schema import KINDS as KSERVE_KINDS, KSERVE_VERSION, schema_file
from tests.manifests import KUBERNETES_VERSIONS, documents, errors, keys, kubernetes_registry, manifest_files, renamed
from tests.test_deploy import containerfile_environment

# Mappings whose keys are free names (labels, annotations, resource names): any key is valid there.
FREE_FORM = {"labels", "annotations", "matchLabels", "requests", "limits", "nodeSelector"}
# The box one replica is: the cgroup `make memory-test` proves the server in (tests/test_memory_limit.py).
BOX_MEMORY, BOX_CPUS = 1024 * box.MIB, 1
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri's files
TRITON_RUNTIME = "kserve-tritonserver"


def all_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, document) for path in manifest_files() for document in documents(path)]


def by_kind(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [doc for _, doc in all_documents() if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = by_kind(kind, name)
    return found


def label(path: Path, document: dict) -> str:
    return f"{path.relative_to(ROOT)}:{document['kind']}/{document['metadata']['name']}"


DOCUMENTS = all_documents()
DOCUMENT_IDS = [label(path, document) for path, document in DOCUMENTS]


# --------------------------------------------------------------------------- the schemas


def test_manifests_are_there() -> None:
    kinds = {document["kind"] for _, document in DOCUMENTS}
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress",
                     "ServingRuntime", "InferenceService"}
    runtimes = {doc["spec"]["predictor"]["model"]["runtime"] for doc in by_kind("InferenceService")}
    assert runtimes == {one("ServingRuntime")["metadata"]["name"], TRITON_RUNTIME}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("document", [document for _, document in DOCUMENTS], ids=DOCUMENT_IDS)
def test_manifest_matches_its_schema(document: dict, version: str) -> None:
    assert errors(document, version) == []


@pytest.mark.parametrize("document", [document for _, document in DOCUMENTS], ids=DOCUMENT_IDS)
def test_a_typo_in_any_field_name_fails_the_schema(document: dict) -> None:
    """Every field name, misspelt in a copy, is refused: the schemas are closed wherever the manifests write."""
    checked = 0
    for path in keys(document):
        parent = next((key for key in reversed(path[:-1]) if isinstance(key, str)), None)
        if parent in FREE_FORM or (document["kind"] == "Service" and path[:2] == ("spec", "selector") and len(path) > 2):
            continue
        typo = renamed(document, path, str(path[-1])[:-1] + str(path[-1])[-1].swapcase() + "x")
        assert errors(typo, KUBERNETES_VERSIONS[0]), f"{'.'.join(map(str, path))} misspelt passed the schema"
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize(("kind", "change", "expected"), [
    ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="http"), "is not of type"),
    ("Deployment", lambda d: d.update(apiVersion="apps/v1beta1"), "Couldn't find schema"),
    ("HorizontalPodAutoscaler", lambda d: d["spec"].update(minReplicas="two"), "is not of type"),
    ("ServingRuntime", lambda d: d["spec"]["containers"][0].update(args="--model_dir=/mnt/models"), "is not of type"),
    ("ServingRuntime", lambda d: d["spec"].pop("containers"), "'containers' is a required property"),
    ("ServingRuntime", lambda d: d.update(apiVersion="serving.kserve.io/v1beta1"), "expected 'serving.kserve.io/v1alpha1'"),
    ("InferenceService", lambda d: d["spec"]["predictor"].update(minReplicas=[1]), "is not of type"),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"]["resources"].update(limit={"cpu": "1"}), "'limit' was unexpected"),
])
def test_a_wrong_value_fails_the_schema(kind: str, change, expected: str) -> None:
    broken = json.loads(json.dumps(by_kind(kind)[0]))
    change(broken)
    found = errors(broken, KUBERNETES_VERSIONS[0])
    assert any(expected in error for error in found), found


def test_kserve_schemas_are_the_vendored_ones_and_resolve() -> None:
    """The vendored schemas say where they come from, and every Kubernetes type they name exists."""
    for kind, (api_version, _) in KSERVE_KINDS.items():
        schema = json.loads(schema_file(kind).read_text())
        assert f"kserve {KSERVE_VERSION} wheel" in schema["$comment"]
        assert schema["properties"]["apiVersion"]["enum"] == [api_version]
        refs = set(re.findall(r'"\$ref": "https://kubernetes.io/api/_definitions.json#/\$defs/([^"]+)"', json.dumps(schema)))
        assert refs, kind
        newest = kubernetes_registry(KUBERNETES_VERSIONS[-1]).contents("https://kubernetes.io/api/_definitions.json")["$defs"]
        assert refs <= set(newest), refs - set(newest)


SDK_MODEL = """
class V1alpha1ServingRuntimeSpec(object):
    openapi_types = {'containers': 'list[V1Container]', 'protocol_versions': 'list[str]', 'labels': 'dict(str, str)'}
    attribute_map = {'containers': 'containers', 'protocol_versions': 'protocolVersions', 'labels': 'labels'}

    @containers.setter
    def containers(self, containers):
        if self.local_vars_configuration.client_side_validation and containers is None:  # noqa: E501
            raise ValueError("Invalid value for `containers`, must not be `None`")  # noqa: E501


class V1alpha1ServingRuntime(object):
    openapi_types = {'api_version': 'str', 'kind': 'str', 'metadata': 'V1ObjectMeta', 'spec': 'V1alpha1ServingRuntimeSpec'}
    attribute_map = {'api_version': 'apiVersion', 'kind': 'kind', 'metadata': 'metadata', 'spec': 'spec'}
"""


def test_the_schema_generator_reads_an_sdk_wheel(tmp_path: Path) -> None:
    """tests/kserve_schema.py on a wheel of two SDK-shaped classes: JSON names, types, required fields, closed."""
    import zipfile

    from tests.kserve_schema import kind_schema, read_models

    wheel = tmp_path / "kserve-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("kserve/models/v1alpha1_serving_runtime.py", SDK_MODEL)
        archive.writestr("kserve/api/not_a_model.py", "x = 1\n")
    models = read_models(wheel)
    assert set(models) == {"V1alpha1ServingRuntimeSpec", "V1alpha1ServingRuntime"}
    assert models["V1alpha1ServingRuntimeSpec"]["required"] == ["containers"]
    definitions = kubernetes_registry(KUBERNETES_VERSIONS[-1]).contents("https://kubernetes.io/api/_definitions.json")["$defs"]
    schema, unresolved = kind_schema("ServingRuntime", models, definitions, "test")
    assert unresolved == set()
    spec = schema["$defs"]["V1alpha1ServingRuntimeSpec"]
    assert spec["required"] == ["containers"] and spec["additionalProperties"] is False
    assert spec["properties"]["protocolVersions"] == {"type": "array", "items": {"type": "string"}}
    assert spec["properties"]["containers"]["items"]["$ref"].endswith("#/$defs/io.k8s.api.core.v1.Container")
    assert schema["properties"]["metadata"]["$ref"].endswith("#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
    assert schema["required"] == ["apiVersion", "kind", "metadata", "spec"]


# --------------------------------------------------------------------------- this server's rules


def containers() -> list[tuple[str, dict[str, Any]]]:
    """(where, container) for every container of this server: the Deployment's and the ServingRuntime's."""
    pod = one("Deployment")["spec"]["template"]["spec"]
    return [("Deployment", container) for container in pod["containers"]] + \
           [("ServingRuntime", container) for container in one("ServingRuntime")["spec"]["containers"]]


def runtime_args() -> dict[str, str]:
    """The ServingRuntime container's flags, {"--model_dir": "/mnt/models", ...}."""
    (container,) = one("ServingRuntime")["spec"]["containers"]
    return dict(arg.split("=", 1) for arg in container["args"])


def probes(container: dict) -> list[dict]:
    return [container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in container]


def test_ports_are_the_images() -> None:
    env = containerfile_environment()
    exposed = re.search(r"^EXPOSE (.+)$", (ROOT / "Containerfile").read_text(), re.M).group(1).split()
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": int(env["PORT"]), "grpc": int(env["GRPC_PORT"])}
    assert sorted(map(str, ports.values())) == sorted(exposed)
    for probe in probes(container):
        assert probe["httpGet"]["port"] in ("http", ports["http"])
    service = one("Service")
    assert {port["name"]: port["targetPort"] for port in service["spec"]["ports"]} == {"http": "http", "grpc": "grpc"}
    ingress_port = one("Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["name"]
    assert ingress_port in {port["name"] for port in service["spec"]["ports"]}

    # KServe: the runtime serves HTTP on the port it declares, gRPC on the one the gRPC service names h2c.
    args, runtime = runtime_args(), one("ServingRuntime")
    (declared,) = runtime["spec"]["containers"][0]["ports"]
    assert declared["containerPort"] == int(args["--http_port"])
    assert int(runtime["spec"]["annotations"]["prometheus.kserve.io/port"]) == int(args["--http_port"])
    for probe in probes(runtime["spec"]["containers"][0]):
        assert probe["httpGet"]["port"] == int(args["--http_port"])
    grpc = [doc for doc in by_kind("InferenceService") if doc["spec"]["predictor"]["model"].get("protocolVersion") == "grpc-v2"]
    assert [port for doc in grpc for port in doc["spec"]["predictor"]["model"]["ports"]] == \
           [{"name": "h2c", "containerPort": int(args["--grpc_port"]), "protocol": "TCP"}]
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]


def quantity_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)?", str(text)).groups()
    return int(number) * {"Mi": 2**20, "Gi": 2**30, None: 1}[unit]


def memory_doc_figures() -> tuple[int, int]:
    """(an idle worker's RSS, the largest peak over it) in bytes, from docs/memory.md's table."""
    text = (ROOT / "docs" / "memory.md").read_text()
    idle = int(re.search(r"Idle worker \(after \d+ normal requests\): \*\*(\d+) MiB\*\*", text).group(1))
    over = max(int(value) for value in re.findall(r"\| \+(\d+) \|", text))
    return idle * box.MIB, over * box.MIB


def test_resources_are_the_box_the_memory_docs_measure() -> None:
    """One replica is the 1 GiB / 1 CPU box of `make memory-test`; its workers fit at their measured peak."""
    idle, over = memory_doc_figures()
    resources = [(where, container["resources"]) for where, container in containers()]
    resources += [(doc["metadata"]["name"], doc["spec"]["predictor"]["model"]["resources"])
                  for doc in by_kind("InferenceService") if "resources" in doc["spec"]["predictor"]["model"]
                  and doc["spec"]["predictor"]["model"]["runtime"] != TRITON_RUNTIME]
    assert len(resources) == 2
    for where, resource in resources:
        # requests = limits: the Guaranteed class, the same box on every node, and the server sees it.
        assert resource["requests"] == resource["limits"], where
        assert quantity_bytes(resource["limits"]["memory"]) == BOX_MEMORY, where
        assert float(resource["limits"]["cpu"]) == BOX_CPUS, where
        replica = box.Box(quantity_bytes(resource["limits"]["memory"]), float(resource["limits"]["cpu"]), "limit", "limit")
        workers = box.default_workers(replica)
        peak = box.MASTER + workers * (idle + over)
        assert peak <= quantity_bytes(resource["limits"]["memory"]), (where, workers, peak / box.MIB)


def graceful_timeout() -> int:
    """Seconds the server drains for after TERM."""
    from server.lifecycle import GRACEFUL_SECONDS

    return GRACEFUL_SECONDS


def test_the_grace_period_covers_the_drain() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + graceful_timeout()
    strategy = one("Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "a rolling update must start a new pod before it stops an old one"
    for doc in by_kind("InferenceService"):
        if doc["spec"]["predictor"]["model"]["runtime"] != TRITON_RUNTIME:
            assert doc["spec"]["predictor"]["terminationGracePeriodSeconds"] >= graceful_timeout()


def test_runs_as_the_images_user_on_a_read_only_root() -> None:
    uid = image_user()[0]
    pod = one("Deployment")["spec"]["template"]["spec"]
    for where, container in containers():
        context = {**(pod["securityContext"] if where == "Deployment" else {}), **container["securityContext"]}
        assert context["runAsNonRoot"] is True and str(context["runAsUser"]) == uid, where
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"]["drop"] == ["ALL"], where
        # The server writes only its temporary folders (metrics, model sync): /tmp, an emptyDir.
        volumes = pod["volumes"] if where == "Deployment" else one("ServingRuntime")["spec"]["volumes"]
        (tmp,) = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
        assert "emptyDir" in next(volume for volume in volumes if volume["name"] == tmp["name"]), where


def test_names_and_selectors_agree() -> None:
    deployment = one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert one("Service")["spec"]["selector"].items() <= pod_labels.items()
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert one("PodDisruptionBudget")["spec"]["minAvailable"] < one("HorizontalPodAutoscaler")["spec"]["minReplicas"]
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert one("Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == one("Service")["metadata"]["name"]
    runtime = one("ServingRuntime")
    formats = {fmt["name"] for fmt in runtime["spec"]["supportedModelFormats"]}
    for doc in by_kind("InferenceService"):
        model = doc["spec"]["predictor"]["model"]
        if model["runtime"] == runtime["metadata"]["name"]:
            assert model["modelFormat"]["name"] in formats
            assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


def image_user() -> tuple[str, str]:
    """(uid, gid) of the Containerfile's USER."""
    return re.search(r"^USER (\d+):(\d+)", (ROOT / "Containerfile").read_text(), re.M).groups()


def read_only_root(command: list[str], scratch: Path) -> list[str]:
    """`command` in a mount namespace of its own where the root file system is read-only but for a
    fresh 64 MiB tmpfs on `scratch` (the pod's emptyDir, whose path TMPDIR gives), with no new privileges.

    It stays root: a read-only file system refuses root's writes too, and this machine's Python lives
    where the image's user (uid 10001) may not read it (`make image-test` runs the image as that user).
    """
    script = (f"mount -o remount,bind,ro / && mount -t tmpfs -o size=64m,mode=1777 tmpfs {shlex.quote(str(scratch))}"
              ' && exec setpriv --no-new-privs "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *command]


def serve_runtime(repository: Path, scratch: Path | None = None) -> None:
    """`python -m server` with the ServingRuntime's own args, `repository` standing for /mnt/models (what
    the storage initializer downloads), in the image's environment: every probe path of every manifest
    answers 200, both models are ready and answer, gRPC listens, and the repository is left as it was.
    With `scratch`, on a read-only root where only `scratch` can be written (read_only_root)."""
    before = sorted((path.relative_to(repository), path.stat().st_mtime_ns) for path in repository.rglob("*"))
    http_port, grpc_port = free_port(), free_port()
    args = {**runtime_args(), "--model_dir": str(repository), "--http_port": str(http_port), "--grpc_port": str(grpc_port)}
    assert set(args) == {"--model_dir", "--http_port", "--grpc_port"}  # every flag the runtime passes is replaced here
    # The image's environment, but on loopback; its MODEL_REPOSITORY must lose to --model_dir.
    # (PATH is the image's venv: the serve environment's python is named instead; one worker spares the CPU.)
    env = {**containerfile_environment(), "HOST": "127.0.0.1", "WORKERS": "1", "HOME": "/nonexistent"}
    env.pop("PATH")
    command = [str(SERVE_PYTHON), "-m", "server", *(f"{k}={v}" for k, v in args.items())]
    if scratch:
        env["TMPDIR"] = str(scratch)  # what /tmp is in the pod: where tempfile writes
    server = LiveServer(f"kserve-runtime-{http_port}", read_only_root(command, scratch) if scratch else command,
                      RequestSpec("ready", "GET", "/v2/health/ready"), env=env, log_dir=LOG_DIR, port=http_port)
    try:
        server.serve(timeout=START_TIMEOUT_S)
        paths = {probe["httpGet"]["path"] for _, container in containers() for probe in probes(container)}
        assert paths == {"/v2/health/ready", "/v2/health/live"}
        for path in paths:
            assert requests.get(server.url + path, timeout=10).status_code == 200, path
        for name in ("mnist", "mnist-int8"):
            assert requests.get(f"{server.url}/v2/models/{name}/ready", timeout=10).status_code == 200, name
        # A real request: decoding, inference, the metrics the workers write to their temporary folder.
        (png,) = digit_bodies(MNIST_SAMPLE, 1)
        answer = requests.post(server.url + "/predict", files={"image": ("d.png", png, "image/png")}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert requests.get(server.url + "/metrics", timeout=10).status_code == 200
        with socket.create_connection(("127.0.0.1", grpc_port), timeout=5):
            pass
    finally:
        server.stop()
    after = sorted((path.relative_to(repository), path.stat().st_mtime_ns) for path in repository.rglob("*"))
    assert after == before, "the server must not write into the repository (KServe mounts it read-only)"
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_the_runtime_serves_the_repository_where_kserve_puts_it(tmp_path: Path) -> None:
    assert runtime_args()["--model_dir"] == KSERVE_MODEL_DIR
    mounted = tmp_path / "mnt" / "models"
    shutil.copytree(COMMITTED_REPOSITORY, mounted)
    serve_runtime(mounted)


def test_the_runtime_runs_on_a_read_only_root(tmp_path: Path) -> None:
    """What the pod's readOnlyRootFilesystem asks: nothing writable but its emptyDir (and /dev/shm, as in a pod)."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs root, unshare and setpriv (util-linux) to make a read-only root for the server")
    mounted, scratch = tmp_path / "mnt" / "models", tmp_path / "tmp"
    shutil.copytree(COMMITTED_REPOSITORY, mounted)
    scratch.mkdir()
    for place in (ROOT / "server", mounted):  # the code and the repository must be read-only in there
        probe = subprocess.run(read_only_root(["touch", str(place / "read-only-probe")], scratch), capture_output=True,
                               text=True, timeout=30)
        if "Read-only file system" not in probe.stderr:
            pytest.skip(f"no read-only root could be made here for {place}: {probe.stderr.strip()[:300]}")
    serve_runtime(mounted, scratch)


def test_one_models_folder_at_the_model_dir_is_one_clear_error(tmp_path: Path) -> None:
    """storageUri pointing at models/mnist instead of models/: one line saying what to do."""
    shutil.copytree(COMMITTED_REPOSITORY / "mnist", tmp_path / "mnist")
    out = subprocess.run([str(SERVE_PYTHON), "-m", "server", "--check", f"--model_dir={tmp_path / 'mnist'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    (line,) = out.stderr.splitlines()
    assert "holds one model's version folders" in line and "storageUri names the repository" in line
