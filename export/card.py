"""The model card `models/<name>/README.md`, rebuilt from every version's own ONNX metadata."""
from __future__ import annotations

import json
from pathlib import Path

import onnx

from server.runtime.layout import MODEL_FILE, find_versions
from training.data import sha256_file


def version_dirs(model_dir: Path) -> list[Path]:
    """Version folders holding a model file (the repository's layout rules), in version order."""
    found = find_versions(model_dir.parent, model_dir, warn=lambda message: None)
    return [path.parent for _, path in sorted(found, key=lambda item: int(item[0]))]


def read_metadata(path: Path) -> dict[str, str]:
    """metadata_props of an ONNX file, as a dict."""
    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def percent(value: str | float | None) -> str:
    """0.99634 → `99.63 %`; missing → `n/a`."""
    return "n/a" if value in (None, "", "None") else f"{100 * float(value):.2f} %"


def version_section(name: str, version: str, path: Path, meta: dict[str, str]) -> list[str]:
    """Markdown for one version: interface, provenance, recipe, checks, reproduction."""
    config = json.loads(meta.get("model_config", "{}"))
    args = json.loads(meta.get("training_args", "{}"))
    parity = json.loads(meta.get("parity", "{}"))
    recipe = ", ".join(f"{key}={args[key]}" for key in ("epochs", "batch_size", "lr", "weight_decay",
                       "label_smoothing", "rotation", "scale", "shift", "real_share", "ema_decay", "seed") if key in args)
    lines = [
        f"## Version {version}",
        "",
        f"- file: `{name}/{version}/{MODEL_FILE}`, sha256 `{sha256_file(path)}`",
        f"- test accuracy (onnxruntime, official 10,000 MNIST test images): **{percent(meta.get('test_accuracy'))}**"
        f" (PyTorch checkpoint: {percent(meta.get('torch_test_accuracy'))})",
        f"- architecture: {meta.get('architecture', 'n/a')}; stages {config.get('stages')}, dropout "
        f"{config.get('dropout')}; **{meta.get('parameters', 'n/a')} parameters**"
        f"{', ' + format(int(meta['multiply_adds']), ',') + ' multiply-adds an image' if meta.get('multiply_adds') else ''}"
        f"; input normalised inside the graph (mean {config.get('mean')}, std {config.get('std')})",
        f"- training: {recipe}; {meta.get('epochs_trained', '?')} epochs on {meta.get('train_images', '?')} images, "
        f"{float(meta.get('training_seconds') or 'nan'):.0f} s on {meta.get('training_device', '?')} "
        f"(--threads {args.get('threads', '?')}, "
        f"{meta.get('training_precision', '?')} autocast, torch {meta.get('torch_version', '?')})",
        f"- data: MNIST via `python -m training.data`, dataset sha256 `{meta.get('training_data_sha256')}`"
        f" (per file: {meta.get('training_data_files', 'n/a')})",
        f"- checkpoint sha256 `{meta.get('checkpoint_sha256')}`",
        f"- parity{' (of the fp32 model this was quantized from)' if meta.get('quantization') else ''}, onnxruntime {meta.get('onnxruntime_version', '?')} vs PyTorch: {parity.get('images')} test "
        f"images at batch sizes {parity.get('batch_sizes')}: {parity.get('class_mismatches')} different classes,"
        f" max abs difference of probabilities {parity.get('max_abs_diff', float('nan')):.2e}",
        f"- ONNX opset {meta.get('opset')}, exported {meta.get('exported_at')}",
    ]
    if meta.get("temperature"):
        lines.append(f"- calibration: softmax temperature {meta['temperature']} (fitted on held-out training images, "
                     f"folded into the last layer); expected calibration error on the test set (15 bins) "
                     f"**{percent(meta.get('test_ece'))}**")
    if meta.get("weights"):
        lines.append(f"- weights: {meta['weights']}")
    if meta.get("quantization"):
        lines.append(f"- quantized: {meta['quantization']}")
    if meta.get("int8_measurement"):
        lines.append(f"- int8 (QDQ) variant, measured: {meta['int8_measurement']}")
    lines += ["", "Reproduce:", "", "```sh", meta.get("reproduce", ""), "```", ""]
    return lines


def write_model_card(model_dir: Path) -> Path:
    """Rewrite `<model_dir>/README.md` from the versions present."""
    name = model_dir.name
    versions = version_dirs(model_dir)
    lines = [
        f"# Model card: `{name}`",
        "",
        "A small CNN recognising handwritten digits, trained on MNIST with `training/` and exported",
        "by `python -m export`. Generated from each version's ONNX metadata; do not edit by hand.",
        "",
        "- input `input`: float32 `[N, 1, 28, 28]`, pixels in [0, 1], white digit on black (as MNIST)",
        "- output `probabilities`: float32 `[N, 10]`, softmax inside the graph (of logits divided by the",
        "  version's calibration temperature, where it lists one); class i is digit i",
        "- metadata_props: `labels`, `preprocessing` (`mnist-digit`), `output_kind` (`probabilities`),",
        "  and the provenance below (hashes, accuracy, recipe)",
        "- limits: trained on centred 28×28 MNIST digits; other images need the server's `mnist-digit`",
        "  preprocessing (crop, scale to 20×20, centre of mass), and anything that is not a single digit",
        "  still gets one of the ten labels",
        "",
        "| version | test accuracy | sha256 |",
        "| --- | --- | --- |",
    ]
    metas = {path.name: read_metadata(path / MODEL_FILE) for path in versions}
    for path in versions:
        lines.append(f"| {path.name} | {percent(metas[path.name].get('test_accuracy'))} | "
                     f"`{sha256_file(path / MODEL_FILE)}` |")
    lines.append("")
    for path in versions:
        lines += version_section(name, path.name, path / MODEL_FILE, metas[path.name])
    card = model_dir / "README.md"
    card.write_text("\n".join(lines))
    return card
