"""The box the server starts on: its memory and CPUs as its cgroup limits them, else the machine's.

Standard library only, read once: the defaults of WORKERS, THREADS and the per-worker memory
budget in `server/config.py` derive from it, so one set of defaults fits a 1 GB / 1 CPU VPS, a
container with `--memory 700m --cpus 1`, and a larger machine alike.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
MIB = 2**20
# cgroup v1 writes "no limit" as a huge page-aligned number.
NO_LIMIT = 2**60


@dataclass(frozen=True)
class Box:
    """Memory in bytes and CPUs (a fraction when a quota says so), and where each figure came from."""

    memory: int
    cpus: float
    memory_source: str
    cpus_source: str

    def describe(self) -> str:
        return (f"{self.memory / MIB:.0f} MiB of memory ({self.memory_source}), "
                f"{self.cpus:g} CPU{'s' if self.cpus != 1 else ''} ({self.cpus_source})")


def cgroup_paths(proc_cgroup: Path = Path("/proc/self/cgroup")) -> dict[str, str]:
    """The process's cgroup path per v1 controller (each of a joint "cpu,cpuacct" too), and under "" its v2 path."""
    paths: dict[str, str] = {}
    try:
        for line in proc_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    except (OSError, ValueError):
        pass
    return paths


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ancestors(base: Path, path: str) -> list[Path]:
    """`base/path` and every folder above it up to `base`: a parent's limit binds its children too."""
    folder = base / path.strip("/")
    chain = [folder]
    while folder != base and base in folder.parents:
        folder = folder.parent
        chain.append(folder)
    return chain


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """The tightest memory limit of this process's cgroup and its parents (v2 memory.max, v1 limit_in_bytes)."""
    paths, limits = cgroup_paths(proc_cgroup), []
    if "memory" in paths:
        for folder in _ancestors(root / "memory", paths["memory"]):
            text = _read(folder / "memory.limit_in_bytes")
            if text and text.isdigit() and int(text) < NO_LIMIT:
                limits.append(int(text))
    if "" in paths:
        for folder in _ancestors(root, paths[""]):
            text = _read(folder / "memory.max")
            if text and text.isdigit():
                limits.append(int(text))
    return min(limits) if limits else None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota of this process's cgroup and its parents, in CPUs (v2 cpu.max, v1 cfs)."""
    paths, quotas = cgroup_paths(proc_cgroup), []
    if "cpu" in paths:  # a joint "cpu,cpuacct" hierarchy is mounted with a "cpu" link too
        for folder in _ancestors(root / "cpu", paths["cpu"]):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            if quota and period and quota.lstrip("-").isdigit() and int(quota) > 0 and int(period) > 0:
                quotas.append(int(quota) / int(period))
    if "" in paths:
        for folder in _ancestors(root, paths[""]):
            text = _read(folder / "cpu.max")
            if text and text.split()[0] != "max":
                quota, _, period = text.partition(" ")
                if quota.isdigit() and period.strip().isdigit() and int(period) > 0:
                    quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def machine_memory() -> int:
    """Physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def machine_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def detect() -> Box:
    """This process's box: the cgroup's limits where set and tighter than the machine, else the machine."""
    memory, memory_source = machine_memory(), "the machine"
    limit = cgroup_memory_limit()
    if limit is not None and limit < memory:
        memory, memory_source = limit, "cgroup limit"
    cpus, cpus_source = float(machine_cpus()), "the machine"
    quota = cgroup_cpu_quota()
    if quota is not None and quota < cpus:
        cpus, cpus_source = quota, "cgroup quota"
    return Box(memory, cpus, memory_source, cpus_source)


# Measured (docs/memory.md): an idle worker holds ~90 MiB with the digit models; the master ~30.
WORKER_IDLE = 100 * MIB
MASTER = 40 * MIB
# Of the box, this much is left to the kernel, page cache, sshd, nginx...
OTHERS_SHARE = 0.2
# A worker is worth starting only with room for at least this much request memory.
LEAST_BUDGET = 128 * MIB


def default_workers(box: Box) -> int:
    """One worker per CPU plus one (one computes while another reads or writes), as many as memory fits."""
    by_cpu = max(1, math.ceil(box.cpus)) + 1
    usable = box.memory * (1 - OTHERS_SHARE) - MASTER
    by_memory = max(1, int(usable // (WORKER_IDLE + LEAST_BUDGET)))
    return max(1, min(by_cpu, by_memory))


def default_memory_budget(box: Box, workers: int) -> int:
    """Bytes each worker may hold for large requests at once: its share of the box after the idle workers."""
    usable = box.memory * (1 - OTHERS_SHARE) - MASTER - workers * WORKER_IDLE
    return max(LEAST_BUDGET // 2, int(usable // max(workers, 1)))
