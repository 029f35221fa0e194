"""Accuracy of the mnist-digit preprocessing on generated photos, scans and canvases; its cost.

Runs every input through decode_image + mnist_digit and through the plain MNIST-style method
(crop to all the ink), classifies both with the ONNX model, and writes the results into
docs/preprocessing.md (between its photo_eval markers) with a picture grid.
"""
from __future__ import annotations

import argparse
import io
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

from training.photo_pages import CLEAN_KINDS, KINDS, PHOTO_KINDS, TRAINING_SEEDS, Sample, encode, make_sample
from server.image.decoding import decode_image
from server.image.digit import fit_to_mnist_box, histogram_margin, is_mnist_like, mnist_digit, to_grayscale
from server.errors import ServingError
from server.runtime.layout import latest_model_file, model_path

log = logging.getLogger(__name__)

MAX_PIXELS = 25_000_000
BEGIN, END = "<!-- photo_eval:begin -->", "<!-- photo_eval:end -->"


def plain_mnist_digit(image: Image.Image) -> np.ndarray:
    """The plain MNIST-style method: global polarity, drop faint pixels, crop to all the ink."""
    gray = to_grayscale(image)
    ink = 1 - gray if histogram_margin(gray) > 0 else gray
    if is_mnist_like(ink):
        return ink
    return fit_to_mnist_box(np.where(ink > 0.2, ink, 0).astype(np.float32))


METHODS = {"robust": mnist_digit, "plain": plain_mnist_digit}


@dataclass
class KindResult:
    """Per kind of input: the samples, what each method gave the model, and its answers."""

    kind: str
    samples: list[Sample] = field(default_factory=list)
    inputs: dict[str, list[np.ndarray | None]] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)

    def accuracy(self, method: str) -> float:
        labels = np.array([s.label for s in self.samples])
        return float((self.predictions[method] == labels).mean())


def preprocess(sample: Sample, method: str) -> np.ndarray | None:
    """The 28x28 array a method makes of a sample, or None when it raises a client error."""
    try:
        return METHODS[method](decode_image(sample.data, MAX_PIXELS))
    except ServingError:
        return None


def classify(session: ort.InferenceSession, arrays: list[np.ndarray | None]) -> np.ndarray:
    """Predicted digit per array; -1 where preprocessing gave nothing."""
    out = np.full(len(arrays), -1)
    present = [i for i, a in enumerate(arrays) if a is not None]
    if present:
        batch = np.stack([arrays[i] for i in present])[:, None].astype(np.float32)
        name = session.get_inputs()[0].name
        out[present] = session.run(None, {name: batch})[0].argmax(axis=1)
    return out


def evaluate(session, images, labels, kinds, per_kind: int, seed: int,
             methods: tuple[str, ...] = tuple(METHODS), classify_inputs: bool = True) -> list[KindResult]:
    """Generate `per_kind` inputs of each kind (the same test digits for every kind) and score them."""
    picks = np.random.default_rng(seed).choice(len(images), size=per_kind, replace=False)
    results = []
    for kind in kinds:
        started = time.perf_counter()
        result = KindResult(kind)
        result.samples = [make_sample(kind, images[i], int(labels[i]), seed, n) for n, i in enumerate(picks)]
        for method in methods:
            result.inputs[method] = [preprocess(s, method) for s in result.samples]
            if classify_inputs:
                result.predictions[method] = classify(session, result.inputs[method])
        scores = "  ".join(f"{m} {100 * result.accuracy(m):.2f}%" for m in methods) if classify_inputs else "rendered"
        log.info("%-10s %s  (%.0f s)", kind, scores, time.perf_counter() - started)
        results.append(result)
    return results


def robust_inputs_cached(images, labels, kinds, per_kind: int, seed: int, cache_dir: Path) -> list[KindResult]:
    """evaluate()'s robust inputs and labels without the answers, rendered once and kept in
    `cache_dir` (named by a hash of the settings and of the renderer's and the preprocessing's source),
    so that comparing models again costs seconds instead of the renders' minutes."""
    import hashlib

    from server.image import decoding, digit
    from training import photo_pages
    from training.real_share import placeless_source

    code = "\n".join(placeless_source(module) for module in (photo_pages, decoding, digit))
    key = hashlib.sha256(repr((sorted(kinds), per_kind, seed, images.tobytes()[:4096], len(images), code)).encode())
    path = cache_dir / f"photo-eval-{per_kind}-seed{seed}-{key.hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path) as saved:
            rendered = {kind: (saved[f"{kind}/inputs"], saved[f"{kind}/present"], saved[f"{kind}/labels"])
                        for kind in kinds}
    else:
        rendered = {}
        for result in evaluate(None, images, labels, kinds, per_kind, seed, ("robust",), classify_inputs=False):
            present = np.array([a is not None for a in result.inputs["robust"]])
            stacked = np.stack([a if a is not None else np.zeros((28, 28), np.float32) for a in result.inputs["robust"]])
            rendered[result.kind] = (stacked, present, np.array([s.label for s in result.samples]))
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{f"{kind}/{part}": array for kind, arrays in rendered.items()
                                     for part, array in zip(("inputs", "present", "labels"), arrays)})
        log.info("cached the rendered inputs in %s", path)
    results = []
    for kind in kinds:
        inputs, present, kind_labels = rendered[kind]
        result = KindResult(kind, [Sample(kind, int(label), b"", "cached") for label in kind_labels])
        result.inputs["robust"] = [a if ok else None for a, ok in zip(inputs, present)]
        results.append(result)
    return results


def pooled(results: list[KindResult], kinds: tuple[str, ...], method: str) -> tuple[float, int]:
    chosen = [r for r in results if r.kind in kinds]
    right = sum(r.accuracy(method) * len(r.samples) for r in chosen)
    count = sum(len(r.samples) for r in chosen)
    return right / max(count, 1), count


def compare_models(results: list[KindResult], paths: list[Path], sessions: list) -> str:
    """A table of each model's accuracy on the same robust inputs, per kind and pooled."""
    lines = ["| model | " + " | ".join(r.kind for r in results) + " | all photo-like | all clean scans + canvases |",
             "|---|" + "---:|" * (len(results) + 2)]
    for path, session in zip(paths, sessions):
        answers = f"robust, {path}"  # this model's answers beside the methods', scored the same way
        for r in results:
            r.predictions[answers] = classify(session, r.inputs["robust"])
        cells = [f"{100 * r.accuracy(answers):.2f} %" for r in results]
        for kinds in (PHOTO_KINDS, CLEAN_KINDS):
            accuracy, count = pooled(results, kinds, answers)
            cells.append(f"**{100 * accuracy:.2f} %** ({count})" if count else "")
        lines.append(f"| `{path}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mcnemar_p(lost: int, gained: int) -> float:
    """McNemar's exact two-sided p-value: the chance of a split of the `lost + gained` images two models
    disagree on at least this uneven, were each of them as likely to be the one that is right."""
    disagreements = lost + gained
    tail = sum(math.comb(disagreements, k) for k in range(min(lost, gained) + 1)) / 2 ** disagreements
    return min(1.0, 2 * tail)


def paired_table(results: list[KindResult], paths: list[Path]) -> str:
    """Each model of compare_models' table against the first on the very same inputs: per kind, the
    inputs it gets wrong that the first gets right (lost), the reverse (gained), and mcnemar_p. A gap
    of a few inputs a kind is often a coin's toss; this says which are not."""
    first = f"robust, {paths[0]}"
    groups = [(r.kind, [r]) for r in results]
    groups += [(title, [r for r in results if r.kind in kinds])
               for title, kinds in (("all photo-like", PHOTO_KINDS), ("all clean scans + canvases", CLEAN_KINDS))]
    groups = [(title, chosen) for title, chosen in groups if chosen]
    lines = [f"Paired against `{paths[0]}` on the same inputs: lost / gained inputs (McNemar's exact p)", "",
             "| model | " + " | ".join(title for title, _ in groups) + " |",
             "|---|" + "---:|" * len(groups)]
    for path in paths[1:]:
        cells = []
        for _, chosen in groups:
            lost = gained = 0
            for r in chosen:
                labels = np.array([s.label for s in r.samples])
                right_first, right = r.predictions[first] == labels, r.predictions[f"robust, {path}"] == labels
                lost += int(np.sum(right_first & ~right))
                gained += int(np.sum(~right_first & right))
            cells.append(f"−{lost} / +{gained} ({mcnemar_p(lost, gained):.2f})")
        lines.append(f"| `{path}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_call(function, repeats: int) -> float:
    """Median wall time of `function()` in milliseconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def cost_inputs(images: np.ndarray, seed: int) -> dict[str, bytes]:
    """The three inputs whose preprocessing cost is reported."""
    photo = Image.open(io.BytesIO(make_sample("ruled", images[0], 0, seed, 0).data))
    big = photo.resize((4000, 3000) if photo.width > photo.height else (3000, 4000), Image.Resampling.BICUBIC)
    return {
        "28x28 PNG (MNIST's own)": make_sample("mnist", images[0], 0, seed, 0).data,
        "280x280 canvas PNG": make_sample("canvas", images[0], 0, seed, 0).data,
        "4000x3000 JPEG photo (q85)": encode(big, "JPEG", quality=85),
    }


def measure_costs(images: np.ndarray, seed: int) -> list[tuple[str, int, float, float]]:
    """(input, bytes, decode ms, decode + preprocess ms) for each cost input, single thread."""
    rows = []
    for name, data in cost_inputs(images, seed).items():
        repeats = 10 if len(data) > 100_000 else 50
        decode_ms = time_call(lambda: decode_image(data, MAX_PIXELS), repeats)
        total_ms = time_call(lambda: mnist_digit(decode_image(data, MAX_PIXELS)), repeats)
        rows.append((name, len(data), decode_ms, total_ms))
    return rows


def thumbnail(data: bytes, side: int) -> Image.Image:
    """The input as a person sees it (transparency over light grey), fitted in side x side."""
    image = Image.open(io.BytesIO(data))
    image.seek(0)
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        backdrop = Image.new("RGBA", image.size, (200, 200, 200, 255))
        image = Image.alpha_composite(backdrop, image)
    image = image.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (side, side), (255, 255, 255))
    tile.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return tile


def picture_grid(results: list[KindResult], per_row: int = 5, side: int = 112) -> Image.Image:
    """Per kind: failures first, then correct answers; each input beside the 28x28 the model saw."""
    cell_w, cell_h, label_w = 2 * side + 12, side + 18, 84
    grid = Image.new("RGB", (label_w + per_row * cell_w, len(results) * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for row, result in enumerate(results):
        labels = [s.label for s in result.samples]
        predicted = result.predictions["robust"]
        wrong = [i for i, p in enumerate(predicted) if p != labels[i]]
        right = [i for i, p in enumerate(predicted) if p == labels[i]]
        shown = wrong[:2] + right[: per_row - len(wrong[:2])]
        y = row * cell_h
        draw.text((6, y + side // 2), result.kind, fill=(0, 0, 0))
        for col, i in enumerate(shown):
            x = label_w + col * cell_w
            grid.paste(thumbnail(result.samples[i].data, side), (x, y))
            seen = result.inputs["robust"][i]
            if seen is not None:
                view = Image.fromarray(np.round(seen * 255).astype(np.uint8)).resize((side, side), Image.Resampling.NEAREST)
                grid.paste(view.convert("RGB"), (x + side + 4, y))
            ok = predicted[i] == labels[i]
            text = f"{labels[i]} -> {predicted[i] if predicted[i] >= 0 else 'error'}"
            draw.text((x + 2, y + side + 3), text + ("" if ok else "  WRONG"), fill=(0, 110, 0) if ok else (200, 0, 0))
    return grid


def results_markdown(results, costs, args, model_path: Path, grid_name: str) -> str:
    """The generated part of docs/preprocessing.md."""
    lines = [
        f"Generated by `python -m bench.photo_eval --per-kind {args.per_kind} --seed {args.seed}` with "
        f"`{model_path}`: {args.per_kind} inputs per kind, the same MNIST test digits in every kind. "
        "*robust* is `server.image.digit.mnist_digit`; *plain* is the MNIST-style method that crops "
        "to all the ink (global polarity, pixels under 20 % dropped). An input the method rejects "
        "(422 no digit found) counts as wrong.",
        "",
        "| kind of input | inputs | robust | plain | robust rejected |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        rejected = sum(a is None for a in r.inputs["robust"])
        lines.append(f"| {r.kind} | {len(r.samples)} | {100 * r.accuracy('robust'):.2f} % | "
                     f"{100 * r.accuracy('plain'):.2f} % | {rejected} |")
    for title, kinds in (("all photo-like", PHOTO_KINDS), ("all clean scans + canvases", CLEAN_KINDS)):
        (robust, count), (plain, _) = pooled(results, kinds, "robust"), pooled(results, kinds, "plain")
        if count:
            lines.append(f"| **{title}** | {count} | **{100 * robust:.2f} %** | {100 * plain:.2f} % | |")
    lines += [
        "",
        "Preprocessing cost per image (median, one thread, this machine; decode includes the "
        "reduced-scale JPEG decode):",
        "",
        "| input | bytes | decode | decode + mnist_digit |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {size} | {decode:.2f} ms | {total:.2f} ms |" for name, size, decode, total in costs]
    lines += [
        "",
        f"![inputs and the 28x28 images the model saw]({grid_name})",
        "",
        "Each row: failures of the robust method first (marked WRONG), then correct answers; each "
        "input beside the 28x28 image the model received. `label -> prediction`.",
    ]
    return "\n".join(lines)


def write_doc(doc: Path, generated: str) -> None:
    """Replace the text between the photo_eval markers of `doc` (appending them if absent)."""
    text = doc.read_text() if doc.exists() else f"# Preprocessing\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(f"{head}{BEGIN}\n{generated}\n{END}{tail}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    served = latest_model_file(Path("models"), "mnist") or model_path("models", "mnist", 1)
    parser.add_argument("--model", type=Path, default=served,
                        help="ONNX digit model (default: the served one, mnist's highest version)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="MNIST folder (training.data layout)")
    parser.add_argument("--per-kind", type=int, default=1000, help="inputs generated per kind")
    parser.add_argument("--seed", type=int, default=0,
                        help=f"seed of the generated set (0..{TRAINING_SEEDS - 1}: training renders from {TRAINING_SEEDS} up)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="kinds to evaluate")
    parser.add_argument("--doc", type=Path, default=Path("docs/preprocessing.md"), help="document to update")
    parser.add_argument("--no-doc", action="store_true", help="print the results only")
    parser.add_argument("--compare", type=Path, nargs="+", default=[], metavar="ONNX",
                        help="other digit models to score on the same robust inputs, side by side, and paired against --model input by input (printed only)")
    parser.add_argument("--cache", action="store_true",
                        help="with --compare: keep the rendered inputs under --data-dir and reuse them next time")
    args = parser.parse_args(argv)
    if args.per_kind < 1 or args.per_kind > 10000:
        parser.error(f"--per-kind must be 1..10000, got {args.per_kind}")
    if not 0 <= args.seed < TRAINING_SEEDS:
        parser.error(f"--seed must be 0..{TRAINING_SEEDS - 1} (training's real-looking share renders from "
                     f"{TRAINING_SEEDS} up), got {args.seed}")
    for path in (args.model, *args.compare):
        if not path.is_file():
            parser.error(f"no model file at {path}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    from training.data import DataError, ensure_mnist, load_mnist

    try:
        ensure_mnist(args.data_dir)
        test = load_mnist(args.data_dir).test
    except DataError as err:
        print(f"photo_eval: {err}", file=sys.stderr)
        return 1
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    methods = ("robust",) if args.compare else tuple(METHODS)
    if args.compare and args.cache:
        results = robust_inputs_cached(test.images, test.labels, args.kinds, args.per_kind, args.seed,
                                       args.data_dir / "photo-eval")
    else:
        results = evaluate(session, test.images, test.labels, args.kinds, args.per_kind, args.seed, methods)
    if args.compare:
        paths = [args.model, *args.compare]
        sessions = [session] + [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                                for p in args.compare]
        print(compare_models(results, paths, sessions))
        if len(paths) > 1:
            print("\n" + paired_table(results, paths))
        return 0
    costs = measure_costs(test.images, args.seed)
    grid_path = args.doc.with_name("preprocessing-grid.png")
    generated = results_markdown(results, costs, args, args.model, grid_path.name)
    print(generated)
    if not args.no_doc:
        picture_grid(results).save(grid_path, optimize=True)
        write_doc(args.doc, generated)
        log.info("wrote %s and %s", args.doc, grid_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
