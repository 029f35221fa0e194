"""docs/results/benchmarks.md from one run's results: every figure in it comes from benchmarks.json."""
from __future__ import annotations

from bench.results import MB, TRIVIAL_FRACTION, cpu_per_request, inference_ms, mean_worker_kib, series
from bench.torch_app import architecture


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mb(n_bytes: float) -> str:
    return f"{n_bytes / MB:,.0f} MB"


def kib_mb(kib: float) -> str:
    return f"{kib * 1024 / MB:.0f} MB"


def _layer(serve_versions: dict) -> tuple[str, str]:
    """The HTTP layer of a run (package, and how the apps ran under it): runs before Granian have no granian version."""
    if serve_versions.get("granian"):
        return "granian", "Granian's WSGI interface with the server's own launcher (`server/lifecycle.py`; the floor and the torch baseline as noted)"
    return "gunicorn", "gunicorn with the server's own `server/gunicorn_conf.py` (gthread)"


def header(r: dict) -> str:
    m, v = r["machine"], r["versions"]
    serve, torch = v["serve"], v["torch_baseline"]
    return f"""# Benchmarks

Written by `make bench` (bench/run.py) on {r['date']}, in one run of {r['elapsed_s']:.0f} s; every
figure below comes from that run ([benchmarks.json](benchmarks.json) holds them all). Do not edit
by hand: run `make bench` again.

**Machine**: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB memory, Linux {m['kernel']}
(AVX-512: {'yes' if m['avx512'] else 'no'}, AMX: {'yes' if m['amx'] else 'no'}); load average at
the start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}. No GPU.

**Versions**: Python {m['python']}; serve environment flask {serve.get('flask')}, {_layer(serve)[0]}
{serve.get(_layer(serve)[0])}, onnxruntime {serve.get('onnxruntime')}, numpy {serve.get('numpy')}, Pillow
{serve.get('pillow')}; torch baseline environment torch {torch.get('torch')}, flask {torch.get('flask')},
gunicorn {torch.get('gunicorn')}; load generator {v['wrk']}.

**Model**: `{r['model']['path']}` ({r['model']['bytes']:,} bytes, sha256 `{r['model']['sha256'][:16]}…`).
Torch baseline weights: {('`' + r['torch_checkpoint'] + '`') if r['torch_checkpoint'] else 'random (no checkpoint on disk; compute is the same)'}{torch_architecture(r)}.
"""


def torch_architecture(r: dict) -> str:
    """Which network the torch baseline ran (runs before 2026-11-30 do not say)."""
    config = r.get("torch_model_config")
    if config is None:
        return ""
    shape = ", ".join(f"{k} {v}" for k, v in architecture(config).items())
    source = "the checkpoint's, the same as" if r["torch_checkpoint"] else "built from"
    return f"; architecture {source} the served file's `model_config` metadata ({shape})"


def method(r: dict) -> str:
    s, m = r["settings"], r["method"]
    return f"""## Method

- Every app runs under {_layer(r['versions']['serve'])[1]} and `make serve`'s
  defaults: {s['WORKERS']} workers × {s['THREADS']} threads, `ORT_THREADS={s['ORT_THREADS']}`
  (the torch baseline gets `torch.set_num_threads({s['ORT_THREADS']})` from the same setting), on 127.0.0.1.
- **This server**: `python -m server` from `.venv-serve`. **Floor**: `bench/trivial_app.py`, Flask
  answering a constant JSON to `GET /`. **Baseline**: `bench/torch_app.py`, the same CNN
  (`training/model.py`) run by PyTorch inside a Flask app of the same design (same preprocessing from
  `server/image/digit.py`, same JSON answer, one log line per request), from `.venv-bench-torch`.
- Load: `wrk` with one thread and `harness/wrk_request.lua` (the body of each request read from a
  file), {m.get('tries', 1)} tries of {m['seconds']:g} s at each of {', '.join(map(str, m['concurrency']))} keep-alive
  connections, after a {m['warmup']:g} s unrecorded warm-up per endpoint. Each row is the try with the
  most requests/s; the others' req/s are shown beside it, and errors count every try. wrk opens its
  connections at once and a keep-alive connection stays with the worker that accepted it:
  in a try where one of the two workers took (nearly) all of them, one core idles and the rate halves
  (seen in about half the single tries of earlier runs, for every app alike). The best try is the
  app with its load spread over both workers, as a stream of new connections gets it. Every request carries the same real MNIST test digit
  (`tests/data/mnist_test_sample.npz`, image 0, a {m['digit_label']}); one checked request first must get
  HTTP 200. Errors = socket errors + HTTP 4xx/5xx answers (wrk counts those as status errors).
- Load generator check: the CPU time of wrk (from `getrusage` of the finished child) and of the
  server's master and workers (from `/proc/<pid>/stat`) over each run, shown as a share of one core.
- Memory: RSS (and PSS, shared pages split) of each worker from `/proc/<pid>/smaps_rollup`, once the
  workers have settled after start-up (idle) and after exactly {m['rss_requests']:,} `/predict` PNG requests
  from 8 connections (then the master's too). Cold start: from `Popen` to the first HTTP 200 on `/predict` (polled every
  10 ms), median of {m['cold_starts']} fresh starts with the page cache warm.
- Environment size: bytes of every file in the virtual environment, without `__pycache__`.
"""


def verdict(met: bool | None) -> str:
    return "reported" if met is None else "met" if met else "**missed**"


def figure(value: float | None) -> str:
    """A target's figure: three decimals for ratios and small values, fewer as they grow."""
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def ratio_table(rows: list[dict]) -> str:
    return table(["target", "before", "this run", "goal", ""],
                 [[t["target"], figure(t["before"]), figure(t["measured"]), t["goal"] or "—", verdict(t["met"])]
                  for t in rows])


def targets_section(r: dict) -> str:
    t = r["targets"]
    base = t["baseline"]
    same_run = base["date"] == r["date"]
    notes = []
    if same_run:
        notes.append("**This run is that before run**: each before and after below is the same figure.")
    if r["method"].get("quick"):
        notes.append("**A `--quick` run** (one try of a second per point, a few hundred requests before the memory "
                     "is read): it checks the machinery; its figures are not a measurement.")
    if base["machine"] != t["machine"]:
        notes.append(f"**Another CPU**: the before run ran on {base['machine']['cpu_model']} ({base['machine']['cores']} "
                     f"cores), this one on {t['machine']['cpu_model']} ({t['machine']['cores']} cores). Milliseconds "
                     "compare across CPUs only roughly; the ratios, and own work in units of the trivial endpoint's "
                     "CPU per request (last column of 1.), less so.")
    if base["settings"] != r["settings"]:
        notes.append("**Other settings**: the before run served with " + settings_text(base["settings"]) + ", this one "
                     "with " + settings_text(r["settings"]) + " (every app alike within each run).")
    if base["model_sha256"] != r["model"]["sha256"]:
        notes.append(f"The model served then (sha256 `{base['model_sha256'][:16]}…`) is not this run's: own work "
                     "subtracts each run's own inference of its own model, so it still compares.")
    return f"""## Targets (issue 19), as ratios from this run

**Before** is the `make bench` run of {base['date']} (docs/benchmarks.json as committed in `{base['commit']}`,
server code of `{base['code_commit']}`), the figures this comparison needs frozen in
`bench/baseline-issue19.json`.

{chr(10).join(f"- {note}" for note in notes)}

### 1. The server's own CPU work per request

{own_work_table(t['own_work'])}

Own work is the server CPU time per answered request at {max(r['method']['concurrency'])} connections, minus the trivial
endpoint's under the same HTTP layer, minus one in-process onnxruntime inference of the served model (1 thread,
batch 1, no HTTP): what parsing, decoding, preprocessing, JSON, logging and metrics cost. Goal: at most 1/3
of the before run's. The last column divides it by the trivial endpoint's CPU per request in the same run: less
tied to the CPU's speed than milliseconds, but it moves too when the HTTP layer under both changes.

### 2. Throughput against the trivial endpoint and the torch baseline

{ratio_table(t['throughput'])}

Throughput ratios compare each app's best requests/s over the concurrencies measured. The CPU rows compare
the server CPU time each answered request cost at the highest concurrency: on a CPU-bound machine throughput
is the inverse of it, and it moves much less than requests/s when other processes compete for the cores.

{ceiling(r)}

### 3. Peers: this server against the best of KServe and MLServer

{peers_part(t['peers'])}

### 4. Cold start and worker memory

{ratio_table(t['cold_start'])}

{ratio_table(t['memory'])}

Memory after {r['method']['rss_requests']:,} `/predict` PNG requests (before: after {base['rss_requests']:,}), mean of the
workers, from `/proc/<pid>/smaps_rollup`. PSS splits each shared page between the processes sharing it, so
what the workers share (imported in the master before the fork) shows as PSS below RSS. Issue 19 sets no
figure for memory: it asks for sharing where it can be, with PSS reported beside RSS.

### Issue 7's targets still standing

{ratio_table(t['issue7'])}

Issue 7's throughput (0.6 × trivial, 2 × torch) and cold-start (0.5 × torch) targets are replaced by issue
19's above.
"""


def issue33_section(r: dict) -> str:
    t = r["targets"].get("issue33")
    if not t:
        return ""
    cpu = t["cpu"]
    labels = {"v2_infer_binary": "v2 infer binary", "v2_infer_json": "v2 infer JSON", "predict_png": "/predict PNG"}
    ba = t["before_after"]
    if ba:
        cpu_part = (table(["request", f"`{ba['before']}` CPU ms/req", "this tree CPU ms/req", "this / before", "goal", "",
                           "req/s: before → this tree"],
                          [[labels[c["request"]], f"{c['before_ms']:.3f}", f"{c['after_ms']:.3f}", f"{c['ratio']:.2f}",
                            c["goal"], verdict(c["met"]), f"{c['before_rps']:,.0f} → {c['after_rps']:,.0f}"] for c in cpu])
                    + f"\n\n`bench/before_after.py` (bench/ab.py's method): server/ of `{ba['before']}` (main of 2026-11-30, "
                    f"gunicorn, from `{ba['pythons']['before']}`) and of this tree (Granian, `{ba['pythons']['after']}`), "
                    f"WORKERS={ba['workers']} each, the same model repository (so the same default model file), taking "
                    f"turns {ba['rounds']} times; per start each request gets a warm-up, then {ba['seconds']:g} s under wrk "
                    f"at {ba['connections']} connections; server CPU (main process + workers) per answered request, "
                    "medians of the rounds.")
    else:
        cpu_part = "Not measured in this run (`bench.run --before ''`)."
    return f"""## Targets (issue 33), as ratios from this run

### Against the servers users would pick instead (goal: >= 2 x the best of KServe and MLServer)

{peers_part(t['peers'])} Over gRPC the only peer is KServe's gRPC server (MLServer's is not measured here); the
gRPC load comes from bench/grpc_http.py's client processes (4 processes of threads, raw FP32 in
`raw_input_contents`), the HTTP load from wrk.

### Server CPU per request against `{ba['before'] if ba else 'e301823'}` (goal: <= 0.5 x)

{cpu_part}

### Against the torch-in-Flask baseline (same architecture)

{ratio_table(t['torch'])}
"""


def settings_text(settings: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in settings.items())


def own_work_table(rows: list[dict]) -> str:
    return table(["request", "server CPU ms/req", "− trivial's", "− inference", "= own work (ms)", "before (ms)",
                  "this run / before", "goal", "", "own work / trivial's CPU: before → this run"],
                 [[o["label"], f"{o['cpu_ms']:.3f}", f"{o['trivial_ms']:.3f}", f"{o['inference_ms']:.3f}",
                   f"{o['own_ms']:.3f}", f"{o['before_own_ms']:.3f}", f"{o['ratio']:.2f}", "<= 1/3", verdict(o["met"]),
                   f"{o['before_own_per_trivial']:.2f} → {o['own_per_trivial']:.2f}"] for o in rows])


def peers_part(p: dict) -> str:
    if p["status"] == "absent":
        return ("No `docs/results/benchmarks-peers.json`: `python -m bench.peers --out docs/results/benchmarks-peers.json`, then "
                "`python -m bench.report`, put the peers beside this run.")
    if p["status"] == "older":
        return (f"`{p['source']}` is from {p['date']}, older than this run: its figures are not mixed with this "
                "run's. `make bench` runs bench/peers.py after this report and renders the report again with it.")
    rows = [[row["label"], row["connections"], f"{row['server']['rps_median']:,.0f}",
             f"{row['server']['p50_ms']:.2f} / {row['server']['p99_ms']:.2f}",
             row["peer"]["server"] if row["peer"] else "none serves it",
             f"{row['peer']['rps_median']:,.0f}" if row["peer"] else "—",
             f"{row['peer']['p50_ms']:.2f} / {row['peer']['p99_ms']:.2f}" if row["peer"] else "—",
             figure(row["ratio"]), row["goal"], verdict(row["met"]) if row["peer"] else "—"] for row in p["rows"]]
    return (table(["request", "connections", "this server req/s", "p50 / p99 ms", "best peer", "its req/s",
                   "p50 / p99 ms", "this server / best peer", "goal", ""], rows)
            + f"\n\nFrom `{p['source']}` (`bench/peers.py`, {p['date']}): every server side by side in that run, "
            f"{p.get('rounds')} rounds of {p.get('seconds')} s, medians; this server's figures here are that run's, "
            "with WORKERS=2 like the peers, not the tables above. MLServer's REST side has no binary extension.")


def threads(count: int) -> str:
    return f"{count} thread" + ("" if count == 1 else "s")


def ceiling(r: dict) -> str:
    """What the model's own compute allows: trivial's CPU per request plus one inference."""
    trivial, png = cpu_per_request(r, "trivial", "trivial"), cpu_per_request(r, "server", "predict_png")
    ort_ms = inference_ms(r)
    best = trivial / (trivial + ort_ms)
    cap = ("" if best >= TRIVIAL_FRACTION else
           f":\nshort of issue 19's {TRIVIAL_FRACTION:g} × whatever the server does, which only a cheaper inference reaches")
    return f"""**What the CNN itself allows.** At {max(r['method']['concurrency'])} connections the trivial endpoint costs {trivial:.3f} ms of
server CPU per request and `/predict` PNG {png:.3f} ms. One inference of the CNN alone, in-process with
no HTTP, takes {ort_ms:.3f} ms (onnxruntime, {threads(r['settings']['ORT_THREADS'])}, batch 1). Even if parsing, preprocessing, JSON and
logging cost nothing, a `/predict` request would cost at least {trivial:.3f} + {ort_ms:.3f} ms, so on a
CPU-bound machine its throughput can reach at most **{best:.2f} ×** the trivial endpoint's{cap}.
The rest of the measured cost, {png - trivial - ort_ms:.3f} ms per request, is the server's own Python work
(multipart parsing, PNG decoding, preprocessing, JSON, logging, metrics); the profile below shows where
it goes."""


def load_section(r: dict) -> str:
    trivial = {run["connections"]: run["rps"] for run in r["trivial"]["load"]["trivial"]["runs"]}
    rows = []
    for app, request, label in series(r):
        for run in r[app]["load"][request]["runs"]:
            lat = run["latency_ms"]
            tries = "; ".join(f"{rps:,.0f}" for rps in run.get("tries_rps", [run["rps"]]))
            rows.append([label, run["connections"], f"{run['rps']:,.0f}", tries, f"{lat['p50']:.2f}", f"{lat['p90']:.2f}",
                         f"{lat['p99']:.2f}", run["errors"], f"{run['rps'] / trivial[run['connections']]:.2f}",
                         f"{run['wrk_cpu_share']:.0%}", f"{run['server_cpu_share']:.0%}",
                         f"{run['server_cpu_ms_per_request']:.3f}"])
    verdict = wrk_verdict(r)
    return f"""## Throughput and latency

{table(["app / request", "connections", "req/s", "every try's req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "× trivial",
        "wrk CPU", "server CPU", "server CPU ms/req"], rows)}

"× trivial" is the efficiency: this row's requests per second over the trivial endpoint's at the
same concurrency. CPU columns are shares of one core over the run ({r['machine']['cores']} cores = 200 %);
"server CPU ms/req" is the CPU time of the server's processes per answered request.

**Is wrk the bottleneck?** {verdict}

![throughput](benchmarks-throughput.png)

![latency](benchmarks-latency.png)

Bodies: {', '.join(f"{name} {s['request_bytes']:,} B" for name, s in r['server']['load'].items())}.
Answers to the digit (a {r['method']['digit_label']}): {answers(r)}.
"""


def answers(r: dict) -> str:
    """The label each image-API series answered its checked request with."""
    return ", ".join(f"{label} → {r[app]['load'][request]['label']}" for app, request, label in series(r)
                     if r[app]["load"][request]["label"] is not None)


def wrk_verdict(r: dict) -> str:
    """Whether the load generator could have limited the figures, from the CPU each side used."""
    runs = [(label, run) for app, request, label in series(r) for run in r[app]["load"][request]["runs"]]
    label, worst = max(runs, key=lambda pair: pair[1]["wrk_cpu_share"])
    saturated = [run["server_cpu_share"] for _, run in runs if run["connections"] == max(r["method"]["concurrency"])]
    cores = r["machine"]["cores"]
    text = (f"wrk used at most {worst['wrk_cpu_share']:.0%} of one core (\"{label}\" at {worst['connections']} "
            f"connections, {worst['rps']:,.0f} req/s, while the server used {worst['server_cpu_share']:.0%}); at "
            f"{max(r['method']['concurrency'])} connections the server's processes used "
            f"{min(saturated):.0%} to {max(saturated):.0%} of the {cores * 100} % the machine has.")
    others = sorted(run.get("other_cpu_share", 0.0) for _, run in runs)
    text += (f" Everything else on the machine (other processes, the kernel) used a median {others[len(others) // 2]:.0%} "
             f"and at most {others[-1]:.0%} of one core during a run.")
    if worst["wrk_cpu_share"] < 0.25 and min(saturated) > 0.75 * cores:
        return "No. " + text + " The server, not wrk, held the CPU."
    return "Possibly: " + text + " Read the figures with that in mind."


def inprocess_section(r: dict) -> str:
    rows = []
    engines = (("ort", "onnxruntime (server.runtime.model.OnnxModel)"), ("ort_int8", "onnxruntime, int8 model"),
               ("torch", "PyTorch (DigitNet)"))
    for engine, label in [(e, label) for e, label in engines if e in r["inprocess"]]:
        for by_threads in r["inprocess"][engine]["results"]:
            for b in by_threads["batches"]:
                rows.append([label, by_threads["threads"], b["batch"], f"{b['us_per_image_p50']:,.1f}",
                             f"{b['us_per_call_p50']:,.0f}", f"{b['images_per_s']:,.0f}"])
    return "## The compute floor: the CNN in-process, no HTTP\n\n" + table(
        ["engine", "threads", "batch", "µs per image", "µs per call", "images/s"], rows) + "\n\n" + (
        "Median of repeated calls on real MNIST test digits. One thread is what each server worker uses.\n")


def footprint_section(r: dict) -> str:
    s, server, torch = r["sizes"], r["server"], r["torch"]
    rows = [
        ["installed environment", mb(s["serve"]["bytes"]), mb(s["torch"]["bytes"])],
        ["RSS per worker, idle", kib_mb(mean_worker_kib(server["rss_idle_kib"])), kib_mb(mean_worker_kib(torch["rss_idle_kib"]))],
        [f"RSS per worker after {r['method']['rss_requests']:,} requests", kib_mb(mean_worker_kib(server["rss_after_kib"])),
         kib_mb(mean_worker_kib(torch["rss_after_kib"]))],
        ["PSS per worker after them", kib_mb(mean_worker_kib(server["rss_after_kib"], "pss")),
         kib_mb(mean_worker_kib(torch["rss_after_kib"], "pss"))],
        ["cold start to first /predict (median)", f"{server['cold_start_s_median']:.2f} s", f"{torch['cold_start_s_median']:.2f} s"],
        ["cold starts measured", ", ".join(f"{x:.2f}" for x in server["cold_start_s"]), ", ".join(f"{x:.2f}" for x in torch["cold_start_s"])],
        ["RSS per worker at the end of the load runs", kib_mb(mean_worker_kib(server["rss_end_kib"])),
         kib_mb(mean_worker_kib(torch["rss_end_kib"]))],
        ["requests served by then", f"{server['requests_served']:,}", f"{torch['requests_served']:,}"],
        [f"time for the {r['method']['rss_requests']:,} requests", f"{server['rss_load']['seconds']} s ({server['rss_load']['failures']} failed)",
         f"{torch['rss_load']['seconds']} s ({torch['rss_load']['failures']} failed)"],
    ]
    largest = lambda d: ", ".join(f"{k} {v / MB:.0f}" for k, v in d["largest"].items())  # noqa: E731
    pinned = s.get("torch_pinned_closure")
    pinned_text = (f"The project pins torch=={pinned['version']} for training, the CUDA build: torch and what it requires "
                   f"take {mb(pinned['bytes'])} ({largest(pinned)} MB), against {mb(s['torch_cpu_closure']['bytes'])} for "
                   f"the CPU build {s['torch_cpu_closure']['version']} used here; a torch serving environment with the "
                   f"pinned build would be about {mb(s['torch']['bytes'] - s['torch_cpu_closure']['bytes'] + pinned['bytes'])}."
                   if pinned else "")
    return f"""## Footprint

{table(["", "this server (.venv-serve)", "torch baseline (.venv-bench-torch)"], rows)}

Largest packages, MB: serve — {largest(s['serve'])}; torch — {largest(s['torch'])}.
{pinned_text}

![footprint](benchmarks-footprint.png)
"""


def soak_section(r: dict) -> str:
    k = r["soak"]
    return f"""## Soak (issue 8)

`bench/soak.py`: {k['connections']} connections on `/predict` PNG for {k['seconds']:g} s after a
{k['warmup_seconds']:g} s warm-up. Requests: {k['load']['requests']:,} ({k['load']['rps']:,.0f}/s, p99
{k['load']['latency_ms']['p99']:.1f} ms); failed: **{k['failed_requests']}**. RSS of all workers:
{kib_mb(k['rss_kib_after_warmup'])} after warm-up, {kib_mb(k['rss_kib_end'])} at the end (growth
**{k['rss_growth']:+.1%}**, limit +10 %), peak {kib_mb(k['rss_kib_max'])}; workers replaced:
{k['workers_replaced'] or 'none'}. Result: **{'passed' if k['passed'] else 'FAILED'}**.

![soak](benchmarks-soak.png)
"""


def recovery_section(r: dict) -> str:
    k = r.get("recovery")
    if not k:  # runs before bench/recovery.py existed
        return ""
    met = k["recovered_fraction"] is not None and k["recovered_fraction"] >= k["goal_fraction"]
    return f"""## A worker killed under load

`bench/recovery.py`: {k['clients']} clients on `/predict` (pixels) against 2 workers; one worker is
killed with SIGKILL. Rate before: {k['rate_before_per_s']:,.0f}/s; best whole second 1-5 s after the
kill: {k['best_second_after_per_s']:,.0f}/s (**{k['recovered_fraction']}** of it, goal >= {k['goal_fraction']}:
{'met' if met else '**missed**'}); requests per second from 3 s before: {k['per_second_from_3_s_before']};
lost: {k['lost']}; worker replaced: {'yes' if k['replaced'] else '**no**'}.
"""


GENERIC_FRAMES = ("process ", "Thread.", "_worker (", "_WorkItem.run", "<module>", "_run_", "run (app/",
                  "Arbiter.", "BaseApplication.", "Application.run", "Worker.init_process", "ThreadWorker.init_process",
                  "ThreadWorker.run")


PROFILED = {"profile": "/predict PNG", "profile_v2_binary": "v2 infer binary"}


def profile_section(r: dict, key: str = "profile") -> str:
    p = r.get(key)
    if not p:
        return "" if key != "profile" else "## Profile\n\npy-spy was not installed; no profile in this run.\n"
    rows = [[f"`{name}`", f"{share:.1%}"] for name, share in p["inclusive"] if not name.startswith(GENERIC_FRAMES)][:20]
    own = [[f"`{name}`", f"{share:.1%}"] for name, share in p["self"]][:12]
    return f"""## Profile: where a worker's time goes under `{PROFILED[key]}`

py-spy sampled both workers for {p['seconds']} s (only threads holding the GIL, i.e. Python work; time
inside onnxruntime's C++ releases it) while wrk kept 32 connections busy ({p['load']['rps']:,.0f} req/s
during the profile, slowed by the sampling). {p['samples']:,} samples; share of them in each function
and everything it calls (`bench/profile.py`, raw stacks in `bench/out/`):

{table(["function (inclusive)", "share"], rows)}

{table(["function (self)", "share"], own)}
"""


def ab_section(r: dict) -> str:
    experiments = r.get("ab") or {}
    if not experiments:
        return ""
    rows = [[e["name"], e["request"], e["connections"], f"`{e['before']}`" + with_settings(e.get("before_settings")),
             e["after"] + with_settings(e.get("after_settings")), e["rounds"],
             f"{e['result_before']['rps']:,.0f} → {e['result_after']['rps']:,.0f} ({e['rps_change']:+.0%})",
             f"{e['result_before']['cpu_ms_per_request']:.3f} → {e['result_after']['cpu_ms_per_request']:.3f} "
             f"({e['cpu_change']:+.0%})", best_round(e), e["date"]] for e in experiments.values()]
    return ("## Changes the profile led to: before and after\n\n`bench/ab.py` runs the same request against the "
            "server at two revisions, alternating, medians of its rounds ([benchmarks-ab.json](benchmarks-ab.json)). "
            "Single rounds swing by up to 2x here (how wrk's connections happen to split between the two workers "
            "decides whether both cores are busy), so the best round of each side is shown too. The lean request path "
            "(issue 19: profile, kept changes, connection spread, cold start and memory, KServe and MLServer side by "
            "side) is in [benchmarks-lean.md](benchmarks-lean.md).\n\n"
            + table(["change", "request", "connections", "before", "after", "rounds", "req/s (median)",
                     "CPU ms/request (median)", "best round: req/s, CPU ms/request", "measured"], rows)
            + "\n")


def with_settings(settings: list[str] | None) -> str:
    """` with WORKERS=2`: the settings one side of a settings A/B ran with (nothing when none)."""
    return " with " + ", ".join(f"`{item}`" for item in settings) if settings else ""


def best_round(e: dict) -> str:
    """The fastest round of each side of an A/B experiment: req/s and CPU ms per request."""
    before, after = e["result_before"]["runs"], e["result_after"]["runs"]
    rps = [max(run["rps"] for run in side) for side in (before, after)]
    cpu = [min(run["server_cpu_ms_per_request"] for run in side) for side in (before, after)]
    return (f"{rps[0]:,.0f} → {rps[1]:,.0f} ({rps[1] / rps[0] - 1:+.0%}); "
            f"{cpu[0]:.3f} → {cpu[1]:.3f} ({cpu[1] / cpu[0] - 1:+.0%})")


def training_from_metadata(meta: dict) -> str:
    """What the model file itself says about its training, when the run's metrics.json is absent."""
    try:
        seconds, epochs, images = float(meta["training_seconds"]), int(meta["epochs_trained"]), int(meta["train_images"])
    except (KeyError, ValueError):
        return "No training metrics were found (runs/*/metrics.json, docs/training*.json or the model's metadata).\n"
    return (f"No run metrics on disk (runs/ is not committed); the model file's metadata says: {epochs} epochs over "
            f"{images:,} images in {seconds:,.0f} s on {meta.get('training_device', '?')} "
            f"({meta.get('training_precision', '?')}), {epochs * images / seconds:,.0f} images/s over the whole run, "
            "evaluation included.\n")


def extras_section(r: dict) -> str:
    parts = []
    training = r.get("training")
    if training:
        rows = [[e["epoch"], f"{e['train_images_per_s']:,.0f}", f"{e['epoch_s']:.0f}", f"{e['eval_accuracy']:.2%}"]
                for e in training["epochs"]]
        reach = ", ".join(f"{k} %: " + (f"epoch {v['epoch']}, {v['seconds']:.0f} s" if v else "not reached")
                          for k, v in training["time_to_accuracy"].items())
        speeds = [e["train_images_per_s"] for e in training["epochs"]]
        spread = ("; a spread that wide points at other work sharing the cores during that run, and the fastest "
                  "epochs are the closest to this CPU's own speed") if max(speeds) > 1.5 * min(speeds) else ""
        parts.append(f"""## Training speed (from `{training['source']}`)

Device {training.get('device', '?')}, precision {training.get('precision', '?')}, threads: {training.get('threads', '?')},
torch {training.get('torch_version', '?')}; {training.get('train_images', 0):,} training images, evaluated on
{training.get('eval_images', 0):,} {training.get('eval_set', '')} images. Time to accuracy: {reach}.
Training speed ranged from {min(speeds):,.0f} to {max(speeds):,.0f} images/s per epoch{spread}.
No GPU was lent for this run, so there is no GPU figure.

{table(["epoch", "train images/s", "epoch s", "eval accuracy"], rows)}
""")
    else:
        parts.append("## Training speed\n\n" + training_from_metadata(r["model"]["metadata"]))
    image = r.get("container_image")
    if image and image.get("size_bytes"):
        parts.append(f"""## Container image (from `docs/image-size.json`, measured {image['measured_at']} by `make image-test`)

`{image['image']}`: {mb(image['size_bytes'])} unpacked, {mb(image['compressed_bytes'] or 0)} compressed; ready
{image['ready_seconds']} s after start; worker RSS {', '.join(f'{x:.0f}' for x in image['worker_rss_mib'] or [])} MiB.
Compressed, it is {image.get('fraction_of_slimmest_big_server')} of the slimmest big server's image (the aim: 0.1).

{table(["image", "compressed"], [["this image", mb(image['compressed_bytes'] or 0)]]
       + [[f"{s['name']} (`{s['image']}`)", f"{s['note']} (published)"] for s in image.get("big_servers", [])])}
""")
    return "\n".join(parts)


def headline(r: dict) -> str:
    """The current figures docs/benchmarks.md quotes from the record (written there by bench/report.py)."""
    t = r["targets"].get("issue33") or {}
    peers = t.get("peers", {})
    lines = [f"From the `make bench` run of {r['date']} ([results/benchmarks.md](results/benchmarks.md), "
             f"[JSON](results/benchmarks.json)); model `{r['model']['path']}`, {r['machine']['cores']} cores, "
             f"WORKERS={r['settings']['WORKERS']} (the peers' comparison: 2 workers each).", ""]
    if peers.get("rows"):
        lines += [table(["request", "connections", "this server req/s", "p50 / p99 ms", "best peer", "its req/s",
                         "p50 / p99 ms", "ratio", "goal >= 2"],
                        [[w["label"], w["connections"], f"{w['server']['rps_median']:,.0f}",
                          f"{w['server']['p50_ms']:.2f} / {w['server']['p99_ms']:.2f}",
                          w["peer"]["server"] if w["peer"] else "—",
                          f"{w['peer']['rps_median']:,.0f}" if w["peer"] else "—",
                          f"{w['peer']['p50_ms']:.2f} / {w['peer']['p99_ms']:.2f}" if w["peer"] else "—",
                          figure(w["ratio"]), verdict(w["met"]) if w["peer"] else "—"] for w in peers["rows"]]), ""]
    else:
        lines += [f"Peers: no current peers' run beside this record ({peers.get('status', 'absent')}).", ""]
    labels = {"v2_infer_binary": "v2 infer binary", "v2_infer_json": "v2 infer JSON", "predict_png": "/predict PNG"}
    if t.get("cpu"):
        before = t["before_after"]["before"]
        lines += [table(["request", f"server CPU ms/req, `{before}`", "this tree", "ratio", "goal <= 0.5"],
                        [[labels[c["request"]], f"{c['before_ms']:.3f}", f"{c['after_ms']:.3f}", f"{c['ratio']:.2f}",
                          verdict(c["met"])] for c in t["cpu"]]), ""]
    if t.get("torch"):
        lines += [ratio_table(t["torch"]), ""]
    for key, label in PROFILED.items():
        p = r.get(key)
        if p:
            top = ", ".join(f"`{name}` {share:.1%}" for name, share in p["self"][:6])
            lines += [f"Profile after, {label} (py-spy, self time, top 6 of {p['samples']:,} samples): {top}.", ""]
    return "\n".join(lines).rstrip() + "\n"


def render(r: dict, plots: list[str]) -> str:
    sections = [header(r), issue33_section(r), targets_section(r), method(r), load_section(r), inprocess_section(r),
                profile_section(r), profile_section(r, "profile_v2_binary"), ab_section(r), footprint_section(r), soak_section(r), recovery_section(r),
                extras_section(r)]
    return "\n".join(section for section in sections if section)
