"""server/lifecycle.py's RequestGate on its own: bodies read before a slot, the room for large ones, answers unread bodies get.

The processes themselves (HUP, a killed worker, memory recycling, gRPC hand-over, slow clients)
are tested against a real `python -m server`: tests/test_lifecycle.py, test_reliability.py,
test_grpc.py, test_metrics.py, test_slow_clients.py.
"""
from __future__ import annotations

import io
import json
import threading

from server.lifecycle import DISCARD_BYTES, PREREAD_BYTES, RequestGate

MAX_BODY = 1 << 20


class Stream(io.BytesIO):
    """A WSGI input that counts what was read from it."""

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.taken = getattr(self, "taken", 0) + len(data)
        return data


def call(gate: RequestGate, body: bytes, headers: dict | None = None) -> tuple[str, dict, bytes, Stream]:
    stream = Stream(body)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "wsgi.input": stream, **(headers or {})}
    if "HTTP_TRANSFER_ENCODING" not in environ:
        environ["CONTENT_LENGTH"] = str(len(body))
    answer: dict = {}

    def start_response(status, response_headers, exc_info=None):
        answer.update(status=status, headers=dict(response_headers))

    chunks = gate(environ, start_response)
    return answer["status"], answer["headers"], b"".join(chunks), stream


def echo(environ, start_response):
    """An app that answers the length of the body it read."""
    data = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([str(len(data)).encode()])  # not a list: the gate draws it


def test_the_app_gets_the_whole_body_already_read() -> None:
    gate = RequestGate(echo, threads=1, max_body=MAX_BODY, body_room=2 * MAX_BODY, wait_seconds=0.1)
    for size in (0, 10, PREREAD_BYTES, PREREAD_BYTES + 1, MAX_BODY):
        status, _, answer, stream = call(gate, b"x" * size)
        assert (status, answer, stream.taken) == ("200 OK", str(size).encode(), size)
    assert gate.room_used == 0


def test_a_chunked_body_is_read_to_its_end() -> None:
    gate = RequestGate(echo, threads=1, max_body=MAX_BODY, body_room=2 * MAX_BODY, wait_seconds=0.1)
    status, _, answer, _ = call(gate, b"y" * 5000, {"HTTP_TRANSFER_ENCODING": "chunked"})
    assert (status, answer) == ("200 OK", b"5000")


def test_a_large_body_with_no_room_is_read_and_dropped_then_refused_with_retry_after() -> None:
    gate = RequestGate(echo, threads=4, max_body=MAX_BODY, body_room=MAX_BODY, wait_seconds=0.05)
    gate.room_used = gate.room_reading = MAX_BODY - PREREAD_BYTES  # slow bodies, still arriving, hold the room
    status, headers, answer, stream = call(gate, b"z" * (2 * PREREAD_BYTES))
    assert status.startswith("503") and headers["Retry-After"] == "1" and "no room" in json.loads(answer)["error"]
    assert stream.taken == 2 * PREREAD_BYTES  # the client, still sending, gets the answer
    # Small bodies need no room: they still pass.
    assert call(gate, b"s" * 100)[0] == "200 OK"


def test_a_large_body_waits_past_wait_seconds_while_bodies_already_read_hold_the_room() -> None:
    """Room held by requests that are running (or next in the large lane) comes back: waiting on is
    never refused with 503, so a request that can never be served still reaches the app's 413."""
    gate = RequestGate(echo, threads=4, max_body=MAX_BODY, body_room=MAX_BODY, wait_seconds=0.05)
    gate.room_used = MAX_BODY - PREREAD_BYTES  # bodies read, their requests in the app
    answer: list = []
    caller = threading.Thread(target=lambda: answer.append(call(gate, b"w" * (2 * PREREAD_BYTES))))
    caller.start()
    caller.join(timeout=0.5)  # ten times wait_seconds
    assert caller.is_alive() and answer == []  # still waiting, not refused
    with gate.room_changed:  # those requests end
        gate.room_used = 0
        gate.room_changed.notify_all()
    caller.join(timeout=10)
    (status, _, body, stream), = answer
    assert (status, body, stream.taken) == ("200 OK", str(2 * PREREAD_BYTES).encode(), 2 * PREREAD_BYTES)
    assert gate.room_used == gate.room_reading == 0


def test_an_oversized_body_is_left_to_the_app_then_dropped_up_to_a_bound() -> None:
    def refuse(environ, start_response):
        start_response("413 REQUEST ENTITY TOO LARGE", [])
        return [b"too large"]

    gate = RequestGate(refuse, threads=1, max_body=MAX_BODY, body_room=MAX_BODY, wait_seconds=0.05)
    status, _, _, stream = call(gate, b"o" * (MAX_BODY + 10))
    assert status.startswith("413") and stream.taken == MAX_BODY + 10 and gate.room_used == 0
    assert DISCARD_BYTES >= 8 * MAX_BODY


def test_at_most_threads_requests_run_the_app_at_once() -> None:
    inside, most, lock, release = [0], [0], threading.Lock(), threading.Event()

    def slow(environ, start_response):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        release.wait(5)
        with lock:
            inside[0] -= 1
        start_response("200 OK", [])
        return [b""]

    gate = RequestGate(slow, threads=2, max_body=MAX_BODY, body_room=MAX_BODY, wait_seconds=0.05)
    callers = [threading.Thread(target=call, args=(gate, b"p")) for _ in range(6)]
    for caller in callers:
        caller.start()
    threading.Event().wait(0.3)
    release.set()
    for caller in callers:
        caller.join()
    assert most[0] == 2


def test_a_small_request_is_answered_while_large_ones_hold_every_large_slot() -> None:
    """Requests with bodies over PREREAD_BYTES have a lane of their own: however long they hold the app
    (a page that takes seconds to decode), one small by its headers (a digit PNG) never waits for them.
    Large ones beyond their lane wait for it with their bodies unread, holding none of the room."""
    release, entered = threading.Event(), threading.Semaphore(0)

    def app(environ, start_response):
        if int(environ["CONTENT_LENGTH"]) > PREREAD_BYTES:  # the large ones run until released
            entered.release()
            release.wait(30)
        start_response("200 OK", [])
        return [b"done"]

    size = PREREAD_BYTES + 1
    gate = RequestGate(app, threads=2, max_body=MAX_BODY, body_room=8 * MAX_BODY, wait_seconds=0.05, large_threads=2)
    bodies = [Stream(b"L" * size) for _ in range(5)]
    environs = [{"REQUEST_METHOD": "POST", "PATH_INFO": "/", "CONTENT_LENGTH": str(size), "wsgi.input": body}
                for body in bodies]
    large = [threading.Thread(target=gate, args=(environ, lambda *args: None)) for environ in environs]
    try:
        for caller in large:
            caller.start()
        for _ in range(2):  # every large slot is held; the other 3 large requests wait for one
            assert entered.acquire(timeout=10)
        assert not entered.acquire(timeout=0.2)
        answered = []
        small = [threading.Thread(target=lambda: answered.append(call(gate, b"s" * 100)[0])) for _ in range(4)]
        for caller in small:
            caller.start()
        for caller in small:
            caller.join(timeout=10)
        assert answered == ["200 OK"] * 4
        assert all(caller.is_alive() for caller in large)  # still running or waiting: the small ones did not wait
        assert sorted(getattr(body, "taken", 0) for body in bodies) == [0, 0, 0, size, size]
        assert gate.room_used == 2 * size
    finally:
        release.set()
        for caller in large:
            caller.join()
    assert all(body.taken == size for body in bodies) and gate.room_used == 0


def test_keepalive_requests_closes_about_one_answer_in_that_many() -> None:
    gate = RequestGate(echo, threads=1, max_body=MAX_BODY, body_room=MAX_BODY, wait_seconds=0.05, keepalive_requests=10)
    closed = sum(call(gate, b"")[1].get("Connection") == "close" for _ in range(2000))
    assert 100 <= closed <= 320  # 200 expected
    never = RequestGate(echo, threads=1, max_body=MAX_BODY, body_room=MAX_BODY, wait_seconds=0.05)
    assert all("Connection" not in call(never, b"")[1] for _ in range(200))
