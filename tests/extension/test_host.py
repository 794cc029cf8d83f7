"""The extension in a plain host app (Flask-Login, its own users), with nothing of the service.

`make test` runs this folder a second time against the installed wheel at the lowest
supported versions (requirements-lowest.txt), so each dependency the extension declares is
exercised here at its lower bound: Flask and Werkzeug (the view, the form parser, the
errors), Flask-Login (the user), SQLAlchemy (the outbox on SQLite), marshmallow (the
payload), requests and urllib3 (the sender), limits (the rate limit), flask-cors (trusted
origins), jsonschema and PyYAML (INNGEST_GATEWAY_EVENT_SCHEMAS), prometheus-client and click.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_login import LoginManager, UserMixin

from inngest_gateway import InngestGateway
from inngest_gateway.state import gateway_state
from tests.cors import trusted_origin_preflights
from tests.standin import InngestStandIn

SECRET = "host-secret-0123456789abcdef0123456789"


class HostUser(UserMixin):
    """A host's own user: Flask-Login's protocol and nothing of ours."""

    def __init__(self, user_id: str, email: str, name: str) -> None:
        self.id, self.email, self.name = user_id, email, name


USERS = {"7": HostUser("7", "grace@example.com", "Grace Hopper")}


@pytest.fixture
def host(tmp_path: Path, inngest: InngestStandIn) -> Iterator[Callable[..., Flask]]:
    """Host apps with the gateway mounted from app.config, stopped afterwards."""
    made: list[tuple[InngestGateway, Flask]] = []

    def factory(**config: Any) -> Flask:
        app = Flask("host", instance_path=str(tmp_path / f"instance-{len(made)}"))
        app.config.update(
            SECRET_KEY=SECRET,
            TESTING=True,
            INNGEST_EVENT_KEY=inngest.event_key,
            INNGEST_BASE_URL=inngest.url,
            INNGEST_GATEWAY_SEND_TIMEOUT=2,
            INNGEST_GATEWAY_DELIVERY_MODE="sync",
            INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER=False,
            # These hosts test the gateway itself: real sends to the stand-in.
            INNGEST_GATEWAY_SUPPRESS_SEND=False,
        )
        app.config.update(config)
        login_manager = LoginManager(app)
        login_manager.user_loader(USERS.get)

        @app.get("/")
        def home() -> str:
            return "host home"

        gateway = InngestGateway()
        gateway.init_app(app)
        made.append((gateway, app))
        return app

    yield factory
    for gateway, app in made:
        gateway.stop(app)
        gateway_state(app).outbox_db.dispose()


def log_in(client: FlaskClient, user_id: str) -> None:
    """Log in as Flask-Login does: its user id in the host's session."""
    with client.session_transaction() as session:
        session["_user_id"] = user_id
        session["_fresh"] = True


def envelope(response: Any, status: int, code: str) -> dict[str, Any]:
    """The gateway's JSON error envelope, with the status and code expected."""
    assert response.status_code == status, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    assert body["status"] == "error" and body["code"] == code, body
    return body


GRACE = {"id": "7", "email": "grace@example.com", "name": "Grace Hopper"}


def test_sync_post_is_sent_with_the_hosts_user(
    host: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = host().test_client()
    log_in(client, "7")

    response = client.post("/api", json={"name": "app/report.run", "data": {"report": 3}})

    assert response.status_code == 200, response.get_data(as_text=True)
    [event] = inngest.accepted
    assert response.get_json() == {"status": "ok", "ids": [event["id"]]}
    assert event["name"] == "app/report.run"
    assert event["data"]["report"] == 3
    assert event["data"]["user"] == GRACE


def test_anonymous_form_post_is_sent_without_a_user(
    host: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    response = host().test_client().post("/api", data={"name": "app/form.sent", "size": "2"})

    assert response.status_code == 303, response.get_data(as_text=True)  # back to the page
    [event] = inngest.accepted
    assert event["name"] == "app/form.sent"
    assert event["data"]["user"] is None


def test_outbox_mode_on_sqlite_is_delivered_by_the_deliverer(
    host: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = host(
        INNGEST_GATEWAY_DELIVERY_MODE="outbox",
        INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER=True,
        INNGEST_GATEWAY_OUTBOX_POLL_SECONDS="0.05",
        TESTING=False,  # a testing app's outbox is a private temporary file
    )
    client = app.test_client()
    log_in(client, "7")

    response = client.post("/api", json={"name": "app/queued", "data": {"n": 1}})

    assert response.status_code == 202, response.get_data(as_text=True)
    deadline = time.monotonic() + 10
    while not inngest.accepted and time.monotonic() < deadline:
        time.sleep(0.02)
    [event] = inngest.accepted
    assert event["id"] == response.get_json()["ids"][0]
    assert event["data"]["user"] == GRACE
    assert (Path(app.instance_path) / "inngest-gateway-outbox.db").is_file()
    status = app.test_cli_runner().invoke(args=["inngest-gateway", "outbox", "status"])
    assert status.exit_code == 0, status.output
    assert "pending: 0" in status.output


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": b"{nope", "content_type": "application/json"}, 400, "invalid_json"),
        ({"json": {"data": "x", "ts": "soon"}}, 422, "validation_failed"),
        ({"data": "plain", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"data": b"x" * 2048, "content_type": "application/json"}, 413, "payload_too_large"),
    ],
)
def test_bad_input_gets_the_envelope(
    host: Callable[..., Flask],
    inngest: InngestStandIn,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    client = host(INNGEST_GATEWAY_API_MAX_BODY_BYTES=1024).test_client()

    envelope(client.post("/api", **kwargs), status, code)
    assert inngest.received == []


def test_the_rate_limit_holds(host: Callable[..., Flask], inngest: InngestStandIn) -> None:
    client = host(INNGEST_GATEWAY_RATELIMIT_API="2 per hour").test_client()

    assert [client.post("/api", json={"data": {}}).status_code for _ in range(2)] == [200, 200]
    envelope(client.post("/api", json={"data": {}}), 429, "rate_limited")
    assert len(inngest.accepted) == 2


def test_event_schemas_from_yaml_are_checked(
    host: Callable[..., Flask], inngest: InngestStandIn, tmp_path: Path
) -> None:
    schemas = tmp_path / "schemas.yaml"
    schemas.write_text(
        "app/order.placed:\n"
        "  type: object\n"
        "  properties: {amount: {type: integer, minimum: 1}}\n"
        "  required: [amount]\n"
    )
    client = host(INNGEST_GATEWAY_EVENT_SCHEMAS=str(schemas)).test_client()

    refused = client.post("/api", json={"name": "app/order.placed", "data": {"amount": 0}})
    assert "amount" in envelope(refused, 422, "validation_failed")["errors"]["data"]
    ok = client.post("/api", json={"name": "app/order.placed", "data": {"amount": 2}})
    assert ok.status_code == 200, ok.get_data(as_text=True)
    assert len(inngest.accepted) == 1


def test_cors_answers_a_trusted_origin_only(host: Callable[..., Flask]) -> None:
    trusted = "https://app.example.com"
    client = host(INNGEST_GATEWAY_TRUSTED_ORIGINS=trusted).test_client()
    ours, theirs, stranger = trusted_origin_preflights(client, trusted)

    assert ours.headers["Access-Control-Allow-Origin"] == trusted
    assert ours.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in ours.headers["Vary"]
    assert "Access-Control-Allow-Origin" not in theirs.headers
    assert "Access-Control-Allow-Origin" not in stranger.headers
