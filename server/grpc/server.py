"""One gunicorn worker's gRPC server: started after the fork, over the worker's own registry."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import grpc

from ..model_sync import ModelSync
from ..registry import ModelRegistry
from .service import InferenceService, generic_handler

log = logging.getLogger(__name__)


class GrpcBindError(RuntimeError):
    """The gRPC port could not be opened (taken by another program, or not allowed)."""


def start(registry: ModelRegistry, sync: ModelSync, settings: Mapping[str, Any]) -> grpc.Server:
    """Serve `inference.GRPCInferenceService` on HOST:GRPC_PORT with THREADS threads.

    Messages over MAX_CONTENT_LENGTH are refused as HTTP bodies are. SO_REUSEPORT lets every
    worker (and, during a reload, the old and the new ones) listen on the same port; the kernel
    spreads connections among them.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings["THREADS"], thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", settings["MAX_CONTENT_LENGTH"]),
            ("grpc.max_send_message_length", -1),  # answers are not limited over HTTP either
            ("grpc.so_reuseport", 1),
        ],
    )
    server.add_generic_rpc_handlers((generic_handler(InferenceService(registry, sync, settings)),))
    host = settings["HOST"]
    address = f"[{host}]:{settings['GRPC_PORT']}" if ":" in host else f"{host}:{settings['GRPC_PORT']}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as err:
        raise GrpcBindError(f"cannot listen for gRPC on {address} ({err}); free the port or set GRPC_PORT (0 = off)") from None
    server.start()
    log.info("gRPC (inference.GRPCInferenceService) listening on %s", address)
    return server
