"""One worker's gRPC server: started after the fork, over the worker's own registry."""
from __future__ import annotations

import logging
import os
import socket
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import grpc

from ..limits.budget import MemoryBudget
from ..runtime.model_sync import ModelSync
from ..runtime.registry import ModelRegistry
from .service import InferenceService, generic_handler

log = logging.getLogger(__name__)


CONNECTION_AGE_MS = 5_000


class GrpcBindError(RuntimeError):
    """The gRPC port could not be opened (taken by another program, or not allowed)."""


def start(registry: ModelRegistry, sync: ModelSync, memory: MemoryBudget, settings: Mapping[str, Any]) -> grpc.Server:
    """Serve `inference.GRPCInferenceService` on HOST:GRPC_PORT with THREADS threads.

    Messages over MAX_CONTENT_LENGTH are refused as HTTP bodies are, and inference holds the
    worker's `memory` budget as over HTTP (one budget per worker for both). SO_REUSEPORT lets every
    worker (and, during a reload, the old and the new ones) listen on the same port; the kernel
    spreads connections among them. The main process holds the port for them (server/lifecycle.py,
    `claim_ports`): another server started on it stops at once, and never joins.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings["THREADS"], thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", settings["MAX_CONTENT_LENGTH"]),
            ("grpc.max_send_message_length", -1),  # answers are not limited over HTTP either
            ("grpc.so_reuseport", 1),
            # Every connection is told to go (an HTTP/2 GOAWAY: calls in flight finish, new ones go
            # to a fresh connection, which the kernel may give another worker) after about this
            # long. That rebalances long-lived channels over the workers, and lets a stopping
            # worker see its clients off without cancelling a call (see drain()).
            ("grpc.max_connection_age_ms", CONNECTION_AGE_MS),
            ("grpc.max_connection_age_grace_ms", 60_000),
        ],
    )
    server.add_generic_rpc_handlers((generic_handler(InferenceService(registry, sync, memory, settings)),))
    host = settings["HOST"]
    address = f"[{host}]:{settings['GRPC_PORT']}" if ":" in host else f"{host}:{settings['GRPC_PORT']}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as err:
        raise GrpcBindError(f"cannot listen for gRPC on {address} ({err}); free the port or set GRPC_PORT (0 = off)") from None
    server.start()
    log.info("gRPC (inference.GRPCInferenceService) listening on %s", address)
    return server


def drain(server: grpc.Server, port: int, timeout: float) -> dict[str, float]:
    """Stop `server` without losing a call: no new connections, clients seen off, calls finished.

    grpc's own stop() cancels the calls that reach it after it began but before the client heard
    of it (one or two per worker under load), so first this worker's listening socket is closed
    (the kernel sends new connections to the other workers on the port), then every open
    connection is left to reach its age and be told to go, and only then does stop() wait for
    what is left in flight. Returns how long each step took.
    """
    started = time.monotonic()
    listening, _ = _sockets_on(port)
    for fd in listening:
        _close_under_grpc(fd)
    closed = time.monotonic()
    while _sockets_on(port)[1] and time.monotonic() - started < timeout:
        time.sleep(0.05)
    drained = time.monotonic()
    server.stop(grace=max(1.0, timeout - (drained - started))).wait()
    return {"connections_seconds": round(drained - closed, 2), "stop_seconds": round(time.monotonic() - drained, 2)}


def _close_under_grpc(fd: int) -> None:
    """Close the listening socket on `fd` (it leaves the port's SO_REUSEPORT group) without gRPC noticing.

    A placeholder socket takes the descriptor's number, so the listener's last reference goes: the
    kernel drops a closed socket from gRPC's epoll set silently, and stop() later closes the
    placeholder. Shutting the listener down instead woke gRPC's acceptor, whose accept4() then
    failed, logging "E... Closing acceptor. Failed accept4: Invalid argument" on every clean stop.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as placeholder:
        os.dup2(placeholder.fileno(), fd, inheritable=False)


def _sockets_on(port: int) -> tuple[list[int], list[int]]:
    """This process's TCP sockets on local `port`: (listening, connected) file descriptors."""
    listening, connected = [], []
    try:
        names = os.listdir("/proc/self/fd")
    except FileNotFoundError:  # not Linux: drain() falls back to gRPC's own stop
        return listening, connected
    for name in names:
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as sock:
                if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                    continue
                if sock.getsockname()[1] != port:
                    continue
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    listening.append(fd)
                else:
                    sock.getpeername()  # OSError for the shut listener, which is connected to nothing
                    connected.append(fd)
        except OSError:  # closed meanwhile, not connected, or not a socket we can read
            continue
    return listening, connected
