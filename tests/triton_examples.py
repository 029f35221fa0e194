"""The call sequences of Triton's own example clients, for any server that speaks Triton's protocols.

Triton's Python examples (github.com/triton-inference-server/client, src/python/examples) are not
vendored here: each function below makes the same calls in the same order, with the same checks,
as the example it is named after, on the models they expect (tests/onnx_factory.py writes them:
`simple`, `simple_string`, `simple_identity`). A failed check raises AssertionError, a refused call
tritonclient's InferenceServerException. tests/test_triton_examples.py runs them against this
server, tests/triton/compare.py (`make triton-test`) against it and the real tritonserver. No pytest
here: the Triton environment has none.
"""
from __future__ import annotations

import asyncio
import queue
from typing import Callable

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpclient_aio
from tritonclient import utils
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

INPUT0 = np.arange(16, dtype=np.int32)[np.newaxis]
ONES = np.ones((1, 16), dtype=np.int32)
MINUS_ONES = np.full((1, 16), -1, dtype=np.int32)
NULL_CHARS = np.array(["he\x00llo".encode("utf-8")] * 16, dtype=np.object_).reshape(1, 16)
BLOBS = np.array([b"\x00\x01\x02\x03"] * 16, dtype=np.bytes_).reshape(1, 16)
UNKNOWN_MODEL = "Request for unknown model"  # how Triton's error starts: the examples check it
WRONG_VERSION = "failed to get model version from specified version string 'wrong_specification'"


def check_sum_and_difference(results, input0: np.ndarray, input1: np.ndarray) -> None:
    """What every `simple` example checks: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    assert np.array_equal(results.as_numpy("OUTPUT0"), input0 + input1), "incorrect sum"
    assert np.array_equal(results.as_numpy("OUTPUT1"), input0 - input1), "incorrect difference"


def expect_unknown_model(call: Callable[[], object]) -> None:
    try:
        call()
    except InferenceServerException as error:
        assert error.message().startswith(UNKNOWN_MODEL), f"improper error message for wrong model name: {error}"
    else:
        raise AssertionError("expected an error for a wrong model name")


def http_inputs(lib, input1: np.ndarray) -> list:
    """INPUT0 in JSON, INPUT1 in binary, as the HTTP examples send them."""
    inputs = [lib.InferInput("INPUT0", [1, 16], "INT32"), lib.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(INPUT0, binary_data=False)
    inputs[1].set_data_from_numpy(input1, binary_data=True)
    return inputs


def http_outputs(lib) -> list:
    return [lib.InferRequestedOutput("OUTPUT0", binary_data=True), lib.InferRequestedOutput("OUTPUT1", binary_data=False)]


def grpc_inputs(lib) -> list:
    inputs = [lib.InferInput("INPUT0", [1, 16], "INT32"), lib.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(INPUT0)
    inputs[1].set_data_from_numpy(ONES)
    return inputs


def grpc_outputs(lib) -> list:
    return [lib.InferRequestedOutput("OUTPUT0"), lib.InferRequestedOutput("OUTPUT1")]


def simple_http_infer_client(http_url: str, compression: str | None = None) -> None:
    client = httpclient.InferenceServerClient(url=http_url)
    try:
        query = {"test_1": 1, "test_2": 2}
        results = client.infer("simple", http_inputs(httpclient, MINUS_ONES), outputs=http_outputs(httpclient),
                               query_params=query, request_compression_algorithm=compression,
                               response_compression_algorithm=compression)
        statistics = client.get_inference_statistics(model_name="simple")
        assert len(statistics["model_stats"]) == 1, "FAILED: Inference Statistics"
        check_sum_and_difference(results, INPUT0, MINUS_ONES)
        results = client.infer("simple", http_inputs(httpclient, MINUS_ONES), outputs=None, query_params=query,
                               request_compression_algorithm=compression, response_compression_algorithm=compression)
        check_sum_and_difference(results, INPUT0, MINUS_ONES)
        expect_unknown_model(lambda: client.infer("wrong_model_name", http_inputs(httpclient, MINUS_ONES),
                                                  outputs=http_outputs(httpclient)))
    finally:
        client.close()


def simple_http_async_infer_client(http_url: str) -> None:
    client = httpclient.InferenceServerClient(url=http_url, concurrency=4)
    try:
        pending = [client.async_infer("simple", http_inputs(httpclient, ONES), request_id=str(i),
                                      outputs=http_outputs(httpclient)) for i in range(4)]
        for request in pending:
            check_sum_and_difference(request.get_result(), INPUT0, ONES)
        assert len(client.get_inference_statistics(model_name="simple")["model_stats"]) == 1
    finally:
        client.close()


def simple_http_aio_infer_client(http_url: str) -> None:
    async def main():
        client = httpclient_aio.InferenceServerClient(url=http_url)
        try:
            results = await client.infer("simple", http_inputs(httpclient_aio, MINUS_ONES),
                                         outputs=http_outputs(httpclient_aio), query_params={"test_1": 1})
            statistics = await client.get_inference_statistics(model_name="simple")
            assert len(statistics["model_stats"]) == 1, "FAILED: Inference Statistics"
            check_sum_and_difference(results, INPUT0, MINUS_ONES)
            try:
                await client.infer("wrong_model_name", http_inputs(httpclient_aio, MINUS_ONES))
            except InferenceServerException as error:
                assert error.message().startswith(UNKNOWN_MODEL), f"improper error message: {error}"
            else:
                raise AssertionError("expected an error for a wrong model name")
            both = await asyncio.gather(
                client.infer("simple", http_inputs(httpclient_aio, MINUS_ONES), outputs=http_outputs(httpclient_aio)),
                client.infer("simple", http_inputs(httpclient_aio, MINUS_ONES), outputs=None))
            for result in both:
                check_sum_and_difference(result, INPUT0, MINUS_ONES)
        finally:
            await client.close()

    asyncio.run(main())


def simple_grpc_infer_client(grpc_url: str, compression: str | None = None) -> None:
    client = grpcclient.InferenceServerClient(url=grpc_url)
    try:
        results = client.infer(model_name="simple", inputs=grpc_inputs(grpcclient), outputs=grpc_outputs(grpcclient),
                               client_timeout=None, headers={"test": "1"}, compression_algorithm=compression)
        statistics = client.get_inference_statistics(model_name="simple")
        assert len(statistics.model_stats) == 1, "FAILED: Inference Statistics"
        check_sum_and_difference(results, INPUT0, ONES)
        results = client.infer(model_name="simple", inputs=grpc_inputs(grpcclient), outputs=None,
                               compression_algorithm=compression)
        check_sum_and_difference(results, INPUT0, ONES)
    finally:
        client.close()


def simple_grpc_async_infer_client(grpc_url: str) -> None:
    client = grpcclient.InferenceServerClient(url=grpc_url)
    try:
        done: queue.Queue = queue.Queue()
        client.async_infer("simple", grpc_inputs(grpcclient), lambda result, error: done.put((result, error)),
                           request_id="1", outputs=grpc_outputs(grpcclient))
        result, error = done.get(timeout=30)
        assert error is None, f"inference failed: {error}"
        check_sum_and_difference(result, INPUT0, ONES)
        assert len(client.get_inference_statistics(model_name="simple").model_stats) == 1
    finally:
        client.close()


def simple_grpc_aio_infer_client(grpc_url: str) -> None:
    async def main():
        client = grpcclient_aio.InferenceServerClient(url=grpc_url)
        try:
            results = await client.infer(model_name="simple", inputs=grpc_inputs(grpcclient_aio),
                                         outputs=grpc_outputs(grpcclient_aio), headers={"test": "1"})
            statistics = await client.get_inference_statistics(model_name="simple")
            assert len(statistics.model_stats) == 1, "FAILED: Inference Statistics"
            check_sum_and_difference(results, INPUT0, ONES)
            both = await asyncio.gather(
                client.infer(model_name="simple", inputs=grpc_inputs(grpcclient_aio), outputs=None),
                client.infer(model_name="simple", inputs=grpc_inputs(grpcclient_aio), outputs=None))
            for result in both:
                check_sum_and_difference(result, INPUT0, ONES)
        finally:
            await client.close()

    asyncio.run(main())


def number_strings(array: np.ndarray) -> np.ndarray:
    """Each integer as its UTF-8 decimal string, as the string examples send them."""
    return np.array([str(x).encode("utf-8") for x in array.reshape(-1)], dtype=np.object_).reshape(array.shape)


def check_string_results(results) -> None:
    """simple_string's answers are strings of numbers: their int() is the sum and the difference."""
    assert np.array_equal(np.vectorize(int)(results.as_numpy("OUTPUT0")), INPUT0 + ONES), "incorrect sum"
    assert np.array_equal(np.vectorize(int)(results.as_numpy("OUTPUT1")), INPUT0 - ONES), "incorrect difference"


def check_identity(results, sent: np.ndarray) -> None:
    got = results.as_numpy("OUTPUT0")
    if sent.dtype == np.object_:
        assert np.array_equal(sent, got), f"incorrect output {got}"
    else:  # np.bytes_: compared as the examples do, encoded back from str
        assert np.array_equal(sent, np.char.encode(got.astype(str))), f"incorrect output {got}"


def simple_http_string_infer_client(http_url: str, binary: bool = True) -> None:
    client = httpclient.InferenceServerClient(url=http_url)
    try:
        inputs = [httpclient.InferInput("INPUT0", [1, 16], "BYTES"), httpclient.InferInput("INPUT1", [1, 16], "BYTES")]
        inputs[0].set_data_from_numpy(number_strings(INPUT0), binary_data=binary)
        inputs[1].set_data_from_numpy(number_strings(ONES), binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
                   httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
        check_string_results(client.infer("simple_string", inputs, outputs=outputs))
        if binary:  # JSON cannot carry the embedded NUL and the raw blobs: the example sends them in binary
            for sent in (NULL_CHARS, BLOBS):
                tensor = httpclient.InferInput("INPUT0", list(sent.shape), "BYTES")
                tensor.set_data_from_numpy(sent, binary_data=True)
                check_identity(client.infer("simple_identity", [tensor],
                                            outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)]), sent)
    finally:
        client.close()


def simple_grpc_string_infer_client(grpc_url: str) -> None:
    client = grpcclient.InferenceServerClient(url=grpc_url)
    try:
        inputs = [grpcclient.InferInput("INPUT0", [1, 16], "BYTES"), grpcclient.InferInput("INPUT1", [1, 16], "BYTES")]
        inputs[0].set_data_from_numpy(number_strings(INPUT0))
        inputs[1].set_data_from_numpy(number_strings(ONES))
        check_string_results(client.infer(model_name="simple_string", inputs=inputs, outputs=grpc_outputs(grpcclient)))
        for sent in (NULL_CHARS, BLOBS):
            tensor = grpcclient.InferInput("INPUT0", list(sent.shape), "BYTES")
            tensor.set_data_from_numpy(sent)
            check_identity(client.infer(model_name="simple_identity", inputs=[tensor],
                                        outputs=[grpcclient.InferRequestedOutput("OUTPUT0")]), sent)
    finally:
        client.close()


def simple_grpc_custom_args_client(grpc_url: str) -> None:
    channel_args = [
        ("grpc.max_send_message_length", 1024 * 1024), ("grpc.max_receive_message_length", 1024 * 1024),
        ("grpc.keepalive_time_ms", 2**31 - 1), ("grpc.keepalive_timeout_ms", 20000),
        ("grpc.keepalive_permit_without_calls", False), ("grpc.http2.max_pings_without_data", 2),
        ("grpc.dns_enable_srv_queries", 1),
    ]
    client = grpcclient.InferenceServerClient(url=grpc_url, channel_args=channel_args)
    try:
        results = client.infer(model_name="simple", inputs=grpc_inputs(grpcclient), outputs=grpc_outputs(grpcclient),
                               headers={"test": "1"})
        check_sum_and_difference(results, INPUT0, ONES)
    finally:
        client.close()


def simple_grpc_keepalive_client(grpc_url: str) -> None:
    keepalive = grpcclient.KeepAliveOptions(keepalive_time_ms=2**31 - 1, keepalive_timeout_ms=20000,
                                            keepalive_permit_without_calls=False, http2_max_pings_without_data=2)
    client = grpcclient.InferenceServerClient(url=grpc_url, keepalive_options=keepalive)
    try:
        results = client.infer(model_name="simple", inputs=grpc_inputs(grpcclient), outputs=grpc_outputs(grpcclient),
                               headers={"test": "1"})
        check_sum_and_difference(results, INPUT0, ONES)
    finally:
        client.close()


def explicit_request(model: str, fill: Callable) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest built by hand, as the explicit-content examples build it: typed `contents`."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version="")
    for name, values in (("INPUT0", range(16)), ("INPUT1", [1] * 16)):
        tensor = service_pb2.ModelInferRequest().InferInputTensor(name=name, shape=[1, 16])
        fill(tensor, values)
        request.inputs.append(tensor)
    request.outputs.extend([service_pb2.ModelInferRequest().InferRequestedOutputTensor(name=name)
                            for name in ("OUTPUT0", "OUTPUT1")])
    return request


def grpc_explicit_int_content_client(grpc_url: str) -> None:
    def ints(tensor, values):
        tensor.datatype = "INT32"
        tensor.contents.int_contents[:] = list(values)

    request = explicit_request("simple", ints)
    with grpc.insecure_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request)
        results = [np.frombuffer(raw, dtype=np.int32).reshape(list(output.shape))
                   for output, raw in zip(response.outputs, response.raw_output_contents)]
        assert len(results) == 2, "expected two output results"
        assert np.array_equal(results[0], INPUT0 + ONES) and np.array_equal(results[1], INPUT0 - ONES)
        # As the INT8 variant of the example: a version that is no number, in Triton's words.
        request.model_version = "wrong_specification"
        try:
            stub.ModelInfer(request)
        except grpc.RpcError as error:
            assert WRONG_VERSION in str(error), f"improper error message for a wrong version: {error}"
        else:
            raise AssertionError("expected an error for a wrong version")


def grpc_explicit_byte_content_client(grpc_url: str) -> None:
    def strings(tensor, values):
        tensor.datatype = "BYTES"
        tensor.contents.bytes_contents[:] = [str(value).encode("utf-8") for value in values]

    with grpc.insecure_channel(grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(explicit_request("simple_string", strings))
    results = [np.resize(utils.deserialize_bytes_tensor(raw), list(output.shape))
               for output, raw in zip(response.outputs, response.raw_output_contents)]
    assert len(results) == 2, "expected two output results"
    for i in range(16):
        assert int(results[0][0][i]) == i + 1 and int(results[1][0][i]) == i - 1, "explicit string infer error"


# Every sequence, by the example it follows, called with (HTTP url, gRPC url).
EXAMPLES: dict[str, Callable[[str, str], None]] = {
    "simple_http_infer_client": lambda http, _: simple_http_infer_client(http),
    "simple_http_infer_client --gzip": lambda http, _: simple_http_infer_client(http, "gzip"),
    "simple_http_infer_client --deflate": lambda http, _: simple_http_infer_client(http, "deflate"),
    "simple_http_async_infer_client": lambda http, _: simple_http_async_infer_client(http),
    "simple_http_aio_infer_client": lambda http, _: simple_http_aio_infer_client(http),
    "simple_grpc_infer_client": lambda _, grpc_url: simple_grpc_infer_client(grpc_url),
    "simple_grpc_infer_client --gzip": lambda _, grpc_url: simple_grpc_infer_client(grpc_url, "gzip"),
    "simple_grpc_async_infer_client": lambda _, grpc_url: simple_grpc_async_infer_client(grpc_url),
    "simple_grpc_aio_infer_client": lambda _, grpc_url: simple_grpc_aio_infer_client(grpc_url),
    "simple_http_string_infer_client": lambda http, _: simple_http_string_infer_client(http),
    "simple_http_string_infer_client (JSON)": lambda http, _: simple_http_string_infer_client(http, binary=False),
    "simple_grpc_string_infer_client": lambda _, grpc_url: simple_grpc_string_infer_client(grpc_url),
    "simple_grpc_custom_args_client": lambda _, grpc_url: simple_grpc_custom_args_client(grpc_url),
    "simple_grpc_keepalive_client": lambda _, grpc_url: simple_grpc_keepalive_client(grpc_url),
    "grpc_explicit_int_content_client": lambda _, grpc_url: grpc_explicit_int_content_client(grpc_url),
    "grpc_explicit_byte_content_client": lambda _, grpc_url: grpc_explicit_byte_content_client(grpc_url),
}
