"""Log lines: one JSON object per request and per delivery attempt, text in dev mode, no secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from service.logs import JSONFormatter, RequestContextFilter, TextFormatter
from service.state import gateway_state
from tests.conftest import AuthActions
from tests.standin import InngestStandIn


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[dict[str, Any]]:
    """The records of one logger, as the production formatter writes them."""
    formatter = JSONFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == logger]


def test_one_json_line_per_request(
    app: Flask,
    auth: AuthActions,
    user: Any,
    inngest: InngestStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    client = app.test_client()
    assert (
        client.post(
            "/auth/login",
            json={"email": "ada@example.com", "password": "correct horse battery staple"},
        ).status_code
        == 200
    )
    caplog.clear()

    response = client.post(
        "/api",
        json=[{"data": {"secret": "not logged"}}, {}],
        headers={"X-Request-ID": "log-1"},
        environ_base={"REMOTE_ADDR": "192.0.2.4"},
    )

    assert response.status_code == 200
    (access,) = lines(caplog, "service.access")
    assert access["request_id"] == response.headers["X-Request-ID"] != "log-1"
    assert access["client_request_id"] == "log-1"
    assert access["level"] == "info"
    assert {
        k: access[k] for k in ("method", "route", "status", "events", "user_id", "client_ip")
    } == {
        "method": "POST",
        "route": "/api",
        "status": 200,
        "events": 2,
        "user_id": user["id"],
        "client_ip": "192.0.2.4",
    }
    assert isinstance(access["latency_ms"], float)
    assert "not logged" not in caplog.text  # no event data at the default level


def test_one_json_line_per_delivery_attempt(
    app: Flask, inngest: InngestStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    inngest.fail_next(1, 500)

    assert app.test_client().post("/api", json=[{}, {}, {}]).status_code == 200

    attempts = lines(caplog, "service.inngest")
    attempts = [a for a in attempts if "attempt" in a]
    assert [(a["attempt"], a["upstream_status"], a["batch_size"]) for a in attempts] == [
        (1, 500, 3),
        (2, 200, 3),
    ]
    assert all(a["latency_ms"] >= 0 for a in attempts)


def test_connection_errors_are_logged_without_the_key(
    make_app: Callable[..., Flask], inngest: InngestStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    app = make_app(INNGEST_SEND_TIMEOUT="0.3")
    inngest.stop()

    assert app.test_client().post("/api", json={}).status_code == 503

    attempts = [a for a in lines(caplog, "service.inngest") if "attempt" in a]
    assert attempts and attempts[0]["upstream_status"] == "ConnectionError"
    assert inngest.event_key not in caplog.text


def test_text_lines_for_people_and_secrets_removed_from_fields() -> None:
    record = logging.LogRecord(
        "service.x", logging.INFO, __file__, 1, "sent to %s", ("k-123",), None
    )
    record.fields = {"url": "http://x/e/k-123", "n": 2}
    RequestContextFilter(("k-123",)).filter(record)

    text = TextFormatter().format(record)
    as_json = json.loads(JSONFormatter().format(record))

    assert "k-123" not in text and "k-123" not in json.dumps(as_json)
    assert text.endswith("service.x: sent to *** url=http://x/e/*** n=2")
    assert as_json["message"] == "sent to ***" and as_json["url"] == "http://x/e/***"


@pytest.mark.parametrize(("dev", "expected"), [(False, "json"), (True, "text")])
def test_log_format_follows_the_mode(
    make_app: Callable[..., Flask], inngest: InngestStandIn, dev: bool, expected: str
) -> None:
    app = make_app(**({"INNGEST_DEV": inngest.url} if dev else {}))

    assert gateway_state(app).settings.log_format == expected
