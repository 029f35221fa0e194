"""v2 inference load over HTTP (binary tensors) and gRPC: streams in client processes, one MNIST digit again and again.

Each stream is a thread with its own connection (a keep-alive HTTP connection, or a gRPC channel: one
HTTP/2 connection); the streams run in up to 4 client processes so the client's GIL is not the limit.
The request bodies are made once. bench/grpc_http.py measures with it; tests/test_grpc.py checks it reaches both.
"""
from __future__ import annotations

import http.client
import itertools
import json
import multiprocessing
import statistics
import threading
import time

import numpy as np

from harness.procs import ROOT, ServerTree

SAMPLE = ROOT / "tests" / "data" / "mnist_test_sample.npz"
MODEL = "mnist"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
MAX_PROCESSES = 4


def digit_tensor() -> bytes:
    with np.load(SAMPLE) as sample:
        return (sample["images"][0].astype(np.float32) / 255.0).tobytes()


def http_body(raw: bytes) -> tuple[bytes, dict[str, str]]:
    """A v2 request with the binary tensor data extension, as tritonclient.http sends it."""
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


def grpc_body(raw: bytes) -> bytes:
    """A ModelInferRequest with the tensor in raw_input_contents, as tritonclient.grpc sends it."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 1, 28, 28])], raw_input_contents=[raw])
    return request.SerializeToString()


def _http_stream(port: int, until: float, latencies: list, errors: list, least: int = 0) -> None:
    body, headers = http_body(digit_tensor())
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for sent in itertools.count():
        if sent >= least and time.perf_counter() >= until:
            break
        started = time.perf_counter()
        try:
            connection.request("POST", f"/v2/models/{MODEL}/infer", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as err:
            errors.append(type(err).__name__)
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        if response.status == 200:
            latencies.append(time.perf_counter() - started)
        else:
            errors.append(f"status {response.status}")
    connection.close()


def _grpc_stream(port: int, until: float, latencies: list, errors: list, least: int = 0) -> None:
    import grpc

    body = grpc_body(digit_tensor())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out: no per-call protobuf work here
        for sent in itertools.count():
            if sent >= least and time.perf_counter() >= until:
                break
            started = time.perf_counter()
            try:
                call(body, timeout=30)
                latencies.append(time.perf_counter() - started)
            except grpc.RpcError as err:
                errors.append(str(err.code()))


def _client_process(transport: str, port: int, threads: int, start_at: float, seconds: float, results, least: int = 0) -> None:
    """One client process: `threads` streams from `start_at` (wall clock) for `seconds`, each sending at least `least` requests."""
    target = _http_stream if transport == "http" else _grpc_stream
    latencies: list[float] = []
    errors: list[str] = []
    time.sleep(max(0.0, start_at - time.time()))
    until = time.perf_counter() + seconds
    workers = [threading.Thread(target=target, args=(port, until, latencies, errors, least)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put((latencies, errors))


def load(transport: str, port: int, streams: int, seconds: float, server: ServerTree | None = None, least: int = 0) -> dict:
    """`streams` concurrent streams for `seconds` (each sending at least `least` requests, however slow the
    machine): requests a second, latency, server CPU a request."""
    processes = min(streams, MAX_PROCESSES)
    context = multiprocessing.get_context("spawn")  # gRPC and fork do not mix
    results = context.Queue()
    start_at = time.time() + 1.5  # every process has started its interpreter by then
    clients = [context.Process(target=_client_process, args=(
        transport, port, streams // processes + (index < streams % processes), start_at, seconds, results, least))
        for index in range(processes)]
    for client in clients:
        client.start()
    cpu_before = None
    if server is not None:
        time.sleep(max(0.0, start_at - time.time()))
        cpu_before = server.cpu_seconds()
    gathered = [results.get(timeout=seconds + 60) for _ in clients]
    cpu = server.cpu_seconds() - cpu_before if server is not None else None
    for client in clients:
        client.join(timeout=30)
    latencies = sorted(value for part, _ in gathered for value in part)
    errors = [error for _, part in gathered for error in part]
    count = len(latencies)
    percentile = (lambda q: round(latencies[min(count - 1, int(q * count))] * 1000, 2)) if count else (lambda q: None)
    return {
        "transport": transport, "streams": streams, "seconds": seconds, "requests": count,
        "rps": round(count / seconds, 1), "errors": len(errors), "error_kinds": sorted(set(errors))[:5],
        "latency_ms": {"p50": percentile(0.5), "p90": percentile(0.9), "p99": percentile(0.99),
                       "mean": round(statistics.fmean(latencies) * 1000, 2) if count else None},
        "server_cpu_ms_per_request": round(cpu / count * 1000, 3) if cpu is not None and count else None,
    }
