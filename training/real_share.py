"""The real-looking share of training: MNIST *training* digits rendered as photographed pages, scans
and canvases (training/photo_pages.py, the renderers of `make bench-photos`, with seeds disjoint from
its inputs) and passed through the server's own image preprocessing, so the net learns the 28x28
images the server really feeds it.

Rendering a photo through Pillow and preprocessing it costs about 0.1 s of a core, so the pool is
rendered once, in worker processes, and cached under the data folder in a file named by a hash of
everything that makes it (its size and seed, the kinds, the MNIST files and the renderer's and the
preprocessing's source). `python -m training.real_share --pool N` renders one ahead of training.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import multiprocessing
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.image import decoding, digit, presets
from server.errors import ServingError
from training import photo_pages
from training.atomic import atomic_path
from training.data import DEFAULT_DATA_DIR, DataError, Mnist, dataset_sha256, ensure_mnist, load_mnist
from training.photo_pages import CLEAN_KINDS, PHOTO_KINDS, TRAINING_SEEDS, make_sample

log = logging.getLogger(__name__)

POOL_KINDS = PHOTO_KINDS + CLEAN_KINDS
# Canvas pens grown or shrunk by up to this many pixels a side: MNIST's strokes, scaled to a
# 280-pixel canvas, are about 20 pixels wide; people draw with 8- to 40-pixel brushes.
STROKE_PIXELS = (-6, 10)
MAX_PIXELS = 25_000_000
DIGIT_INPUT = presets.ImageInput(channels=1, height=28, width=28)
POOL_FORMAT = 1  # bump when the pool's layout or meaning changes


@dataclass(frozen=True)
class RealPool:
    """Rendered training inputs as the server preprocesses them, with where each came from."""

    images: np.ndarray  # uint8 [N, 28, 28]: the server's float input x 255, rounded
    labels: np.ndarray  # int64 [N]
    sources: np.ndarray  # int64 [N]: the MNIST training image each one shows
    kinds: np.ndarray  # int64 [N]: index into POOL_KINDS

    def __len__(self) -> int:
        return len(self.labels)

    def without(self, held_out: np.ndarray) -> RealPool:
        """The pool less the inputs drawn from held-out training images (calibration, validation)."""
        keep = ~np.isin(self.sources, held_out)
        return RealPool(self.images[keep], self.labels[keep], self.sources[keep], self.kinds[keep])


def server_input(data: bytes) -> np.ndarray | None:
    """The float32 28x28 image the server's mnist-digit preset makes of encoded image bytes (the
    path of server/image/classifier.py: decode, then the preset), or None where the server answers 422."""
    try:
        image = decoding.decode_image(data, MAX_PIXELS, presets.PRESETS["mnist-digit"].draft_side(DIGIT_INPUT))
        return presets.PRESETS["mnist-digit"].prepare(image, DIGIT_INPUT)[0]
    except ServingError:
        return None


def plan(count: int, seed: int, train_images: int) -> list[tuple[int, int, int, int]]:
    """(kind, source image, render index, canvas stroke) for each of `count` inputs: the kinds in
    turn, digits drawn without replacement from the training set by `seed`."""
    rng = np.random.default_rng([TRAINING_SEEDS, seed])
    sources = rng.choice(train_images, size=count, replace=count > train_images)
    strokes = rng.integers(STROKE_PIXELS[0], STROKE_PIXELS[1] + 1, size=count)
    return [(n % len(POOL_KINDS), int(sources[n]), n, int(strokes[n])) for n in range(count)]


def _render(job: tuple[int, int, int, int, np.ndarray, int, int]) -> np.ndarray | None:
    kind, _, index, stroke, image, label, seed = job
    name = POOL_KINDS[kind]
    sample = make_sample(name, image, label, TRAINING_SEEDS + seed, index, stroke if name == "canvas" else 0)
    seen = server_input(sample.data)
    return None if seen is None else np.round(seen * 255).astype(np.uint8)


def render(mnist: Mnist, count: int, seed: int, workers: int = 1) -> RealPool:
    """Render `count` inputs (every kind of POOL_KINDS in turn) from MNIST training digits; inputs
    the server would refuse (no digit found) are left out."""
    train = mnist.train
    jobs = [(kind, source, index, stroke, train.images[source], int(train.labels[source]), seed)
            for kind, source, index, stroke in plan(count, seed, len(train.labels))]
    started = time.perf_counter()
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            seen = pool.map(_render, jobs, chunksize=64)
    else:
        seen = [_render(job) for job in jobs]
    kept = [n for n, image in enumerate(seen) if image is not None]
    log.info("rendered %d real-looking inputs (%d refused by the preprocessing) in %.0f s on %d processes",
             len(kept), count - len(kept), time.perf_counter() - started, workers)
    pick = lambda column: np.array([jobs[n][column] for n in kept], dtype=np.int64)
    images = np.stack([seen[n] for n in kept]) if kept else np.zeros((0, 28, 28), np.uint8)
    return RealPool(images, pick(5), pick(1), pick(0))


def placeless_source(module) -> str:
    """A module's source as the render caches' keys read it: without where the module sits (relative
    imports one dot deep, `server/<package>/x.py` as `server/x.py`), so moving a module keeps them."""
    source = re.sub(r"^(\s*from )\.+", r"\1.", inspect.getsource(module), flags=re.M)
    return re.sub(r"\bserver/\w+/(\w+\.py)\b", r"server/\1", source)


def cache_key(mnist: Mnist, count: int, seed: int) -> str:
    """A hash of everything the pool depends on: settings, data, and the code that renders and preprocesses."""
    code = [placeless_source(module) for module in (photo_pages, decoding, digit, presets)]
    settings = {"format": POOL_FORMAT, "count": count, "seed": seed, "kinds": POOL_KINDS, "strokes": STROKE_PIXELS,
                "data": dataset_sha256(mnist), "code": hashlib.sha256("\n".join(code).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def load_pool(mnist: Mnist, count: int, seed: int, data_dir: Path, workers: int = 1) -> RealPool:
    """The pool from its cache file under `data_dir`, rendered (and cached) first if need be."""
    path = Path(data_dir) / "real-looking" / f"pool-{count}-seed{seed}-{cache_key(mnist, count, seed)}.npz"
    if path.exists():
        with np.load(path) as saved:
            return RealPool(saved["images"], saved["labels"], saved["sources"], saved["kinds"])
    log.info("rendering %d real-looking training inputs into %s (about %.0f s of CPU, once)", count, path,
             count * 0.07)
    pool = render(mnist, count, seed, workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, images=pool.images, labels=pool.labels, sources=pool.sources, kinds=pool.kinds)
    return pool


def main(argv: list[str] | None = None) -> int:
    """`python -m training.real_share`: render (and cache) a pool ahead of training."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pool", type=int, default=4000, help="inputs to render")
    parser.add_argument("--seed", type=int, default=0, help="the pool's seed (training's seed space)")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST root; the cache goes under it")
    args = parser.parse_args(argv)
    if args.pool < 1 or args.workers < 1 or args.seed < 0:
        parser.error("--pool and --workers must be at least 1, --seed at least 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        ensure_mnist(args.data_dir)
        pool = load_pool(load_mnist(args.data_dir), args.pool, args.seed, args.data_dir, args.workers)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{kind} {int((pool.kinds == n).sum())}" for n, kind in enumerate(POOL_KINDS))
    print(f"{len(pool)} inputs: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
