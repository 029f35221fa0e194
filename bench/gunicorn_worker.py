"""gunicorn's threaded worker, leaving new connections to a less busy worker for a moment.

Every worker waits on the one listening socket, and a keep-alive connection stays with the worker
that accepted it. gunicorn's gthread worker accepts whenever the socket is readable, so the busiest
worker, whose loop is always awake, wins most new connections: under wrk, most runs ended with 29
to 32 of 32 connections on one worker and that worker's throughput (docs/benchmarks-lean.md).
While all of its threads are taken, this worker listens only once every BUSY_PAUSE_SECONDS, so
a new (or re-opened, see KEEPALIVE_REQUESTS) connection goes to a worker with a thread free when
there is one, and still gets accepted soon when all are busy. A connection it
does not accept waits in the kernel's queue for any worker, as before: a HUP or a killed worker
loses none.
"""
from __future__ import annotations

import time

from gunicorn.workers.gthread import ThreadWorker

# Long enough for a worker with a thread free to win the connect, short beside a request's wait
# under load. Without a bound, a saturated server left re-opened connections unaccepted for up
# to a second (wrk's p99 of 0.8-1.1 s in two of three runs).
BUSY_PAUSE_SECONDS = 0.02


class SpreadingThreadWorker(ThreadWorker):
    """ThreadWorker that lets a freer worker take new connections (gunicorn's -k gthread otherwise)."""

    def __init__(self, *args, **kwargs) -> None:
        self._in_threads = 0  # requests handed to the thread pool and not finished: main thread only
        self._busy_since: float | None = None
        self._connection_limit = 0
        super().__init__(*args, **kwargs)

    # gthread's loop compares nr_conns with worker_connections before each wait for events (and
    # wakes for every finished request), and listens or not accordingly.
    @property
    def worker_connections(self) -> int:
        if self._in_threads < self.cfg.threads:
            self._busy_since = None
            return self._connection_limit
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        if now - self._busy_since < BUSY_PAUSE_SECONDS:
            return 0
        # Listen for one turn of the loop (about one accept), then pause again: a busy worker takes
        # at most about one connection per pause, a worker with a thread free takes them at once.
        self._busy_since = now
        return self._connection_limit

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        self._connection_limit = value

    def enqueue_req(self, conn) -> None:
        self._in_threads += 1
        super().enqueue_req(conn)

    def finish_request(self, conn, fs) -> None:
        self._in_threads -= 1
        super().finish_request(conn, fs)
