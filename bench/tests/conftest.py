"""The benchmarks' own tests use the test suite's real-server fixtures (the suite itself never imports bench)."""
from tests.conftest import live_server, live_server_factory, random_repository  # noqa: F401  (fixtures)
