"""The training recipe as one dataclass: `python -m training.train` parses it, export/ reads it back.

Every option of the training command is a field here with its default and help text, so the
command line, the checkpoint's `args`, the recipe keys the export records and the `reproduce`
command line it writes all come from one place.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from training.data import DEFAULT_DATA_DIR
from training.model import ModelConfig

# `--fast`: a short preset; these values replace the defaults (options given explicitly still win).
# No real-looking share (rendering its pool the first time costs minutes of CPU) and no moving
# average (over two epochs it is mostly the untrained net: 11 % on the test set).
FAST_PRESET: dict[str, Any] = {"epochs": 2, "batch_size": 256, "lr": 0.2, "stages": ((16, 16), (32, 32), (64, 64)),
                               "real_share": 0.0, "ema_decay": 0.0}


def default_threads() -> int:
    """The CPUs this process may use: on a quiet 2-core machine 2 threads trained 1.8x faster than
    1. When other jobs keep every core busy, OpenMP threads wait on each other at each barrier and
    `--threads 1` is faster (3-10x, docs/results/training-2026-11-27-version-1.md)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_stages(text: str) -> tuple[tuple[int, ...], ...]:
    """`32,32:64,64` → ((32, 32), (64, 64)); argparse turns a ValueError into a usage error."""
    stages = tuple(tuple(int(width) for width in stage.split(",")) for stage in text.split(":"))
    if not stages or any(width < 1 for stage in stages for width in stage):
        raise ValueError(text)
    return stages


def format_stages(stages: tuple[tuple[int, ...], ...] | list) -> str:
    """Inverse of parse_stages: ((32, 32), (64, 64)) → `32,32:64,64`."""
    return ":".join(",".join(str(width) for width in stage) for stage in stages)


def parse_teacher(text: str) -> Path | None:
    """`none` (or an empty string) turns distillation off; anything else is the teacher's ONNX file."""
    return None if text.lower() in ("", "none") else Path(text)


def option(default: Any, help: str, *, recipe: bool = True, command: bool = True, **argparse_kwargs: Any) -> Any:
    """A TrainConfig field: `recipe` fields are recorded in the export's metadata, `command` fields
    appear in the `reproduce` command line when they differ from the default."""
    return field(default=default, metadata={"help": help, "recipe": recipe, "command": command,
                                            "argparse": argparse_kwargs})


@dataclass(frozen=True)
class TrainConfig:
    """Everything `python -m training.train` takes; a checkpoint's `args` is `to_dict()` of one."""

    epochs: int = option(30, "passes over the training images")
    batch_size: int = option(128, "images per optimiser step")
    lr: float = option(0.1, "peak learning rate of the one-cycle schedule")
    weight_decay: float = option(5e-4, "SGD weight decay")
    label_smoothing: float = option(0.1, "cross-entropy label smoothing (0.1 caps raw answers near 0.9; the "
                                         "temperature fitted on --calibration-images makes them honest again, "
                                         "docs/training.md)")
    rotation: float = option(10.0, "max random rotation, degrees")
    scale: float = option(0.1, "max random relative zoom (±)")
    shift: float = option(2.0, "max random shift, pixels (±)")
    elastic: float = option(0.0, "strength (alpha, pixels) of the random elastic distortion; 0 = off")
    elastic_sigma: float = option(4.0, "smoothness (Gaussian sigma, pixels) of the elastic distortion")
    no_augment: bool = option(False, "train on the images as they are")
    stages: tuple[tuple[int, ...], ...] = option(
        ModelConfig.stages, "conv widths, stages split by ':' (2x2 max-pool between stages), e.g. 32,32:64,64",
        recipe=False, type=parse_stages, metavar="WIDTHS")
    stem_stride: int = option(ModelConfig.stem_stride, "stride of the first convolution (2 shrinks every later "
                              "feature map 4x)", recipe=False, choices=(1, 2))
    separable: bool = option(False, "depthwise-separable convolutions after the first (MobileNet-style)",
                             recipe=False)
    dropout: float = option(ModelConfig.dropout, "dropout before the classifier", recipe=False)
    teacher: Path | None = option(None, "ONNX model (probabilities output) to distil from, run by "
                                  "onnxruntime once over the un-augmented training images; 'none' trains on the "
                                  "labels alone (the default: distilling from version 1 did not help, docs/results/training-2026-11-30-lean-candidate.md)",
                                  type=parse_teacher, metavar="ONNX")
    distill_weight: float = option(0.5, "share of the distillation loss (the rest is cross-entropy on labels)")
    distill_temperature: float = option(4.0, "temperature softening teacher and student for distillation")
    real_share: float = option(0.25, "share of every batch drawn from the real-looking pool: MNIST training digits "
                               "rendered as photos, scans and canvases and passed through the server's preprocessing "
                               "(training/real_share.py); each epoch keeps its number of steps")
    real_pool: int = option(4000, "real-looking inputs to render (once, cached under --data-dir; ~0.1 s of CPU each)")
    real_seed: int = option(0, "seed of the real-looking pool (training's seed space, disjoint from make bench-photos')")
    render_workers: int = option(default_threads(), "processes rendering the real-looking pool", recipe=False,
                                 command=False)
    ema_decay: float = option(0.999, "decay per step of the exponential moving average of the weights, evaluated "
                              "beside them every epoch (0 = off)")
    calibration_images: int = option(2000, "training images held out to fit the softmax temperature folded into "
                                     "the export (0: temperature 1; label smoothing makes raw answers far too soft, "
                                     "docs/training.md)")
    seed: int = option(0, "seed for weights, order and augmentation")
    device: str = option("auto", "auto = cuda when available", recipe=False, choices=("auto", "cpu", "cuda"))
    precision: str = option("auto", "training matmul precision; auto = bf16 autocast where the hardware has it "
                            "(evaluation always runs in fp32)", choices=("auto", "fp32", "bf16"))
    threads: int = option(default_threads(), "CPU threads for torch; by default the usable CPUs (1 is faster "
                          "when other jobs load every core)")
    compile: bool = option(False, "torch.compile the model (helps on GPU)", recipe=False)
    data_dir: Path = option(DEFAULT_DATA_DIR, "MNIST root", recipe=False, command=False, type=Path)
    out: Path | None = option(None, "run directory (default runs/<UTC time>)", recipe=False, command=False,
                              type=Path)
    validation: int = option(0, "hold out this many training images and evaluate on them instead of the test "
                             "set (for choosing hyper-parameters; 0 = evaluate on the test set)")
    limit: int = option(0, "train on only N images and evaluate on N (quick checks; 0 = all)")
    dry_run: bool = option(False, "one training batch, evaluated on one batch of images, then stop", recipe=False)
    fast: bool = option(False, "short preset: " + ", ".join(
        f"{k}={format_stages(v) if k == 'stages' else v}" for k, v in FAST_PRESET.items()))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (paths as strings, stages as lists) for checkpoints and metadata."""
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}


def plain(value: Any) -> Any:
    """A JSON-able form of an option's value."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [plain(item) for item in value]
    return value


RECIPE_KEYS = tuple(f.name for f in fields(TrainConfig) if f.metadata["recipe"])


def build_parser(prog: str = "python -m training.train", description: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser, one option per TrainConfig field, every default shown in --help."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for item in fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        kwargs = dict(item.metadata["argparse"])
        if isinstance(item.default, bool):
            parser.add_argument(flag, action="store_true", help=item.metadata["help"])
            continue
        kwargs.setdefault("type", type(item.default) if item.default is not None else str)
        parser.add_argument(flag, default=item.default, help=item.metadata["help"], **kwargs)
    return parser


def parse_config(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    """TrainConfig from command-line arguments; a bad value is a usage error (exit status 2)."""
    parser = build_parser(description=description)
    namespace = parser.parse_args(argv)
    if namespace.fast:
        parser.set_defaults(**FAST_PRESET)
        namespace = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "threads", "real_pool", "render_workers"):
        if getattr(namespace, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(namespace, name)}")
    if namespace.validation < 0 or namespace.limit < 0 or namespace.calibration_images < 0:
        parser.error("--validation, --limit and --calibration-images must be >= 0")
    if not 0 <= namespace.distill_weight <= 1 or namespace.distill_temperature <= 0:
        parser.error("--distill-weight must be in [0, 1] and --distill-temperature above 0")
    if not 0 <= namespace.real_share < 1 or not 0 <= namespace.ema_decay < 1:
        parser.error("--real-share and --ema-decay must be in [0, 1)")
    if namespace.real_share and namespace.teacher is not None and namespace.distill_weight:
        parser.error("--teacher and --real-share together are not supported (the teacher's answers cover the "
                     "MNIST images only)")
    config = TrainConfig(**vars(namespace))
    if config.out is None:
        config = replace(config, out=Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))
    return config


def recipe(args: dict[str, Any]) -> dict[str, Any]:
    """The recipe part of a checkpoint's `args` (what changes the weights), as export records it."""
    return {key: args[key] for key in RECIPE_KEYS if key in args}


def training_command(args: dict[str, Any]) -> str:
    """The `python -m training.train` command line that differs from the defaults as this run did."""
    defaults = TrainConfig().to_dict()
    flags = []
    for item in fields(TrainConfig):
        key = item.name
        if not item.metadata["command"] or key not in args or json.dumps(args[key]) == json.dumps(defaults[key]):
            continue
        value = args[key]
        if isinstance(item.default, bool):
            flags.append(f"--{key.replace('_', '-')}")
        elif key == "stages":
            flags.append(f"--stages {format_stages(value)}")
        else:
            flags.append(f"--{key.replace('_', '-')} {'none' if value is None else value}")
    return " ".join(["python -m training.train", *flags])
