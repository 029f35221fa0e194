"""`make triton-test`: the real Triton and this server side by side, one client script against both.

Runs in `.venv-triton` (nvidia-pytriton's `tritonserver` 2.51, tritonclient[http,grpc],
onnxruntime). It checks that every committed model folder carries the `config.pbtxt` and
`labels.txt` that `export/triton_config.py` writes, copies the committed `models/` as it is into a
scratch folder (so Triton serves the committed folders themselves: their labels, batch limits and
version policies), lays out a backend folder (the wheel's Python backend files, copied, plus the STAND-IN onnxruntime
backend tests/triton/standin_onnxruntime/model.py, since the wheel has no C++ onnxruntime
backend), starts `tritonserver` in explicit model-control mode and this server (gunicorn, from
`.venv-serve`) on the same folder on free 127.0.0.1 ports, and asks both the same questions with
`tritonclient.http` (binary and JSON tensors) and, for Triton only, `tritonclient.grpc`: this
server is not asked over gRPC here yet (tests/test_grpc.py checks it), so those probes are skipped for it and say so.
Then it runs the call sequences of Triton's own example clients (tests/triton_examples.py:
`simple_http_infer_client`, the string, explicit-content, keep-alive... clients) against both
servers, over HTTP and gRPC, on the `simple`, `simple_string` and `simple_identity` models it
writes into the same folder (tests/onnx_factory.py).

Every answer is compared. An answer that differs is a failure unless KNOWN_DIFFERENCES names the
check and says why (docs/models.md carries the same table); a known difference that no longer
shows is a failure too, so the table stays true. The last line is `N passed, N failed`; the exit
status is 1 when anything failed. Both servers are stopped on every path (process groups,
SIGTERM then SIGKILL).

    .venv-triton/bin/python -m tests.triton.compare [--keep] [--report PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from harness.triton_server import find_install, layout_backends, triton_argv, triton_env  # noqa: E402
from server.runtime.model_config import (ModelConfigError, model_config_class,  # noqa: E402
                                 parse_model_config)  # (a pure module: protobuf only)
from tests.onnx_factory import write_simple, write_simple_identity  # noqa: E402
from tests.triton_examples import EXAMPLES  # noqa: E402

SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
MNIST_SAMPLE = ROOT / "tests" / "data" / "mnist_test_sample.npz"
LOG_DIR = ROOT / "tests" / "artifacts" / "logs"
GRPC_SKIP = "not asked over gRPC by this script yet (tests/test_grpc.py checks its gRPC with tritonclient.grpc)"

# check -> why the two servers answer differently. docs/models.md shows the same table.
KNOWN_DIFFERENCES: dict[str, str] = {
    "server.metadata": "Triton lists the extensions it implements beyond the five this server speaks "
                       "(binary_tensor_data, classification, model_repository, statistics, model_configuration): "
                       "shared memory, trace, logging, sequence, schedule_policy, parameters, unload_dependents",
    "repository.load_unknown_model": "loading a model that is not in the repository: Triton 500 'failed to poll "
                                      "from model repository', this server 404 'no model ... expected "
                                      "nope/<version>/model.onnx' (the client's mistake, so a 4xx)",
    "repository.index": "this server's index lists every version on disk, those its config.pbtxt version_policy "
                        "leaves out as UNAVAILABLE with the reason ('not served: config.pbtxt version_policy latest "
                        "1'); Triton's lists only the versions it has loaded at some time, so mnist 1 (kept on disk "
                        "for a rollback, not served) is missing there",
    "repository.index_after_new_version": "as repository.index: both serve the new version only and show the one it "
                                          "replaced as UNAVAILABLE; this server also lists mnist 1, never loaded",
    "repository.unload": "an unloaded model's infer: Triton 404 'has no available versions', this server 503 "
                         "saying how to load it; readiness and index state (UNAVAILABLE) agree",
    "repository.broken_version": "both refuse the load (400) and keep the versions that served serving, but Triton "
                                "(--strict-readiness, its default) then reports the server not ready; this server "
                                "stays ready while every model has a serving version (docs/models.md, step 2), so "
                                "a load balancer does not pull a box that still answers",
}
MODELS = ("mnist", "mnist-int8")


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A child in its own process group, logged to a file; `stop()` ends the whole group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"triton-compare-{name}.log"
        self.log_file = open(self.log_path, "wb")
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def wait_ready(self, url: str, timeout: float) -> float:
        """Seconds until `url` answers 200; raises with the log's tail when the process dies or stalls."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        self.log_file.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # children that left the group's leader behind (Triton's Python stubs) go too
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log_file.close()


def start_triton(repo: Path, backends: Path) -> tuple[Process, int, int, float]:
    install = find_install(Path(sys.prefix))
    http_port, grpc_port = free_port(), free_port()
    argv = triton_argv(install, repo, backends, http_port, grpc_port, explicit=True)
    process = Process("tritonserver", argv, triton_env(install), repo.parent)
    try:
        seconds = process.wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", 120)
    except Exception:
        process.stop()
        raise
    return process, http_port, grpc_port, seconds


def start_server(repo: Path) -> tuple[Process, int, int, float]:
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "MODEL_REPOSITORY": str(repo), "HOST": "127.0.0.1", "PORT": str(port),
           "GRPC_PORT": str(grpc_port), "WORKERS": "1", "THREADS": "4", "LOG_LEVEL": "info"}
    env.pop("PYTHONPATH", None)
    process = Process("mnist-serve", [str(SERVE_PYTHON), "-m", "server"], env, ROOT)
    try:
        seconds = process.wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", 60)
    except Exception:
        process.stop()
        raise
    return process, port, grpc_port, seconds


# ---------------------------------------------------------------- answers

@dataclass
class Target:
    """One server reached with one client library."""

    label: str  # triton-http, server-http, triton-grpc
    client: Any
    grpc: bool
    url: str = ""  # host:port, for a second client

    def tensor_input(self, name: str, array: np.ndarray, binary: bool = True):
        lib = grpcclient if self.grpc else httpclient
        tensor = lib.InferInput(name, list(array.shape), "FP32")
        if self.grpc:
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=binary)
        return tensor

    def requested(self, name: str, binary: bool = True, class_count: int = 0):
        if self.grpc:
            return grpcclient.InferRequestedOutput(name, class_count=class_count)
        return httpclient.InferRequestedOutput(name, binary_data=binary, class_count=class_count)

    def json_call(self, method: str, *args, **kwargs):
        """A metadata-like call, answered as plain JSON by both client libraries."""
        if self.grpc:
            kwargs["as_json"] = True
        return _plain(getattr(self.client, method)(*args, **kwargs))


def _plain(value: Any) -> Any:
    """gRPC's JSON writes int64 as strings and leaves out defaults: numbers back to numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) < 19:
        return int(value)
    return value


def error_of(error: InferenceServerException) -> dict:
    """An error as compared: its status (HTTP code, or the gRPC code), the message kept for the table."""
    return {"error": str(error.status()), "message": error.message()[:160]}


def outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except InferenceServerException as error:
        return error_of(error)


def infer_answer(target: Target, model: str, array: np.ndarray, version: str = "", binary: bool = True,
                 class_count: int = 0, output: str = "probabilities") -> dict:
    """model_name, model_version and each output's datatype, shape and values (or the error)."""
    def call():
        result = target.client.infer(model, [target.tensor_input("input", array, binary)], model_version=version,
                                     outputs=[target.requested(output, binary, class_count)], request_id="cmp-1")
        response = result.get_response(as_json=True) if target.grpc else result.get_response()
        values = result.as_numpy(output)
        if values.dtype == object:
            rows = values.reshape(len(values), -1) if values.ndim > 1 else values[None]
            values = [[_class_entry(v) for v in row] for row in rows]
        else:
            values = values.tolist()
        (out,) = response["outputs"]
        return {"id": response.get("id"), "model_name": response["model_name"],
                "model_version": str(response["model_version"]),
                "output": {"name": out["name"], "datatype": out["datatype"], "shape": _plain(out["shape"]),
                           "values": values}}
    return outcome(call)


def version_or_error(answer: dict) -> Any:
    """The version that answered, or the error (as compared: its status)."""
    return answer.get("model_version", answer)


def _typed_input(target: Target, name: str, array: np.ndarray, datatype: str):
    lib = grpcclient if target.grpc else httpclient
    tensor = lib.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _class_entry(raw: bytes) -> list:
    """`value:index[:label]` -> [value, index, label or None]."""
    parts = (raw.decode() if isinstance(raw, bytes) else raw).split(":", 2)
    return [float(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else None]


def same(a: Any, b: Any, tol: float = 2e-5) -> bool:
    """Equal, floats within `tol`; an error equals an error of the same status whatever its message."""
    if isinstance(a, dict) and isinstance(b, dict):
        if "error" in a and "error" in b:
            return a["error"] == b["error"]
        return a.keys() == b.keys() and all(same(a[k], b[k], tol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
    return a == b


def short(value: Any, limit: int = 400) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------- the run

@dataclass
class Run:
    """Tallies, and the rows of the difference table."""

    passed: int = 0
    failed: int = 0
    skipped: list[str] = field(default_factory=list)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def record(self, ok: bool, check: str, message: str) -> None:
        if ok:
            self.passed += 1
            print(f"PASS {check}: {message}")
        else:
            self.failed += 1
            self.failures.append(check)
            print(f"FAIL {check}: {message}")

    def compare(self, check: str, triton: Any, server: Any, expect: Callable[[Any], bool] | None = None) -> None:
        """Triton's HTTP answer against this server's; `expect`, when given, must hold for Triton's."""
        if expect is not None and not expect(triton):
            self.record(False, check, f"Triton's answer is not what the test expects: {short(triton)}")
            return
        differs = not same(triton, server)
        known = check in KNOWN_DIFFERENCES
        if differs:
            self.rows.append((check, short(triton, 300), short(server, 300), KNOWN_DIFFERENCES.get(check, "UNEXPLAINED")))
        if differs and not known:
            self.record(False, check, f"answers differ and KNOWN_DIFFERENCES does not explain it\n"
                                      f"  triton: {short(triton)}\n  server: {short(server)}")
        elif known and not differs:
            self.record(False, check, f"listed in KNOWN_DIFFERENCES but both now answer {short(triton)}: "
                                      "remove it there and in docs/models.md")
        else:
            self.record(True, check, "differs as documented" if differs else "same answer")

    def grpc_agrees(self, check: str, http_answer: Any, grpc_answer: Any) -> None:
        """Triton over gRPC against Triton over HTTP (this server: skipped, see GRPC_SKIP)."""
        ok = same(_grpc_errors_as_http(http_answer), grpc_answer)
        self.record(ok, f"{check} [grpc]", "same as Triton's HTTP answer" if ok else
                    f"gRPC {short(grpc_answer)} vs HTTP {short(http_answer)}")
        self.skipped.append(f"{check} [grpc] on this server: {GRPC_SKIP}")


def _grpc_errors_as_http(answer: Any) -> Any:
    if isinstance(answer, dict) and "error" in answer:
        return {"error": {"400": "StatusCode.INVALID_ARGUMENT", "404": "StatusCode.NOT_FOUND",
                          "500": "StatusCode.INTERNAL", "503": "StatusCode.UNAVAILABLE"}.get(answer["error"],
                                                                                               answer["error"])}
    return answer


def digits(count: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` real MNIST test digits as the graph's float [N, 1, 28, 28] input, and their labels."""
    with np.load(MNIST_SAMPLE) as sample:
        images, labels = sample["images"], sample["labels"]
    index = np.arange(offset, offset + count) % len(images)
    return (images[index].astype(np.float32) / 255.0)[:, None], labels[index]


def latest_versions(repo: Path) -> dict[str, int]:
    """Each model's highest version on disk: the one both servers serve by default."""
    return {model: max(int(d.name) for d in (repo / model).iterdir() if d.name.isdigit()) for model in MODELS}


def committed_configs(run: Run, models: Path) -> None:
    """Every committed model folder carries config.pbtxt and labels.txt, and they read back."""
    for folder in sorted(d for d in models.iterdir() if d.is_dir()):
        check = f"repository.committed_config[{folder.name}]"
        if not (folder / "config.pbtxt").is_file() or not (folder / "labels.txt").is_file():
            run.record(False, check, f"{folder} lacks config.pbtxt or labels.txt (make export writes both)")
            continue
        try:
            config = parse_model_config((folder / "config.pbtxt").read_text(), folder)
        except ModelConfigError as error:
            run.record(False, check, str(error))
            continue
        run.record(config.max_batch_size > 4 and len(config.labels or ()) == 10, check,
                   f"max_batch_size {config.max_batch_size}, {len(config.labels or ())} labels, "
                   f"version_policy {config.version_policy.kind}")


def run_checks(run: Run, repo: Path, th: Target, sv: Target, tg: Target) -> None:
    both = (th, sv)
    latest = latest_versions(repo)
    default, int8_default = str(latest["mnist"]), str(latest["mnist-int8"])

    def ask(call: Callable[[Target], Any]) -> tuple[Any, Any]:
        return tuple(outcome(lambda t=t: call(t)) for t in both)

    def ask_grpc(check: str, http_answer: Any, call: Callable[[Target], Any]) -> None:
        run.grpc_agrees(check, http_answer, outcome(lambda: call(tg)))

    # --- health
    for check, call in {
        "health.live": lambda t: t.client.is_server_live(),
        "health.ready": lambda t: t.client.is_server_ready(),
        "health.model_ready": lambda t: {m: t.client.is_model_ready(m) for m in ("mnist", "mnist-int8", "nope")},
        "health.version_ready": lambda t: {v: t.client.is_model_ready("mnist", v) for v in ("1", default, "9")},
    }.items():
        triton, server = ask(call)
        run.compare(check, triton, server, expect=lambda a: a not in (False, {}))
        ask_grpc(check, triton, call)

    # --- server metadata: names and versions are each server's own; extensions are compared
    def extensions(t: Target) -> dict:
        metadata = t.json_call("get_server_metadata")
        return {"has_name_and_version": bool(metadata.get("name") and metadata.get("version")),
                "extensions": sorted(metadata.get("extensions", []))}
    triton, server = ask(extensions)
    run.compare("server.metadata", triton, server)
    ask_grpc("server.metadata", triton, extensions)
    needed = {"binary_tensor_data", "classification", "model_repository", "statistics", "model_configuration"}
    run.record(needed <= set(server.get("extensions", [])) and needed <= set(triton.get("extensions", [])),
               "server.metadata.needed_extensions", f"both list {sorted(needed)}")

    # --- model metadata and configuration
    for model in MODELS:
        check = f"model.metadata[{model}]"
        triton, server = ask(lambda t: t.json_call("get_model_metadata", model))
        run.compare(check, triton, server)
        ask_grpc(check, triton, lambda t: t.json_call("get_model_metadata", model))

    check = "model.metadata.named_version"
    triton, server = ask(lambda t: t.json_call("get_model_metadata", "mnist", default))
    run.compare(check, triton, server, expect=lambda a: a.get("versions") in ([default], [int(default)]))
    ask_grpc(check, triton, lambda t: t.json_call("get_model_metadata", "mnist", default))

    def config_summary(t: Target, model: str) -> dict:
        config = t.json_call("get_model_config", model)
        config = config.get("config", config)  # gRPC wraps it
        return {"max_batch_size": config.get("max_batch_size", 0),
                "dynamic_batching": "dynamic_batching" in config,
                "version_policy": config.get("version_policy"),
                "input": [(i["name"], i["data_type"], i["dims"]) for i in config.get("input", [])],
                "output": [(o["name"], o["data_type"], o["dims"], o.get("label_filename", ""))
                           for o in config.get("output", [])]}
    configs = {}
    for model in MODELS:
        check = f"model.config[{model}]"
        triton, server = ask(lambda t: config_summary(t, model))
        configs[model] = triton
        run.compare(check, triton, server, expect=lambda a: "error" not in a)
        ask_grpc(check, triton, lambda t: config_summary(t, model))
    for model in MODELS:
        run.record(*_reads_tritons_config(th, repo, model))
    run.record(all(configs[m].get("max_batch_size") == 64 and not configs[m].get("dynamic_batching")
                   and configs[m]["output"][0][3] == "labels.txt" for m in MODELS),
               "model.config.committed", f"the committed config.pbtxt, as Triton serves it: max_batch_size 64, no "
                                         f"dynamic batching, labels.txt; got {short(configs)}")

    # --- inference
    one, one_label = digits(1)
    session = ort.InferenceSession(str(repo / "mnist" / default / "model.onnx"), providers=["CPUExecutionProvider"])
    for binary in (True, False):
        kind = "binary" if binary else "json"
        check = f"infer.batch1.{kind}"
        triton, server = ask(lambda t: infer_answer(t, "mnist", one, binary=binary))
        direct = session.run(["probabilities"], {"input": one})[0].tolist()
        run.compare(check, triton, server,
                    expect=lambda a: "output" in a and same(a["output"]["values"], direct)
                    and int(np.argmax(a["output"]["values"][0])) == int(one_label[0]))
        if binary:
            ask_grpc(check, triton, lambda t: infer_answer(t, "mnist", one))

    for model in MODELS:  # 64 rows: the committed config.pbtxt, well above Triton's auto-completed 4
        largest = configs[model].get("max_batch_size", 0)
        batch, labels = digits(largest, offset=7)
        check = f"infer.largest_batch[{model}]"
        triton, server = ask(lambda t: infer_answer(t, model, batch))
        run.compare(check, triton, server, expect=lambda a: "output" in a and a["output"]["shape"] == [largest, 10]
                    and (np.argmax(a["output"]["values"], axis=1) == labels).mean() >= 0.95)
        ask_grpc(check, triton, lambda t: infer_answer(t, model, batch))
        over, _ = digits(largest + 1, offset=3)
        check = f"infer.over_largest_batch[{model}]"
        triton, server = ask(lambda t: infer_answer(t, model, over))
        run.compare(check, triton, server, expect=lambda a: "error" in a)

    # Requests arriving together: each gets its own rows.
    int8 = ort.InferenceSession(str(repo / "mnist-int8" / int8_default / "model.onnx"), providers=["CPUExecutionProvider"])

    def concurrent_rows(t: Target) -> dict:
        client = httpclient.InferenceServerClient(t.url, concurrency=16)
        try:
            batches = [digits(1 + i % 3, offset=5 * i)[0] for i in range(24)]
            pending = [client.async_infer("mnist-int8", [t.tensor_input("input", b)]) for b in batches]
            answers = [p.get_result().as_numpy("probabilities") for p in pending]
        finally:
            client.close()
        wrong = [i for i, (b, a) in enumerate(zip(batches, answers))
                 if not np.allclose(a, int8.run(["probabilities"], {"input": b})[0], atol=2e-5)]
        return {"requests": len(batches), "rows": sum(len(b) for b in batches), "wrong": wrong}
    triton, server = ask(concurrent_rows)
    run.compare("infer.concurrent_requests_keep_their_rows", triton, server, expect=lambda a: a.get("wrong") == [])
    stats = th.client.get_inference_statistics("mnist-int8")["model_stats"][0].get("batch_stats", [])
    print(f"note: Triton ran mnist-int8 at batch sizes {sorted(int(b['batch_size']) for b in stats)} "
          "(no dynamic batching in the committed config.pbtxt: each request as it came)")

    check = "infer.named_version"
    triton, server = ask(lambda t: infer_answer(t, "mnist", one, version=default, binary=False))
    run.compare(check, triton, server, expect=lambda a: a.get("model_version") == default)
    ask_grpc(check, triton, lambda t: infer_answer(t, "mnist", one, version=default))

    for check, call in {
        "infer.unknown_version": lambda t: infer_answer(t, "mnist", one, version="9"),
        "infer.unknown_model": lambda t: infer_answer(t, "nope", one),
        "infer.wrong_shape": lambda t: infer_answer(t, "mnist", np.zeros((1, 1, 27, 27), np.float32)),
        "infer.wrong_datatype": lambda t: outcome(lambda: t.client.infer("mnist", [
            _typed_input(t, "input", one.astype(np.float64), "FP64")]).get_response() and "answered"),
        "infer.wrong_input_name": lambda t: outcome(lambda: t.client.infer(
            "mnist", [t.tensor_input("pixels", one)]).get_response() and "answered"),
    }.items():
        triton, server = ask(call)
        run.compare(check, triton, server, expect=lambda a: isinstance(a, dict) and "error" in a)
        ask_grpc(check, triton, call)

    # --- classification extension
    three, three_labels = digits(3, offset=20)
    for binary in (True, False):
        check = f"classification.top3.{'binary' if binary else 'json'}"
        for model in MODELS:
            triton, server = ask(lambda t: infer_answer(t, model, three, binary=binary, class_count=3))
            run.compare(f"{check}[{model}]", triton, server,
                        expect=lambda a: "output" in a and [row[0][1] for row in a["output"]["values"]]
                        == three_labels.tolist())
            if binary:
                ask_grpc(f"{check}[{model}]", triton, lambda t: infer_answer(t, model, three, class_count=3))

    # --- repository extension (explicit mode)
    def index(t: Target) -> list:
        """(name, version, state) of every entry, once no version is still LOADING or UNLOADING."""
        def read() -> list:
            answer = t.json_call("get_model_repository_index")
            entries = answer.get("models", []) if isinstance(answer, dict) else answer
            return sorted((e["name"], str(e.get("version", "")), e.get("state", "")) for e in entries)
        _settle(lambda: not any(state.endswith("LOADING") for _, _, state in read()), seconds=15)
        return read()
    triton, server = ask(index)
    run.compare("repository.index", triton, server)
    ask_grpc("repository.index", triton, index)

    check = "repository.load_unknown_model"
    triton, server = ask(lambda t: t.client.load_model("nope") or "loaded")
    run.compare(check, triton, server, expect=lambda a: isinstance(a, dict) and "error" in a)
    ask_grpc(check, triton, lambda t: t.client.load_model("nope") or "loaded")

    def unload_then_ask(t: Target) -> dict:
        t.client.unload_model("mnist-int8")
        _settle(lambda: not t.client.is_model_ready("mnist-int8"))
        return {"ready": t.client.is_model_ready("mnist-int8"),
                "infer": infer_answer(t, "mnist-int8", one), "index": [e for e in index(t) if e[0] == "mnist-int8"],
                "others_ready": t.client.is_model_ready("mnist")}
    triton, server = ask(unload_then_ask)
    run.compare("repository.unload", triton, server, expect=lambda a: a.get("ready") is False and a.get("others_ready"))

    def load_then_ask(t: Target) -> dict:
        t.client.load_model("mnist-int8")
        return {"ready": t.client.is_model_ready("mnist-int8"),
                "infer": infer_answer(t, "mnist-int8", one)["model_version"]}
    triton, server = ask(load_then_ask)
    run.compare("repository.load", triton, server, expect=lambda a: a == {"ready": True, "infer": int8_default})
    ask_grpc("repository.unload+load", {"ready": False, "ready_after_load": True},
             lambda t: {"ready": (t.client.unload_model("mnist-int8"),
                                  _settle(lambda: not t.client.is_model_ready("mnist-int8")),
                                  t.client.is_model_ready("mnist-int8"))[-1],
                        "ready_after_load": (t.client.load_model("mnist-int8"),
                                             t.client.is_model_ready("mnist-int8"))[-1]})

    # A new version dropped in the way docs/models.md says: written beside, renamed into place.
    for model in MODELS:
        staging = repo.parent / "staging" / model
        staging.mkdir(parents=True)
        shutil.copy2(repo / model / str(latest[model]) / "model.onnx", staging / "model.onnx")
        staging.rename(repo / model / str(latest[model] + 1))

    def new_version(t: Target, model: str) -> dict:
        old, new = str(latest[model]), str(latest[model] + 1)
        before = t.client.is_model_ready(model, new)
        t.client.load_model(model)
        return {"ready_before_load": before,
                "versions": t.json_call("get_model_metadata", model)["versions"],
                "ready": {v: t.client.is_model_ready(model, v) for v in (old, new)},
                "default_version": version_or_error(infer_answer(t, model, one)),
                "previous_answers": outcome(lambda: infer_answer(t, model, one, version=old).get("model_version",
                                                                                              "error"))}
    for model in MODELS:
        check = f"repository.new_version[{model}]"
        triton, server = ask(lambda t: new_version(t, model))
        run.compare(check, triton, server, expect=lambda a: a.get("ready", {}).get(str(latest[model] + 1)) is True
                    and a.get("default_version") == str(latest[model] + 1))
    triton, server = ask(index)
    run.compare("repository.index_after_new_version", triton, server)
    ask_grpc("repository.index_after_new_version", triton, index)

    # A broken version dropped in: the load is refused and what served keeps serving.
    staging = repo.parent / "staging" / "broken"
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(b"not an onnx file")
    broken = str(latest["mnist"] + 2)
    staging.rename(repo / "mnist" / broken)

    def broken_version(t: Target) -> dict:
        load = outcome(lambda: t.client.load_model("mnist") or "loaded")
        return {"load": {"error": load["error"]} if isinstance(load, dict) else load,
                "ready": {v: t.client.is_model_ready("mnist", v) for v in (default, str(latest["mnist"] + 1), broken)},
                "default_version": version_or_error(infer_answer(t, "mnist", one)),
                "server_ready": t.client.is_server_ready()}
    triton, server = ask(broken_version)
    run.compare("repository.broken_version", triton, server,
                expect=lambda a: isinstance(a.get("load"), dict) and a["ready"][broken] is False)
    shutil.rmtree(repo / "mnist" / broken)


def run_examples(run: Run, triton: tuple[str, str], server: tuple[str, str]) -> None:
    """The call sequences of Triton's example clients (tests/triton_examples.py) against both servers
    (HTTP and gRPC urls), over the `simple`, `simple_string` and `simple_identity` models."""
    def passes(sequence: Callable[[str, str], None], urls: tuple[str, str]) -> str:
        try:
            sequence(*urls)
        except (AssertionError, InferenceServerException, grpc.RpcError) as error:
            return f"failed: {type(error).__name__}: {str(error)[:300]}"
        return "passed"

    for name, sequence in EXAMPLES.items():
        run.compare(f"example.{name}", passes(sequence, triton), passes(sequence, server), expect=lambda a: a == "passed")


def _reads_tritons_config(triton: Target, repo: Path, model: str) -> tuple[bool, str, str]:
    """server/runtime/model_config.py parses the configuration Triton itself serves (auto-completed or
    written), turned back into config.pbtxt text, to the same values."""
    from google.protobuf import json_format, text_format

    check = f"model_config.reads_tritons_config[{model}]"
    served = triton.client.get_model_config(model)
    message = json_format.ParseDict(served, model_config_class()())
    try:
        config = parse_model_config(text_format.MessageToString(message), repo / model)
    except ModelConfigError as error:
        return False, check, f"refused Triton's own configuration: {error}"
    got = (config.max_batch_size, config.dynamic_batching is not None, config.version_policy.kind,
           [(t.name, t.datatype, list(t.dims)) for t in config.inputs + config.outputs], config.ignored)
    want = (served["max_batch_size"], "dynamic_batching" in served, next(iter(served["version_policy"])),
            [(t["name"], t["data_type"].removeprefix("TYPE_"), t["dims"]) for t in served["input"] + served["output"]])
    ok = got[:4] == want
    return ok, check, f"read {got[:4]}, ignoring {', '.join(config.ignored)}" if ok else f"read {got}, Triton {want}"


def _settle(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Wait up to `seconds` for `condition` (an unload finishes its in-flight requests first)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def write_report(run: Run, path: Path, timings: dict[str, float]) -> None:
    lines = ["# Triton 2.51 (stand-in onnxruntime backend) and this server: where the answers differ", "",
             f"Ready after start: Triton {timings['triton']:.1f} s, this server {timings['server']:.1f} s.", "",
             "| check | Triton | this server | why |", "|---|---|---|---|"]
    for check, triton, server, why in run.rows:
        cell = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines.append(f"| {check} | `{cell(triton)}` | `{cell(server)}` | {cell(why)} |")
    lines += ["", f"Skipped: {len(run.skipped)} gRPC probes on this server ({GRPC_SKIP}).", "",
              f"{run.passed} passed, {run.failed} failed"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


class Interrupted(Exception):
    """SIGTERM arrived: recorded as a failure, then both servers are stopped."""


def _interrupt(signum: int, frame) -> None:
    raise Interrupted(f"interrupted by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.triton.compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--report", type=Path, default=ROOT / "tests" / "artifacts" / "triton-compare.md",
                        help="where the difference table is written")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (printed) for a look")
    args = parser.parse_args(argv)
    if not SERVE_PYTHON.exists():
        print(f"error: {SERVE_PYTHON} missing: run make triton-test (it builds .venv-serve)", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="triton-compare-"))
    processes: list[Process] = []
    run = Run()
    # SIGTERM (CI's timeout) ends the run as a failure through `finally`, which stops both servers.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        committed_configs(run, ROOT / "models")
        repo = scratch / "models"
        shutil.copytree(ROOT / "models", repo)
        # The models Triton's example clients expect, for both servers (run_examples).
        write_simple(repo)
        write_simple(repo, "simple_string", strings=True)
        write_simple_identity(repo)
        backends = layout_backends(scratch / "backends", find_install(Path(sys.prefix)))
        triton, http_port, grpc_port, triton_s = start_triton(repo, backends)
        processes.append(triton)
        server, server_port, server_grpc_port, server_s = start_server(repo)
        processes.append(server)
        print(f"tritonserver ready in {triton_s:.1f} s (http {http_port}, grpc {grpc_port}); "
              f"this server ready in {server_s:.1f} s (http {server_port})")
        th = Target("triton-http", httpclient.InferenceServerClient(f"127.0.0.1:{http_port}"), False,
                    f"127.0.0.1:{http_port}")
        sv = Target("server-http", httpclient.InferenceServerClient(f"127.0.0.1:{server_port}"), False,
                    f"127.0.0.1:{server_port}")
        tg = Target("triton-grpc", grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}"), True,
                    f"127.0.0.1:{grpc_port}")
        try:
            run_checks(run, repo, th, sv, tg)
            run_examples(run, (th.url, tg.url), (sv.url, f"127.0.0.1:{server_grpc_port}"))
        except Exception:  # a crash in the script itself is a failure, reported with its traceback
            run.record(False, "script", traceback.format_exc())
        finally:
            for target in (th, sv, tg):
                target.client.close()
        for process in processes:
            if process.popen.poll() is not None:
                run.record(False, f"{process.name}.alive", f"exited early with {process.popen.returncode}:\n"
                                                           f"{process.tail()}")
        write_report(run, args.report, {"triton": triton_s, "server": server_s})
    except Exception:
        run.record(False, "setup", traceback.format_exc())
    finally:
        for process in reversed(processes):
            process.stop()
        if args.keep:
            print(f"scratch folder kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print()
    for row in run.rows:
        print(f"differs: {row[0]}: {row[3]}")
    print(f"skipped: {len(run.skipped)} gRPC probes on this server: {GRPC_SKIP}")
    if run.failures:
        print("failed: " + ", ".join(run.failures))
    print(f"{run.passed} passed, {run.failed} failed")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
