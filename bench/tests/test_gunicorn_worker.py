"""bench/gunicorn_worker.py (the benchmarks' gunicorn, the layer before Granian): a worker with every thread taken leaves new connections to the others, briefly.

The spread itself is measured under wrk by bench/spread.py (docs/benchmarks-lean.md); HUP and a
killed worker under this worker class are tests/test_lifecycle.py's and tests/test_reliability.py's.
"""
from __future__ import annotations

from types import SimpleNamespace

from bench.gunicorn_worker import BUSY_PAUSE_SECONDS, SpreadingThreadWorker


def worker(threads: int, limit: int = 1000) -> SpreadingThreadWorker:
    """The accept decision alone: gthread's own start-up (sockets, pool, poller) is not needed for it."""
    made = SpreadingThreadWorker.__new__(SpreadingThreadWorker)
    made._in_threads, made._busy_since, made.cfg = 0, None, SimpleNamespace(threads=threads)
    made.worker_connections = limit  # what gthread's __init__ sets from its config
    return made


def test_a_worker_with_a_thread_free_listens() -> None:
    w = worker(threads=4)
    w._in_threads = 3
    assert w.worker_connections == 1000


def test_a_busy_worker_pauses_then_listens_for_one_turn_every_pause() -> None:
    w = worker(threads=4)
    w._in_threads = 4
    assert w.worker_connections == 0  # every thread taken: another worker may take the connect
    assert w.worker_connections == 0
    w._busy_since -= BUSY_PAUSE_SECONDS  # the pause is over
    assert w.worker_connections == 1000  # one turn of the loop listening...
    assert w.worker_connections == 0  # ...then the next pause
    w._in_threads = 3
    assert w.worker_connections == 1000 and w._busy_since is None


def test_the_configured_limit_still_holds() -> None:
    w = worker(threads=2, limit=7)
    assert w.worker_connections == 7
