"""Keeping every worker's models in step: a shared state file, each worker's acknowledgement, the optional poll.

Each worker is its own process with its own sessions (Granian's workers, or any processes that share
MODEL_SYNC_DIR). The worker that handles a load or unload request does it, then records it in
`<MODEL_SYNC_DIR>/models.json` (a generation number per model). A daemon thread in every worker stats
that file ten times a second (cheap) and, when it changed, repeats the loads and unloads it has not
applied yet, then writes the generation it has reached to `<MODEL_SYNC_DIR>/workers/<pid>`. The
request that announced a change answers once every live worker's file has reached its generation,
or with `NotEveryWorker` (504) after MODEL_SYNC_TIMEOUT seconds. The same thread runs the poll.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import InvalidInput, NotEveryWorker, ServingError
from .registry import ModelRegistry

log = logging.getLogger(__name__)

STATE_FILE = "models.json"
LOCK_FILE = "models.lock"
WORKERS_FOLDER = "workers"
# How often each worker looks at the state file: one stat() call. A load or unload answers when
# every worker has applied it, so this is also the most a worker adds to that answer's wait.
CHECK_SECONDS = 0.1


class ModelSync:
    """One worker's side of the shared model state, and its watcher thread."""

    def __init__(self, repository: ModelRegistry, directory: str | Path | None, poll_seconds: float = 0.0,
                 timeout: float = 30.0) -> None:
        self.repository = repository
        self.directory = Path(directory) if directory else None
        self.poll_seconds = poll_seconds
        self.timeout = timeout  # how long an announcing request waits for the other workers
        self.applied: dict[str, int] = {}  # model name -> the generation this worker has applied
        self.problems: dict[str, str] = {}  # model name -> why its last change announced by another worker failed here
        self._seen_stamp: tuple | None | str = "not yet"  # the state file's (inode, mtime, size) at the last look
        self._last_poll = time.monotonic()
        self._thread: threading.Thread | None = None
        self._checking = threading.Lock()  # the watcher and an announcing request thread apply in turn

    @property
    def needed(self) -> bool:
        return self.directory is not None or self.poll_seconds > 0

    def start(self) -> None:
        """Join the workers (the announcing ones wait for this one from now on), apply what was announced
        before, and start the watcher thread (a daemon: it ends with the worker)."""
        if self.needed and self._thread is None:
            if self.directory is not None:
                # Join first, then catch up here rather than in the watcher's first look: an announcement
                # made before joining was not waited for, and this worker serves as soon as start() returns.
                self._acknowledge(0)
                self.check()
            self._thread = threading.Thread(target=self._watch, name="model-sync", daemon=True)
            self._thread.start()

    def announce(self, name: str, action: str) -> int:
        """Tell the other workers this one has just done `action` ("load" or "unload") on `name`;
        the generation that names it (0 with no MODEL_SYNC_DIR)."""
        if self.directory is None:
            return 0
        with self._locked():
            state = self._read()
            state["generation"] += 1
            state["models"][name] = {"action": action, "generation": state["generation"]}
            temporary = self.directory / f".{STATE_FILE}.{os.getpid()}"
            temporary.write_text(json.dumps(state))
            self.applied[name] = state["generation"]  # before the file changes: not this worker's news
            self.problems.pop(name, None)  # this worker's own outcome is its request's answer
            os.replace(temporary, self.directory / STATE_FILE)  # readers see the old or the new file
        self.check()  # this worker's own acknowledgement (and any announcement it had not applied yet)
        return state["generation"]

    def wait_for_workers(self, generation: int, name: str, what: str) -> None:
        """Return once every live worker has applied `generation`; NotEveryWorker after the timeout, and
        InvalidInput when a worker could not apply `what` (the change of model `name`)."""
        if self.directory is None or generation <= 0:
            return
        timeout = self.timeout
        deadline = time.monotonic() + timeout
        while True:
            workers = self._live_workers()
            behind = sorted(pid for pid, entry in workers.items() if entry.get("generation", 0) < generation)
            total = len(workers)
            if not behind:
                failed = {pid: entry["problems"][name] for pid, entry in sorted(workers.items())
                          if pid != os.getpid() and name in entry.get("problems", {})}
                if failed:
                    raise InvalidInput(
                        f"{what} is done in this worker, but {len(failed)} of {total} worker processes could not: "
                        + "; ".join(f"pid {pid}: {reason}" for pid, reason in failed.items())
                        + ". They keep serving what they served before")
                return
            if time.monotonic() >= deadline:
                raise NotEveryWorker(
                    f"{what} is done in this worker, but {len(behind)} of {total} worker processes "
                    f"(pid {', '.join(map(str, behind))}) did not apply it within {timeout:g} s "
                    "(MODEL_SYNC_TIMEOUT): they will as soon as they can; until then requests may still see "
                    "the previous state. Check GET /v2/models/<name> again, or send the same request again"
                )
            time.sleep(0.02)

    def _live_workers(self) -> dict[int, dict]:
        """Every live worker's acknowledgement by pid. A worker that has exited is forgotten (its file removed)."""
        workers = {}
        for path in (self.directory / WORKERS_FOLDER).glob("*"):
            if not path.name.isdigit():
                continue
            try:
                entry = json.loads(path.read_text())
            except FileNotFoundError:
                continue
            except ValueError:  # being replaced: os.replace makes this rare; look again next time
                entry = {"generation": 0, "started": None}
            pid = int(path.name)
            if not _alive(pid, entry.get("started")):
                path.unlink(missing_ok=True)
                continue
            workers[pid] = entry
        return workers

    def _acknowledge(self, generation: int) -> None:
        """Write the generation this worker has applied, for the announcing workers to see."""
        folder = self.directory / WORKERS_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        temporary = folder / f".{pid}.tmp"
        temporary.write_text(json.dumps({"generation": generation, "started": _started(pid), "problems": self.problems}))
        os.replace(temporary, folder / str(pid))

    def tick(self) -> None:
        """Apply what other workers announced; rescan the repository when a poll is due."""
        if self.directory is not None:
            self.check()
        if self.poll_seconds > 0 and time.monotonic() - self._last_poll >= self.poll_seconds:
            self._last_poll = time.monotonic()
            self.repository.refresh()

    def check(self) -> None:
        """Repeat the loads and unloads announced since the last look, then acknowledge the generation
        reached; one stat() when nothing changed."""
        with self._checking:
            try:
                stat = (self.directory / STATE_FILE).stat()
            except FileNotFoundError:
                stat = None
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size) if stat else None
            if stamp == self._seen_stamp:
                return
            self._seen_stamp = stamp
            state = self._read()
            for name, entry in sorted(state["models"].items(), key=lambda item: item[1]["generation"]):
                if entry["generation"] > self.applied.get(name, 0):
                    self.applied[name] = entry["generation"]
                    self._apply(name, entry["action"])
            self._acknowledge(state["generation"])

    def _apply(self, name: str, action: str) -> None:
        log.info("another worker did %s of model %s: doing the same here", action, name)
        self.problems.pop(name, None)
        try:
            if action == "unload":
                self.repository.unload_model(name)
            else:
                failures = self.repository.load_model(name, retry_failed=False)
                if failures:
                    self.problems[name] = "; ".join(f"version {f.version}: {f.reason}" for f in failures)
        except ServingError as err:  # e.g. the folder was removed meanwhile
            log.warning("could not %s model %s here: %s", action, name, err.message)
            self.problems[name] = err.message

    def _read(self) -> dict:
        try:
            state = json.loads((self.directory / STATE_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return {"generation": 0, "models": {}}
        return state

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock, so two workers' announcements never overwrite each other."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _watch(self) -> None:
        while True:
            time.sleep(CHECK_SECONDS)
            try:
                self.tick()
            except Exception:  # keep watching: a bad moment on disk must not end reloads for good
                log.exception("model sync check failed; trying again in %.1fs", CHECK_SECONDS)


def _started(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat): tells a reused pid apart."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, started: int | None) -> bool:
    """Whether the worker that wrote an acknowledgement as `pid`, started at `started`, still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: not one of ours
        return False
    return started is None or _started(pid) in (None, started)
