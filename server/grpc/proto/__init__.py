"""Triton's gRPC protocol files and the Python stubs made from them by generate.sh (do not edit the stubs)."""
