"""The Open Inference Protocol (v2) over gRPC: `inference.GRPCInferenceService`, as Triton defines it.

A second transport beside `server/api/`: the same core (`server/v2/protocol.py`, `server/v2/tensors.py`,
`server/runtime/model_control.py`, `server/access.py`) behind Triton's `grpc_service.proto`, so
`tritonclient.grpc` and KServe's v2 gRPC clients work unchanged. `schema.py` builds the messages
from `server/proto/grpc_service.binpb` (server/proto/README.md). The main process (server/lifecycle.py) imports only
`handoff.py` (standard library): each worker starts its own gRPC server after the fork (gRPC and
fork do not mix).
"""
