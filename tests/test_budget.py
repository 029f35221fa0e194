"""Bounded memory per worker (issue 15): the box's limits, reservations, the pixel budget, chunked runs.

The whole promise under a real 1 GiB / 1 CPU cgroup is tests/test_memory_limit.py (make memory-test).
"""
from __future__ import annotations

import base64
import gzip
import io
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from PIL import Image, ImageFile
from urllib3 import encode_multipart_formdata

from server import create_app
from server.limits import box
from server.limits.budget import SMALL, MemoryBudget, image_bytes, run_in_chunks, tensor_body_bytes
from server.runtime.model import row_limit
from server.v2.protocol import check_rows
from server.errors import InvalidInput, Overloaded, TooLarge
from tests.onnx_factory import write_classifier

MIB = 2**20


# --------------------------------------------------------------------------- the box


def _cgroup_v1(tmp_path: Path, memory: str, quota: str, period: str = "100000") -> Path:
    (tmp_path / "memory" / "svc").mkdir(parents=True)
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "memory" / "svc" / "memory.limit_in_bytes").write_text(memory + "\n")
    (tmp_path / "cpu" / "svc").mkdir(parents=True)
    (tmp_path / "cpu" / "svc" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (tmp_path / "cpu" / "svc" / "cpu.cfs_period_us").write_text(period + "\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/svc\n1:cpu:/svc\n0::/\n")
    return proc


def test_cgroup_v1_limits_are_read(tmp_path: Path) -> None:
    proc = _cgroup_v1(tmp_path, str(2**30), "150000")
    assert box.cgroup_memory_limit(tmp_path, proc) == 2**30
    assert box.cgroup_cpu_quota(tmp_path, proc) == 1.5


def test_cgroup_v1_without_limits_says_none(tmp_path: Path) -> None:
    proc = _cgroup_v1(tmp_path, "9223372036854771712", "-1")
    assert box.cgroup_memory_limit(tmp_path, proc) is None
    assert box.cgroup_cpu_quota(tmp_path, proc) is None


def test_cgroup_v2_limits_are_read_from_the_group_and_its_parents(tmp_path: Path) -> None:
    (tmp_path / "system.slice" / "app").mkdir(parents=True)
    (tmp_path / "system.slice" / "memory.max").write_text(f"{700 * MIB}\n")
    (tmp_path / "system.slice" / "app" / "memory.max").write_text("max\n")
    (tmp_path / "system.slice" / "app" / "cpu.max").write_text("50000 100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/system.slice/app\n")
    assert box.cgroup_memory_limit(tmp_path, proc) == 700 * MIB
    assert box.cgroup_cpu_quota(tmp_path, proc) == 0.5


@pytest.mark.parametrize("memory, cpus, workers", [
    (2**30, 1.0, 2),         # the 1 GB / 1 CPU VPS: two workers, as always
    (700 * MIB, 1.0, 2),     # the container of docs/deploy.md
    (512 * MIB, 1.0, 1),     # too small for two
    (24 * 2**30, 2.0, 3),    # one per CPU plus one
    (2**30, 0.5, 2),         # half a CPU still gets two (one computes while the other reads)
])
def test_workers_and_budget_follow_the_box(memory: int, cpus: float, workers: int) -> None:
    machine = box.Box(memory, cpus, "test", "test")
    assert box.default_workers(machine) == workers
    budget = box.default_memory_budget(machine, workers)
    # What the workers may hold together stays inside the box, with room for the rest of the system.
    assert workers * (box.WORKER_IDLE + budget) + box.MASTER <= memory


@pytest.mark.parametrize("memory, cpus", [(2**30, 1.0), (700 * MIB, 1.0), (2 * 2**30, 2.0), (24 * 2**30, 2.0), (8 * 2**30, 4.0)])
def test_the_workers_leave_a_fifth_of_the_box_to_the_rest_of_the_system(memory: int, cpus: float) -> None:
    """docs/deploy.md: each worker's budget is its share of the box after the idle workers and a fifth
    left to the rest of the system (kernel, page cache, sshd, nginx): all of that share, no more."""
    machine = box.Box(memory, cpus, "test", "test")
    workers = box.default_workers(machine)
    held = workers * (box.WORKER_IDLE + box.default_memory_budget(machine, workers)) + box.MASTER
    assert memory * 0.8 - workers <= held <= memory * 0.8, (held / MIB, memory * 0.8 / MIB)


def test_the_box_is_logged_once_at_start(live_server) -> None:
    lines = [line for line in live_server.log().splitlines() if "box:" in line]
    assert len(lines) == 1 and "MiB of memory" in lines[0] and "large request" in lines[0], lines


# --------------------------------------------------------------------------- reservations


def test_small_work_reserves_nothing() -> None:
    budget = MemoryBudget(100 * MIB)
    with budget.request(), budget.reserve(SMALL - 1, "a digit"):
        assert budget.used == 0 and budget.requests == 0


def test_a_large_request_holds_its_slot_between_pieces() -> None:
    budget = MemoryBudget(100 * MIB, wait_seconds=0, max_requests=1, max_waiting=0)
    with budget.request():
        with budget.reserve(10 * MIB, "the body"):
            assert (budget.used, budget.requests) == (10 * MIB, 1)
        assert (budget.used, budget.requests) == (0, 1)  # between two images: still this request's
        refused = []

        def another_request() -> None:
            try:
                with budget.request(), budget.reserve(10 * MIB, "another request's image"):
                    pass
            except Overloaded as err:
                refused.append(err)

        other = threading.Thread(target=another_request)
        other.start()
        other.join(5)
        assert len(refused) == 1
        with budget.reserve(10 * MIB, "the next image"):  # this request's own next piece needs no new slot
            assert budget.requests == 1
    assert (budget.used, budget.requests) == (0, 0)


def test_one_request_waits_and_the_next_is_refused_at_once() -> None:
    budget = MemoryBudget(100 * MIB, wait_seconds=5, max_requests=1, max_waiting=1)
    holding, release, outcomes = threading.Event(), threading.Event(), {}

    def hold() -> None:
        with budget.request(), budget.reserve(50 * MIB, "first"):
            holding.set()
            release.wait(10)

    def wait() -> None:
        started = time.monotonic()
        with budget.request(), budget.reserve(50 * MIB, "second"):
            outcomes["waited"] = time.monotonic() - started

    first = threading.Thread(target=hold)
    first.start()
    holding.wait(5)
    second = threading.Thread(target=wait)
    second.start()
    deadline = time.monotonic() + 5
    while budget.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        with budget.request(), budget.reserve(50 * MIB, "third"):
            pass
    assert time.monotonic() - started < 1, "the third did not wait: one waiter at most"
    assert refused.value.status == 503 and refused.value.retry_after >= 1 and "retry" in refused.value.message
    release.set()
    first.join(10)
    second.join(10)
    assert "waited" in outcomes and (budget.used, budget.requests, budget.waiting) == (0, 0, 0)


def test_a_piece_larger_than_the_whole_budget_is_too_large() -> None:
    budget = MemoryBudget(100 * MIB, wait_seconds=0, max_requests=4)
    with pytest.raises(TooLarge, match="a huge page needs about 400 MiB.*100 MiB per worker"):
        with budget.request(), budget.reserve(400 * MIB, "a huge page"):
            pass
    assert (budget.used, budget.requests) == (0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "L", "RGB"])
def test_every_page_the_limits_allow_fits_the_budget_of_a_1_gib_box(mode: str) -> None:
    one_gib = box.Box(2**30, 1.0, "test", "test")
    budget = box.default_memory_budget(one_gib, box.default_workers(one_gib))
    for rotated in (False, True):
        assert image_bytes(mode, 5000, 5000, rotated) <= budget


def test_image_bytes_grow_with_what_decoding_costs() -> None:
    side = 5000
    assert image_bytes("L", side, side) < image_bytes("RGB", side, side) < image_bytes("RGBA", side, side)
    assert image_bytes("L", side, side, rotated=True) > image_bytes("L", side, side)
    assert image_bytes("P", side, side) > image_bytes("L", side, side)  # converted before reducing
    assert image_bytes("L", 28, 28) < SMALL


# --------------------------------------------------------------------------- chunked runs


def test_run_in_chunks_equals_one_run() -> None:
    calls: list[int] = []

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2, "s": inputs["x"].sum(axis=1)}

    x = np.arange(130 * 3, dtype=np.float32).reshape(130, 3)
    out = run_in_chunks(run, {"x": x}, chunk_rows=64)
    assert calls == [64, 64, 2]
    np.testing.assert_array_equal(out["y"], x * 2)
    np.testing.assert_array_equal(out["s"], x.sum(axis=1))
    with pytest.raises(InvalidInput, match="at most 100 rows"):
        check_rows(SimpleNamespace(name="x", max_rows=100), {"x": x})


def test_row_limit_reads_max_batch_size() -> None:
    assert row_limit({"max_batch_size": "8"}) == 8
    assert row_limit({"max_batch_size": "0"}) is None
    assert row_limit({"max_batch_size": "lots"}) is None
    assert row_limit({}) is None


# --------------------------------------------------------------------------- over HTTP


def _v2_rows(count: int) -> dict:
    rng = np.random.default_rng(0)
    data = rng.random((count, 1, 28, 28), dtype=np.float32)
    return {"inputs": [{"name": "input", "shape": list(data.shape), "datatype": "FP32", "data": data.ravel().tolist()}]}


def test_a_large_v2_batch_answers_as_its_rows_one_by_one(client) -> None:
    body = _v2_rows(70)
    whole = client.post("/v2/models/digits/infer", json=body)
    assert whole.status_code == 200, whole.json
    rows = np.asarray(whole.json["outputs"][0]["data"]).reshape(70, -1)
    data = np.asarray(body["inputs"][0]["data"], dtype=np.float32).reshape(70, 1, 28, 28)
    for index in (0, 15, 16, 63, 64, 69):  # both sides of chunk boundaries
        one = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                           "data": data[index].ravel().tolist()}]}
        answer = client.post("/v2/models/digits/infer", json=one).json
        np.testing.assert_allclose(rows[index], answer["outputs"][0]["data"], rtol=1e-5, atol=1e-6)


def test_more_rows_than_max_batch_size_is_a_400(tmp_path: Path) -> None:
    path = write_classifier(tmp_path / "models" / "digits" / "1" / "model.onnx", labels=[str(i) for i in range(10)])
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "max_batch_size": "4"})
    onnx.save(model, str(path))
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(tmp_path / "models")}).test_client()
    assert client.post("/v2/models/digits/infer", json=_v2_rows(4)).status_code == 200
    answer = client.post("/v2/models/digits/infer", json=_v2_rows(5))
    assert answer.status_code == 400 and "at most 4 rows" in answer.json["error"]


def _page_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def test_request_pixels_over_the_budget_are_refused_before_decoding(random_repository: Path) -> None:
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(random_repository),
                         "MAX_REQUEST_PIXELS": 3000 * 3000}).test_client()
    page = _page_png(2000)
    files = {"image": [(io.BytesIO(page), f"p{i}.png") for i in range(3)]}
    answer = client.post("/predict", data=files, content_type="multipart/form-data")
    assert answer.status_code == 413, answer.json
    assert "image 3 of 3" in answer.json["error"] and "MAX_REQUEST_PIXELS" in answer.json["error"]


def test_a_request_past_its_cpu_time_is_refused_before_its_next_image(random_repository: Path) -> None:
    client = create_app({"TESTING": True, "MODEL_REPOSITORY": str(random_repository),
                         "REQUEST_CPU_SECONDS": 1e-6}).test_client()  # less than any image takes
    digit = Image.new("L", (600, 600), 255)
    digit.paste(0, (250, 150, 350, 450))  # a stroke: an image that is answered 200
    buffer = io.BytesIO()
    digit.save(buffer, format="PNG")
    page = buffer.getvalue()
    files = {"image": [(io.BytesIO(page), f"p{i}.png") for i in range(3)]}
    answer = client.post("/predict", data=files, content_type="multipart/form-data")
    assert answer.status_code == 413, answer.json
    assert "1 of the request's 3 images" in answer.json["error"] and "REQUEST_CPU_SECONDS" in answer.json["error"]
    # Checked between images: one image is answered whatever it took, and 0 is no limit.
    one = client.post("/predict", data={"image": (io.BytesIO(page), "p.png")}, content_type="multipart/form-data")
    assert one.status_code == 200, one.json
    unlimited = create_app({"TESTING": True, "MODEL_REPOSITORY": str(random_repository), "REQUEST_CPU_SECONDS": 0})
    files = {"image": [(io.BytesIO(page), f"p{i}.png") for i in range(3)]}
    assert unlimited.test_client().post("/predict", data=files, content_type="multipart/form-data").status_code == 200


def test_a_busy_worker_answers_503_with_retry_after(random_repository: Path) -> None:
    app = create_app({"TESTING": True, "MODEL_REPOSITORY": str(random_repository), "MEMORY_WAIT_SECONDS": 0.0})
    budget = app.extensions["memory_budget"]
    page = _page_png(3000)  # 9 MP: large work
    with budget.reserve(budget.capacity, "another request"):  # the worker's one large request
        busy = app.test_client().post("/predict", data=page, content_type="image/png")
        small = app.test_client().post("/predict", data=_page_png(28), content_type="image/png")
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1", busy.json
    assert "server busy" in busy.json["error"]
    assert small.status_code in (200, 422), small.json  # everyday requests go on
    assert app.test_client().post("/predict", data=page, content_type="image/png").status_code in (200, 422)


# --------------------------------------------------------------------------- the estimates, measured

BODY_KINDS = ("v2 JSON at the body limit", "v2 binary at the body limit", "JSON pixels at the body limit (400)")


def test_body_reservations_cover_what_a_live_worker_really_peaks_at() -> None:
    """The largest JSON and binary bodies, sent to a real worker: its peak RSS over idle stays within what
    server/limits/budget.py reserved for them (bench/memory.py measures every kind the same way)."""
    from harness.memory import measure
    from tests.conftest import COMMITTED_REPOSITORY

    results = measure(COMMITTED_REPOSITORY, kinds=BODY_KINDS)
    assert "worker_died" not in results and [row["kind"] for row in results["kinds"]] == list(BODY_KINDS)
    for row in results["kinds"]:
        over_idle = (row["peak_kib"] - results["idle_kib"]) * 1024
        assert row["runs"][0]["status"] in (200, 400), row
        assert over_idle <= row["reserved_bytes"], (row["kind"], over_idle // MIB, row["reserved_bytes"] // MIB)


# --------------------------------------------------------------------------- honest refusals (issue 28)


def _noise_png(side: int, mode: str = "L", noise_rows: int | None = None) -> bytes:
    """A PNG whose first `noise_rows` rows (all by default) are noise: a large body for its pixels."""
    rng = np.random.default_rng(side)
    bands = len(mode)
    data = np.zeros((side, side, bands) if bands > 1 else (side, side), dtype=np.uint8)
    data[:noise_rows or side] = rng.integers(0, 256, data[:noise_rows or side].shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(data, mode).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _form(*pages: bytes) -> dict:
    """Keyword arguments posting `pages` as a multipart form, encoded as requests and curl send it."""
    body, content_type = encode_multipart_formdata([("image", (f"p{i}.png", page, "image/png")) for i, page in enumerate(pages)])
    return {"data": body, "content_type": content_type}


def _busy_app(random_repository: Path, **config):
    """An app whose one large-request slot another request holds (the worker is busy)."""
    app = create_app({"TESTING": True, "MODEL_REPOSITORY": str(random_repository), "MEMORY_WAIT_SECONDS": 0.0,
                      **config})
    return app, app.extensions["memory_budget"]


@pytest.mark.parametrize("how", ["multipart", "raw", "json", "json-data-url-escaped"])
def test_a_request_over_the_pixel_limit_gets_413_even_while_the_worker_is_busy(random_repository: Path, how: str) -> None:
    app, budget = _busy_app(random_repository, MAX_REQUEST_PIXELS=1200 * 1200)
    page = _noise_png(1300)  # 1.7 MB of body: the body's reservation alone is large work
    assert budget.capacity > 10 * len(page) > SMALL
    client = app.test_client()
    with budget.reserve(SMALL, "another request"):  # holds the worker's one large-request slot
        if how == "raw":
            answer = client.post("/predict", data=page, content_type="image/png")
        elif how == "json":
            answer = client.post("/predict", json={"images": [base64.b64encode(page).decode()]})
        elif how == "json-data-url-escaped":  # as PHP's json_encode writes it: every / as \/
            url = "data:image/png;base64," + base64.b64encode(page).decode()
            answer = client.post("/predict", data=json.dumps({"image": url}).replace("/", "\\/"),
                                 content_type="application/json")
        else:
            answer = client.post("/predict", **_form(page))
    assert answer.status_code == 413 and "Retry-After" not in answer.headers, answer.json
    assert "MAX_REQUEST_PIXELS" in answer.json["error"]


def test_an_image_over_the_whole_memory_budget_gets_413_even_while_the_worker_is_busy(random_repository: Path) -> None:
    page = _noise_png(2000, "RGBA", noise_rows=400)  # 3.2 MB of body: ~32 MB to read, ~160 MB to preprocess
    cost = image_bytes("RGBA", 2000, 2000)
    app, budget = _busy_app(random_repository, MEMORY_BUDGET=(10 * len(page) + cost) // 2)
    assert 10 * len(page) < budget.capacity < cost
    with budget.reserve(SMALL, "another request"):
        answer = app.test_client().post("/predict", **_form(page))
    assert answer.status_code == 413 and "MEMORY_BUDGET" in answer.json["error"], answer.json


def test_too_many_images_get_413_even_while_the_worker_is_busy(random_repository: Path) -> None:
    app, budget = _busy_app(random_repository, MAX_IMAGES_PER_REQUEST=2)
    page = _noise_png(600)
    with budget.reserve(SMALL, "another request"):
        answer = app.test_client().post("/predict", **_form(page, page, page))
    assert answer.status_code == 413 and "MAX_IMAGES_PER_REQUEST" in answer.json["error"], answer.json


def test_a_request_that_fits_still_gets_503_while_the_worker_is_busy(random_repository: Path) -> None:
    app, budget = _busy_app(random_repository)
    page = _noise_png(1300)
    with budget.reserve(SMALL, "another request"):
        answer = app.test_client().post("/predict", **_form(page))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1", answer.json


# --------------------------------------------------------------------------- the budget's failure modes (issue 28)


def test_large_invalid_requests_leave_no_reservation_behind(random_repository: Path) -> None:
    """A request that fails inside its reservations gives them back: after many 400s on large bodies,
    a large valid request still gets 200, at once."""
    valid = json.dumps(_v2_rows(64)).encode()  # ~1 MB of JSON: ~20 MB reserved
    invalid = valid.replace(b'"FP32"', b'"FP64"')  # the wrong datatype: a 400 raised while the body is held
    page = _noise_png(1300)
    broken = page[: len(page) * 3 // 4]  # a PNG whose header reads but whose pixels do not: a 400 while decoding
    cost = 10 * len(page) + image_bytes("L", 1300, 1300)
    app, budget = _busy_app(random_repository, MEMORY_BUDGET=max(3 * cost, 64 * MIB))
    client = app.test_client()
    for _ in range(10):
        answer = client.post("/v2/models/digits/infer", data=invalid, content_type="application/json")
        assert answer.status_code == 400, answer.json
        answer = client.post("/predict", **_form(broken))
        assert answer.status_code == 400 and "could not decode" in answer.json["error"], answer.json
    assert (budget.used, budget.requests) == (0, 0)
    assert client.post("/v2/models/digits/infer", data=valid, content_type="application/json").status_code == 200
    assert client.post("/predict", **_form(page)).status_code in (200, 422)
    assert budget.peak >= cost - 10 * len(page)  # the large work was reserved (not skipped) each time


def test_a_compressed_v2_body_is_charged_at_what_it_may_inflate_to(random_repository: Path) -> None:
    app, budget = _busy_app(random_repository)
    body = gzip.compress(json.dumps(_v2_rows(8)).encode())
    assert tensor_body_bytes(len(body)) < SMALL  # at its wire size it would reserve nothing
    answer = app.test_client().post("/v2/models/digits/infer", data=body, content_type="application/json",
                                    headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 200, answer.json
    assert budget.peak >= tensor_body_bytes(app.config["MAX_CONTENT_LENGTH"])


@pytest.mark.parametrize("how", ["multipart", "json"])
def test_a_request_over_the_pixel_limit_decodes_no_pixel(random_repository: Path, monkeypatch, how: str) -> None:
    decoded: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def counted_load(image):  # Pillow's own decoding, counted: every format's pixels go through it
        decoded.append(image.size)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    app = create_app({"TESTING": True, "MODEL_REPOSITORY": str(random_repository), "MAX_REQUEST_PIXELS": 3000 * 3000})
    pages = [_page_png(2000) for _ in range(3)]
    if how == "json":
        answer = app.test_client().post("/predict", json={"images": [base64.b64encode(p).decode() for p in pages]})
    else:
        answer = app.test_client().post("/predict", **_form(*pages))
    assert answer.status_code == 413 and "image 3 of 3" in answer.json["error"], answer.json
    assert decoded == []
    app.test_client().post("/predict", **_form(_page_png(28)))
    assert set(decoded) == {(28, 28)}  # the count sees decoding when there is some
