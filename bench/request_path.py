"""The server's own work per request, in process: the WSGI app called directly, no HTTP, no load.

Builds the app as a server worker does (multiprocess metrics in a scratch folder, one log line
per request to a discarded stream), then calls it with a ready-made WSGI environ for each bench
request and reports the median and best microseconds per call, and the same minus the model's
own `predict` time. `--tree` imports `server/` from another folder (bench/ab.py extracts a git
revision into one), so two versions compare on this quiet, single-threaded measure:

    python -m bench.request_path --tree /tmp/before   # then without --tree, alternately
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = ("predict_png", "predict_pixels", "v2_infer_binary", "v2_infer_json")


def environ_for(spec, port: int = 8000) -> dict:
    """The WSGI environ gunicorn would build for `spec` (fresh body stream each call)."""
    path, _, query = spec.path.partition("?")
    environ = {
        "REQUEST_METHOD": spec.method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(port), "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "RAW_URI": spec.path,
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.input_terminated": True,
        "HTTP_HOST": f"127.0.0.1:{port}", "CONTENT_LENGTH": str(len(spec.body)),
    }
    for name, value in spec.headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value
    return environ


def call(app, base: dict, body: bytes) -> int:
    environ = dict(base)
    environ["wsgi.input"] = io.BytesIO(body)
    status = []
    chunks = app(environ, lambda s, h, exc_info=None: status.append(s))
    for _ in chunks:
        pass
    if hasattr(chunks, "close"):
        chunks.close()
    return int(status[0].split()[0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tree", type=Path, default=ROOT, help="folder whose server/ is imported")
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per request")
    parser.add_argument("--request", choices=REQUESTS, nargs="+", default=list(REQUESTS))
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() after create_app as well (the main process freezes what it imported before the fork)")
    parser.add_argument("--sort", default="tottime", help="cProfile's order: tottime or cumulative")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N",
                        help="instead of timing, print cProfile's N costliest functions (self time) per request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="bench-request-path-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
    os.environ["MODEL_SYNC_DIR"] = str(scratch / "sync")
    (scratch / "metrics").mkdir()
    (scratch / "sync").mkdir()
    os.environ["MODEL_REPOSITORY"] = str(args.repository.resolve())
    # As under `python -m server` (server/lifecycle.py): root logger at info, formatted, to a stream.
    handler = logging.StreamHandler(open(os.devnull, "w"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    sys.path.insert(0, str(args.tree.resolve()))
    sys.path.insert(1, str(ROOT))
    try:  # what the main process sets up before the workers fork (gunicorn_conf.py in trees before Granian)
        from server import lifecycle
    except ImportError:
        import server.gunicorn_conf  # noqa: F401
    else:
        lifecycle.quiet_log_records()
        lifecycle.preload_libraries()

    from harness import bodies
    from server.app import create_app

    from server.runtime.model import OnnxModel

    # The model's own share: every predict timed (patched before the app binds it anywhere).
    spent = []
    original = OnnxModel.predict

    def timed(self, *a, **k):
        started = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            spent.append(time.perf_counter() - started)

    OnnxModel.predict = timed
    app = create_app()
    if args.gc_freeze:
        import gc

        gc.freeze()
    specs = {s.name: s for s in bodies.server_requests("mnist", "input", "probabilities")}
    results = {}
    for name in args.request:
        spec = specs[name]
        base = environ_for(spec)
        for _ in range(200):
            assert call(app, base, spec.body) == 200, name
        if args.cprofile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.runcall(lambda: [call(app, base, spec.body) for _ in range(args.calls)])
            print(f"== {name}: {args.calls} calls", file=sys.stderr)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats(args.sort).print_stats(args.cprofile)
            continue
        durations = []
        spent.clear()
        for _ in range(args.calls):
            started = time.perf_counter()
            call(app, base, spec.body)
            durations.append(time.perf_counter() - started)
        inference = statistics.median(spent[-args.calls:]) if spent else 0.0
        results[name] = {
            "us_p50": round(statistics.median(durations) * 1e6, 1),
            "us_best": round(min(durations) * 1e6, 1),
            "predict_us_p50": round(inference * 1e6, 1),
            "own_us_p50": round((statistics.median(durations) - inference) * 1e6, 1),
        }
    print(json.dumps({"tree": str(args.tree), "calls": args.calls, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
