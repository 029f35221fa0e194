"""PNG plots of a run: training curves, confusion matrix, misclassified test images."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(epochs: list[dict], path: Path) -> None:
    """Training loss, and training / evaluation accuracy, per epoch."""
    x = [row["epoch"] for row in epochs]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(x, [row["train_loss"] for row in epochs], marker="o", label="train")
    loss_ax.plot(x, [row["eval_loss"] for row in epochs], marker="o", label="eval")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.plot(x, [100 * row["train_accuracy"] for row in epochs], marker="o", label="train (augmented)")
    acc_ax.plot(x, [100 * row["eval_accuracy"] for row in epochs], marker="o", label="eval")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy", ylim=(97, 100))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(labels: np.ndarray, predictions: np.ndarray, path: Path, classes: int = 10) -> None:
    """Counts of (true, predicted) pairs; the off-diagonal cells are the errors."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        if count:
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                    color="white" if row == col else "black")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(classes), yticks=range(classes),
           title=f"confusion matrix ({int((labels != predictions).sum())} errors)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_misclassified(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, path: Path,
                       limit: int = 100, columns: int = 10) -> None:
    """The misclassified images in one mosaic, each captioned `true→predicted`."""
    wrong = np.flatnonzero(labels != predictions)[:limit]
    rows = max(1, -(-len(wrong) // columns))
    size = images.shape[-1] + 2  # one image plus a 2-pixel gap
    mosaic = np.zeros((rows * size, columns * size), dtype=np.uint8)
    fig, ax = plt.subplots(figsize=(columns * 0.9, rows * 1.0 + 0.6))
    for slot, index in enumerate(wrong):
        top, left = (slot // columns) * size, (slot % columns) * size
        mosaic[top:top + size - 2, left:left + size - 2] = images[index]
        ax.text(left, top + 0.5, f"{labels[index]}→{predictions[index]}", color="yellow", fontsize=7, va="top")
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255)
    ax.axis("off")
    ax.set_title(f"misclassified test images (true→predicted), {len(wrong)} shown")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(labels: np.ndarray, probabilities: dict[str, np.ndarray], path: Path, bins: int = 15) -> None:
    """Reliability diagram: accuracy against confidence per bin, one line per set of probabilities,
    each labelled with its expected calibration error; the diagonal is perfect calibration."""
    from training.calibration import reliability  # numpy only

    fig, (curve_ax, count_ax) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True,
                                             gridspec_kw={"height_ratios": (3, 1)})
    curve_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, values in probabilities.items():
        bins_ = reliability(values, labels, bins)
        used = bins_.counts > 0
        curve_ax.plot(bins_.confidence[used], bins_.accuracy[used], marker="o",
                      label=f"{name}: ECE {100 * bins_.ece:.2f} %")
        count_ax.step(np.arange(bins) / bins, bins_.counts, where="post", label=name)
    curve_ax.set(ylabel="accuracy in bin", title=f"reliability, {len(labels)} images, {bins} bins")
    count_ax.set(xlabel="confidence (top probability)", ylabel="images", yscale="log")
    for ax in (curve_ax, count_ax):
        ax.grid(alpha=0.3)
    curve_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_frontier(rows: list[dict], path: Path, budget_ratio: float = 0.25) -> None:
    """Test accuracy against µs per image at batch 1 (docs/results/training-frontier.json's rows): one point
    per seed, the mean marked, and the cost budget as a line at `budget_ratio` × version 1's time."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    markers = {"full": "o", "chosen": "*", "screen": "x", "session2": "D", "session3": "s", "session4": "P", "session5": "X"}
    reference = next((row["us_batch1"] for row in rows if row.get("ratio_batch1") == 1.0), None)
    for row in rows:
        accuracies = [100 * a for a in row["test_accuracy"]]
        marker = markers.get(row["kind"], "o")
        ax.scatter([row["us_batch1"]] * len(accuracies), accuracies, marker=marker, s=40, alpha=0.6)
        ax.scatter([row["us_batch1"]], [np.mean(accuracies)], marker=marker, s=90, color="black")
        ax.annotate(row["label"], (row["us_batch1"], np.mean(accuracies)), fontsize=7,
                    xytext=(5, 3), textcoords="offset points")
    if reference:
        ax.axvline(budget_ratio * reference, color="tab:red", linestyle="--",
                   label=f"{budget_ratio:g} × version 1's time (issue 20's budget)")
    ax.axhline(99.70, color="tab:green", linestyle=":", label="99.70 % (issue 20's target)")
    ax.axhline(99.65, color="tab:purple", linestyle=":", label="99.65 % (issue 27's bar: shipped model and mean)")
    ax.set_ylim(top=max(99.75, ax.get_ylim()[1]))
    ax.set(xscale="log", xlabel="µs per image, onnxruntime, 1 thread, batch 1 (log scale)",
           ylabel="test accuracy (%): seeds, and their mean in black", title="Accuracy against cost")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """`python -m training.plots FRONTIER_JSON PNG`: draw the frontier plot of docs/results/training-2026-11-30-lean-candidate.md."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m training.plots", description=main.__doc__)
    parser.add_argument("frontier", type=Path, help="docs/results/training-frontier.json")
    parser.add_argument("png", type=Path, help="where the plot goes, e.g. docs/results/training-frontier.png")
    args = parser.parse_args(argv)
    try:
        rows = json.loads(args.frontier.read_text())["rows"]
    except (OSError, ValueError, KeyError) as error:
        parser.exit(1, f"error: cannot read the frontier rows of {args.frontier}: {error}\n")
    plot_frontier(rows, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
