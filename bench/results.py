"""What one benchmark run's results hold: its series and the figures derived from them.

Shared by bench/report.py (JSON and plots) and bench/markdown.py (the document): report imports
markdown and both import this, so no import runs in a circle.
"""
from __future__ import annotations

MB = 1e6
BASE_SERIES = (  # (app, request, label in tables and plots)
    ("trivial", "trivial", "trivial constant JSON"),
    ("server", "predict_png", "server /predict PNG"),
    ("server", "predict_pixels", "server /predict pixels"),
    ("server", "v2_infer_binary", "server v2 infer binary"),
    ("server", "v2_infer_json", "server v2 infer JSON"),
    ("torch", "predict_png", "torch /predict PNG"),
    ("torch", "predict_pixels", "torch /predict pixels"),
)


def series(results: dict) -> list[tuple[str, str, str]]:
    """The measured series, with the int8 model's when the repository held one."""
    found = list(BASE_SERIES)
    if "predict_png_int8" in results["server"]["load"]:
        found.insert(5, ("server", "predict_png_int8", "server /predict PNG, int8 model"))
    return found


def peak_rps(results: dict, app: str, request: str) -> float:
    return max(run["rps"] for run in results[app]["load"][request]["runs"])


def mean_worker_kib(workers: list[dict]) -> float:
    return sum(w["rss"] for w in workers) / len(workers)


def targets(results: dict) -> list[dict]:
    """Issue 7's targets as ratios measured in this run."""
    png, trivial, torch_png = (peak_rps(results, "server", "predict_png"), peak_rps(results, "trivial", "trivial"),
                               peak_rps(results, "torch", "predict_png"))
    sizes = results["sizes"]
    rss = mean_worker_kib(results["server"]["rss_after_kib"]) / mean_worker_kib(results["torch"]["rss_after_kib"])
    cold = results["server"]["cold_start_s_median"] / results["torch"]["cold_start_s_median"]
    cpu = {app: results[app]["load"][request]["runs"][-1]["server_cpu_ms_per_request"]
           for app, request in (("server", "predict_png"), ("trivial", "trivial"), ("torch", "predict_png"))}
    rows = [
        ("/predict PNG peak throughput / trivial endpoint's", png / trivial, ">=", 0.6),
        ("the same from CPU per request at the highest concurrency (trivial's / /predict's)",
         cpu["trivial"] / cpu["server"], ">=", 0.6),
        ("/predict PNG peak throughput / torch baseline's", png / torch_png, ">=", 2.0),
        ("the same from CPU per request (torch's / /predict's)", cpu["torch"] / cpu["server"], ">=", 2.0),
        (f"RSS per worker after {results['method']['rss_requests']} requests / torch's", rss, "<=", 0.4),
        ("serve environment size (MB)", sizes["serve"]["bytes"] / MB, "<=", 250),
        ("serve environment size / torch environment's", sizes["serve"]["bytes"] / sizes["torch"]["bytes"], "<=", 0.3),
        ("cold start to first /predict / torch's", cold, "<=", 0.5),
    ]
    return [{"target": name, "measured": round(value, 3), "goal": f"{op} {goal}",
             "met": value >= goal if op == ">=" else value <= goal} for name, value, op, goal in rows]
