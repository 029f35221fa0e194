"""The Open Inference Protocol (v2) over gRPC: `inference.GRPCInferenceService`, as Triton defines it.

A second transport beside `server/api/`: the same core (`server/protocol.py`, `server/tensors.py`,
`server/model_control.py`, `server/access.py`) behind Triton's `grpc_service.proto`, so
`tritonclient.grpc` and KServe's v2 gRPC clients work unchanged. `proto/` holds the .proto files
and the stubs made from them (`proto/generate.sh`). Nothing here is imported by gunicorn's master:
each worker starts its own gRPC server after the fork (gRPC and fork do not mix).
"""
