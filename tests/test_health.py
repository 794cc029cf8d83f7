"""Health checks, a database that comes late, and the dev-mode demo user."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import PASSWORD, assert_envelope
from tests.standin import InngestStandIn

READY = {
    "status": "ok",
    "database": "ok",
    "outbox": {
        "pending": 0,
        "in_flight": 0,
        "dead": 0,
        "delivered": 0,
        "oldest_pending_age_seconds": 0.0,
    },
}

DEMO = re.compile(r"Created the demo user: e-mail (\S+), password (\S+) ")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_healthz_answers(client: FlaskClient, method: str) -> None:
    response = client.open("/healthz", method=method)

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    if method == "GET":
        assert response.get_json() == {"status": "ok"}
    else:
        assert response.get_data() == b""
    assert response.headers["X-Request-ID"]


def test_readyz_reports_the_database(client: FlaskClient) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.get_json() == READY


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_checks_only_answer_get(client: FlaskClient, path: str) -> None:
    response = client.post(path)

    assert_envelope(response, 405, "method_not_allowed")


def test_a_database_that_comes_late(
    tmp_path: Path, make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "missing"
    app = make_app(DATABASE_URL=f"sqlite:///{folder}/db.sqlite")
    client = app.test_client()

    healthz = client.get("/healthz")
    readyz = client.get("/readyz")
    login = client.post("/auth/login", json={"email": "ada@example.com", "password": PASSWORD})

    assert healthz.status_code == 200
    assert healthz.get_json() == {"status": "ok"}
    body = assert_envelope(readyz, 503, "not_ready")
    assert body["errors"] == {"database": ["unreachable"]}
    assert_envelope(login, 503, "database_unavailable")
    assert login.headers["Retry-After"]
    assert not folder.exists()
    assert str(folder) not in readyz.get_data(as_text=True)
    assert str(folder) not in login.get_data(as_text=True)

    folder.mkdir()

    readyz = client.get("/readyz")
    assert readyz.status_code == 200
    assert readyz.get_json() == READY
    assert_envelope(
        client.post("/auth/login", json={"email": "ada@example.com", "password": PASSWORD}),
        401,
        "invalid_credentials",
    )
    created = app.test_cli_runner().invoke(
        args=["users", "create", "ada@example.com", "--name", "Ada", "--password", PASSWORD]
    )
    assert created.exit_code == 0, created.output
    login = client.post("/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
    assert login.status_code == 200
    assert login.get_json()["user"]["email"] == "ada@example.com"
    me = client.get("/auth/me")
    assert me.status_code == 200
    assert me.get_json()["name"] == "Ada"
    assert "Traceback" not in caplog.text


def test_a_late_database_schema_is_created_by_a_login(
    tmp_path: Path, make_app: Callable[..., Flask]
) -> None:
    folder = tmp_path / "later"
    app = make_app(DATABASE_URL=f"sqlite:///{folder}/db.sqlite")
    client = app.test_client()
    assert client.get("/readyz").status_code == 503

    folder.mkdir()
    response = client.post("/auth/login", json={"email": "who@example.com", "password": "x"})

    assert_envelope(response, 401, "invalid_credentials")
    assert (folder / "db.sqlite").exists()
    assert client.get("/readyz").get_json() == READY


def test_dev_mode_creates_the_demo_user_once(
    make_app: Callable[..., Flask], inngest: InngestStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()

    app = make_app(INNGEST_DEV=inngest.url, CREATE_DEMO_USER="true")

    out = capsys.readouterr().out
    match = DEMO.search(out)
    assert match, out
    email, password = match.groups()
    assert email == "demo@example.com"
    assert len(password) >= 8
    assert "dev mode only" in out
    client = app.test_client()
    login = client.post("/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200
    assert login.get_json()["user"]["email"] == "demo@example.com"

    again = make_app(INNGEST_DEV=inngest.url, CREATE_DEMO_USER="true")

    assert capsys.readouterr().out == ""
    with again.app_context():
        listing = again.test_cli_runner().invoke(args=["users", "list"])
    assert listing.exit_code == 0, listing.output
    assert listing.output == "1\tdemo@example.com\tDemo User\tactive\n"
    other = again.test_client()
    assert other.post("/auth/login", json={"email": email, "password": password}).status_code == 200


@pytest.mark.parametrize(
    "overrides",
    [
        {"CREATE_DEMO_USER": "false"},
        {"INNGEST_DEV": "", "CREATE_DEMO_USER": "true"},
    ],
)
def test_no_demo_user_when_turned_off_or_in_cloud_mode(
    make_app: Callable[..., Flask],
    inngest: InngestStandIn,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, str],
) -> None:
    capsys.readouterr()

    app = make_app(**{"INNGEST_DEV": inngest.url, **overrides})

    assert capsys.readouterr().out == ""
    listing = app.test_cli_runner().invoke(args=["users", "list"])
    assert listing.exit_code == 0
    assert listing.output == ""


def test_no_demo_user_on_a_database_with_users(
    make_app: Callable[..., Flask],
    inngest: InngestStandIn,
    user: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()

    app = make_app(INNGEST_DEV=inngest.url, CREATE_DEMO_USER="true")

    assert capsys.readouterr().out == ""
    response = app.test_client().post(
        "/auth/login", json={"email": "demo@example.com", "password": "anything"}
    )
    assert_envelope(response, 401, "invalid_credentials")
