"""The registry of loaded models: which versions of which model serve now, which failed and why.

Discovery (what is on disk) is `server/runtime/layout.py`; this module loads what it finds, swaps new
versions in atomically, and answers lookups, the repository index and readiness.
"""
from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

from ..errors import ModelNotFound, ModelNotReady
from .layout import MODEL_FILE, file_stamp, find_model_files, find_versions, valid_name, valid_version, version_stamp
from .load_reasons import failure_reason
from .model import OnnxModel
from .model_config import CONFIG_FILE, ModelConfigError, TritonModelConfig, read_model_config

log = logging.getLogger(__name__)


def latest(versions: Mapping[str, OnnxModel]) -> OnnxModel | None:
    """The highest version of a model's loaded `versions`, the one served by default."""
    return versions[max(versions, key=int)] if versions else None


@dataclass
class Failure:
    """A version found on disk that could not be served, and why."""

    name: str
    version: str
    reason: str
    # True while other versions of the model serve (a bad new version dropped in, at start-up or by
    # a reload): the server stays ready and the model answers from the versions it has.
    kept_serving: bool = False
    from_config: bool = False  # refused because the model's config.pbtxt was, not its file


class ModelRegistry:
    """Every loadable model version under one repository folder; the highest version serves by default."""

    def __init__(
        self, root: str | Path, ort_threads: int = 1, batch_defaults: tuple[int, int, float] = (1, 0, 0.0),
        on_run: Callable[[str, str, int, float], None] | None = None,
        on_load_failure: Callable[[str, str], None] | None = None, strict_readiness: bool = True,
    ) -> None:
        self.root = Path(root)
        self.strict_readiness = strict_readiness  # False: failed models do not make the server unready
        self.ort_threads = ort_threads
        self.batch_defaults = batch_defaults
        self.on_run = on_run  # handed to every model: (name, version, rows, seconds) of each run
        self.on_load_failure = on_load_failure  # (name, version) of each failed load
        # Replaced, never mutated, once serving (copy-on-write under _reload_lock): a request
        # that read it keeps a consistent view and its model object, even across a reload.
        self.models: dict[str, dict[str, OnnxModel]] = {}
        self.failures: dict[tuple[str, str], Failure] = {}  # replaced like `models`, never mutated
        self.unloaded: set[str] = set()  # unloaded by request: polling leaves them alone
        # Versions on disk that config.pbtxt's version_policy does not serve, and why (replaced like `failures`).
        self.not_selected: dict[tuple[str, str], str] = {}
        self._stamps: dict[tuple[str, str], tuple | None] = {}  # version folder's stamp at the last attempt
        self._config_stamps: dict[str, tuple[int, int] | None] = {}  # config.pbtxt's stamp at the last read
        self._reload_lock = threading.RLock()
        self._warned: set[str] = set()

    def load_all(self) -> None:
        """Load every model file found; one that fails is logged in one line and skipped."""
        for name, files in itertools.groupby(find_model_files(self.root), key=lambda found: found.name):
            on_disk = {version: path for _, version, path in files}
            self._config_stamps[name] = file_stamp(self.root.resolve() / name / CONFIG_FILE)
            try:
                config, selected = self._read_config(name, on_disk, kept_serving=False)
            except ModelConfigError:
                continue
            for version in selected:
                self.load_version(name, version, on_disk[version], config)
        with self._reload_lock:
            self._mark_kept_serving(self.models)

    def _read_config(self, name: str, on_disk: Mapping[str, Path],
                     kept_serving: bool) -> tuple[TritonModelConfig | None, list[str]]:
        """`name`'s config.pbtxt (None without one) and the versions on disk to load under it.

        A bad file refuses every version on disk, with its reason in the index and one log line;
        versions its version_policy does not serve are listed in the index with the policy.
        """
        model_dir = self.root.resolve() / name
        self.not_selected = {key: why for key, why in self.not_selected.items() if key[0] != name}
        try:
            config = read_model_config(model_dir)
        except ModelConfigError as err:
            reason = str(err).replace(f"{model_dir}/", f"{name}/").replace(str(model_dir), name)[:300]
            kept = " (the versions already loaded keep serving)" if kept_serving else ""
            log.error("model %s refused: %s%s", name, reason, kept)
            for version in on_disk:
                self._record_failure(name, version, reason, kept_serving, from_config=True)
            raise
        self.failures = {key: f for key, f in self.failures.items() if not (f.name == name and f.from_config)}
        if config is None:
            return None, sorted(on_disk, key=int)
        if config.ignored:
            self._warn_once(f"model {name}: {CONFIG_FILE} sets {', '.join(config.ignored)}, which this server "
                            "does not use", level=logging.INFO)
        policy = config.version_policy
        served = set(policy.select(on_disk))
        selected = [version for version in sorted(on_disk, key=int) if int(version) in served]
        rule = {"all": "all", "latest": f"latest {policy.num_versions}",
                "specific": f"specific {list(policy.versions)}"}[policy.kind]
        self.not_selected = {**self.not_selected, **{
            (name, version): f"not served: {CONFIG_FILE} version_policy {rule}"
            for version in on_disk if version not in selected}}
        return config, selected

    def _mark_kept_serving(self, serving: Mapping[str, Mapping[str, OnnxModel]]) -> None:
        """A failed version of a model that still serves other versions keeps the server ready."""
        self.failures = {key: replace(f, kept_serving=bool(serving.get(f.name))) for key, f in self.failures.items()}

    def load_version(self, name: str, version: str, path: Path, config: TritonModelConfig | None = None
                     ) -> OnnxModel | None:
        model = self._load_file(name, version, path, config=config)
        if model is not None:
            with self._reload_lock:
                self.models = {**self.models, name: {**self.models.get(name, {}), version: model}}
        return model

    def _load_file(self, name: str, version: str, path: Path, kept_serving: bool = False,
                   config: TritonModelConfig | None = None) -> OnnxModel | None:
        """Load and warm one file; on failure record why, log one line and return None."""
        self._stamps[(name, version)] = version_stamp(path)
        model = OnnxModel(name, version, path, ort_threads=self.ort_threads, batch_defaults=self.batch_defaults,
                          on_run=self.on_run, config=config)
        try:
            model.load()
        except Exception as err:  # onnxruntime raises many types; any of them means "skip it"
            # Clients see the reason (a 503 on the version): repository-relative paths only.
            reason = failure_reason(err, {
                str(folder): f"{name}/{version}" for folder in {path.parent, path.parent.resolve()}
            })
            kept = " (the versions already loaded keep serving)" if kept_serving else ""
            log.error("model %s version %s failed to load from %s: %s%s", name, version, path, reason, kept)
            self._record_failure(name, version, reason, kept_serving)
            return None
        self.failures = {key: f for key, f in self.failures.items() if key != (name, version)}
        log.info("loaded model %s version %s from %s", name, version, path)
        return model

    def _record_failure(self, name: str, version: str, reason: str, kept_serving: bool,
                        from_config: bool = False) -> None:
        failure = Failure(name, version, reason, kept_serving, from_config)
        self.failures = {**self.failures, (name, version): failure}
        if self.on_load_failure is not None:
            self.on_load_failure(name, version)

    def load_model(self, name: str, retry_failed: bool = True) -> list[Failure]:
        """(Re)load `name` from disk: new or changed versions are loaded and warmed, then switched in.

        Versions no longer on disk are dropped. A version that fails to load or to warm up is
        rejected and whatever it would have replaced keeps serving. Failed files are retried only
        when `retry_failed` or when they changed. Returns the failures of this model afterwards.
        """
        model_dir = self._model_dir(name)
        with self._reload_lock:
            on_disk = dict(find_versions(self.root.resolve(), model_dir, self._warn_once))
            if not on_disk:
                # The repository-relative path: a client learns nothing of the server's file system.
                raise ModelNotFound(f"no model {name!r} in the repository: expected {name}/<version>/{MODEL_FILE}")
            self.unloaded.discard(name)
            current = self.models.get(name, {})
            self._forget(name, keep=set(on_disk))
            config_stamp = file_stamp(model_dir / CONFIG_FILE)
            refused_before = any(f.name == name and f.from_config for f in self.failures.values())
            if refused_before and not retry_failed and self._config_stamps.get(name) == config_stamp:
                return [f for f in self.failures.values() if f.name == name]  # poll: a bad file is tried once
            self._config_stamps[name] = config_stamp
            try:
                config, selected = self._read_config(name, on_disk, kept_serving=bool(current))
            except ModelConfigError:  # refused: whatever served keeps serving
                versions = {v: m for v, m in current.items() if v in on_disk}
            else:
                versions = {}
                for version in selected:
                    path, old = on_disk[version], current.get(version)
                    unchanged = self._stamps.get((name, version)) == version_stamp(path) and (
                        old is None or old.config == config)
                    if unchanged and (old is not None or not retry_failed):
                        new = old
                    else:
                        new = self._load_file(name, version, path, kept_serving=bool(current), config=config) or old
                    if new is not None:
                        versions[version] = new
                if not versions and current:
                    # Not one version the policy selects loads (a broken file dropped in as the latest):
                    # what served keeps serving, as on Triton, rather than the model going dark.
                    versions = {v: m for v, m in current.items() if v in on_disk}
                self._forget(name, keep=set(selected) | set(versions))
            self._mark_kept_serving({**self.models, name: versions})
            self._switch(name, versions)
            return [f for f in self.failures.values() if f.name == name]

    def unload_model(self, name: str) -> None:
        """Stop serving every version of `name` until it is loaded again (polling leaves it alone)."""
        model_dir = self._model_dir(name)
        with self._reload_lock:
            if name not in self.names() and not model_dir.is_dir():
                raise ModelNotFound(f"unknown model {name!r}; known models: {', '.join(self.names()) or 'none'}")
            self.unloaded.add(name)
            self._forget(name, keep=set())
            self._switch(name, {})

    def refresh(self) -> None:
        """Poll mode: load new and changed versions of every model on disk, drop removed ones."""
        with self._reload_lock:
            on_disk = {name for name, _, _ in find_model_files(self.root, self._warn_once)}
            for name in sorted(on_disk - self.unloaded):
                self.load_model(name, retry_failed=False)
            for name in set(self.names()) - on_disk:
                log.info("model %s is no longer in the repository: unloading it", name)
                self._forget(name, keep=set())
                self._switch(name, {})

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model version on disk or served, as Triton's repository index lists them."""
        rows: dict[tuple[str, str], dict[str, str]] = {}
        for name, version, _ in find_model_files(self.root, self._warn_once):
            reason = "unloaded" if name in self.unloaded else self.not_selected.get((name, version), "not loaded")
            rows[(name, version)] = {"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason}
        for (name, version), failure in self.failures.items():
            rows[(name, version)] = {"name": name, "version": version, "state": "UNAVAILABLE", "reason": failure.reason}
        for name, versions in self.models.items():
            for version in versions:
                rows[(name, version)] = {"name": name, "version": version, "state": "READY", "reason": ""}
        listed = [rows[key] for key in sorted(rows, key=lambda key: (key[0], int(key[1])))]
        return [row for row in listed if row["state"] == "READY"] if ready_only else listed

    def _model_dir(self, name: str) -> Path:
        _check_name(name)
        return self.root.resolve() / name

    def _forget(self, name: str, keep: set[str]) -> None:
        """Drop failures and file stamps of `name`'s versions not in `keep`."""
        self.failures = {key: f for key, f in self.failures.items() if key[0] != name or key[1] in keep}
        self._stamps = {key: s for key, s in self._stamps.items() if key[0] != name or key[1] in keep}

    def _switch(self, name: str, versions: dict[str, OnnxModel]) -> None:
        """Serve exactly `versions` of `name` from now on: one reference swap, atomic for readers."""
        before = sorted(self.models.get(name, {}), key=int)
        models = {key: value for key, value in self.models.items() if key != name}
        if versions:
            models[name] = dict(versions)
        self.models = models
        after = sorted(versions, key=int)
        if after != before:
            log.info("model %s now serves versions [%s] (was [%s])", name, ", ".join(after), ", ".join(before))

    def _warn_once(self, message: str, level: int = logging.WARNING) -> None:
        """Warn about a skipped folder (or an ignored config field) once, not at every poll."""
        if message not in self._warned:
            self._warned.add(message)
            log.log(level, "%s", message)

    def names(self) -> list[str]:
        """Every model name known, served or failed."""
        return sorted(set(self.models) | {f.name for f in self.failures.values()})

    def get(self, name: str, version: str | None = None) -> OnnxModel:
        """The model `name` at `version` (the highest loaded one when None), or a 404/503 error."""
        _check_name(name)
        if version is not None and not valid_version(version):
            # Triton's words first, as its example clients look for them.
            raise ModelNotFound(f"failed to get model version from specified version string {version[:60]!r}: "
                                f"unknown version of model {name!r}, versions are numeric")
        versions = self.models.get(name, {})
        if not versions and name in self.unloaded:
            raise ModelNotReady(f"model {name!r} is unloaded: load it with POST /v2/repository/models/{name}/load")
        if version is None:
            if versions:
                return latest(versions)
        elif version in versions:
            return versions[version]
        if version is not None and (name, version) in self.not_selected:
            raise ModelNotFound(f"model {name!r} version {version} is {self.not_selected[(name, version)]}; "
                                f"loaded: {', '.join(sorted(versions, key=int)) or 'none'}")
        failed = [f for f in self.failures.values() if f.name == name and version in (None, f.version)]
        if failed:
            raise ModelNotReady(f"model {name!r} version {failed[0].version} is not ready: {failed[0].reason}")
        if version is None:
            # Triton's words first: its example clients check that the message starts with them.
            raise ModelNotFound(f"Request for unknown model {name!r}: not found; served models: {', '.join(self.names()) or 'none'}")
        raise ModelNotFound(f"model {name!r} has no version {version!r}; loaded: {', '.join(sorted(versions, key=int)) or 'none'}")

    @property
    def ready(self) -> bool:
        """Ready when at least one model serves and (with strict readiness, the default) every model
        with a failed version still serves."""
        if not self.strict_readiness:
            return bool(self.models)
        return bool(self.models) and all(f.kept_serving for f in self.failures.values())


def _check_name(name: str) -> None:
    """Refuse a name that is not a model folder's before it comes near the filesystem."""
    if not valid_name(name):
        raise ModelNotFound(f"unknown model {name!r}: names are letters, digits, '_', '-', '.'")
