"""Login sessions that really end: logout, `users disable` and lifetimes, checked by the server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from inngest_gateway.settings import ConfigError
from service.settings import load_service_settings
from service.users import create_user
from tests.conftest import PASSWORD, SECRET_KEY, assert_envelope
from tests.processes import run_flask, start_gunicorn, wait_until_healthy
from tests.standin import InngestStandIn

if TYPE_CHECKING:
    import time_machine

ADA = {"email": "ada@example.com", "password": PASSWORD}


def login(client: FlaskClient, remember: bool = False) -> None:
    response = client.post("/auth/login", json={**ADA, "remember": remember})
    assert response.status_code == 200, response.get_data(as_text=True)


def copy_of(app: Flask, client: FlaskClient, *names: str) -> FlaskClient:
    """Another client holding copies of these cookies, as a thief (or a backup) would."""
    thief = app.test_client()
    for name in names:
        cookie = client.get_cookie(name)
        assert cookie is not None, f"no {name} cookie to copy"
        thief.set_cookie(name, cookie.value)
    return thief


def is_ada(client: FlaskClient) -> bool:
    """Whether this client is logged in as Ada; anything else must be the 401 envelope."""
    response = client.get("/auth/me")
    if response.status_code == 200:
        assert response.get_json()["email"] == "ada@example.com"
        return True
    assert_envelope(response, 401, "login_required")
    return False


def posted_user(client: FlaskClient, inngest: InngestStandIn) -> Any:
    """The `data.user` of the event this client posts."""
    inngest.reset()
    assert client.post("/api", json={"name": "app/x"}).status_code == 200
    return inngest.received[0].events[0]["data"]["user"]


def test_a_session_cookie_copied_before_logout_stops_working(
    app: Flask, client: FlaskClient, user: dict[str, Any], inngest: InngestStandIn
) -> None:
    login(client)
    copy = copy_of(app, client, "session")
    assert is_ada(copy)
    assert posted_user(copy, inngest)["id"] == user["id"]

    assert client.post("/auth/logout").status_code == 200

    assert not is_ada(client)
    assert not is_ada(copy)
    assert posted_user(copy, inngest) is None


def test_a_copied_cookie_gets_401_where_login_is_required(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_app(INNGEST_GATEWAY_API_REQUIRE_LOGIN="true")
    with app.app_context():
        create_user("ada@example.com", "Ada Lovelace", PASSWORD)
    client = app.test_client()
    login(client)
    copy = copy_of(app, client, "session")
    assert copy.post("/api", json={}).status_code == 200

    client.post("/auth/logout")

    assert_envelope(copy.post("/api", json={}), 401, "login_required")


def test_a_remember_cookie_copied_before_logout_stops_working(
    app: Flask, client: FlaskClient, user: dict[str, Any]
) -> None:
    login(client, remember=True)
    copy = copy_of(app, client, "remember_token")
    both = copy_of(app, client, "session", "remember_token")
    assert is_ada(copy)  # the remember cookie alone logs in

    assert client.post("/auth/logout").status_code == 200

    assert not is_ada(copy)
    assert not is_ada(both)


def test_logout_leaves_the_users_other_logins(
    app: Flask, user: dict[str, Any], inngest: InngestStandIn
) -> None:
    laptop, phone, tablet = app.test_client(), app.test_client(), app.test_client()
    login(laptop)
    login(phone)
    login(tablet, remember=True)
    tablet_remembered = copy_of(app, tablet, "remember_token")

    assert laptop.post("/auth/logout").status_code == 200

    assert not is_ada(laptop)
    assert is_ada(phone)
    assert is_ada(tablet_remembered)
    assert posted_user(phone, inngest)["id"] == user["id"]


def test_logging_in_again_ends_the_clients_previous_login(
    app: Flask, client: FlaskClient, user: dict[str, Any]
) -> None:
    login(client)
    before = copy_of(app, client, "session")

    login(client)

    assert is_ada(client)
    assert not is_ada(before)


def test_disable_ends_every_login_of_the_user(
    app: Flask, user: dict[str, Any], inngest: InngestStandIn
) -> None:
    with app.app_context():
        create_user("bob@example.com", "Bob", PASSWORD)
    laptop, phone, bob = app.test_client(), app.test_client(), app.test_client()
    login(laptop)
    login(phone, remember=True)
    laptop_copy = copy_of(app, laptop, "session")
    phone_remembered = copy_of(app, phone, "remember_token")
    assert bob.post("/auth/login", json={"email": "bob@example.com", "password": PASSWORD}).json

    result = app.test_cli_runner().invoke(args=["users", "disable", "ada@example.com"])

    assert result.exit_code == 0, result.output
    for client in (laptop, phone, laptop_copy, phone_remembered):
        assert not is_ada(client)
    assert posted_user(laptop_copy, inngest) is None
    assert bob.get("/auth/me").get_json()["email"] == "bob@example.com"


def test_logins_end_on_each_database(
    make_app: Callable[..., Flask], database_url: str, inngest: InngestStandIn
) -> None:
    app = make_app(DATABASE_URL=database_url)
    with app.app_context():
        create_user("ada@example.com", "Ada Lovelace", PASSWORD)
    laptop, phone = app.test_client(), app.test_client()
    login(laptop)
    login(phone, remember=True)
    laptop_copy = copy_of(app, laptop, "session")
    phone_remembered = copy_of(app, phone, "remember_token")

    laptop.post("/auth/logout")

    assert not is_ada(laptop_copy)
    assert is_ada(phone_remembered)
    result = app.test_cli_runner().invoke(args=["users", "disable", "ada@example.com"])
    assert result.exit_code == 0, result.output
    assert not is_ada(phone)
    assert not is_ada(phone_remembered)


def test_a_login_ends_after_session_lifetime_even_if_the_cookie_is_replayed(
    make_app: Callable[..., Flask],
    inngest: InngestStandIn,
    stopped_clock: time_machine.Coordinates,
) -> None:
    """On a stopped wall clock, moved by the test: a second before the end, and one after."""
    app = make_app(SESSION_LIFETIME="2h")
    with app.app_context():
        create_user("ada@example.com", "Ada Lovelace", PASSWORD)
    client = app.test_client()
    login(client)
    assert is_ada(client)

    stopped_clock.shift(timedelta(hours=2, seconds=-1))
    assert is_ada(client)
    stopped_clock.shift(2)

    assert not is_ada(client)
    assert not is_ada(copy_of(app, client, "session"))


def test_a_remember_cookie_ends_after_its_duration_even_if_replayed(
    make_app: Callable[..., Flask],
    inngest: InngestStandIn,
    stopped_clock: time_machine.Coordinates,
) -> None:
    """On a stopped wall clock, moved by the test: a second before the end, and one after."""
    app = make_app(REMEMBER_COOKIE_DURATION="3d", SESSION_LIFETIME="1h")
    with app.app_context():
        create_user("ada@example.com", "Ada Lovelace", PASSWORD)
    client = app.test_client()
    login(client, remember=True)
    replayed = copy_of(app, client, "remember_token")  # without the cookie's own expiry
    assert is_ada(replayed)

    stopped_clock.shift(timedelta(days=3, seconds=-1))
    assert is_ada(copy_of(app, client, "remember_token"))
    stopped_clock.shift(2)

    assert not is_ada(copy_of(app, client, "remember_token"))
    assert not is_ada(replayed)


def test_the_remember_cookie_lasts_remember_cookie_duration(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_app()
    with app.app_context():
        create_user("ada@example.com", "Ada Lovelace", PASSWORD)
    response = app.test_client().post("/auth/login", json={**ADA, "remember": True})

    (cookie,) = [
        header
        for header in response.headers.getlist("Set-Cookie")
        if header.startswith("remember_token=")
    ]
    expires = parsedate_to_datetime(cookie.split("Expires=")[1].split(";")[0])
    expected = datetime.now(UTC) + timedelta(days=30)
    assert abs(expires - expected) < timedelta(minutes=5)


@pytest.mark.parametrize(
    ("env", "session_lifetime", "remember"),
    [
        ({}, 14 * 86400.0, 30 * 86400.0),
        ({"SESSION_LIFETIME": "8h", "REMEMBER_COOKIE_DURATION": "7d"}, 8 * 3600.0, 7 * 86400.0),
    ],
)
def test_lifetime_settings(env: dict[str, str], session_lifetime: float, remember: float) -> None:
    settings = load_service_settings({"SECRET_KEY": SECRET_KEY, "INNGEST_DEV": "1", **env})

    assert settings.session_lifetime == session_lifetime
    assert settings.remember_cookie_duration == remember


@pytest.mark.parametrize(
    "env",
    [
        {"SESSION_LIFETIME": "forever"},
        {"SESSION_LIFETIME": "0"},
        {"REMEMBER_COOKIE_DURATION": "-1d"},
        {"REMEMBER_COOKIE_DURATION": "0s"},
    ],
)
def test_invalid_lifetimes_stop_the_start(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env))):
        load_service_settings({"SECRET_KEY": SECRET_KEY, "INNGEST_DEV": "1", **env})


def test_a_login_lookup_that_fails_answers_503(
    make_app: Callable[..., Flask], tmp_path: Path, inngest: InngestStandIn
) -> None:
    """The per-request login lookup fails as any query does: 503, never a 500, no event sent.

    SQLite reports a table it cannot read as an OperationalError, as it does a locked or
    unreadable database.
    """
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'users.db'}")
    with app.app_context():
        create_user("ada@example.com", "Ada Lovelace", PASSWORD)
    client = app.test_client()
    login(client)
    with app.app_context():
        from service.db import db

        with db.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE login_sessions RENAME TO login_sessions_gone")
    try:
        posted = client.post("/api", json={"name": "app/x"})
        me = client.get("/auth/me")
    finally:
        with app.app_context(), db.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE login_sessions_gone RENAME TO login_sessions")

    assert_envelope(posted, 503, "database_unavailable")
    assert posted.headers["Retry-After"] == "5"
    assert_envelope(me, 503, "database_unavailable")
    assert inngest.received == []
    assert is_ada(client)  # the login itself was never touched


# -- under gunicorn: every worker sees a logout or a disable at once -------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_logout_and_disable_end_a_login_in_every_worker_at_once(
    inngest_server: InngestStandIn, tmp_path: Path
) -> None:
    """Nothing about a login is kept in a worker between requests.

    Posts go over new connections, so both workers serve them (and fill whatever they
    might keep); right after a logout, and after `flask users disable` from another
    process, not one post is still taken as the user's.
    """
    settings = {
        "SECRET_KEY": SECRET_KEY,
        "INNGEST_EVENT_KEY": inngest_server.default_key,
        "INNGEST_BASE_URL": inngest_server.url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}",
        "CREATE_DEMO_USER": "false",
        "INNGEST_GATEWAY_DELIVERY_MODE": "outbox",
        "INNGEST_GATEWAY_API_REQUIRE_LOGIN": "true",
        "INNGEST_GATEWAY_RATELIMIT_API": "100000 per minute",
    }

    def flask(*args: str) -> None:
        done = run_flask("wsgi", tmp_path, settings, *args)
        assert done.returncode == 0, done.stdout + done.stderr

    def login(remember: bool) -> dict[str, str]:
        body = {**ADA, "remember": remember}
        with requests.post(f"{server.url}/auth/login", json=body, timeout=15) as response:
            assert response.status_code == 200, response.text
            return dict(response.cookies)

    def statuses(cookies: dict[str, str], posts: int = 16) -> set[int]:
        seen = set()
        for n in range(posts):  # a new connection each: either worker may take it
            with requests.post(
                f"{server.url}/api", json={"id": f"p-{n}"}, cookies=cookies, timeout=15
            ) as response:
                seen.add(response.status_code)
        return seen

    flask("users", "create", "ada@example.com", "--name", "Ada", "--password", PASSWORD)
    server = start_gunicorn(tmp_path, inngest_server, env=settings)
    try:
        wait_until_healthy(server)
        laptop, phone = login(remember=False), login(remember=True)
        remembered = {"remember_token": phone["remember_token"]}
        assert statuses(laptop) == {202}
        assert statuses(remembered) == {202}

        with requests.post(f"{server.url}/auth/logout", cookies=laptop, timeout=15) as out:
            assert out.status_code == 200

        assert statuses(laptop) == {401}
        assert statuses(remembered) == {202}  # her other login goes on

        flask("users", "disable", "ada@example.com")

        assert statuses(remembered) == {401}
        assert statuses(phone) == {401}
    finally:
        server.kill()
