"""What the tests and the benchmarks both use: starting real servers, request bodies, load loops."""
