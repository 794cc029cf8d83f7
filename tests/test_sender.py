"""Sending to Inngest through POST /api: retries that end in success, in 503 and in 502.

Every test posts through the real view and lets the sender talk HTTP to the stand-in on
127.0.0.1; faults are the stand-in's answers (or its absence), never patched code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import assert_envelope
from tests.standin import SEED, InngestStandIn

RETRYABLE_STATUSES = [500, 502, 503, 504, 429]


def ok_ids(response: TestResponse) -> list[str]:
    """The ids of a 200 answer, after checking its shape."""
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "ok"
    assert isinstance(body["ids"], list) and body["ids"]
    return list(body["ids"])


def retry_after(response: TestResponse) -> int:
    """The `Retry-After` header as whole seconds, at least one."""
    value = response.headers["Retry-After"]
    assert value.isdigit(), value
    assert int(value) >= 1
    return int(value)


def assert_identical_attempts(inngest: InngestStandIn, ids: list[str]) -> None:
    """Every attempt carried the same body, seed and event ids: a retry, not a new send."""
    first = inngest.received[0]
    assert SEED.match(first.seed or "")
    for attempt in inngest.received:
        assert attempt.body == first.body
        assert attempt.seed == first.seed
        assert [event["id"] for event in json.loads(attempt.body)] == ids


def quiet_standin_access_log(caplog: pytest.LogCaptureFixture) -> None:
    """Capture everything at DEBUG, except the stand-in's own access lines.

    The stand-in runs on werkzeug's dev server, whose access log quotes the request path
    `/e/<key>`; those lines are the test's server talking, not the service.
    """
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="werkzeug")


# -- retries that end in success ----------------------------------------------------------


@pytest.mark.parametrize("status", RETRYABLE_STATUSES)
def test_one_retryable_failure_then_success(
    client: FlaskClient, inngest: InngestStandIn, status: int
) -> None:
    inngest.fail_next(1, status)

    response = client.post("/api", json={"name": "app/retry", "data": {"n": 1}})

    ids = ok_ids(response)
    assert [r.status for r in inngest.received] == [status, 200]
    assert_identical_attempts(inngest, ids)
    assert inngest.accepted_ids() == ids


def test_a_500_then_success_resends_the_same_events(
    client: FlaskClient, inngest: InngestStandIn
) -> None:
    inngest.fail_next(1, 500)

    response = client.post("/api", json=[{"name": "app/a"}, {"name": "app/b", "id": "b-1"}])

    ids = ok_ids(response)
    assert ids[1] != "b-1"  # derived from the client's key (tests/test_event_ids.py)
    assert len(inngest.received) == 2
    first, second = inngest.received
    assert first.body == second.body
    assert first.seed == second.seed
    assert SEED.match(second.seed or "")
    assert [e["id"] for e in second.events] == ids
    assert inngest.accepted_ids() == ids


def test_429_retry_after_is_honoured(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(INNGEST_GATEWAY_SEND_TIMEOUT="5").test_client()
    inngest.fail_next(1, 429, retry_after="1")

    started = time.monotonic()
    response = client.post("/api", json={"name": "app/limited"})
    elapsed = time.monotonic() - started

    ids = ok_ids(response)
    assert [r.status for r in inngest.received] == [429, 200]
    assert_identical_attempts(inngest, ids)
    assert elapsed >= 0.95  # waited for Retry-After, not the ~0.1 s backoff
    assert elapsed < 4


def test_a_run_of_gateway_errors_then_success(client: FlaskClient, inngest: InngestStandIn) -> None:
    for status in (502, 503, 504):
        inngest.fail_next(1, status)

    response = client.post("/api", json={"name": "app/flaky"})

    ids = ok_ids(response)
    assert [r.status for r in inngest.received] == [502, 503, 504, 200]
    assert_identical_attempts(inngest, ids)
    assert inngest.accepted_ids() == ids


def test_connection_refused_until_inngest_comes_back(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(INNGEST_GATEWAY_SEND_TIMEOUT="5").test_client()
    inngest.stop()
    restart = threading.Timer(0.3, inngest.server.start)
    restart.start()
    try:
        started = time.monotonic()
        response = client.post("/api", json={"name": "app/reconnect"})
        elapsed = time.monotonic() - started
    finally:
        restart.join(5)

    ids = ok_ids(response)
    assert elapsed >= 0.3
    assert len(inngest.received) == 1  # refused connections never reached it
    assert inngest.accepted_ids() == ids


# -- retries that end in 503 -------------------------------------------------------------


def test_persistent_500_becomes_503_within_the_send_timeout(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(INNGEST_GATEWAY_SEND_TIMEOUT="1").test_client()
    inngest.fail_next(1000, 500)

    started = time.monotonic()
    response = client.post("/api", json={"name": "app/down", "id": "down-1"})
    elapsed = time.monotonic() - started

    body = assert_envelope(response, 503, "upstream_unavailable")
    assert body["errors"] == {}
    retry_after(response)
    assert elapsed < 3
    assert len(inngest.received) >= 2  # it did retry
    assert {r.status for r in inngest.received} == {500}
    assert_identical_attempts(inngest, [json.loads(inngest.received[0].body)[0]["id"]])
    assert inngest.accepted == []


def test_inngest_down_the_whole_time_is_503(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(INNGEST_GATEWAY_SEND_TIMEOUT="1").test_client()
    inngest.stop()

    started = time.monotonic()
    response = client.post("/api", json={"name": "app/down"})
    elapsed = time.monotonic() - started

    assert_envelope(response, 503, "upstream_unavailable")
    retry_after(response)
    assert elapsed < 3
    assert inngest.received == []


def test_retry_after_beyond_the_time_budget_gives_up_at_once(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(INNGEST_GATEWAY_SEND_TIMEOUT="2").test_client()
    inngest.fail_next(1, 429, retry_after="30")

    started = time.monotonic()
    response = client.post("/api", json={"name": "app/limited"})
    elapsed = time.monotonic() - started

    assert_envelope(response, 503, "upstream_unavailable")
    retry_after(response)
    assert elapsed < 1  # did not sleep towards a retry it could never make
    assert [r.status for r in inngest.received] == [429]


# -- refusals that end in 502, without retrying -----------------------------------------


def test_wrong_event_key_is_502_and_the_log_says_why(
    make_app: Callable[..., Flask], inngest: InngestStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    quiet_standin_access_log(caplog)
    client = make_app(INNGEST_EVENT_KEY="wrong-key").test_client()

    response = client.post("/api", json={"name": "app/x"})

    assert_envelope(response, 502, "upstream_rejected")
    assert len(inngest.received) == 1
    assert inngest.received[0].key == "wrong-key"
    assert inngest.received[0].status == 401
    assert inngest.accepted == []
    refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("INNGEST_EVENT_KEY" in m and "401" in m for m in refusals), caplog.text
    assert "wrong-key" not in caplog.text
    assert "wrong-key" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"ids": [], "status": 400, "error": "event name is required"}),
        (404, {"status": 404, "error": "Not Found"}),
        (403, {"status": 403, "error": "Forbidden"}),
        (413, {"ids": [], "status": 413, "error": "request too large"}),
    ],
)
def test_permanent_refusal_is_502_without_retry(
    client: FlaskClient,
    inngest: InngestStandIn,
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: dict[str, Any],
) -> None:
    quiet_standin_access_log(caplog)
    inngest.fail_next(1, status, body=body)

    started = time.monotonic()
    response = client.post("/api", json={"name": "app/refused"})
    elapsed = time.monotonic() - started

    assert_envelope(response, 502, "upstream_rejected")
    assert "Retry-After" not in response.headers
    assert [r.status for r in inngest.received] == [status]
    assert inngest.accepted == []
    assert elapsed < 1
    assert body["error"] in caplog.text  # the log says what Inngest said


@pytest.mark.parametrize(
    "body",
    [
        {"ids": [], "status": 200, "error": "something went wrong"},
        {"ids": [], "status": 400, "error": "event name is required"},
    ],
)
def test_http_200_with_an_error_in_the_body_is_502(
    client: FlaskClient, inngest: InngestStandIn, body: dict[str, Any]
) -> None:
    inngest.fail_next(1, 200, body=body)

    response = client.post("/api", json={"name": "app/odd"})

    assert_envelope(response, 502, "upstream_rejected")
    assert [r.status for r in inngest.received] == [200]


def test_partial_acceptance_of_a_batch_is_502(client: FlaskClient, inngest: InngestStandIn) -> None:
    inngest.max_event_bytes = 2000
    batch = [
        {"name": "app/small", "id": "small-0"},
        {"name": "app/big", "id": "big-1", "data": {"text": "x" * 5000}},
        {"name": "app/small", "id": "small-2"},
    ]

    response = client.post("/api", json=batch)

    assert_envelope(response, 502, "upstream_rejected")
    assert len(inngest.received) == 1
    assert inngest.received[0].status == 400
    assert inngest.accepted_ids() == [inngest.received[0].events[0]["id"]]


# -- secrets ----------------------------------------------------------------------------

EVENT_KEY = "evtkey-Zq8vX2mN4pL7rT1w"
SESSION_SECRET = "session-secret-Hk3jW9sB6dF0yU5e"


def assert_no_secret(response: TestResponse) -> None:
    texts = [response.get_data(as_text=True)]
    texts += [f"{name}: {value}" for name, value in response.headers.items()]
    for text in texts:
        assert EVENT_KEY not in text
        assert SESSION_SECRET not in text


def test_secrets_never_reach_responses_or_logs(
    make_app: Callable[..., Flask], inngest: InngestStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    quiet_standin_access_log(caplog)
    client = make_app(
        INNGEST_EVENT_KEY=EVENT_KEY, SECRET_KEY=SESSION_SECRET, INNGEST_GATEWAY_SEND_TIMEOUT="0.5"
    ).test_client()
    inngest.event_key = EVENT_KEY

    delivered = client.post("/api", json={"name": "app/ok"})
    ok_ids(delivered)
    assert inngest.received[-1].key == EVENT_KEY

    inngest.stop()
    refused = client.post("/api", json={"name": "app/refused"})
    assert_envelope(refused, 503, "upstream_unavailable")
    # requests quotes the URL, and so the key, in connection errors: the log must not.
    assert any("ConnectionError" in r.getMessage() for r in caplog.records), caplog.text

    inngest.server.start()
    inngest.event_key = "another-key"
    rejected = client.post("/api", json={"name": "app/rejected"})
    assert_envelope(rejected, 502, "upstream_rejected")

    for response in (delivered, refused, rejected):
        assert_no_secret(response)
    assert EVENT_KEY not in caplog.text
    assert SESSION_SECRET not in caplog.text
    for record in caplog.records:
        assert EVENT_KEY not in record.getMessage()


# -- the time budget, and answers that are not what Inngest sends -----------------------

MAYBE_RECEIVED = "may or may not have received"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_trickled_answer_is_503_within_the_send_timeout(
    make_app: Callable[..., Flask], inngest: InngestStandIn, part: str
) -> None:
    """A byte every 0.2 s never trips a per-read timeout; the budget is for the whole send."""
    client = make_app(INNGEST_GATEWAY_SEND_TIMEOUT="1").test_client()
    inngest.trickle_next(10, part, seconds=6)

    started = time.monotonic()
    response = client.post("/api", json={"name": "app/slow", "id": "slow-1"})
    elapsed = time.monotonic() - started

    assert elapsed < 1 + 1, f"{elapsed:.1f}s for a 1 s budget"
    body = assert_envelope(response, 503, "upstream_unavailable")
    assert MAYBE_RECEIVED in body["message"]  # Inngest did take them, before trickling
    retry_after(response)
    sent = inngest.accepted_ids()
    assert len(sent) == 1
    assert_identical_attempts(inngest, sent)

    # The half-read connection was not pooled: the next send reads a whole, fresh answer.
    assert inngest.violations == []
    inngest.reset()  # ends the trickle
    answered = ok_ids(client.post("/api", json={"name": "app/next", "id": "next-1"}))
    assert len(answered) == 1 and answered != sent
    assert inngest.accepted_ids() == answered


@pytest.mark.timeout(30)
def test_a_read_timeout_after_acceptance_is_503_and_a_keyed_retry_is_a_repeat(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """Inngest took the events but its answer never came: the client cannot tell, so the
    503 says so, and a retry with the same Idempotency-Key sends the same event id again."""
    client = make_app(INNGEST_GATEWAY_SEND_TIMEOUT="1").test_client()
    inngest.stall_next(1, 5)
    key = {"Idempotency-Key": "order-77"}

    started = time.monotonic()
    first = client.post("/api", json={"name": "app/order"}, headers=key)
    elapsed = time.monotonic() - started

    body = assert_envelope(first, 503, "upstream_unavailable")
    assert MAYBE_RECEIVED in body["message"]
    assert "Idempotency-Key" in body["message"]
    assert elapsed < 1 + 1
    sent = inngest.accepted_ids()  # it did arrive
    assert len(sent) == 1

    again = client.post("/api", json={"name": "app/order"}, headers=key)

    assert ok_ids(again) == sent
    # Inngest sees the same event id twice and runs its functions once.
    assert inngest.accepted_ids() == sent * 2


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"", None),
        (b"<html><body>Welcome to the proxy</body></html>", "text/html"),
        (b"OK", "text/plain"),
    ],
    ids=["empty", "html", "text"],
)
def test_a_2xx_that_is_not_inngests_json_is_retried_with_the_same_events(
    client: FlaskClient, inngest: InngestStandIn, raw: bytes, content_type: str | None
) -> None:
    """Only Inngest's JSON says the events were taken; anything else is an unknown outcome."""
    inngest.answer_next_raw(1, 200, raw, content_type)

    response = client.post("/api", json={"name": "app/proxied", "id": "p-1"})

    answered = ok_ids(response)
    assert len(answered) == 1
    assert [r.status for r in inngest.received] == [200, 200]
    assert_identical_attempts(inngest, answered)
    assert inngest.accepted_ids() == answered


def test_a_2xx_that_is_never_inngests_json_ends_in_503(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(INNGEST_GATEWAY_SEND_TIMEOUT="1").test_client()
    inngest.answer_next_raw(1000, 200, b"<html>maintenance</html>", "text/html")

    started = time.monotonic()
    response = client.post("/api", json={"name": "app/proxied", "id": "p-2"})
    elapsed = time.monotonic() - started

    body = assert_envelope(response, 503, "upstream_unavailable")
    assert MAYBE_RECEIVED in body["message"]
    assert elapsed < 1 + 1
    assert len(inngest.received) >= 2  # retried within the budget
    first_ids = [event["id"] for event in json.loads(inngest.received[0].body)]
    assert len(first_ids) == 1
    assert_identical_attempts(inngest, first_ids)


@pytest.fixture
def tls_inngest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InngestStandIn]:
    """The stand-in over TLS, with a certificate for 127.0.0.1 that requests is told to trust."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    standin = InngestStandIn(ssl_context=context).start()
    yield standin
    standin.reset()  # ends a trickle still running
    standin.stop()
    assert standin.violations == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("part", ["headers", "body"])
def test_the_send_timeout_holds_over_tls_too(
    make_app: Callable[..., Flask], tls_inngest: InngestStandIn, part: str
) -> None:
    client = make_app(
        INNGEST_GATEWAY_SEND_TIMEOUT="1", INNGEST_BASE_URL=tls_inngest.url
    ).test_client()
    first = ok_ids(client.post("/api", json={"name": "app/tls", "id": "t-0"}))
    assert tls_inngest.accepted_ids() == first
    tls_inngest.trickle_next(10, part, seconds=6)

    started = time.monotonic()
    response = client.post("/api", json={"name": "app/tls", "id": "t-1"})
    elapsed = time.monotonic() - started

    assert elapsed < 1 + 1, f"{elapsed:.1f}s for a 1 s budget"
    assert_envelope(response, 503, "upstream_unavailable")
    assert len(tls_inngest.accepted_ids()) == 2 and tls_inngest.accepted_ids()[:1] == first


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts and never says a word: a TLS handshake with it
    never ends.

    With `queue_full_for`, its accept queue starts full, so the kernel drops a client's SYN
    and the client's connect only completes on its retransmission, about a second later,
    as it does on a congested network.
    """

    FILLERS = 3

    def __init__(self, queue_full_for: float = 0.0) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.queue_full_for = queue_full_for
        self.held: list[socket.socket] = []
        self.fillers: set[int] = set()
        self.accepted = 0  # connections other than the fillers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        if queue_full_for:
            for _ in range(self.FILLERS):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", self.port))
                self.held.append(filler)
                self.fillers.add(filler.getsockname()[1])
            time.sleep(0.2)  # the fillers' handshakes are done: the queue is full

    def start(self) -> SilentServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        self._stop.wait(self.queue_full_for)
        while not self._stop.is_set():
            try:
                connection, (_, port) = self.listener.accept()
            except TimeoutError:
                continue
            self.held.append(connection)  # held open, silent, until the test ends
            self.accepted += port not in self.fillers

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in [*self.held, self.listener]:
            sock.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("queue_full_for", [0.0, 0.3], ids=["silent", "slow-connect-then-silent"])
def test_a_tls_handshake_that_never_ends_is_503_within_the_send_timeout(
    make_app: Callable[..., Flask], inngest: InngestStandIn, queue_full_for: float
) -> None:
    """Connecting and the TLS handshake share the send's budget: a slow connect leaves the
    handshake only what is left of it, not a whole connect timeout of its own."""
    budget = 2.0
    server = SilentServer(queue_full_for)
    try:
        client = make_app(
            INNGEST_GATEWAY_SEND_TIMEOUT=str(budget),
            INNGEST_BASE_URL=f"https://127.0.0.1:{server.port}",
        ).test_client()
        server.start()
        started = time.monotonic()
        response = client.post("/api", json={"name": "app/tls", "id": "h-1"})
        elapsed = time.monotonic() - started
        accepted = server.accepted
    finally:
        server.stop()

    assert_envelope(response, 503, "upstream_unavailable")
    # The service got through to the handshake (rather than giving up while connecting).
    assert accepted >= 1
    assert elapsed < budget + 0.6, f"{elapsed:.1f}s for a {budget:.0f} s budget"


def test_proxy_settings_from_the_environment_still_apply(
    make_app: Callable[..., Flask], inngest: InngestStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender reads the proxy variables once, but still obeys them (and NO_PROXY)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens here once the socket is closed
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)

    through_proxy = make_app(INNGEST_GATEWAY_SEND_TIMEOUT="1").test_client().post("/api", json={})

    assert_envelope(through_proxy, 503, "upstream_unavailable")
    assert inngest.received == []  # it went to the (dead) proxy, not to Inngest

    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1")

    assert make_app().test_client().post("/api", json={}).status_code == 200
    assert len(inngest.received) == 1
