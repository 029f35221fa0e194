"""Keeping every worker's models in step: a shared state file, and the optional poll.

Each worker is its own process with its own sessions. The worker that handles a load or unload
request does it, then records it in `<MODEL_SYNC_DIR>/models.json` (a generation number per
model). A daemon thread in every worker stats that file twice a second (cheap) and, when it
changed, repeats the loads and unloads it has not applied yet. The same thread runs the poll.
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

from .errors import ServingError
from .registry import ModelRegistry

log = logging.getLogger(__name__)

STATE_FILE = "models.json"
LOCK_FILE = "models.lock"
CHECK_SECONDS = 0.5  # how often each worker looks at the state file: one stat() call


class ModelSync:
    """One worker's side of the shared model state, and its watcher thread."""

    def __init__(self, repository: ModelRegistry, directory: str | Path | None, poll_seconds: float = 0.0) -> None:
        self.repository = repository
        self.directory = Path(directory) if directory else None
        self.poll_seconds = poll_seconds
        self.applied: dict[str, int] = {}  # model name -> the generation this worker has applied
        self._seen_stamp: tuple | None = None
        self._last_poll = time.monotonic()
        self._thread: threading.Thread | None = None

    @property
    def needed(self) -> bool:
        return self.directory is not None or self.poll_seconds > 0

    def start(self) -> None:
        """Start the watcher thread (a daemon: it ends with the worker)."""
        if self.needed and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="model-sync", daemon=True)
            self._thread.start()

    def announce(self, name: str, action: str) -> None:
        """Tell the other workers this one has just done `action` ("load" or "unload") on `name`."""
        if self.directory is None:
            return
        with self._locked():
            state = self._read()
            state["generation"] += 1
            state["models"][name] = {"action": action, "generation": state["generation"]}
            temporary = self.directory / f".{STATE_FILE}.{os.getpid()}"
            temporary.write_text(json.dumps(state))
            self.applied[name] = state["generation"]  # before the file changes: not this worker's news
            os.replace(temporary, self.directory / STATE_FILE)  # readers see the old or the new file

    def tick(self) -> None:
        """Apply what other workers announced; rescan the repository when a poll is due."""
        if self.directory is not None:
            self.check()
        if self.poll_seconds > 0 and time.monotonic() - self._last_poll >= self.poll_seconds:
            self._last_poll = time.monotonic()
            self.repository.refresh()

    def check(self) -> None:
        """Repeat the loads and unloads announced since the last look; one stat() when none."""
        try:
            stat = (self.directory / STATE_FILE).stat()
        except FileNotFoundError:
            return
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._seen_stamp:
            return
        self._seen_stamp = stamp
        for name, entry in sorted(self._read()["models"].items(), key=lambda item: item[1]["generation"]):
            if entry["generation"] > self.applied.get(name, 0):
                self.applied[name] = entry["generation"]
                self._apply(name, entry["action"])

    def _apply(self, name: str, action: str) -> None:
        log.info("another worker did %s of model %s: doing the same here", action, name)
        try:
            if action == "unload":
                self.repository.unload_model(name)
            else:
                self.repository.load_model(name, retry_failed=False)
        except ServingError as err:  # e.g. the folder was removed meanwhile
            log.warning("could not %s model %s here: %s", action, name, err.message)

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
