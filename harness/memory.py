"""The largest request of each kind the limits allow, and a worker's peak memory while it answers each.

What `python -m bench.memory` (docs/memory.md) and the 1 GiB / 1 CPU test (tests/test_memory_limit.py,
`make memory-test`) both send; `measure` resets the worker's peak RSS (`/proc/<pid>/clear_refs`) before
each request and reads it back (`VmHWM`) with the RSS after the answer.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from harness.bodies import RequestSpec, mnist_digit, predict_png, v2_infer_binary
from harness.procs import ROOT, ServerTree, free_port, send
from server.limits.budget import body_bytes, image_bytes, tensor_body_bytes
from server.config import BY_NAME
from server.image.decoding import is_rotated, open_image
from server.v2.tensors import parse_header_length

log = logging.getLogger(__name__)

SERVE_VENV = ROOT / ".venv-serve"
MAX_BODY = BY_NAME["MAX_CONTENT_LENGTH"].default
MAX_PIXELS = BY_NAME["MAX_IMAGE_PIXELS"].default
MAX_IMAGES = BY_NAME["MAX_IMAGES_PER_REQUEST"].default
MAX_REQUEST_PIXELS = BY_NAME["MAX_REQUEST_PIXELS"].default
BOUNDARY = "----memory-boundary-q7Lx2"
INPUT, OUTPUT, MODEL = "input", "probabilities", "mnist"
# A digit row as the v2 protocol carries it: [1, 28, 28] float32.
ROW_VALUES = 28 * 28


def repository_without_row_limit(folder: Path, source: Path = ROOT / "models") -> Path:
    """A copy of `source` in `folder` whose `mnist` takes as many rows as the body limit holds: the
    committed config.pbtxt refuses more than its max_batch_size (64) with a cheap 400, and the memory
    promise must also hold for a model dropped in without such a limit."""
    repository = folder / "models"
    shutil.copytree(source, repository)
    config = repository / MODEL / "config.pbtxt"
    rows = MAX_BODY // (ROW_VALUES * len("0,")) + 1  # the most rows a body can carry: JSON's shortest numbers
    text, count = re.subn(r"^max_batch_size: \d+$", f"max_batch_size: {rows}", config.read_text(), flags=re.M)
    if count != 1:
        raise ValueError(f"{config} names no max_batch_size to raise")
    config.write_text(text)
    return repository


# --------------------------------------------------------------------------- the largest requests


def page_png(mode: str, side: int, rotate_exif: bool = False) -> bytes:
    """A plain page with a dark digit-like stroke, `side` x `side` pixels: PNG squeezes it small."""
    page = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(page)
    draw.line([(side // 2, side // 4), (side // 2, 3 * side // 4)], fill=0, width=max(side // 40, 1))
    image = page.convert(mode) if mode != "I;16" else Image.fromarray((np.asarray(page, dtype=np.uint16) * 257))
    if mode == "P":
        image = page.convert("P")
        image.info["transparency"] = 0
    buffer = io.BytesIO()
    extra = {}
    if rotate_exif:
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90° on display, a full-size copy in exif_transpose
        extra["exif"] = exif.tobytes()
    image.save(buffer, format="PNG", optimize=True, **extra)
    return buffer.getvalue()


def photo_jpeg(width: int = 4032, height: int = 3024, quality: int = 85, seed: int = 0) -> bytes:
    """A phone photo of a digit on paper: shaded paper, sensor noise, fine texture (JPEG compresses it poorly)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paper = 200 - 40 * (x / width) + 20 * np.sin(y / 37.0)
    noise = rng.normal(0, 10, (height, width)).astype(np.float32)
    gray = np.clip(paper + noise, 0, 255)
    gray[height // 4:3 * height // 4, width // 2 - 40:width // 2 + 40] = 30
    rgb = np.stack([gray, gray * 0.97, gray * 0.92], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def multipart_files(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[str, bytes]:
    """multipart/form-data with every file in field `image`, as curl -F or a browser's FormData sends it."""
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode())
    for filename, data in files:
        kind = "image/jpeg" if filename.endswith(".jpg") else "image/png"
        parts.append(
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
        )
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return f"multipart/form-data; boundary={BOUNDARY}", b"".join(parts)


def fill_multipart(name: str, image: bytes, suffix: str, limit: int = MAX_BODY, fields: dict | None = None,
                   path: str = "/predict", pixels: int = 0, most: int = MAX_IMAGES) -> RequestSpec:
    """As many copies of `image` (of `pixels` decoded pixels) as the body limit, MAX_IMAGES_PER_REQUEST
    and MAX_REQUEST_PIXELS allow, in one request (`most`: at most this many)."""
    count = min(most, MAX_REQUEST_PIXELS // pixels) if pixels else most
    while count > 1:
        content_type, body = multipart_files([(f"page{i}.{suffix}", image) for i in range(count)], fields)
        if len(body) <= limit:
            break
        count = min(count - 1, int(count * limit / len(body)))
    content_type, body = multipart_files([(f"page{i}.{suffix}", image) for i in range(count)], fields)
    return RequestSpec(f"{name} x{count}", "POST", path, {"Content-Type": content_type}, body)


def v2_json_rows(limit: int = MAX_BODY, value: str = "0") -> RequestSpec:
    """A v2 JSON infer with as many [1, 28, 28] rows as fit in `limit` bytes: flat data of short numbers."""
    head = '{"inputs":[{"name":"%s","shape":[%%d,1,28,28],"datatype":"FP32","data":[' % INPUT
    tail = ']}],"outputs":[{"name":"%s"}]}' % OUTPUT
    per_row = ROW_VALUES * (len(value) + 1)
    rows = (limit - len(head) - len(tail) - 16) // per_row
    data = ",".join([value] * (rows * ROW_VALUES))
    body = ((head % rows) + data + tail).encode()
    return RequestSpec(f"v2 JSON {rows} rows", "POST", f"/v2/models/{MODEL}/infer",
                       {"Content-Type": "application/json"}, body)


def v2_binary_rows(limit: int = MAX_BODY) -> RequestSpec:
    """A v2 binary-tensor infer with as many [1, 28, 28] FP32 rows as fit in `limit` bytes."""
    probe = json.dumps({"inputs": [{"name": INPUT, "shape": [999999, 1, 28, 28], "datatype": "FP32",
                                    "parameters": {"binary_data_size": 9999999999}}],
                        "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}]})
    rows = (limit - len(probe)) // (ROW_VALUES * 4)
    image, _ = mnist_digit(0)
    raw = np.repeat((image.astype("<f4") / 255).reshape(1, 1, 28, 28), rows, axis=0).tobytes()
    header = json.dumps({"inputs": [{"name": INPUT, "shape": [rows, 1, 28, 28], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}]},
                        separators=(",", ":")).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return RequestSpec(f"v2 binary {rows} rows", "POST", f"/v2/models/{MODEL}/infer", headers, header + raw)


def json_images(image: bytes, pixels: int, limit: int = MAX_BODY) -> RequestSpec:
    """JSON `images`: as many base64 copies of `image` as fit, up to MAX_IMAGES_PER_REQUEST and MAX_REQUEST_PIXELS."""
    text = base64.b64encode(image).decode()
    count = max(1, min(MAX_IMAGES, MAX_REQUEST_PIXELS // pixels, (limit - 64) // (len(text) + 3)))
    body = json.dumps({"images": [text] * count}).encode()
    return RequestSpec(f"JSON images x{count}", "POST", "/predict", {"Content-Type": "application/json"}, body)


def oversized_pixels(limit: int = MAX_BODY) -> RequestSpec:
    """JSON `pixels` filling the body limit: a square of zeros far over 28x28 (answered 400, after parsing)."""
    side = int(math.sqrt(limit / 2)) - 8
    row = "[" + ",".join(["0"] * side) + "]"
    body = ('{"pixels":[' + ",".join([row] * side) + "]}").encode()
    return RequestSpec(f"JSON pixels {side}x{side}", "POST", "/predict", {"Content-Type": "application/json"}, body)


@dataclass(frozen=True)
class Largest:
    """The largest request of one kind, and the statuses a server that keeps its promise answers."""

    kind: str
    spec: RequestSpec
    expected: tuple[int, ...] = (200,)
    image: bytes = b""  # the image it repeats, if any

    def reserved(self) -> int:
        """Bytes the server reserves for this request's largest piece of work (server/limits/budget.py)."""
        headers = {name.lower(): value for name, value in self.spec.headers.items()}
        if self.spec.path.startswith("/v2/"):
            header_length = parse_header_length(headers.get("inference-header-content-length"))
            return tensor_body_bytes(len(self.spec.body), header_length)
        piece = 0
        if self.image:
            image = open_image(self.image, MAX_PIXELS)
            piece = image_bytes(image.mode, *image.size, is_rotated(image))
        is_json = headers.get("content-type", "").split(";")[0].strip() == "application/json"
        return max(body_bytes(len(self.spec.body), is_json), piece)


@lru_cache(maxsize=1)
def largest_requests() -> tuple[Largest, ...]:
    """The largest request of every kind the default limits allow (built once; a few seconds)."""
    side = int(math.isqrt(MAX_PIXELS))
    page = side * side
    rgba = page_png("RGBA", side)
    la_rotated = page_png("LA", side, rotate_exif=True)
    palette = page_png("P", side)
    wide = page_png("I;16", side)
    # The largest side the digit pipeline takes without reducing it first: its float stage at full size.
    unreduced_side = 2047
    unreduced = page_png("RGBA", unreduced_side)
    photo = photo_jpeg()
    return (
        Largest("PNG pages, RGBA, 25 MP each (multipart)", fill_multipart("png-rgba", rgba, "png", pixels=page), image=rgba),
        Largest("PNG pages, LA + EXIF rotation, 25 MP each", fill_multipart("png-la", la_rotated, "png", pixels=page),
                image=la_rotated),
        Largest("PNG pages, palette + transparency, 25 MP each", fill_multipart("png-p", palette, "png", pixels=page),
                image=palette),
        Largest("PNG pages, 16-bit, 25 MP each", fill_multipart("png-16", wide, "png", pixels=page), image=wide),
        Largest("PNG pages, RGBA, 2047x2047 each (not reduced)",
                fill_multipart("png-2047", unreduced, "png", pixels=unreduced_side**2), image=unreduced),
        Largest("PNG pages as JSON base64 images", json_images(rgba, page), image=rgba),
        Largest("64 PNG pages of 25 MP: over MAX_REQUEST_PIXELS (413)", fill_multipart("png-over", rgba, "png"), (413,)),
        Largest("12 MP phone-photo JPEGs (multipart)", fill_multipart("jpeg", photo, "jpg"), image=photo),
        Largest("page upload: 25 MP PNG with return_input", fill_multipart(
            "page", rgba, "png", fields={"return_input": "1"}, most=1), image=rgba),
        Largest("v2 JSON at the body limit", v2_json_rows()),
        Largest("v2 binary at the body limit", v2_binary_rows()),
        Largest("JSON pixels at the body limit (400)", oversized_pixels(), (400,)),
    )


def normal_requests() -> tuple[RequestSpec, RequestSpec]:
    """The everyday requests: a 28x28 PNG to /predict and a one-image v2 binary infer."""
    image, _ = mnist_digit(0)
    return predict_png(image), v2_infer_binary(image, MODEL, INPUT, OUTPUT)


# --------------------------------------------------------------------------- measuring a worker


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid` in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def reset_peak(pid: int) -> None:
    """Start `pid`'s VmHWM again from its current RSS (Linux clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def measure(repository: Path, env: dict[str, str] | None = None, repeat: int = 1, tree: Path = ROOT,
            kinds: tuple[str, ...] = ()) -> dict:
    """Idle RSS, then per kind: peak RSS while answering its largest request and RSS after it.

    `tree` holds the server/ to run (another revision's, for a before/after); `kinds` picks some (all when empty).
    """
    png, _ = normal_requests()
    server = ServerTree("memory", [str(SERVE_VENV / "bin" / "python"), "-m", "server"], png,
                      env={"MODEL_REPOSITORY": str(repository.resolve()), "WORKERS": "1",
                           # its own gRPC port (the worker still starts gRPC): 8001 may be taken
                           "GRPC_PORT": str(free_port()), **(env or {})}, cwd=tree)
    results: dict = {"kinds": []}
    with server:
        server.wait_serving()
        time.sleep(1.0)
        (worker,) = server.workers()
        for _ in range(20):  # a few normal requests first: the idle figure of a worker that has served
            send(server.port, png)
        results["idle_kib"] = status_kib(worker)["VmRSS"]
        log.info("idle worker RSS %d MiB", results["idle_kib"] // 1024)
        for item in (item for item in largest_requests() if not kinds or item.kind in kinds):
            row = {"kind": item.kind, "request": item.spec.name, "body_bytes": len(item.spec.body),
                   "reserved_bytes": item.reserved(), "runs": []}
            for _ in range(repeat):
                reset_peak(worker)
                before = status_kib(worker)["VmRSS"]
                started = time.perf_counter()
                status, body = send(server.port, item.spec, timeout=120)
                seconds = time.perf_counter() - started
                after = status_kib(worker)
                row["runs"].append({"status": status, "seconds": round(seconds, 2), "before_kib": before,
                                    "peak_kib": after["VmHWM"], "after_kib": after["VmRSS"],
                                    "answer": body[:160].decode(errors="replace") if status != 200 else ""})
            row["peak_kib"] = max(run["peak_kib"] for run in row["runs"])
            row["after_kib"] = row["runs"][-1]["after_kib"]
            log.info("%-48s %3d  peak %4d MiB  after %4d MiB  %.1f s", item.kind, row["runs"][-1]["status"],
                     row["peak_kib"] // 1024, row["after_kib"] // 1024, row["runs"][-1]["seconds"])
            results["kinds"].append(row)
            if server.workers() != [worker]:
                results["worker_died"] = item.kind
                break
        results["end_kib"] = status_kib(worker)["VmRSS"] if server.workers() == [worker] else None
    return results
