"""Peak memory of a worker under the largest request of each kind the limits allow, beside its idle RSS.

`python -m bench.memory` starts the server as `make serve` does, but with one worker, and for each
kind of request resets the worker's peak RSS (`/proc/<pid>/clear_refs`), sends the largest such
request once and reads the peak back (`VmHWM`) and the RSS after the answer. Writes
docs/memory.json and docs/memory.md. The requests and the measurement are harness/memory.py's: they
also feed the 1 GiB / 1 CPU test (tests/test_memory_limit.py, `make memory-test`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench.ab import extract, short_hash
from harness.memory import ROOT, measure, repository_without_row_limit

log = logging.getLogger(__name__)


# docs/memory.md's section on `make memory-test` (the normal requests' latency under the mix): written
# from that test's runs, not by this module, and kept when this module writes the file again.
KEPT_SECTION = ("<!-- memory-test:begin -->", "<!-- memory-test:end -->")


def kept_section(text: str) -> str:
    """The KEPT_SECTION of an earlier docs/memory.md, markers included ("" when it has none)."""
    begin, end = KEPT_SECTION
    start, stop = text.find(begin), text.find(end)
    return text[start:stop + len(end)] + "\n" if 0 <= start < stop else ""


def markdown(results: dict, kept: str = "") -> str:
    """docs/memory.md: the table of peaks beside the idle RSS (then `kept`, an earlier file's KEPT_SECTION)."""
    idle = results["idle_kib"] / 1024
    lines = [
        "# Peak memory of a worker, by request kind",
        "",
        "Written by `python -m bench.memory` (part of `make bench`): one worker of `python -m server` with",
        "the default settings otherwise; for each kind, the largest request the default limits allow is sent",
        "once and the worker's peak RSS (`VmHWM`, reset before each request) is read back.",
        "",
        f"Idle worker (after 20 normal requests): **{idle:.0f} MiB** RSS.",
        "",
        "`reserved` is what the server reserves of the worker's budget for the request's largest piece of",
        "work, estimated before the work starts (`server/limits/budget.py`); it must not be below `over idle`.",
        "",
        "| request | body | status | seconds | peak RSS MiB | over idle | reserved MiB | RSS after MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    before = {row["kind"]: row for row in results.get("before", {}).get("kinds", [])}
    for row in results["kinds"]:
        run = row["runs"][-1]
        lines.append(
            f"| {row['kind']} ({row['request']}) | {row['body_bytes'] / 2**20:.1f} MiB | {run['status']} | "
            f"{run['seconds']} | {row['peak_kib'] / 1024:.0f} | +{row['peak_kib'] / 1024 - idle:.0f} | "
            f"{row['reserved_bytes'] / 2**20:.0f} | {row['after_kib'] / 1024:.0f} |"
        )
    if before:
        old = results["before"]
        lines += [
            "", f"Before, the same requests to server/ at {old['revision']} (idle {old['idle_kib'] / 1024:.0f} MiB; "
            "its worker's memory only grows, so each peak includes what earlier requests left):", "",
            "| request | status | seconds | peak RSS MiB | RSS after MiB |", "| --- | ---: | ---: | ---: | ---: |",
        ]
        for kind, row in before.items():
            run = row["runs"][-1]
            lines.append(f"| {kind} | {run['status']} | {run['seconds']} | {row['peak_kib'] / 1024:.0f} | "
                         f"{row['after_kib'] / 1024:.0f} |")
    lines += ["", f"Date: {results.get('date', '?')}; machine: {results.get('machine', '?')}.", "",
              "All these kinds at once, beside normal requests, in a 1 GiB / 1 CPU cgroup: `make memory-test`;",
              "its memory figures are in [deploy.md](deploy.md#memory-under-the-largest-requests), the normal",
              "requests' latency under the mix below.", ""]
    return "\n".join(lines) + ("\n" + kept if kept else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repository", type=Path, default=None,
                        help="model repository (default: the committed one, mnist's row limit raised to what the body limit holds)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for memory.json and memory.md")
    parser.add_argument("--repeat", type=int, default=1, help="send each largest request this many times")
    parser.add_argument("--before", default="", metavar="REV",
                        help="also measure server/ at this git revision, for a before/after table")
    parser.add_argument("--dry-run", action="store_true", help="measure but write nothing")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a server setting for this run (e.g. for an A/B)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        repository = args.repository or repository_without_row_limit(Path(tmp))
        results = measure(repository, env, args.repeat)
        if args.before:
            results["before"] = measure(repository, env, args.repeat, extract(args.before, Path(tmp) / "before"))
            results["before"]["revision"] = short_hash(args.before)
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    results["env"] = env
    if not args.dry_run:
        (args.out / "memory.json").write_text(json.dumps(results, indent=1) + "\n")
        earlier = args.out / "memory.md"
        (args.out / "memory.md").write_text(markdown(results, kept_section(earlier.read_text()) if earlier.exists() else ""))
        log.info("wrote %s", args.out / "memory.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
