"""IDENTITY=flask-session: the host app's own cookies, made by its own login, read by us."""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

import pytest
import requests
from flask import Flask, Response, jsonify, make_response, session
from flask.sessions import SecureCookieSessionInterface
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner
from psycopg import OperationalError
from werkzeug.test import TestResponse

from inngest_gateway.login import login_redirect_url
from inngest_gateway.settings import ConfigError
from service import identity
from service.identity import (
    HostSessionInterface,
    UserLookup,
    UsersUnavailable,
    check_users_sql,
    json_safe,
    load_identity_settings,
    remembered_user_id,
)
from tests.conftest import PASSWORD, SECRET_KEY, assert_envelope, postgres_from_env
from tests.hostapp import (
    add_user,
    beside_site,
    create_host_app,
    drop_tables,
    set_active,
    start_app,
)
from tests.processes import (
    free_port,
    gunicorn_refusal,
    start_gunicorn,
    start_nginx,
)
from tests.proxy import freezable_proxy, silent_server, through
from tests.standin import InngestStandIn
from tests.test_metrics import Delta

SQL = "SELECT id, email, name, created_at FROM host_users WHERE id = :id AND active"
OTHER_KEY = "another-apps-secret-fedcba9876543210"


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def host_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The host's users database: SQLite always, PostgreSQL when TEST_DATABASE_URL names one."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'host.db'}"
    url = postgres_from_env()
    drop_tables(url)
    return url


@pytest.fixture
def sqlite_host_db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'host.db'}"


@pytest.fixture
def postgres_host_db() -> str:
    url = postgres_from_env()
    drop_tables(url)
    return url


HostFactory = Callable[..., Flask]


@pytest.fixture
def make_host(tmp_path: Path) -> Iterator[HostFactory]:
    """Host apps on a database, with Ada (id 1) and Bob (id 2) as users."""
    apps: list[Flask] = []

    def factory(url: str, secret: str = SECRET_KEY, *, users: bool = True) -> Flask:
        app = create_host_app({"SECRET_KEY": secret, "HOST_DATABASE_URL": url})
        app.config["TESTING"] = True
        if users:
            add_user(app, "ada@example.com", "Ada Lovelace", PASSWORD)
            add_user(app, "bob@example.com", "Bob", PASSWORD)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["host_db"].dispose()


@pytest.fixture
def host(make_host: HostFactory, host_db: str) -> Flask:
    return make_host(host_db)


class Reader(FlaskClient):
    """A client of the service in IDENTITY=flask-session mode, and the stand-in it sends to."""

    inngest: InngestStandIn


ReaderFactory = Callable[..., Reader]
# The service as it runs beside a host: the host's users, posts that need a login.
READER_ENV = {"IDENTITY": "flask-session", "INNGEST_GATEWAY_API_REQUIRE_LOGIN": "true"}


def reader_app(make_app: Callable[..., Flask], **env: str) -> Flask:
    """The service itself (create_app) in IDENTITY=flask-session mode, sync delivery."""
    return make_app(**{**READER_ENV, **env})


@pytest.fixture
def make_reader(make_app: Callable[..., Flask], inngest: InngestStandIn) -> Iterator[ReaderFactory]:
    """Clients of the service configured with IDENTITY=flask-session; SECRET_KEY is the host's."""
    apps: list[Flask] = []

    def factory(app: Flask | None = None, **env: str) -> Reader:
        app = app or reader_app(make_app, **env)
        app.test_client_class = Reader
        apps.append(app)
        client = app.test_client()
        assert isinstance(client, Reader)
        client.inngest = inngest
        return client

    yield factory
    for app in apps:
        app.extensions["identity"].dispose()


def log_in(client: FlaskClient, email: str = "ada@example.com", *, remember: bool = False) -> None:
    """Log in through the host's own login form, as a browser would."""
    page = client.get("/login").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    form = {"csrf_token": match.group(1), "email": email, "password": PASSWORD, "next": "/"}
    if remember:
        form["remember"] = "on"
    response = client.post("/login", data=form)
    assert response.status_code == 303, response.get_data(as_text=True)


def host_cookies(host: Flask, email: str = "ada@example.com", *, remember: bool = False) -> Any:
    """The cookies a browser holds after logging in on the host: name -> value."""
    client = host.test_client()
    log_in(client, email, remember=remember)
    names = ("session", "remember_token")
    return {name: c.value for name in names if (c := client.get_cookie(name)) is not None}


ClientT = TypeVar("ClientT", bound=FlaskClient)


def with_cookies(client: ClientT, cookies: dict[str, str]) -> ClientT:
    for name, value in cookies.items():
        client.set_cookie(name, value)
    return client


def whoami(client: Reader) -> Any:
    """The user a post from this client carries in `data.user` (None when anonymous).

    A real post to the service's /api: anonymous is the 401 that INNGEST_GATEWAY_API_REQUIRE_LOGIN
    gives, or
    an event whose `data.user` is null when the service does not require a login.
    """
    response = client.post("/api", json={"name": "app/whoami"})
    if response.status_code == 401:
        assert_envelope(response, 401, "login_required")
        return None
    assert response.status_code == 200, response.get_data(as_text=True)
    (event_id,) = response.get_json()["ids"]
    (event,) = [e for r in client.inngest.received for e in r.events if e["id"] == event_id]
    return event["data"]["user"]


def set_cookie_names(response: TestResponse) -> list[str]:
    return [v.split("=", 1)[0] for v in response.headers.getlist("Set-Cookie")]


# --- the host's session cookie --------------------------------------------------------------


def test_the_hosts_session_cookie_gives_the_hosts_user(
    host: Flask, make_reader: ReaderFactory, host_db: str
) -> None:
    reader = make_reader(USERS_DATABASE_URL=host_db, USERS_SQL=SQL)
    cookies = host_cookies(host)
    assert set(cookies) == {"session"}
    with_cookies(reader, cookies)

    user = whoami(reader)
    assert {k: user[k] for k in ("id", "email", "name")} == {
        "id": 1,
        "email": "ada@example.com",
        "name": "Ada Lovelace",
    }
    # A timestamp column arrives as text JSON can carry (ISO 8601 from PostgreSQL).
    assert isinstance(user["created_at"], str) and user["created_at"].startswith("2024-05-17")
    # Every post carries it, and the service answers as it does for its own users.
    response = reader.post("/api", json={"name": "app/x", "data": {"n": 2}})
    assert response.status_code == 200, response.get_data(as_text=True)
    (event,) = reader.inngest.received[-1].events
    assert event["name"] == "app/x" and event["data"]["n"] == 2
    assert event["data"]["user"] == user
    # Bob's own login is Bob.
    bob = with_cookies(
        make_reader(USERS_DATABASE_URL=host_db, USERS_SQL=SQL),
        host_cookies(host, "bob@example.com"),
    )
    assert whoami(bob)["email"] == "bob@example.com"


def test_without_users_sql_the_user_is_the_session_id(
    host: Flask, make_reader: ReaderFactory
) -> None:
    reader = with_cookies(make_reader(), host_cookies(host))
    assert whoami(reader) == {"id": "1"}


def test_no_cookie_is_anonymous_and_a_json_post_gets_401(
    make_reader: ReaderFactory, sqlite_host_db: str, make_host: HostFactory
) -> None:
    make_host(sqlite_host_db)
    reader = make_reader(USERS_DATABASE_URL=sqlite_host_db, USERS_SQL=SQL)
    assert whoami(reader) is None
    assert_envelope(reader.post("/api", json={"name": "app/x"}), 401, "login_required")


def test_a_cookie_signed_with_another_key_is_anonymous(
    make_host: HostFactory, make_reader: ReaderFactory, host_db: str
) -> None:
    make_host(host_db)  # the real host, with its users
    foreign = make_host(host_db, OTHER_KEY, users=False)  # same users, another key
    cookies = host_cookies(foreign, remember=True)
    assert set(cookies) == {"session", "remember_token"}
    reader = with_cookies(make_reader(USERS_DATABASE_URL=host_db, USERS_SQL=SQL), cookies)
    assert whoami(reader) is None
    assert_envelope(reader.post("/api", json={"name": "app/x"}), 401, "login_required")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _swap_payload(cookie: str) -> str:
    """Ada's signature on a payload that names Bob."""
    _, stamp, signature = cookie.rsplit(".", 2)
    return ".".join(
        (_b64(json.dumps({"_user_id": "2", "_fresh": True}).encode()), stamp, signature)
    )


def _flip_signature(cookie: str) -> str:
    """One character of the signature changed; the first, as the last one's low bits are padding."""
    rest, signature = cookie.rsplit(".", 1)
    first = "A" if signature[0] != "A" else "B"
    return f"{rest}.{first}{signature[1:]}"


def _old_stamp(cookie: str) -> str:
    """Same payload and signature, an older timestamp."""
    payload, stamp, signature = cookie.rsplit(".", 2)
    older = int.from_bytes(base64.urlsafe_b64decode(stamp + "=" * (-len(stamp) % 4))) - 1
    return ".".join((payload, _b64(older.to_bytes(4, "big")), signature))


@pytest.mark.parametrize(
    "tamper",
    [
        _swap_payload,
        _flip_signature,
        _old_stamp,
        lambda c: c[: len(c) // 2],
        lambda c: "not-a-cookie",
        lambda c: "." + c,
        lambda c: c + "A",
    ],
    ids=[
        "payload-swapped",
        "signature-flipped",
        "timestamp-changed",
        "truncated",
        "garbage",
        "leading-dot",
        "extended",
    ],
)
def test_a_tampered_cookie_is_anonymous_not_an_error(
    make_host: HostFactory,
    sqlite_host_db: str,
    make_reader: ReaderFactory,
    tamper: Callable[[str], str],
) -> None:
    host = make_host(sqlite_host_db)
    cookie = host_cookies(host)["session"]
    reader = make_reader(USERS_DATABASE_URL=sqlite_host_db, USERS_SQL=SQL)
    assert whoami(with_cookies(reader, {"session": cookie}))["id"] == 1  # untouched, it works

    tampered = make_reader(USERS_DATABASE_URL=sqlite_host_db, USERS_SQL=SQL)
    tampered.set_cookie("session", tamper(cookie))
    assert whoami(tampered) is None
    assert_envelope(tampered.post("/api", json={"name": "app/x"}), 401, "login_required")


@pytest.mark.parametrize(
    "content",
    [["not", "a", "session"], {"_user_id": {"id": 1}}, {"_user_id": True}, {"_user_id": "x" * 600}],
    ids=["list", "id-is-a-dict", "id-is-a-bool", "id-too-long"],
)
def test_a_well_signed_cookie_without_a_usable_id_is_anonymous(
    make_host: HostFactory, sqlite_host_db: str, make_reader: ReaderFactory, content: Any
) -> None:
    """Signed with the right key but not what Flask-Login writes: anonymous, not a 500."""
    host = make_host(sqlite_host_db)
    serializer = SecureCookieSessionInterface().get_signing_serializer(host)
    assert serializer is not None
    reader = make_reader()
    reader.set_cookie("session", serializer.dumps(content))
    assert whoami(reader) is None


def test_a_cookie_signed_with_another_salt_is_anonymous_unless_configured(
    make_host: HostFactory, sqlite_host_db: str, make_reader: ReaderFactory
) -> None:
    host = make_host(sqlite_host_db)
    salted = SecureCookieSessionInterface()
    salted.salt = "host-salt"
    serializer = salted.get_signing_serializer(host)
    assert serializer is not None
    cookie = serializer.dumps({"_user_id": "1"})
    assert whoami(with_cookies(make_reader(), {"session": cookie})) is None
    configured = make_reader(SESSION_SALT="host-salt")
    assert whoami(with_cookies(configured, {"session": cookie})) == {"id": "1"}


def test_the_cookie_name_is_a_setting(make_reader: ReaderFactory, tmp_path: Path) -> None:
    host = create_host_app(
        {
            "SECRET_KEY": SECRET_KEY,
            "HOST_DATABASE_URL": f"sqlite:///{tmp_path / 'named.db'}",
            "HOST_SESSION_COOKIE_NAME": "host_session",
        }
    )
    add_user(host, "ada@example.com", "Ada Lovelace", PASSWORD)
    client = host.test_client()
    log_in(client)
    cookie = client.get_cookie("host_session")
    assert cookie is not None
    assert whoami(with_cookies(make_reader(), {"host_session": cookie.value})) is None
    named = make_reader(SESSION_COOKIE_NAME="host_session")
    assert whoami(with_cookies(named, {"host_session": cookie.value})) == {"id": "1"}
    host.extensions["host_db"].dispose()


@pytest.mark.timeout(30)
def test_a_session_older_than_session_max_age_is_anonymous(
    make_host: HostFactory, sqlite_host_db: str, make_reader: ReaderFactory
) -> None:
    cookies = host_cookies(make_host(sqlite_host_db))
    short = with_cookies(make_reader(SESSION_MAX_AGE="1s"), cookies)
    long = with_cookies(make_reader(SESSION_MAX_AGE="1h"), cookies)
    assert whoami(short) == {"id": "1"}
    time.sleep(2.2)  # itsdangerous counts whole seconds
    assert whoami(short) is None
    assert whoami(long) == {"id": "1"}


def test_without_a_required_login_an_anonymous_post_is_sent_without_a_user(
    make_reader: ReaderFactory, make_host: HostFactory, sqlite_host_db: str
) -> None:
    make_host(sqlite_host_db)
    reader = make_reader(
        USERS_DATABASE_URL=sqlite_host_db, USERS_SQL=SQL, INNGEST_GATEWAY_API_REQUIRE_LOGIN=""
    )
    assert whoami(reader) is None  # a 200, and the event's data.user is null
    assert len(reader.inngest.received) == 1
    reader.set_cookie("session", "forged")
    assert whoami(reader) is None
    assert len(reader.inngest.received) == 2


def test_beside_a_host_the_service_has_no_pages_or_users_of_its_own(
    make_reader: ReaderFactory, make_app: Callable[..., Flask]
) -> None:
    """Only /api, health checks, metrics and docs: the host has the login and the pages."""
    reader = make_reader()
    for path in ("/", "/sent", "/auth/login", "/auth/me"):
        assert_envelope(reader.get(path), 404, "not_found")
    assert_envelope(reader.post("/auth/login", json={}), 404, "not_found")
    assert reader.get("/healthz").status_code == 200
    assert reader.get("/openapi.json").status_code == 200
    commands = reader.application.test_cli_runner().invoke(args=["--help"]).output
    assert "inngest-gateway" in commands and "users" not in commands
    # The service's own mode keeps them all.
    own = make_app().test_client()
    assert own.get("/auth/me").status_code in (200, 401)
    assert own.get("/").status_code == 200
    assert "users" in make_app().test_cli_runner().invoke(args=["--help"]).output


# --- the host's users -----------------------------------------------------------------------


def test_a_user_the_query_no_longer_returns_is_anonymous(
    host: Flask, make_reader: ReaderFactory, host_db: str
) -> None:
    reader = with_cookies(
        make_reader(USERS_DATABASE_URL=host_db, USERS_SQL=SQL), host_cookies(host)
    )
    assert whoami(reader)["id"] == 1
    set_active(host, 1, False)
    assert whoami(reader) is None
    assert_envelope(reader.post("/api", json={"name": "app/x"}), 401, "login_required")
    set_active(host, 1, True)
    assert whoami(reader)["id"] == 1


def test_the_remember_cookie_alone_logs_in(
    host: Flask, make_reader: ReaderFactory, host_db: str
) -> None:
    cookies = host_cookies(host, remember=True)
    reader = make_reader(USERS_DATABASE_URL=host_db, USERS_SQL=SQL)
    reader.set_cookie("remember_token", cookies["remember_token"])
    assert whoami(reader)["email"] == "ada@example.com"
    response = reader.post("/api", json={"name": "app/x"})
    assert response.status_code == 200
    assert set_cookie_names(response) == []  # Flask-Login wrote the session in memory only

    # The same cookie once the host has disabled Ada: anonymous.
    set_active(host, 1, False)
    assert whoami(reader) is None


@pytest.mark.parametrize(
    "cookie",
    ["1|" + "0" * 128, "1", "|", "", "2|{digest_of_1}", "1|{digest_of_1}x"],
)
def test_a_forged_remember_cookie_is_anonymous(
    make_host: HostFactory, sqlite_host_db: str, make_reader: ReaderFactory, cookie: str
) -> None:
    host = make_host(sqlite_host_db)
    real = host_cookies(host, remember=True)["remember_token"]
    assert real.startswith("1|")
    digest = real.split("|", 1)[1]
    reader = make_reader(USERS_DATABASE_URL=sqlite_host_db, USERS_SQL=SQL)
    reader.set_cookie("remember_token", cookie.format(digest_of_1=digest))
    assert whoami(reader) is None
    assert remembered_user_id(cookie.format(digest_of_1=digest), SECRET_KEY) is None
    assert remembered_user_id(real, SECRET_KEY) == "1"
    assert remembered_user_id(real, OTHER_KEY) is None


def test_the_remember_cookie_name_is_a_setting(
    make_host: HostFactory, sqlite_host_db: str, make_reader: ReaderFactory
) -> None:
    real = host_cookies(make_host(sqlite_host_db), remember=True)["remember_token"]
    reader = make_reader(REMEMBER_COOKIE_NAME="host_remember")
    reader.set_cookie("remember_token", real)
    assert whoami(reader) is None
    reader.set_cookie("host_remember", real)
    assert whoami(reader) == {"id": "1"}


# --- host cookies the service cannot read: counted, and a warning for the operator ----------

REJECTED = "inngest_gateway_host_cookies_rejected_total"


def signed_session(host: Flask, content: Any, *, age: float = 0) -> str:
    """A session cookie signed with the host's own key and salt, `age` seconds ago."""

    class Then(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age)

    serializer = SecureCookieSessionInterface().get_signing_serializer(host)
    assert serializer is not None
    serializer.signer = Then
    return serializer.dumps(content)


def test_rejected_host_cookies_are_counted_by_cookie_and_reason(
    make_host: HostFactory,
    sqlite_host_db: str,
    make_reader: ReaderFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = make_host(sqlite_host_db)
    foreign = host_cookies(make_host(sqlite_host_db, OTHER_KEY, users=False), remember=True)
    reader = make_reader()
    app = reader.application
    scraper = app.test_client()  # no cookies: its own requests reject nothing
    expired = signed_session(host, {"_user_id": "1"}, age=40 * 86400)
    cases = [
        ({"session": foreign["session"]}, "session", "bad_signature"),
        ({"session": "no-separator-at-all"}, "session", "bad_signature"),
        ({"session": expired}, "session", "expired"),
        ({"session": signed_session(host, ["not", "a", "session"])}, "session", "malformed"),
        ({"remember_token": foreign["remember_token"]}, "remember", "bad_signature"),
        ({"remember_token": "1"}, "remember", "malformed"),
    ]
    for cookies, cookie, reason in cases:
        delta = Delta(scraper)
        assert whoami(with_cookies(make_reader(app), cookies)) is None
        counted = {
            (c, r): delta(REJECTED, cookie=c, reason=r)
            for c in ("session", "remember")
            for r in ("bad_signature", "expired", "malformed")
        }
        assert counted == {key: float(key == (cookie, reason)) for key in counted}, cookies
    # The service itself warned (once: the rest fell within the same minute).
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.name == "service.identity" and "SECRET_KEY" in warning.getMessage()

    # The host's own cookies, session and remember, are not rejected.
    delta = Delta(scraper)
    assert whoami(with_cookies(make_reader(app), host_cookies(host, remember=True))) == {"id": "1"}
    for cookie in ("session", "remember"):
        for reason in ("bad_signature", "expired", "malformed"):
            assert delta(REJECTED, cookie=cookie, reason=reason) == 0


def test_a_wrong_secret_key_is_a_warning_at_most_once_a_minute(
    make_host: HostFactory, sqlite_host_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every cookie failing its signature is a misconfiguration an operator must see."""
    caplog.set_level(logging.INFO, logger="service.identity")
    host = make_host(sqlite_host_db)
    foreign = host_cookies(make_host(sqlite_host_db, OTHER_KEY, users=False))["session"]
    expired = signed_session(host, {"_user_id": "1"}, age=40 * 86400)
    now = [1000.0]
    app = Flask("bare")
    app.config["SECRET_KEY"] = SECRET_KEY
    app.session_interface = HostSessionInterface("session", clock=lambda: now[0])
    app.get("/")(lambda: "ok")

    def visit(cookie: str, at: float) -> None:
        now[0] = at
        client = app.test_client()
        client.set_cookie("session", cookie)
        assert client.get("/").status_code == 200

    def warnings() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "service.identity" and r.levelno == logging.WARNING
        ]

    visit(foreign, 1000.0)
    (first,) = warnings()  # at once, on the first one
    message = first.getMessage()
    assert "1 host cookie" in message and "bad_signature: 1" in message
    assert "SECRET_KEY" in message and "SESSION_SALT" in message
    assert foreign not in caplog.text and SECRET_KEY not in caplog.text

    for at in (1010.0, 1030.0, 1059.0):
        visit(foreign, at)
    visit("garbage", 1059.5)
    visit(expired, 1059.6)  # an old login is no misconfiguration: not in the warnings
    assert len(warnings()) == 1
    # Each one still has its INFO line.
    infos = [
        r for r in caplog.records if r.name == "service.identity" and r.levelno == logging.INFO
    ]
    assert len(infos) == 6

    visit(foreign, 1061.0)
    assert len(warnings()) == 2
    second = warnings()[1].getMessage()
    assert "5 host cookies" in second and "bad_signature: 5" in second and "61 s" in second
    assert "expired" not in second
    assert warnings()[1].fields["rejected"] == 5  # type: ignore[attr-defined]

    visit(host_cookies(host)["session"], 2000.0)  # the host's own cookie: nothing to say
    assert len(warnings()) == 2


# --- never a cookie -------------------------------------------------------------------------


def add_meddling_route(app: Flask, session_cookie: str = "session") -> None:
    """`POST /meddle`: writes the session and sets the host's cookies, as a careless hook might."""

    @app.post("/meddle")
    def meddle() -> Response:
        session["_user_id"] = "someone-else"
        session["extra"] = "x"
        response = make_response(jsonify(status="ok"))
        response.set_cookie(session_cookie, "forged")
        response.set_cookie("remember_token", "forged")
        response.set_cookie("reader_own", "kept")
        return response


def test_the_service_never_sets_the_hosts_cookies(
    make_host: HostFactory,
    sqlite_host_db: str,
    make_reader: ReaderFactory,
    make_app: Callable[..., Flask],
) -> None:
    cookies = host_cookies(make_host(sqlite_host_db), remember=True)
    app = reader_app(make_app, USERS_DATABASE_URL=sqlite_host_db, USERS_SQL=SQL)
    add_meddling_route(app)
    reader = with_cookies(make_reader(app), cookies)
    for response in (
        reader.post("/api", json={"name": "app/x"}),
        reader.post("/api", data={"name": "app/x"}),  # a form post, redirected
        reader.post("/meddle"),
    ):
        assert response.status_code in (200, 303)
        assert "session" not in set_cookie_names(response)
        assert "remember_token" not in set_cookie_names(response)
        assert "Cookie" in response.vary
    # Cookies of its own are its business.
    assert set_cookie_names(reader.post("/meddle")) == ["reader_own"]
    # Nothing changed: the host's cookies are as the host made them.
    assert whoami(reader)["id"] == 1
    assert reader.get_cookie("session").value == cookies["session"]  # type: ignore[union-attr]

    # The check can fail: Flask's own interface on the same app writes the cookie.
    stock = reader_app(make_app)
    add_meddling_route(stock)
    stock.session_interface = SecureCookieSessionInterface()
    written = with_cookies(stock.test_client(), cookies).post("/meddle")
    assert "session" in set_cookie_names(written)


def test_the_interface_alone_opens_and_never_saves(
    make_host: HostFactory, sqlite_host_db: str
) -> None:
    cookie = host_cookies(make_host(sqlite_host_db))["session"]
    app = Flask("bare")
    app.config["SECRET_KEY"] = SECRET_KEY
    interface = HostSessionInterface("session")
    app.session_interface = interface
    with app.test_request_context(headers={"Cookie": f"session={cookie}"}):
        from flask import request

        opened = interface.open_session(app, request)
        assert opened["_user_id"] == "1"
        assert identity.session_user_id(opened) == "1"
        opened["_user_id"] = "2"
        assert interface.should_set_cookie(app, opened) is False
        response = app.response_class("x")
        interface.save_session(app, opened, response)
        assert "Set-Cookie" not in response.headers
    with app.test_request_context():
        from flask import request

        assert dict(interface.open_session(app, request)) == {}
    app.config["SECRET_KEY"] = None  # no key: nothing can be verified, so anonymous
    with app.test_request_context(headers={"Cookie": f"session={cookie}"}):
        from flask import request

        assert dict(interface.open_session(app, request)) == {}


def test_the_pieces_on_a_bare_app_make_current_user_the_hosts_user(
    make_host: HostFactory, sqlite_host_db: str
) -> None:
    """The interface and a login manager with the lookup, on an app that is nothing else."""
    cookies = host_cookies(make_host(sqlite_host_db))
    settings = load_identity_settings(
        {
            "IDENTITY": "flask-session",
            "SECRET_KEY": SECRET_KEY,
            "USERS_DATABASE_URL": sqlite_host_db,
            "USERS_SQL": SQL,
        }
    )
    app = Flask("tiny")
    app.config["SECRET_KEY"] = SECRET_KEY
    app.session_interface = HostSessionInterface()
    lookup = UserLookup(settings.users_database_url, settings.users_sql)
    identity.make_login_manager(settings, lookup).init_app(app)

    @app.get("/me")
    def me() -> Any:
        from flask_login import current_user

        if not current_user.is_authenticated:
            return {"user": None}
        return {"user": current_user.public(), "id": current_user.get_id()}

    client = with_cookies(app.test_client(), cookies)
    try:
        response = client.get("/me")
        assert response.get_json()["id"] == "1"
        assert response.get_json()["user"]["email"] == "ada@example.com"
        assert set_cookie_names(response) == []
        assert app.test_client().get("/me").get_json() == {"user": None}
    finally:
        lookup.dispose()


# --- lookups that fail ----------------------------------------------------------------------


def _assert_unavailable(response: TestResponse) -> None:
    assert_envelope(response, 503, "users_unavailable")
    assert response.headers["Retry-After"] == "5"


def test_a_users_database_that_is_down_is_503_and_keeps_its_password(
    make_host: HostFactory,
    sqlite_host_db: str,
    make_reader: ReaderFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cookies = host_cookies(make_host(sqlite_host_db))
    down = f"postgresql://gateway:s3cret-pw@127.0.0.1:{free_port()}/users"
    reader = with_cookies(make_reader(USERS_DATABASE_URL=down, USERS_SQL=SQL), cookies)
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    for response in (
        reader.post("/api", json={"name": "app/x"}),
        reader.post("/api", data={"name": "app/x"}),
    ):
        _assert_unavailable(response)
        assert "s3cret-pw" not in response.get_data(as_text=True)
    assert time.monotonic() - started < 10
    assert "users lookup failed" in caplog.text
    assert "s3cret-pw" not in caplog.text


def test_a_users_sql_that_breaks_after_the_start_is_503_an_error_and_not_ready(
    host: Flask,
    make_reader: ReaderFactory,
    host_db: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The host renames its table under a running service: posts get 503 (the browser client
    keeps them), the log says at ERROR that it is the query, not an outage, and /readyz says
    so; once the table is back, lookups and readiness recover."""
    reader = with_cookies(
        make_reader(USERS_DATABASE_URL=host_db, USERS_SQL=SQL), host_cookies(host)
    )
    assert whoami(reader)["id"] == 1
    assert reader.get("/readyz").get_json()["users"] == "ok"
    engine = host.extensions["host_db"]
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE host_users RENAME TO host_users_old")
    caplog.set_level(logging.INFO)
    try:
        _assert_unavailable(reader.post("/api", json={"name": "app/x"}))
        _assert_unavailable(reader.post("/api", json={"name": "app/x"}))
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        (line,) = [r.getMessage() for r in errors]  # once, not once a post
        assert "configuration error, not an outage" in line and "host_users" in line, line
        ready = reader.get("/readyz")
        assert_envelope(ready, 503, "not_ready")
        (problem,) = ready.get_json()["errors"]["users"]
        assert problem.startswith("USERS_SQL: ") and "host_users" in problem, problem
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE host_users_old RENAME TO host_users")
    assert whoami(reader)["id"] == 1
    assert reader.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("SELECT id, email FROM no_such_table WHERE id = :id", "no_such_table"),
        ("SELECT id, no_such_column FROM host_users WHERE id = :id", "no_such_column"),
        ("SELECT id, email FROM host_users WHERE id = :id ORDER", "syntax"),
        ("SELECT email, name FROM host_users WHERE id = :id", "returns no `id` column"),
    ],
)
def test_a_users_sql_the_database_cannot_run_stops_the_start(
    host: Flask, make_app: Callable[..., Flask], host_db: str, sql: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        reader_app(make_app, USERS_DATABASE_URL=host_db, USERS_SQL=sql)
    (line,) = str(raised.value).splitlines()
    assert line.startswith("USERS_SQL: ") and problem in line.lower(), line


def test_the_start_up_check_reads_no_user(
    host: Flask, make_reader: ReaderFactory, host_db: str
) -> None:
    """The check runs the query so that no row can come back: a query that would fail on any
    row it read (a division by zero) passes it, and fails only when a post reads a user."""
    sql = "SELECT id, 1 / (id - id) AS boom FROM host_users WHERE id = :id"
    reader = with_cookies(
        make_reader(USERS_DATABASE_URL=host_db, USERS_SQL=sql), host_cookies(host)
    )
    response = reader.post("/api", json={"name": "app/x"})
    if host_db.startswith("sqlite"):  # SQLite's 1/0 is NULL, not an error
        assert response.status_code == 200
    else:
        _assert_unavailable(response)


def test_a_row_whose_id_is_null_carries_the_sessions_id(
    host: Flask, make_reader: ReaderFactory, host_db: str
) -> None:
    """Not a 500: `data.user.id` is the id the host's session names."""
    sql = "SELECT NULL AS id, email FROM host_users WHERE id = :id"
    reader = with_cookies(
        make_reader(USERS_DATABASE_URL=host_db, USERS_SQL=sql), host_cookies(host)
    )
    assert whoami(reader) == {"id": "1", "email": "ada@example.com"}


def test_a_users_database_that_is_down_at_the_start_is_checked_later(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    down = f"postgresql://gateway:s3cret-pw@127.0.0.1:{free_port()}/users"
    caplog.set_level(logging.INFO)
    app = reader_app(make_app, USERS_DATABASE_URL=down, USERS_SQL=SQL)
    try:
        assert "users database did not answer at start" in caplog.text
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 200 and ready.get_json()["users"] == "unavailable"
        assert "s3cret-pw" not in caplog.text
    finally:
        app.extensions["identity"].dispose()


@pytest.mark.timeout(30)
def test_a_locked_sqlite_database_is_503_within_the_timeout(
    make_host: HostFactory, sqlite_host_db: str, make_reader: ReaderFactory
) -> None:
    cookies = host_cookies(make_host(sqlite_host_db))
    reader = make_reader(
        USERS_DATABASE_URL=sqlite_host_db, USERS_SQL=SQL, USERS_SQL_TIMEOUT="300ms"
    )
    with_cookies(reader, cookies)
    assert whoami(reader)["id"] == 1
    holder = sqlite3.connect(sqlite_host_db.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        _assert_unavailable(reader.post("/api", json={"name": "app/x"}))
        assert 0.25 < time.monotonic() - started < 3
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert whoami(reader)["id"] == 1


@pytest.mark.timeout(60)
def test_a_users_database_gone_silent_is_503_in_time_and_starves_no_other_request(
    make_host: HostFactory, postgres_host_db: str, make_reader: ReaderFactory
) -> None:
    """With the pool warm, the link to the users database holds its connections and forwards
    nothing: a logged-in post gets 503 within USERS_SQL_TIMEOUT plus a margin, and meanwhile
    an anonymous post and /healthz in the same process answer at once."""
    cookies = host_cookies(make_host(postgres_host_db))
    port = urlsplit(postgres_host_db).port or 5432
    with freezable_proxy(port) as proxy:
        reader = make_reader(
            USERS_DATABASE_URL=through(proxy, postgres_host_db),
            USERS_SQL=SQL,
            USERS_SQL_TIMEOUT="1",
            INNGEST_GATEWAY_API_REQUIRE_LOGIN="false",
        )
        with_cookies(reader, cookies)
        assert whoami(reader)["id"] == 1  # the pool holds a connection through the proxy
        anonymous = reader.application.test_client()
        proxy.freeze()
        answers: list[tuple[int, str | None, float]] = []

        def logged_in_post() -> None:
            began = time.monotonic()
            response = reader.post("/api", json={"name": "app/x"})
            code = (response.get_json() or {}).get("code")
            answers.append((response.status_code, code, time.monotonic() - began))
            assert response.headers.get("Retry-After") == "5"

        for _ in range(2):  # the warm connection, then a new one through the frozen link
            thread = threading.Thread(target=logged_in_post, daemon=True)
            thread.start()
            time.sleep(0.2)  # the lookup is under way, and stuck
            assert thread.is_alive()
            began = time.monotonic()
            assert anonymous.get("/healthz").status_code == 200
            response = anonymous.post("/api", json={"name": "app/anonymous"})
            assert response.status_code == 200, response.get_data(as_text=True)
            assert time.monotonic() - began < 0.5
            thread.join(timeout=10)
            assert not thread.is_alive(), "the logged-in post never answered"
        for status, code, seconds in answers:
            assert (status, code) == (503, "users_unavailable")
            assert 0.9 < seconds < 1 + 0.5, f"{seconds:.2f}s with USERS_SQL_TIMEOUT=1"
        proxy.thaw()
        deadline = time.monotonic() + 10
        while reader.post("/api", json={"name": "app/x"}).status_code != 200:
            assert time.monotonic() < deadline, "the lookup did not recover"
            time.sleep(0.2)
        assert whoami(reader)["id"] == 1


@pytest.mark.timeout(30)
def test_the_users_engine_gives_up_connecting_and_waiting_for_the_pool(
    postgres_host_db: str, make_host: HostFactory
) -> None:
    """`connect_timeout`: a server that accepts and never answers is left after libpq's 2 s
    (the lookup itself answers at its own deadline). `pool_timeout`: with every pooled
    connection taken, a lookup gives up at its deadline, not SQLAlchemy's 30 s."""
    make_host(postgres_host_db)
    with silent_server() as port:
        lookup = UserLookup(f"postgresql://reader@127.0.0.1:{port}/users", SQL, timeout=0.5)
        try:
            began = time.monotonic()
            with pytest.raises(UsersUnavailable):
                lookup.load("1")
            assert time.monotonic() - began < 0.5 + 0.5
            # What the helper thread's connection attempt is bounded by: libpq's 2 s.
            began = time.monotonic()
            with pytest.raises(OperationalError, match="timeout"):
                lookup.engine.raw_connection()
            assert 1.9 < time.monotonic() - began < 2 + 1.5
        finally:
            lookup.dispose()
    lookup = UserLookup(postgres_host_db, SQL, timeout=0.5)
    try:
        assert (user := lookup.load("1")) is not None and user.id == "1"
        pool = lookup.engine.pool
        taken = [lookup.engine.raw_connection() for _ in range(pool.size())]  # type: ignore[attr-defined]
        try:
            began = time.monotonic()
            with pytest.raises(UsersUnavailable):
                lookup.load("1")
            assert time.monotonic() - began < 0.5 + 0.5
        finally:
            for connection in taken:
                connection.close()
        assert (user := lookup.load("1")) is not None and user.id == "1"
    finally:
        lookup.dispose()


@pytest.mark.timeout(30)
def test_a_slow_postgres_query_is_cut_at_the_timeout(
    make_host: HostFactory, postgres_host_db: str, make_reader: ReaderFactory
) -> None:
    cookies = host_cookies(make_host(postgres_host_db))
    slow = "SELECT id, email, pg_sleep(5) IS NULL AS slept FROM host_users WHERE id = :id"
    reader = make_reader(
        USERS_DATABASE_URL=postgres_host_db, USERS_SQL=slow, USERS_SQL_TIMEOUT="300ms"
    )
    with_cookies(reader, cookies)
    started = time.monotonic()
    _assert_unavailable(reader.post("/api", json={"name": "app/x"}))
    assert time.monotonic() - started < 3


def test_the_postgres_query_runs_read_only(
    make_host: HostFactory, postgres_host_db: str, make_reader: ReaderFactory
) -> None:
    cookies = host_cookies(make_host(postgres_host_db))
    writes = "SELECT id, nextval('host_users_id_seq') AS n FROM host_users WHERE id = :id"
    reader = with_cookies(
        make_reader(USERS_DATABASE_URL=postgres_host_db, USERS_SQL=writes), cookies
    )
    _assert_unavailable(reader.post("/api", json={"name": "app/x"}))
    lookup = UserLookup(postgres_host_db, SQL)
    try:
        with lookup.engine.connect() as connection:  # the same call outside the lookup works
            assert connection.exec_driver_sql("SELECT nextval('host_users_id_seq')").scalar()
    finally:
        lookup.dispose()


def test_the_sqlite_connection_is_read_only(make_host: HostFactory, sqlite_host_db: str) -> None:
    make_host(sqlite_host_db)
    lookup = UserLookup(sqlite_host_db, SQL)
    try:
        with lookup.engine.connect() as connection:
            with pytest.raises(Exception, match="readonly"):
                connection.exec_driver_sql("DELETE FROM host_users")
        user = lookup.load("1")
        assert user is not None and user.public()["email"] == "ada@example.com"
        assert lookup.load("999") is None
    finally:
        lookup.dispose()


@pytest.mark.parametrize("name", ["host users.db", "host#1.db"])
def test_an_sqlite_path_with_uri_characters_is_read(
    tmp_path: Path, make_host: HostFactory, name: str
) -> None:
    url = f"sqlite:///{tmp_path / name}"
    make_host(url)
    lookup = UserLookup(url, SQL)
    try:
        user = lookup.load("1")
        assert user is not None and user.public()["name"] == "Ada Lovelace"
        assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    finally:
        lookup.dispose()


@pytest.mark.parametrize("name", ["missing/users.db", "users.db"])
def test_a_missing_sqlite_database_is_503_and_stays_missing(tmp_path: Path, name: str) -> None:
    """The lookup never creates the host's database file."""
    lookup = UserLookup(f"sqlite:///{tmp_path / name}", SQL)
    try:
        with pytest.raises(UsersUnavailable):
            lookup.load("1")
        assert sorted(p.name for p in tmp_path.iterdir()) == []
    finally:
        lookup.dispose()


# --- logging in on the host ----------------------------------------------------------------


def test_a_form_post_without_a_login_goes_to_the_hosts_login_page(
    make_reader: ReaderFactory,
) -> None:
    reader = make_reader(LOGIN_URL="/login")
    headers = {"Referer": "http://localhost/pages/order?step=2", "Accept": "text/html"}
    response = reader.post("/api", data={"name": "app/x"}, headers=headers)
    assert response.status_code == 303
    assert response.headers["Location"] == "/login?next=%2Fpages%2Forder%3Fstep%3D2"

    # A referrer from elsewhere is not a place to come back to.
    headers["Referer"] = "https://evil.example/pages/order"
    response = reader.post("/api", data={"name": "app/x"}, headers=headers)
    assert response.status_code == 303
    assert response.headers["Location"] == "/login"


@pytest.mark.parametrize(
    ("kwargs", "login_url"),
    [
        ({"json": {"name": "app/x"}}, "/login"),
        ({"data": {"name": "app/x"}, "headers": {"Accept": "application/json"}}, "/login"),
        ({"data": {"name": "app/x"}, "headers": {"X-Requested-With": "XMLHttpRequest"}}, "/login"),
        ({"data": {"name": "app/x"}}, ""),
    ],
    ids=["json", "form-asking-for-json", "xhr-form", "form-without-login-url"],
)
def test_other_posts_without_a_login_get_401(
    make_reader: ReaderFactory, kwargs: dict[str, Any], login_url: str
) -> None:
    reader = make_reader(LOGIN_URL=login_url)
    assert_envelope(reader.post("/api", **kwargs), 401, "login_required")


@pytest.mark.parametrize(
    ("login_url", "next_path", "expected"),
    [
        ("/login", None, "/login"),
        ("/login", "/a b?x=1&y=2", "/login?next=%2Fa+b%3Fx%3D1%26y%3D2"),
        (
            "https://app.example.com/auth/login?lang=en&next=/old",
            "/orders",
            "https://app.example.com/auth/login?lang=en&next=%2Forders",
        ),
    ],
)
def test_login_redirect_url(login_url: str, next_path: str | None, expected: str) -> None:
    assert login_redirect_url(login_url, next_path) == expected


# --- settings -------------------------------------------------------------------------------


def test_identity_defaults_to_the_services_own_users() -> None:
    settings = load_identity_settings({})
    assert not settings.flask_session
    assert settings.session_cookie_name == "session"
    assert settings.session_salt == "cookie-session"
    assert settings.remember_cookie_name == "remember_token"
    assert settings.users_sql is None and settings.login_url is None
    with pytest.raises(ValueError, match="flask-session"):
        identity.init_app(Flask("x"), settings)


def test_flask_session_settings_are_read() -> None:
    settings = load_identity_settings(
        {
            "IDENTITY": "flask-session",
            "SECRET_KEY": SECRET_KEY,
            "SESSION_COOKIE_NAME": "app_session",
            "SESSION_SALT": "host-salt",
            "SESSION_MAX_AGE": "7d",
            "USERS_DATABASE_URL": "postgresql://reader:pw@db/app",
            "USERS_SQL": f"  {SQL};  ",
            "USERS_SQL_TIMEOUT": "500ms",
            "LOGIN_URL": "/accounts/login",
        }
    )
    assert settings.flask_session
    assert settings.session_cookie_name == "app_session"
    assert settings.session_salt == "host-salt"
    assert settings.session_max_age == 7 * 86400
    assert settings.users_database_url == "postgresql+psycopg://reader:pw@db/app"
    assert settings.users_sql == SQL
    assert settings.users_sql_timeout == 0.5
    assert settings.login_url == "/accounts/login"
    assert "pw" not in repr(settings)


FLASK_SESSION = {"IDENTITY": "flask-session", "SECRET_KEY": SECRET_KEY}


@pytest.mark.parametrize(
    "login_url", ["/login", "/accounts/login?lang=en", "https://app.example.com/login"]
)
def test_login_url_may_be_a_path_or_an_https_url(login_url: str) -> None:
    settings = load_identity_settings({**FLASK_SESSION, "LOGIN_URL": f" {login_url} "})
    assert settings.login_url == login_url


USERS = {"USERS_DATABASE_URL": "sqlite:///users.db", "USERS_SQL": SQL}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IDENTITY": "ldap"}, "IDENTITY: Must be one of"),
        ({"IDENTITY": "flask-session"}, "SECRET_KEY: is required with IDENTITY=flask-session"),
        ({**USERS}, "USERS_DATABASE_URL: is only read with IDENTITY=flask-session"),
        ({"LOGIN_URL": "/login"}, "LOGIN_URL: is only read with IDENTITY=flask-session"),
        ({**FLASK_SESSION, "USERS_SQL": SQL}, "USERS_DATABASE_URL: is required when USERS_SQL"),
        (
            {**FLASK_SESSION, "USERS_DATABASE_URL": "sqlite:///u.db"},
            "USERS_DATABASE_URL: is set but USERS_SQL is not",
        ),
        (
            {**FLASK_SESSION, **USERS, "USERS_DATABASE_URL": "mysql://root:hunter2@db/app"},
            "USERS_DATABASE_URL: must be a sqlite:/// or postgresql:// URL",
        ),
        (
            {**FLASK_SESSION, **USERS, "USERS_SQL": "SELECT id FROM users"},
            "USERS_SQL: must use the bind parameter :id",
        ),
        (
            {**FLASK_SESSION, **USERS, "USERS_SQL": "DELETE FROM users WHERE id = :id"},
            "USERS_SQL: must be a SELECT statement",
        ),
        (
            {**FLASK_SESSION, **USERS, "USERS_SQL": "SELECT 1 WHERE 1 = :id; DROP TABLE users"},
            "USERS_SQL: must be a single statement",
        ),
        (
            {**FLASK_SESSION, **USERS, "USERS_SQL": "SELECT * FROM u WHERE id = :id AND o = :org"},
            "USERS_SQL: may use only the bind parameter :id, not :org",
        ),
        (
            {
                **FLASK_SESSION,
                **USERS,
                "USERS_SQL": "WITH d AS (DELETE FROM users RETURNING id) SELECT id FROM d "
                "WHERE id = :id",
            },
            "USERS_SQL: must be a SELECT statement",
        ),
        ({**FLASK_SESSION, "USERS_SQL_TIMEOUT": "1m"}, "USERS_SQL_TIMEOUT: Must be"),
        ({**FLASK_SESSION, "SESSION_MAX_AGE": "soon"}, "SESSION_MAX_AGE: must be a duration"),
        ({**FLASK_SESSION, "SESSION_COOKIE_NAME": "a b"}, "SESSION_COOKIE_NAME: not a cookie"),
        ({**FLASK_SESSION, "REMEMBER_COOKIE_NAME": "a;b"}, "REMEMBER_COOKIE_NAME: not a cookie"),
        ({**FLASK_SESSION, "LOGIN_URL": "//evil.example/login"}, "LOGIN_URL: must be a path"),
        ({**FLASK_SESSION, "LOGIN_URL": "javascript:alert(1)"}, "LOGIN_URL: must be a path"),
        ({**FLASK_SESSION, "LOGIN_URL": "/login\r\nX: y"}, "LOGIN_URL: must not contain"),
    ],
)
def test_bad_identity_settings_stop_the_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_identity_settings(env)
    assert str(raised.value).startswith(message.split(":")[0])
    assert message in str(raised.value)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select id from users where id = :id", "select id from users where id = :id"),
        (f"\n{SQL} ;\n", SQL),
        ("SELECT id FROM users WHERE id = CAST(:id AS integer)", None),
    ],
)
def test_check_users_sql_accepts_one_select(sql: str, expected: str | None) -> None:
    assert check_users_sql(sql) == (expected or sql)


# --- users as events carry them -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (7, 7),
        ("Ada", "Ada"),
        (1.5, 1.5),
        (math.nan, None),
        (math.inf, None),
        (datetime(2024, 5, 17, 9, 30, tzinfo=UTC), "2024-05-17T09:30:00+00:00"),
        (date(2024, 5, 17), "2024-05-17"),
        (time_of_day(9, 30), "09:30:00"),
        (Decimal("12.30"), "12.30"),
        (UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (b"\x00\xff", "AP8="),
        (
            {"tags": ["a", Decimal("1")], 2: date(2024, 1, 1)},
            {"tags": ["a", "1"], "2": "2024-01-01"},
        ),
        ((1, 2), [1, 2]),
    ],
)
def test_json_safe(value: Any, expected: Any) -> None:
    assert json_safe(value) == expected
    json.dumps(json_safe(value), allow_nan=False)


# --- beside the host, behind nginx ----------------------------------------------------------


def _token(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_beside_the_host_behind_nginx(
    tmp_path: Path, make_host: HostFactory, inngest: InngestStandIn
) -> None:
    """deploy/nginx-beside.conf: the host's pages and login, and the service's /api (wsgi:app
    under gunicorn, IDENTITY=flask-session) reading its session."""
    db = f"sqlite:///{tmp_path / 'host.db'}"
    make_host(db)  # the table and its users
    foreign = host_cookies(make_host(db, OTHER_KEY, users=False))
    host_env = {"SECRET_KEY": SECRET_KEY, "HOST_DATABASE_URL": db}
    service_env = {
        "IDENTITY": "flask-session",
        "SECRET_KEY": SECRET_KEY,
        "USERS_DATABASE_URL": db,
        "USERS_SQL": SQL,
        "LOGIN_URL": "/login",
        "INNGEST_GATEWAY_API_REQUIRE_LOGIN": "true",
        "TRUSTED_PROXIES": "1",
    }
    servers: list[Any] = []
    try:
        host = start_app("tests.hostapp:create_host_app()", tmp_path / "host", host_env)
        servers.append(host)
        (tmp_path / "service").mkdir()
        service = start_gunicorn(tmp_path / "service", inngest, env=service_env)
        servers.append(service)
        (tmp_path / "nginx").mkdir()
        nginx = start_nginx(
            tmp_path / "nginx",
            0,
            beside_site(int(host.url.rsplit(":", 1)[1]), int(service.url.rsplit(":", 1)[1])),
        )
        servers.append(nginx)
        base = nginx.url
        with requests.Session() as browser:
            # The host's own pages, headers and cookie, through nginx.
            home = browser.get(f"{base}/", timeout=10)
            assert home.status_code == 200 and 'action="/api"' in home.text
            assert home.headers["X-Host-App"] == "yes"
            assert "host_pref" in home.cookies
            script = browser.get(f"{base}/static/host.js", timeout=10)
            assert script.status_code == 200 and "fetch(" in script.text
            # Only /api itself is the service's: /api/whoami is a page of the host's.
            missing = browser.get(f"{base}/api/whoami", timeout=10)
            assert missing.status_code == 404 and "Host app: page not found" in missing.text

            def post(**kwargs: Any) -> requests.Response:
                return browser.post(f"{base}/api", timeout=10, allow_redirects=False, **kwargs)

            anonymous = post(json={"name": "app/x"})
            assert anonymous.status_code == 401, anonymous.text
            assert anonymous.json()["code"] == "login_required"
            assert "X-Host-App" not in anonymous.headers
            form = post(data={"name": "app/x"}, headers={"Referer": f"{base}/orders?id=7"})
            assert form.status_code == 303
            assert form.headers["Location"] == "/login?next=%2Forders%3Fid%3D7"

            # Log in on the host, through its own form.
            token = _token(browser.get(f"{base}/login", timeout=10).text)
            login = browser.post(
                f"{base}/login",
                data={"csrf_token": token, "email": "ada@example.com", "password": PASSWORD},
                timeout=10,
                allow_redirects=False,
            )
            assert login.status_code == 303, login.text
            for _ in range(4):  # both workers of the service, whichever answers
                answer = post(json={"name": "app/x"})
                assert answer.status_code == 200, answer.text
                assert "Set-Cookie" not in answer.headers
                (event_id,) = answer.json()["ids"]
                (event,) = inngest.received[-1].events
                assert event["id"] == event_id
                assert event["data"]["user"]["email"] == "ada@example.com"
                assert event["data"]["request"]["ip"] == "127.0.0.1"  # nginx's, trusted

            # Logged out on the host: anonymous again.
            logout = browser.post(
                f"{base}/logout", data={"csrf_token": token}, timeout=10, allow_redirects=False
            )
            assert logout.status_code == 303
            assert post(json={"name": "app/x"}).status_code == 401

            # The cookies of a host with another key: anonymous.
            browser.cookies.set("session", foreign["session"])
            assert post(json={"name": "app/x"}).status_code == 401

            # nginx's own limit on /api, in the service's envelope.
            large = post(data=b"x" * (1024 * 1024 + 1), headers={"Content-Type": "text/plain"})
            assert large.status_code == 413 and large.json()["code"] == "payload_too_large"
        assert "users lookup failed" not in service.output()
    finally:
        for server in reversed(servers):
            server.kill()


@pytest.mark.timeout(60)
def test_gunicorn_refuses_a_users_sql_the_users_database_cannot_run(
    tmp_path: Path, make_host: HostFactory, sqlite_host_db: str
) -> None:
    """The users database answers at start and has no such table: one line, no worker."""
    make_host(sqlite_host_db)
    line, _ = gunicorn_refusal(
        tmp_path,
        {
            "SECRET_KEY": SECRET_KEY,
            "INNGEST_EVENT_KEY": "some-key",
            "IDENTITY": "flask-session",
            "USERS_DATABASE_URL": sqlite_host_db,
            "USERS_SQL": "SELECT id, email FROM accounts WHERE id = :id",
        },
    )
    assert line == "inngest-gateway: configuration error: USERS_SQL: no such table: accounts"


@pytest.mark.timeout(60)
def test_gunicorn_refuses_a_bad_identity_setting_in_the_master(tmp_path: Path) -> None:
    """A bad identity setting stops gunicorn once, with one line, before any worker boots."""
    line, output = gunicorn_refusal(
        tmp_path,
        {
            "SECRET_KEY": SECRET_KEY,
            "INNGEST_EVENT_KEY": "some-key",
            "IDENTITY": "flask-session",
            "USERS_DATABASE_URL": "postgresql://reader:hunter2@127.0.0.1/app",
            "USERS_SQL": "SELECT id FROM users",
        },
    )
    assert line == (
        "inngest-gateway: configuration error: USERS_SQL: must use the bind parameter :id, "
        "e.g. `WHERE id = :id`"
    )
    assert "hunter2" not in output and "some-key" not in output
