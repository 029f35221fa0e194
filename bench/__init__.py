"""Benchmarks: load generation, the trivial and torch baselines, footprint, soak; `make bench`."""
