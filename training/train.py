"""Train the digit CNN on MNIST (CPU or GPU): batched on-tensor augmentation, one-cycle SGD."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training import plots
from training.checkpoint import save_checkpoint
from training.data import DEFAULT_DATA_DIR, DataError, Mnist, dataset_sha256, ensure_mnist, load_mnist
from training.model import DigitNet, ModelConfig, parameter_count

log = logging.getLogger(__name__)

# `--fast`: a short preset; these values replace the defaults (options given explicitly still win).
FAST_PRESET = {"epochs": 2, "batch_size": 256, "lr": 0.2, "stages": ((16, 16), (32, 32), (64, 64))}
ACCURACY_MILESTONES = (0.99, 0.995, 0.996)
EVAL_BATCH = 1000


def default_threads() -> int:
    """The CPUs this process may use: on a quiet 2-core machine 2 threads trained 1.8x faster than
    1. When other jobs keep every core busy, OpenMP threads wait on each other at each barrier and
    `--threads 1` is faster (3-10x, docs/training.md)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_stages(text: str) -> tuple[tuple[int, ...], ...]:
    """`32,32:64,64` → ((32, 32), (64, 64)); argparse turns a ValueError into a usage error."""
    stages = tuple(tuple(int(width) for width in stage.split(",")) for stage in text.split(":"))
    if not stages or any(width < 1 for stage in stages for width in stage):
        raise ValueError(text)
    return stages


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; every default shows in --help."""
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12, help="passes over the training images")
    parser.add_argument("--batch-size", type=int, default=128, help="images per optimiser step")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    parser.add_argument("--label-smoothing", type=float, default=0.1, help="cross-entropy label smoothing")
    parser.add_argument("--rotation", type=float, default=10.0, help="max random rotation, degrees")
    parser.add_argument("--scale", type=float, default=0.1, help="max random relative zoom (±)")
    parser.add_argument("--shift", type=float, default=2.0, help="max random shift, pixels (±)")
    parser.add_argument("--no-augment", action="store_true", help="train on the images as they are")
    parser.add_argument("--stages", type=parse_stages, default=ModelConfig.stages,
                        help="conv widths, stages split by ':' (2x2 max-pool between stages), e.g. 32,32:64,64")
    parser.add_argument("--dropout", type=float, default=ModelConfig.dropout, help="dropout before the classifier")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, order and augmentation")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto = cuda when available")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="training matmul precision; auto = bf16 autocast where the hardware has it "
                             "(evaluation always runs in fp32)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="CPU threads for torch; by default the usable CPUs (1 is faster when other jobs load every core)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (helps on GPU)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST root")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default runs/<UTC time>)")
    parser.add_argument("--validation", type=int, default=0,
                        help="hold out this many training images and evaluate on them instead of the "
                             "test set (for choosing hyper-parameters; 0 = train on all 60,000)")
    parser.add_argument("--limit", type=int, default=0,
                        help="train on only N images and evaluate on N (quick checks; 0 = all)")
    parser.add_argument("--dry-run", action="store_true",
                        help="one training batch, evaluated on one batch of images, then stop")
    parser.add_argument("--fast", action="store_true",
                        help=f"short preset: {', '.join(f'{k}={v}' for k, v in FAST_PRESET.items())}")
    args = parser.parse_args(argv)
    if args.fast:
        parser.set_defaults(**FAST_PRESET)
        args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.validation < 0 or args.limit < 0:
        parser.error("--validation and --limit must be >= 0")
    if args.out is None:
        args.out = Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return args


def pick_device(name: str) -> torch.device:
    """`auto` means cuda when torch sees a GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA GPU")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware runs it natively (AMX/AVX-512-BF16 CPUs, Ampere+ GPUs), else None."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if precision == "bf16" or supported:
        return torch.bfloat16
    return None


def random_affine(pixels: torch.Tensor, generator: torch.Generator, rotation_deg: float,
                  scale: float, shift_px: float) -> torch.Tensor:
    """Per-image random rotation, zoom and shift of a [N, 1, H, W] batch, in one grid_sample."""
    n, _, height, _ = pixels.shape
    uniform = lambda: torch.rand(n, generator=generator, device=pixels.device) * 2 - 1
    angle = uniform() * math.radians(rotation_deg)
    zoom = 1 + uniform() * scale
    shift = torch.stack([uniform(), uniform()], 1) * (2 * shift_px / height)  # grid units span 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    theta = torch.cat([theta, shift.unsqueeze(2)], 2)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, align_corners=False, padding_mode="zeros")


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] to the model's float [N, 1, 28, 28] in [0, 1]."""
    return images.unsqueeze(1).float().div_(255)


@dataclass
class Trainer:
    """The state of one training run."""

    args: argparse.Namespace
    device: torch.device
    model: DigitNet
    train_images: torch.Tensor
    train_labels: torch.Tensor
    generator: torch.Generator
    amp_dtype: torch.dtype | None
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.LRScheduler = field(init=False)

    def __post_init__(self) -> None:
        steps = self.args.epochs * math.ceil(len(self.train_labels) / self.args.batch_size)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.args.lr, momentum=0.9,
                                         nesterov=True, weight_decay=self.args.weight_decay)
        # OneCycleLR divides by zero below 8 steps; tiny runs (tests) just stop early in the cycle.
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=self.args.lr, total_steps=max(steps, 8), pct_start=0.25)
        self.forward = torch.compile(self.model) if self.args.compile else self.model

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Training inputs for `index`, augmented unless --no-augment."""
        pixels = to_input(self.train_images[index])
        if not self.args.no_augment:
            pixels = random_affine(pixels, self.generator, self.args.rotation, self.args.scale, self.args.shift)
        return pixels.contiguous(memory_format=torch.channels_last)

    def epoch(self, number: int) -> tuple[float, float, int]:
        """One pass over the shuffled training images; mean loss, accuracy, images seen."""
        self.model.train()
        order = torch.randperm(len(self.train_labels), generator=self.generator, device=self.device)
        batches = order.split(self.args.batch_size)
        if self.args.dry_run:
            batches = batches[:1]
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        bar = tqdm(batches, desc=f"epoch {number}/{self.args.epochs}", unit="batch", leave=False,
                   disable=None, file=sys.stderr)
        for step, index in enumerate(bar, 1):
            labels = self.train_labels[index]
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = self.forward(self.batch(index))
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.args.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(index)
            correct += (logits.argmax(1) == labels).sum()
            if step % 20 == 0:
                seen = step * self.args.batch_size
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
        seen = sum(len(index) for index in batches)
        return loss_sum.item() / seen, correct.item() / seen, seen


@torch.no_grad()
def evaluate(model: DigitNet, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, np.ndarray]:
    """Loss, accuracy and predicted classes in fp32 (the precision the exported model runs in)."""
    model.eval()
    loss_sum, predictions = 0.0, []
    for start in range(0, len(labels), EVAL_BATCH):
        pixels = to_input(images[start:start + EVAL_BATCH]).contiguous(memory_format=torch.channels_last)
        logits = model(pixels).float()
        loss_sum += F.cross_entropy(logits, labels[start:start + EVAL_BATCH], reduction="sum").item()
        predictions.append(logits.argmax(1).cpu())
    predicted = torch.cat(predictions).numpy()
    return loss_sum / len(labels), float((predicted == labels.cpu().numpy()).mean()), predicted


def split_data(mnist: Mnist, args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    """Training tensors and the evaluation set (held-out validation or test), on the device."""
    images, labels = torch.from_numpy(mnist.train.images), torch.from_numpy(mnist.train.labels)
    eval_images, eval_labels = torch.from_numpy(mnist.test.images), torch.from_numpy(mnist.test.labels)
    if args.validation:
        # A fixed split (seed 0, not --seed) so every candidate recipe sees the same held-out images.
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        held, kept = order[:args.validation], order[args.validation:]
        eval_images, eval_labels = images[held], labels[held]
        images, labels = images[kept], labels[kept]
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    eval_limit = args.batch_size if args.dry_run else args.limit
    if eval_limit:
        eval_images, eval_labels = eval_images[:eval_limit], eval_labels[:eval_limit]
    tensors = {"train_images": images, "train_labels": labels, "eval_images": eval_images,
               "eval_labels": eval_labels}
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def first_epoch_reaching(epochs: list[dict], threshold: float) -> dict | None:
    """Wall time and epoch when evaluation accuracy first reached `threshold`."""
    for row in epochs:
        if row["eval_accuracy"] >= threshold:
            return {"epoch": row["epoch"], "seconds": row["elapsed_s"]}
    return None


def write_metrics(path: Path, summary: dict, epochs: list[dict]) -> None:
    """metrics.json: the run summary and one row per finished epoch."""
    milestones = {f"{100 * t:.1f}": first_epoch_reaching(epochs, t) for t in ACCURACY_MILESTONES}
    content = {**summary, "time_to_accuracy": milestones, "epochs": epochs}
    path.write_text(json.dumps(content, indent=2) + "\n")


def plain_args(args: argparse.Namespace) -> dict:
    """The arguments as JSON-able plain values (paths as strings)."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def run(args: argparse.Namespace) -> dict:
    """Train, checkpointing after every epoch; return the run summary."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    amp_dtype = autocast_dtype(args.precision, device)
    ensure_mnist(args.data_dir)
    mnist = load_mnist(args.data_dir)
    data = split_data(mnist, args, device)
    model = DigitNet(ModelConfig(stages=args.stages, dropout=args.dropout))
    model = model.to(device).to(memory_format=torch.channels_last)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    trainer = Trainer(args, device, model, data["train_images"], data["train_labels"], generator, amp_dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    eval_name = "validation" if args.validation else "test"
    summary = {"device": str(device), "precision": str(amp_dtype or torch.float32).replace("torch.", ""),
               "threads": args.threads, "parameters": parameter_count(model),
               "train_images": len(data["train_labels"]), "eval_set": eval_name,
               "eval_images": len(data["eval_labels"]), "torch_version": torch.__version__}
    log.info("training %s parameters on %d images, %s, %s, %d threads; evaluating on %d %s images",
             summary["parameters"], summary["train_images"], device, summary["precision"], args.threads,
             summary["eval_images"], eval_name)
    epochs: list[dict] = []
    started = time.perf_counter()
    try:
        for number in range(1, args.epochs + 1):
            epoch_start = time.perf_counter()
            train_loss, train_accuracy, seen = trainer.epoch(number)
            train_s = time.perf_counter() - epoch_start
            eval_loss, eval_accuracy, predicted = evaluate(model, data["eval_images"], data["eval_labels"])
            epochs.append({"epoch": number, "train_loss": train_loss, "train_accuracy": train_accuracy,
                           "eval_loss": eval_loss, "eval_accuracy": eval_accuracy,
                           "train_s": round(train_s, 2), "epoch_s": round(time.perf_counter() - epoch_start, 2),
                           "elapsed_s": round(time.perf_counter() - started, 2),
                           "train_images_per_s": round(seen / train_s, 1)})
            log.info("epoch %d/%d: train loss %.4f acc %.4f | %s loss %.4f acc %.4f | %.1fs, %.0f img/s",
                     number, args.epochs, train_loss, train_accuracy, eval_name, eval_loss, eval_accuracy,
                     epochs[-1]["epoch_s"], epochs[-1]["train_images_per_s"])
            accuracy = {"test_accuracy": None, f"{eval_name}_accuracy": eval_accuracy}
            save_checkpoint(args.out / "model.pt", model, args=plain_args(args), epoch=number,
                            data_sha256=mnist.file_sha256, dataset_sha256=dataset_sha256(mnist),
                            training_s=epochs[-1]["elapsed_s"], device=summary["device"],
                            precision=summary["precision"], train_images=summary["train_images"], **accuracy)
            write_metrics(args.out / "metrics.json", summary, epochs)
            if args.dry_run:
                break
    except KeyboardInterrupt:
        kept = f"epoch {epochs[-1]['epoch']}'s checkpoint in {args.out}" if epochs else "no checkpoint"
        log.warning("interrupted: kept %s", kept)
        raise
    summary.update(total_s=round(time.perf_counter() - started, 2), final_accuracy=epochs[-1]["eval_accuracy"])
    write_metrics(args.out / "metrics.json", summary, epochs)
    write_plots(args.out, epochs, data, predicted)
    return summary


def write_plots(out: Path, epochs: list[dict], data: dict[str, torch.Tensor], predicted: np.ndarray) -> None:
    """curves.png, confusion.png and misclassified.png in the run directory."""
    images, labels = data["eval_images"].cpu().numpy(), data["eval_labels"].cpu().numpy()
    plots.plot_curves(epochs, out / "curves.png")
    plots.plot_confusion(labels, predicted, out / "confusion.png")
    plots.plot_misclassified(images, labels, predicted, out / "misclassified.png")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m training.train`."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        summary = run(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    log.info("done in %.1fs: final %s accuracy %.4f; run directory %s", summary["total_s"],
             summary["eval_set"], summary["final_accuracy"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
