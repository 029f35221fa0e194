"""What one benchmark run's results hold: its series and the figures derived from them.

Shared by bench/report.py (JSON and plots) and bench/markdown.py (the document): report imports
markdown and both import this, so no import runs in a circle.

The targets are issue 19's, as ratios: this run's figures (`figures`) against the same figures of
the run before issue 19's work began, frozen in bench/baseline-issue19.json (`evaluate`).
"""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

MB = 1e6
BASELINE = Path(__file__).with_name("baseline-issue19.json")
BASE_SERIES = (  # (app, request, label in tables and plots)
    ("trivial", "trivial", "trivial constant JSON"),
    ("server", "predict_png", "server /predict PNG"),
    ("server", "predict_pixels", "server /predict pixels"),
    ("server", "v2_infer_binary", "server v2 infer binary"),
    ("server", "v2_infer_json", "server v2 infer JSON"),
    ("torch", "predict_png", "torch /predict PNG"),
    ("torch", "predict_pixels", "torch /predict pixels"),
)
OWN_WORK_REQUESTS = (("predict_png", "/predict PNG"), ("predict_pixels", "/predict pixels"),
                     ("v2_infer_binary", "v2 infer binary"), ("v2_infer_json", "v2 infer JSON"))
PEER_REQUESTS = (("v2_infer_json", "v2 infer JSON"), ("v2_infer_binary", "v2 infer binary"),
                 ("v2_infer_grpc", "v2 infer gRPC"))
# Issue 19's goals.
OWN_WORK_FRACTION = 1 / 3  # own CPU work per request, of the before run's
TRIVIAL_FRACTION = 0.45  # /predict PNG throughput, of the trivial endpoint's
TORCH_MULTIPLE = 3.0  # /predict PNG throughput, of the torch baseline's
COLD_START_FRACTION = 0.25  # of the torch baseline's
PEER_MULTIPLE = 2.0  # v2 throughput, of the best peer's
# Issue 33's goals (the same peer multiple, at these connections; gRPC against KServe's, the only peer with gRPC here).
ISSUE33_CONNECTIONS = (8, 32)
BEFORE_CPU_FRACTION = 0.5  # server CPU per request, of e301823's (bench/before_after.py)
ISSUE33_TORCH_MULTIPLE = 2.0  # /predict PNG throughput, of the torch baseline's (same architecture)


def series(results: dict) -> list[tuple[str, str, str]]:
    """The measured series, with the int8 model's when the repository held one."""
    found = list(BASE_SERIES)
    if "predict_png_int8" in results["server"]["load"]:
        found.insert(5, ("server", "predict_png_int8", "server /predict PNG, int8 model"))
    return found


def peak_rps(results: dict, app: str, request: str) -> float:
    return max(run["rps"] for run in results[app]["load"][request]["runs"])


def mean_worker_kib(workers: list[dict], key: str = "rss") -> float:
    return sum(w[key] for w in workers) / len(workers)


def cpu_per_request(results: dict, app: str, request: str) -> float:
    """Server CPU ms per answered request at the highest concurrency, where the server is saturated."""
    return results[app]["load"][request]["runs"][-1]["server_cpu_ms_per_request"]


def inference_ms(results: dict) -> float:
    """One in-process onnxruntime inference of the served model: batch 1, the workers' thread count."""
    threads = results["settings"]["ORT_THREADS"]
    by_threads = next(r for r in results["inprocess"]["ort"]["results"] if r["threads"] == threads)
    return next(b for b in by_threads["batches"] if b["batch"] == 1)["us_per_image_p50"] / 1000


def figures(results: dict) -> dict:
    """The figures issue 19's targets compare, out of one run's results (the baseline file holds the before run's)."""
    apps = ("server", "torch")
    return {
        "date": results["date"],
        "machine": {k: results["machine"][k] for k in ("cpu_model", "cores")},
        "settings": results["settings"],  # workers, threads, onnxruntime threads
        "model_sha256": results["model"]["sha256"],
        "connections": results["method"]["concurrency"][-1],
        "cpu_ms_per_request": {"trivial": cpu_per_request(results, "trivial", "trivial"),
                               "torch_predict_png": cpu_per_request(results, "torch", "predict_png"),
                               **{request: cpu_per_request(results, "server", request)
                                  for request, _ in OWN_WORK_REQUESTS}},
        "inference_ms": inference_ms(results),
        "peak_rps": {"trivial": peak_rps(results, "trivial", "trivial"),
                     "predict_png": peak_rps(results, "server", "predict_png"),
                     "torch_predict_png": peak_rps(results, "torch", "predict_png")},
        "cold_start_s": {app: results[app]["cold_start_s_median"] for app in apps},
        "rss_requests": results["method"]["rss_requests"],
        "worker_kib": {app: {key: round(mean_worker_kib(results[app]["rss_after_kib"], key)) for key in ("rss", "pss")}
                       for app in apps},
        "master_kib": {app: results[app].get("master_kib_after") for app in apps},  # runs before 2026-11-30: none
        "total_pss_kib": {app: results[app]["master_kib_after"]["pss"] + sum(w["pss"] for w in results[app]["rss_after_kib"])
                          if results[app].get("master_kib_after") else None for app in apps},
        "environment_bytes": {"serve": results["sizes"]["serve"]["bytes"], "torch": results["sizes"]["torch"]["bytes"]},
    }


def own_work_ms(figures_: dict, request: str) -> float:
    """Server CPU per request minus the trivial endpoint's minus one in-process inference: the server's own work."""
    cpu = figures_["cpu_ms_per_request"]
    return cpu[request] - cpu["trivial"] - figures_["inference_ms"]


def row(target: str, before: float | None, measured: float, op: str | None = None, goal: float | None = None) -> dict:
    """One target: its figure before issue 19's work and in this run, and whether this run meets the goal."""
    met = None if op is None else (measured >= goal if op == ">=" else measured <= goal)
    return {"target": target, "before": None if before is None else round(before, 3), "measured": round(measured, 3),
            "goal": None if op is None else f"{op} {goal:g}", "met": met}


def throughput_rows(f: dict, before: dict) -> list[dict]:
    """/predict PNG against the trivial endpoint and the torch baseline, by peak req/s and by CPU per request."""
    def ratios(x: dict) -> tuple[float, float, float, float]:
        rps, cpu = x["peak_rps"], x["cpu_ms_per_request"]
        return (rps["predict_png"] / rps["trivial"], cpu["trivial"] / cpu["predict_png"],
                rps["predict_png"] / rps["torch_predict_png"], cpu["torch_predict_png"] / cpu["predict_png"])

    now, then = ratios(f), ratios(before)
    names = ("/predict PNG peak throughput / trivial endpoint's",
             f"the same from CPU per request at {f['connections']} connections (trivial's / /predict's)",
             "/predict PNG peak throughput / torch baseline's",
             "the same from CPU per request (torch's / /predict's)")
    goals = ((">=", TRIVIAL_FRACTION), (">=", TRIVIAL_FRACTION), (">=", TORCH_MULTIPLE), (">=", TORCH_MULTIPLE))
    return [row(name, b, n, op, goal) for name, b, n, (op, goal) in zip(names, then, now, goals)]


def memory_rows(f: dict, before: dict) -> list[dict]:
    """RSS and PSS per worker (PSS splits shared pages between the processes sharing them); issue 19 sets no figure."""
    mb = lambda kib: kib * 1024 / MB  # noqa: E731
    rows = []
    for app, name in (("server", "this server"), ("torch", "torch baseline")):
        for key in ("rss", "pss"):
            rows.append(row(f"{name}: {key.upper()} per worker (MB)", mb(before["worker_kib"][app][key]),
                            mb(f["worker_kib"][app][key])))
        if f["master_kib"][app]:
            rows.append(row(f"{name}: master's RSS (MB)", None if not before["master_kib"][app] else
                            mb(before["master_kib"][app]["rss"]), mb(f["master_kib"][app]["rss"])))
            rows.append(row(f"{name}: PSS of the master and all workers (MB)", None if not before["total_pss_kib"][app]
                            else mb(before["total_pss_kib"][app]), mb(f["total_pss_kib"][app])))
    ratio = lambda x: x["worker_kib"]["server"]["pss"] / x["worker_kib"]["torch"]["pss"]  # noqa: E731
    rows.append(row("PSS per worker / torch baseline's", ratio(before), ratio(f)))
    return rows


def issue7_rows(f: dict, before: dict) -> list[dict]:
    """Issue 7's targets that issue 19 does not replace: memory against torch and the installed size."""
    rss = lambda x: x["worker_kib"]["server"]["rss"] / x["worker_kib"]["torch"]["rss"]  # noqa: E731
    serve = lambda x: x["environment_bytes"]["serve"]  # noqa: E731
    share = lambda x: x["environment_bytes"]["serve"] / x["environment_bytes"]["torch"]  # noqa: E731
    return [row("RSS per worker after the requests / torch's", rss(before), rss(f), "<=", 0.4),
            row("serve environment size (MB)", serve(before) / MB, serve(f) / MB, "<=", 250),
            row("serve environment size / torch environment's", share(before), share(f), "<=", 0.3)]


def peers_comparison(peers: dict | None, source: str, run_date: str) -> dict:
    """This server against the best peer, from bench/peers.py's side-by-side run, when it is not older than this run."""
    result: dict = {"source": source, "date": None if peers is None else peers["date"], "rows": []}
    if peers is None:
        result["status"] = "absent"
        return result
    if datetime.fromisoformat(peers["date"]).date() < datetime.fromisoformat(run_date).date():
        result["status"] = "older"
        return result
    result.update(status="current", rounds=peers.get("rounds"), seconds=peers.get("seconds"))
    table = peers["table"]
    for request, label in PEER_REQUESTS:
        for connections in sorted({r["connections"] for r in table if r["request"] == request}):
            here = [r for r in table if r["request"] == request and r["connections"] == connections]
            ours = next((r for r in here if r["server"] == "server"), None)
            best = max((r for r in here if r["server"] != "server"), key=lambda r: r["rps_median"], default=None)
            if ours is None:
                continue
            ratio = ours["rps_median"] / best["rps_median"] if best else None
            pick = lambda r: None if r is None else {k: r[k] for k in ("server", "rps_median", "p50_ms", "p99_ms")}  # noqa: E731
            result["rows"].append({
                "request": request, "label": label, "connections": connections, "server": pick(ours), "peer": pick(best),
                "ratio": None if ratio is None else round(ratio, 3), "goal": f">= {PEER_MULTIPLE:g}",
                "met": None if ratio is None else ratio >= PEER_MULTIPLE})
    return result


def evaluate(f: dict, before: dict, peers: dict | None = None, peers_source: str = "") -> dict:
    """Issue 19's targets: this run's figures `f` against the before run's, and the peers' run beside it."""
    own = []
    for request, label in OWN_WORK_REQUESTS:
        now, then = own_work_ms(f, request), own_work_ms(before, request)
        trivial, trivial_before = f["cpu_ms_per_request"]["trivial"], before["cpu_ms_per_request"]["trivial"]
        own.append({"request": request, "label": label, "cpu_ms": f["cpu_ms_per_request"][request],
                    "trivial_ms": trivial, "inference_ms": round(f["inference_ms"], 3),
                    "own_ms": round(now, 3), "before_own_ms": round(then, 3), "ratio": round(now / then, 3),
                    # in units of the trivial endpoint's CPU per request: what a change of CPU leaves alone
                    "own_per_trivial": round(now / trivial, 3), "before_own_per_trivial": round(then / trivial_before, 3),
                    "goal": f"<= {OWN_WORK_FRACTION:.3f}", "met": now <= then * OWN_WORK_FRACTION})
    cold = lambda x: x["cold_start_s"]["server"] / x["cold_start_s"]["torch"]  # noqa: E731
    return {
        "issue": 19,
        "baseline": {k: before.get(k) for k in ("date", "commit", "code_commit", "machine", "settings", "model_sha256",
                                                "rss_requests")},
        "machine": f["machine"],
        "own_work": own,
        "throughput": throughput_rows(f, before),
        "cold_start": [row("cold start to first 200 from /predict / torch baseline's", cold(before), cold(f),
                           "<=", COLD_START_FRACTION)],
        "memory": memory_rows(f, before),
        "peers": peers_comparison(peers, peers_source, f["date"]),
        "issue7": issue7_rows(f, before),
    }


def issue33(results: dict, peers: dict) -> dict:
    """Issue 33's targets in one run: the peers at 8 and 32 connections, CPU per request against e301823, torch."""
    before_after = results.get("before_after")
    cpu = [] if not before_after else [
        {"request": row["request"], "before_ms": row["before"]["cpu_ms_per_request"],
         "after_ms": row["after"]["cpu_ms_per_request"], "ratio": row["cpu_ratio"],
         "before_rps": row["before"]["rps"], "after_rps": row["after"]["rps"],
         "goal": f"<= {BEFORE_CPU_FRACTION:g}", "met": row["cpu_ratio"] <= BEFORE_CPU_FRACTION}
        for row in before_after["table"]]
    f = figures(results)
    rps, ms = f["peak_rps"], f["cpu_ms_per_request"]
    torch = [row("/predict PNG peak throughput / torch baseline's (same architecture)", None,
                 rps["predict_png"] / rps["torch_predict_png"], ">=", ISSUE33_TORCH_MULTIPLE),
             row("the same from CPU per request at the highest concurrency (torch's / this server's)", None,
                 ms["torch_predict_png"] / ms["predict_png"], ">=", ISSUE33_TORCH_MULTIPLE),
             row("cold start to first 200 from /predict / torch baseline's", None,
                 f["cold_start_s"]["server"] / f["cold_start_s"]["torch"], "<=", COLD_START_FRACTION)]
    return {"issue": 33,
            "peers": {**peers, "rows": [r for r in peers["rows"] if r["connections"] in ISSUE33_CONNECTIONS]},
            "before_after": {k: before_after[k] for k in ("before", "after", "date", "workers", "connections", "rounds",
                                                          "seconds", "pythons")} if before_after else None,
            "cpu": cpu, "torch": torch}


def targets(results: dict, baseline: Path = BASELINE, peers_file: Path | None = None) -> dict:
    """Issue 19's and issue 33's targets for one run: against the frozen before run, with the peers' file when there is one."""
    peers = json.loads(peers_file.read_text()) if peers_file and peers_file.exists() else None
    source = os.path.relpath(peers_file, BASELINE.parents[1]) if peers_file else ""
    evaluated = evaluate(figures(results), json.loads(baseline.read_text()), peers, source)
    evaluated["issue33"] = issue33(results, evaluated["peers"])
    return evaluated
