"""Beside a host Flask app, in Chromium: README's example, run as written, behind real nginx.

nginx serves `deploy/nginx-beside.conf` (only the loopback ports changed): `POST /api` goes to
the service (`wsgi:app` under gunicorn, 2 workers, with the settings block of README's "Run it
beside your Flask app" section), everything else to a host app (tests/hostapp.py under
gunicorn) with its own users table, Flask-Login and login page. A person logs in on the host,
posts with the host page's form and its `fetch` script, and the events reach the stand-in
Inngest with the host's user from `USERS_SQL`; after logging out on the host, and with a cookie
signed with another key, posts are anonymous; a page on another origin is refused.
"""

from __future__ import annotations

import re
import shlex
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from playwright.sync_api import Page, expect

from tests.browsers import Screenshots, console_errors
from tests.conftest import SECRET_KEY
from tests.hostapp import add_user, beside_site, create_host_app, start_app
from tests.processes import ROOT, Nginx, Server, start_gunicorn, start_nginx
from tests.standin import InngestStandIn
from tests.test_browser import AttackerSite, Traffic, assert_nothing_reaches_inngest

# Above the servers' starts (gunicorn 30 s each, nginx 15 s), Chromium's launch (30 s) and
# each test's Playwright waits (5 s each).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

README = ROOT / "README.md"
SECTION = "## Run it beside your Flask app"
EMAIL, NAME, PASSWORD = "ada@example.com", "Ada Lovelace", "analytical-engine-1843"
OTHER_KEY = "another-apps-secret-fedcba9876543210"


def readme_settings() -> dict[str, str]:
    """The `sh` block of README's "Run it beside your Flask app" section, as variables."""
    text = README.read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text[text.index(SECTION) :]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "the section has no ```sh block"
    settings: dict[str, str] = {}
    for line in match.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        (word,) = shlex.split(line)  # one NAME=value per line, quoted as a shell would
        name, value = word.split("=", 1)
        settings[name] = value
    return settings


def test_the_readme_block_is_what_the_service_needs_beside_a_host() -> None:
    settings = readme_settings()
    assert settings["IDENTITY"] == "flask-session"
    assert settings["TRUSTED_PROXIES"] == "1"  # nginx's X-Forwarded-* believed, one hop
    # The reader fills in exactly these two; the rest runs as written.
    assert sorted(n for n, v in settings.items() if "<" in v) == [
        "SECRET_KEY",
        "USERS_DATABASE_URL",
    ]


@dataclass
class Site:
    """nginx in front of the host app and the service, and the host's database."""

    nginx: Nginx
    host: Server
    service: Server
    host_db: Path

    @property
    def url(self) -> str:
        return self.nginx.url


@pytest.fixture(scope="module")
def site(
    inngest_server: InngestStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("beside")
    host_db = directory / "host.db"
    host_env = {"SECRET_KEY": SECRET_KEY, "HOST_DATABASE_URL": f"sqlite:///{host_db}"}
    # The host's users: its own table, and the `users` view README's USERS_SQL reads.
    host = create_host_app(host_env)
    add_user(host, EMAIL, NAME, PASSWORD)
    add_user(host, "bob@example.com", "Bob", PASSWORD, active=False)
    host.extensions["host_db"].dispose()
    with sqlite3.connect(host_db) as connection:
        connection.execute(
            "CREATE VIEW users AS SELECT id, email, name, active, password_hash FROM host_users"
        )
    settings = readme_settings() | {
        "SECRET_KEY": SECRET_KEY,  # the host's own key
        "USERS_DATABASE_URL": f"sqlite:///{host_db}",
        # Anonymous posts are sent (data.user null), so that logging out can be seen in events.
        "INNGEST_GATEWAY_API_REQUIRE_LOGIN": "false",
    }
    servers: list[Any] = []
    try:
        (directory / "host").mkdir()
        host_server = start_app("tests.hostapp:create_host_app()", directory / "host", host_env)
        servers.append(host_server)
        (directory / "service").mkdir()
        service = start_gunicorn(directory / "service", inngest_server, env=settings)
        servers.append(service)
        (directory / "nginx").mkdir()
        nginx = start_nginx(
            directory / "nginx",
            0,
            beside_site(_port(host_server), _port(service)),
        )
        servers.append(nginx)
        yield Site(nginx, host_server, service, host_db)
        assert "users lookup failed" not in service.output()
    finally:
        for server in reversed(servers):
            server.kill()


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


# -- steps -----------------------------------------------------------------------------


def log_in(page: Page, site: Site, shot: Screenshots) -> None:
    """Log in on the host's own login page, as a person would."""
    page.goto(f"{site.url}/")
    page.locator("#login-link").click()
    page.wait_for_url(f"{site.url}/login")
    shot(page, "host-login-page")
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.locator("#login-submit").click()
    page.wait_for_url(f"{site.url}/")
    expect(page.locator("#who")).to_have_text(f"Logged in as {NAME}")
    shot(page, "host-logged-in")


def send_form(page: Page, site: Site, shot: Screenshots, message: str) -> None:
    """The host page's plain HTML form: the service answers 303 to the host's /sent page."""
    form = page.locator("#html-form")
    form.get_by_label("Message").fill(message)
    form.get_by_role("button").click()
    page.wait_for_url(f"{site.url}/sent")
    expect(page.locator("#sent")).to_have_text("Sent")
    shot(page, "host-sent-page")


def send_fetch(page: Page, shot: Screenshots, message: str) -> str:
    """The host page's script posts JSON with fetch; returns the event id it was answered."""
    form = page.locator("#fetch-form")
    form.get_by_label("Message").fill(message)
    form.get_by_role("button").click()
    result = page.locator("#fetch-result")
    expect(result).to_have_attribute("data-status", "200")
    shot(page, "fetch-result")
    match = re.fullmatch(r'\{"ids":\["([^"]+)"\],"status":"ok"\}', result.inner_text())
    assert match, result.inner_text()
    return match.group(1)


def event_with(inngest: InngestStandIn, message: str) -> dict[str, Any]:
    """The one event the stand-in received with this message."""
    found = [
        e
        for record in inngest.received
        for e in record.events
        if e.get("data", {}).get("message") == message
    ]
    assert len(found) == 1, [r.events for r in inngest.received]
    event: dict[str, Any] = found[0]
    return event


def assert_from_ada(event: dict[str, Any]) -> None:
    """data.user is the row README's USERS_SQL returns for the host's user, nothing more."""
    assert event["data"]["user"] == {"id": 1, "email": EMAIL, "name": NAME}
    assert event["data"]["request"]["ip"] == "127.0.0.1"
    assert "Chrome" in event["data"]["request"]["user_agent"]


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


# -- the tests -------------------------------------------------------------------------


def test_logged_in_on_the_host_a_form_and_fetch_carry_the_hosts_user(
    page: Page, site: Site, shot: Screenshots, inngest: InngestStandIn
) -> None:
    errors = console_errors(page)
    log_in(page, site, shot)

    by_form = unique("Hello from the host's form")
    send_form(page, site, shot, by_form)
    event = event_with(inngest, by_form)
    assert event["name"] == "app/host.form"
    assert_from_ada(event)

    page.goto(f"{site.url}/")
    by_fetch = unique("Hello from the host's fetch")
    event_id = send_fetch(page, shot, by_fetch)
    event = event_with(inngest, by_fetch)
    assert event["id"] == event_id and event["name"] == "app/host.fetch"
    assert_from_ada(event)

    # The service never touched the host's cookies: still logged in on the host.
    page.goto(f"{site.url}/")
    expect(page.locator("#who")).to_have_text(f"Logged in as {NAME}")
    assert errors == []  # host.js ran under the host's CSP; nothing failed


def test_after_logging_out_on_the_host_posts_are_anonymous(
    page: Page, site: Site, shot: Screenshots, inngest: InngestStandIn
) -> None:
    log_in(page, site, shot)
    before = unique("Before logging out")
    send_fetch(page, shot, before)
    assert_from_ada(event_with(inngest, before))

    page.locator("#logout").click()
    page.wait_for_url(f"{site.url}/")
    expect(page.locator("#login-link")).to_be_visible()
    shot(page, "host-logged-out")

    by_fetch = unique("After logging out, fetch")
    send_fetch(page, shot, by_fetch)
    assert event_with(inngest, by_fetch)["data"]["user"] is None
    page.goto(f"{site.url}/")
    by_form = unique("After logging out, form")
    send_form(page, site, shot, by_form)
    assert event_with(inngest, by_form)["data"]["user"] is None


def _signed(secret: str, content: dict[str, Any]) -> str:
    """A Flask session cookie with this content, signed as Flask signs it with `secret`."""
    app = Flask("signer")
    app.config["SECRET_KEY"] = secret
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None
    return str(serializer.dumps(content))


def send_fetch_with_cookie(page: Page, site: Site, shot: Screenshots, cookie: str) -> str:
    """Post with fetch carrying exactly this host session cookie; returns the message sent.

    Rendering the host's page writes the host's own session cookie (its CSRF token) over any
    cookie it could not read, so the cookie is set after the page has loaded, and the
    `Cookie` header of the post itself is checked to be the one meant.
    """
    page.goto(f"{site.url}/")  # a fresh page: no answer of an earlier post on it
    page.context.add_cookies([{"name": "session", "value": cookie, "url": site.url}])
    message = unique("With a given cookie")
    with page.expect_request(
        lambda request: request.method == "POST" and request.url == f"{site.url}/api"
    ) as posted:
        send_fetch(page, shot, message)
    sent = posted.value.header_value("cookie") or ""
    assert f"session={cookie}" in sent.split("; "), sent
    return message


def test_a_cookie_signed_with_another_key_is_anonymous(
    page: Page, site: Site, shot: Screenshots, inngest: InngestStandIn
) -> None:
    ada = {"_user_id": "1", "_fresh": True}
    page.context.add_cookies(
        [{"name": "session", "value": _signed(OTHER_KEY, ada), "url": site.url}]
    )
    page.goto(f"{site.url}/")
    expect(page.locator("#login-link")).to_be_visible()  # the host does not take it either
    foreign = send_fetch_with_cookie(page, site, shot, _signed(OTHER_KEY, ada))
    assert event_with(inngest, foreign)["data"]["user"] is None

    # The same content signed with the host's key, sent the same way, is Ada: the check
    # above can fail.
    own = send_fetch_with_cookie(page, site, shot, _signed(SECRET_KEY, ada))
    assert_from_ada(event_with(inngest, own))


def test_a_user_the_query_no_longer_returns_is_anonymous(
    page: Page, site: Site, shot: Screenshots, inngest: InngestStandIn
) -> None:
    """Bob's cookie is well signed, but README's USERS_SQL wants `active`: no user."""
    page.context.add_cookies(
        [
            {
                "name": "session",
                "value": _signed(SECRET_KEY, {"_user_id": "2", "_fresh": True}),
                "url": site.url,
            }
        ]
    )
    page.goto(f"{site.url}/")
    message = unique("Bob, disabled")
    send_fetch(page, shot, message)
    assert event_with(inngest, message)["data"]["user"] is None


@pytest.fixture(scope="module")
def attacker(site: Site) -> Iterator[AttackerSite]:
    """A page on another port of 127.0.0.1 that posts to /api behind nginx."""
    attacking = AttackerSite(f"{site.url}/api").start()
    try:
        yield attacking
    finally:
        attacking.stop()


def test_a_page_on_another_origin_is_refused(
    page: Page,
    site: Site,
    attacker: AttackerSite,
    shot: Screenshots,
    inngest: InngestStandIn,
) -> None:
    log_in(page, site, shot)
    traffic = Traffic(f"{site.url}/api")
    page.context.on("response", traffic.on_response)
    page.context.on("requestfailed", traffic.on_failed)

    page.goto(attacker.url("127.0.0.1"))
    shot(page, "attacker-page")
    page.locator("#fire-fetches").click()
    expect(page.locator("#no-cors-result")).not_to_be_empty()
    json_result = page.locator("#json-result").inner_text()
    assert json_result.startswith("blocked: TypeError"), json_result  # no CORS for it

    with page.expect_navigation() as navigation:
        page.locator("#attack-form button").click()
    refused = navigation.value
    assert refused is not None and refused.status == 403
    text = page.locator("body").inner_text()
    assert '"code":"cross_site_request"' in text.replace(" ", ""), text
    shot(page, "attacker-form-refused")
    # Same site (another port of 127.0.0.1): the host's Lax cookie went along, and still no.
    sent = refused.request.all_headers()
    assert "session=" in sent.get("cookie", ""), sent
    assert sent["origin"] == f"http://127.0.0.1:{attacker.port}"
    assert traffic.answered == [("fetch", 403), ("document", 403)], traffic
    assert_nothing_reaches_inngest(inngest)

    # Back on the host's page, the same browser posts as Ada.
    page.goto(f"{site.url}/")
    message = unique("After the attack")
    send_fetch(page, shot, message)
    assert_from_ada(event_with(inngest, message))


def test_the_browser_client_through_nginx_posts_as_the_hosts_user(
    page: Page, site: Site, shot: Screenshots, inngest: InngestStandIn
) -> None:
    """The host's page loads inngest-gateway.js from its own origin (nginx passes it to the
    service, as deploy/nginx-beside.conf says) and sends through it with the host's cookie."""
    errors = console_errors(page)
    log_in(page, site, shot)
    message = unique("Hello from the client beside the host")

    page.evaluate(
        """() => new Promise((loaded, failed) => {
             const script = document.createElement('script');
             script.src = '/inngest-gateway.js';
             script.onload = loaded;
             script.onerror = () => failed(new Error('the client did not load'));
             document.head.append(script);
           })"""
    )
    ids = page.evaluate("(message) => InngestGateway.send('app/api.posted', {message})", message)
    shot(page, "client-sent")

    event = event_with(inngest, message)
    assert ids == [event["id"]]
    assert_from_ada(event)
    assert errors == []
