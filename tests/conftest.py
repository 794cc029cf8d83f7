"""Fixtures: a real stand-in for Inngest on 127.0.0.1, the app built from test settings, clients."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from werkzeug.test import TestResponse

from inngest_gateway.db import database_url as normalize_url
from inngest_gateway.state import gateway_state
from service.app import create_app
from service.db import db
from service.users import LOGIN_READS, create_user
from tests import clock, standin
from tests.browsers import browser, new_context, page, shot  # noqa: F401 (fixtures for all)
from tests.standin import InngestStandIn

# The stand-in's fixtures, shared with the other conftest.
inngest_server = standin.inngest_server
inngest = standin.inngest
# A stopped wall clock, shared with the other conftest.
stopped_clock = clock.stopped_clock

PASSWORD = "correct horse battery staple"
SECRET_KEY = "test-session-secret-0123456789abcdef"


# CI sets it (.ci/run): PostgreSQL and Redis are there (nginx and Chromium, when missing,
# fail their tests anyway), so a skip means a server the suite needs went missing.
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "").lower() in ("1", "true", "yes", "on")


def _skip_as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under REQUIRE_SERVICES, a skip (an unset TEST_DATABASE_URL, say) reports as a failure."""
    if not (REQUIRE_SERVICES and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped, and REQUIRE_SERVICES is set: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _skip_as_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _skip_as_failure(report)
    return report


def reset_postgres(url: str) -> None:
    """Drop the service's tables, so each test starts from an empty database."""
    engine = create_engine(normalize_url(url, ""))
    with engine.begin() as connection:
        connection.execute(
            text("DROP TABLE IF EXISTS outbox_events, login_sessions, users CASCADE")
        )
    engine.dispose()


def postgres_from_env() -> str:
    """TEST_DATABASE_URL, or the calling test is skipped (a failure under REQUIRE_SERVICES)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("TEST_DATABASE_URL is not set: the PostgreSQL variant is skipped")
    return url


@pytest.fixture
def postgres_url() -> str:
    """The PostgreSQL of TEST_DATABASE_URL, emptied of the service's tables."""
    url = postgres_from_env()
    reset_postgres(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database under test: SQLite always, PostgreSQL when TEST_DATABASE_URL names one."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.db'}"
    return request.getfixturevalue("postgres_url")  # type: ignore[no-any-return]


@pytest.fixture
def base_env(tmp_path: Path, inngest: InngestStandIn) -> dict[str, str]:
    """Production-like settings pointing at the stand-in; tests change what they need."""
    return {
        "SECRET_KEY": SECRET_KEY,
        "INNGEST_EVENT_KEY": inngest.event_key,
        "INNGEST_BASE_URL": inngest.url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'test.db'}",
        "INNGEST_GATEWAY_SEND_TIMEOUT": "2",
        "CREATE_DEMO_USER": "false",
        # The synchronous path is the one these tests look at; test_outbox*.py set outbox.
        "INNGEST_GATEWAY_DELIVERY_MODE": "sync",
        "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": "false",
        # make_app sets TESTING: these tests look at what reaches the stand-in Inngest.
        "INNGEST_GATEWAY_SUPPRESS_SEND": "false",
    }


@pytest.fixture
def make_app(tmp_path: Path, base_env: dict[str, str]) -> Iterator[Callable[..., Flask]]:
    """Build apps with settings overridden by keyword, as the factory reads them."""
    apps: list[Flask] = []

    def factory(**overrides: str) -> Flask:
        app = create_app({**base_env, **overrides}, instance_path=str(tmp_path / "instance"))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        gateway_state(app).outbox_db.dispose()
        if LOGIN_READS in app.extensions:
            app.extensions[LOGIN_READS].dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


@pytest.fixture
def user(app: Flask) -> dict[str, Any]:
    """A user in the database, as events show it."""
    with app.app_context():
        return create_user("ada@example.com", "Ada Lovelace", PASSWORD).public()


class AuthActions:
    """Log the test client in and out through the real views."""

    def __init__(self, client: FlaskClient) -> None:
        self._client = client

    def login(self, email: str = "ada@example.com", password: str = PASSWORD) -> TestResponse:
        return self._client.post("/auth/login", json={"email": email, "password": password})

    def logout(self) -> TestResponse:
        return self._client.post("/auth/logout")


@pytest.fixture
def auth(client: FlaskClient) -> AuthActions:
    return AuthActions(client)


def assert_envelope(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """The response is the service's error envelope with this status and code."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = json.loads(response.get_data())
    assert body["status"] == "error"
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["errors"], dict)
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body
