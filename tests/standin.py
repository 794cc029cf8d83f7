"""A stand-in for Inngest's event API on 127.0.0.1, answering as the contract doc says.

It checks what a real Inngest server checks (the event key, JSON, names, data, ts, size,
batch length), accepts a batch in order up to the first bad event (partial acceptance),
answers without a Content-Type like the open-source server, and records every request.
Tests can make it fail for a while, answer slowly, or stop and start on the same port.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str]


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
    ts = event.get("ts", 0)
    if isinstance(ts, bool) or not isinstance(ts, int):
        return "ts must be an integer"
    if ts and not TS_MIN <= ts < TS_MAX:
        return "timestamp is out of range"
    size = len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_event_bytes:
        return f"event is too large: {size} bytes, limit {max_event_bytes}"
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
    ) -> None:
        self.event_key = self.default_key = event_key
        self.max_event_bytes = self.default_max_event_bytes = max_event_bytes
        self.delay = 0.0
        self.fail_ratio = 0.0
        self._random = random.Random(1)
        self.received: list[Received] = []
        self.accepted: list[dict[str, Any]] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self.server = HTTPServer(host=host, port=port, threaded=True)
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
            self.received.clear()
            self.accepted.clear()
            self._faults.clear()
        self.delay = 0.0
        self.fail_ratio = 0.0
        self.event_key = self.default_key
        self.max_event_bytes = self.default_max_event_bytes
        if not self.server.is_running():
            self.server.start()

    @property
    def url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

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
        with self._lock:
            self._faults.extend(Fault(status, body, headers) for _ in range(count))

    def accepted_ids(self) -> list[str]:
        with self._lock:
            return [event.get("id") for event in self.accepted]

    # -- the event API ---------------------------------------------------------------
    def _answer(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Response:
        # The open-source server sets no Content-Type on these answers.
        response = Response(json.dumps(body), status=status, headers=headers or {})
        del response.headers["Content-Type"]
        return response

    def _handle(self, request: Request) -> Response:
        if self.delay:
            time.sleep(self.delay)
        record = Received(
            key=request.path.removeprefix("/e/"),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=request.get_data(),
        )
        response = self._respond(record)
        record.status = response.status_code
        with self._lock:
            self.received.append(record)
        return response

    def _respond(self, record: Received) -> Response:
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            if fault is None and self.fail_ratio and self._random.random() < self.fail_ratio:
                fault = Fault(500, None, {})
        if fault is not None:
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
            return self._answer(400, {"ids": [], "status": 400, "error": f"invalid JSON: {exc}"})
        events = payload if isinstance(payload, list) else [payload]
        record.events = events
        if len(events) > MAX_EVENTS:
            return self._answer(400, {"ids": [], "status": 400, "error": "too many events"})
        ids: list[str] = []
        for index, event in enumerate(events):
            error = _event_error(event, self.max_event_bytes)
            if error:
                return self._answer(400, {"ids": ids, "status": 400, "error": error})
            ids.append(self._internal_id(record.seed, index))
            with self._lock:
                self.accepted.append(event)
        return self._answer(200, {"ids": ids, "status": 200})

    @staticmethod
    def _internal_id(seed: str | None, index: int) -> str:
        """Derived from the seed header and the index, as the server does."""
        return hashlib.sha1(f"{seed}:{index}".encode()).hexdigest()[:26].upper()


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
