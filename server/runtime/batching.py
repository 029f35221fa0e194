"""Dynamic batching: concurrent requests to one model in one worker share one onnxruntime run.

No extra thread: the first waiting request thread leads, collects what else arrives within the
delay (up to the batch size), runs the batch and hands each request its rows; then the next
waiting thread leads. With nothing to wait for, a request runs alone at once after the delay.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatchPolicy:
    """How many rows one run may hold, and how long the first request waits for company."""

    max_batch_size: int
    max_delay_us: int

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


@dataclass(eq=False)
class _Request:
    inputs: Arrays
    rows: int
    signature: tuple
    done: bool = False
    enqueued: float = field(default_factory=time.perf_counter)
    ran: float | None = None  # when the run that answered it started
    outputs: Arrays | None = None
    error: BaseException | None = field(default=None, repr=False)


def _signature(inputs: Arrays) -> tuple:
    """What must match for requests to share a run: input names, dtypes, non-batch dimensions."""
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items()))


def _rows(inputs: Arrays) -> int | None:
    """The common first dimension of every input, or None when they disagree (cannot batch)."""
    firsts = {a.shape[0] if a.ndim else None for a in inputs.values()}
    return firsts.pop() if len(firsts) == 1 else None


class Batcher:
    """Coalesces concurrent `predict` calls into runs of `run` of at most `max_batch_size` rows."""

    def __init__(self, run: Callable[[Arrays], Arrays], policy: BatchPolicy) -> None:
        self._run = run
        self.policy = policy
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._leading = False
        self.batches = 0
        self.batched_requests = 0
        self._waited = threading.local()  # each request thread's wait for its batch, until taken

    def take_waited(self) -> float:
        """Seconds this thread's requests waited before their run started, since the last call."""
        waited = getattr(self._waited, "seconds", 0.0)
        self._waited.seconds = 0.0
        return waited

    def predict(self, inputs: Arrays) -> Arrays:
        """Run `inputs` (batch-first arrays), usually together with other threads' requests."""
        rows = _rows(inputs)
        if rows is None or rows >= self.policy.max_batch_size or not inputs:
            return self._run(inputs)
        request = _Request(inputs, rows, _signature(inputs))
        with self._cond:
            self._queue.append(request)
            self._cond.notify_all()  # a leader waiting for company may now have a full batch
        while True:
            with self._cond:
                while not request.done and self._leading:
                    self._cond.wait()
                if request.done:
                    break
                self._leading = True
            batch: list[_Request] = []
            try:
                batch = self._collect()
                self._run_batch(batch)
            finally:
                self._abandon(batch)
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if request.ran is not None:
            self._waited.seconds = getattr(self._waited, "seconds", 0.0) + request.ran - request.enqueued
        if request.error is not None:
            raise request.error
        return request.outputs

    def _collect(self) -> list[_Request]:
        """Wait up to the delay for a full batch, then take the oldest requests that fit together."""
        deadline = time.monotonic() + self.policy.max_delay_us / 1e6
        with self._cond:
            while self._queue and sum(r.rows for r in self._queue) < self.policy.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if not self._queue:
                return []
            first = self._queue[0]
            batch, rows = [], 0
            for request in list(self._queue):
                if request.signature == first.signature and rows + request.rows <= self.policy.max_batch_size:
                    batch.append(request)
                    rows += request.rows
            for request in batch:
                self._queue.remove(request)
        return batch

    def _run_batch(self, batch: list[_Request]) -> None:
        """Run the batch as one call and split the outputs; on any trouble run each alone."""
        total = sum(r.rows for r in batch)
        started = time.perf_counter()
        for request in batch:
            request.ran = started
        try:
            if not batch:
                return
            if len(batch) == 1:
                self._finish(batch[0], outputs=self._run(batch[0].inputs))
                return
            names = batch[0].inputs.keys()
            joined = {name: np.concatenate([r.inputs[name] for r in batch]) for name in names}
            outputs = self._run(joined)
            if any(a.ndim == 0 or a.shape[0] != total for a in outputs.values()):
                raise ValueError("outputs are not batch-first")
        except Exception as err:  # one bad request must not fail the others: retry each alone
            if len(batch) == 1:
                self._finish(batch[0], error=err)
            else:
                log.debug("batched run of %d requests failed (%s); running them one by one", len(batch), err)
                for request in batch:
                    self._run_alone(request)
            return
        start = 0
        for request in batch:
            end = start + request.rows
            self._finish(request, outputs={name: a[start:end] for name, a in outputs.items()})
            start = end
        self.batches += 1
        self.batched_requests += len(batch)

    def _abandon(self, batch: list[_Request]) -> None:
        """Answer any request of the batch left unanswered (the leader was interrupted), so no
        thread waits forever."""
        for request in batch:
            if not request.done:
                self._finish(request, error=RuntimeError("the batch this request was in was interrupted"))

    def _run_alone(self, request: _Request) -> None:
        try:
            self._finish(request, outputs=self._run(request.inputs))
        except Exception as err:
            self._finish(request, error=err)

    def _finish(self, request: _Request, outputs: Arrays | None = None, error: BaseException | None = None) -> None:
        with self._cond:
            request.outputs, request.error, request.done = outputs, error, True
            self._cond.notify_all()
