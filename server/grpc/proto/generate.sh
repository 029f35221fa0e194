#!/bin/sh
# Makes the committed protobuf stubs (grpc_service_pb2.py, model_config_pb2.py)
# from the .proto files beside this script, so that neither the serve environment nor CI needs
# grpcio-tools. The .proto files are Triton's, unchanged, from triton-inference-server/common
# (protobuf/, commit 83adf7cf88a2f343005974dff3728be746de2d66; BSD-3-Clause, see their headers):
# a superset of KServe's grpc_predict_v2.proto with the same package, service and field numbers.
#
# grpcio-tools 1.78.2 bundles protoc 31.1, whose code needs protobuf >= 6.31.1 at run time: it runs
# on the pinned protobuf 6.33.x (tritonclient[grpc] needs < 7) and on 7.x alike.
# Run: sh server/grpc/proto/generate.sh   (needs python3 and the package index; takes a minute)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check grpcio-tools==1.78.2 protobuf==6.33.6
cd "$here"
# Messages only: server/grpc/service.py registers its calls itself (it parses each request, so that
# bytes that are not the message are INVALID_ARGUMENT), and Triton's other calls are UNIMPLEMENTED.
"$tools/venv/bin/python" -m grpc_tools.protoc -I. --python_out=. grpc_service.proto model_config.proto
# protoc writes top-level imports; the stubs live in the package server.grpc.proto.
sed -i 's/^import model_config_pb2 as/from . import model_config_pb2 as/' grpc_service_pb2.py
