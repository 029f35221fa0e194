"""`python -m export`: checkpoint → checked ONNX file in the model repository."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from export.onnx_export import PARITY_IMAGES, ExportError
from export.pipeline import WEIGHTS, export_checkpoint
from server.runtime.layout import NAME_RULE, valid_name
from training.checkpoint import CheckpointError
from training.data import DEFAULT_DATA_DIR, DataError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; every default shows in --help."""
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="runs/<run>/model.pt")
    parser.add_argument("--name", default="mnist", help="model name in the repository")
    parser.add_argument("--version", type=int, default=1, help="numeric version folder")
    parser.add_argument("--repo", type=Path, default=Path("models"), help="model repository root")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST root (test images)")
    parser.add_argument("--parity-images", type=int, default=PARITY_IMAGES,
                        help="test images compared against PyTorch at batch sizes 1, 7 and 64")
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    parser.add_argument("--allow-less-accurate", action="store_true",
                        help="export even when the new version, becoming the default, is less accurate on the "
                             "test set than the version it supersedes")
    parser.add_argument("--int8", action="store_true",
                        help="also quantize (int8 QDQ); ship it as <name>-int8 only if faster and <= 0.1 pt less "
                             "accurate, else record the measurement in the model card")
    parser.add_argument("--weights", choices=tuple(WEIGHTS), default="last",
                        help="the last epoch's weights, or the moving average of them training kept (--ema-decay)")
    args = parser.parse_args(argv)
    if args.version < 1:
        parser.error(f"--version must be a positive integer, got {args.version}")
    if not valid_name(args.name):
        parser.error(f"--name {args.name!r} is not a model name: {NAME_RULE}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m export`; a failed check is one line on stderr and exit status 1."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = export_checkpoint(args.checkpoint, args.name, args.version, args.repo, args.data_dir,
                                   args.force, args.parity_images, args.int8, args.allow_less_accurate,
                                   args.weights)
    except (ExportError, CheckpointError, DataError) as error:
        print(f"error: {error} (nothing written)", file=sys.stderr)
        return 1
    print(f"{result.path}: test accuracy {100 * result.test_accuracy:.2f} % (onnxruntime), "
          f"max abs diff vs torch {result.parity['max_abs_diff']:.2e}; model card {result.card}")
    return 0
