"""Train the digit CNN on MNIST (CPU or GPU): batched on-tensor augmentation, one-cycle SGD, a share
of real-looking inputs as the server preprocesses them, distillation from a teacher ONNX model, an
exponential moving average of the weights, and a softmax temperature fitted on held-out images."""
from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from training import plots
from training.calibration import expected_calibration_error, fit_temperature, softmax
from training.checkpoint import save_checkpoint
from training.config import TrainConfig, parse_config
from training.data import DataError, Mnist, dataset_sha256, ensure_mnist, load_mnist
from training.distill import OnnxTeacher, TeacherError, distillation_loss
from training.model import DigitNet, ModelConfig, multiply_adds, parameter_count
from training.real_share import load_pool

log = logging.getLogger(__name__)

ACCURACY_MILESTONES = (0.99, 0.995, 0.996, 0.997)
EVAL_BATCH = 1000
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
CALIBRATION_SPLIT_SEED = 1  # fixed, so every recipe holds out the same calibration images
# Where tqdm shows no bar (output to a file or a pipe: `make train > log`), a progress line this often.
PROGRESS_SECONDS = 20.0


def log_progress(epoch: str, seen: int, total: int, seconds: float, loss: float, accuracy: float) -> None:
    """One line of an epoch's progress, for logs where no progress bar shows."""
    log.info("%s: %d/%d images, %.0f img/s, train loss %.4f acc %.4f", epoch, seen, total, seen / max(seconds, 1e-9),
             loss, accuracy)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command-line options (training/config.py's TrainConfig); every default shows in --help."""
    return parse_config(argv, description=__doc__)


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
                  scale: float, shift_px: float, elastic_px: float = 0.0, elastic_sigma: float = 4.0) -> torch.Tensor:
    """Per-image random rotation, zoom and shift of a [N, 1, H, W] batch, plus (with `elastic_px`)
    Simard et al.'s elastic distortion, all in one grid_sample."""
    n, _, height, width = pixels.shape
    uniform = lambda: torch.rand(n, generator=generator, device=pixels.device) * 2 - 1
    angle = uniform() * math.radians(rotation_deg)
    zoom = 1 + uniform() * scale
    shift = torch.stack([uniform(), uniform()], 1) * (2 * shift_px / height)  # grid units span 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    theta = torch.cat([theta, shift.unsqueeze(2)], 2)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    if elastic_px:
        grid = grid + elastic_field(n, height, width, generator, elastic_px, elastic_sigma, pixels.device)
    return F.grid_sample(pixels, grid, align_corners=False, padding_mode="zeros")


def elastic_field(n: int, height: int, width: int, generator: torch.Generator, alpha_px: float, sigma_px: float,
                  device: torch.device) -> torch.Tensor:
    """Smooth random displacements [N, H, W, 2] in grid units: uniform noise blurred by a Gaussian
    of `sigma_px`, scaled by `alpha_px` (Simard, Steinkraus & Platt 2003; torchvision's ElasticTransform)."""
    noise = torch.rand(n, 2, height, width, generator=generator, device=device) * 2 - 1
    radius = max(1, int(3 * sigma_px))
    taps = torch.arange(-radius, radius + 1, dtype=noise.dtype, device=device)
    kernel = torch.exp(-taps ** 2 / (2 * sigma_px ** 2))
    kernel = (kernel / kernel.sum()).repeat(2, 1, 1, 1)  # one separable Gaussian per displacement axis
    blurred = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="reflect"), kernel.view(2, 1, 1, -1), groups=2)
    blurred = F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="reflect"), kernel.view(2, 1, -1, 1), groups=2)
    scale = torch.tensor([2 * alpha_px / width, 2 * alpha_px / height], device=device).view(1, 2, 1, 1)
    return (blurred * scale).permute(0, 2, 3, 1)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] to the model's float [N, 1, 28, 28] in [0, 1]."""
    return images.unsqueeze(1).float().div_(255)


@dataclass
class Trainer:
    """The state of one training run."""

    args: TrainConfig
    device: torch.device
    model: DigitNet
    train_images: torch.Tensor
    train_labels: torch.Tensor
    generator: torch.Generator
    amp_dtype: torch.dtype | None
    teacher: OnnxTeacher | None = None
    real_images: torch.Tensor | None = None  # the real-looking pool (uint8 [P, 28, 28]) and its labels
    real_labels: torch.Tensor | None = None
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.LRScheduler = field(init=False)

    def __post_init__(self) -> None:
        # The pool sits after the MNIST images, so a batch's index picks from both.
        self.mnist_count = len(self.train_labels)
        self.real_count = 0 if self.real_images is None or not self.args.real_share else len(self.real_labels)
        if self.real_count:
            self.train_images = torch.cat([self.train_images, self.real_images])
            self.train_labels = torch.cat([self.train_labels, self.real_labels])
        steps = self.args.epochs * math.ceil(self.mnist_count / self.args.batch_size)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.args.lr, momentum=0.9,
                                         nesterov=True, weight_decay=self.args.weight_decay)
        # OneCycleLR divides by zero below 8 steps; tiny runs (tests) just stop early in the cycle.
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=self.args.lr, total_steps=max(steps, 8), pct_start=0.25)
        self.forward = torch.compile(self.model) if self.args.compile else self.model
        # The moving average of the weights (BatchNorm's statistics too), evaluated beside them.
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.args.ema_decay), use_buffers=True)
                    if self.args.ema_decay else None)
        # The teacher's answers for the un-augmented images, computed once: running version 1 (8x the
        # student's multiply-adds) on every augmented batch made each epoch 3x slower on a CPU.
        self.teacher_log_probs = None
        if self.teacher is not None:
            started = time.perf_counter()
            self.teacher_log_probs = torch.cat([
                self.teacher.log_probabilities(to_input(self.train_images[start:start + EVAL_BATCH]))
                for start in range(0, len(self.train_labels), EVAL_BATCH)])
            log.info("teacher %s: soft targets for %d training images in %.1fs", self.teacher.path,
                     len(self.train_labels), time.perf_counter() - started)

    def batch_indices(self) -> tuple[torch.Tensor, ...]:
        """Each step's images: a shuffled pass over MNIST or, with --real-share, that share of every
        batch drawn from the real-looking pool and the rest from a shuffled MNIST (same steps)."""
        order = torch.randperm(self.mnist_count, generator=self.generator, device=self.device)
        real = round(self.args.real_share * self.args.batch_size) if self.real_count else 0
        if not real:
            return order.split(self.args.batch_size)
        steps, mnist = math.ceil(self.mnist_count / self.args.batch_size), self.args.batch_size - real
        batches = order[:steps * mnist].split(mnist)
        draws = torch.cat([torch.randperm(self.real_count, generator=self.generator, device=self.device)
                           for _ in range(math.ceil(len(batches) * real / self.real_count))])
        pool = (self.mnist_count + draws[:len(batches) * real]).split(real)
        return tuple(torch.cat(pair) for pair in zip(batches, pool))

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Training inputs for `index`, augmented unless --no-augment."""
        pixels = to_input(self.train_images[index])
        if not self.args.no_augment:
            pixels = random_affine(pixels, self.generator, self.args.rotation, self.args.scale, self.args.shift,
                                   self.args.elastic, self.args.elastic_sigma)
        return pixels.contiguous(memory_format=torch.channels_last)

    def loss(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the labels, mixed with distillation from the teacher when there is one."""
        hard = F.cross_entropy(logits, self.train_labels[index], label_smoothing=self.args.label_smoothing)
        if self.teacher_log_probs is None:
            return hard
        soft = distillation_loss(logits, self.teacher_log_probs[index], self.args.distill_temperature)
        return (1 - self.args.distill_weight) * hard + self.args.distill_weight * soft

    def epoch(self, number: int) -> tuple[float, float, int]:
        """One pass over the shuffled training images; mean loss, accuracy, images seen."""
        self.model.train()
        batches = self.batch_indices()
        if self.args.dry_run:
            batches = batches[:1]
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        label = f"epoch {number}/{self.args.epochs}"
        bar = tqdm(batches, desc=label, unit="batch", leave=False, disable=None, file=sys.stderr)
        total, started = sum(len(index) for index in batches), time.perf_counter()
        reported = started
        for step, index in enumerate(bar, 1):
            labels = self.train_labels[index]
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = self.forward(self.batch(index))
            loss = self.loss(logits.float(), index)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            loss_sum += loss.detach() * len(index)
            correct += (logits.argmax(1) == labels).sum()
            if step % 20 == 0:
                seen = step * self.args.batch_size
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
            if bar.disable and time.perf_counter() - reported >= PROGRESS_SECONDS:
                reported, seen = time.perf_counter(), min(step * self.args.batch_size, total)
                log_progress(label, seen, total, reported - started, loss_sum.item() / seen, correct.item() / seen)
        return loss_sum.item() / total, correct.item() / total, total


@torch.no_grad()
def predict_logits(model: DigitNet, images: torch.Tensor) -> torch.Tensor:
    """fp32 logits (the precision the exported model runs in) for uint8 images, in eval mode."""
    model.eval()
    chunks = [model(to_input(images[start:start + EVAL_BATCH]).contiguous(memory_format=torch.channels_last)).float()
              for start in range(0, len(images), EVAL_BATCH)]
    return torch.cat(chunks) if chunks else torch.zeros(0, model.config.num_classes, device=images.device)


@dataclass(frozen=True)
class Evaluation:
    """Loss, accuracy, predicted classes and expected calibration error (at a temperature)."""

    loss: float
    accuracy: float
    predicted: np.ndarray
    ece: float
    probabilities: np.ndarray


def evaluate(model: DigitNet, images: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> Evaluation:
    """Evaluate in fp32 with the softmax temperature the export will fold into the graph."""
    logits = predict_logits(model, images).cpu().numpy()
    truth = labels.cpu().numpy()
    probabilities = softmax(logits, temperature)
    loss = float(-np.log(np.maximum(probabilities[np.arange(len(truth)), truth], 1e-12)).mean())
    predicted = probabilities.argmax(1)
    return Evaluation(loss, float((predicted == truth).mean()), predicted,
                      expected_calibration_error(probabilities, truth), probabilities)


def calibrate(model: DigitNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The softmax temperature that fits the held-out calibration images best (1 without any)."""
    if not len(labels):
        return 1.0
    return fit_temperature(predict_logits(model, images).cpu().numpy(), labels.cpu().numpy())


def held_out_fit(model: DigitNet, data: dict[str, torch.Tensor], prefix: str = "") -> tuple[float, dict]:
    """The fitted temperature, and the held-out calibration images' loss and accuracy at it (what a
    rule choosing among runs may look at without the test set); no fields without held-out images."""
    temperature = calibrate(model, data["calibration_images"], data["calibration_labels"])
    if not len(data["calibration_labels"]):
        return temperature, {}
    result = evaluate(model, data["calibration_images"], data["calibration_labels"], temperature)
    return temperature, {f"{prefix}calibration_loss": result.loss, f"{prefix}calibration_accuracy": result.accuracy}


def split_data(mnist: Mnist, args: TrainConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """Training tensors, the held-out calibration images and the evaluation set (validation or test)."""
    images, labels = torch.from_numpy(mnist.train.images), torch.from_numpy(mnist.train.labels)
    sources = torch.arange(len(labels))  # each kept image's index in MNIST's training set
    eval_images, eval_labels = torch.from_numpy(mnist.test.images), torch.from_numpy(mnist.test.labels)
    if args.validation:
        # A fixed split (seed 0, not --seed) so every candidate recipe sees the same held-out images.
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        held, kept = order[:args.validation], order[args.validation:]
        eval_images, eval_labels = images[held], labels[held]
        images, labels, sources = images[kept], labels[kept], sources[kept]
    calibration = torch.randperm(len(labels), generator=torch.Generator().manual_seed(CALIBRATION_SPLIT_SEED))
    held, kept = calibration[:args.calibration_images], calibration[args.calibration_images:].sort().values
    calibration_images, calibration_labels = images[held], labels[held]
    images, labels, sources = images[kept], labels[kept], sources[kept]
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    eval_limit = args.batch_size if args.dry_run else args.limit
    if eval_limit:
        eval_images, eval_labels = eval_images[:eval_limit], eval_labels[:eval_limit]
        calibration_images, calibration_labels = calibration_images[:eval_limit], calibration_labels[:eval_limit]
    tensors = {"train_images": images, "train_labels": labels, "eval_images": eval_images,
               "eval_labels": eval_labels, "calibration_images": calibration_images,
               "calibration_labels": calibration_labels, "train_sources": sources}
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def real_looking(mnist: Mnist, args: TrainConfig, train_sources: torch.Tensor,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """The real-looking pool's images and labels (None without --real-share), less any drawn from
    held-out training images; --limit and --dry-run render a pool no larger than what they train on."""
    if not args.real_share:
        return None, None
    one_batch = max(1, round(args.batch_size * args.real_share))  # all a dry run uses
    count = min(args.real_pool, args.limit or args.real_pool, one_batch if args.dry_run else args.real_pool)
    pool = load_pool(mnist, count, args.real_seed, args.data_dir, args.render_workers)
    held_out = np.setdiff1d(np.arange(len(mnist.train.labels)), train_sources.cpu().numpy())
    pool = pool.without(held_out)
    return torch.from_numpy(pool.images).to(device), torch.from_numpy(pool.labels).to(device)


def evaluate_ema(trainer: Trainer, data: dict[str, torch.Tensor]) -> dict:
    """The moving average's evaluation at its own fitted temperature: a metrics row's fields, a
    log fragment and the checkpoint's fields (its weights too); empty without --ema-decay."""
    if trainer.ema is None:
        return {}
    averaged = trainer.ema.module
    temperature, held_out = held_out_fit(averaged, data, "ema_")
    result = evaluate(averaged, data["eval_images"], data["eval_labels"], temperature)
    eval_name = "validation" if trainer.args.validation else "test"
    return {"row": {"ema_eval_loss": result.loss, "ema_eval_accuracy": result.accuracy, "ema_eval_ece": result.ece,
                    "ema_temperature": temperature, **held_out},
            "text": f" | EMA acc {result.accuracy:.4f} ECE {result.ece:.4f} (T {temperature:.3f})",
            "checkpoint": {"ema_state_dict": {k: v.detach().cpu() for k, v in averaged.state_dict().items()},
                           "ema_temperature": temperature, f"ema_{eval_name}_accuracy": result.accuracy,
                           f"ema_{eval_name}_ece": result.ece}}


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


def load_teacher(args: TrainConfig) -> OnnxTeacher | None:
    """The distillation teacher, or None when --teacher none or its loss weight is 0."""
    if args.teacher is None or args.distill_weight == 0:
        return None
    path = args.teacher
    if not path.is_absolute() and not path.exists() and (REPOSITORY_ROOT / path).exists():
        path = REPOSITORY_ROOT / path  # the default names the committed model, wherever we run from
    return OnnxTeacher(path, args.threads)


def run(args: TrainConfig, mnist: Mnist | None = None) -> dict:
    """Train, checkpointing after every epoch; return the run summary. Without `mnist`, MNIST is
    read from (and if need be fetched into) --data-dir."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    amp_dtype = autocast_dtype(args.precision, device)
    teacher = load_teacher(args)
    if mnist is None:
        ensure_mnist(args.data_dir)
        mnist = load_mnist(args.data_dir)
    data = split_data(mnist, args, device)
    model = DigitNet(ModelConfig(stages=args.stages, dropout=args.dropout, stem_stride=args.stem_stride,
                                 separable=args.separable))
    macs = multiply_adds(model)
    model = model.to(device).to(memory_format=torch.channels_last)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    real_images, real_labels = real_looking(mnist, args, data["train_sources"], device)
    trainer = Trainer(args, device, model, data["train_images"], data["train_labels"], generator, amp_dtype, teacher,
                      real_images, real_labels)
    eval_name = "validation" if args.validation else "test"
    summary = {"device": str(device), "precision": str(amp_dtype or torch.float32).replace("torch.", ""),
               "threads": args.threads, "parameters": parameter_count(model), "multiply_adds": macs,
               "train_images": len(data["train_labels"]), "calibration_images": len(data["calibration_labels"]),
               "real_looking_images": trainer.real_count,
               "teacher": str(args.teacher) if teacher else None, "eval_set": eval_name,
               "eval_images": len(data["eval_labels"]), "torch_version": torch.__version__}
    log.info("training %s parameters (%.1f M multiply-adds an image) on %d images (+%d real-looking, %.0f %% of "
             "each batch), %s, %s, %d threads%s; evaluating on %d %s images", summary["parameters"], macs / 1e6,
             summary["train_images"], trainer.real_count, 100 * args.real_share if trainer.real_count else 0, device,
             summary["precision"], args.threads, f", distilling from {args.teacher}" if teacher else "",
             summary["eval_images"], eval_name)
    epochs: list[dict] = []
    started = time.perf_counter()
    try:
        for number in range(1, args.epochs + 1):
            epoch_start = time.perf_counter()
            train_loss, train_accuracy, seen = trainer.epoch(number)
            train_s = time.perf_counter() - epoch_start
            temperature, held_out = held_out_fit(model, data)
            result = evaluate(model, data["eval_images"], data["eval_labels"], temperature)
            averaged = evaluate_ema(trainer, data)
            epochs.append({"epoch": number, "train_loss": train_loss, "train_accuracy": train_accuracy,
                           "eval_loss": result.loss, "eval_accuracy": result.accuracy, "eval_ece": result.ece,
                           "temperature": temperature, **held_out, **averaged.get("row", {}),
                           "train_s": round(train_s, 2),
                           "epoch_s": round(time.perf_counter() - epoch_start, 2),
                           "elapsed_s": round(time.perf_counter() - started, 2),
                           "train_images_per_s": round(seen / train_s, 1)})
            log.info("epoch %d/%d: train loss %.4f acc %.4f | %s loss %.4f acc %.4f ECE %.4f (T %.3f)%s | %.1fs, "
                     "%.0f img/s", number, args.epochs, train_loss, train_accuracy, eval_name, result.loss,
                     result.accuracy, result.ece, temperature, averaged.get("text", ""), epochs[-1]["epoch_s"],
                     epochs[-1]["train_images_per_s"])
            accuracy = {"test_accuracy": None, f"{eval_name}_accuracy": result.accuracy, f"{eval_name}_ece": result.ece,
                        **averaged.get("checkpoint", {})}
            args.out.mkdir(parents=True, exist_ok=True)  # only now: a run stopped sooner leaves no empty folder
            save_checkpoint(args.out / "model.pt", model, args=args.to_dict(), epoch=number,
                            data_sha256=mnist.file_sha256, dataset_sha256=dataset_sha256(mnist),
                            training_s=epochs[-1]["elapsed_s"], device=summary["device"],
                            precision=summary["precision"], train_images=summary["train_images"],
                            temperature=temperature, **accuracy)
            write_metrics(args.out / "metrics.json", summary, epochs)
            if args.dry_run:
                break
    except KeyboardInterrupt:
        kept = f"epoch {epochs[-1]['epoch']}'s checkpoint in {args.out}" if epochs else "no checkpoint"
        log.warning("interrupted: kept %s", kept)
        raise
    summary.update(total_s=round(time.perf_counter() - started, 2), final_accuracy=epochs[-1]["eval_accuracy"],
                   final_ece=epochs[-1]["eval_ece"], temperature=epochs[-1]["temperature"])
    if trainer.ema is not None:
        summary.update(final_ema_accuracy=epochs[-1]["ema_eval_accuracy"], final_ema_ece=epochs[-1]["ema_eval_ece"],
                       ema_temperature=epochs[-1]["ema_temperature"])
    write_metrics(args.out / "metrics.json", summary, epochs)
    write_plots(args.out, epochs, data, model, result)
    return summary


def write_plots(out: Path, epochs: list[dict], data: dict[str, torch.Tensor], model: DigitNet,
                result: Evaluation) -> None:
    """curves.png, confusion.png, misclassified.png and reliability.png in the run directory."""
    images, labels = data["eval_images"].cpu().numpy(), data["eval_labels"].cpu().numpy()
    plots.plot_curves(epochs, out / "curves.png")
    plots.plot_confusion(labels, result.predicted, out / "confusion.png")
    plots.plot_misclassified(images, labels, result.predicted, out / "misclassified.png")
    uncalibrated = softmax(predict_logits(model, data["eval_images"]).cpu().numpy())
    plots.plot_reliability(labels, {"temperature 1": uncalibrated,
                                    f"temperature {epochs[-1]['temperature']:.2f} (exported)": result.probabilities},
                           out / "reliability.png")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m training.train`."""
    args = parse_args(argv)
    # Explicitly, because a process started with SIGINT ignored (`make test &`, nohup) inherits the
    # ignore and Python then never installs its KeyboardInterrupt handler: Ctrl-C or a test's
    # SIGINT would be lost and training would run on. Ending keeps the last finished epoch.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        summary = run(args)
    except (DataError, TeacherError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    log.info("done in %.1fs: final %s accuracy %.4f, ECE %.4f at temperature %.3f; run directory %s",
             summary["total_s"], summary["eval_set"], summary["final_accuracy"], summary["final_ece"],
             summary["temperature"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
