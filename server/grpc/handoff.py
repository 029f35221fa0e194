"""Handing gRPC's port from old workers to new ones on a HUP reload, with no call refused.

HTTP's listening socket belongs to the main process (server/lifecycle.py), so it stays open while workers come and go.
gRPC's cannot (gRPC and fork do not mix): each worker listens on the port itself (SO_REUSEPORT)
and a worker that stops closes its own socket. On HUP the main process forks a new worker and a few
seconds later tells the old one in its slot to stop; an old worker that closed its socket before a new one had loaded its
models and opened its own would leave the port with no listener, and calls would be refused.

So each worker has a marker file in a folder the master and workers share, by worker age (unique
in one master's life): `<age>.booting` (written by the master before the fork), `.serving` (the
worker listens), `.stopping` (the worker stops). A stopping worker keeps listening while no other
worker serves and one is booting, up to a deadline; a full shutdown has no booting worker and
stops at once. Standard library only: the main process, which must never load gRPC, uses it.
"""
from __future__ import annotations

import time
from pathlib import Path

FOLDER = "grpc-workers"
STATES = ("booting", "serving", "stopping")


def folder(sync_dir: str | Path) -> Path:
    return Path(sync_dir) / FOLDER


def mark(sync_dir: str | Path, age: int, state: str) -> None:
    """Record that worker `age` is now `state` (replacing its earlier marker)."""
    where = folder(sync_dir)
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{age}.{state}").touch()
    for other in STATES:
        if other != state:
            (where / f"{age}.{other}").unlink(missing_ok=True)


def forget(sync_dir: str | Path, age: int) -> None:
    """The worker has exited (the master calls this): drop its marker."""
    for state in STATES:
        (folder(sync_dir) / f"{age}.{state}").unlink(missing_ok=True)


def clear(sync_dir: str | Path) -> None:
    """A new master: markers of an earlier run are stale."""
    for stale in folder(sync_dir).glob("*.*"):
        stale.unlink(missing_ok=True)


def wait_for_successor(sync_dir: str | Path, age: int, timeout: float, interval: float = 0.05) -> float:
    """Block while worker `age` is the last one listening and another is booting; the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        states = [path.suffix[1:] for path in folder(sync_dir).glob("*.*") if path.stem != str(age)]
        if "serving" in states or "booting" not in states:
            break
        time.sleep(interval)
    return time.monotonic() - started
