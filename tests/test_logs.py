"""Log lines: one JSON object per request and per delivery attempt, text in dev mode, no secrets."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, unquote

import pytest
from flask import Flask

from service.logs import JSONFormatter, RequestContextFilter, TextFormatter
from service.settings import service_settings
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
    caplog.set_level(logging.INFO, logger="inngest_gateway")
    inngest.fail_next(1, 500)

    assert app.test_client().post("/api", json=[{}, {}, {}]).status_code == 200

    attempts = lines(caplog, "inngest_gateway.inngest")
    attempts = [a for a in attempts if "attempt" in a]
    assert [(a["attempt"], a["upstream_status"], a["batch_size"]) for a in attempts] == [
        (1, 500, 3),
        (2, 200, 3),
    ]
    assert all(a["latency_ms"] >= 0 for a in attempts)


def test_connection_errors_are_logged_without_the_key(
    make_app: Callable[..., Flask], inngest: InngestStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inngest_gateway")
    app = make_app(INNGEST_GATEWAY_SEND_TIMEOUT="0.3")
    inngest.stop()

    assert app.test_client().post("/api", json={}).status_code == 503

    attempts = [a for a in lines(caplog, "inngest_gateway.inngest") if "attempt" in a]
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

    assert service_settings(app).log_format == expected


# -- no forged lines: control characters are escaped ------------------------------------------

# A path that, written as it is, would end the access line and write a well-formed second one.
FORGED = "2026-11-28 19:44:40,512 INFO [0123abcd] service.access: POST /api 202 1.0ms"
FORGING_PATH = (
    "/x%0a"
    + quote(FORGED)
    + "%0d%0a"
    + quote(FORGED)
    + "%0d"  # \n, \r\n, and \r
    + "%1b[31m%00%7f%c2%85%e2%80%a8%09%5c"  # ESC, NUL, DEL, NEL (C1), U+2028, tab, backslash
)
RAW_PATH = unquote(FORGING_PATH)
HANDLER = "inngest-gateway"  # the name configure_logging gives the service's handler


@contextmanager
def service_log(make_app: Callable[..., Flask], **env: str) -> Iterator[tuple[Flask, io.StringIO]]:
    """An app and what its own log handler writes (the stream swapped for a buffer, then back)."""
    app = make_app(**env)
    (handler,) = [h for h in logging.getLogger("service").handlers if h.get_name() == HANDLER]
    assert isinstance(handler, logging.StreamHandler)
    written = io.StringIO()
    previous = handler.setStream(written)
    try:
        yield app, written
    finally:
        handler.setStream(previous)


def access_lines(written: io.StringIO) -> list[str]:
    return [line for line in written.getvalue().split("\n") if "service.access" in line]


def test_the_gateways_lines_go_through_the_services_handler(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """The extension logs under its own package name; the service's handler writes it too."""
    with service_log(make_app, LOG_FORMAT="json") as (app, written):
        assert app.test_client().post("/api", json={}).status_code == 200
    lines = [json.loads(line) for line in written.getvalue().splitlines()]
    (attempt,) = [line for line in lines if line["logger"] == "inngest_gateway.inngest"]
    assert attempt["attempt"] == 1 and attempt["upstream_status"] == 200
    assert inngest.event_key not in written.getvalue()


def test_a_path_cannot_forge_a_text_log_line(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    with service_log(make_app, LOG_FORMAT="text") as (app, written):
        response = app.test_client().get(FORGING_PATH)
    assert response.status_code == 404
    # One record, one line, whichever characters a viewer or a log shipper splits lines on.
    text = written.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert len(text.splitlines()) == 1
    (line,) = access_lines(written)
    assert line.count(FORGED) == 4  # in the message and in the `path` field, twice each
    escaped = "\\n" + FORGED + "\\r\\n" + FORGED + "\\r\\x1b[31m\\x00\\x7f\\x85\\u2028\\t\\\\"
    assert f"GET /x{escaped} 404 " in line
    assert f"path=/x{escaped} " in line
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line)


def test_a_path_cannot_forge_a_json_log_line(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    with service_log(make_app, LOG_FORMAT="json") as (app, written):
        response = app.test_client().get(FORGING_PATH)
    assert response.status_code == 404
    text = written.getvalue()
    assert text.count("\n") == 1 and len(text.splitlines()) == 1
    assert text.isascii()  # every control character and line separator as a JSON escape
    (line,) = access_lines(written)
    access = json.loads(line)
    assert access["path"] == RAW_PATH
    assert access["message"].startswith(f"GET {RAW_PATH} 404 ")


def test_text_lines_escape_every_part_they_write() -> None:
    """Message and its args, fields (keys and values), logger name, request id, traceback."""
    try:
        raise ValueError("bad\n2026-11-28 19:44:40,512 INFO [-] service.x: forged")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "service.x\n", logging.ERROR, __file__, 1, "got %s", ("a\nb\rc\x85d",), exc_info
    )
    record.fields = {"agent": "Mozilla\n\x1b[2J", "key\nx": 1, "n": None}
    RequestContextFilter(("k-123",)).filter(record)
    record.request_id = "id\nforged"

    text = TextFormatter().format(record)

    first, *trace = text.split("\n")
    assert first.endswith(
        "ERROR [id\\nforged] service.x\\n: got a\\nb\\rc\\x85d "
        "agent=Mozilla\\n\\x1b[2J key\\nx=1 n=None"
    )
    # The traceback stays readable, a line each, but no line of it can pass for a record.
    assert trace[0] == "  | Traceback (most recent call last):"
    assert all(line.startswith("  | ") for line in trace)
    assert trace[-2:] == [
        "  | ValueError: bad",
        "  | 2026-11-28 19:44:40,512 INFO [-] service.x: forged",
    ]
    # The record itself is left as it was, for other handlers.
    assert record.name == "service.x\n" and record.getMessage() == "got a\nb\rc\x85d"
