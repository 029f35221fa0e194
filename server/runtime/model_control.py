"""Triton's model repository extension without its transport: the index, load and unload.

What `POST /v2/repository/...` and the gRPC `Repository*` calls do, in one place: check the
parameters, change this worker's registry, and tell the other workers (`server/runtime/model_sync.py`).
Who may call load and unload is `server/access.py`'s question, asked by each transport first.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import InvalidInput
from .model_sync import ModelSync
from .registry import ModelRegistry


def index(registry: ModelRegistry, ready: Any = False) -> list[dict[str, str]]:
    """Every model version on disk or served (only READY ones when `ready`)."""
    if not isinstance(ready, bool):
        raise InvalidInput(f"'ready' must be true or false, received {ready!r}")
    return registry.index(ready_only=ready)


def load(registry: ModelRegistry, sync: ModelSync, name: str, parameters: Mapping[str, Any]) -> list[str]:
    """Load new or changed versions of `name` here and in every worker; the versions now served.

    Answers once every worker serves them (NotEveryWorker, a 504, after the sync's timeout)."""
    if parameters:
        raise InvalidInput(
            f"load parameters {sorted(parameters)} are not supported: put the file at "
            f"<repository>/{name}/<version>/model.onnx and send no parameters"
        )
    failures = registry.load_model(name)
    try:
        sync.wait_for_workers(sync.announce(name, "load"), name, f"the load of model {name!r}")
    except InvalidInput:  # another worker could not load it: said below when this one could not either
        if not failures:
            raise
    serving = sorted(registry.models.get(name, {}), key=int)
    if failures:
        rejected = "; ".join(f"version {f.version}: {f.reason}" for f in failures)
        raise InvalidInput(f"failed to load model {name!r} ({rejected}); serving versions: {', '.join(serving) or 'none'}")
    return serving


def unload(registry: ModelRegistry, sync: ModelSync, name: str, parameters: Mapping[str, Any]) -> None:
    """Stop serving every version of `name`, here and in every worker; answers once every worker has."""
    unsupported = sorted(set(parameters) - {"unload_dependents"})
    if unsupported:
        raise InvalidInput(f"unload parameters {unsupported} are not supported; only unload_dependents is")
    registry.unload_model(name)
    sync.wait_for_workers(sync.announce(name, "unload"), name, f"the unload of model {name!r}")
