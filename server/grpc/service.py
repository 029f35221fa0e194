"""`inference.GRPCInferenceService`: the v2 calls over gRPC, thin around the same core as HTTP.

Each call is read, handed to `server/protocol.py`, `server/model_control.py` or the registry, and
answered; serving errors become gRPC status codes in one table (`STATUS_CODES`, from the HTTP
status each error carries). Every call but ServerLive and ServerReady needs the API_TOKEN as
`authorization: Bearer ...` metadata, as every HTTP route but health does. Calls Triton has and
this server does not (shared memory, tracing, streaming) answer UNIMPLEMENTED.
Requests arrive as bytes and are parsed here, so that one that is not the message it should be
is INVALID_ARGUMENT, as any other bad input (gRPC's own parsing would answer INTERNAL).
"""
from __future__ import annotations

import functools
import logging
import time
import urllib.parse
from typing import Any, Callable, Mapping

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from .. import access, inference, metrics, model_control, protocol
from ..budget import MemoryBudget, tensor_body_bytes
from ..errors import InvalidInput, ModelNotFound, ServingError
from ..model_sync import ModelSync
from ..registry import ModelRegistry
from . import messages
from . import schema as pb

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
# HTTP status of a serving error -> gRPC code, as Triton maps its own errors (a message over the
# size limit is RESOURCE_EXHAUSTED, as gRPC itself answers one over max_receive_message_length).
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(http_status: int) -> grpc.StatusCode:
    """The gRPC code for a serving error's HTTP status (other 4xx: INVALID_ARGUMENT, 5xx: INTERNAL)."""
    if http_status in STATUS_CODES:
        return STATUS_CODES[http_status]
    return grpc.StatusCode.INVALID_ARGUMENT if http_status < 500 else grpc.StatusCode.INTERNAL


class Call:
    """One call's request id and metadata, as the handlers need them."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context = context
        self.metadata: dict[str, str] = {}
        for key, value in context.invocation_metadata() or ():
            if isinstance(value, str):
                self.metadata.setdefault(key.lower(), value)
        self.request_id = access.request_id(self.metadata.get("x-request-id"))


def rpc(request_type: type, response_type: type, open_call: bool = False) -> Callable:
    """Wrap a handler: parse the request, check the token, serving errors as status codes, one log
    line and the metrics. The wrapped handler takes the request's bytes."""

    def wrap(handler: Callable) -> Callable:
        route = f"/{SERVICE}/{handler.__name__}"

        @functools.wraps(handler)
        def call(self: "InferenceService", data: bytes, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            current = Call(context)
            code, details = grpc.StatusCode.OK, ""
            try:
                if not open_call:
                    access.check_token(self.api_token, current.metadata.get("authorization"))
                return handler(self, parse(request_type, data), current)
            except ServingError as err:
                code, details = status_code(err.status), err.message
            except Exception:  # never a traceback to the client: the log has it, with the request id
                log.exception("unexpected error in %s, request id %s", handler.__name__, current.request_id)
                code, details = grpc.StatusCode.INTERNAL, f"internal server error (request id {current.request_id})"
            finally:
                elapsed = time.perf_counter() - started
                metrics.observe_request(route, "POST", code.name, elapsed, transport="grpc")
                log.info("GRPC %s %s %.1fms id=%s", handler.__name__, code.name, elapsed * 1000, current.request_id)
            context.abort(code, details)  # raises: gRPC ends the call with this status

        call.types = (request_type, response_type)
        return call

    return wrap


def parse(message_type: type, data: bytes) -> Any:
    """The request message, or InvalidInput when the bytes are not one."""
    try:
        return message_type.FromString(data)
    except DecodeError as err:
        raise InvalidInput(f"the request is not a valid {message_type.DESCRIPTOR.full_name} message: {err}") from None


def _serialized(answer: Any) -> bytes:
    """A response message's bytes (a handler may answer bytes it has encoded itself)."""
    return answer if isinstance(answer, bytes) else answer.SerializeToString()


def generic_handler(service: "InferenceService") -> grpc.GenericRpcHandler:
    """Every call `service` answers, for grpc.Server.add_generic_rpc_handlers."""
    handlers = {}
    for name in dir(service):
        method = getattr(service, name)
        if hasattr(method, "types"):
            handlers[name] = grpc.unary_unary_rpc_method_handler(method, response_serializer=_serialized)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


class InferenceService:
    """The v2 gRPC calls over one worker's model registry."""

    def __init__(self, registry: ModelRegistry, sync: ModelSync, memory: MemoryBudget, settings: Mapping[str, Any]) -> None:
        self.registry = registry
        self.sync = sync
        self.limits = protocol.InferLimits.from_settings(settings, memory)
        self.api_token: str = settings["API_TOKEN"]
        self.host: str = settings["HOST"]

    @rpc(pb.ServerLiveRequest, pb.ServerLiveResponse, open_call=True)
    def ServerLive(self, request: pb.ServerLiveRequest, call: Call) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc(pb.ServerReadyRequest, pb.ServerReadyResponse, open_call=True)
    def ServerReady(self, request: pb.ServerReadyRequest, call: Call) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.registry.ready)

    @rpc(pb.ModelReadyRequest, pb.ModelReadyResponse)
    def ModelReady(self, request: pb.ModelReadyRequest, call: Call) -> pb.ModelReadyResponse:
        # As Triton: an unknown model or version is not ready, not an error.
        try:
            ready = protocol.model_ready(self.registry, request.name, request.version or None)
        except ModelNotFound:
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    @rpc(pb.ServerMetadataRequest, pb.ServerMetadataResponse)
    def ServerMetadata(self, request: pb.ServerMetadataRequest, call: Call) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**protocol.server_metadata(repository_extension=True))

    @rpc(pb.ModelMetadataRequest, pb.ModelMetadataResponse)
    def ModelMetadata(self, request: pb.ModelMetadataRequest, call: Call) -> pb.ModelMetadataResponse:
        return messages.model_metadata(protocol.model_metadata(self.registry, request.name, request.version or None))

    @rpc(pb.ModelInferRequest, pb.ModelInferResponse)
    def ModelInfer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        model = self.registry.get(request.model_name, request.model_version or None)
        # The same memory budget as HTTP, reserved as for an HTTP body of the message's size.
        return inference.infer(model, self.limits, tensor_body_bytes(request.ByteSize()),
                               lambda: messages.infer_request(request), messages.infer_response, call.request_id)

    @rpc(pb.ModelStatisticsRequest, pb.ModelStatisticsResponse)
    def ModelStatistics(self, request: pb.ModelStatisticsRequest, call: Call) -> pb.ModelStatisticsResponse:
        versions = protocol.statistics_versions(self.registry, request.name, request.version or None)
        return json_format.ParseDict({"model_stats": metrics.model_statistics(versions)}, pb.ModelStatisticsResponse())

    @rpc(pb.ModelConfigRequest, pb.ModelConfigResponse)
    def ModelConfig(self, request: pb.ModelConfigRequest, call: Call) -> pb.ModelConfigResponse:
        response = pb.ModelConfigResponse()
        # The same schema in two descriptor pools (server/grpc/schema.py): carried across as bytes.
        response.config.ParseFromString(protocol.model_config(self.registry, request.name, request.version or None)
                                        .SerializeToString())
        return response

    @rpc(pb.RepositoryIndexRequest, pb.RepositoryIndexResponse)
    def RepositoryIndex(self, request: pb.RepositoryIndexRequest, call: Call) -> pb.RepositoryIndexResponse:
        self._one_repository(request.repository_name)
        rows = model_control.index(self.registry, request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    @rpc(pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse)
    def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, call: Call) -> pb.RepositoryModelLoadResponse | bytes:
        return self._change_model(request, call, model_control.load, pb.RepositoryModelLoadResponse)

    @rpc(pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse)
    def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, call: Call) -> pb.RepositoryModelUnloadResponse | bytes:
        return self._change_model(request, call, model_control.unload, pb.RepositoryModelUnloadResponse)

    def _change_model(self, request: Any, call: Call, change: Callable, answer: type) -> Any:
        """Load or unload (`change`) the model a repository request names; Triton's `answer`, or KServe's."""
        self._require_admin(call)
        name, kserve = self._model_name(request)
        change(self.registry, self.sync, name, messages.parameters(request.parameters))
        return messages.kserve_repository_answer(name, True) if kserve else answer()

    def _model_name(self, request: Any) -> tuple[str, bool]:
        """The model to load or unload, and whether the request is KServe's message.

        KServe's grpc_predict_v2.proto numbers these messages differently from Triton's: its
        `model_name` is field 1, Triton's `repository_name`. A request with only field 1 set is
        KServe's, and gets KServe's answer (`model_name`, `isLoaded`/`isUnloaded`).
        """
        if request.repository_name and not request.model_name and not request.parameters:
            return request.repository_name, True
        self._one_repository(request.repository_name)
        return request.model_name, False

    def _require_admin(self, call: Call) -> None:
        proxied = [header for header in access.PROXY_HEADERS if header.lower() in call.metadata]
        access.require_admin(self.api_token, self.host, peer_host(call.context.peer()), proxied)

    @staticmethod
    def _one_repository(name: str) -> None:
        if name:
            raise InvalidInput(f"repository_name {name[:60]!r}: this server has one repository (MODEL_REPOSITORY); leave it empty")


def peer_host(peer: str) -> str:
    """The address in gRPC's peer string: 'ipv4:127.0.0.1:5000', 'ipv6:%5B::1%5D:5000', 'unix:/path'."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind == "unix":
        return "localhost"  # a unix socket is this machine's
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return rest or peer
