"""gunicorn's threaded worker, accepting a connection only while it has a thread free for it.

Every worker waits on the one listening socket, and a keep-alive connection stays with the worker
that accepted it. gunicorn's gthread worker accepts whenever the socket is readable, so the busiest
worker, whose loop is always awake, wins most new connections: under wrk, about half the runs ended
with all 32 connections on one worker and half the throughput (docs/benchmarks-lean.md). This
worker stops listening while all of its threads are busy, so a new (or re-opened, see
KEEPALIVE_REQUESTS) connection goes to a worker that can serve it now. A connection it does not
accept waits in the kernel's queue for any worker, as before: a HUP or a killed worker loses none.
"""
from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker


class SpreadingThreadWorker(ThreadWorker):
    """ThreadWorker that takes new connections only with a thread free (gunicorn's -k gthread otherwise)."""

    def __init__(self, *args, **kwargs) -> None:
        self._in_threads = 0  # requests handed to the thread pool and not finished: main thread only
        self._connection_limit = 0
        super().__init__(*args, **kwargs)

    # gthread's loop compares nr_conns with worker_connections before each wait for events, and
    # listens or not accordingly: the limit it reads is the configured one while a thread is free.
    @property
    def worker_connections(self) -> int:
        return self._connection_limit if self._in_threads < self.cfg.threads else 0

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        self._connection_limit = value

    def enqueue_req(self, conn) -> None:
        self._in_threads += 1
        super().enqueue_req(conn)

    def finish_request(self, conn, fs) -> None:
        self._in_threads -= 1
        super().finish_request(conn, fs)
