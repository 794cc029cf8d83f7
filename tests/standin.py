"""A stand-in for Inngest's event API on 127.0.0.1, answering as the contract doc says.

It checks what a real Inngest server checks (the event key, JSON, names, data, ts, size,
batch length) and the field types (`id` and `v` strings, `ts` an integer, `data` an object),
accepts a batch in order up to the first bad event (partial acceptance), answers without a
Content-Type like the open-source server, and records every request. On every request it
also checks what the SDKs always send (`Content-Type: application/json` and a well-formed
`x-inngest-event-id-seed`), answering 400 when either is wrong; that is stricter than the
server, so that a gateway bug shows. Every 400 the service should never cause (anything but
a size or count limit) is kept in `violations`, which the tests' fixture checks after each test.

It counts the requests it is handling at once (`most_in_flight`). Tests can make it fail for
a while, answer slowly, answer a 2xx that is not Inngest's JSON,
accept the events and then hold the answer past the sender's budget (`stall_next`) or send it
a byte at a time (`trickle_next`), or stop and start on the same port.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import socket
import ssl
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

TS_MIN = int(datetime(1980, 1, 1, tzinfo=UTC).timestamp() * 1000)
TS_MAX = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_EVENTS = 5000
SEED = re.compile(r"^\d+,[A-Za-z0-9+/]{14}==$")


@dataclass
class Received:
    """One request as the stand-in saw it, and what it answered."""

    key: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    events: list[Any] = field(default_factory=list)

    @property
    def seed(self) -> str | None:
        return self.headers.get("x-inngest-event-id-seed")


@dataclass
class Fault:
    """How to answer one request: instead of handling it, or after handling it."""

    status: int = 500
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Instead of handling: this exact body (empty, HTML, ...) rather than a JSON `body`.
    raw: bytes | None = None
    content_type: str | None = None
    # After handling the events as usual (they are accepted): hold the answer this long,
    stall: float = 0.0
    # or send it a byte every `interval` seconds for `trickle_for` seconds, in its headers
    # ("headers") or its body ("body"), then the rest at once.
    trickle: str | None = None
    trickle_for: float = 0.0
    interval: float = 0.2

    @property
    def handles(self) -> bool:
        """Whether the events are handled (and accepted) before this fault shapes the answer."""
        return bool(self.stall or self.trickle)


class Violation(Exception):
    """A request the gateway should never send (wrong headers, wrong field types)."""


def _strict_loads(raw: bytes) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    value = json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    # A lone surrogate escape decodes, but is not text: encoding it back fails.
    json.dumps(value, ensure_ascii=False).encode("utf-8")
    return value


def _event_error(event: Any, max_event_bytes: int) -> str | None:
    """What Inngest's server says about one event, or None if it accepts it."""
    if not isinstance(event, dict):
        return "event must be an object"
    name = event.get("name")
    if not isinstance(name, str) or not name:
        return "event name is required"
    if name.lower().startswith("inngest/"):
        return "event name is reserved for internal use"
    if len(name) > 256:
        return "event name is too long"
    if "data" in event and not isinstance(event["data"], dict):
        return "data must be an object"
    if "id" in event and not isinstance(event["id"], str):
        return "id must be a string"
    if "v" in event and not isinstance(event["v"], str):
        return "v must be a string"
    ts = event.get("ts", 0)
    if isinstance(ts, bool) or not isinstance(ts, int):
        return "ts must be an integer"
    if ts and not TS_MIN <= ts < TS_MAX:
        return "timestamp is out of range"
    size = len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_event_bytes:
        return f"{TOO_LARGE}: {size} bytes, limit {max_event_bytes}"
    return None


TOO_LARGE = "event is too large"


def _request_error(headers: dict[str, str]) -> str | None:
    """What is wrong with the request's headers, as the SDKs send them; None if nothing."""
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return f"Content-Type must be application/json, not {media_type or 'none'!r}"
    if not SEED.match(headers.get("x-inngest-event-id-seed", "")):
        return "x-inngest-event-id-seed must be '<millis>,<base64 of 10 bytes>'"
    return None


class InngestStandIn:
    """A real HTTP server that speaks Inngest's event API."""

    def __init__(
        self,
        event_key: str = "test-event-key",
        *,
        max_event_bytes: int = 3 * 1024 * 1024,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.event_key = self.default_key = event_key
        self.max_event_bytes = self.default_max_event_bytes = max_event_bytes
        self.delay = 0.0
        self.fail_ratio = 0.0
        self._random = random.Random(1)
        self.received: list[Received] = []
        self.accepted: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        # Requests being handled right now, and the most there were at once since reset().
        self.in_flight = 0
        self.most_in_flight = 0
        # Set by reset(): stalled and trickling answers of an earlier test end at once, and
        # what they saw is not recorded into the next test.
        self._released = threading.Event()
        self.server = HTTPServer(host=host, port=port, threaded=True, ssl_context=ssl_context)
        self._scheme = "https" if ssl_context else "http"
        self.server.no_handler_status_code = 404
        self.server.expect_request(re.compile(r"^/e/[^/]*$"), method="POST").respond_with_handler(
            self._handle
        )

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> InngestStandIn:
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server.is_running():
            self.server.stop()

    def reset(self) -> None:
        """Forget what was received and queued, and serve again if stopped."""
        with self._lock:
            self._released.set()
            self._released = threading.Event()
            self.received.clear()
            self.accepted.clear()
            self.violations.clear()
            self._faults.clear()
            self.most_in_flight = self.in_flight
        self.delay = 0.0
        self.fail_ratio = 0.0
        self.event_key = self.default_key
        self.max_event_bytes = self.default_max_event_bytes
        if not self.server.is_running():
            self.server.start()

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self.server.host}:{self.server.port}"

    # -- behaviour -------------------------------------------------------------------
    def fail_next(
        self,
        count: int,
        status: int = 500,
        *,
        body: dict[str, Any] | None = None,
        retry_after: str | None = None,
    ) -> None:
        """Answer the next `count` requests with `status` instead of handling them."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self._queue(count, Fault(status, body, headers))

    def answer_next_raw(
        self, count: int, status: int = 200, raw: bytes = b"", content_type: str | None = None
    ) -> None:
        """Answer the next `count` requests with this body (empty, HTML...) without handling them.

        What a proxy or a load balancer in front of Inngest may answer; Inngest itself
        always answers JSON.
        """
        self._queue(count, Fault(status, raw=raw, content_type=content_type))

    def stall_next(self, count: int, seconds: float) -> None:
        """Accept the next `count` requests' events, then hold each answer for `seconds`.

        A read timeout after the events were taken: the sender cannot know they arrived.
        """
        self._queue(count, Fault(stall=seconds))

    def trickle_next(
        self, count: int, part: str = "headers", *, seconds: float = 4.0, interval: float = 0.2
    ) -> None:
        """Accept the next `count` requests' events, then answer a byte every `interval` s.

        `part` is where the trickle is: "headers" (from the status line on, padded with a
        long header) or "body" (padded with leading spaces). After about `seconds` the rest
        goes at once, so the answer is complete and valid; then the connection is closed.
        """
        if part not in ("headers", "body"):
            raise ValueError(part)
        self._queue(count, Fault(trickle=part, trickle_for=seconds, interval=interval))

    def _queue(self, count: int, fault: Fault) -> None:
        with self._lock:
            self._faults.extend(fault for _ in range(count))

    def clear_faults(self) -> None:
        """Drop the faults still queued: Inngest recovers, what it received is kept."""
        with self._lock:
            self._faults.clear()

    def accepted_ids(self) -> list[str]:
        with self._lock:
            return [event.get("id") for event in self.accepted]

    def accepted_events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.accepted)

    # -- the event API ---------------------------------------------------------------
    def _answer(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Response:
        # The open-source server sets no Content-Type on these answers.
        response = Response(json.dumps(body), status=status, headers=headers or {})
        del response.headers["Content-Type"]
        return response

    def _handle(self, request: Request) -> Response:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return self._handle_counted(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handle_counted(self, request: Request) -> Response:
        released = self._released
        if self.delay:
            released.wait(self.delay)
        record = Received(
            key=request.path.removeprefix("/e/"),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=request.get_data(),
        )
        with self._lock:
            if released.is_set():  # reset() while this request waited: not this test's
                return self._answer(503, {"status": 503, "error": "stand-in was reset"})
            self.received.append(record)
            fault = self._faults.popleft() if self._faults else None
            if fault is None and self.fail_ratio and self._random.random() < self.fail_ratio:
                fault = Fault(500)
        response = self._respond(record, fault)
        record.status = response.status_code
        if fault is not None and fault.stall:
            released.wait(fault.stall)
        if fault is not None and fault.trickle:
            self._trickle(request, response, fault, released)
        return response

    def _respond(self, record: Received, fault: Fault | None) -> Response:
        problem = _request_error(record.headers)
        if problem is not None:
            return self._refuse(problem)
        if fault is not None and not fault.handles:
            if fault.raw is not None:
                response = Response(fault.raw, status=fault.status, headers=fault.headers)
                if fault.content_type is None:
                    del response.headers["Content-Type"]
                else:
                    response.headers["Content-Type"] = fault.content_type
                return response
            body = (
                fault.body
                if fault.body is not None
                else {"status": fault.status, "error": "stand-in fault"}
            )
            return self._answer(fault.status, body, fault.headers)
        if not record.key:
            return self._answer(401, {"status": 401, "error": "Event key is required"})
        if self.event_key and record.key != self.event_key:
            return self._answer(401, {"status": 401, "error": "Event key not found"})
        try:
            payload = _strict_loads(record.body)
        except ValueError as exc:
            return self._refuse(f"invalid JSON: {exc}")
        events = payload if isinstance(payload, list) else [payload]
        record.events = events
        if len(events) > MAX_EVENTS:
            return self._answer(400, {"ids": [], "status": 400, "error": "too many events"})
        ids: list[str] = []
        for index, event in enumerate(events):
            error = _event_error(event, self.max_event_bytes)
            if error:
                return self._refuse(error, ids)
            ids.append(self._internal_id(record.seed, index))
            with self._lock:
                self.accepted.append(event)
        return self._answer(200, {"ids": ids, "status": 200})

    def _refuse(self, error: str, ids: list[str] | None = None) -> Response:
        """400 as Inngest answers it; kept as a violation unless it is a size limit."""
        if not error.startswith(TOO_LARGE):
            with self._lock:
                self.violations.append(error)
        return self._answer(400, {"ids": ids or [], "status": 400, "error": error})

    @staticmethod
    def _trickle(
        request: Request, response: Response, fault: Fault, released: threading.Event
    ) -> None:
        """Write `response` to the socket a byte at a time, then close it.

        werkzeug then finds the socket closed and drops its own copy of the answer.
        """
        sock: socket.socket = request.environ["werkzeug.socket"]
        body = response.get_data()
        steps = int(fault.trickle_for / fault.interval)
        head = f"HTTP/1.1 {response.status}\r\nConnection: close\r\n"
        if fault.trickle == "headers":
            head += f"X-Padding: {'p' * max(0, steps - len(head))}\r\n"
        else:
            body = b" " * max(0, steps - len(body)) + body  # JSON allows leading whitespace
        head += f"Content-Length: {len(body)}\r\n\r\n"
        raw = head.encode() + body
        at_once = 0 if fault.trickle == "headers" else len(head)
        trickled = raw[at_once : at_once + steps]
        try:
            sock.sendall(raw[:at_once])
            for byte in trickled:
                if released.wait(fault.interval):
                    return
                sock.sendall(bytes([byte]))
            sock.sendall(raw[at_once + steps :])
        except OSError:
            pass  # the client gave up: what the trickle is for
        finally:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @staticmethod
    def _internal_id(seed: str | None, index: int) -> str:
        """Derived from the seed header and the index, as the server does."""
        return hashlib.sha1(f"{seed}:{index}".encode()).hexdigest()[:26].upper()


@pytest.fixture(scope="session")
def inngest_server() -> Iterator[InngestStandIn]:
    """One stand-in for the whole run (both conftests import these two fixtures)."""
    standin = InngestStandIn().start()
    yield standin
    standin.stop()


@pytest.fixture
def inngest(inngest_server: InngestStandIn) -> Iterator[InngestStandIn]:
    """Inngest's event API, served for real on a loopback port, fresh for each test.

    Afterwards, no request of the test may have broken the contract (wrong Content-Type or
    seed header, a field of the wrong type): the gateway must always send them right.
    """
    inngest_server.reset()
    yield inngest_server
    assert inngest_server.violations == [], "requests Inngest would refuse"


def main() -> None:
    """Serve the stand-in on its own, for benchmarks and manual tries."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8288)
    parser.add_argument("--event-key", default="test-event-key")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--fail-ratio", type=float, default=0.0, help="share answered 500")
    args = parser.parse_args()
    standin = InngestStandIn(args.event_key, port=args.port)
    standin.delay, standin.fail_ratio = args.delay, args.fail_ratio
    standin.start()
    print(f"stand-in Inngest on {standin.url} (key {args.event_key})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        standin.stop()


if __name__ == "__main__":
    main()
