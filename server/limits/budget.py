"""Bounded memory per worker: reservations for large work, a decoded-pixel budget, runs in chunks.

Every request the limits allow must fit the box at once with the others (docs/security.md):

- `MemoryBudget`: each worker holds at most `capacity` bytes of large work at a time (a decoded
  image, a big v2 body being parsed and run). A request that does not fit waits a little for
  others to finish, then is refused with `Overloaded` (503 and Retry-After), never allocated.
- `PixelBudget`: the decoded pixels of one request's images, summed, bound its CPU time and the
  memory it passes through; `CpuBudget` bounds that CPU time itself, checked between images.
- `run_in_chunks`: a large batch runs through onnxruntime a bounded number of rows at a time, so
  its activations (and onnxruntime's arena, which keeps its peak) stay the size of one chunk.
Plain Python: no web framework.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from ..errors import Overloaded, TooLarge

MIB = 2**20
# Work below this many bytes is not worth a reservation: a 28x28 PNG, a one-row v2 body.
SMALL = 4 * MIB
# Peak bytes per body byte, measured by bench/memory.py (docs/memory.md) with a margin: JSON of short
# numbers becomes a Python object per value (8 MiB bodies peaked 12-16.5x their size over idle, v2
# and pixels alike, from run to run), binary tensors a few array copies (~4.5x under gunicorn; 6.1x
# under Granian, whose Rust side holds the body once more while Python reads it), multipart a few
# copies of the pieces.
JSON_PEAK = 20
BINARY_PEAK = 7
MULTIPART_PEAK = 10


class MemoryBudget:
    """A worker's room for large work: a few large requests at once, holding at most `capacity` bytes.

    A request becomes large at its first `reserve` of SMALL bytes or more (a big body, a decoded
    page); it then holds one of `max_requests` slots until its `request()` scope ends, so that the
    worker's other threads stay free for everyday requests and the CPU is not split between many
    large ones. Each piece of large work holds its bytes while it runs. One request at most waits
    for room (`wait_seconds`); others are refused at once with Overloaded (503, Retry-After).
    """

    def __init__(self, capacity: int, wait_seconds: float = 5.0, max_requests: int = 1, max_waiting: int = 1) -> None:
        self.capacity = max(int(capacity), 1)
        self.wait_seconds = wait_seconds
        self.max_requests = max(max_requests, 1)
        self.max_waiting = max_waiting
        self.used = 0
        self.requests = 0
        self.waiting = 0
        self.peak = 0
        self._changed = threading.Condition()
        self._local = threading.local()

    @contextmanager
    def request(self) -> Iterator[None]:
        """One request's scope: a large-request slot taken inside is held until the scope ends."""
        self._local.scoped, self._local.slot = True, False
        try:
            yield
        finally:
            held, self._local.scoped, self._local.slot = self._local.slot, False, False
            if held:
                self._release(0, slot=True)

    @contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator[None]:
        """Hold `nbytes` while the block runs; more than the whole capacity is TooLarge (413).

        Waits up to `wait_seconds` for room; then raises Overloaded naming `what`.
        """
        if nbytes < SMALL:
            yield
            return
        self.check(nbytes, what)
        scoped, has_slot = getattr(self._local, "scoped", False), getattr(self._local, "slot", False)
        with self._changed:
            if not self._room(nbytes, has_slot):
                if not has_slot and self.waiting >= self.max_waiting:
                    raise self._busy(what, nbytes)
                self.waiting += 1
                try:
                    deadline = time.monotonic() + self.wait_seconds
                    while not self._room(nbytes, has_slot):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise self._busy(what, nbytes)
                        self._changed.wait(left)
                finally:
                    self.waiting -= 1
            self.used += nbytes
            self.peak = max(self.peak, self.used)
            if not has_slot:
                self.requests += 1
                self._local.slot = scoped  # outside a request scope the slot goes with the bytes
        try:
            yield
        finally:
            self._release(nbytes, slot=not has_slot and not scoped)

    def check(self, nbytes: int, what: str) -> None:
        """Raise TooLarge (413) when `nbytes` would not fit even alone: waiting cannot make room for it."""
        if nbytes >= SMALL and nbytes > self.capacity:
            raise TooLarge(
                f"{what} needs about {nbytes / MIB:.0f} MiB of memory to process; this server allows "
                f"{self.capacity / MIB:.0f} MiB per worker for large work (MEMORY_BUDGET, from the memory "
                "it runs in): send a smaller image or body"
            )

    def _room(self, nbytes: int, has_slot: bool) -> bool:
        return self.used + nbytes <= self.capacity and (has_slot or self.requests < self.max_requests)

    def _busy(self, what: str, nbytes: int) -> Overloaded:
        return Overloaded(
            f"server busy: {what} needs {nbytes / MIB:.0f} MiB of memory for large work and this worker is "
            f"already serving {self.requests} large request(s) ({self.used / MIB:.0f} of "
            f"{self.capacity / MIB:.0f} MiB); retry shortly",
            retry_after=max(1, math.ceil(self.wait_seconds)),
        )

    def _release(self, nbytes: int, slot: bool) -> None:
        with self._changed:
            self.used -= nbytes
            self.requests -= 1 if slot else 0
            idle = self.used == 0 and self.requests == 0
            self._changed.notify_all()
        if idle:
            give_back_memory()


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, where the C library has it."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def give_back_memory() -> None:
    """Return the allocator's free pages to the system after large work (glibc keeps them otherwise)."""
    if _TRIM is not None:
        _TRIM(0)


class PixelBudget:
    """The decoded pixels one request may spend across its images."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, pixels: int, what: str) -> None:
        """Count `pixels` more, or raise TooLarge before they are decoded."""
        if self.used + pixels > self.limit:
            raise TooLarge(
                f"{what} would bring the request to {self.used + pixels} decoded pixels; the limit is "
                f"{self.limit} per request (MAX_REQUEST_PIXELS): send fewer or smaller images"
            )
        self.used += pixels


class CpuBudget:
    """The CPU time one request may spend decoding and preparing its images, counted on its own thread."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.thread_time()  # this thread's CPU only: other requests' work does not count

    def check(self, done: int, count: int) -> None:
        """Raise TooLarge before the next image when the `done` images so far took more than the limit."""
        used = time.thread_time() - self.started
        if used > self.seconds:
            raise TooLarge(
                f"decoding and preparing {done} of the request's {count} images took {used:.1f} s of CPU; the "
                f"limit is {self.seconds:g} s per request (REQUEST_CPU_SECONDS): send fewer or smaller images"
            )


# Bytes a worker holds per decoded pixel, by Pillow mode (multi-band images take 4 bytes a pixel).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}
# Modes digit.reduce_large keeps; others are converted (a copy of 4 bytes a pixel) first.
_KEPT_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")
# Below this many pixels on the longer side an image is not reduced before the float pipeline
# (digit.reduce_large reduces to at least 2 x WORK_SIDE).
_REDUCE_FROM = 2 * 512


def image_bytes(mode: str, width: int, height: int, rotated: bool = False) -> int:
    """Peak bytes of decoding a `mode` image of width x height and preprocessing it (mnist-digit).

    Measured per pixel (docs/memory.md): the decoded image (kept while the preset runs), then the
    largest of its stages: the transposed copy an EXIF orientation makes, or the conversion copy of
    modes other than L/LA/RGB/RGBA/I/F plus the premultiplied copy Pillow's reduce makes of an
    image with alpha; and the float32 arrays of the grayscale stage on the reduced image (~36
    bytes a pixel with alpha, ~20 for 16-bit, ~12 else).
    """
    pixels = width * height
    alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa", "P")  # P: when it has a transparent colour
    decoded = _PIXEL_BYTES.get(mode, 4) * pixels
    converted = 0 if mode in _KEPT_MODES else 4 * pixels
    factor = max(width, height) // _REDUCE_FROM
    premultiplied = 4 * pixels if alpha and factor >= 2 else 0
    reduced = pixels // (factor * factor) if factor >= 2 else pixels
    per_float_pixel = 36 if alpha else 20 if mode.startswith("I") or mode == "F" else 12
    return decoded + max(decoded if rotated else 0, converted + premultiplied) + per_float_pixel * reduced


def tensor_body_bytes(body_length: int, header_length: int | None = None) -> int:
    """Peak bytes of parsing a v2 body into arrays: its JSON part (all of it unless `header_length`
    says where the binary data starts) at a Python object per value, the binary rest as arrays."""
    json_part = body_length if header_length is None else min(header_length, body_length)
    return JSON_PEAK * json_part + BINARY_PEAK * (body_length - json_part)


def run_in_chunks(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], inputs: dict[str, np.ndarray],
    chunk_rows: int,
) -> dict[str, np.ndarray]:
    """`run(inputs)`, at most `chunk_rows` rows at a time along the first axis, outputs joined.

    Inputs of differing first axes (or no axes) run in one piece, as they are. (More rows than a
    model's max_batch_size are refused before, by `protocol.check_rows`.)
    """
    rows = {array.shape[0] if array.ndim else None for array in inputs.values()}
    if len(rows) != 1 or None in rows:
        return run(inputs)
    (count,) = rows
    if count <= chunk_rows:
        return run(inputs)
    pieces: list[dict[str, np.ndarray]] = []
    for start in range(0, count, chunk_rows):
        piece = run({name: array[start:start + chunk_rows] for name, array in inputs.items()})
        if any(out.ndim == 0 or out.shape[0] != min(chunk_rows, count - start) for out in piece.values()):
            return run(inputs)  # outputs not batch-first: the graph must see the whole batch
        pieces.append(piece)
    return {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}


def body_bytes(body_length: int, is_json: bool) -> int:
    """Peak bytes of reading a request body into its parts (multipart pieces, parsed JSON, base64 decoded)."""
    return (JSON_PEAK if is_json else MULTIPART_PEAK) * body_length
