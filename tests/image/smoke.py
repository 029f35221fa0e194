"""Smoke-test the production image: list it, start it, probe it, size it.

It starts the image as a container (`podman run`, published on 127.0.0.1), or, where no container
can start, through chroot with the image's own settings (tests/image/runners.py). Then it lists
every file of the image, asks /v2/health/ready, runs the image's HEALTHCHECK, predicts real MNIST
test digits through /predict, sends a bounded load and measures the workers' memory, ships a new
model version with a HUP while clients keep uploading, stops it with SIGTERM (as `docker stop`
does) and measures the image: uncompressed, and as `podman save | gzip` gives it. The figures go
to tests/artifacts/image/ (git ignores it): image-size.json and the size section of docs/deploy.md
as it would read. With --update-docs they go to docs/image-size.json and into docs/deploy.md
between the image-size markers (`make image-test UPDATE_DOCS=1`), so a plain run leaves the
checkout as it found it.

Run by `make image-test`, outside pytest: `make test` stays free of container tools.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Union

import numpy as np
import requests
from PIL import Image

from tests.image.runners import ChrootedImage, ImageTestFailure, PodmanContainer, inspect, log, podman, start_image

Runner = Union[PodmanContainer, ChrootedImage]
PASSED: list[str] = []  # the checks passed so far, counted on the closing line


def passed(message: str) -> None:
    PASSED.append(message)
    log(message)
ROOT = Path(__file__).resolve().parents[2]
APP_DIR = "/srv/mnist"
FORBIDDEN_NAMES = {"torch", "torchvision", "torchaudio", "training", "export"}
FORBIDDEN_IN_VENV = {"pip", "setuptools"}  # nothing installs at run time
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "ld", "as", "make")
MIB = 1024 * 1024

# Published image sizes of the big model servers (registry listings, compressed), for scale.
BIG_SERVERS = [
    {"name": "NVIDIA Triton Inference Server", "image": "nvcr.io/nvidia/tritonserver:<v>-py3", "compressed_gb": 10.0,
     "note": "about 10 GB and more"},
    {"name": "TorchServe, CPU", "image": "pytorch/torchserve:latest-cpu", "compressed_gb": 1.5,
     "note": "1.5-2.4 GB by release"},
    {"name": "MLServer, slim", "image": "seldonio/mlserver:<v>-slim", "compressed_gb": 0.9,
     "note": "about 0.9 GB"},
]
RESERVED_MIB = 250  # a small Debian VPS: kernel, sshd, journald, nginx, some page cache
SIZE_BEGIN = "<!-- image-size:begin (written by tests/image/smoke.py; do not edit) -->"
SIZE_END = "<!-- image-size:end -->"
# Where a run's figures go: ignored by git unless --update-docs writes them into the documents.
ARTIFACTS = ROOT / "tests" / "artifacts" / "image"
DOCS_JSON, DOCS_DOC = ROOT / "docs" / "image-size.json", ROOT / "docs" / "deploy.md"


def list_files(rootfs: Path) -> list[str]:
    """Every path in the image, relative to its root (the kernel's /proc and /dev left out)."""
    paths = []
    for folder, dirs, files in os.walk(rootfs):
        relative = Path(folder).relative_to(rootfs)
        if relative.parts[:1] in (("proc",), ("dev",), ("sys",)):
            dirs[:] = []
            continue
        paths.extend(str(relative / name) for name in dirs + files)
    return paths


def check_contents(rootfs: Path, paths: list[str]) -> dict:
    """Fail unless the image holds the server and models only, with no torch, training code or tools."""
    def names(path: str) -> set[str]:
        return {part.split("-")[0].lower() for part in Path(path).parts}

    bad = [p for p in paths if FORBIDDEN_NAMES & names(p)]
    bad += [p for p in paths if p.startswith("opt/venv/") and FORBIDDEN_IN_VENV & names(p)]
    bad += [p for p in paths if Path(p).parent.name in ("bin", "sbin") and Path(p).name in COMPILERS]
    app = sorted(p.name for p in (rootfs / APP_DIR.lstrip("/")).iterdir())
    site = sorted(p.name for p in rootfs.glob("opt/venv/lib/python3*/site-packages/*") if not p.name.endswith(".dist-info"))
    log(f"{len(paths)} paths in the image; {APP_DIR}: {app}")
    log(f"site-packages: {' '.join(site)}")
    if bad:
        raise ImageTestFailure(f"the image holds what it must not: {bad[:20]}")
    if app != ["models", "server"]:
        raise ImageTestFailure(f"{APP_DIR} should hold only models/ and server/, holds {app}")
    if not any(name == "onnxruntime" for name in site) or not list(rootfs.glob("srv/mnist/models/*/*/model.onnx")):
        raise ImageTestFailure("no onnxruntime or no model in the image")
    passed("contents: no torch, training, export, pip or compiler; the server, the models and onnxruntime")
    models = sorted(f"{m.parent.parent.name}/{m.parent.name}" for m in rootfs.glob("srv/mnist/models/*/*/model.onnx"))
    return {"paths": len(paths), "app_dir": app, "site_packages": site, "models": models}


def wait_ready(url: str, image: Runner, timeout: float) -> float:
    """Seconds until /v2/health/ready answers 200; fail if the server exits or takes too long."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not image.alive():
            raise ImageTestFailure(f"the server exited before it was ready:\n{image.logs()[-3000:]}")
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return time.monotonic() - start
        time.sleep(0.2)
    raise ImageTestFailure(f"/v2/health/ready did not answer 200 within {timeout:.0f} s:\n{image.logs()[-3000:]}")


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def predict_digits(url: str, sample: Path, count: int) -> tuple[int, int]:
    """POST `count` real MNIST test digits as PNG uploads; return (right, asked)."""
    with np.load(sample) as data:
        images, labels = data["images"][:count], data["labels"][:count]
    files = [("image", (f"digit-{i}.png", png_bytes(img), "image/png")) for i, img in enumerate(images)]
    answer = requests.post(url + "/predict", files=files, timeout=60)
    if answer.status_code != 200:
        raise ImageTestFailure(f"/predict answered {answer.status_code}: {answer.text[:300]}")
    predicted = [p["label"] for p in answer.json()["predictions"]]
    right = sum(p == str(label) for p, label in zip(predicted, labels))
    log(f"/predict: {right}/{len(labels)} right; predicted {' '.join(predicted)}, true {' '.join(map(str, labels))}")
    return right, len(labels)


def digit_bodies(sample: Path, count: int = 50) -> list[bytes]:
    with np.load(sample) as data:
        return [png_bytes(image) for image in data["images"][:count]]


def upload_until(url: str, bodies: list[bytes], done: Callable[[list[str]], bool], clients: int = 4,
                 timeout: float = 120) -> tuple[list[str], list[str]]:
    """PNG uploads from `clients` threads until done(versions answered so far) or the timeout.

    Returns the version of every answer, in order, and every failure.
    """
    versions: list[str] = []
    failures: list[str] = []
    deadline = time.monotonic() + timeout

    def client(offset: int) -> None:
        with requests.Session() as session:
            i = offset
            while not done(versions) and time.monotonic() < deadline:
                try:
                    answer = session.post(url, files={"image": ("d.png", bodies[i % len(bodies)], "image/png")}, timeout=30)
                    if answer.status_code == 200:
                        versions.append(answer.json()["version"])
                    else:
                        failures.append(f"{answer.status_code} {answer.text[:200]}")
                except requests.RequestException as error:
                    failures.append(repr(error))
                i += clients

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return versions, failures


def send_load(url: str, bodies: list[bytes], total: int) -> None:
    """Bounded load before measuring memory; every request must pass."""
    versions, failures = upload_until(url + "/predict", bodies, lambda answered: len(answered) >= total)
    if failures or len(versions) < total:
        raise ImageTestFailure(f"{len(failures)} failed, {len(versions)} of {total} answered: {failures[:3]}")
    passed(f"{len(versions)} /predict uploads from 4 clients, none failed")


def ship_new_version(models: Path, staging_dir: Path, url: str, master: int, bodies: list[bytes]) -> dict:
    """docs/deploy.md's way: copy the latest version as the next one into `staging_dir` (on the
    repository's file system), rename it into place, then HUP the server's main process (`systemctl reload`,
    `docker kill --signal HUP`). Clients upload throughout: none may fail, and the answers must
    move from the old version to the new one."""
    name = "mnist" if (models / "mnist").is_dir() else sorted(p.parent.parent.name for p in models.glob("*/*/model.onnx"))[0]
    old = max(int(v.name) for v in (models / name).iterdir() if v.name.isdigit())
    staging = staging_dir / f"{name}-{old + 1}"
    staging.mkdir(mode=0o755)
    shutil.copy2(models / name / str(old) / "model.onnx", staging / "model.onnx")
    staging.rename(models / name / str(old + 1))
    new = str(old + 1)

    hup_sent = threading.Event()
    hup_lock = threading.Lock()  # the clients' threads all call this: one HUP only

    def hup_once_then_wait_for_new(answered: list[str]) -> bool:
        with hup_lock:
            if len(answered) >= 50 and not hup_sent.is_set():
                os.kill(master, signal.SIGHUP)
                hup_sent.set()
        return answered[-40:] == [new] * 40

    versions, failures = upload_until(f"{url}/models/{name}/predict", bodies, hup_once_then_wait_for_new)
    switched = versions[-40:] == [new] * 40
    if failures or not switched or versions[0] != str(old):
        raise ImageTestFailure(f"HUP to version {new}: {len(failures)} failed {failures[:3]}; "
                         f"first answer from version {versions[:1]}, last ones {versions[-5:]}")
    passed(f"version {new} of {name} shipped with HUP: {len(versions)} answers during the switch, none failed")
    return {"model": name, "from_version": str(old), "to_version": new, "answers": len(versions), "failures": 0}


def memory_kib(pid: int) -> dict[str, int]:
    """RSS from /proc/PID/status and PSS (shared pages split between sharers) from smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            fields["rss"] = int(line.split()[1])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            fields["pss"] = int(line.split()[1])
    return fields


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # the parent's pid is the 2nd field after the command, which may itself hold spaces
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return sorted(found)


def measure_memory(master: int) -> dict:
    workers = children(master)
    per_worker = [memory_kib(pid) for pid in workers]
    result = {
        "workers": len(workers),
        "master_rss_mib": round(memory_kib(master)["rss"] / 1024, 1),
        "worker_rss_mib": [round(m["rss"] / 1024, 1) for m in per_worker],
        "worker_pss_mib": [round(m["pss"] / 1024, 1) for m in per_worker],
    }
    log(f"memory: master RSS {result['master_rss_mib']} MiB, workers RSS {result['worker_rss_mib']} MiB, "
        f"PSS {result['worker_pss_mib']} MiB")
    return result


def probe(image: Runner, args: argparse.Namespace) -> dict:
    """Readiness, HEALTHCHECK, real digits, load, memory, a HUP to a new version, a clean stop."""
    ready_s = wait_ready(image.url, image, args.ready_timeout)
    passed(f"started by {image.how}, ready on {image.url} after {ready_s:.1f} s")
    image.healthcheck()
    passed("the image's HEALTHCHECK passes")
    right, asked = predict_digits(image.url, args.sample, args.digits)
    bodies = digit_bodies(args.sample)
    send_load(image.url, bodies, args.load_requests)
    memory = measure_memory(image.master_pid)
    hup = ship_new_version(image.rootfs / APP_DIR.lstrip("/") / "models", image.rootfs / "tmp", image.url,
                           image.master_pid, bodies)
    code = image.stop()
    logs = image.logs()
    # A clean stop: every worker drained and exited by itself, none was killed or aborted.
    unclean = [marker for marker in ("Traceback", "refused to gracefully stop", "terminate called", "Unexpected exit from worker") if marker in logs]
    if code != 0 or unclean:
        raise ImageTestFailure(f"the server exited with {code}, its log shows {unclean}:\n{logs[-3000:]}")
    passed("SIGTERM: the server drained its workers and exited 0")
    if right < args.min_right:
        raise ImageTestFailure(f"only {right} of {asked} digits right (at least {args.min_right} expected)")
    passed(f"{right} of {asked} real MNIST test digits right (at least {args.min_right} expected)")
    config_env = dict(item.split("=", 1) for item in args.info["Config"].get("Env") or [])
    return {"started_by": image.how, "ready_seconds": round(ready_s, 1), "digits_right": right, "digits_asked": asked,
            "load_requests": args.load_requests, "workers": config_env.get("WORKERS") or memory["workers"],
            "threads": config_env.get("THREADS"), "memory": memory, "hup": hup}


def compressed_size(image: str) -> int:
    """Bytes of `podman save IMAGE | gzip` (gzip's default level)."""
    save = subprocess.Popen(["podman", "save", image], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    gzip = subprocess.Popen(["gzip", "-c"], stdin=save.stdout, stdout=subprocess.PIPE)
    save.stdout.close()
    total = sum(len(chunk) for chunk in iter(lambda: gzip.stdout.read(MIB), b""))
    if gzip.wait() != 0 or save.wait() != 0:
        raise ImageTestFailure("podman save | gzip failed")
    return total


def measure_size(image: str, info: dict) -> dict:
    base = info.get("Labels", {}) or {}
    base_name = base.get("org.opencontainers.image.base.name", "")
    size = {"size_bytes": info["Size"], "compressed_bytes": compressed_size(image), "base": base_name}
    with contextlib.suppress(ImageTestFailure):
        size["base_size_bytes"] = inspect("image", base_name)["Size"] if base_name else None
    slimmest = min(s["compressed_gb"] for s in BIG_SERVERS) * 1e9
    size["fraction_of_slimmest_big_server"] = round(size["compressed_bytes"] / slimmest, 3)
    log(f"size: {size['size_bytes'] / 1e6:.0f} MB uncompressed, {size['compressed_bytes'] / 1e6:.0f} MB "
        f"compressed ({size['fraction_of_slimmest_big_server']:.2f} of the slimmest big server's image)")
    return size


def workers_in_1gb(memory: dict) -> int:
    """Workers that fit in 1 GiB beside the OS, sshd, journald and nginx (RESERVED_MIB), at the largest RSS."""
    room = 1024 - RESERVED_MIB - memory["master_rss_mib"]
    return int(room // max(memory["worker_rss_mib"]))


def size_section(report: dict) -> str:
    """The Markdown written between the image-size markers of docs/deploy.md."""
    size, smoke = report["size"], report["smoke"]
    memory = smoke["memory"]
    slimmest = min(s["compressed_gb"] for s in BIG_SERVERS)
    made_here = "made by deploy/image/debian-base.sh: Debian bookworm minbase + python3, " if "mnist-serve-base" in size["base"] else ""
    base = f"`{size['base']}` ({made_here}" + (f"{size['base_size_bytes'] / 1e6:.0f} MB of the total)" if size.get("base_size_bytes") else "size unknown)")
    return "\n".join([
        SIZE_BEGIN,
        f"Measured by `make image-test` on {report['measured_at']} (podman {report['podman']}, image "
        f"`{report['image_id']}`); the raw figures are in [image-size.json](image-size.json).",
        "",
        "| image | uncompressed | compressed (`podman save \\| gzip`) |",
        "|---|---:|---:|",
        f"| **this image** | **{size['size_bytes'] / 1e6:.0f} MB** | **{size['compressed_bytes'] / 1e6:.0f} MB** |",
        *(f"| {s['name']} (`{s['image']}`) | | {s['note']} (published) |" for s in BIG_SERVERS),
        "",
        f"Base: {base}. Compressed, the image is **{size['fraction_of_slimmest_big_server']:.3f}** of the "
        f"slimmest big server's image ({slimmest} GB); the aim was 0.1.",
        "",
        f"The same run started the image by {smoke['started_by']} ({smoke['workers']} workers x "
        f"{smoke['threads']} threads, its defaults; the model files in the image: "
        f"{', '.join(report['contents']['models'])}, each worker serving the versions its folder's "
        f"config.pbtxt selects), which answered "
        f"{smoke['digits_right']} of {smoke['digits_asked']} real MNIST test digits right, was ready "
        f"{smoke['ready_seconds']} s after start, and then served {smoke['load_requests']} PNG uploads "
        f"from 4 clients. Memory after that, as `ps` reports it (VmRSS) and as PSS (shared pages "
        f"split between the processes sharing them):",
        "",
        "| process | RSS MiB | PSS MiB |",
        "|---|---:|---:|",
        f"| main process | {memory['master_rss_mib']} | |",
        *(f"| worker {i + 1} | {rss} | {pss} |"
          for i, (rss, pss) in enumerate(zip(memory["worker_rss_mib"], memory["worker_pss_mib"]))),
        "",
        f"Leaving {RESERVED_MIB} MiB of a 1 GiB box to the kernel, sshd, journald and nginx, "
        f"**{workers_in_1gb(memory)} workers** of this size would fit in memory; the CPU, not memory, "
        "sets the number (below).",
        "",
        f"Then version {smoke['hup']['to_version']} of `{smoke['hup']['model']}` was renamed into the "
        f"image's repository and the main process got a HUP while 4 clients kept uploading: "
        f"{smoke['hup']['answers']} answers, none failed, the last 40 from the new version.",
        SIZE_END,
    ])


def write_reports(report: dict, json_path: Path, doc_path: Path) -> None:
    """The figures as JSON; the size section into `doc_path` between its markers, or as a new file of its own."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    if not doc_path.exists():
        doc_path.write_text(size_section(report) + "\n")
    else:
        text = doc_path.read_text()
        if SIZE_BEGIN not in text or SIZE_END not in text:
            raise ImageTestFailure(f"{doc_path} has no image-size markers ({SIZE_BEGIN} ... {SIZE_END})")
        head, rest = text.split(SIZE_BEGIN, 1)
        doc_path.write_text(head + size_section(report) + rest.split(SIZE_END, 1)[1])
    log(f"wrote {json_path} and the size section of {doc_path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("image", help="image to test, e.g. localhost/mnist-serve:latest")
    parser.add_argument("--sample", type=Path, default=ROOT / "tests/data/mnist_test_sample.npz",
                        help="real MNIST test digits (arrays images, labels)")
    parser.add_argument("--digits", type=int, default=20, help="digits to predict")
    parser.add_argument("--min-right", type=int, default=19, help="fewest right answers that pass")
    parser.add_argument("--load-requests", type=int, default=1000, help="requests sent before memory is measured")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for readiness")
    parser.add_argument("--update-docs", action="store_true",
                        help=f"write the figures to {DOCS_JSON.relative_to(ROOT)} and {DOCS_DOC.relative_to(ROOT)} "
                             f"instead of {ARTIFACTS.relative_to(ROOT)}/")
    parser.add_argument("--runner", choices=("auto", "podman", "chroot"), default="auto",
                        help="start the image with podman run, through chroot, or podman run if it can")
    parser.add_argument("--no-write", action="store_true", help="check only; write no figures")
    args = parser.parse_args(argv)
    args.json, args.doc = ((DOCS_JSON, DOCS_DOC) if args.update_docs
                           else (ARTIFACTS / DOCS_JSON.name, ARTIFACTS / "deploy-size-section.md"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("image-test: needs root (it mounts the image and chroots into it)", file=sys.stderr)
        return 1
    try:
        report = check_image(args)
        if not args.no_write:
            write_reports(report, args.json, args.doc)
    except ImageTestFailure as failure:
        print(f"image-test: {failure}", file=sys.stderr)
        print(f"image-test: {len(PASSED)} passed, 1 failed", flush=True)
        return 1
    print(f"image-test: {len(PASSED)} passed, 0 failed", flush=True)
    return 0


def check_image(args: argparse.Namespace) -> dict:
    """Every check of the module docstring, in order; the figures for the reports."""
    info = args.info = inspect("image", args.image)
    image = start_image(args.image, info, args.runner)
    try:
        contents = check_contents(image.rootfs, list_files(image.rootfs))
        smoke = probe(image, args)
    finally:
        image.remove()
    return {
        "image": args.image,
        "image_id": info["Id"][:12],
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "podman": podman("version", "--format", "{{.Client.Version}}"),
        "size": measure_size(args.image, info),
        "contents": contents,
        "smoke": smoke,
        "big_servers": BIG_SERVERS,
    }


if __name__ == "__main__":
    sys.exit(main())
