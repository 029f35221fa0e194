"""One v2 inference request, whichever transport carried it: the infer path HTTP and gRPC share.

A transport reads its request (`protocol.InferRequest`: the v2 header and the tensor data after
it), hands it here with the worker's `protocol.InferLimits`, and encodes the `protocol.InferResponse`
it gets back. In between: the memory budget, Triton's statistics, decoding, the model's run.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from . import metrics, protocol
from .model import OnnxModel

T = TypeVar("T")


def infer(model: OnnxModel, limits: protocol.InferLimits, reserve_bytes: int,
          read: Callable[[], protocol.InferRequest], encode: Callable[[protocol.InferResponse], T],
          log_id: str = "-") -> T:
    """Run one inference request on `model`: `read()` gives the request, `encode` the transport's answer.

    Both run inside the request's memory reservation (`reserve_bytes`, the peak of decoding it)
    and its statistics: reading may inflate a compressed body, and Triton counts encoding as
    compute_output. `log_id` names the request in the server log.
    """
    with metrics.InferenceStatistics(model.name, model.version) as stats, limits.memory.request(), \
            limits.memory.reserve(reserve_bytes, "this inference request"):
        request = read()
        request_id, inputs, wanted = protocol.decode_request(model, request.header, request.binary)
        del request  # the arrays are what is left to hold while the model runs
        outputs = stats.run(model, lambda: protocol.infer(model, inputs, wanted, log_id, limits.chunk_rows))
        stats.rows = protocol.request_rows(model, inputs)
        answer = encode(protocol.InferResponse(model.name, model.version, request_id, outputs))
        stats.end_phase("compute_output")
    return answer
