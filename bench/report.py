"""Turn one benchmark run's results into docs/results/benchmarks.json, PNG plots and docs/results/benchmarks.md."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

from bench.markdown import headline, render  # noqa: E402
from bench.results import MB, mean_worker_kib, series, targets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEERS_NAME = "benchmarks-peers.json"
RESULTS = ROOT / "docs" / "results"
REFERENCE = ROOT / "docs" / "benchmarks.md"  # the reference page: its headline block is the record's figures
HEADLINE_START, HEADLINE_END = "<!-- headline: written by make bench (bench/report.py) -->", "<!-- headline end -->"

# --------------------------------------------------------------------------- plots


def plot_throughput(results: dict, path: Path) -> None:
    concurrency = results["method"]["concurrency"]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    measured = series(results)
    width = 0.8 / len(measured)
    for index, (app, request, label) in enumerate(measured):
        rps = [run["rps"] for run in results[app]["load"][request]["runs"]]
        ax.bar([c + (index - len(measured) / 2 + 0.5) * width for c in range(len(concurrency))], rps, width, label=label)
    ax.set_xticks(range(len(concurrency)), [f"{c} connections" for c in concurrency])
    ax.set_ylabel("requests per second")
    method = results["method"]
    ax.set_title(f"Throughput under wrk, {results['machine']['cores']} cores, "
                 f"best of {method.get('tries', 1)} tries of {method['seconds']:g} s per bar")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(results: dict, path: Path) -> None:
    concurrency = results["method"]["concurrency"]
    fig, axes = plt.subplots(1, len(concurrency), figsize=(12, 4.4), sharey=True)
    for ax, position in zip(axes, range(len(concurrency))):
        measured = series(results)
        labels = [label for _, _, label in measured]
        for percentile, marker in (("p50", "o"), ("p90", "s"), ("p99", "^")):
            values = [results[app]["load"][request]["runs"][position]["latency_ms"][percentile]
                      for app, request, _ in measured]
            ax.scatter(values, range(len(measured)), marker=marker, label=percentile)
        ax.set_yticks(range(len(measured)), labels, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_title(f"{concurrency[position]} connections")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_footprint(results: dict, path: Path) -> None:
    server, torch = results["server"], results["torch"]
    panels = [
        ("installed environment (MB)", [results["sizes"]["serve"]["bytes"] / MB, results["sizes"]["torch"]["bytes"] / MB]),
        ("RSS per worker, idle (MB)", [mean_worker_kib(server["rss_idle_kib"]) * 1024 / MB,
                                       mean_worker_kib(torch["rss_idle_kib"]) * 1024 / MB]),
        (f"RSS per worker after {results['method']['rss_requests']} requests (MB)",
         [mean_worker_kib(server["rss_after_kib"]) * 1024 / MB, mean_worker_kib(torch["rss_after_kib"]) * 1024 / MB]),
        ("cold start to first /predict (s)", [server["cold_start_s_median"], torch["cold_start_s_median"]]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.6))
    for ax, (title, values) in zip(axes, panels):
        bars = ax.bar(["onnxruntime\nserver", "torch\nbaseline"], values, color=["tab:green", "tab:red"])
        ax.bar_label(bars, fmt="%.3g")
        ax.margins(y=0.15)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_soak(results: dict, path: Path) -> None:
    soak = results["soak"]
    seconds, kib = zip(*soak["rss_samples"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(seconds, [k * 1024 / MB for k in kib], marker=".")
    ax.axhline(soak["rss_kib_after_warmup"] * 1.1 * 1024 / MB, color="tab:red", linestyle="--", label="+10 % limit")
    ax.set_xlabel("seconds under load")
    ax.set_ylabel("RSS of all workers (MB)")
    ax.set_title(f"Soak: {soak['connections']} connections, {soak['load']['requests']} requests, "
                 f"{soak['failed_requests']} failed")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS = {"benchmarks-throughput.png": plot_throughput, "benchmarks-latency.png": plot_latency,
         "benchmarks-footprint.png": plot_footprint, "benchmarks-soak.png": plot_soak}


def peers_file(out: Path) -> Path:
    """bench/peers.py's results beside the report, else the committed ones in docs/results/ (a --quick run's out has none)."""
    beside = out / PEERS_NAME
    return beside if beside.exists() else ROOT / "docs" / "results" / PEERS_NAME


def write(results: dict, out: Path) -> None:
    """Write benchmarks.json, the plots and benchmarks.md into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results, peers_file=peers_file(out))
    (out / "benchmarks.json").write_text(json.dumps(results, indent=1) + "\n")
    for name, plot in PLOTS.items():
        plot(results, out / name)
    (out / "benchmarks.md").write_text(render(results, list(PLOTS)))
    if out.resolve() == RESULTS.resolve():
        REFERENCE.write_text(with_headline(REFERENCE.read_text(), headline(results)))


def with_headline(page: str, figures: str) -> str:
    """`page` with the text between its headline markers replaced by `figures`."""
    start, end = page.index(HEADLINE_START) + len(HEADLINE_START), page.index(HEADLINE_END)
    return page[:start] + "\n" + figures + page[end:]


def main(argv: list[str] | None = None) -> int:
    """Render the document and plots again from a run's benchmarks.json (the figures stay the run's; the targets
    are computed again, against bench/baseline-issue19.json and the peers' file as it is now)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("results", type=Path, nargs="?", default=Path("docs/results/benchmarks.json"))
    args = parser.parse_args(argv)
    write(json.loads(args.results.read_text()), args.results.parent)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
